"""The training loop: ``train(config, resume=False) -> final metrics``.

SGD with momentum (or AdamW: ``optim.name``), poly learning-rate decay per iteration, the head at
``head_lr_mult`` x the backbone's rate, on the loss of ``loss.type`` (``objective.py``: partial
cross-entropy on the scribbles, plus a regularizer for the regularized losses). Results go to
``<results_dir>/<run.name>/``: ``config.yaml``, ``metrics.json`` and ``checkpoint.pt``, each written
atomically; a resumed run continues bit for bit (``checkpoint.py``).

The parts live in rloss/engine/: the loss (objective.py), saving and resuming (checkpoint.py), what
fits in memory (memory.py), timing on the device (timing.py), the data and its order (datasets.py),
evaluation (evaluation.py), the device and its precision (device.py).
"""

from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data.folder import SegmentationFolder
from ..data.transforms import TrainTransform
from ..losses import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss
from ..models import build_model
from . import distributed as D
from . import runs
from .checkpoint import (load_weights, read_resume_checkpoint, restore, restore_average, save_checkpoint,
                         write_metrics, write_or_fail)
from .config import TrainConfig
from .datasets import epoch_loader, run_data, seed_everything
from .device import autocast, resolve_device
from .errors import TrainingError
from .evaluation import evaluate_run
from .memory import out_of_memory_as_advice, preflight
from .objective import build_regularizer, loss_terms
from .provenance import provenance
from .runs import CHECKPOINT, CONFIG
from .timing import PendingSteps, read_interval
from .weight_average import WeightAverage


def scheduled_lr(base: float, iteration: int, total: int, schedule: str, power: float) -> float:
    """The learning rate at ``iteration`` of ``total``: ``base`` decayed to 0 by ``schedule``
    (poly with ``power``, or cosine)."""
    done = min(iteration, total) / total
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * done))
    return base * (1.0 - done) ** power


@dataclass
class _Progress:
    """Where a run stands, in one place: what the loop advances and a checkpoint stores."""

    iteration: int = 0
    epoch: int = 0
    position: int = 0  # samples of this epoch's shuffled order already trained on
    evals: list = field(default_factory=list)
    last_saved: int | None = None  # the iteration of the last checkpoint written
    iter_times: list = field(default_factory=list)
    crf_times: list = field(default_factory=list)


