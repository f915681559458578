"""How far a sweep's held-out scores can be trusted: a paired bootstrap over the held-out images.

A sweep scores each weight once, on a few dozen or hundred held-out images; two weights whose
mIoU differ by less than the evaluation's own noise cannot be told apart. Each swept run's model
is evaluated again image by image (the same predictions the run was scored by), and the held-out
images are resampled with replacement: the same resample for every weight, so the interval is
that of the *difference* to weight 0 (pCE), which shares the images. What it does not measure is
training noise (another seed gives another run); it is a lower bound on the uncertainty.

    confusions = heldout_confusions(cfg)            # [images, K, K], cfg a finished sweep run's
    low, high = gain_interval(confusions, confusions_of_pce)
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.transforms import EvalTransform
from .config import TrainConfig
from .runs import CHECKPOINT

RESAMPLES = 2000  # bootstrap resamples: the 2.5% tails then rest on 50 resamples each
INTERVAL = 0.95
BOOTSTRAP_SEED = 0  # fixed: a sweep's interval is reproducible


def heldout_confusions(cfg: TrainConfig) -> np.ndarray:
    """``[images, K, K]``: each held-out image's confusion matrix under the finished run of ``cfg``
    (its saved model, evaluated as the run evaluated it: same share, transform, batches and threads)."""
    from .datasets import evaluation_set
    from .evaluation import evaluate
    from .infer import load_predictor

    d = cfg.data
    share = evaluation_set(cfg, EvalTransform(d.crop_size, d.interpolation))
    predictor = load_predictor(cfg.run_dir / CHECKPOINT, device=cfg.run.device)
    loader = DataLoader(share, batch_size=d.batch_size if isinstance(d.batch_size, int) else 8, shuffle=False,
                        collate_fn=list)
    threads_before = torch.get_num_threads()
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    try:
        per_image: list = []
        with torch.inference_mode():
            evaluate(predictor.model, loader, predictor.device, share.num_classes, share.class_names,
                     cfg.run.amp, per_image=per_image)
    finally:
        torch.set_num_threads(threads_before)
    return np.stack(per_image).astype(np.int64)


def miou_of(matrices: np.ndarray) -> np.ndarray:
    """mIoU of summed confusion matrices ``[..., K, K]`` (classes with an empty union left out,
    as ``rloss.metrics.segmentation_scores``), over the leading axes."""
    m = matrices.astype(np.float64)
    tp = np.diagonal(m, axis1=-2, axis2=-1)
    union = m.sum(-1) + m.sum(-2) - tp
    present = union > 0
    iou = np.where(present, tp / np.where(present, union, 1.0), 0.0)
    return iou.sum(-1) / present.sum(-1)


def _resample_sums(confusions: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """``[resamples, K, K]``: the summed matrices of each resample (``picks`` [resamples, images])."""
    counts = np.stack([np.bincount(row, minlength=len(confusions)) for row in picks])
    return np.einsum("ri,ijk->rjk", counts, confusions)


def resample_indices(images: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, images, size=(resamples, images))


def gain_interval(confusions: np.ndarray, baseline: np.ndarray, resamples: int = RESAMPLES,
                  interval: float = INTERVAL, seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The ``interval`` percentile interval of ``mIoU(confusions) - mIoU(baseline)`` over paired
    bootstrap resamples of the images (both ``[images, K, K]``, the same images in the same order)."""
    if confusions.shape != baseline.shape:
        raise ValueError(f"sweep: the runs were scored on different held-out images ({len(confusions)} and "
                         f"{len(baseline)})")
    picks = resample_indices(len(confusions), resamples, seed)
    gains = miou_of(_resample_sums(confusions, picks)) - miou_of(_resample_sums(baseline, picks))
    tail = 100 * (1 - interval) / 2
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)
