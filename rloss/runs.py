"""The run folder ``<results_dir>/<run.name>/``: its files, its lock and the run id that ties them.

A training run owns its folder while it runs: :func:`lock_run_folder` holds an
exclusive lock (``fcntl.flock`` on ``.lock``, which the kernel releases when the
process dies, so a lock left by a killed run is recognised as stale) and removes
the ``.*.part`` files a kill during an atomic save left behind. Every run gets a
run id, written into each of its files: ``config.yaml`` (a ``# run_id:`` comment
on its first line, so the file stays a valid ``--config``), ``metrics.json``
(``"run_id"``) and ``checkpoint.pt`` (``"run_id"``). Readers call
:func:`check_run_folder`: files of two different runs in one folder are a
:class:`MixedRunFolder` error instead of one run's metrics under another's config.
Folders written before run ids existed (no id in any file) are read as before.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from .config import TrainConfig, load_config
from .data.io import DataError, write_text_atomic
from .errors import TrainingError
from .progress import report_run

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.json", "config.yaml"
LOCK = ".lock"
_RUN_ID_PREFIX = "# run_id: "


class RunFolderInUse(TrainingError):
    """Another live process holds the run folder's lock."""


class MixedRunFolder(DataError):
    """A run folder holds files written by different runs."""


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


# --------------------------------------------------------------------------------------------
# The lock and the debris of interrupted saves
# --------------------------------------------------------------------------------------------


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


@contextmanager
def lock_run_folder(run_dir: str | os.PathLike):
    """Holds ``run_dir``'s lock for the block (creating the folder); another process holding it
    is a :class:`RunFolderInUse` naming that process. Yields what a dead holder left in the lock
    file (``""`` when the folder was free), after removing the debris of interrupted saves."""
    import fcntl

    run_dir = Path(run_dir)
    path = run_dir / LOCK
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # e.g. a file where the folder should be, or no permission
            raise TrainingError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise RunFolderInUse(f"{run_dir}: run folder in use by {holder}; wait for that run to end or choose "
                                 "another run.name") from None
        try:  # the previous holder removes the file when it ends: then lock the new one instead
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        stale = _holder(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode())
        remove_debris(run_dir)
        yield stale
    finally:
        path.unlink(missing_ok=True)  # before the lock goes, so nobody locks a file about to vanish
        os.close(fd)


def remove_debris(run_dir: str | os.PathLike) -> list[Path]:
    """Removes the temporary ``.<file>.*.part`` files of this folder's results (left when a
    process was killed while saving; a VOC checkpoint's is hundreds of MB). Call it only
    while holding the lock: a live run's save in progress looks the same."""
    removed = []
    for name in (CHECKPOINT, METRICS, CONFIG):
        for part in Path(run_dir).glob(f".{name}.*.part"):
            part.unlink(missing_ok=True)
            removed.append(part)
    return removed


# --------------------------------------------------------------------------------------------
# Run ids
# --------------------------------------------------------------------------------------------


def write_config(run_dir: str | os.PathLike, config_yaml: str, run_id: str) -> None:
    """``config.yaml`` (atomically) with the run id on its first line."""
    write_text_atomic(Path(run_dir) / CONFIG, f"{_RUN_ID_PREFIX}{run_id}\n{config_yaml}")


def config_run_id(path: str | os.PathLike) -> str | None:
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    if not first.startswith(_RUN_ID_PREFIX):
        return None
    return first[len(_RUN_ID_PREFIX):].strip() or None


def metrics_run_id(path: str | os.PathLike) -> str | None:
    doc = json.loads(Path(path).read_text())
    return doc.get("run_id") if isinstance(doc, dict) else None


def checkpoint_run_id(path: str | os.PathLike) -> str | None:
    """The run id in a checkpoint, read without loading its tensors (memory-mapped)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return obj.get("run_id") if isinstance(obj, dict) else None


_READERS = {CONFIG: config_run_id, METRICS: metrics_run_id, CHECKPOINT: checkpoint_run_id}


def run_ids(run_dir: str | os.PathLike, files=(CONFIG, METRICS, CHECKPOINT)) -> dict[str, str | None]:
    """``{file: run id or None}`` for those of ``files`` present and readable in ``run_dir``
    (a truncated or foreign file is left out: whoever loads it reports it)."""
    ids = {}
    for name in files:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        try:
            ids[name] = _READERS[name](path)
        except Exception:  # noqa: BLE001 - unreadable files of any kind
            continue
    return ids


def check_run_folder(run_dir: str | os.PathLike, files=(CONFIG, METRICS, CHECKPOINT)) -> str | None:
    """The run id shared by ``files`` in ``run_dir`` (None for a folder written before run ids);
    a :class:`MixedRunFolder` when they come from different runs."""
    ids = run_ids(run_dir, files)
    distinct = set(ids.values())
    if len(distinct) > 1:
        which = ", ".join(f"{name} of run {run_id or '(none: older)'}" for name, run_id in ids.items())
        raise MixedRunFolder(f"{run_dir}: mixed run folder ({which}): two trainings wrote here; train this run "
                             "again (rloss train without --resume, or rloss study --rerun) or remove the folder")
    return next(iter(distinct), None)


# --------------------------------------------------------------------------------------------
# Finished runs, and training those that are not
# --------------------------------------------------------------------------------------------


def finished_metrics(cfg: TrainConfig) -> dict | None:
    """The final metrics of a finished run with exactly this config; None otherwise (also for a
    folder whose files come from different runs: it is reported and trained again)."""
    try:
        metrics = json.loads((cfg.run_dir / METRICS).read_text())
    except (OSError, ValueError):
        return None
    if metrics.get("final") is None or not _same_config(cfg):
        return None
    try:
        check_run_folder(cfg.run_dir)
    except DataError as exc:
        print(f"{exc}; training it again", file=sys.stderr)
        return None
    return metrics["final"]


def train_runs(configs: list[TrainConfig], rerun: bool = False) -> list[dict]:
    """Trains each config in turn and returns their final metrics. A run already finished
    with the same config is skipped unless ``rerun``; an interrupted one (a checkpoint and the
    same config, no final metrics) is resumed."""
    from .train import train  # train.py imports this module

    finals = []
    for i, cfg in enumerate(configs, 1):
        done = None if rerun else finished_metrics(cfg)
        if done is not None:
            print(f"[{i}/{len(configs)}] {cfg.run.name}: finished before (mIoU {done['miou']:.4f}), skipped",
                  file=sys.stderr)
            report_run(i, len(configs), cfg.run.name, skipped=True)
            finals.append(done)
            continue
        print(f"[{i}/{len(configs)}] {cfg.run.name}", file=sys.stderr)
        report_run(i, len(configs), cfg.run.name)  # to the study runner's terminal, when there is one
        resumable = not rerun and (cfg.run_dir / CHECKPOINT).is_file() and _same_config(cfg) and _one_run(cfg)
        finals.append(train(cfg, resume=resumable))
    return finals


def _one_run(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml and checkpoint.pt were written by the same run."""
    try:
        check_run_folder(cfg.run_dir, (CONFIG, CHECKPOINT))
        return True
    except DataError:
        return False


def _same_config(cfg: TrainConfig) -> bool:
    """Whether the run folder's config.yaml holds exactly ``cfg`` (a missing or bad one does not)."""
    try:
        return load_config(cfg.run_dir / CONFIG).to_dict() == cfg.to_dict()
    except (OSError, ValueError):
        return False
