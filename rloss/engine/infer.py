"""Inference with a checkpoint written by ``rloss train``: label maps at the input's own size.

    predictor = load_predictor("results/default/checkpoint.pt")
    [pred] = predictor.predict([image])            # image: [H, W, C], C = the run's data.channels
    pred.labels                                    # uint8 [H, W], class ids

    infer_path("results/default/checkpoint.pt", "photos/", "results/inference/default")

Each image is resized so its shorter side is ``size`` (default: the checkpoint's
``data.crop_size``, the scale validation ran at) with the *input* interpolation,
normalised per band as in training (:func:`rloss.data.transforms.normalisation`:
ImageNet's mean and std for RGB) and run through the network; the
network's stride-4 logits are resized straight to the original H x W with the
*logit* interpolation (one resize: for a 40 px image seen at 64 px, 16 -> 40 px)
and the label map is their argmax. The two interpolations can be set apart (the
study compares input {bilinear, bicubic} x logits {bilinear, bicubic}, with
``nearest`` as a floor); ``auto`` is bicubic for images smaller than 128 px on a
side, else bilinear (:func:`rloss.data.transforms.choose_interpolation`),
decided per image.

Input images are resized with PIL (as the training transforms do; its bicubic
clamps 8-bit images to 0..255). Images with other band counts than RGB (the run's ``data.channels``)
are read as training reads them (:func:`rloss.data.io.read_image`); the overlays show them as
:func:`rloss.data.io.display_rgb` does: one band as grey, several as their first three, 16-bit and
float data stretched from their minimum to their maximum. Logits are resized with ``torch.nn.functional.interpolate``,
``align_corners=False``; ``nearest`` there is torch's ``nearest-exact``, which
samples pixel centres as PIL's nearest does (torch's plain ``nearest`` shifts
the map by half an input pixel).

Checkpoints are read with ``torch.load(weights_only=True)`` only: a file that
would need code to load is refused, never executed.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.folder import IMAGE_SUFFIXES
from ..data.io import (DataError, colorize, display_rgb, output_folder, read_image, save_label_png, save_rgb,
                       to_loss_units, write_bytes_atomic, write_text_atomic)
from ..data.transforms import choose_interpolation, network_size, normalisation, resize_bands
from ..data.transforms import resize_logits as _resize_logits
from ..models import build_model
from .config import TrainConfig, is_plain_name
from .errors import first_line
from .runs import NotACheckpoint, read_checkpoint

__all__ = [
    "INFER_INTERPOLATIONS",
    "Prediction",
    "Predictor",
    "load_predictor",
    "infer_path",
]

INFER_INTERPOLATIONS = ("auto", "bilinear", "bicubic", "nearest")
SUMMARY = "inference.json"
OVERLAY_ALPHA = 0.5
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# --------------------------------------------------------------------------------------------
# Interpolation and sizes
# --------------------------------------------------------------------------------------------


def resolve_interpolation(mode: str, height: int, width: int) -> str:
    """``auto`` -> bicubic below 128 px on a side, else bilinear; the others as they are."""
    if mode not in INFER_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INFER_INTERPOLATIONS)}; got {mode!r}")
    if mode == "nearest":
        return mode
    return choose_interpolation(mode, height, width)


def _resize_input(image: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    return resize_bands(image, height, width, _PIL_FILTERS[mode])


def _check_image(image, index: int, channels: int = 3) -> np.ndarray:
    """``[H, W, channels]`` (``[H, W]`` when 1) of uint8, uint16 or float, in the loss's units."""
    image = np.asarray(image)
    if image.ndim == 2 and channels == 1:
        image = image[..., None]
    if image.dtype == np.float64:
        image = image.astype(np.float32)
    if image.ndim != 3 or image.shape[2] != channels or 0 in image.shape or \
            image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"image {index}: expected [H, W, {channels}] uint8, uint16 or float (the run's data.channels "
                         f"{channels}), got {image.dtype} {image.shape}")
    return to_loss_units(image)


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    labels: np.ndarray  # uint8 [H, W], class ids
    probs: np.ndarray | None  # float32 [K, H, W] softmax of the resized logits (with return_probs)
    input_interpolation: str  # the resolved modes
    logit_interpolation: str
    network_size: tuple[int, int]  # (h, w) the network saw


