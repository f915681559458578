"""Feature vectors of the DenseCRF affinity: the pixel's position over the spatial bandwidth,
then its channels over the channel bandwidth. For an RGB image (x/σxy, y/σxy, r/σrgb,
g/σrgb, b/σrgb); for a grayscale volume (x/σx, y/σy, z/σz, v/σv)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# The RGB image's feature dimension (x, y, r, g, b).
FEATURE_DIM = 5
# The lattices' range: 2-D grayscale has 3 dimensions; 16 holds a 2-D image of 14 bands
# or a volume of 13 (the lattice's cost grows about as D² per pixel).
MIN_FEATURE_DIM = 2
MAX_FEATURE_DIM = 16


def bandwidths(name: str, sigma: float | Sequence[float], count: int, what: str) -> list[float]:
    """``sigma`` as ``count`` positive finite floats: one number for all, or one per item (``what``
    names the items in the error)."""
    values = [sigma] * count if isinstance(sigma, (int, float)) else list(sigma)
    if len(values) != count:
        raise ValueError(f"{name} must be one number or {count} (one per {what}), got {len(values)}: {sigma!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be > 0 and finite, got {sigma!r}")
    return [float(v) for v in values]


def bilateral_features(
    images: torch.Tensor, sigma_rgb: float | Sequence[float], sigma_xy: float | Sequence[float]
) -> torch.Tensor:
    """Per-pixel features of images ``[N, C, H, W]`` or volumes ``[N, C, D, H, W]`` as
    ``[N, pixels, spatial axes + C]``.

    The spatial features come first: x (the column), y (the row) and, for a volume, z (the
    slice), in pixels of ``images``, each over its bandwidth; then the C channels over theirs.
    ``sigma_xy``: one bandwidth for every axis, or one per axis in the tensor's order
    ((H, W), or (D, H, W) for a volume: its voxel spacing's order). ``sigma_rgb``: one for
    every channel or one per channel. The result has the images' dtype and device; an RGB
    image's is (x, y, r, g, b), as it always was.
    """
    if images.dim() not in (4, 5):
        raise ValueError(f"images must be [N, C, H, W] or [N, C, D, H, W], got shape {tuple(images.shape)}")
    n, c, *spatial = images.shape
    channel_sigmas = bandwidths("sigma_rgb", sigma_rgb, c, "channel")
    axis_sigmas = bandwidths("sigma_xy", sigma_xy, len(spatial), "spatial axis")
    dim = len(spatial) + c
    if not MIN_FEATURE_DIM <= dim <= MAX_FEATURE_DIM:
        raise ValueError(f"images with {len(spatial)} spatial axes and {c} channels need {dim} feature dimensions; "
                         f"the lattice takes {MIN_FEATURE_DIM} to {MAX_FEATURE_DIM}")
    pixels = images[0, 0].numel()
    grids = torch.meshgrid(*[torch.arange(size, device=images.device, dtype=images.dtype) for size in spatial],
                           indexing="ij")
    # x, y, z: the last axis first, each divided by its number (as the RGB code divided both, bit for bit).
    axes = [grid.reshape(pixels) / sigma for grid, sigma in zip(reversed(grids), reversed(axis_sigmas))]
    position = torch.stack(axes, dim=-1).reshape(1, pixels, len(spatial))
    values = images.reshape(n, c, pixels).transpose(1, 2)
    if len(set(channel_sigmas)) == 1:  # one number divides as the RGB code always did (bit for bit)
        values = values / channel_sigmas[0]
    else:
        values = values / torch.tensor(channel_sigmas, dtype=images.dtype, device=images.device)
    return torch.cat([position.expand(n, -1, -1), values], dim=-1).contiguous()
