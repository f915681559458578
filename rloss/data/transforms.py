"""Joint transforms of an image and its label maps (scribble, full mask).

The image is resized with the chosen interpolation (bilinear or bicubic),
labels always with nearest neighbour, so classes never blend. Inputs smaller
than 128 px on a side are upscaled to the crop size, with bicubic
interpolation by default ("auto"): the behaviour the study measures.

Images have C bands (``Sample.image [H, W, C]``: uint8, or float32 in 0..255 units for 16-bit and
float data, :func:`rloss.data.io.to_loss_units`); every transform treats the bands alike.

Output of TrainTransform (EvalTransform's: see its docstring), a dict of tensors:
  image      [C, H, W] float, normalised per band (network input; :func:`normalisation`)
  image_raw  [C, H, W] float 0..255 units (the DenseCRF loss's input)
  scribble   [H, W] long, 255 = unlabeled
  mask       [H, W] long, 255 = ignore (all 255 where the data set has no full masks)
  roi        [H, W] float, 1 on the image, 0 on padding
  index      int
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from .folder import Sample
from .io import IGNORE_INDEX

INTERPOLATIONS = ("auto", "bilinear", "bicubic")
SMALL_SIDE = 128  # inputs smaller than this on a side are "small"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def choose_interpolation(mode: str, height: int, width: int) -> str:
    """``auto``: bicubic for inputs smaller than 128 px on a side, else bilinear."""
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {mode!r}")
    if mode == "auto":
        return "bicubic" if min(height, width) < SMALL_SIDE else "bilinear"
    return mode


def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The network input's mean and std per band (in 0..1 units). Band i is normalised as the ImageNet
    channel whose pretrained filter it inherits (:func:`rloss.models.deeplabv3plus.adapt_input_weight`):
    3 bands ImageNet's; 1 band the mean of ImageNet's means and of its stds (its filter is their
    sum); other counts ImageNet's repeated cyclically (band i as channel i mod 3)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if channels == 1:
        return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)
    return (tuple(IMAGENET_MEAN[i % 3] for i in range(channels)),
            tuple(IMAGENET_STD[i % 3] for i in range(channels)))


def resize_image(image: np.ndarray, height: int, width: int, interpolation: str) -> np.ndarray:
    return resize_bands(image, height, width, _PIL_FILTERS[interpolation])


def resize_bands(image: np.ndarray, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """``[H, W, C]`` resized with PIL: 8-bit RGB as one image (as always), any other image band by band
    (mode L for uint8, F for float32). PIL's bicubic clamps L to 0..255 but not F: a float band is
    clipped to its own range, so that an edge's overshoot never leaves the loss's 0..255."""
    if image.shape[:2] == (height, width):
        return image
    size = (width, height)
    if image.ndim == 2 or (image.shape[2] == 3 and image.dtype == np.uint8):
        return np.asarray(Image.fromarray(image).resize(size, resample))
    bands = []
    for b in range(image.shape[2]):
        band = np.ascontiguousarray(image[..., b])
        resized = np.asarray(Image.fromarray(band).resize(size, resample))
        bands.append(resized if band.dtype == np.uint8 else np.clip(resized, band.min(), band.max()))
    return np.stack(bands, axis=2)


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an [H, W] label map, or of [H, W, 2] (two maps as one image's bands)."""
    if labels.shape[:2] == (height, width):
        return labels
    return np.asarray(Image.fromarray(labels).resize((width, height), Image.Resampling.NEAREST))


def _tensor(array: np.ndarray) -> torch.Tensor:
    # PIL's arrays are read-only and flips are views: torch needs contiguous, writable memory.
    return torch.from_numpy(np.require(array, requirements=("C", "W")))


@functools.lru_cache(maxsize=None)  # once per band count: this runs for every sample
def _normalisation_255(channels: int) -> tuple[np.ndarray, np.ndarray]:
    # The normalisation in 0..255 units, (raw - 255 mean) / (255 std): one subtraction and one multiplication.
    mean, std = normalisation(channels)
    return np.array(mean, dtype=np.float32) * 255, 1 / (np.array(std, dtype=np.float32) * 255)


def _to_tensors(image: np.ndarray, scribble: np.ndarray, mask: np.ndarray, roi: np.ndarray, index: int) -> dict:
    # In NumPy, channels last, then one transposed copy each: per-sample torch calls were a quarter of
    # the data pipeline's time, which runs beside every training step of a small model.
    raw = image.astype(np.float32)
    mean_255, inv_std_255 = _normalisation_255(raw.shape[2])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(((raw - mean_255) * inv_std_255).transpose(2, 0, 1))),
        "image_raw": torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1))),
        "scribble": torch.from_numpy(scribble.astype(np.int64)),
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "roi": torch.from_numpy(roi.astype(np.float32)),
        "index": index,
    }


