"""Losses for training from scribbles: partial cross-entropy and the DenseCRF loss.

The DenseCRF loss of Tang et al. (ECCV 2018) is ``-sum_k S_k^T A S_k`` with
``A`` the fully connected Gaussian affinity over (x, y, r, g, b); its gradient
is ``-2 A S``. ``A S`` is computed once in the forward pass and reused by the
backward pass (``A`` is symmetric), so each step filters once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .filtering import BACKENDS, KERNELS, bilateral_features, exact_filter, permutohedral_crf, resolve_kernel


def partial_cross_entropy(
    logits: torch.Tensor, scribbles: torch.Tensor, ignore_index: int = 255, reduction: str = "mean"
) -> torch.Tensor:
    """Mean cross-entropy over the labeled (scribble) pixels only.

    ``logits [N, K, H, W]``, ``scribbles [N, H, W]`` integer class ids with
    ``ignore_index`` on unlabeled pixels. Computed in float32. A batch without a
    labeled pixel gives 0 with a zero gradient (not NaN). ``reduction="sum"``
    gives the sum over labeled pixels (for normalising across processes).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"partial_cross_entropy: reduction must be mean or sum, got {reduction!r}")
    if logits.dim() != 4:
        raise ValueError(f"partial_cross_entropy: logits must be [N, K, H, W], got shape {tuple(logits.shape)}")
    n, k, h, w = logits.shape
    if scribbles.shape != (n, h, w):
        raise ValueError(
            f"partial_cross_entropy: scribbles must be [N, H, W] = {(n, h, w)} to match the logits, "
            f"got shape {tuple(scribbles.shape)}"
        )
    if scribbles.is_floating_point() or scribbles.is_complex():
        raise ValueError(f"partial_cross_entropy: scribbles must hold integer class ids, got {scribbles.dtype}")
    labeled = scribbles != ignore_index
    if not scribbles.is_cuda:  # a value check on the GPU would synchronise every step
        bad = labeled & ((scribbles < 0) | (scribbles >= k))
        if bad.any():
            raise ValueError(
                f"partial_cross_entropy: scribble class {int(scribbles[bad][0])} is outside 0..{k - 1} "
                f"(and is not the ignore index {ignore_index})"
            )
    total = F.cross_entropy(logits.float(), scribbles.long(), ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    return total / labeled.sum().clamp(min=1)


class _DenseCRFTerm(torch.autograd.Function):
    """``-scale * sum(S * A S)`` with ``S = probs * roi``; gradient ``-2 scale (A S) roi``."""

    @staticmethod
    def forward(ctx, features, probs, roi, scale, kernel, backend):
        n, k, h, w = probs.shape
        grad_scale = -2.0 * scale
        if resolve_kernel(kernel) == "permutohedral":  # fused: one pass, no temporaries
            energy, gradient = permutohedral_crf(
                features, probs.reshape(n, k, h * w), roi.reshape(n, h * w), out_scale=grad_scale, backend=backend
            )
            energy, gradient = energy.to(probs.dtype), gradient.view(n, k, h, w).to(probs.dtype)
        else:
            segmentation = probs * roi.unsqueeze(1)
            filtered = exact_filter(features, segmentation.reshape(n, k, h * w)).view(n, k, h, w)
            energy = (segmentation * filtered).sum()
            gradient = filtered.mul_(roi.unsqueeze(1)).mul_(grad_scale)
        ctx.save_for_backward(gradient)
        return -scale * energy.sum()

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        # The usual grad_output of 1 returns the saved gradient itself: a new
        # tensor of probs' size would cost as much as the rest of the backward
        # pass. (Checked on the CPU only: reading a GPU value would synchronise.)
        if grad_output.device.type == "cpu" and grad_output.item() == 1.0:
            return None, gradient, None, None, None, None
        return None, gradient * grad_output, None, None, None, None


class DenseCRFLoss(nn.Module):
    """The DenseCRF regularised loss, called as ``loss(images, probs, roi)``.

    Args:
        weight: loss weight (published: 2e-9 with the permutohedral kernel at 513 px).
        sigma_rgb: colour bandwidth in 0..255 units (published: 15).
        sigma_xy: spatial bandwidth in pixels of the full-size input (published: 100).
        scale_factor: the loss is computed on inputs resized by this factor
            (published: 0.5); ``sigma_xy`` is scaled with it.
        kernel: ``"auto"``, ``"exact"`` or ``"permutohedral"`` (see ``rloss.filtering``).
            The exact kernel is the true Gaussian; the lattice is about 0.5-0.6x
            of it on photos, and the published weight is tuned to the lattice.
            ``auto`` is the lattice at every size; ``permutohedral`` is always a lattice.
        backend: the lattice's implementation: ``"extension"`` (compiled C++/CUDA),
            ``"torch"`` (the portable lattice, torch operations on any device, same
            values) or ``"auto"`` (the extension where it is built for the tensor's
            device, else the portable lattice with a one-line notice).
        validate: ``True`` checks values (finite, ranges, probs summing to 1) on every
            call. ``None`` checks CPU tensors only, since reading values back from a
            GPU would synchronise every step: all values on the first 10 calls and
            every 50th after, NaN and infinity on every call (through the loss
            value), so the checks cost under 10% of the loss. ``False`` checks no
            values. Shapes and dtypes are always checked.

    Inputs: ``images [N, 3, H, W]`` RGB in 0..255 (not normalised), ``probs
    [N, K, H, W]`` softmax output, ``roi [N, H, W]`` 1 where the loss applies
    (0 on padding). Returns the scalar ``-weight / N * sum(S * A S)`` with
    ``S = probs * roi``, computed in float32 (float64 for float64 inputs) even
    under autocast.
    """

    def __init__(
        self,
        weight: float,
        sigma_rgb: float,
        sigma_xy: float,
        scale_factor: float = 1.0,
        kernel: str = "auto",
        backend: str = "auto",
        validate: bool | None = None,
    ):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"DenseCRFLoss: kernel must be one of {KERNELS}, got {kernel!r}")
        if backend not in BACKENDS:
            raise ValueError(f"DenseCRFLoss: backend must be one of {BACKENDS}, got {backend!r}")
        for name, value in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy), ("scale_factor", scale_factor)):
            if not value > 0:
                raise ValueError(f"DenseCRFLoss: {name} must be > 0, got {value}")
        self.weight = float(weight)
        self.sigma_rgb = float(sigma_rgb)
        self.sigma_xy = float(sigma_xy)
        self.scale_factor = float(scale_factor)
        self.kernel = kernel
        self.backend = backend
        self.validate = validate
        self._calls = 0  # forward calls so far, for the scheduled checks

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, "
            f"scale_factor={self.scale_factor}, kernel={self.kernel!r}, backend={self.backend!r}"
        )

    def forward(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        _check_shapes(images, probs, roi)
        # Default (validate=None) on CPU tensors: every check on scheduled calls; on the
        # others a non-finite result or an error of the op (both free to see) brings the
        # checks in, so that they name the input at fault.
        watch = self.validate is None and not probs.is_cuda
        call, self._calls = self._calls, self._calls + 1
        if self.validate or (watch and _scheduled_check(call)):
            _check_values(images, probs, roi)
        try:
            loss = self._loss(images, probs, roi)
        except RuntimeError:
            if watch:
                _check_values(images, probs, roi)
            raise
        if watch and not torch.isfinite(loss):
            _check_values(images, probs, roi)
            raise ValueError("DenseCRFLoss: the loss is not finite although the inputs are in range")
        return loss

    def _loss(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=probs.device.type, enabled=False):
            images, probs, roi = images.to(dtype), probs.to(dtype), roi.to(dtype)
            sigma_xy = self.sigma_xy
            if self.scale_factor != 1.0:
                s = self.scale_factor
                images = F.interpolate(images, scale_factor=s, mode="nearest")
                probs = F.interpolate(probs, scale_factor=s, mode="bilinear", align_corners=False)
                roi = F.interpolate(roi.unsqueeze(1), scale_factor=s, mode="nearest").squeeze(1)
                sigma_xy = sigma_xy * s
            features = bilateral_features(images, self.sigma_rgb, sigma_xy)
            return _DenseCRFTerm.apply(features, probs, roi, self.weight / probs.shape[0], self.kernel, self.backend)


def _check_shapes(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> None:
    if probs.dim() != 4:
        raise ValueError(f"DenseCRFLoss: probs must be [N, K, H, W], got shape {tuple(probs.shape)}")
    n, _, h, w = probs.shape
    if images.shape != (n, 3, h, w):
        raise ValueError(
            f"DenseCRFLoss: images must be [N, 3, H, W] = {(n, 3, h, w)} to match probs, got {tuple(images.shape)}"
        )
    if roi.shape != (n, h, w):
        raise ValueError(f"DenseCRFLoss: roi must be [N, H, W] = {(n, h, w)} to match probs, got {tuple(roi.shape)}")
    for name, t in (("images", images), ("probs", probs)):
        if not t.is_floating_point():
            raise ValueError(f"DenseCRFLoss: {name} must be a floating-point tensor, got {t.dtype}")
    if not (images.device == probs.device == roi.device):
        raise ValueError(
            f"DenseCRFLoss: images, probs and roi must be on one device, got {images.device}, {probs.device}, {roi.device}"
        )


# Default checks (validate=None, CPU tensors): every check on the first calls and then
# on every CHECK_EVERY-th (inputs out of range, a softmax left out or applied twice,
# show from the first step); NaN and infinity on every call, through the loss value.
# Checking every call cost +70% of the loss, this under 10% (benchmarks/README.md,
# "Input checks").
CHECK_FIRST_CALLS = 10
CHECK_EVERY = 50


def _scheduled_check(call: int) -> bool:
    return call < CHECK_FIRST_CALLS or call % CHECK_EVERY == 0


@torch.no_grad()
def _check_values(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> None:
    """Raises ValueError naming the first input out of its range: one aminmax per input
    (NaN propagates into it; infinity fails the range) and the per-pixel sums of probs."""
    lo, hi = (float(v) for v in torch.aminmax(images))
    _check_finite("images", lo, hi)
    if lo < -1e-3 or hi > 255.0 + 1e-3:
        raise ValueError(
            f"DenseCRFLoss: images must be RGB in 0..255 (not normalised), got values in [{lo:.3g}, {hi:.3g}]"
        )
    tol = 1e-3 if probs.dtype in (torch.float32, torch.float64) else 3e-2
    lo, hi = (float(v) for v in torch.aminmax(probs))
    _check_finite("probs", lo, hi)
    if lo < -tol or hi > 1.0 + tol:
        raise ValueError(f"DenseCRFLoss: probs must be probabilities (softmax output), got values in [{lo:.3g}, {hi:.3g}]")
    sum_lo, sum_hi = (float(v) for v in torch.aminmax(probs.sum(dim=1, dtype=torch.float32)))
    error = max(abs(sum_lo - 1.0), abs(sum_hi - 1.0))
    if error > tol:
        raise ValueError(
            f"DenseCRFLoss: probs must sum to 1 over the class dimension (softmax output); "
            f"the largest deviation is {error:.3g}"
        )
    if roi.is_floating_point():
        lo, hi = (float(v) for v in torch.aminmax(roi))
        _check_finite("roi", lo, hi)
    else:
        lo, hi = int(roi.min()), int(roi.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"DenseCRFLoss: roi must be in 0..1 (1 where the loss applies), got values in [{lo:.3g}, {hi:.3g}]")


def _check_finite(name: str, lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"DenseCRFLoss: {name} contains NaN or infinite values")
