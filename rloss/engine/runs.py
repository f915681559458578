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

A run's ``config.yaml`` (and its checkpoint's config) holds ``data.root`` as an absolute path, so
any reader finds the data wherever it runs; :func:`read_run_config` also opens configs written
before that, whose root was relative to the folder training ran in (:func:`legacy_data_root`).
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ..data.io import DataError, write_text_atomic
from .config import LOSS_TYPES, TrainConfig, config_from_dict, load_config
from .errors import TrainingError, first_line

CHECKPOINT, METRICS, CONFIG = "checkpoint.pt", "metrics.json", "config.yaml"
LOCK = ".lock"
_RUN_ID_PREFIX = "# run_id: "


class RunFolderInUse(TrainingError):
    """Another live process holds the run folder's lock."""


class MixedRunFolder(DataError):
    """A run folder holds files written by different runs."""


class NotACheckpoint(ValueError):
    """Why a file is not a checkpoint written by ``rloss train`` (the caller names the file and the use)."""


# What every checkpoint.pt holds besides the training state, with its type.
CHECKPOINT_KEYS = {"model": dict, "config": str, "num_classes": int, "class_names": list, "model_name": str}


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


# --------------------------------------------------------------------------------------------
# Run names, and finding the run folders
# --------------------------------------------------------------------------------------------


def run_name(name: str, loss: str, seed: int) -> str:
    return f"{name}_{loss}_seed{seed}"


_RUN_NAME = re.compile(r"^(?P<study>.+)_(?P<loss>" + "|".join(sorted(LOSS_TYPES, key=len, reverse=True))
                       + r")_seed(?P<seed>\d+)$")


def study_of(run: str) -> str | None:
    """The study a run belongs to (``run_name``'s ``name``); None for a run not named by a study."""
    match = _RUN_NAME.match(run)
    return match["study"] if match else None


def in_studies(run: str, study_names=None) -> bool:
    """Whether ``run`` belongs to one of ``study_names`` (a name or a list; None: any), matched exactly:
    ``small`` takes ``small_pce_seed0``, not ``small2_pce_seed0`` nor a sweep's ``small_sweep_w1``."""
    if study_names is None:
        return True
    names = [study_names] if isinstance(study_names, str) else list(study_names)
    return study_of(run) in {str(n) for n in names}


def run_folders(results_dir: str | os.PathLike, study_names=None, needs=(CONFIG,), label: str = "runs") -> list[Path]:
    """The run folders under ``results_dir``, sorted, that hold every file of ``needs``, belong to
    ``study_names`` (see :func:`in_studies`) and whose files come from one run; a folder mixing two
    runs' files is left out with a line ``<label>: skipped <why>`` on stderr (never one run's results
    under another's name)."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    folders = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not all((run_dir / name).is_file() for name in needs) or not in_studies(run_dir.name, study_names):
            continue
        try:
            check_run_folder(run_dir)
        except DataError as exc:
            print(f"{label}: skipped {exc}", file=sys.stderr)
            continue
        folders.append(run_dir)
    return folders


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


def held_run(run_dir: str | os.PathLike) -> str | None:
    """What a run folder already holds, in words ("a finished run (iteration 4000, mIoU 0.8123)"),
    or None when it holds no run's files."""
    run_dir = Path(run_dir)
    try:
        final = json.loads((run_dir / METRICS).read_text()).get("final")
    except (OSError, ValueError, AttributeError):
        final = None
    if isinstance(final, dict) and "iteration" in final and "miou" in final:
        return f"a finished run (iteration {final['iteration']}, mIoU {final['miou']:.4f})"
    if (run_dir / CHECKPOINT).is_file():
        return "an unfinished run with a checkpoint"
    if (run_dir / CONFIG).is_file() or (run_dir / METRICS).is_file():
        return "a run that stopped before its first checkpoint"
    return None


def clear_run(run_dir: str | os.PathLike) -> None:
    """Removes a run's own files (config, metrics, checkpoint) before another run replaces it, so no
    file of the old run is left beside the new one's; other files in the folder stay."""
    for name in (CHECKPOINT, METRICS, CONFIG):
        (Path(run_dir) / name).unlink(missing_ok=True)


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
                             "again (rloss train --overwrite, or rloss study --rerun) or remove the folder")
    return next(iter(distinct), None)


# --------------------------------------------------------------------------------------------
# The saved config and its data root
# --------------------------------------------------------------------------------------------


def with_absolute_data_root(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` whose ``data.root`` is absolute (resolved here, where training opens it)."""
    cfg = copy.deepcopy(cfg)
    cfg.data.root = str(Path(cfg.data.root).resolve())
    return cfg


def legacy_root_candidates(config_root: str, results_dir: str | os.PathLike) -> list[Path]:
    """Where a relative ``data.root`` of an older config.yaml may point: it was relative to the folder
    training ran in, notebooks/ for the study's notebooks, else the project (the folder above results/)."""
    base = Path(results_dir).resolve().parent
    return [base / "notebooks" / config_root, Path.cwd() / config_root, base / config_root]


def legacy_data_root(config_root: str, results_dir: str | os.PathLike) -> Path | None:
    """The first of :func:`legacy_root_candidates` that exists, resolved; None when none does."""
    return next((c.resolve() for c in legacy_root_candidates(config_root, results_dir) if c.is_dir()), None)


def read_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """A run folder's config.yaml. A relative ``data.root`` (a config written before roots were saved
    absolute) is made absolute where :func:`legacy_data_root` finds it, else left as written."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / CONFIG)
    if not Path(cfg.data.root).is_absolute():
        found = legacy_data_root(cfg.data.root, run_dir.parent)
        if found is not None:
            cfg.data.root = str(found)
    return cfg


# --------------------------------------------------------------------------------------------
# The checkpoint
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> tuple[dict, TrainConfig]:
    """A ``checkpoint.pt`` written by ``rloss train`` and its config, for resuming and for inference.

    Read with ``torch.load(weights_only=True)`` only: a file that would run code is refused, never
    executed. Anything that is not such a checkpoint (another file, a bare state dict, a bad config,
    class names that do not match) is a :class:`NotACheckpoint` saying why."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise NotACheckpoint("not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            ImportError, IndexError, UnicodeDecodeError, OSError) as exc:
        raise NotACheckpoint(f"torch.load(weights_only=True) failed: {first_line(exc, typed=True)}") from None
    if not isinstance(obj, dict):
        raise NotACheckpoint(f"holds a {type(obj).__name__}, not a dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in obj]
    if missing:
        raise NotACheckpoint(f"missing {', '.join(missing)}; a bare state dict cannot be used")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise NotACheckpoint(f"'{key}' is a {type(obj[key]).__name__}, expected {kind.__name__}")
    try:
        config = config_from_dict(json.loads(obj["config"]), f"{path} (config)")
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise NotACheckpoint(f"bad config: {first_line(exc, typed=True)}") from None
    if len(obj["class_names"]) != obj["num_classes"]:
        raise NotACheckpoint(f"{len(obj['class_names'])} class names for num_classes {obj['num_classes']}")
    return obj, config
