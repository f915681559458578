"""The data a run trains and is scored on: the training set (train, less the share that
``data.holdout_fraction`` holds out), the evaluation set, the global batch shared out between the
processes, and the order: the seeds, and each epoch's shuffled order, a function of the seed and the
epoch alone, shared out between the processes and resumable at any position."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..data.folder import SegmentationFolder, read_split, split_holdout
from ..data.transforms import EvalTransform, TrainTransform
from . import distributed as D
from .config import AUTO, TrainConfig
from .memory import auto_batch_size

# Decoded samples kept in memory per data set (and per DataLoader worker): the built-in sets
# fit whole, VOC's first few hundred images do.
SAMPLE_CACHE_BYTES = 256 * 2**20


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a function of ``(seed, epoch)`` alone."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(state)).tolist()


class EpochSampler(Sampler[int]):
    """This process's share of an epoch's shuffled order, from global position ``start`` on.

    The order is cut into global batches of ``batch_size`` (an incomplete last one
    is dropped); process ``rank`` of ``world_size`` takes the ``rank``-th contiguous
    slice of each, so the processes together see exactly what one process would.
    A resumed epoch starts at the position it reached.
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        order = epoch_permutation(n, seed, epoch)
        per = batch_size // world_size
        self.order = [i for b in range(start, n - batch_size + 1, batch_size)
                      for i in order[b + rank * per : b + (rank + 1) * per]]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def epoch_loader(train_set: Dataset, seed: int, epoch: int, position: int, batch: int, ctx: D.DistContext,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    """This process's batches of epoch ``epoch`` (``batch`` is the global batch), from ``position`` on."""
    sampler = EpochSampler(len(train_set), seed, epoch, position, batch, ctx.rank, ctx.world_size)
    # Its own generator: a DataLoader iterator otherwise draws its workers' base seed from the
    # global torch RNG, and a resumed epoch (a new iterator) would shift the dropout masks.
    loader_rng = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(train_set, batch_size=batch // ctx.world_size, sampler=sampler, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory, generator=loader_rng)


def evaluation_set(cfg: TrainConfig, transform, **options) -> SegmentationFolder:
    """The images a run is scored on: the val split, or with ``data.holdout_fraction`` the share of
    train held out from its training (the val split is then never read)."""
    d = cfg.data
    if d.holdout_fraction > 0:
        _, held_out = split_holdout(read_split(Path(d.root), d.train_split), d.holdout_fraction)
        return SegmentationFolder(d.root, d.train_split, transform=transform, require_scribbles=False, ids=held_out,
                                  require_masks=True, channels=d.channels, **options)
    return SegmentationFolder(d.root, d.val_split, transform=transform, require_scribbles=False, channels=d.channels,
                              **options)


def run_data(cfg: TrainConfig, ctx: D.DistContext, device: torch.device, checkpoint: dict | None) -> dict:
    """The run's data sets, loaders and batch (``data.batch_size`` is the global batch, shared out
    between the processes): the data fields of the trainer's ``_Run``."""
    d = cfg.data
    train_tf = TrainTransform(d.crop_size, tuple(d.scale_range), d.interpolation, flip=True, seed=cfg.run.seed)
    eval_tf = EvalTransform(d.crop_size, d.interpolation)
    cache = {"cache_bytes": SAMPLE_CACHE_BYTES}
    train_options = {**cache, "channels": d.channels}
    if d.holdout_fraction > 0:  # train on the rest of train: evaluation_set holds the share out
        kept, _ = split_holdout(read_split(Path(d.root), d.train_split), d.holdout_fraction)
        train_set = SegmentationFolder(d.root, d.train_split, transform=train_tf, ids=kept, **train_options)
    else:
        train_set = SegmentationFolder(d.root, d.train_split, transform=train_tf, **train_options)
    val_set = evaluation_set(cfg, eval_tf, **cache)
    batch = d.batch_size
    if batch == AUTO:  # a resumed run keeps the batch it started with
        batch = checkpoint["batch_size"] if checkpoint is not None and "batch_size" in checkpoint else \
            auto_batch_size(cfg, ctx, device, train_set.num_classes, len(train_set))
    if batch % ctx.world_size:
        raise ValueError(f"config: data.batch_size {batch} (the global batch) is not divisible by the "
                         f"{ctx.world_size} processes")
    per_process = batch // ctx.world_size
    # What the results tables need to know about the data (its resolution: the first val image's shorter side).
    evaluated_on = f"held-out share of {d.train_split}" if d.holdout_fraction > 0 else d.val_split
    data_facts = {"train_images": len(train_set), "val_images": len(val_set), "evaluated_on": evaluated_on,
                  "batch_size": batch,
                  "image_side": int(min(val_set.load(val_set.ids[0]).image.shape[:2])) if len(val_set) else None}
    iters_per_epoch = len(train_set) // batch
    if iters_per_epoch < 1:
        raise ValueError(f"data.batch_size {batch} is larger than the {len(train_set)} training images")
    total_iters = cfg.total_iterations(iters_per_epoch)
    val_share = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(val_share, batch_size=per_process, shuffle=False, num_workers=d.num_workers,
                            collate_fn=list, generator=torch.Generator().manual_seed(cfg.run.seed))
    return dict(train_set=train_set, train_tf=train_tf, val_loader=val_loader, num_classes=train_set.num_classes,
                class_names=train_set.class_names, batch=batch, per_process=per_process, data_facts=data_facts,
                iters_per_epoch=iters_per_epoch, total_iters=total_iters,
                num_epochs=math.ceil(total_iters / iters_per_epoch))
