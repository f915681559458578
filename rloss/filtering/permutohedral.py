"""The permutohedral-lattice filter (C++ on the CPU, CUDA on the GPU)."""

from __future__ import annotations

import torch

from ._extension import require_lattice


def permutohedral_filter(features: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``features [N, P, 5]``, ``values [N, K, P]`` -> ``[N, K, P]`` float32.

    Approximates the dense Gaussian filter up to a scale (about 0.5-0.6 on
    photos): the standard lattice, as the published DenseCRF loss weight assumes.
    """
    require_lattice(values.device)
    return torch.ops.rloss.permutohedral_filter(features.float().contiguous(), values.float().contiguous())


def permutohedral_crf(
    features: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, out_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DenseCRF energy and its gradient in one pass over the lattice.

    With ``S = probs * roi`` (``probs [N, K, P]``, ``roi [N, P]``) returns
    ``sum(S * A S)`` per image ``[N]`` and ``out_scale * roi * A S``
    ``[N, K, P]``, both float32.
    """
    require_lattice(probs.device)
    return torch.ops.rloss.permutohedral_crf(
        features.float().contiguous(), probs.float().contiguous(), roi.float().contiguous(), float(out_scale)
    )
