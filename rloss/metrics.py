"""Segmentation metrics: confusion matrix, IoU scores and the boundary F-score.

All region metrics derive from a ``[K, K]`` confusion matrix whose rows are the
ground-truth class and whose columns are the predicted class. The matrix is
built with a single ``bincount`` on whatever device the inputs live on, can be
accumulated over batches (:class:`ConfusionMatrix`) and summed across
``torch.distributed`` ranks before the scores are read off it
(:func:`segmentation_scores`).

The boundary F-score (Csurka et al., BMVC 2013; the DAVIS ``F`` measure) is a
per-image measure computed on the CPU with ``scipy.ndimage``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from scipy import ndimage

from .data.io import IGNORE_INDEX

__all__ = [
    "ConfusionMatrix",
    "boundary_f_score",
    "confusion_matrix",
    "mean_boundary_f_score",
    "segmentation_scores",
]


def _as_label_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"confusion_matrix: {name} must hold integer class ids, got {t.dtype}")
    return t


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``[K, K]`` int64 confusion matrix, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` are integer tensors (or arrays) of any equal shape.
    Pixels whose target is ``ignore_index`` are skipped, whatever the prediction
    there. On the remaining pixels a target or a prediction outside
    ``0..num_classes-1`` raises ``ValueError`` naming the value. The result is on
    the device of ``target``.
    """
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"confusion_matrix: num_classes must be >= 1, got {num_classes}")
    pred = _as_label_tensor(pred, "pred")
    target = _as_label_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred and target must have the same shape, "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    pred = pred.to(device=target.device, dtype=torch.int64).reshape(-1)
    target = target.to(torch.int64).reshape(-1)

    valid = target != ignore_index
    bad_target = valid & ((target < 0) | (target >= k))
    bad_pred = valid & ((pred < 0) | (pred >= k))
    bad = bad_target | bad_pred
    if bad.any():  # the only host synchronisation
        if bad_target.any():
            value = int(target[bad_target][0])
            raise ValueError(
                f"confusion_matrix: target class {value} is outside 0..{k - 1} "
                f"(and is not ignore_index={ignore_index})"
            )
        value = int(pred[bad_pred][0])
        raise ValueError(f"confusion_matrix: predicted class {value} is outside 0..{k - 1}")

    index = target[valid] * k + pred[valid]
    return torch.bincount(index, minlength=k * k).reshape(k, k)


