"""The training loop: ``train(config, resume=False) -> final metrics``.

SGD with momentum (or AdamW: ``optim.name``), poly learning-rate decay per iteration, the head at
``head_lr_mult`` x the backbone's rate. Losses: ``pce`` (partial cross-entropy
on the scribbles), ``pce_crf`` (plus the DenseCRF loss on the softmax, in
float32), ``pce_nc`` (plus normalized cut), ``pce_kernelcut`` (plus normalized cut and
DenseCRF), ``full`` (cross-entropy on the full masks: the upper bound).

Results go to ``<results_dir>/<run.name>/``: ``config.yaml``, ``metrics.json``
and ``checkpoint.pt``, each written atomically. A checkpoint holds only plain
tensors, numbers, strings, lists and dicts (``torch.load(weights_only=True)``
reads it) and everything a resumed run needs to continue bit for bit: model,
optimizer, grad scaler, iteration, epoch, position in that epoch's shuffled
order, the evaluations so far and the RNG states.
"""

from __future__ import annotations

import errno
import json
import math
import random
import shutil
import statistics
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, Subset

from . import distributed as D
from . import runs
from .config import AUTO, CRF_LOSS_TYPES, NC_LOSS_TYPES, TrainConfig
from ..data.folder import SegmentationFolder, read_split, split_holdout
from ..data.io import IGNORE_INDEX, atomic_path, write_text_atomic
from ..data.transforms import EvalTransform, TrainTransform, resize_logits
from .errors import TrainingError, first_line
from ..losses import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss, partial_cross_entropy
from ..metrics import ConfusionMatrix, confusion_matrix
from .provenance import provenance
from ..models import build_model
from .runs import CHECKPOINT, CONFIG, METRICS
from .weight_average import WeightAverage


# --------------------------------------------------------------------------------------------
# Data order and RNG states
# --------------------------------------------------------------------------------------------


# Decoded samples kept in memory per data set (and per DataLoader worker): the built-in sets
# fit whole, VOC's first few hundred images do.
SAMPLE_CACHE_BYTES = 256 * 2**20


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
        raise TrainingError("run.device is cuda but CUDA is not available (use run.device=cpu or auto)")
    return torch.device(name)


