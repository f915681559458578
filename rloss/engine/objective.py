"""What a run minimises, by ``loss.type``: cross-entropy on the scribbles (``pce``) or on the full
masks (``full``: the upper bound), plus for the regularized losses a regularizer on the softmax, in
float32: DenseCRF (``pce_crf``), normalized cut (``pce_nc``) or KernelCut (``pce_kernelcut``:
normalized cut and DenseCRF), each with the config's weight."""

from __future__ import annotations

import torch

from ..data.io import IGNORE_INDEX
from ..losses import DenseCRFLoss, KernelCutLoss, NormalizedCutLoss, partial_cross_entropy
from . import distributed as D
from .config import TrainConfig

# The name each regularizer's term is logged under (train/<name>), by loss.type.
REGULARIZER_TERMS = {"pce_crf": "crf", "pce_nc": "nc", "pce_kernelcut": "kernelcut"}


def build_regularizer(cfg: TrainConfig) -> DenseCRFLoss | NormalizedCutLoss | KernelCutLoss | None:
    """The run's regularizer term: DenseCRF, normalized cut or KernelCut (None for pce and full)."""
    L = cfg.loss
    if L.type == "pce_crf":
        return DenseCRFLoss(cfg.absolute_crf_weight(), L.sigma_rgb, L.sigma_xy, L.scale_factor, L.kernel, L.backend)
    if L.type == "pce_nc":
        return NormalizedCutLoss(L.nc_weight, L.nc_sigma_rgb, L.nc_sigma_xy, L.scale_factor, L.kernel, L.backend)
    if L.type == "pce_kernelcut":
        return KernelCutLoss(L.nc_weight, cfg.absolute_crf_weight(), L.nc_sigma_rgb, L.nc_sigma_xy, L.sigma_rgb,
                             L.sigma_xy, L.scale_factor, L.kernel, L.backend)
    return None


def scribble_loss(logits, target, device, ctx: D.DistContext):
    """Cross-entropy over the labeled pixels, normalised by their number over all processes
    (DDP averages gradients, hence the factor of the number of processes)."""
    if not ctx.enabled:
        return partial_cross_entropy(logits, target, IGNORE_INDEX)
    total = partial_cross_entropy(logits, target, IGNORE_INDEX, reduction="sum")
    count = D.all_reduce_sum((target != IGNORE_INDEX).sum().to(device, torch.float32), ctx)
    return total * ctx.world_size / count.clamp(min=1)


def regularizer_term(regularizer, raw, probs, roi):
    """The regularizer's term. Non-finite probabilities (the network diverged) give NaN rather than
    the loss's own input error, so the step's finiteness check stops the run with the same
    advice as under pce."""
    try:
        return regularizer(raw, probs, roi)
    except Exception:
        if bool(torch.isfinite(probs).all()):
            raise
        return torch.full((), float("nan"), device=probs.device)


def loss_terms(cfg: TrainConfig, logits, data: dict, regularizer, device: torch.device, ctx: D.DistContext,
               mark) -> tuple[dict, tuple]:
    """The loss terms of one batch by name (``pce`` or ``ce``, then the regularizer's), and the
    ``mark()``s taken around the regularizer (``(None, None)`` without one): its share of the step."""
    L = cfg.loss
    # non_blocking: from pinned memory a blocking copy would wait for the GPU to catch up
    target = (data["mask"] if L.type == "full" else data["scribble"]).to(device, non_blocking=True)
    terms = {"ce" if L.type == "full" else "pce": scribble_loss(logits, target, device, ctx)}
    if regularizer is None:
        return terms, (None, None)
    probs = torch.softmax(logits.float(), dim=1)
    raw = data["image_raw"].to(device, non_blocking=True)
    roi = data["roi"].to(device, non_blocking=True)
    start = mark()
    terms[REGULARIZER_TERMS[L.type]] = regularizer_term(regularizer, raw, probs, roi)
    return terms, (start, mark())
