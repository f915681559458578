"""Test inputs shared by several test modules (imported by name: test modules cannot import
from a conftest.py reliably, since notebooks/ has one too)."""

import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def photo(name: str, size: int) -> torch.Tensor:
    """A scikit-image sample photo resized to size x size: float RGB 0..255, [1, 3, size, size]."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float()
    return F.interpolate(image, size=(size, size), mode="area").clamp(0, 255)


def smooth_probs(n: int, k: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random softmax maps, smooth at 1/8 resolution like a network's output."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, max(1, size // 8), max(1, size // 8), generator=g, dtype=torch.float64) * 3
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False).softmax(1).to(dtype)
