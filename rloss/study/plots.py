"""Plots shared by the notebooks and the sweep's; figures saved as PNG (matplotlib is the study's extra)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..data.io import atomic_path
from ..engine.sweep import DEFAULT_KEY, sweep_path


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` RGB 0..255 -> ``[H, W, 3]`` uint8."""
    return image.detach().permute(1, 2, 0).clamp(0, 255).byte().cpu().numpy()


def panel_grid(panels: list[tuple[str, torch.Tensor | np.ndarray]], ncols: int = 4, size: float = 3.0, cmap: str = "viridis"):
    """One matplotlib figure with a titled panel per ``(title, image or map)``.

    RGB images (``[3, H, W]`` tensors) are shown as photos, 2-D maps with a
    colour bar; maps with negative values use a diverging colour map centred on 0.
    """
    import matplotlib.pyplot as plt

    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, data) in zip(axes.flat, panels):
        if isinstance(data, torch.Tensor) and data.dim() == 3:
            ax.imshow(to_numpy_image(data))
        else:
            values = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
            if values.min() < 0 < values.max():
                bound = np.abs(values).max()
                im = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
            else:
                im = ax.imshow(values, cmap=cmap)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# One colour per loss, in every plot of the training notebooks.
def plot_samples(data, count: int = 4, title: str = ""):
    """The first ``count`` samples of a split: image, full mask and scribbles (over the dimmed photo)."""
    import matplotlib.pyplot as plt

    from ..data.io import IGNORE_INDEX, colorize

    fig, axes = plt.subplots(3, count, figsize=(2.6 * count, 7.8), squeeze=False)
    for col, sample_id in enumerate(data.ids[:count]):
        sample = data.load(sample_id)
        unlabeled = sample.scribble == IGNORE_INDEX
        scribble = colorize(sample.scribble).copy()
        scribble[unlabeled] = sample.image[unlabeled] // 3  # dimmed photo under the strokes
        mask = colorize(sample.mask) if sample.mask is not None else np.zeros_like(sample.image)
        for row, (name, picture) in enumerate(zip(("image", "full mask", "scribbles"), (sample.image, mask, scribble))):
            axes[row, col].imshow(picture, interpolation="nearest")
            axes[row, col].set_title(f"{sample_id}: {name}", fontsize=8)
            axes[row, col].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_training_crops(data, crop_size: int | None, seed: int = 0, count: int = 4,
                        interpolations=("bicubic", "bilinear")):
    """What training sees: a random training crop (``crop_size``; None: the recipe's) of each of the first
    ``count`` samples (cycling when the split is smaller), one row per upscaling ``interpolation``, padding
    blacked out, the scribbles as dots. ``data``'s own transform is left as it was."""
    import matplotlib.pyplot as plt

    from ..data.io import IGNORE_INDEX, colorize
    from ..data.transforms import TrainTransform
    from ..engine.config import DataConfig

    crop_size = DataConfig().crop_size if crop_size is None else crop_size

    fig, axes = plt.subplots(len(interpolations), count, figsize=(2.6 * count, 2.7 * len(interpolations)),
                             squeeze=False)
    own_transform = data.transform
    try:
        for col in range(count):
            for row, interpolation in enumerate(interpolations):
                data.transform = TrainTransform(crop_size, interpolation=interpolation, seed=seed)
                out = data[col % len(data)]
                picture = out["image_raw"].permute(1, 2, 0).numpy() * out["roi"].numpy()[..., None] / 255
                axes[row, col].imshow(picture)
                labeled = out["scribble"].numpy() != IGNORE_INDEX
                ys, xs = np.nonzero(labeled)
                axes[row, col].scatter(xs, ys, s=1, c=colorize(out["scribble"].numpy()[labeled]) / 255)
                axes[row, col].set_title(f"{interpolation}, sample {col % len(data)}", fontsize=8)
                axes[row, col].axis("off")
    finally:
        data.transform = own_transform
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """A matplotlib figure as PNG, written atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_sweep(result: dict):
    """Held-out mIoU against the swept weight (0 = without the term, drawn at the left edge)."""
    import matplotlib.pyplot as plt

    points = result["points"]
    key = result.get("key", DEFAULT_KEY)
    positive = [p["weight"] for p in points if p["weight"] > 0]
    zero_at = min(positive) / 4 if positive else 1.0  # where weight 0 is drawn on the log axis
    xs = [p["weight"] or zero_at for p in points]
    ys = [p["heldout_miou"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if all("gain_low" in p for p in points):  # each weight's interval of its gain over pCE, drawn around its score
        below = [p["gain_over_pce"] - p["gain_low"] for p in points]
        above = [p["gain_high"] - p["gain_over_pce"] for p in points]
        noise = result["noise"]
        ax.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3,
                    label=f"{noise['interval']:.0%} interval of the gain over pCE ({noise['images']} images, bootstrap)")
    else:
        ax.plot(xs, ys, marker="o")
    ax.set_xscale("log")
    ax.set_xticks(xs, [f"{p['weight']:g}" if p["weight"] else f"0 ({p['loss_type']})" for p in points])
    ax.axvline(result["best"] or zero_at, color="tab:orange", linestyle="--", label=f"chosen: {result['best']:g}")
    ax.set_xlabel("DenseCRF weight (x the published balance)" if key == DEFAULT_KEY else "normalized cut weight")
    ax.set_ylabel("mIoU on the held-out share of train")
    ax.set_title(f"{result['name']}: weight sweep ({result['holdout_fraction']:.0%} of train held out)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_sweep_plot(result: dict, results_dir: str | os.PathLike) -> Path:
    """The sweep's plot beside its JSON: ``<results_dir>/<name>_weight_sweep.png``."""
    return save_figure(plot_sweep(result), sweep_path(results_dir, result["name"]).with_suffix(".png"))
