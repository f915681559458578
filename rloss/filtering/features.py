"""Feature vectors of the DenseCRF affinity: (x/σxy, y/σxy, r/σrgb, g/σrgb, b/σrgb)."""

from __future__ import annotations

import torch

FEATURE_DIM = 5


def bilateral_features(images: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    """Per-pixel features of images ``[N, 3, H, W]`` (RGB 0..255) as ``[N, H*W, 5]``.

    x is the column and y the row index, in pixels of ``images``; the result has
    the images' dtype and device.
    """
    if sigma_rgb <= 0 or sigma_xy <= 0:
        raise ValueError(f"sigma_rgb and sigma_xy must be > 0, got {sigma_rgb} and {sigma_xy}")
    n, _, h, w = images.shape
    ys = torch.arange(h, device=images.device, dtype=images.dtype).view(h, 1).expand(h, w)
    xs = torch.arange(w, device=images.device, dtype=images.dtype).view(1, w).expand(h, w)
    xy = torch.stack([xs, ys], dim=-1).reshape(1, h * w, 2) / sigma_xy
    rgb = images.reshape(n, 3, h * w).transpose(1, 2) / sigma_rgb
    return torch.cat([xy.expand(n, -1, -1), rgb], dim=-1).contiguous()