class Predictor:
    """A trained model in eval mode with what its checkpoint says about it."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, class_names: list[str], model_name: str,
                 device: torch.device, checkpoint_path: Path | None = None):
        self.model = model
        self.config = config
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.model_name = model_name
        self.device = device
        self.checkpoint_path = checkpoint_path
        self.size = config.data.crop_size
        self.channels = config.data.channels
        mean, std = normalisation(self.channels)
        self._mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @property
    def run_name(self) -> str:
        return self.config.run.name

    def _normalise(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
        return (x / 255.0 - self._mean) / self._std

    @torch.inference_mode()
    def predict(self, images, interpolation: str = "auto", size: int | None = None, *,
                input_interpolation: str | None = None, logit_interpolation: str | None = None,
                return_probs: bool = False, batch_size: int = 8) -> list[Prediction]:
        """One :class:`Prediction` per image, in order, at each image's own size.

        ``interpolation`` sets both modes; ``input_interpolation`` / ``logit_interpolation``
        override one each. ``size``: the shorter side the network sees (default ``data.crop_size``).
        Images that reach the network at the same size run as one batch (up to ``batch_size``).
        """
        size = self.size if size is None else size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        in_mode = interpolation if input_interpolation is None else input_interpolation
        out_mode = interpolation if logit_interpolation is None else logit_interpolation
        for mode in (in_mode, out_mode):
            resolve_interpolation(mode, 1, 1)  # validates the names before any work
        images = [_check_image(image, i, self.channels) for i, image in enumerate(images)]

        plans = []  # (input mode, logit mode, network size) per image
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            nh, nw = network_size(h, w, int(size))
            plans.append((resolve_interpolation(in_mode, h, w), resolve_interpolation(out_mode, h, w), (nh, nw)))
            groups.setdefault((nh, nw), []).append(i)

        results: list[Prediction | None] = [None] * len(images)
        for (nh, nw), members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                batch = np.stack([_resize_input(images[i], nh, nw, plans[i][0]) for i in chunk])
                # Stride-4 logits, so the logit mode does the whole upsampling (the model's
                # own bilinear upsampling to the network input would come first otherwise).
                logits = self.model(self._normalise(batch), upsample=False).float()
                for j, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    full = _resize_logits(logits[j:j + 1], h, w, plans[i][1])[0]
                    labels = full.argmax(0).to(torch.uint8).cpu().numpy()
                    probs = full.softmax(0).cpu().numpy() if return_probs else None
                    results[i] = Prediction(labels, probs, plans[i][0], plans[i][1], (nh, nw))
        return results  # type: ignore[return-value]


def _not_a_checkpoint(path: Path, why: str) -> ValueError:
    return ValueError(f"{path}: not a checkpoint written by `rloss train` ({why})")


def load_predictor(checkpoint_path, device: str = "auto") -> Predictor:
    """The model of a ``checkpoint.pt`` written by ``rloss train``, in eval mode on ``device``.

    Read with ``weights_only=True`` only. A missing file is a FileNotFoundError; anything that is
    not such a checkpoint (other files, bare state dicts, pickles that would run code) one ValueError.
    """
    from .device import resolve_device

    path = Path(checkpoint_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        obj, config = read_checkpoint(path)
    except NotACheckpoint as exc:
        raise _not_a_checkpoint(path, str(exc)) from None
    class_names = [str(n) for n in obj["class_names"]]
    try:
        model = build_model(obj["model_name"], obj["num_classes"], pretrained=False,
                            output_stride=config.model.output_stride, in_channels=config.data.channels)
        expected, given = set(model.state_dict()), set(obj["model"])
        if expected != given:
            raise RuntimeError(f"{len(expected - given)} weights missing (e.g. {min(expected - given, default=None)}), "
                               f"{len(given - expected)} unexpected (e.g. {min(given - expected, default=None)})")
        model.load_state_dict(obj["model"])
    except (RuntimeError, ValueError, TypeError) as exc:
        raise _not_a_checkpoint(path, f"the weights do not fit {obj['model_name']}: {first_line(exc, typed=True)}") from None
    dev = resolve_device(device)
    model.to(dev).eval()
    return Predictor(model, config, class_names, obj["model_name"], dev, path)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


DEFAULT_OUTPUT = Path("results") / "inference"


def default_output_dir(predictor: Predictor, base: str | os.PathLike = DEFAULT_OUTPUT) -> Path:
    """``base/<run name>``, the run name read from the checkpoint. That name is input: one that is not
    a plain folder name (``../../x``, an absolute path: :func:`rloss.engine.config.is_plain_name`) would put
    the outputs outside ``base``, so it is refused with one line naming the checkpoint and the name."""
    name = predictor.run_name
    if not is_plain_name(name):
        raise ValueError(f"{predictor.checkpoint_path}: the run name {name!r} it records is not a plain folder name "
                         "(no '/' or '\\', not '.' or '..', not empty), so it cannot name the output folder "
                         f"{Path(base).as_posix()}/<run name>; pass --output")
    return Path(base) / name


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(input_path, output_dir=None) -> tuple[Path, list[Path]]:
    """``(base, relative paths)``: one image, or a folder's images (.jpg/.jpeg/.png/.tif/.tiff/.npy) found
    recursively, sorted, leaving out anything under ``output_dir``."""
    src = Path(input_path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: input not found")
    if src.is_file():
        return src.parent, [Path(src.name)]
    base = src.resolve()
    out = Path(output_dir).resolve() if output_dir is not None else None
    found = []
    for path in src.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if out is not None and _is_within(path.resolve(), out):
            continue  # our own outputs, when the output folder lies inside the input folder
        found.append(path.relative_to(src))
    found.sort(key=lambda p: p.as_posix())
    if not found:
        raise ValueError(f"{src}: no jpg/jpeg/png images found (nor tif/tiff/npy)"
                         + (f" (outside the output folder {out})" if out is not None and _is_within(out, base) else ""))
    return src, found


def _output_paths(rel: Path, output_dir: Path, save_probs: bool) -> dict[str, Path]:
    folder = output_dir / rel.parent
    paths = {"labels": folder / f"{rel.stem}.png", "overlay": folder / f"{rel.stem}_overlay.jpg"}
    if save_probs:
        paths["probs"] = folder / f"{rel.stem}_probs.npy"
    return paths


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The palette colours of ``labels`` blended over ``image`` (uint8 RGB, or any image as
    :func:`rloss.data.io.display_rgb` shows it)."""
    blended = (1.0 - alpha) * display_rgb(image).astype(np.float32) + alpha * colorize(labels).astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _save_npy(array: np.ndarray, path: Path) -> None:
    # Through memory: np.save to a file writes with C fwrite, whose short write on a full disk
    # says only "24576 requested and 24512 written"; write_bytes_atomic names the file and the reason.
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes_atomic(path, buffer.getbuffer())