def scheduled_lr(base: float, iteration: int, total: int, schedule: str, power: float) -> float:
    """The learning rate at ``iteration`` of ``total``: ``base`` decayed to 0 by ``schedule``
    (poly with ``power``, or cosine)."""
    done = min(iteration, total) / total
    if schedule == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * done))
    return base * (1.0 - done) ** power


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _init_weights(net: torch.nn.Module, path: str | Path, num_classes: int) -> None:
    """Loads ``loss.init_from`` (a checkpoint of rloss train or a bare state dict) into ``net``;
    a missing, truncated, foreign or ill-fitting file is one ValueError naming it."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"loss.init_from {path}: checkpoint not found")
    try:  # weights_only: a file that would run code when loaded is refused
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"loss.init_from {path}: not a checkpoint ({first_line(exc)})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        if obj.get("num_classes", num_classes) != num_classes:
            raise ValueError(f"loss.init_from {path}: the checkpoint has {obj['num_classes']} classes, "
                             f"the data set {num_classes}")
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise ValueError(f"loss.init_from {path}: not a checkpoint or a state dict")
    try:
        net.load_state_dict(obj)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"loss.init_from {path}: the weights do not fit this model with {num_classes} classes "
                         f"({first_line(exc)})") from None


@torch.no_grad()
def evaluate(model, loader, device, num_classes, class_names, amp="off", channels_last=False,
             num_examples: int = 0, per_image: list | None = None):
    """mIoU, per-class IoU and pixel accuracy of the predictions against the full masks, at each
    image's own resolution (the one definition the study uses, as ``rloss.engine.infer``): the network
    sees the image with its shorter side at the crop size, and its stride-4 logits are resized
    straight to the image's size (``EvalTransform``'s ``logit_mode``) before the argmax.

    ``loader`` yields lists of ``EvalTransform`` samples (``collate_fn=list``); images of one
    size run as one batch. Under ``torchrun`` each process evaluates its share of the split and
    the confusion matrices are summed, so every process gets the whole split's scores.
    Returns ``(scores, examples)``: ``examples`` holds the first ``num_examples`` images (of the
    first one's size) with their predictions, scribbles and masks (for logging). ``per_image``, a
    list, receives each image's own ``[K, K]`` confusion matrix in the loader's order (what a
    bootstrap over the images resamples: ``rloss.engine.sweep``).
    """
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes)
    examples: dict[str, list] = {"image": [], "prediction": [], "scribble": [], "mask": []}
    for samples in loader:
        by_size: dict[tuple, list[dict]] = {}
        for sample in samples:
            by_size.setdefault(tuple(sample["image"].shape), []).append(sample)
        for group in by_size.values():
            image = torch.stack([s["image"] for s in group]).to(device, non_blocking=True)
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp):
                logits = model(image, upsample=False)
            for sample, sample_logits in zip(group, logits.float()):
                h, w = sample["mask"].shape
                pred = resize_logits(sample_logits[None], h, w, sample["logit_mode"])[0].argmax(0).cpu()
                image_cm = confusion_matrix(pred[None], sample["mask"][None], num_classes, cm.ignore_index)
                cm.merge(image_cm)
                if per_image is not None:
                    per_image.append(image_cm.cpu().numpy())
                if len(examples["image"]) < num_examples and (
                        not examples["image"] or examples["mask"][0].shape == sample["mask"].shape):
                    examples["image"].append(sample["image_raw"].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0))
                    examples["prediction"].append(pred)
                    examples["scribble"].append(sample["scribble"])
                    examples["mask"].append(sample["mask"])
    cm.all_reduce()
    model.train(was_training)
    return cm.scores(class_names), examples


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a short write (a full disk) as "unexpected pos"
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.EIO, f"the write stopped short, {free / 2**20:.0f} MiB free on its disk "
                                     f"({first_line(exc, limit=80)})", str(path)) from None


def _written(path: Path, write) -> None:
    """Runs ``write``; a full disk or an unwritable folder is one TrainingError (the old file stays)."""
    try:
        write()
    except OSError as exc:
        kept = " (the previous one is intact)" if path.exists() else ""
        raise TrainingError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None


def _write_metrics(run_dir: Path, cfg: TrainConfig, run_id: str, evals: list, final, timings: dict,
                   data: dict, source: dict) -> None:
    crf_weight = cfg.absolute_crf_weight() if cfg.loss.type in CRF_LOSS_TYPES else None  # what the loss was given
    nc_weight = cfg.loss.nc_weight if cfg.loss.type in NC_LOSS_TYPES else None
    doc = {"run": cfg.run.name, "run_id": run_id, "data": data, "crf_weight": crf_weight, "nc_weight": nc_weight,
           "evals": evals,
           "final": final, "timings": timings, "provenance": source}
    path = run_dir / METRICS
    _written(path, lambda: write_text_atomic(path, json.dumps(doc, indent=1) + "\n"))


class _PendingSteps:
    """The steps not yet read back from the device: their loss terms and timing marks.

    On a GPU nothing of a step is read when it runs, so the host queues the next
    step while the device works (a read would wait for the device to drain). The
    marks are CUDA events, timed on the device; every ``read()`` brings back all
    pending losses in one copy: every log interval, before a checkpoint is
    written and before an evaluation. On the CPU there is nothing to overlap:
    marks are ``perf_counter`` readings and the trainer reads after every step.
    """

    def __init__(self, device: torch.device):
        self.on_gpu = device.type == "cuda"
        self.steps: list[tuple] = []  # (iteration, terms, loss, (start, end, crf_start, crf_end))

    def mark(self):
        if not self.on_gpu:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def add(self, iteration: int, terms: dict, loss: torch.Tensor, marks: tuple) -> None:
        self.steps.append((iteration, {k: v.detach() for k, v in terms.items()}, loss.detach(), marks))

    def _seconds(self, start, end) -> float:
        return start.elapsed_time(end) / 1e3 if self.on_gpu else end - start

    def read(self) -> list[dict]:
        """The pending steps as plain numbers (one host synchronisation on a GPU), oldest first."""
        if not self.steps:
            return []
        names = list(self.steps[0][1])
        values = torch.stack([torch.stack([*(terms[k].float() for k in names), loss.float()])
                              for _, terms, loss, _ in self.steps]).cpu().tolist()
        if self.on_gpu:
            self.steps[-1][3][1].synchronize()  # the last step's optimizer update: its end event
        out = []
        for (iteration, _, _, (start, end, crf_start, crf_end)), row in zip(self.steps, values):
            out.append({"iteration": iteration, "terms": dict(zip(names, row[:-1])), "loss": row[-1],
                        "seconds": self._seconds(start, end),
                        "crf_seconds": self._seconds(crf_start, crf_end) if crf_start is not None else None})
        self.steps = []
        return out


def _read_interval(cfg: TrainConfig, device: torch.device) -> int:
    """Steps between reads of the pending losses: the log interval on a GPU (a non-finite loss
    then stops the run at most one interval late, before any checkpoint of it), every step on
    the CPU, where a read costs nothing."""
    return cfg.wandb.log_every_iters if device.type == "cuda" else 1


def _timings(iter_times: list[float], crf_times: list[float], device: torch.device, world_size: int) -> dict:
    # The first iteration of a process (allocations, lazy initialisation) is left out when there are others.
    it, crf = (iter_times[1:], crf_times[1:]) if len(iter_times) > 1 else (iter_times, crf_times)
    out = {
        "median_iteration_s": statistics.median(it) if it else None,
        "crf_share": (sum(crf) / sum(it)) if it and crf and sum(it) > 0 else None,
        "median_crf_s": statistics.median(crf) if crf else None,
        "timed_iterations": len(it),
        "processes": world_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


_OOM_MARKERS = ("out of memory", "not enough memory", "can't allocate memory", "cannot allocate memory")


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS))


@contextmanager
def _out_of_memory_as_advice(cfg: TrainConfig, per_process: int, device: torch.device):
    """Turns running out of memory inside the block into one TrainingError saying what to lower."""
    try:
        yield
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise TrainingError(
                f"out of memory on {device} with data.crop_size {cfg.data.crop_size} and {per_process} images per "
                f"process: lower data.batch_size or data.crop_size, or set run.amp=bf16 or "
                f"model.checkpoint_backbone=true") from None
        raise


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Trains as ``config`` says and returns the final evaluation (``epoch``, ``iteration`` and the scores).

    ``resume=True`` continues from ``<results_dir>/<run.name>/checkpoint.pt`` and ends
    with the same weights and metrics as a run that was never interrupted; it refuses a config
    whose settings differ from the run's (:data:`RESUME_MAY_CHANGE` excepted). Without it, a run
    folder that already holds a run is refused unless ``overwrite`` (then that run is replaced). Started by
    ``torchrun``, it trains data-parallel across the processes (see ``rloss.engine.distributed``).
    Stops with a :class:`TrainingError` on a non-finite loss, when memory runs out or
    when results cannot be written, leaving the last checkpoint as it was.
    """
    cfg = runs.with_absolute_data_root(config.validate())  # saved configs name the data wherever they are read
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


def _regularizer_term(regularizer, raw, probs, roi):
    """The regularizer's term. Non-finite probabilities (the network diverged) give NaN rather than
    the loss's own input error, so the step's finiteness check stops the run with the same
    advice as under pce."""
    try:
        return regularizer(raw, probs, roi)
    except Exception:
        if bool(torch.isfinite(probs).all()):
            raise
        return torch.full((), float("nan"), device=probs.device)


# The settings a resume may change: where the data and results are and how the work is carried out;
# none of them changes what the run learns (another device's arithmetic aside). Any other setting is the
# run's own: a resume with another value would train half one run and half another.
RESUME_MAY_CHANGE = {"data": {"root", "num_workers"}, "run": {"results_dir", "device", "threads", "compile",
                                                             "checkpoint_every_iters"},
                     "wandb": {"enabled", "project", "mode", "log_every_iters", "num_images"}}


def resume_differences(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """``key saved -> new`` for each setting the run uses that ``cfg`` changes, except :data:`RESUME_MAY_CHANGE`."""
    before, after = saved.settings_used(), cfg.settings_used()
    changed = []
    for section, now in after.items():
        was = before.get(section, {})
        for key in sorted((set(was) | set(now)) - RESUME_MAY_CHANGE.get(section, set())):
            old, new = was.get(key, "(unused)"), now.get(key, "(unused)")
            if old != new:
                changed.append(f"{section}.{key} {old!r} -> {new!r}")
    return changed


def _refuse_changes(saved: TrainConfig, cfg: TrainConfig, source: Path) -> None:
    changed = resume_differences(saved, cfg)
    if changed:
        raise ValueError(f"resume: {source} was trained with other settings ({'; '.join(changed)}); a resume "
                         "continues the same run: resume with its settings, or start a new run from its weights "
                         f"(loss.init_from={source.parent / CHECKPOINT} and another run.name)")


def _read_resume_checkpoint(path: Path, cfg: TrainConfig, ctx: D.DistContext) -> tuple[dict | None, str | None]:
    """The checkpoint to resume from and the run's id. A run stopped before its first checkpoint
    (its config.yaml is there) starts again from the beginning: the same run, as it would have trained."""
    if not path.is_file():
        config_path = path.parent / CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path} (run once without resume first)")
        try:
            saved = runs.read_run_config(path.parent)
        except (OSError, ValueError) as exc:
            raise ValueError(f"resume: {config_path}: {exc}") from None
        _refuse_changes(saved, cfg, config_path)
        if ctx.is_main:
            print(f"resume: {path.parent} stopped before its first checkpoint; it trains again from the beginning",
                  file=sys.stderr)
        return None, runs.config_run_id(config_path)
    try:
        checkpoint, saved_config = runs.read_checkpoint(path)
    except runs.NotACheckpoint as exc:
        raise ValueError(f"{path}: not a checkpoint written by rloss train ({exc})") from None
    _refuse_changes(saved_config, cfg, path)
    return checkpoint, checkpoint.get("run_id")


def _restore_rng(saved, ctx: D.DistContext) -> None:
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == ctx.world_size:
        set_rng_states(states[ctx.rank])
    elif ctx.is_main:  # another number of processes: the data order is the same, dropout draws differ
        set_rng_states(states[0])
        print(f"resume: the checkpoint was written by {len(states)} processes, this run has {ctx.world_size}; "
              "dropout will not repeat the original run's draws", file=sys.stderr)


# The name each regularizer's term is logged under (train/<name>), by loss.type.
REGULARIZER_TERMS = {"pce_crf": "crf", "pce_nc": "nc", "pce_kernelcut": "kernelcut"}


def _regularizer(cfg: TrainConfig) -> DenseCRFLoss | NormalizedCutLoss | KernelCutLoss | None:
    """The run's regularizer term: DenseCRF, normalized cut or KernelCut (None for pce and full)."""
    L = cfg.loss
    if L.type == "pce_crf":
        return DenseCRFLoss(cfg.absolute_crf_weight(), L.sigma_rgb, L.sigma_xy, L.scale_factor, L.kernel, L.backend)
    if L.type == "pce_nc":
        return NormalizedCutLoss(L.nc_weight, L.nc_sigma_rgb, L.nc_sigma_xy, L.scale_factor, L.kernel, L.backend)
    if L.type == "pce_kernelcut":
        return KernelCutLoss(L.nc_weight, cfg.absolute_crf_weight(), L.nc_sigma_rgb, L.nc_sigma_xy, L.sigma_rgb,
                             L.sigma_xy, L.scale_factor, L.kernel, L.backend)
    return None


def _preflight(model, cfg: TrainConfig, per_process: int, regularizer, device: torch.device) -> None:
    """One forward and backward pass of a full-size batch on a copy of the model, before
    training starts, so a crop or batch too large for memory is one clear error rather
    than a crash mid-run. The copy stands in for the optimizer's momentum buffers
    (the same size); the RNG states are put back so the run is unchanged."""
    import copy

    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    size = cfg.data.crop_size
    probe = image = logits = loss = None
    try:
        with _out_of_memory_as_advice(cfg, per_process, device):
            probe = copy.deepcopy(model)
            image = torch.zeros(per_process, 3, size, size, device=device)
            if cfg.model.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with _autocast(device, cfg.run.amp):
                logits = probe(image)
            loss = logits.float().mean()
            if regularizer is not None:
                probs = torch.softmax(logits.float(), dim=1)
                raw = torch.zeros(per_process, 3, size, size, device=device)
                loss = loss + regularizer(raw, probs, torch.ones(per_process, size, size, device=device))
            loss.backward()
    finally:
        probe = image = logits = loss = None  # noqa: F841 - frees the copy before training
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.set_rng_state(cuda_rng, device)
            torch.cuda.reset_peak_memory_stats(device)
        torch.set_rng_state(cpu_rng)


# data.batch_size: auto on the CPU. A CPU run is bound by compute, not memory, and host memory
# swaps long before an allocation fails, so a trial step would say nothing: the default batch.
CPU_AUTO_BATCH = 8
# The smallest share a trial starts from: BatchNorm in training needs two values per channel,
# and the ASPP's image pooling has one per image.
MIN_AUTO_PER_PROCESS = 2


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
    """The largest per-process share whose trial step (``_preflight``: forward and backward of a
    full-size batch with room for the momentum buffers) fits on ``device``, times the processes
    (the smallest share any process found), at most the training set. The RNG states are kept."""
    m = cfg.model
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    # Random weights: only the memory matters. The trials use a copy of it, as _preflight does.
    probe = build_model(m.name, num_classes, pretrained=False, output_stride=m.output_stride,
                        checkpoint_backbone=m.checkpoint_backbone).to(device)
    if m.channels_last:
        probe.to(memory_format=torch.channels_last)
    regularizer = _regularizer(cfg)

    def fits(per_process: int) -> bool:
        try:
            _preflight(probe, cfg, per_process, regularizer, device)
        except TrainingError:  # _preflight's out-of-memory advice
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


def _scribble_loss(logits, target, device, ctx: D.DistContext):
    """Cross-entropy over the labeled pixels, normalised by their number over all processes
    (DDP averages gradients, hence the factor of the number of processes)."""
    if not ctx.enabled:
        return partial_cross_entropy(logits, target, IGNORE_INDEX)
    total = partial_cross_entropy(logits, target, IGNORE_INDEX, reduction="sum")
    count = D.all_reduce_sum((target != IGNORE_INDEX).sum().to(device, torch.float32), ctx)
    return total * ctx.world_size / count.clamp(min=1)


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
    pending: _PendingSteps
    read_every: int
    progress: _Progress
    bar: object = None

    @property
    def scored(self) -> torch.nn.Module:
        """The model the run is evaluated and saved as (a checkpoint's "model"; inference and a
        fine-tuning's init_from load it): the weight average when there is one, else the net."""
        return self.net if self.average is None else self.average.model


def evaluation_set(cfg: TrainConfig, transform, **options) -> SegmentationFolder:
    """The images a run is scored on: the val split, or with ``data.holdout_fraction`` the share of
    train held out from its training (the val split is then never read)."""
    d = cfg.data
    if d.holdout_fraction > 0:
        _, held_out = split_holdout(read_split(Path(d.root), d.train_split), d.holdout_fraction)
        return SegmentationFolder(d.root, d.train_split, transform=transform, require_scribbles=False, ids=held_out,
                                  require_masks=True, **options)
    return SegmentationFolder(d.root, d.val_split, transform=transform, require_scribbles=False, **options)


def _set_up(cfg: TrainConfig, resume: bool, ctx: D.DistContext, device: torch.device) -> _Run:
    """The run's data, model, optimizer and loss; a resumed run's state restored from its checkpoint."""
    from .tracking import RunLogger

    run_dir = cfg.run_dir
    ckpt_path = run_dir / CHECKPOINT
    checkpoint, resumed_id = _read_resume_checkpoint(ckpt_path, cfg, ctx) if resume else (None, None)
    # A resumed run keeps its id; config.yaml, metrics.json and checkpoint.pt all carry it.
    run_id = resumed_id or runs.new_run_id()
    seed_everything(cfg.run.seed)
    if ctx.is_main:
        _written(run_dir / CONFIG, lambda: runs.write_config(run_dir, cfg.to_yaml(), run_id))

    # Data: data.batch_size is the global batch, shared out between the processes.
    d = cfg.data
    train_tf = TrainTransform(d.crop_size, tuple(d.scale_range), d.interpolation, flip=True, seed=cfg.run.seed)
    eval_tf = EvalTransform(d.crop_size, d.interpolation)
    cache = {"cache_bytes": SAMPLE_CACHE_BYTES}
    if d.holdout_fraction > 0:  # train on the rest of train: evaluation_set holds the share out
        kept, _ = split_holdout(read_split(Path(d.root), d.train_split), d.holdout_fraction)
        train_set = SegmentationFolder(d.root, d.train_split, transform=train_tf, ids=kept, **cache)
    else:
        train_set = SegmentationFolder(d.root, d.train_split, transform=train_tf, **cache)
    val_set = evaluation_set(cfg, eval_tf, **cache)
    num_classes, class_names = train_set.num_classes, train_set.class_names
    batch = d.batch_size
    if batch == AUTO:  # a resumed run keeps the batch it started with
        batch = checkpoint["batch_size"] if checkpoint is not None and "batch_size" in checkpoint else \
            auto_batch_size(cfg, ctx, device, num_classes, len(train_set))
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
    num_epochs = math.ceil(total_iters / iters_per_epoch)
    val_share = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))
    val_loader = DataLoader(val_share, batch_size=per_process, shuffle=False, num_workers=d.num_workers,
                            collate_fn=list, generator=torch.Generator().manual_seed(cfg.run.seed))

    # Model, optimizer, loss
    m, L, o = cfg.model, cfg.loss, cfg.optim
    net = build_model(m.name, num_classes, pretrained=m.pretrained, output_stride=m.output_stride,
                      weights_path=m.weights_path, checkpoint_backbone=m.checkpoint_backbone)
    if L.init_from and checkpoint is None:
        _init_weights(net, L.init_from, num_classes)
    net.to(device)
    if m.channels_last:
        net.to(memory_format=torch.channels_last)
    regularizer = _regularizer(cfg)
    _preflight(net, cfg, per_process, regularizer, device)
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

    progress = _Progress()
    wandb_id = None
    if checkpoint is not None:
        saved_classes = checkpoint.get("num_classes", num_classes)
        if saved_classes != num_classes:
            raise ValueError(f"resume: {ckpt_path} has {saved_classes} classes, the data set {d.root} has "
                             f"{num_classes}; resume with its own data, or start a new run (another run.name, "
                             "or --overwrite)")
        try:
            # A run with a weight average saves the average as "model" and what it trains as "trained_model".
            net.load_state_dict(checkpoint.get("trained_model", checkpoint["model"]))
            optimizer.load_state_dict(checkpoint["optimizer"])
            scaler.load_state_dict(checkpoint["scaler"])
            progress.iteration, progress.epoch = checkpoint["iteration"], checkpoint["epoch"]
            progress.position = checkpoint["position"]
            progress.evals = json.loads(checkpoint["evals"])
            wandb_id = checkpoint.get("wandb_id")
            _restore_rng(checkpoint["rng"], ctx)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"resume: {ckpt_path}: not a checkpoint of this model written by rloss train "
                             f"({type(exc).__name__}: {first_line(exc)})") from None
        progress.last_saved = progress.iteration
    average = None
    if cfg.averages_weights:  # made after the net is complete: it copies it
        window = o.weight_average_iters or o.weight_average_epochs * iters_per_epoch
        average = WeightAverage(net, max(1.0, window))
        if checkpoint is not None and "trained_model" in checkpoint:
            try:
                average.load_state_dict(checkpoint["model"], int(checkpoint["average_updates"]))
            except (KeyError, RuntimeError, TypeError, ValueError) as exc:
                raise ValueError(f"resume: {ckpt_path}: its weight average does not fit this model "
                                 f"({type(exc).__name__}: {first_line(exc)})") from None

    model = net
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.run.compile else model

    tracker = RunLogger.create(
        enabled=cfg.wandb.enabled and ctx.is_main, project=cfg.wandb.project, mode=cfg.wandb.mode,
        run_name=cfg.run.name, run_dir=run_dir, config=cfg.to_dict(), class_names=list(class_names),
        resume_id=wandb_id,
    )
    return _Run(cfg=cfg, ctx=ctx, device=device, run_id=run_id, ckpt_path=ckpt_path, train_set=train_set,
                train_tf=train_tf, val_loader=val_loader, num_classes=num_classes, class_names=class_names,
                batch=batch, per_process=per_process, data_facts=data_facts, source=provenance(device),
                iters_per_epoch=iters_per_epoch,
                total_iters=total_iters, num_epochs=num_epochs, net=net, average=average, forward=forward,
                optimizer=optimizer, scaler=scaler, regularizer=regularizer, tracker=tracker, pending=_PendingSteps(device),
                read_every=_read_interval(cfg, device), progress=progress)


