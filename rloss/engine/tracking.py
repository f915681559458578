"""Weights & Biases logging for a training run, which can never stop the run.

    logger = RunLogger.create(enabled=cfg.wandb.enabled, project=cfg.wandb.project,
                              mode=cfg.wandb.mode, run_name=cfg.run.name, run_dir=cfg.run_dir,
                              config=dataclasses.asdict(cfg), class_names=names,
                              resume_id=checkpoint.get("wandb_run_id"))
    logger.log({"train/loss": 0.71, "train/lr": 0.007}, step=iteration)
    logger.log_images(images, predictions, scribbles, ground_truth, step=iteration)
    checkpoint["wandb_run_id"] = logger.run_id      # a resumed run continues the same W&B run
    logger.finish()

Disabled, every call is a cheap no-op and ``wandb`` is not even imported. Enabled, the
run's files go to ``<run_dir>/wandb/`` (offline: ``offline-run-<time>-<id>/``, to upload
later with ``wandb sync``). Any exception from wandb — a missing package, a failed
``init`` or ``log`` — becomes one line ``W&B disabled: <reason>`` on stderr and the
logger is a no-op from then on (a failed ``init`` says that training continues without
W&B). ``init`` waits at most :data:`INIT_TIMEOUT_S` seconds (``WANDB_INIT_TIMEOUT``
overrides it) for the W&B server, not wandb's own 90. The API key is never handled
here: wandb reads it from ``WANDB_API_KEY`` or the netrc file (``python -m rloss
wandb-login`` writes it there).
"""

from __future__ import annotations

import netrc
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from ..data.io import IGNORE_INDEX  # unlabeled scribble pixels / ignored ground-truth pixels

MODES = ("offline", "online")
IMAGES_KEY = "val/examples"

# How long wandb.init may wait for the W&B server (online mode) before it gives up and training
# goes on without W&B. wandb's default, 90 s (plus about 10 s of its own), held training for
# ~100 s whenever the network was down; creating a run normally takes a few seconds, so 20 s
# leaves a wide margin and bounds the wait at about 30 s. WANDB_INIT_TIMEOUT=<seconds> overrides.
INIT_TIMEOUT_S = 20.0
INIT_TIMEOUT_ENV = "WANDB_INIT_TIMEOUT"


