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
"""

from __future__ import annotations

import math

PUBLISHED_WEIGHT = 2e-9
PUBLISHED_CROP = 513
PUBLISHED_SCALE_FACTOR = 0.5
PUBLISHED_SIGMA_XY = 100.0


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


def crf_balance(weight: float, height: int, width: int, sigma_xy: float, scale_factor: float = 1.0) -> float:
    """``w * P * m``: how strongly the DenseCRF term weighs against partial cross-entropy
    for ``height x width`` inputs (before the loss's own resize by ``scale_factor``)."""
    h, w = filtered_side(height, scale_factor), filtered_side(width, scale_factor)
    sigma = sigma_xy * scale_factor
    return weight * h * w * kernel_mass_1d(sigma, h) * kernel_mass_1d(sigma, w)


def published_balance() -> float:
    return crf_balance(PUBLISHED_WEIGHT, PUBLISHED_CROP, PUBLISHED_CROP, PUBLISHED_SIGMA_XY, PUBLISHED_SCALE_FACTOR)


def absolute_crf_weight(relative: float, height: int, width: int, sigma_xy: float, scale_factor: float = 1.0) -> float:
    """The ``DenseCRFLoss`` weight with ``relative`` times the published balance at this size."""
    return relative * published_balance() / crf_balance(1.0, height, width, sigma_xy, scale_factor)


def relative_crf_weight(weight: float, height: int, width: int, sigma_xy: float, scale_factor: float = 1.0) -> float:
    """The inverse of :func:`absolute_crf_weight`: an absolute weight as a multiple of the published balance."""
    return crf_balance(weight, height, width, sigma_xy, scale_factor) / published_balance()
