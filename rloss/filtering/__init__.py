"""Fast computation of ``A·S``: the dense Gaussian affinity applied to a soft segmentation.

Kernels: ``"exact"`` (dense, quadratic in pixels), ``"permutohedral"`` (the
lattice of Adams et al. 2010, linear in pixels, a scaled approximation) and
``"auto"`` (exact for small images, the lattice otherwise).
"""

from __future__ import annotations

import sys

import torch

from ._extension import ExtensionUnavailable, extension_status, load_extension, require_lattice
from .exact import exact_filter
from .features import FEATURE_DIM, bilateral_features
from .permutohedral import permutohedral_crf, permutohedral_filter

KERNELS = ("auto", "exact", "permutohedral")

# `auto` uses the exact kernel up to this many pixels per image: at 8x8 both
# kernels take under a millisecond, at 12x12 they are within the machine's
# noise, from 16x16 on the lattice is 2x and more faster (N=32, K=21, 2 threads;
# `python -m rloss bench crf --crossover`, recorded in benchmarks/README.md).
# The kernels differ in scale (the lattice is about 0.55x the exact Gaussian),
# so a loss weight tuned on one kernel is about 2x off on the other.
AUTO_EXACT_MAX_PIXELS = 8 * 8

# Without the extension, the exact kernel stands in up to this size (slow but
# bounded in memory); beyond it the loss refuses to run.
FALLBACK_EXACT_MAX_PIXELS = 128 * 128

_warned_fallback = False


def resolve_kernel(kernel: str, num_pixels: int, device: torch.device | str = "cpu") -> str:
    """The kernel that will actually run for images of ``num_pixels`` pixels on ``device``."""
    global _warned_fallback
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "exact" or (kernel == "auto" and num_pixels <= AUTO_EXACT_MAX_PIXELS):
        return "exact"
    try:
        require_lattice(device)
    except ExtensionUnavailable as exc:
        if num_pixels > FALLBACK_EXACT_MAX_PIXELS:
            raise ExtensionUnavailable(
                f"{exc}; images of {num_pixels} pixels are too large for the exact kernel "
                f"(limit {FALLBACK_EXACT_MAX_PIXELS})"
            ) from None
        if not _warned_fallback:
            print(f"rloss: {exc}; using the exact kernel (about 2x the lattice's scale)", file=sys.stderr)
            _warned_fallback = True
        return "exact"
    return "permutohedral"


def gaussian_filter(features: torch.Tensor, values: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """``A·values`` for ``features [N, P, 5]`` and ``values [N, K, P]`` with the chosen kernel."""
    if resolve_kernel(kernel, features.shape[1], values.device) == "exact":
        return exact_filter(features, values)
    return permutohedral_filter(features, values).to(values.dtype)


__all__ = [
    "AUTO_EXACT_MAX_PIXELS",
    "FEATURE_DIM",
    "KERNELS",
    "ExtensionUnavailable",
    "bilateral_features",
    "exact_filter",
    "extension_status",
    "gaussian_filter",
    "load_extension",
    "require_lattice",
    "permutohedral_crf",
    "permutohedral_filter",
    "resolve_kernel",
]