def _checkpoint_state(run: _Run) -> dict:
    p = run.progress
    rngs = D.gather_objects(rng_states(), run.ctx)  # every process's, so a resume repeats each one's draws
    averaged = {} if run.average is None else {"trained_model": run.net.state_dict(),
                                               "average_updates": run.average.updates}
    return {
        **averaged, "model": run.scored.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        "iteration": p.iteration, "epoch": p.epoch, "position": p.position, "evals": json.dumps(p.evals),
        "rng": rngs, "config": json.dumps(run.cfg.to_dict()), "num_classes": run.num_classes,
        "class_names": list(run.class_names), "model_name": run.cfg.model.name, "wandb_id": run.tracker.run_id,
        "run_id": run.run_id, "batch_size": run.batch,
    }


def _save(run: _Run) -> None:
    snapshot = _checkpoint_state(run)  # collective: every process takes part
    if run.ctx.is_main:
        _written(run.ckpt_path, lambda: _save_checkpoint(run.ckpt_path, snapshot))
    run.progress.last_saved = run.progress.iteration


def _run_timings(run: _Run) -> dict:
    return _timings(run.progress.iter_times, run.progress.crf_times, run.device, run.ctx.world_size)


def _evaluate_and_show(run: _Run) -> None:
    scores = _evaluate_run(run)
    if run.bar is not None:
        p = run.progress
        run.bar.write(f"{run.cfg.run.name}: epoch {p.evals[-1]['epoch']} iteration {p.iteration} mIoU {scores['miou']:.4f}")


