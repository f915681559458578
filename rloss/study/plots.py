"""Plots shared by the notebooks."""

from __future__ import annotations

import math

import numpy as np
import torch


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
LOSS_COLOURS = {"pce": "tab:blue", "pce_crf": "tab:orange", "full": "tab:green", "pce_nc": "tab:purple",
                "pce_kernelcut": "tab:red"}


def plot_grid_curves(runs: list[dict], title: str):
    """Validation mIoU along training, one line per run (a colour per loss, labelled once)."""
    import matplotlib.pyplot as plt

    from .grid import LOSS_LABELS, curve

    fig, ax = plt.subplots(figsize=(7, 4))
    labelled = set()
    for run in sorted(runs, key=lambda r: (r["loss"], r["seed"])):
        points = curve(run, runs)  # a two-phase run continues its pCE run's line
        if not points:
            continue
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", color=LOSS_COLOURS[run["loss"]], alpha=0.8,
                label=None if run["loss"] in labelled else LOSS_LABELS[run["loss"]])
        labelled.add(run["loss"])
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU")
    ax.set_title(f"{title}: learning curves (one line per seed)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


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


def plot_training_crops(data, crop_size: int, seed: int = 0, count: int = 4,
                        interpolations=("bicubic", "bilinear")):
    """What training sees: a random training crop of each of the first ``count`` samples (cycling
    when the split is smaller), one row per upscaling ``interpolation``, padding blacked out, the
    scribbles as dots. ``data``'s own transform is left as it was."""
    import matplotlib.pyplot as plt

    from ..data.io import IGNORE_INDEX, colorize
    from ..data.transforms import TrainTransform

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
