"""Fast computation of ``A·S``: the dense Gaussian affinity applied to a soft segmentation.

Kernels: ``"exact"`` (dense, quadratic in pixels), ``"permutohedral"`` (the
lattice of Adams et al. 2010, linear in pixels, a scaled approximation) and
``"auto"`` (the lattice, at every size). Lattice backends: ``"extension"`` (C++
and CUDA, compiled on first use), ``"torch"`` (the portable lattice, torch
operations on any device) and ``"auto"`` (the extension where it is built for the
tensor's device, else the portable lattice with a one-line notice).
"""

from __future__ import annotations

import torch

from ._extension import ExtensionUnavailable, extension_status, load_extension, require_lattice
from .exact import exact_filter
from .features import FEATURE_DIM, MAX_FEATURE_DIM, MIN_FEATURE_DIM, bilateral_features
from .permutohedral import BACKENDS, permutohedral_crf, permutohedral_filter, resolve_backend
from .portable import portable_crf, portable_filter

KERNELS = ("auto", "exact", "permutohedral")


def resolve_kernel(kernel: str, num_pixels: int = 0, device: torch.device | str = "cpu") -> str:
    """The kernel that runs: ``"exact"`` only when asked for; ``auto`` is the lattice at
    every size and on every device, so a loss weight never changes meaning with the
    image size (the lattice is about 0.55x the exact Gaussian). ``num_pixels`` and
    ``device`` no longer change the answer."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return "exact" if kernel == "exact" else "permutohedral"


def gaussian_filter(
    features: torch.Tensor, values: torch.Tensor, kernel: str = "auto", backend: str = "auto"
) -> torch.Tensor:
    """``A·values`` for ``features [N, P, D]`` and ``values [N, K, P]`` with the chosen kernel."""
    if resolve_kernel(kernel) == "exact":
        return exact_filter(features, values)
    return permutohedral_filter(features, values, backend).to(values.dtype)


__all__ = [
    "BACKENDS",
    "FEATURE_DIM",
    "KERNELS",
    "MAX_FEATURE_DIM",
    "MIN_FEATURE_DIM",
    "ExtensionUnavailable",
    "bilateral_features",
    "exact_filter",
    "extension_status",
    "gaussian_filter",
    "load_extension",
    "require_lattice",
    "permutohedral_crf",
    "permutohedral_filter",
    "portable_crf",
    "portable_filter",
    "resolve_backend",
    "resolve_kernel",
]
