"""Losses for training from scribbles: partial cross-entropy and the regularized losses
built on the Gaussian affinity ``A``: DenseCRF, normalized cut and KernelCut.

The DenseCRF loss of Tang et al. (ECCV 2018) is ``-sum_k S_k^T A S_k`` with
``A`` the fully connected Gaussian affinity over (x, y, r, g, b) (any channel count, and
(x, y, z, channels) for volumes); its gradient is ``-2 A S``. ``A S`` is computed once in
the forward pass and reused by the backward pass (``A`` is symmetric), so each step
filters once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .filtering import (
    BACKENDS,
    KERNELS,
    bilateral_features,
    exact_filter,
    permutohedral_crf,
    resolve_kernel,
)


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
        n, k, pixels = probs.shape[0], probs.shape[1], probs[0, 0].numel()  # [N, K, H, W] or [N, K, D, H, W]
        grad_scale = -2.0 * scale
        if resolve_kernel(kernel) == "permutohedral":  # fused: one pass, no temporaries
            energy, gradient = permutohedral_crf(
                features, probs.reshape(n, k, pixels), roi.reshape(n, pixels), out_scale=grad_scale, backend=backend
            )
            energy, gradient = energy.to(probs.dtype), gradient.view(probs.shape).to(probs.dtype)
        else:
            segmentation = probs * roi.unsqueeze(1)
            filtered = exact_filter(features, segmentation.reshape(n, k, pixels)).view(probs.shape)
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


class _AffinityLoss(nn.Module):
    """What the losses built on the Gaussian affinity share: the call ``loss(images, probs,
    roi=None)``, the input checks (``validate``), float32 under autocast and the resize by
    ``scale_factor``. A subclass gives its terms in ``_terms(images, probs, roi)``."""

    def __init__(self, scale_factor: float, kernel: str, backend: str, validate: bool | None):
        super().__init__()
        name = type(self).__name__
        if kernel not in KERNELS:
            raise ValueError(f"{name}: kernel must be one of {KERNELS}, got {kernel!r}")
        if backend not in BACKENDS:
            raise ValueError(f"{name}: backend must be one of {BACKENDS}, got {backend!r}")
        self.scale_factor = self._setting("scale_factor", scale_factor, "scale_factor")
        self.kernel = kernel
        self.backend = backend
        self.validate = validate
        self._calls = 0  # forward calls so far, for the scheduled checks

    def _setting(self, key: str, value, kind: str) -> float:
        """``value`` as a float, or an error naming ``key``: a weight must be finite and >= 0, a
        sigma finite and > 0, scale_factor in (0, 1] (the loss runs on a smaller copy; above 1
        it would only cost more). NaN fails every comparison, so it is refused too."""
        name = type(self).__name__
        try:
            number = float(value)  # strings such as "2e-9" (YAML reads them so) are numbers too
        except (TypeError, ValueError):
            raise TypeError(f"{name}: {key} must be a number, got {type(value).__name__}") from None
        rule, in_range = {
            "weight": (">= 0 and finite", number >= 0 and math.isfinite(number)),
            "sigma": ("> 0 and finite", number > 0 and math.isfinite(number)),
            "scale_factor": ("> 0 and <= 1", 0 < number <= 1),
        }[kind]
        if not in_range:
            raise ValueError(f"{name}: {key} must be {rule}, got {value}")
        return number

    def forward(
        self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor | None = None
    ) -> torch.Tensor:
        name = type(self).__name__
        _check_shapes(images, probs, roi, name)
        if roi is None:  # every pixel
            roi = probs.new_ones(probs.shape[0], *probs.shape[2:])
        # Default (validate=None) on CPU tensors: every check on scheduled calls; on the
        # others a non-finite result or an error of the op (both free to see) brings the
        # checks in, so that they name the input at fault.
        watch = self.validate is None and not probs.is_cuda
        call, self._calls = self._calls, self._calls + 1
        if self.validate or (watch and _scheduled_check(call)):
            _check_values(images, probs, roi, name)
        try:
            loss = self._loss(images, probs, roi)
        except RuntimeError:
            if watch:
                _check_values(images, probs, roi, name)
            raise
        if watch and not torch.isfinite(loss):
            _check_values(images, probs, roi, name)
            raise ValueError(f"{name}: the loss is not finite although the inputs are in range")
        return loss

    def _loss(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
        with torch.autocast(device_type=probs.device.type, enabled=False):
            images, probs, roi = images.to(dtype), probs.to(dtype), roi.to(dtype)
            if self.scale_factor != 1.0:
                s = self.scale_factor
                images = F.interpolate(images, scale_factor=s, mode="nearest")
                smooth = "bilinear" if probs.dim() == 4 else "trilinear"  # a volume: every axis
                probs = F.interpolate(probs, scale_factor=s, mode=smooth, align_corners=False)
                roi = F.interpolate(roi.unsqueeze(1), scale_factor=s, mode="nearest").squeeze(1)
            return self._terms(images, probs, roi)

    def _sigma(self, key: str, value) -> float | tuple[float, ...]:
        """A bandwidth: one number, or one per channel / spatial axis (a list or tuple), each
        checked as ``_setting`` does; their count is checked against the inputs when called."""
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{type(self).__name__}: {key} must be a number or a non-empty list, got {value!r}")
            return tuple(self._setting(f"{key}[{i}]", v, "sigma") for i, v in enumerate(value))
        return self._setting(key, value, "sigma")

    def _features(self, images: torch.Tensor, sigma_rgb, sigma_xy) -> torch.Tensor:
        """Features of the resized images; ``sigma_xy`` is in pixels of the full-size input."""
        s = self.scale_factor
        scaled_xy = tuple(v * s for v in sigma_xy) if isinstance(sigma_xy, tuple) else sigma_xy * s
        try:
            return bilateral_features(images, sigma_rgb, scaled_xy)
        except ValueError as exc:  # a bandwidth count that does not fit the images
            raise ValueError(f"{type(self).__name__}: {exc}") from None

    def _terms(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _OneAffinityLoss(_AffinityLoss):
    """A loss with one weight and one affinity (DenseCRF, normalized cut): their shared arguments."""

    def __init__(
        self,
        weight: float,
        sigma_rgb: float | Sequence[float],
        sigma_xy: float | Sequence[float],
        scale_factor: float = 1.0,
        kernel: str = "auto",
        backend: str = "auto",
        validate: bool | None = None,
    ):
        super().__init__(scale_factor, kernel, backend, validate)
        self.weight = self._setting("weight", weight, "weight")
        self.sigma_rgb = self._sigma("sigma_rgb", sigma_rgb)
        self.sigma_xy = self._sigma("sigma_xy", sigma_xy)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, "
            f"scale_factor={self.scale_factor}, kernel={self.kernel!r}, backend={self.backend!r}"
        )


class DenseCRFLoss(_OneAffinityLoss):
    """The DenseCRF regularised loss, called as ``loss(images, probs, roi)`` or ``loss(images, probs)``.

    Args:
        weight: loss weight (published: 2e-9 with the permutohedral kernel at 513 px).
        sigma_rgb: colour bandwidth in 0..255 units (published: 15); one number for every
            channel, or one per channel (a list).
        sigma_xy: spatial bandwidth in pixels of the full-size input (published: 100); one
            number for every axis, or one per spatial axis in the tensor's order ((H, W), or
            (D, H, W) for a volume with anisotropic voxels).
        scale_factor: the loss is computed on inputs resized by this factor, in (0, 1]
            (published: 0.5); ``sigma_xy`` is scaled with it.
        kernel: ``"auto"``, ``"exact"`` or ``"permutohedral"`` (see ``rloss.filtering``).
            The exact kernel is the true Gaussian; the lattice is about 0.5-0.6x
            of it on photos, and the published weight is tuned to the lattice.
            ``auto`` is the lattice at every size; ``permutohedral`` is always a lattice.
        backend: the lattice's implementation: ``"extension"`` (compiled C++/CUDA),
            ``"torch"`` (the portable lattice, torch operations on any device, same
            values) or ``"auto"`` (the extension where it is built for the tensor's
            device, else the portable lattice with a one-line notice).
        validate: ``True`` checks values (finite, ranges, probs summing to 1, images
            not scaled to 0..1) on every call. ``None`` checks CPU tensors only, since
            reading values back from a GPU would synchronise every step: all values
            on the first 10 calls and every 50th after, NaN and infinity on every
            call (through the loss value), so the checks cost under 10% of the loss.
            ``False`` checks no values. Shapes and dtypes are always checked.

    Inputs: ``images [N, C, H, W]`` in 0..255 (RGB, grayscale or any C channels in the same
    units; not normalised: the value checks refuse images that look scaled to 0..1),
    ``probs [N, K, H, W]`` softmax output, ``roi [N, H, W]`` 1 where the loss applies
    (0 on padding), or None (the default) for every pixel, the same as an ROI of ones.
    Volumes: ``images [N, C, D, H, W]``, ``probs [N, K, D, H, W]``, ``roi [N, D, H, W]``.
    The affinity has 2 + C dimensions (3 + C for volumes), at most 16. Returns the scalar
    ``-weight / N * sum(S * A S)`` with ``S = probs * roi``, computed in float32
    (float64 for float64 inputs) even under autocast.
    """

    def _terms(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        features = self._features(images, self.sigma_rgb, self.sigma_xy)
        return _DenseCRFTerm.apply(features, probs, roi, self.weight / probs.shape[0], self.kernel, self.backend)


# Added to each class's denominator d^T S_k: an absent class (S_k = 0) then counts as
# 1 - 0/EPS = 1 with a zero gradient instead of 0/0. A class holding even one pixel has
# d^T S_k >= its self-affinity (1 for the exact kernel, about 0.5 on the lattice), so the
# shift changes a present class's term by under 2e-6 relative.
NC_EPS = 1e-6


class _CutTerms(torch.autograd.Function):
    """``nc_scale * sum_n NC_n - crf_scale * sum S (A S)`` from one filtering of ``[S, roi]``.

    With ``S_k = probs_k * roi`` and the degree ``d = A roi`` (the extra channel),
    per image and class ``a_k = S_k^T A S_k`` and ``b_k = d^T S_k``:
    ``NC = sum_k (1 - a_k / (b_k + eps))`` and, A being symmetric,
    ``dNC/dS_k = a_k d / (b_k + eps)^2 - 2 A S_k / (b_k + eps)``; the DenseCRF part's
    gradient is ``-2 crf_scale A S``. Both are times ``roi`` for ``probs``.
    """

    @staticmethod
    def forward(ctx, features, probs, roi, nc_scale, crf_scale, kernel, backend):
        shape = probs.shape  # [N, K, H, W] or [N, K, D, H, W]
        n, k, pixels = shape[0], shape[1], probs[0, 0].numel()
        probs, roi = probs.reshape(n, k, pixels), roi.reshape(n, pixels)
        # roi * A [S, roi]: with probs and a channel of ones, the lattice's fused op masks by
        # the ROI on the way in and out, so no masked copy of probs is made.
        augmented = torch.cat([probs, probs.new_ones(n, 1, pixels)], dim=1)
        if resolve_kernel(kernel) == "permutohedral":
            masked = permutohedral_crf(features, augmented, roi, backend=backend)[1].to(probs.dtype)
        else:
            masked = exact_filter(features, augmented.mul_(roi.unsqueeze(1))).mul_(roi.unsqueeze(1))
        filtered_seg, degree = masked[:, :k], masked[:, k:]  # roi * A S_k, roi * d
        # One batched product gives every probs_k . (roi A S_j) and probs_k . (roi d): far faster
        # than elementwise products and sums over [N, K, P]; the diagonal is a_k = S_k^T A S_k and
        # the last column b_k = d^T S_k.
        products = torch.bmm(probs, masked.transpose(1, 2))  # [N, K, K + 1]
        association = products.diagonal(dim1=1, dim2=2)  # [N, K]
        volume = products[:, :, k] + NC_EPS
        ratio = association / volume
        cut = k * n - ratio.sum()
        # roi * (nc_scale * (a_k d / (b_k + eps)^2 - 2 A S_k / (b_k + eps)) - 2 crf_scale A S_k), in place
        gradient = filtered_seg.mul_((-2 * (nc_scale / volume + crf_scale)).unsqueeze(-1))
        gradient.addcmul_(degree, (nc_scale * ratio / volume).unsqueeze(-1))
        ctx.save_for_backward(gradient.view(shape))
        return nc_scale * cut - crf_scale * association.sum()

    @staticmethod
    def backward(ctx, grad_output):
        (gradient,) = ctx.saved_tensors
        if grad_output.device.type == "cpu" and grad_output.item() == 1.0:  # as in _DenseCRFTerm
            return None, gradient, None, None, None, None, None
        return None, gradient * grad_output, None, None, None, None, None


class NormalizedCutLoss(_OneAffinityLoss):
    """The normalized cut loss, called as ``loss(images, probs, roi)`` like ``DenseCRFLoss``
    (``roi`` None, the default, is every pixel).

    Tang, Djelouah, Perazzi, Boykov, Schroers, "Normalized Cut Loss for Weakly-supervised
    CNN Segmentation", CVPR 2018 (its normalized cut loss: Shi & Malik's normalized cut,
    relaxed to soft segments): per image, with the soft segment ``S_k`` of class k, the affinity ``A``
    (the same Gaussian over (x, y, r, g, b) as ``DenseCRFLoss``) and the degree ``d = A 1``,

        NC = sum_k S_k^T A (1 - S_k) / (d^T S_k) = K - sum_k S_k^T A S_k / (d^T S_k)

    (equal since the classes' probabilities sum to 1), with gradient
    ``S_k^T A S_k d / (d^T S_k)^2 - 2 A S_k / (d^T S_k)``. Returns
    ``weight / N * sum_n NC_n`` over the batch.

    Choices where the paper is silent, and why:
    - The ROI restricts the graph: ``S = probs * roi`` and ``d = A roi``, computed in the
      same filtering as ``A S`` (``roi`` is one extra channel), not a second pass.
    - ``NC_EPS`` (1e-6) is added to every ``d^T S_k``: a class absent from an image
      counts 1 (its cut/association ratio is 0/0) with a zero gradient; an ROI of zeros
      gives ``weight * K`` and no gradient.
    - No size normalisation of the weight: NC is a ratio, each class's term in [0, 1], so
      its value and total gradient do not grow with the image (unlike DenseCRF's,
      ``rloss/crf_weight.py``), and the lattice's overall scale (about 0.55x the exact
      Gaussian) cancels between numerator and denominator, so one weight means the same
      on either kernel.

    Args: ``weight``, ``sigma_rgb`` and ``sigma_xy`` (pixels of the full-size input) of
    the affinity; ``scale_factor``, ``kernel``, ``backend`` and ``validate`` as in
    ``DenseCRFLoss``. Computed in float32 (float64 for float64 inputs) under autocast too.
    """

    def _terms(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        features = self._features(images, self.sigma_rgb, self.sigma_xy)
        return _CutTerms.apply(features, probs, roi, self.weight / probs.shape[0], 0.0, self.kernel, self.backend)


class KernelCutLoss(_AffinityLoss):
    """Normalized cut plus the DenseCRF (Potts) term: the KernelCut loss.

    KernelCut is the energy of Tang, Marin, Ben Ayed, Boykov, "Normalized Cut Meets MRF"
    (ECCV 2016) and "Kernel Cuts: Kernel and Spectral Clustering Meet Regularization"
    (IJCV 2019): a kernel clustering term (normalized cut) plus a pairwise Potts (MRF/CRF)
    regulariser. Tang et al., "On Regularized Losses for Weakly-supervised CNN
    Segmentation" (ECCV 2018) trains with it as a regularized loss beside pCE. Here

        L = nc_weight / N * sum_n NC_n  -  crf_weight / N * sum_n sum_k S_k^T B S_k

    with ``NC`` exactly as ``NormalizedCutLoss`` (affinity ``A``: ``nc_sigma_rgb``,
    ``nc_sigma_xy``) and the second term exactly ``DenseCRFLoss`` (the relaxed dense Potts
    term, affinity ``B``: ``crf_sigma_rgb``, ``crf_sigma_xy``). Assumed where the papers
    are silent for this setting: the Potts term is the dense Gaussian CRF (not a 4- or
    8-neighbour grid), and the two terms are simply added with their own weights. When
    both affinities are the same, one filtering of ``[S, roi]`` serves both terms; else
    each term filters once.

    Called as ``loss(images, probs, roi)`` like ``DenseCRFLoss`` (``roi`` None, the default, is
    every pixel); ``scale_factor``, ``kernel``, ``backend`` and ``validate`` as in ``DenseCRFLoss``.
    """

    def __init__(
        self,
        nc_weight: float,
        crf_weight: float,
        nc_sigma_rgb: float,
        nc_sigma_xy: float,
        crf_sigma_rgb: float,
        crf_sigma_xy: float,
        scale_factor: float = 1.0,
        kernel: str = "auto",
        backend: str = "auto",
        validate: bool | None = None,
    ):
        super().__init__(scale_factor, kernel, backend, validate)
        self.nc_weight = self._setting("nc_weight", nc_weight, "weight")
        self.crf_weight = self._setting("crf_weight", crf_weight, "weight")
        self.nc_sigma_rgb = self._sigma("nc_sigma_rgb", nc_sigma_rgb)
        self.nc_sigma_xy = self._sigma("nc_sigma_xy", nc_sigma_xy)
        self.crf_sigma_rgb = self._sigma("crf_sigma_rgb", crf_sigma_rgb)
        self.crf_sigma_xy = self._sigma("crf_sigma_xy", crf_sigma_xy)

    def extra_repr(self) -> str:
        return (
            f"nc_weight={self.nc_weight}, crf_weight={self.crf_weight}, nc_sigma_rgb={self.nc_sigma_rgb}, "
            f"nc_sigma_xy={self.nc_sigma_xy}, crf_sigma_rgb={self.crf_sigma_rgb}, crf_sigma_xy={self.crf_sigma_xy}, "
            f"scale_factor={self.scale_factor}, kernel={self.kernel!r}, backend={self.backend!r}"
        )

    def _terms(self, images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor) -> torch.Tensor:
        n = probs.shape[0]
        nc_scale, crf_scale = self.nc_weight / n, self.crf_weight / n
        nc_features = self._features(images, self.nc_sigma_rgb, self.nc_sigma_xy)
        if (self.nc_sigma_rgb, self.nc_sigma_xy) == (self.crf_sigma_rgb, self.crf_sigma_xy):
            return _CutTerms.apply(nc_features, probs, roi, nc_scale, crf_scale, self.kernel, self.backend)
        crf_features = self._features(images, self.crf_sigma_rgb, self.crf_sigma_xy)
        return (_CutTerms.apply(nc_features, probs, roi, nc_scale, 0.0, self.kernel, self.backend)
                + _DenseCRFTerm.apply(crf_features, probs, roi, crf_scale, self.kernel, self.backend))


def _check_shapes(
    images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor | None, name: str = "DenseCRFLoss"
) -> None:
    """Raises TypeError or ValueError naming the first input of the wrong type, shape, dtype or
    device; ``roi`` None stands for every pixel. Images ``[N, C, H, W]`` (any C >= 1) or
    volumes ``[N, C, D, H, W]``."""
    for input_name, t, expected in (
        ("images", images, "torch.Tensor [N, C, H, W] (RGB or C channels in 0..255)"),
        ("probs", probs, "torch.Tensor [N, K, H, W] (softmax output)"),
    ):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {input_name} must be a {expected}, got {type(t).__name__}")
    if roi is not None and not isinstance(roi, torch.Tensor):
        raise TypeError(
            f"{name}: roi must be a torch.Tensor [N, H, W] or None (every pixel), got {type(roi).__name__}"
        )
    if probs.dim() not in (4, 5):
        raise ValueError(f"{name}: probs must be [N, K, H, W] (or [N, K, D, H, W] for volumes), "
                         f"got shape {tuple(probs.shape)}")
    n, _, *spatial = probs.shape
    axes = "H, W" if len(spatial) == 2 else "D, H, W"
    if images.dim() != probs.dim() or images.shape[0] != n or list(images.shape[2:]) != spatial or images.shape[1] < 1:
        expected = (n, "C", *spatial)
        raise ValueError(f"{name}: images must be [N, C, {axes}] = {expected} to match probs, "
                         f"got {tuple(images.shape)}".replace("'C'", "C"))
    if roi is not None and roi.shape != (n, *spatial):
        raise ValueError(f"{name}: roi must be [N, {axes}] = {(n, *spatial)} to match probs, got {tuple(roi.shape)}")
    # Empty inputs would otherwise fail deep in the value checks or the filtering.
    if n == 0:
        raise ValueError(f"{name}: images, probs and roi must hold at least one image, got a batch of 0 images")
    if math.prod(spatial) == 0:
        raise ValueError(f"{name}: images must have at least one pixel, got {' x '.join(axes.split(', '))} = "
                         f"{' x '.join(map(str, spatial))}")
    for input_name, t in (("images", images), ("probs", probs)):
        if not t.is_floating_point():
            raise ValueError(f"{name}: {input_name} must be a floating-point tensor, got {t.dtype}")
    devices = (images.device, probs.device) + (() if roi is None else (roi.device,))
    if len(set(devices)) > 1:
        raise ValueError(
            f"{name}: images, probs and roi must be on one device, got {', '.join(map(str, devices))}"
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
def _check_values(images: torch.Tensor, probs: torch.Tensor, roi: torch.Tensor, name: str = "DenseCRFLoss") -> None:
    """Raises ValueError naming the first input out of its range: one aminmax per input
    (NaN propagates into it; infinity fails the range) and the per-pixel sums of probs."""
    lo, images_max = (float(v) for v in torch.aminmax(images))
    _check_finite(name, "images", lo, images_max)
    if lo < -1e-3 or images_max > 255.0 + 1e-3:
        kind = "RGB" if images.shape[1] == 3 else f"{images.shape[1]}-channel images"
        raise ValueError(
            f"{name}: images must be {kind} in 0..255 (not normalised), got values in [{lo:.3g}, {images_max:.3g}]"
        )
    tol = 1e-3 if probs.dtype in (torch.float32, torch.float64) else 3e-2
    lo, hi = (float(v) for v in torch.aminmax(probs))
    _check_finite(name, "probs", lo, hi)
    if lo < -tol or hi > 1.0 + tol:
        raise ValueError(f"{name}: probs must be probabilities (softmax output), got values in [{lo:.3g}, {hi:.3g}]")
    sum_lo, sum_hi = (float(v) for v in torch.aminmax(probs.sum(dim=1, dtype=torch.float32)))
    error = max(abs(sum_lo - 1.0), abs(sum_hi - 1.0))
    if error > tol:
        raise ValueError(
            f"{name}: probs must sum to 1 over the class dimension (softmax output); "
            f"the largest deviation is {error:.3g}"
        )
    if roi.is_floating_point():
        lo, hi = (float(v) for v in torch.aminmax(roi))
        _check_finite(name, "roi", lo, hi)
    else:
        lo, hi = int(roi.min()), int(roi.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name}: roi must be in 0..1 (1 where the loss applies), got values in [{lo:.3g}, {hi:.3g}]")
    # Last, as a guess rather than a certainty: images in 0..1 pass the range check, but sigma_rgb
    # (0..255 units) is then 255x too wide and the loss is off by orders of magnitude. All-zero
    # images (training's memory probe) have no scale to tell.
    if 0.0 < images_max <= 1.0:
        raise ValueError(
            f"{name}: images look scaled to 0..1 (their largest value is {images_max:.3g}); the loss expects "
            f"RGB in 0..255 (sigma_rgb is in 0..255 units): multiply them by 255"
        )


def _check_finite(loss_name: str, name: str, lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{loss_name}: {name} contains NaN or infinite values")
