"""What fits in the device's memory: the trial step before training, the batch of
``data.batch_size: auto``, and running out of memory said as what to lower."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from ..models import build_model
from . import distributed as D
from .config import TrainConfig
from .device import autocast
from .errors import TrainingError
from .objective import build_regularizer

# data.batch_size: auto on the CPU. A CPU run is bound by compute, not memory, and host memory
# swaps long before an allocation fails, so a trial step would say nothing: the default batch.
CPU_AUTO_BATCH = 8
# The smallest share a trial starts from: BatchNorm in training needs two values per channel,
# and the ASPP's image pooling has one per image.
MIN_AUTO_PER_PROCESS = 2

_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS))


@contextmanager
def out_of_memory_as_advice(cfg: TrainConfig, per_process: int, device: torch.device):
    """Turns running out of memory inside the block into one TrainingError saying what to lower."""
    try:
        yield
    except Exception as exc:
        if is_out_of_memory(exc):
            raise TrainingError(
                f"out of memory on {device} with data.crop_size {cfg.data.crop_size} and {per_process} images per "
                f"process: lower data.batch_size or data.crop_size, or set run.amp=bf16 or "
                f"model.checkpoint_backbone=true") from None
        raise


def preflight(model, cfg: TrainConfig, per_process: int, regularizer, device: torch.device) -> None:
    """One forward and backward pass of a full-size batch on a copy of the model, before
    training starts, so a crop or batch too large for memory is one clear error rather
    than a crash mid-run. The copy stands in for the optimizer's momentum buffers
    (the same size); the RNG states are put back so the run is unchanged."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    size = cfg.data.crop_size
    probe = image = logits = loss = None
    try:
        with out_of_memory_as_advice(cfg, per_process, device):
            probe = copy.deepcopy(model)
            image = torch.zeros(per_process, cfg.data.channels, size, size, device=device)
            if cfg.model.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg.run.amp):
                logits = probe(image)
            loss = logits.float().mean()
            if regularizer is not None:
                probs = torch.softmax(logits.float(), dim=1)
                raw = torch.zeros(per_process, cfg.data.channels, size, size, device=device)
                loss = loss + regularizer(raw, probs, torch.ones(per_process, size, size, device=device))
            loss.backward()
    finally:
        probe = image = logits = loss = None  # noqa: F841 - frees the copy before training
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.set_rng_state(cuda_rng, device)
            torch.cuda.reset_peak_memory_stats(device)
        torch.set_rng_state(cpu_rng)


def largest_fitting(fits, limit: int, start: int = MIN_AUTO_PER_PROCESS) -> int:
    """The largest ``n`` in ``start..limit`` with ``fits(n)`` for a ``fits`` that holds up to some
    point and fails beyond (0 if ``start`` fails): doubling, then bisection, O(log n) trials."""
    if limit < start or not fits(start):
        return 0
    good, bad = start, None
    while bad is None:
        trial = min(good * 2, limit)
        if trial == good:
            return good
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad - good > 1:
        middle = (good + bad) // 2
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    return good


def auto_batch_size(cfg: TrainConfig, ctx: D.DistContext, device: torch.device, num_classes: int,
                    num_train: int) -> int:
    """The global batch for ``data.batch_size: auto``, at most the training set: on a GPU the
    largest that fits (``probe_batch_size``), on the CPU ``CPU_AUTO_BATCH``."""
    if device.type != "cuda":
        return max(1, min(CPU_AUTO_BATCH // ctx.world_size, num_train // ctx.world_size)) * ctx.world_size
    return probe_batch_size(cfg, ctx, device, num_classes, num_train)


def probe_batch_size(cfg: TrainConfig, ctx: D.DistContext, device: torch.device, num_classes: int,
                     num_train: int) -> int:
    """The largest per-process share whose trial step (``preflight``: forward and backward of a
    full-size batch with room for the momentum buffers) fits on ``device``, times the processes
    (the smallest share any process found), at most the training set. The RNG states are kept."""
    m = cfg.model
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    # Random weights: only the memory matters. The trials use a copy of it, as preflight does.
    probe = build_model(m.name, num_classes, pretrained=False, output_stride=m.output_stride,
                        checkpoint_backbone=m.checkpoint_backbone, in_channels=cfg.data.channels).to(device)
    if m.channels_last:
        probe.to(memory_format=torch.channels_last)
    regularizer = build_regularizer(cfg)

    def fits(per_process: int) -> bool:
        try:
            preflight(probe, cfg, per_process, regularizer, device)
        except TrainingError:  # preflight's out-of-memory advice
            return False
        return True

    try:
        per_process = largest_fitting(fits, num_train // ctx.world_size)
    finally:
        probe = None
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.empty_cache()
            torch.cuda.set_rng_state(cuda_rng, device)
    if ctx.enabled:
        found = torch.tensor([per_process], device=device)
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MIN)
        per_process = int(found.item())
    if per_process == 0:
        raise TrainingError(f"data.batch_size auto: not even {MIN_AUTO_PER_PROCESS} images per process of "
                            f"data.crop_size {cfg.data.crop_size} fit on {device} (or the training set is "
                            "smaller): lower data.crop_size, or set run.amp=bf16 or model.checkpoint_backbone=true")
    return per_process * ctx.world_size
