"""The device a run computes on (``run.device``) and its mixed precision (``run.amp``)."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import TrainingError


def resolve_device(name: str) -> torch.device:
    """``run.device``: ``auto`` (CUDA where there is one), ``cpu`` or ``cuda``; CUDA asked for where there is none is one error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("run.device is cuda but CUDA is not available (use run.device=cpu or auto)")
    return torch.device(name)


def autocast(device: torch.device, amp: str):
    """The forward pass's precision: ``off`` (float32), ``bf16`` or ``fp16``."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