def _numpy(array, name: str, ndim: int) -> np.ndarray:
    """A numpy array from a numpy array or a (possibly CUDA) tensor, with ``ndim`` dimensions."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != ndim:
        raise ValueError(f"log_images: {name} must have {ndim} dimensions, got shape {array.shape}")
    return array


def _label_map(array, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = _numpy(array, name, 3)
    if array.shape != shape:
        raise ValueError(f"log_images: {name} has shape {array.shape}, the images {shape}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"log_images: {name} values must lie in 0..255")
    return array.astype(np.uint8)


def _scalar(value):
    """Plain Python numbers for one-element tensors and numpy scalars; anything else as is."""
    if isinstance(value, (bool, int, float, str)) or not hasattr(value, "item"):
        return value
    numel = value.numel() if hasattr(value, "numel") else getattr(value, "size", None)
    return value.item() if numel == 1 else value


def init_timeout() -> float:
    """Seconds ``wandb.init`` may wait: ``WANDB_INIT_TIMEOUT`` when it is a positive number,
    else :data:`INIT_TIMEOUT_S`."""
    try:
        value = float(os.environ.get(INIT_TIMEOUT_ENV, ""))
    except ValueError:
        return INIT_TIMEOUT_S
    return value if 0 < value < float("inf") else INIT_TIMEOUT_S


def _init_failure(exc: BaseException, mode: str, timeout: float) -> str:
    """The reason for a failed ``wandb.init`` and what happens next, for :meth:`RunLogger._disable`.

    wandb's advice to pass ``wandb.Settings(init_timeout=...)`` (code the user does not own)
    becomes ours: the environment variable."""
    text = str(exc).split("Consider increasing the init_timeout setting")[0]
    reason = f"{type(exc).__name__}: {' '.join(text.split())[:300]}"
    if "timed out" in reason.lower():
        reason += f" (gave up after {timeout:g} s; {INIT_TIMEOUT_ENV}=<seconds> waits longer)"
    then = "training continues without W&B logging"
    if mode == "online":
        then += " (wandb.mode=offline logs locally, to upload later with `wandb sync`)"
    return f"{reason}; {then}"


def _api_key_configured() -> bool:
    """Whether wandb will find a key without prompting: ``WANDB_API_KEY``, an identity token,
    or a netrc entry for the server (``WANDB_BASE_URL``'s host, default api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    from .credentials import DEFAULT_HOST, default_netrc_path

    base_url = os.environ.get("WANDB_BASE_URL")
    machine = (urlsplit(base_url).netloc if base_url else "") or DEFAULT_HOST
    try:
        entry = netrc.netrc(default_netrc_path()).authenticators(machine)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


class RunLogger:
    """One training run's W&B logging; see the module docstring. Build it with :meth:`create`."""

    def __init__(self, run=None, wandb_module=None, class_names: list[str] | None = None):
        self._run = run
        self._wandb = wandb_module
        self.class_names = list(class_names or [])

    # ---------------------------------------------------------------------------------------

    @classmethod
    def create(cls, enabled: bool, project: str, mode: str, run_name: str, run_dir: Path,
               config: dict, class_names: list[str], resume_id: str | None = None) -> "RunLogger":
        """A logger; disabled (``enabled`` false, or W&B failed to start: one stderr line) it is a no-op.

        ``mode``: ``"offline"`` (nothing leaves the machine) or ``"online"`` (needs a key, see
        the module docstring; without one the logger disables itself rather than prompt).
        ``resume_id``: the :attr:`run_id` a previous attempt stored in its checkpoint, so a
        resumed training run continues the same W&B run.
        """
        logger = cls(class_names=class_names)
        if not enabled:
            return logger
        if mode not in MODES:
            raise ValueError(f"wandb.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "online" and not _api_key_configured():
            logger._disable("no API key for online mode (run `python -m rloss wandb-login`, "
                            "set WANDB_API_KEY, or use wandb.mode=offline)")
            return logger
        try:
            import wandb

            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)  # wandb needs it to exist; it adds wandb/ inside
            resume = {"id": resume_id, "resume": "allow"} if resume_id else {}
            logger._wandb = wandb
            logger._run = wandb.init(
                project=project, name=run_name, dir=str(run_dir), mode=mode, config=config,
                reinit="create_new",  # never hand back, or finish, another run active in this process
                settings=wandb.Settings(init_timeout=init_timeout()),  # see INIT_TIMEOUT_S
                **resume,
            )
            if logger._run is None:
                raise RuntimeError("wandb.init returned no run")
        except Exception as exc:
            logger._disable(_init_failure(exc, mode, init_timeout()))
            logger._teardown_if_idle()  # stops the service a failed wandb.init may have started
        return logger

    # ---------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether calls reach W&B (false when disabled or after a failure)."""
        return self._run is not None

    @property
    def run_id(self) -> str | None:
        """The W&B run's id, to store in the checkpoint; None when not active."""
        return self._run.id if self._run is not None else None

    @property
    def run_path(self) -> Path | None:
        """This run's folder under ``<run_dir>/wandb/`` (``offline-run-...`` or ``run-...``)."""
        return Path(self._run.dir).parent if self._run is not None else None

    def _disable(self, reason) -> None:
        """Turns into a no-op after printing one line; finishes a started run on a best-effort basis."""
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}"
        reason = " ".join(str(reason).split())[:500]  # one line
        key = os.environ.get("WANDB_API_KEY")
        if key:
            reason = reason.replace(key, "<key>")
        print(f"W&B disabled: {reason}", file=sys.stderr, flush=True)
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass
            self._teardown_if_idle()

    def _teardown_if_idle(self) -> None:
        """Stops wandb's service process (wandb-core) unless someone else's global run is active."""
        try:
            if self._wandb is not None and self._wandb.run is None:
                self._wandb.teardown()
        except Exception:
            pass

    # ---------------------------------------------------------------------------------------

    def log(self, metrics: dict, step: int) -> None:
        """Logs ``metrics`` (numbers; tensors and numpy scalars are converted) at ``step``.

        W&B steps must not decrease: a step below the last one logged is dropped by wandb."""
        if self._run is None:
            return
        try:
            self._run.log({k: _scalar(v) for k, v in metrics.items()}, step=int(step))
        except Exception as exc:
            self._disable(exc)

    def log_images(self, images, predictions, scribbles, ground_truth=None, *, step: int) -> None:
        """Logs validation examples under ``val/examples``: each image with its prediction,
        scribbles and (if given) ground truth as W&B segmentation masks.

        ``images``: uint8 ``[N, H, W, 3]``; ``predictions``, ``scribbles``, ``ground_truth``:
        class indices ``[N, H, W]`` with 255 = unlabeled (scribbles) / ignored (ground truth).
        Numpy arrays or tensors. A shape mismatch is a ValueError (a caller's bug).
        """
        if self._run is None:
            return
        images = _numpy(images, "images", 4)
        if images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"log_images: images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        shape = images.shape[:3]
        masks = {"prediction": (_label_map(predictions, "predictions", shape), "unlabeled"),
                 "scribbles": (_label_map(scribbles, "scribbles", shape), "unlabeled")}
        if ground_truth is not None:
            masks["ground_truth"] = (_label_map(ground_truth, "ground_truth", shape), "ignore")
        try:
            wandb = self._wandb
            examples = []
            for i in range(shape[0]):
                examples.append(wandb.Image(images[i], masks={
                    name: {"mask_data": maps[i], "class_labels": self._labels(ignore_name)}
                    for name, (maps, ignore_name) in masks.items()
                }))
            self._run.log({IMAGES_KEY: examples}, step=int(step))
        except Exception as exc:
            self._disable(exc)

    def _labels(self, ignore_name: str) -> dict[int, str]:
        labels = {i: name for i, name in enumerate(self.class_names)}
        labels.setdefault(IGNORE_INDEX, ignore_name)
        return labels

    def finish(self) -> None:
        """Ends the W&B run (offline: the files are complete); a no-op when not active.
        Also stops wandb's service process when no other run of this process uses it."""
        run, self._run = self._run, None
        if run is None:
            return
        try:
            run.finish()
        except Exception as exc:
            self._disable(exc)
        self._teardown_if_idle()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()
