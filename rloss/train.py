"""The training loop: ``train(config, resume=False) -> final metrics``.

SGD with momentum, poly learning-rate decay per iteration, the head at
``head_lr_mult`` x the backbone's rate. Losses: ``pce`` (partial cross-entropy
on the scribbles), ``pce_crf`` (plus the DenseCRF loss on the softmax, in
float32), ``full`` (cross-entropy on the full masks: the upper bound).

Results go to ``<results_dir>/<run.name>/``: ``config.yaml``, ``metrics.json``
and ``checkpoint.pt``, each written atomically. A checkpoint holds only plain
tensors, numbers, strings, lists and dicts (``torch.load(weights_only=True)``
reads it) and everything a resumed run needs to continue bit for bit: model,
optimizer, grad scaler, iteration, epoch, position in that epoch's shuffled
order, the evaluations so far and the RNG states.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .config import TrainConfig, config_from_dict
from .data.folder import SegmentationFolder
from .data.io import IGNORE_INDEX, atomic_path, write_text_atomic
from .data.transforms import EvalTransform, TrainTransform
from .losses import DenseCRFLoss, partial_cross_entropy
from .metrics import ConfusionMatrix
from .models import build_model

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.json", "config.yaml"


# --------------------------------------------------------------------------------------------
# Data order and RNG states
# --------------------------------------------------------------------------------------------


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled order of epoch ``epoch``: a function of ``(seed, epoch)`` alone."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(state)).tolist()


class EpochSampler(Sampler[int]):
    """This epoch's shuffled order, from position ``start`` on (a resumed epoch skips what it saw)."""

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0):
        self.order = epoch_permutation(n, seed, epoch)[start:]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """The global RNG states as plain values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    s = states["numpy"]
    np.random.set_state((s["bit_generator"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                         s["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but CUDA is not available (use run.device=cpu or auto)")
    return torch.device(name)


def poly_lr(base: float, iteration: int, total: int, power: float) -> float:
    return base * (1.0 - min(iteration, total) / total) ** power


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_model_state(path: str | Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint or a state dict")
    return obj


@torch.no_grad()
def evaluate(model, loader, device, num_classes, class_names, amp="off", channels_last=False) -> dict:
    """mIoU, per-class IoU and pixel accuracy of the predictions against the full masks."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    for batch in loader:
        image = batch["image"].to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(image)
        cm.update(logits.argmax(1).cpu(), batch["mask"])
    model.train(was_training)
    return cm.scores(class_names)


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _write_metrics(run_dir: Path, cfg: TrainConfig, evals: list, final, timings: dict) -> None:
    doc = {"run": cfg.run.name, "evals": evals, "final": final, "timings": timings}
    write_text_atomic(run_dir / METRICS, json.dumps(doc, indent=1) + "\n")


