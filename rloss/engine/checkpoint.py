"""What a run saves and an exact resume: ``checkpoint.pt`` and ``metrics.json`` written atomically,
the RNG states, and the settings a resume may change.

A checkpoint holds only plain tensors, numbers, strings, lists and dicts
(``torch.load(weights_only=True)`` reads it) and everything a resumed run needs to continue bit for
bit: model, optimizer, grad scaler, iteration, epoch, position in that epoch's shuffled order, the
evaluations so far and the RNG states.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_path, write_text_atomic
from . import distributed as D
from . import runs
from .config import CRF_LOSS_TYPES, NC_LOSS_TYPES, TrainConfig
from .errors import TrainingError, first_line
from .runs import CHECKPOINT, CONFIG, METRICS
from .timing import timings

# The settings a resume may change: where the data and results are and how the work is carried out;
# none of them changes what the run learns (another device's arithmetic aside). Any other setting is the
# run's own: a resume with another value would train half one run and half another.
RESUME_MAY_CHANGE = {"data": {"root", "num_workers"}, "run": {"results_dir", "device", "threads", "compile",
                                                             "checkpoint_every_iters"},
                     "wandb": {"enabled", "project", "mode", "log_every_iters", "num_images"}}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_checkpoint(path: Path, state: dict) -> None:
    """``state`` to ``path``, atomically; a short write (a full disk) is an OSError that says so."""
    with atomic_path(path) as tmp:
        try:
            torch.save(state, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a short write (a full disk) as "unexpected pos"
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.EIO, f"the write stopped short, {free / 2**20:.0f} MiB free on its disk "
                                     f"({first_line(exc, limit=80)})", str(path)) from None


def write_or_fail(path: Path, write) -> None:
    """Runs ``write``; a full disk or an unwritable folder is one TrainingError (the old file stays)."""
    try:
        write()
    except OSError as exc:
        kept = " (the previous one is intact)" if path.exists() else ""
        raise TrainingError(f"cannot write {path}: {exc.strerror or exc}{kept}") from None


def write_metrics(run, final: dict | None = None) -> None:
    """``run``'s metrics.json: its evaluations so far, ``final`` once it has ended, timings, provenance."""
    cfg, p = run.cfg, run.progress
    crf_weight = cfg.absolute_crf_weight() if cfg.loss.type in CRF_LOSS_TYPES else None  # what the loss was given
    nc_weight = cfg.loss.nc_weight if cfg.loss.type in NC_LOSS_TYPES else None
    doc = {"run": cfg.run.name, "run_id": run.run_id, "data": run.data_facts, "crf_weight": crf_weight,
           "nc_weight": nc_weight, "evals": p.evals, "final": final,
           "timings": timings(p.iter_times, p.crf_times, run.device, run.ctx.world_size), "provenance": run.source}
    path = cfg.run_dir / METRICS
    write_or_fail(path, lambda: write_text_atomic(path, json.dumps(doc, indent=1) + "\n"))


def checkpoint_state(run) -> dict:
    """Everything a resume of ``run`` (the trainer's ``_Run``) needs, as plain values."""
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


def save_checkpoint(run) -> None:
    """Writes ``run``'s checkpoint (every process takes part; the main one writes)."""
    snapshot = checkpoint_state(run)  # collective: every process takes part
    if run.ctx.is_main:
        write_or_fail(run.ckpt_path, lambda: write_checkpoint(run.ckpt_path, snapshot))
    run.progress.last_saved = run.progress.iteration


# --------------------------------------------------------------------------------------------
# RNG states
# --------------------------------------------------------------------------------------------


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


def restore_rng(saved, ctx: D.DistContext) -> None:
    states = saved if isinstance(saved, list) else [saved]
    if len(states) == ctx.world_size:
        set_rng_states(states[ctx.rank])
    elif ctx.is_main:  # another number of processes: the data order is the same, dropout draws differ
        set_rng_states(states[0])
        print(f"resume: the checkpoint was written by {len(states)} processes, this run has {ctx.world_size}; "
              "dropout will not repeat the original run's draws", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


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


def refuse_changes(saved: TrainConfig, cfg: TrainConfig, source: Path) -> None:
    changed = resume_differences(saved, cfg)
    if changed:
        raise ValueError(f"resume: {source} was trained with other settings ({'; '.join(changed)}); a resume "
                         "continues the same run: resume with its settings, or start a new run from its weights "
                         f"(loss.init_from={source.parent / CHECKPOINT} and another run.name)")


def read_resume_checkpoint(path: Path, cfg: TrainConfig, ctx: D.DistContext) -> tuple[dict | None, str | None]:
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
        refuse_changes(saved, cfg, config_path)
        if ctx.is_main:
            print(f"resume: {path.parent} stopped before its first checkpoint; it trains again from the beginning",
                  file=sys.stderr)
        return None, runs.config_run_id(config_path)
    try:
        checkpoint, saved_config = runs.read_checkpoint(path)
    except runs.NotACheckpoint as exc:
        raise ValueError(f"{path}: not a checkpoint written by rloss train ({exc})") from None
    refuse_changes(saved_config, cfg, path)
    return checkpoint, checkpoint.get("run_id")


def restore(checkpoint: dict, path: Path, ctx: D.DistContext, net, optimizer, scaler, progress) -> None:
    """Puts a resumed run back as ``checkpoint`` (read from ``path``) left it: the weights it trains,
    the optimizer, the grad scaler, its ``progress`` and the RNG states."""
    try:
        # A run with a weight average saves the average as "model" and what it trains as "trained_model".
        net.load_state_dict(checkpoint.get("trained_model", checkpoint["model"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        progress.iteration, progress.epoch = checkpoint["iteration"], checkpoint["epoch"]
        progress.position = checkpoint["position"]
        progress.evals = json.loads(checkpoint["evals"])
        restore_rng(checkpoint["rng"], ctx)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"resume: {path}: not a checkpoint of this model written by rloss train "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
    progress.last_saved = progress.iteration


def restore_average(average, checkpoint: dict, path: Path) -> None:
    """The weight average a resumed run had reached (its checkpoint's "model")."""
    try:
        average.load_state_dict(checkpoint["model"], int(checkpoint["average_updates"]))
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"resume: {path}: its weight average does not fit this model "
                         f"({type(exc).__name__}: {first_line(exc)})") from None


def load_weights(net: torch.nn.Module, path: str | Path, num_classes: int) -> None:
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
