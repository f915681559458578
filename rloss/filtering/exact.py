"""The exact dense Gaussian filter ``(A S)_i = sum_j exp(-|f_i - f_j|^2 / 2) S_j``.

Quadratic in pixels: meant for small images and as the reference the lattice is
checked against. The affinity is built block by block so memory stays bounded
whatever the image size.
"""

from __future__ import annotations

import torch

# Largest affinity block held at once (bytes); the peak is about twice this.
DEFAULT_BLOCK_BYTES = 128 * 2**20


def exact_filter(features: torch.Tensor, values: torch.Tensor, block_bytes: int = DEFAULT_BLOCK_BYTES) -> torch.Tensor:
    """``features [N, P, D]``, ``values [N, K, P]`` -> ``[N, K, P]``, in the values' dtype."""
    n, p, _ = features.shape
    dtype = values.dtype
    # Centring keeps |f|^2 small, so |f_i|^2 + |f_j|^2 - 2 f_i.f_j loses little to cancellation.
    f = (features - features.mean(dim=1, keepdim=True)).to(dtype)
    sq = (f * f).sum(dim=-1)
    out = torch.empty_like(values)
    rows = max(1, block_bytes // (p * values.element_size()))
    if rows >= p:  # whole affinities of several images fit in one block
        group = max(1, rows // p)
        for i in range(0, n, group):
            fi, sqi = f[i : i + group], sq[i : i + group]
            affinity = torch.baddbmm(sqi.unsqueeze(2) + sqi.unsqueeze(1), fi, fi.transpose(1, 2), alpha=-2)
            affinity.clamp_(min=0).mul_(-0.5).exp_()
            torch.bmm(values[i : i + group], affinity, out=out[i : i + group])  # A is symmetric
        return out
    for i in range(n):
        for r in range(0, p, rows):
            fi, sqi = f[i, r : r + rows], sq[i, r : r + rows]
            affinity = torch.addmm(sqi.unsqueeze(1) + sq[i].unsqueeze(0), fi, f[i].T, alpha=-2)
            affinity.clamp_(min=0).mul_(-0.5).exp_()
            out[i, :, r : r + rows] = values[i] @ affinity.T
    return out