def _epochs_done(run: _Run) -> int | float:
    """The passes over the training set so far: a whole number at an epoch's end, else to 3 decimals."""
    p = run.progress
    if p.position == 0 or p.position >= run.iters_per_epoch * run.batch:
        return p.epoch + (p.position > 0)
    return round(p.epoch + p.position / (run.iters_per_epoch * run.batch), 3)


def _evaluate_run(run: _Run) -> dict:
    """Scores the model on the validation share, records them in metrics.json and the logger."""
    cfg, p = run.cfg, run.progress
    epoch_number = _epochs_done(run)
    want = cfg.wandb.num_images if run.tracker.active else 0
    scores, examples = evaluate(run.scored, run.val_loader, run.device, run.num_classes, run.class_names, cfg.run.amp,
                                cfg.model.channels_last, num_examples=want)
    p.evals.append({"epoch": epoch_number, "iteration": p.iteration, **scores})
    if run.ctx.is_main:
        _write_metrics(cfg.run_dir, cfg, run.run_id, p.evals, None, _run_timings(run), run.data_facts, run.source)
        run.tracker.log({"val/miou": scores["miou"], "val/pixel_accuracy": scores["pixel_accuracy"],
                         **{f"val/iou/{k}": v for k, v in scores["per_class_iou"].items() if v is not None}},
                        step=p.iteration)
        if want:
            run.tracker.log_images(*(torch.stack(examples[k]).numpy() for k in ("image", "prediction", "scribble", "mask")),
                                   step=p.iteration)
    return scores


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