def _write_outputs(image: np.ndarray, pred: Prediction, paths: dict[str, Path], overwrite: bool) -> None:
    # The label map last: an interrupted image then lacks it and is done again next time.
    todo = {k: p for k, p in paths.items() if overwrite or not p.exists()}
    if "probs" in todo:
        _save_npy(pred.probs.astype(np.float16), todo["probs"])
    if "overlay" in todo:
        save_rgb(overlay(image, pred.labels), todo["overlay"])
    if "labels" in todo:
        save_label_png(pred.labels, todo["labels"])


def infer_path(checkpoint, input_path, output_dir, interpolation: str = "auto", batch_size: int = 8,
               device: str = "auto", save_probs: bool = False, overwrite: bool = False,
               progress: bool = True) -> dict:
    """Label maps (and overlays, and with ``save_probs`` the probabilities) for one image or a folder.

    ``checkpoint`` is a path or a :class:`Predictor`. Outputs mirror the input's relative paths
    under ``output_dir``: ``<stem>.png`` (palette PNG of class ids), ``<stem>_overlay.jpg`` and
    ``<stem>_probs.npy`` (float16 ``[K, H, W]``). Images whose outputs all exist are skipped unless
    ``overwrite``; an existing file is never replaced without it. Unreadable images are reported on
    stderr and counted. The summary is returned and written to ``output_dir/inference.json``.
    """
    from tqdm import tqdm

    resolve_interpolation(interpolation, 1, 1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(output_dir)
    if Path(input_path).is_dir() and out.resolve() == Path(input_path).resolve():
        raise ValueError(f"{out}: the output folder must not be the input folder (outputs would replace inputs)")
    src, rels = find_images(input_path, out)
    predictor = checkpoint if isinstance(checkpoint, Predictor) else load_predictor(checkpoint, device)

    jobs = _jobs(src, rels, out, save_probs)
    output_folder(out)
    records = []
    counts = Counter(written=0, skipped_existing=0, unreadable=0)
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="infer", unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for start in range(0, len(jobs), batch_size):
            chunk, images = [], []
            for rel, paths in jobs[start:start + batch_size]:
                if not overwrite and all(p.exists() for p in paths.values()):
                    counts["skipped_existing"] += 1
                    records.append({"image": rel.as_posix(), "status": "exists"})
                    bar.update(1)
                    continue
                try:
                    images.append(read_image(src / rel, predictor.channels))
                    chunk.append((rel, paths))
                except DataError as exc:
                    counts["unreadable"] += 1
                    records.append({"image": rel.as_posix(), "status": "unreadable"})
                    tqdm.write(f"infer: skipped {exc}", file=sys.stderr)
                    bar.update(1)
            if not chunk:
                continue
            preds = predictor.predict(images, interpolation, return_probs=save_probs, batch_size=batch_size)
            for (rel, paths), image, pred in zip(chunk, images, preds):
                _write_outputs(image, pred, paths, overwrite)
                counts["written"] += 1
                records.append({"image": rel.as_posix(), "status": "written",
                                "input_interpolation": pred.input_interpolation,
                                "logit_interpolation": pred.logit_interpolation,
                                "size": [int(image.shape[0]), int(image.shape[1])]})
                bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    records.sort(key=lambda r: r["image"])
    modes = Counter(f"{r['input_interpolation']}/{r['logit_interpolation']}" for r in records if r["status"] == "written")
    summary = {
        "checkpoint": str(predictor.checkpoint_path) if predictor.checkpoint_path is not None else None,
        "run": predictor.run_name,
        "input": str(input_path),
        "output": str(out),
        "interpolation": interpolation,
        "network_short_side": predictor.size,
        "device": str(predictor.device),
        "modes": dict(sorted(modes.items())),  # "input/logit" -> images
        "images": len(jobs),
        **counts,
        "seconds": round(seconds, 4),
        "images_per_s": round(counts["written"] / seconds, 3) if counts["written"] and seconds > 0 else None,
        "per_image": records,
    }
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=1) + "\n")
    return summary


def _jobs(src: Path, rels: list[Path], out: Path, save_probs: bool) -> list[tuple[Path, dict]]:
    """Each image's relative path and output paths; refused, before anything is written, when an output
    would replace an input or two images would write the same output."""
    jobs = []
    seen: dict[Path, Path] = {}
    inputs = {(src / rel).resolve() for rel in rels}
    for rel in rels:
        paths = _output_paths(rel, out, save_probs)
        for p in paths.values():
            if p.resolve() in inputs:
                raise ValueError(f"{p}: an output would replace an input image; choose another output folder")
            if p in seen:
                raise ValueError(f"{src / rel} and {src / seen[p]} would write the same output {p}; rename one")
            seen[p] = rel
        jobs.append((rel, paths))
    return jobs