@dataclass
class _Run:
    """Everything a run is trained with, set up once by :func:`_set_up` (data, model, optimizer,
    loss, logger) and its :class:`_Progress`."""

    cfg: TrainConfig
    ctx: D.DistContext
    device: torch.device
    run_id: str
    ckpt_path: Path
    train_set: SegmentationFolder
    train_tf: TrainTransform
    val_loader: DataLoader
    num_classes: int
    class_names: list
    batch: int  # the global batch
    per_process: int
    data_facts: dict
    source: dict  # what the numbers depend on besides the config (rloss.engine.provenance), for metrics.json
    iters_per_epoch: int
    total_iters: int
    num_epochs: int
    net: torch.nn.Module  # the model itself, the one the optimizer trains
    average: WeightAverage | None  # a weight average (optim.weight_average_*): the model evaluated and saved
    forward: torch.nn.Module  # what a step calls: the model, wrapped by DDP and torch.compile when asked
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    regularizer: DenseCRFLoss | NormalizedCutLoss | KernelCutLoss | None  # None for pce and full
    tracker: object
    pending: PendingSteps
    read_every: int
    progress: _Progress
    bar: object = None

    @property
    def scored(self) -> torch.nn.Module:
        """The model the run is evaluated and saved as (a checkpoint's "model"; inference and a
        fine-tuning's init_from load it): the weight average when there is one, else the net."""
        return self.net if self.average is None else self.average.model


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains as ``config`` says and returns the final evaluation (``epoch``, ``iteration`` and the scores).

    ``resume=True`` continues from ``<results_dir>/<run.name>/checkpoint.pt`` and ends
    with the same weights and metrics as a run that was never interrupted; it refuses a config
    whose settings differ from the run's (``checkpoint.RESUME_MAY_CHANGE`` excepted). Without it, a run
    folder that already holds a run is refused unless ``overwrite`` (then that run is replaced). Started by
    ``torchrun``, it trains data-parallel across the processes (see ``rloss.engine.distributed``).
    Stops with a :class:`TrainingError` on a non-finite loss, when memory runs out or
    when results cannot be written, leaving the last checkpoint as it was.
    """
    # The one check a config built in Python gets (those from load_config, the grid or the sweep were
    # checked where they were made, so a bad one fails before any run starts); it costs microseconds.
    # Saved configs name the data wherever they are read: an absolute root.
    cfg = runs.with_absolute_data_root(config.validate())
    ctx = D.context_from_env()
    threads = D.cpu_threads(ctx, cfg.run.threads)
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    owns_group = ctx.enabled and not torch.distributed.is_initialized()
    device = D.setup(ctx, resolve_device(cfg.run.device))
    try:
        # One process writes the run folder: the main one holds its lock for the whole run.
        with runs.lock_run_folder(cfg.run_dir) if ctx.is_main else nullcontext("") as stale:
            if stale:
                print(f"{cfg.run_dir}: took over the stale lock of a run that did not end ({stale})", file=sys.stderr)
            held = runs.held_run(cfg.run_dir) if ctx.is_main and not resume else None
            if held and not overwrite:
                raise ValueError(f"{cfg.run_dir} already holds {held}: --resume continues it, --overwrite "
                                 "replaces it, or choose another run.name")
            if held:
                runs.clear_run(cfg.run_dir)
            return _train(cfg, resume, ctx, device)
    finally:
        if owns_group:
            D.teardown(ctx)
        torch.set_num_threads(threads_before)  # a notebook's later work keeps its own setting


def _train(cfg: TrainConfig, resume: bool, ctx: D.DistContext, device: torch.device) -> dict:
    run = _set_up(cfg, resume, ctx, device)
    p = run.progress
    run.forward.train()
    run.bar = _progress(run.total_iters, p.iteration, cfg.run.name) if ctx.is_main else None
    try:
        while p.epoch < run.num_epochs and p.iteration < run.total_iters:
            run.train_tf.set_epoch(p.epoch)
            for data in epoch_loader(run.train_set, cfg.run.seed, p.epoch, p.position, run.batch, ctx,
                                     cfg.data.num_workers, pin_memory=device.type == "cuda"):
                if p.iteration >= run.total_iters:
                    break
                _train_step(run, data)
                p.iteration += 1
                p.position += run.batch
                if run.bar is not None:
                    run.bar.update(1)
                will_save = p.iteration % cfg.run.checkpoint_every_iters == 0 and p.iteration < run.total_iters
                every = cfg.run.eval_every_iters  # the last evaluation is the run's end, below
                will_evaluate = bool(every) and p.iteration % every == 0 and p.iteration < run.total_iters
                if will_save or will_evaluate or p.iteration % run.read_every == 0:
                    _read_pending(run)
                if will_evaluate:  # before the save: a checkpoint holds every evaluation up to it
                    evaluate_run(run)
                if will_save:
                    save_checkpoint(run)
            _read_pending(run)
            # end of the epoch (or of the run)
            epoch_done = p.iteration >= run.total_iters or p.position >= run.iters_per_epoch * run.batch
            if not epoch_done:
                break
            last = p.iteration >= run.total_iters
            every = cfg.run.eval_every_epochs if not cfg.run.eval_every_iters else None
            if last or (every and (p.epoch + 1) % every == 0):
                evaluate_run(run)
            p.epoch += 1
            p.position = 0

        if not p.evals or p.evals[-1]["iteration"] != p.iteration:  # e.g. resumed from the final checkpoint
            evaluate_run(run, show=False)
        final = p.evals[-1]
        save_checkpoint(run)
        if ctx.is_main:
            write_metrics(run, final)
            run.tracker.log({"final/miou": final["miou"]}, step=p.iteration)
    finally:
        if run.bar is not None:
            run.bar.close()
        run.tracker.finish()
    return final


def _train_step(run: _Run, data: dict) -> None:
    """One optimizer step on one batch; its losses and timing marks are queued (read by _read_pending)."""
    cfg, p, device, pending = run.cfg, run.progress, run.device, run.pending
    step_start = pending.mark()
    for group in run.optimizer.param_groups:
        group["lr"] = scheduled_lr(group["initial_lr"], p.iteration, run.total_iters, cfg.optim.lr_schedule,
                                   cfg.optim.poly_power)
    with out_of_memory_as_advice(cfg, run.per_process, device):
        image = data["image"].to(device, non_blocking=True)
        if cfg.model.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast(device, cfg.run.amp):
            logits = run.forward(image)
        terms, (crf_start, crf_end) = loss_terms(cfg, logits, data, run.regularizer, device, run.ctx, pending.mark)
        loss = sum(terms.values())
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.average is not None:
            run.average.update()
        pending.add(p.iteration + 1, terms, loss, (step_start, pending.mark(), crf_start, crf_end))


def _read_pending(run: _Run) -> None:
    """Reads the queued steps back: a non-finite loss stops the run; timings and logs are recorded."""
    cfg, p = run.cfg, run.progress
    steps = run.pending.read()
    if not steps:
        return
    bad = next((s for s in steps if not math.isfinite(s["loss"])), None)
    if D.any_true(bad is not None, run.device, run.ctx):
        where = (f"at iteration {bad['iteration']} ({', '.join(f'{k} {v:.4g}' for k, v in bad['terms'].items())})"
                 if bad is not None else "in another process")
        kept = (f"the last checkpoint ({run.ckpt_path}, iteration {p.last_saved}) is intact"
                if p.last_saved is not None else "no checkpoint had been written yet")
        raise TrainingError(f"the loss is not finite {where}; stopped, {kept}. "
                            "Lower optim.lr or loss.crf_relative_weight, or use run.amp=bf16 or off")
    p.iter_times.extend(s["seconds"] for s in steps)
    p.crf_times.extend(s["crf_seconds"] for s in steps if s["crf_seconds"] is not None)
    last = steps[-1]
    if run.tracker.active and last["iteration"] % cfg.wandb.log_every_iters == 0:
        run.tracker.log({**{f"train/{k}": v for k, v in last["terms"].items()}, "train/loss": last["loss"],
                         "train/lr": run.optimizer.param_groups[0]["lr"]}, step=last["iteration"])
    if run.bar is not None:
        run.bar.set_postfix({k: f"{v:.4g}" for k, v in last["terms"].items()}, refresh=False)


def _progress(total: int, initial: int, name: str):
    from .progress import progress_bar  # a widget in a notebook; under `rloss study` also in its terminal

    return progress_bar(total=total, initial=initial, desc=name, unit="it")


# --------------------------------------------------------------------------------------------
# Setting up
# --------------------------------------------------------------------------------------------


def _set_up(cfg: TrainConfig, resume: bool, ctx: D.DistContext, device: torch.device) -> _Run:
    """The run's data, model, optimizer and loss; a resumed run's state restored from its checkpoint."""
    from .tracking import RunLogger

    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT
    checkpoint, resumed_id = read_resume_checkpoint(ckpt_path, cfg, ctx) if resume else (None, None)
    # A resumed run keeps its id; config.yaml, metrics.json and checkpoint.pt all carry it.
    run_id = resumed_id or runs.new_run_id()
    seed_everything(cfg.run.seed)
    if ctx.is_main:
        write_or_fail(run_dir / CONFIG, lambda: runs.write_config(run_dir, cfg.to_yaml(), run_id))
    data = run_data(cfg, ctx, device, checkpoint)
    num_classes = data["num_classes"]
    net, optimizer, scaler, regularizer = _model(cfg, ctx, device, num_classes, data["per_process"], checkpoint)
    progress = _Progress()
    if checkpoint is not None:
        saved_classes = checkpoint.get("num_classes", num_classes)
        if saved_classes != num_classes:
            raise ValueError(f"resume: {ckpt_path} has {saved_classes} classes, the data set {cfg.data.root} has "
                             f"{num_classes}; resume with its own data, or start a new run (another run.name, "
                             "or --overwrite)")
        restore(checkpoint, ckpt_path, ctx, net, optimizer, scaler, progress)
    average = _weight_average(cfg, net, data["iters_per_epoch"], checkpoint, ckpt_path)
    model = net
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.run.compile else model
    tracker = RunLogger.create(
        enabled=cfg.wandb.enabled and ctx.is_main, project=cfg.wandb.project, mode=cfg.wandb.mode,
        run_name=cfg.run.name, run_dir=run_dir, config=cfg.to_dict(), class_names=list(data["class_names"]),
        resume_id=checkpoint.get("wandb_id") if checkpoint is not None else None,
    )
    return _Run(cfg=cfg, ctx=ctx, device=device, run_id=run_id, ckpt_path=ckpt_path, **data, source=provenance(device),
                net=net, average=average, forward=forward, optimizer=optimizer, scaler=scaler, regularizer=regularizer,
                tracker=tracker, pending=PendingSteps(device), read_every=read_interval(cfg, device), progress=progress)


def _model(cfg: TrainConfig, ctx: D.DistContext, device: torch.device, num_classes: int, per_process: int,
           checkpoint: dict | None) -> tuple:
    """The network (a new run starts from ``loss.init_from`` when set), the run's regularizer, a trial
    step that fits in memory, then the optimizer and grad scaler."""
    m, o = cfg.model, cfg.optim
    net = build_model(m.name, num_classes, pretrained=m.pretrained, output_stride=m.output_stride,
                      weights_path=m.weights_path, checkpoint_backbone=m.checkpoint_backbone,
                      in_channels=cfg.data.channels)
    if cfg.loss.init_from and checkpoint is None:
        load_weights(net, cfg.loss.init_from, num_classes)
    net.to(device)
    if m.channels_last:
        net.to(memory_format=torch.channels_last)
    regularizer = build_regularizer(cfg)
    preflight(net, cfg, per_process, regularizer, device)
    if ctx.enabled:
        net = D.convert_sync_batchnorm(net, device)
    groups = [
        {"params": list(net.backbone_parameters()), "initial_lr": o.lr},
        {"params": list(net.head_parameters()), "initial_lr": o.lr * o.head_lr_mult},
    ]
    # The fused update is one kernel for all tensors: the per-tensor loop was ~5% of a tiny CPU step.
    fused = device.type in ("cpu", "cuda")
    if o.name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, fused=fused)
    else:
        optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.run.amp == "fp16")
    if ctx.rank > 0:  # the model starts from rank 0's weights (DDP broadcasts them); dropout draws differ
        torch.manual_seed(cfg.run.seed * 1_000_003 + ctx.rank)
    return net, optimizer, scaler, regularizer


def _weight_average(cfg: TrainConfig, net: torch.nn.Module, iters_per_epoch: int, checkpoint: dict | None,
                    ckpt_path: Path) -> WeightAverage | None:
    """The weight average the run is scored by (``optim.weight_average_*``), a resumed run's as it was."""
    if not cfg.averages_weights:
        return None
    o = cfg.optim
    window = o.weight_average_iters or o.weight_average_epochs * iters_per_epoch
    average = WeightAverage(net, max(1.0, window))  # made after the net is complete: it copies it
    if checkpoint is not None and "trained_model" in checkpoint:
        restore_average(average, checkpoint, ckpt_path)
    return average
