"""A DenseCRF loss weight that means the same at every resolution.

The DenseCRF loss is ``-w/N * sum_k S_k^T A S_k`` over the P pixels of each filtered
image; its gradient at a pixel is ``-2w/N (A S)_p``, bounded by the kernel's mass
``(A 1)_p``. Partial cross-entropy is a *mean* over labeled pixels, so its total
gradient does not grow with the image. The DenseCRF term's total gradient (and
its value) grows as ``w * P * m``, with ``m`` the spatial Gaussian's mass per
pixel (about ``2 pi sigma_xy^2``, less near the borders and when ``sigma_xy`` is
large against the image). The colour part of the kernel depends on the image's
content, not on its size, and is left alone: it is what the loss measures. (So across
sigma_xy the balance is exact on flat colour and approximate on photos, where a wider
kernel also reaches other colours, which the colour term weighs down.)

So ``w * P * m`` is the balance between the two terms. The *relative* weight is
that balance divided by the published one (Tang et al., ECCV 2018: weight 2e-9,
513 px crops filtered at scale 0.5, i.e. 256x256 pixels with sigma_xy 100 * 0.5):

    relative = w * P * m(sigma_xy * s, h, w) / (2e-9 * 256^2 * m(50, 256, 256))

A relative weight of 1.0 is the paper's balance on any crop, scale factor or
sigma_xy; ``absolute_crf_weight`` turns it into the ``weight`` that
``DenseCRFLoss`` takes (about 5.1e-7 for 64 px crops with sigma_xy 12.5).

Other images: for a volume P counts voxels and ``m`` is the product of the three axes'
masses (a bandwidth per axis for anisotropic voxels); on flat colour the colour part of the
exact kernel is 1 whatever the channel count. The lattice, which the published weight is
tuned to, is not: its output on flat colour is a fraction of the exact Gaussian's that falls
as the feature dimension grows (:data:`LATTICE_SCALE`: 0.54 for RGB, 0.75 for grayscale,
0.29 for 8 bands), so the balance is also multiplied by that fraction over RGB's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .filtering.features import bandwidths

PUBLISHED_WEIGHT = 2e-9
PUBLISHED_CROP = 513
PUBLISHED_SCALE_FACTOR = 0.5
PUBLISHED_SIGMA_XY = 100.0

# The lattice's output over the exact Gaussian's on flat colour, by spatial axes and feature
# dimension (spatial axes + channels): a constant signal filtered on flat images, the ratio in the
# middle half averaged over colour levels spread over 0..255, measured by :func:`measure_lattice_scale`
# (2-D: 32 px, sigma_xy 8, 16 levels; 48 px, sigma_xy 12 gives the same to 3 digits. 3-D: 20
# voxels, sigma 6, 8 levels; 16 voxels, sigma 4 gives values within 2%). One level alone can be
# 30% off: where the colour plane cuts the lattice matters.
LATTICE_SCALE = {
    2: {3: 0.751, 4: 0.637, 5: 0.540, 6: 0.467, 7: 0.413, 8: 0.366, 9: 0.328, 10: 0.293, 11: 0.263,
        12: 0.240, 13: 0.219, 14: 0.204, 15: 0.189, 16: 0.176},
    3: {4: 0.692, 5: 0.583, 6: 0.500, 7: 0.438, 8: 0.388, 9: 0.332, 10: 0.296, 11: 0.268, 12: 0.241,
        13: 0.220, 14: 0.206, 15: 0.194, 16: 0.179},
}
RGB = (2, 5)  # the published setting's spatial axes and feature dimension


def filtered_side(side: int, scale_factor: float) -> int:
    """The side the loss filters at: ``F.interpolate(scale_factor=s)`` gives ``floor(side * s)``."""
    return side if scale_factor == 1.0 else max(1, math.floor(side * scale_factor))


def kernel_mass_1d(sigma: float, n: int) -> float:
    """``(1/n) sum_i sum_j exp(-(i-j)^2 / (2 sigma^2))`` over a line of ``n`` pixels:
    the mean mass of a 1-D Gaussian kernel cut off at the borders."""
    if n < 1 or not sigma > 0:
        raise ValueError(f"kernel_mass_1d: need n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
    total = 1.0  # the offset 0, n times, divided by n
    for d in range(1, n):
        term = math.exp(-d * d / (2.0 * sigma * sigma))
        if term < 1e-12:
            break
        total += 2.0 * (n - d) / n * term
    return total


def lattice_scale(spatial_axes: int, feature_dim: int) -> float:
    """The lattice's output over the exact Gaussian's on flat colour (:data:`LATTICE_SCALE`)."""
    try:
        return LATTICE_SCALE[spatial_axes][feature_dim]
    except KeyError:
        raise ValueError(f"no lattice scale for {spatial_axes} spatial axes and feature dimension {feature_dim} "
                         f"(2-D: 3 to 16, 3-D: 4 to 16)") from None


def measure_lattice_scale(spatial_axes: int, feature_dim: int, side: int, sigma_xy: float, levels: int) -> float:
    """How :data:`LATTICE_SCALE` was measured (portable lattice, exact kernel in float64)."""
    import torch

    from .filtering import bilateral_features, exact_filter, portable_filter

    channels = feature_dim - spatial_axes
    spatial = (side,) * spatial_axes
    ones = torch.ones(1, 1, side**spatial_axes)
    middle = (slice(side // 4, 3 * side // 4),) * spatial_axes
    ratios = []
    for i in range(levels):  # colour levels spread evenly over 0..255 (golden-ratio steps)
        level = torch.tensor([((i + 1) * (math.sqrt(5) - 1) / 2 + c * math.sqrt(2)) % 1.0 * 255 for c in range(channels)])
        image = level.view(1, channels, *[1] * spatial_axes).expand(1, channels, *spatial).contiguous()
        features = bilateral_features(image, 15.0, sigma_xy)
        exact = exact_filter(features.double(), ones.double()).view(spatial)
        lattice = portable_filter(features, ones).double().view(spatial)
        ratios.append(float(lattice[middle].mean() / exact[middle].mean()))
    return sum(ratios) / levels


def crf_balance(weight: float, height: int, width: int, sigma_xy: float | Sequence[float], scale_factor: float = 1.0,
                *, depth: int | None = None, channels: int = 3) -> float:
    """``w * P * m``: how strongly the DenseCRF term weighs against partial cross-entropy
    for ``height x width`` inputs (``depth`` slices for a volume; ``sigma_xy`` one number or one
    per axis in tensor order) before the loss's own resize by ``scale_factor``; for images other
    than RGB also times the lattice's scale at their feature dimension over RGB's."""
    sides = (height, width) if depth is None else (depth, height, width)  # tensor order, as sigma_xy's
    sigmas = bandwidths("sigma_xy", sigma_xy, len(sides), "spatial axis")
    filtered = [filtered_side(side, scale_factor) for side in sides]
    balance = weight
    for n in filtered:  # w * P, then times each axis's mass: the order RGB's figures were computed in
        balance *= n
    for n, sigma in zip(filtered, sigmas):
        balance *= kernel_mass_1d(sigma * scale_factor, n)
    setting = (len(sides), len(sides) + channels)
    if setting != RGB:
        balance *= lattice_scale(*setting) / lattice_scale(*RGB)
    return balance


def published_balance() -> float:
    return crf_balance(PUBLISHED_WEIGHT, PUBLISHED_CROP, PUBLISHED_CROP, PUBLISHED_SIGMA_XY, PUBLISHED_SCALE_FACTOR)


def absolute_crf_weight(relative: float, height: int, width: int, sigma_xy: float | Sequence[float],
                        scale_factor: float = 1.0, *, depth: int | None = None, channels: int = 3) -> float:
    """The ``DenseCRFLoss`` weight with ``relative`` times the published balance at this size
    (``depth`` and ``channels`` as :func:`crf_balance` takes them)."""
    unit = crf_balance(1.0, height, width, sigma_xy, scale_factor, depth=depth, channels=channels)
    return relative * published_balance() / unit


def relative_crf_weight(weight: float, height: int, width: int, sigma_xy: float | Sequence[float],
                        scale_factor: float = 1.0, *, depth: int | None = None, channels: int = 3) -> float:
    """The inverse of :func:`absolute_crf_weight`: an absolute weight as a multiple of the published balance."""
    return crf_balance(weight, height, width, sigma_xy, scale_factor, depth=depth, channels=channels) / published_balance()