def _mask_or_ignore(sample: Sample) -> np.ndarray:
    if sample.mask is not None:
        return sample.mask
    return np.full(sample.image.shape[:2], IGNORE_INDEX, dtype=np.uint8)


class TrainTransform:
    """Random scale, pad (image with the normalisation's mean, so 0 after it; labels with 255, ROI 0),
    random crop to ``crop_size``, random horizontal flip.

    Randomness comes from ``(seed, epoch, index)`` alone, so a sample is
    transformed the same way whichever worker loads it, and a resumed run
    repeats it; call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        crop_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        interpolation: str = "auto",
        flip: bool = True,
        seed: int = 0,
    ):
        if crop_size < 1 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"need crop_size >= 1 and 0 < scale_range[0] <= scale_range[1], got {crop_size}, {scale_range}")
        choose_interpolation(interpolation, 1, 1)  # validates the name
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.interpolation = interpolation
        self.flip = flip
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, sample: Sample, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        h, w = sample.image.shape[:2]
        interpolation = choose_interpolation(self.interpolation, h, w)
        base = self.crop_size / min(h, w) if min(h, w) < SMALL_SIDE else 1.0  # small inputs: up to the crop size
        scale = base * rng.uniform(*self.scale_range)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image = resize_image(sample.image, nh, nw, interpolation)
        # Both label maps in one nearest-neighbour resize, as the two bands of one image: the same
        # pixels as two resizes (tests/data/test_folder.py), for one pass through PIL.
        labels = resize_labels(np.dstack([sample.scribble, _mask_or_ignore(sample)]), nh, nw)
        scribble, mask = labels[..., 0], labels[..., 1]
        roi = np.ones((nh, nw), dtype=np.float32)

        # Pad bottom and right up to the crop size.
        ph, pw = max(self.crop_size - nh, 0), max(self.crop_size - nw, 0)
        if ph or pw:
            fill = np.array(normalisation(image.shape[2])[0]) * 255
            if image.dtype == np.uint8:
                fill = np.round(fill)
            padded = np.empty((nh + ph, nw + pw, image.shape[2]), dtype=image.dtype)
            padded[:] = fill
            padded[:nh, :nw] = image
            image = padded
            scribble = np.pad(scribble, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            roi = np.pad(roi, ((0, ph), (0, pw)), constant_values=0.0)

        y0 = int(rng.integers(0, image.shape[0] - self.crop_size + 1))
        x0 = int(rng.integers(0, image.shape[1] - self.crop_size + 1))
        window = (slice(y0, y0 + self.crop_size), slice(x0, x0 + self.crop_size))
        image, scribble, mask, roi = image[window], scribble[window], mask[window], roi[window]
        if self.flip and rng.random() < 0.5:
            image, scribble, mask, roi = image[:, ::-1], scribble[:, ::-1], mask[:, ::-1], roi[:, ::-1]
        return _to_tensors(image, scribble, mask, roi, index)


class EvalTransform:
    """For evaluation at the image's own resolution: the network input is the image resized so its
    shorter side is ``crop_size`` (aspect kept, no crop); ``image_raw``, ``scribble`` and ``mask``
    stay at the image's own size, and ``logit_mode`` is the interpolation that brings the logits
    back to it (the input's, as :mod:`rloss.engine.infer` does with one mode)."""

    def __init__(self, crop_size: int, interpolation: str = "auto"):
        if crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        choose_interpolation(interpolation, 1, 1)
        self.crop_size = crop_size
        self.interpolation = interpolation

    def __call__(self, sample: Sample, index: int) -> dict:
        h, w = sample.image.shape[:2]
        interpolation = choose_interpolation(self.interpolation, h, w)
        nh, nw = network_size(h, w, self.crop_size)
        image = _tensor(resize_image(sample.image, nh, nw, interpolation)).permute(2, 0, 1).float()
        mean, std = (torch.tensor(v).view(-1, 1, 1) for v in normalisation(image.shape[0]))
        return {
            "image": (image / 255.0 - mean) / std,
            "image_raw": _tensor(sample.image).permute(2, 0, 1).float(),
            "scribble": _tensor(sample.scribble).long(),
            "mask": _tensor(_mask_or_ignore(sample)).long(),
            "logit_mode": interpolation,
            "index": index,
        }


def network_size(height: int, width: int, size: int) -> tuple[int, int]:
    """The size an image is resized to for the network: its shorter side ``size``."""
    scale = size / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def resize_logits(logits: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """``[N, K, h, w]`` -> ``[N, K, height, width]`` with ``torch.nn.functional.interpolate``
    (``align_corners=False``; ``nearest`` is ``nearest-exact``, which samples pixel centres as PIL does)."""
    if tuple(logits.shape[-2:]) == (height, width):
        return logits
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return torch.nn.functional.interpolate(logits, size=(height, width), mode=_TORCH_MODES[mode], **kwargs)
