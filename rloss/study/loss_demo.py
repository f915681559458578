"""Notebook 00's demonstration of the DenseCRF loss on a sample photo.

    check_demo_parameters(photo, photo_size, sigma_rgb, sigma_xy, kernel, num_classes, descent_steps)
    scale, residual = lattice_against_exact(image, probs, sigma_rgb, sigma_xy)   # the lattice's scale
    history, snapshots = descend(crf, image, logits, roi, steps)                 # the loss alone, descended
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..filtering import bilateral_features, exact_filter, permutohedral_filter, resolve_kernel
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