def _timings(iter_times: list[float], crf_times: list[float]) -> dict:
    # The first iteration of a process (allocations, lazy initialisation) is left out when there are others.
    it, crf = (iter_times[1:], crf_times[1:]) if len(iter_times) > 1 else (iter_times, crf_times)
    return {
        "median_iteration_s": statistics.median(it) if it else None,
        "crf_share": (sum(crf) / sum(it)) if it and crf and sum(it) > 0 else None,
        "median_crf_s": statistics.median(crf) if crf else None,
        "timed_iterations": len(it),
    }


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Trains as ``config`` says and returns the final evaluation (``epoch``, ``iteration`` and the scores).

    ``resume=True`` continues from ``<results_dir>/<run.name>/checkpoint.pt`` and ends
    with the same weights and metrics as a run that was never interrupted.
    """
    cfg = config.validate()
    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT
    checkpoint = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {ckpt_path} (run once without resume first)")
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = config_from_dict(json.loads(checkpoint["config"]), str(ckpt_path)).to_dict()
        changed = [f"{s}.{k}" for s, d in cfg.to_dict().items() for k, v in d.items() if saved[s][k] != v]
        if changed:
            print(f"resume: config differs from the checkpoint's in {', '.join(changed)}", file=sys.stderr)

    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / CONFIG, cfg.to_yaml())

    # Data
    d = cfg.data
    train_tf = TrainTransform(d.crop_size, tuple(d.scale_range), d.interpolation, flip=True, seed=cfg.run.seed)
    train_set = SegmentationFolder(d.root, d.train_split, transform=train_tf)
    val_set = SegmentationFolder(d.root, d.val_split, transform=EvalTransform(d.crop_size, d.interpolation),
                                 require_scribbles=False)
    num_classes, class_names = train_set.num_classes, train_set.class_names
    batch = d.batch_size
    iters_per_epoch = len(train_set) // batch
    if iters_per_epoch < 1:
        raise ValueError(f"data.batch_size {batch} is larger than the {len(train_set)} training images")
    total_iters = cfg.optim.iterations or cfg.optim.epochs * iters_per_epoch
    num_epochs = math.ceil(total_iters / iters_per_epoch)
    pin = device.type == "cuda"
    val_loader = DataLoader(val_set, batch_size=batch, shuffle=False, num_workers=d.num_workers, pin_memory=pin,
                            generator=torch.Generator().manual_seed(cfg.run.seed))

    # Model, optimizer, loss
    m = cfg.model
    model = build_model(m.name, num_classes, pretrained=m.pretrained, output_stride=m.output_stride,
                        weights_path=m.weights_path, checkpoint_backbone=m.checkpoint_backbone)
    if cfg.loss.init_from and checkpoint is None:
        model.load_state_dict(_load_model_state(cfg.loss.init_from))
    model.to(device)
    if m.channels_last:
        model.to(memory_format=torch.channels_last)
    o = cfg.optim
    groups = [
        {"params": list(model.backbone_parameters()), "initial_lr": o.lr},
        {"params": list(model.head_parameters()), "initial_lr": o.lr * o.head_lr_mult},
    ]
    optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    L = cfg.loss
    crf = DenseCRFLoss(L.crf_weight, L.sigma_rgb, L.sigma_xy, L.scale_factor, L.kernel) if L.type == "pce_crf" else None

    iteration, epoch, position, evals = 0, 0, 0, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        iteration, epoch, position = checkpoint["iteration"], checkpoint["epoch"], checkpoint["position"]
        evals = json.loads(checkpoint["evals"])
        set_rng_states(checkpoint["rng"])

    def state() -> dict:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "iteration": iteration, "epoch": epoch, "position": position, "evals": json.dumps(evals),
            "rng": rng_states(), "config": json.dumps(cfg.to_dict()), "num_classes": num_classes,
            "class_names": list(class_names), "model_name": m.name,
        }

    iter_times: list[float] = []
    crf_times: list[float] = []
    model.train()
    bar = _progress(total_iters, iteration, cfg.run.name)
    try:
        while epoch < num_epochs and iteration < total_iters:
            train_tf.set_epoch(epoch)
            sampler = EpochSampler(len(train_set), cfg.run.seed, epoch, position)
            # Its own generator: a DataLoader iterator otherwise draws its workers' base seed from the
            # global torch RNG, and a resumed epoch (a new iterator) would shift the dropout masks.
            loader_rng = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + epoch)
            loader = DataLoader(train_set, batch_size=batch, sampler=sampler, drop_last=True,
                                num_workers=d.num_workers, pin_memory=pin, generator=loader_rng)
            for data in loader:
                if iteration >= total_iters:
                    break
                t0 = time.perf_counter()
                for group in optimizer.param_groups:
                    group["lr"] = poly_lr(group["initial_lr"], iteration, total_iters, o.poly_power)
                image = data["image"].to(device, non_blocking=True)
                if m.channels_last:
                    image = image.contiguous(memory_format=torch.channels_last)
                with _autocast(device, cfg.run.amp):
                    logits = model(image)
                terms = {}
                if L.type == "full":
                    terms["ce"] = partial_cross_entropy(logits, data["mask"].to(device), IGNORE_INDEX)
                else:
                    terms["pce"] = partial_cross_entropy(logits, data["scribble"].to(device), IGNORE_INDEX)
                if crf is not None:
                    probs = torch.softmax(logits.float(), dim=1)
                    raw, roi = data["image_raw"].to(device), data["roi"].to(device)
                    _sync(device)
                    tc = time.perf_counter()
                    terms["crf"] = crf(raw, probs, roi)
                    _sync(device)
                    crf_times.append(time.perf_counter() - tc)
                loss = sum(terms.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                _sync(device)
                iter_times.append(time.perf_counter() - t0)
                iteration += 1
                position += batch
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v.item():.4g}" for k, v in terms.items()}, refresh=False)
                if iteration % cfg.run.checkpoint_every_iters == 0 and iteration < total_iters:
                    _save_checkpoint(ckpt_path, state())
            # end of the epoch (or of the run)
            epoch_done = iteration >= total_iters or position >= iters_per_epoch * batch
            if not epoch_done:
                break
            last = iteration >= total_iters
            if last or (epoch + 1) % cfg.run.eval_every_epochs == 0:
                scores = evaluate(model, val_loader, device, num_classes, class_names, cfg.run.amp, m.channels_last)
                evals.append({"epoch": epoch + 1, "iteration": iteration, **scores})
                _write_metrics(run_dir, cfg, evals, None, _timings(iter_times, crf_times))
                if bar is not None:
                    bar.write(f"{cfg.run.name}: epoch {epoch + 1} iteration {iteration} mIoU {scores['miou']:.4f}")
            epoch += 1
            position = 0
    finally:
        if bar is not None:
            bar.close()

    if not evals or evals[-1]["iteration"] != iteration:  # e.g. resumed from the final checkpoint of an older run
        scores = evaluate(model, val_loader, device, num_classes, class_names, cfg.run.amp, m.channels_last)
        evals.append({"epoch": epoch, "iteration": iteration, **scores})
    final = evals[-1]
    _save_checkpoint(ckpt_path, state())
    _write_metrics(run_dir, cfg, evals, final, _timings(iter_times, crf_times))
    return final


def _progress(total: int, initial: int, name: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="it", file=sys.stderr, dynamic_ncols=True)