class ConfusionMatrix:
    """A running confusion matrix over batches (and, with :meth:`all_reduce`, over ranks).

    ``device=None`` lets the matrix follow the device of the first update (it
    starts on the CPU); with an explicit device every update is moved there.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device=None):
        if int(num_classes) < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self._device = torch.device(device) if device is not None else None
        self.matrix = torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64, device=self._device or "cpu"
        )

    def reset(self) -> "ConfusionMatrix":
        self.matrix.zero_()
        return self

    def _add(self, m: torch.Tensor) -> None:
        if self._device is None and m.device != self.matrix.device:
            self.matrix = self.matrix.to(m.device)
        self.matrix += m.to(self.matrix.device)

    def update(self, pred, target) -> "ConfusionMatrix":
        self._add(confusion_matrix(pred, target, self.num_classes, self.ignore_index))
        return self

    def merge(self, other) -> "ConfusionMatrix":
        """Add another :class:`ConfusionMatrix` (or a ``[K, K]`` matrix) into this one."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else torch.as_tensor(other)
        if isinstance(other, ConfusionMatrix) and other.ignore_index != self.ignore_index:
            raise ValueError(
                f"ConfusionMatrix.merge: ignore_index differs ({self.ignore_index} vs {other.ignore_index})"
            )
        if tuple(m.shape) != (self.num_classes, self.num_classes):
            raise ValueError(
                f"ConfusionMatrix.merge: expected a {self.num_classes}x{self.num_classes} matrix, "
                f"got shape {tuple(m.shape)}"
            )
        self._add(m.to(torch.int64))
        return self

    def all_reduce(self, group=None) -> "ConfusionMatrix":
        """Sum the matrix over all ranks in place; a no-op without an initialised process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        m = self.matrix
        if dist.get_backend(group) == "nccl" and not m.is_cuda:
            buf = m.cuda()
            dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
            m.copy_(buf)
        else:
            dist.all_reduce(m, op=dist.ReduceOp.SUM, group=group)
        return self

    def scores(self, class_names: Sequence[str] | None = None) -> dict:
        return segmentation_scores(self.matrix, class_names)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self.matrix.sum())})"
        )


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def segmentation_scores(matrix, class_names: Sequence[str] | None = None) -> dict:
    """Region scores from a ``[K, K]`` confusion matrix (rows = ground truth).

    Returns plain Python numbers (``None`` where a score is undefined):

    - ``miou``: mean IoU over the classes whose union (ground truth or
      prediction) is non-empty;
    - ``per_class_iou``: ``{name: IoU or None}``, ``None`` for an empty union;
    - ``pixel_accuracy``: correct / counted pixels;
    - ``mean_class_accuracy``: mean recall over the classes present in the ground truth;
    - ``frequency_weighted_iou``: IoU weighted by the ground-truth class frequency;
    - ``num_pixels``: counted (non-ignored) pixels.

    ``class_names`` defaults to ``"0", "1", ...``.
    """
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64).numpy()
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"segmentation_scores: matrix must be square [K, K], got shape {m.shape}")
    k = m.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    class_names = list(class_names)
    if len(class_names) != k:
        raise ValueError(f"segmentation_scores: {len(class_names)} class names for {k} classes")

    tp = np.diag(m)
    gt = m.sum(axis=1)
    pr = m.sum(axis=0)
    union = gt + pr - tp
    total = m.sum()

    present = union > 0
    iou = np.full(k, np.nan)
    iou[present] = tp[present] / union[present]
    in_gt = gt > 0
    recall = tp[in_gt] / gt[in_gt]

    return {
        "miou": _mean_or_none(iou[present]),
        "per_class_iou": {
            name: (None if math.isnan(v) else float(v)) for name, v in zip(class_names, iou.tolist())
        },
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "mean_class_accuracy": _mean_or_none(recall),
        # classes in the ground truth always have a non-empty union
        "frequency_weighted_iou": float((gt[in_gt] / total * iou[in_gt]).sum()) if total > 0 else None,
        "num_pixels": int(total),
    }


def _boundaries(labels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels with a valid 4-neighbour of a different label."""
    b = np.zeros(labels.shape, dtype=bool)
    # vertical neighbours
    diff = (labels[1:, :] != labels[:-1, :]) & valid[1:, :] & valid[:-1, :]
    b[1:, :] |= diff
    b[:-1, :] |= diff
    # horizontal neighbours
    diff = (labels[:, 1:] != labels[:, :-1]) & valid[:, 1:] & valid[:, :-1]
    b[:, 1:] |= diff
    b[:, :-1] |= diff
    return b


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def boundary_f_score(pred, target, tolerance: float = 2, ignore_index: int = IGNORE_INDEX) -> float:
    """Boundary F-score of one ``[H, W]`` label map against its ground truth.

    A boundary pixel is a pixel with a 4-neighbour of a different label. Pixels
    whose target is ``ignore_index`` are left out of both maps: they are never
    boundary pixels and do not make their neighbours boundary pixels. Precision
    is the fraction of predicted boundary pixels within ``tolerance`` pixels
    (Euclidean) of a ground-truth boundary pixel, recall the converse, and
    ``F = 2PR / (P + R)``. Both maps without a boundary gives 1.0; exactly one
    without gives 0.0.
    """
    p = _to_numpy(pred)
    t = _to_numpy(target)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(
            f"boundary_f_score: pred and target must be 2-D of the same shape, got {p.shape} and {t.shape}"
        )
    valid = t != ignore_index
    bp = _boundaries(p, valid)
    bt = _boundaries(t, valid)
    n_p, n_t = int(bp.sum()), int(bt.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    dist_to_t = ndimage.distance_transform_edt(~bt)
    dist_to_p = ndimage.distance_transform_edt(~bp)
    precision = float((dist_to_t[bp] <= tolerance).mean())
    recall = float((dist_to_p[bt] <= tolerance).mean())
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def mean_boundary_f_score(preds, targets, tolerance: float = 2, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean of :func:`boundary_f_score` over a batch of ``[N, H, W]`` label maps."""
    p = _to_numpy(preds)
    t = _to_numpy(targets)
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(
            f"mean_boundary_f_score: preds and targets must be [N, H, W] of the same shape, "
            f"got {p.shape} and {t.shape}"
        )
    if p.shape[0] == 0:
        raise ValueError("mean_boundary_f_score: empty batch")
    return float(np.mean([boundary_f_score(a, b, tolerance, ignore_index) for a, b in zip(p, t)]))
