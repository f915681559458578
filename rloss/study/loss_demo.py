"""Notebook 00's demonstration of the DenseCRF loss on a sample photo.

    check_demo_parameters(photo, photo_size, sigma_rgb, sigma_xy, kernel, num_classes, descent_steps)
    demo = demo_inputs(photo, photo_size, num_classes, seed)                    # photo, logits, S, ROI
    maps = loss_maps(demo, sigma_rgb, sigma_xy, kernel)                         # A·S, the loss, its gradient
    plot_loss_maps(demo, maps)
    scale, residual = lattice_against_exact(demo.image, demo.probs, sigma_rgb, sigma_xy)   # the lattice's scale
    history, snapshots = descend(crf, demo.image, demo.logits, demo.roi, steps)          # the loss alone, descended
    plot_descent(demo.image, history, snapshots)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..filtering import bilateral_features, exact_filter, gaussian_filter, permutohedral_filter, resolve_kernel
from ..losses import DenseCRFLoss
from .parameters import check_choice, check_integer, check_positive

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")  # scikit-image's RGB samples


def check_demo_parameters(photo: str, photo_size: int, sigma_rgb: float, sigma_xy: float, kernel: str,
                          num_classes: int, descent_steps: int) -> None:
    """One ValueError line naming the first parameter at fault."""
    check_choice("photo", photo, PHOTOS)
    check_integer("photo_size", photo_size, 8, 1024)
    check_positive("sigma_rgb", sigma_rgb)
    check_positive("sigma_xy", sigma_xy)
    resolve_kernel(kernel)  # the filtering layer's own check: "kernel must be one of ..."
    check_integer("num_classes", num_classes, 2)
    check_integer("descent_steps", descent_steps, 1)


@dataclass
class DemoInputs:
    """A photo ``image [1,3,S,S]`` (0..255), random ``logits [1,K,S,S]`` smooth like a network's output,
    their softmax ``probs`` (requires grad: the loss's gradient lands in ``probs.grad``) and the ``roi``."""

    image: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    roi: torch.Tensor


def demo_inputs(photo: str, photo_size: int, num_classes: int, seed: int = 0) -> DemoInputs:
    """scikit-image's sample ``photo`` resized (area) to ``photo_size`` on a side, and a random soft
    segmentation of ``num_classes``: logits drawn at 1/8 of the size (``seed``), upscaled bilinearly."""
    from skimage import data

    generator = torch.Generator().manual_seed(seed)
    image = torch.from_numpy(getattr(data, photo)()).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=(photo_size, photo_size), mode="area").clamp(0, 255)
    low = max(1, photo_size // 8)
    logits = F.interpolate(torch.randn(1, num_classes, low, low, generator=generator) * 3,
                           size=(photo_size, photo_size), mode="bilinear", align_corners=False)
    probs = logits.softmax(dim=1).requires_grad_(True)
    return DemoInputs(image, logits, probs, torch.ones(1, photo_size, photo_size))


def loss_maps(demo: DemoInputs, sigma_rgb: float, sigma_xy: float, kernel: str) -> dict:
    """The DenseCRF loss at weight 1 on ``demo``, backpropagated into ``demo.probs.grad``: ``loss`` (its
    value), ``kernel`` (the kernel it used) and the maps ``S``, ``A·S`` and ``gradient −2A·S`` [1,K,S,S]."""
    probs = demo.probs
    features = bilateral_features(demo.image, sigma_rgb, sigma_xy)
    filtered = gaussian_filter(features, probs.detach().flatten(2), kernel).view_as(probs)
    loss = DenseCRFLoss(weight=1.0, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale_factor=1.0,
                        kernel=kernel)(demo.image, probs, demo.roi)
    loss.backward()
    return {"loss": loss.item(), "kernel": resolve_kernel(kernel, probs.shape[-2] * probs.shape[-1]),
            "S": probs.detach(), "A·S": filtered, "gradient −2A·S": probs.grad}


def plot_loss_maps(demo: DemoInputs, maps: dict):
    """One row per map of :func:`loss_maps` (``S``, ``A·S``, the gradient): the photo, then each class."""
    from .plots import panel_grid

    num_classes = demo.probs.shape[1]
    panels = []
    for name in ("S", "A·S", "gradient −2A·S"):
        panels += [("photo", demo.image[0])] + [(f"{name}, class {k}", maps[name][0, k]) for k in range(num_classes)]
    return panel_grid(panels, ncols=num_classes + 1)


def plot_descent(image: torch.Tensor, history: list[float], snapshots: dict[int, torch.Tensor]):
    """:func:`descend`'s loss along its steps, then its label maps over the photo at the steps it kept."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(snapshots) + 1, figsize=(3.2 * (len(snapshots) + 1), 3))
    axes[0].plot(history)
    axes[0].set(title="DenseCRF loss", xlabel="step")
    for ax, (step, labels) in zip(axes[1:], snapshots.items()):
        ax.imshow(image[0].permute(1, 2, 0).byte().numpy())
        ax.imshow(labels.numpy(), alpha=0.45, cmap="tab10", vmin=0, vmax=9)
        ax.set_title(f"step {step}")
        ax.axis("off")
    fig.tight_layout()
    return fig


def fit_scale(approximate: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """The least-squares ``scale`` with ``approximate ≈ scale * exact`` and the relative residual
    ``|approximate - scale * exact| / |approximate|``."""
    scale = ((approximate * exact).sum() / (exact * exact).sum()).item()
    residual = ((approximate - scale * exact).norm() / approximate.norm()).item()
    return scale, residual


def lattice_against_exact(image: torch.Tensor, probs: torch.Tensor, sigma_rgb: float, sigma_xy: float,
                          side: int = 64) -> tuple[float, float]:
    """:func:`fit_scale` of the permutohedral lattice's ``A·S`` against the exact Gaussian's, on
    ``image [1,3,H,W]`` and ``probs [1,K,H,W]`` resized to at most ``side`` (the exact kernel is
    quadratic in pixels; sigma_xy shrinks with the image)."""
    size = image.shape[-1]
    side = min(size, side)
    small = F.interpolate(image, size=(side, side), mode="area")
    features = bilateral_features(small, sigma_rgb, sigma_xy * side / size)
    values = F.interpolate(probs.detach(), size=(side, side), mode="bilinear", align_corners=False).flatten(2)
    exact = exact_filter(features.double(), values.double()).float()
    return fit_scale(permutohedral_filter(features, values), exact)


def descend(loss, image: torch.Tensor, logits: torch.Tensor, roi: torch.Tensor, steps: int,
            lr: float = 0.3) -> tuple[list[float], dict[int, torch.Tensor]]:
    """``steps`` Adam steps on ``loss(image, softmax(logits), roi)`` alone, from a copy of ``logits``.
    Returns the loss before each step and after the last, and the label maps at steps 0,
    steps // 2 and steps."""
    weights = logits.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    history, snapshots = [], {}
    for step in range(steps + 1):
        value = loss(image, weights.softmax(dim=1), roi)
        history.append(value.item())
        if step in (0, steps // 2, steps):
            snapshots[step] = weights.detach().softmax(dim=1)[0].argmax(dim=0)
        if step < steps:
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
    return history, snapshots