def _epoch_loader(run: _Run) -> DataLoader:
    """This epoch's batches, from the position a resumed run stopped at."""
    cfg, p = run.cfg, run.progress
    run.train_tf.set_epoch(p.epoch)
    sampler = EpochSampler(len(run.train_set), cfg.run.seed, p.epoch, p.position, run.batch, run.ctx.rank,
                           run.ctx.world_size)
    # Its own generator: a DataLoader iterator otherwise draws its workers' base seed from the
    # global torch RNG, and a resumed epoch (a new iterator) would shift the dropout masks.
    loader_rng = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + p.epoch)
    return DataLoader(run.train_set, batch_size=run.per_process, sampler=sampler, drop_last=True,
                      num_workers=cfg.data.num_workers, pin_memory=run.device.type == "cuda", generator=loader_rng)


def _train_step(run: _Run, data: dict) -> None:
    """One optimizer step on one batch; its losses and timing marks are queued (read by _read_pending)."""
    cfg, p, device, pending = run.cfg, run.progress, run.device, run.pending
    L = cfg.loss
    step_start = pending.mark()
    crf_start = crf_end = None
    for group in run.optimizer.param_groups:
        group["lr"] = scheduled_lr(group["initial_lr"], p.iteration, run.total_iters, cfg.optim.lr_schedule,
                                   cfg.optim.poly_power)
    with _out_of_memory_as_advice(cfg, run.per_process, device):
        image = data["image"].to(device, non_blocking=True)
        if cfg.model.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.run.amp):
            logits = run.forward(image)
        # non_blocking: from pinned memory a blocking copy would wait for the GPU to catch up
        target = (data["mask"] if L.type == "full" else data["scribble"]).to(device, non_blocking=True)
        terms = {"ce" if L.type == "full" else "pce": _scribble_loss(logits, target, device, run.ctx)}
        if run.regularizer is not None:
            probs = torch.softmax(logits.float(), dim=1)
            raw = data["image_raw"].to(device, non_blocking=True)
            roi = data["roi"].to(device, non_blocking=True)
            crf_start = pending.mark()
            terms[REGULARIZER_TERMS[L.type]] = _regularizer_term(run.regularizer, raw, probs, roi)
            crf_end = pending.mark()
        loss = sum(terms.values())
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.average is not None:
            run.average.update()
        pending.add(p.iteration + 1, terms, loss, (step_start, pending.mark(), crf_start, crf_end))


