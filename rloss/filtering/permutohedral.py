"""The permutohedral-lattice filter on two backends: the compiled extension (C++ on
the CPU, CUDA on the GPU) and the portable lattice (torch operations, any device)."""

from __future__ import annotations

import sys

import torch

from ._extension import ExtensionUnavailable, require_lattice
from .portable import portable_crf, portable_filter

BACKENDS = ("auto", "extension", "torch")

# What falling back costs, for the one-line notice (benchmarks/README.md, "Portable lattice").
PORTABLE_COST = {"cpu": "same values, 15-35x slower than the C++ lattice"}
PORTABLE_COST_ELSEWHERE = "same values, slower than a compiled lattice; see benchmarks/README.md"

_warned: set[tuple[str, str]] = set()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The lattice backend that runs on ``device``: ``"extension"`` or ``"torch"``.

    ``auto`` takes the extension where it is built for the device, else the portable
    lattice with one notice (per device type and reason) on stderr; ``extension``
    raises ExtensionUnavailable where it is not built."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    try:
        require_lattice(device)
    except ExtensionUnavailable as exc:
        if backend == "extension":
            raise
        device_type = torch.device(device).type
        if (device_type, str(exc)) not in _warned:
            _warned.add((device_type, str(exc)))
            cost = PORTABLE_COST.get(device_type, PORTABLE_COST_ELSEWHERE)
            print(f"rloss: {exc}; using the portable lattice ({cost})", file=sys.stderr)
        return "torch"
    return "extension"


def permutohedral_filter(features: torch.Tensor, values: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``features [N, P, D]`` (D from 2 to 16), ``values [N, K, P]`` -> ``[N, K, P]`` float32.

    Approximates the dense Gaussian filter up to a scale (about 0.5-0.6 on
    photos): the standard lattice, as the published DenseCRF loss weight assumes.
    """
    if resolve_backend(backend, values.device) == "torch":
        return portable_filter(features, values)
    return torch.ops.rloss.permutohedral_filter(features.float().contiguous(), values.float().contiguous())


def permutohedral_crf(
    features: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, out_scale: float = 1.0, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DenseCRF energy and its gradient in one pass over the lattice.

    With ``S = probs * roi`` (``probs [N, K, P]``, ``roi [N, P]``) returns
    ``sum(S * A S)`` per image ``[N]`` and ``out_scale * roi * A S``
    ``[N, K, P]``, both float32.
    """
    if resolve_backend(backend, probs.device) == "torch":
        return portable_crf(features, probs, roi, out_scale)
    return torch.ops.rloss.permutohedral_crf(
        features.float().contiguous(), probs.float().contiguous(), roi.float().contiguous(), float(out_scale)
    )