def _train(cfg: TrainConfig, resume: bool, ctx: D.DistContext, device: torch.device) -> dict:
    run = _set_up(cfg, resume, ctx, device)
    p = run.progress
    run.forward.train()
    run.bar = _progress(run.total_iters, p.iteration, cfg.run.name) if ctx.is_main else None
    try:
        while p.epoch < run.num_epochs and p.iteration < run.total_iters:
            for data in _epoch_loader(run):
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
                    _evaluate_and_show(run)
                if will_save:
                    _save(run)
            _read_pending(run)
            # end of the epoch (or of the run)
            epoch_done = p.iteration >= run.total_iters or p.position >= run.iters_per_epoch * run.batch
            if not epoch_done:
                break
            last = p.iteration >= run.total_iters
            every = cfg.run.eval_every_epochs if not cfg.run.eval_every_iters else None
            if last or (every and (p.epoch + 1) % every == 0):
                _evaluate_and_show(run)
            p.epoch += 1
            p.position = 0

        if not p.evals or p.evals[-1]["iteration"] != p.iteration:  # e.g. resumed from the final checkpoint
            _evaluate_run(run)
        final = p.evals[-1]
        _save(run)
        if ctx.is_main:
            _write_metrics(cfg.run_dir, cfg, run.run_id, p.evals, final, _run_timings(run), run.data_facts, run.source)
            run.tracker.log({"final/miou": final["miou"]}, step=p.iteration)
    finally:
        if run.bar is not None:
            run.bar.close()
        run.tracker.finish()
    return final


def _progress(total: int, initial: int, name: str):
    from .progress import progress_bar  # a widget in a notebook; under `rloss study` also in its terminal

    return progress_bar(total=total, initial=initial, desc=name, unit="it")
