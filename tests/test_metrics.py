"""Tests for rloss.metrics against hand-computed expectations."""

import json
import math
from fractions import Fraction as Fr

import numpy as np
import pytest
import torch

from rloss.metrics import (
    ConfusionMatrix,
    boundary_f_score,
    confusion_matrix,
    mean_boundary_f_score,
    segmentation_scores,
)

# 12 pixels, K = 4: class 3 appears in neither map on a counted pixel (a prediction of 3
# on an ignored pixel does not count); three pixels are ignored.
TARGET = [0, 0, 0, 0, 1, 1, 1, 2, 2, 255, 255, 255]
PRED = [0, 0, 1, 2, 1, 1, 0, 2, 1, 3, 0, 2]
# rows = ground truth, columns = prediction, worked out from the pairs above
EXPECTED = [
    [2, 1, 1, 0],  # gt 0 -> pred 0, 0, 1, 2
    [1, 2, 0, 0],  # gt 1 -> pred 1, 1, 0
    [0, 1, 1, 0],  # gt 2 -> pred 2, 1
    [0, 0, 0, 0],
]


def example(shape=(12,)):
    return torch.tensor(PRED).reshape(shape), torch.tensor(TARGET).reshape(shape)


@pytest.mark.parametrize("shape", [(12,), (3, 4), (1, 2, 2, 3)])
def test_confusion_matrix_by_hand(shape):
    pred, target = example(shape)
    m = confusion_matrix(pred, target, num_classes=4)
    assert m.dtype == torch.int64
    assert m.tolist() == EXPECTED
    # numpy input and other integer dtypes work too
    m2 = confusion_matrix(pred.numpy().astype(np.uint8), target.numpy().astype(np.uint8), 4)
    assert m2.tolist() == EXPECTED


def test_scores_by_hand():
    scores = segmentation_scores(torch.tensor(EXPECTED), class_names=["bg", "cat", "dog", "bird"])
    # tp = [2, 2, 1, 0], gt = [4, 3, 2, 0], pred = [3, 4, 2, 0], union = gt + pred - tp = [5, 5, 3, 0]
    iou = [Fr(2, 5), Fr(2, 5), Fr(1, 3)]
    assert scores["per_class_iou"]["bg"] == pytest.approx(float(iou[0]))
    assert scores["per_class_iou"]["cat"] == pytest.approx(float(iou[1]))
    assert scores["per_class_iou"]["dog"] == pytest.approx(float(iou[2]))
    assert scores["per_class_iou"]["bird"] is None  # union 0: excluded
    assert scores["miou"] == pytest.approx(float(Fr(17, 45)))  # (2/5 + 2/5 + 1/3) / 3
    assert scores["miou"] == pytest.approx(float(sum(iou) / 3))
    assert scores["pixel_accuracy"] == pytest.approx(float(Fr(5, 9)))
    # recalls 2/4, 2/3, 1/2 over the three classes in the ground truth
    assert scores["mean_class_accuracy"] == pytest.approx(float((Fr(2, 4) + Fr(2, 3) + Fr(1, 2)) / 3))
    assert scores["mean_class_accuracy"] == pytest.approx(float(Fr(5, 9)))
    # 4/9 * 2/5 + 3/9 * 2/5 + 2/9 * 1/3
    assert scores["frequency_weighted_iou"] == pytest.approx(float(Fr(52, 135)))
    assert scores["num_pixels"] == 9
    # plain Python, JSON-serialisable (no NaN)
    text = json.dumps(scores, allow_nan=False)
    assert json.loads(text) == scores
    assert all(isinstance(v, (float, int, dict)) for v in scores.values())


def test_scores_default_names_and_empty_matrix():
    scores = segmentation_scores(confusion_matrix(*example(), 4))
    assert list(scores["per_class_iou"]) == ["0", "1", "2", "3"]
    empty = segmentation_scores(torch.zeros(3, 3, dtype=torch.int64))
    assert empty["miou"] is None and empty["pixel_accuracy"] is None and empty["num_pixels"] == 0
    json.dumps(empty, allow_nan=False)
    with pytest.raises(ValueError):
        segmentation_scores(torch.zeros(3, 3), class_names=["a", "b"])


def random_batches(seed, n=3, k=5):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        pred = torch.randint(0, k, (2, 7, 9), generator=g)
        target = torch.randint(0, k, (2, 7, 9), generator=g)
        target[torch.rand(2, 7, 9, generator=g) < 0.2] = 255
        batches.append((pred, target))
    return batches


def test_accumulation_equals_concatenation_and_merge():
    k = 5
    batches = random_batches(0, k=k)
    cm = ConfusionMatrix(k)
    for pred, target in batches:
        cm.update(pred, target)
    whole = confusion_matrix(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]), k)
    assert torch.equal(cm.matrix, whole)
    assert int(cm.matrix.sum()) == sum(int((t != 255).sum()) for _, t in batches)

    a, b = ConfusionMatrix(k), ConfusionMatrix(k)
    a.update(*batches[0])
    b.update(*batches[1]).update(*batches[2])
    assert torch.equal(a.merge(b).matrix, whole)

    cm.reset()
    assert int(cm.matrix.sum()) == 0
    with pytest.raises(ValueError):
        cm.merge(ConfusionMatrix(k + 1))


def test_all_reduce_without_distributed_is_noop():
    assert not torch.distributed.is_initialized()
    cm = ConfusionMatrix(4).update(*example())
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


def _all_reduce_worker(rank, world_size, init_file, out_dir):
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        cm = ConfusionMatrix(5)
        cm.update(*random_batches(seed=rank)[0])
        cm.all_reduce()
        torch.save(cm.matrix, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_process_gloo(tmp_path):
    import torch.multiprocessing as mp

    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    world_size = 2
    mp.spawn(
        _all_reduce_worker,
        args=(world_size, str(tmp_path / "init"), str(tmp_path)),
        nprocs=world_size,
        join=True,
    )
    expected = sum(confusion_matrix(*random_batches(seed=r)[0], 5) for r in range(world_size))
    for r in range(world_size):
        assert torch.equal(torch.load(tmp_path / f"rank{r}.pt"), expected)


def test_out_of_range_raises_naming_value():
    target = torch.tensor([0, 1, 2, 255])
    with pytest.raises(ValueError, match=r"predicted class 7\b"):
        confusion_matrix(torch.tensor([0, 7, 2, 0]), target, 3)
    with pytest.raises(ValueError, match=r"predicted class -1\b"):
        confusion_matrix(torch.tensor([0, 1, -1, 0]), target, 3)
    with pytest.raises(ValueError, match=r"target class 3\b"):
        confusion_matrix(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 3, 2, 255]), 3)
    with pytest.raises(ValueError, match=r"target class -2\b"):
        confusion_matrix(torch.tensor([0, 1, 2, 0]), torch.tensor([-2, 1, 2, 255]), 3)
    with pytest.raises(ValueError, match=r"target class 9\b"):
        ConfusionMatrix(3).update(torch.tensor([0]), torch.tensor([9]))
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), 3)


def square(h, w, top, left, size, label=1):
    m = torch.zeros(h, w, dtype=torch.int64)
    m[top : top + size, left : left + size] = label
    return m


def test_boundary_identical_maps():
    t = square(8, 8, 2, 2, 3)
    t[0, :] = 2
    assert boundary_f_score(t, t.clone()) == 1.0
    assert boundary_f_score(t.numpy(), t.numpy(), tolerance=0) == 1.0


def test_boundary_shifted_square_by_hand():
    # 2x2 square at rows 1-2; target at cols 1-2, prediction shifted right to cols 2-3.
    target = square(5, 6, 1, 1, 2)
    pred = square(5, 6, 1, 2, 2)
    # Target boundary (12 px): the 4 square pixels + (0,1) (0,2) (3,1) (3,2) (1,0) (2,0) (1,3) (2,3).
    # Prediction boundary (12 px): (1,2) (2,2) (1,3) (2,3) + (0,2) (0,3) (3,2) (3,3) (1,1) (2,1) (1,4) (2,4).
    # Shared: (1,2) (2,2) (1,3) (2,3) (0,2) (3,2) (1,1) (2,1) = 8, so at tolerance 0 P = R = 8/12 = 2/3.
    assert boundary_f_score(pred, target, tolerance=0) == pytest.approx(2 / 3)
    # Every unshared pixel is 1 px from a shared one: tolerance 1 or 2 gives a perfect score.
    assert boundary_f_score(pred, target, tolerance=1) == 1.0
    assert boundary_f_score(pred, target, tolerance=2) == 1.0
    assert boundary_f_score(pred, target) == 1.0


def test_boundary_distance_is_euclidean():
    # Single pixels at (2,2) in the target and (3,3) in the prediction.
    # Target boundary: (2,2) (1,2) (3,2) (2,1) (2,3); prediction boundary: (3,3) (2,3) (4,3) (3,2) (3,4).
    # Shared: (2,3) (3,2). (3,3) is 1 px from (2,3); (4,3) and (3,4) are sqrt(2) px away;
    # symmetrically for the target. Tolerance 0: P = R = 2/5; 1: P = R = 3/5; 1.5: 1.
    target = square(5, 5, 2, 2, 1)
    pred = square(5, 5, 3, 3, 1)
    assert boundary_f_score(pred, target, tolerance=0) == pytest.approx(2 / 5)
    assert boundary_f_score(pred, target, tolerance=1) == pytest.approx(3 / 5)
    assert boundary_f_score(pred, target, tolerance=1.5) == 1.0


def test_boundary_asymmetric_precision_recall():
    # Target: one vertical edge between cols 2|3 (6 px over 3 rows). Prediction: the same edge plus an
    # extra region in cols 6-7 giving edge pixels at cols 5|6 (6 more px, 2-3 px from the target edge).
    target = torch.zeros(3, 8, dtype=torch.int64)
    target[:, 3:] = 1
    pred = target.clone()
    pred[:, 6:] = 2
    # tolerance 0: P = 6/12 = 1/2, R = 1 -> F = 2 * 1/2 / (3/2) = 2/3
    assert boundary_f_score(pred, target, tolerance=0) == pytest.approx(2 / 3)
    # tolerance 2: col 5 is 2 px from col 3 (in), col 6 is 3 px (out): P = 9/12 = 3/4 -> F = 6/7
    assert boundary_f_score(pred, target, tolerance=2) == pytest.approx(6 / 7)


def test_boundary_empty_cases():
    flat = torch.zeros(6, 6, dtype=torch.int64)
    assert boundary_f_score(flat, flat.clone()) == 1.0
    assert boundary_f_score(flat, torch.full((6, 6), 3)) == 1.0  # different labels, no boundaries
    sq = square(6, 6, 1, 1, 3)
    assert boundary_f_score(sq, flat) == 0.0
    assert boundary_f_score(flat, sq) == 0.0


def test_boundary_ignore_pixels_make_no_boundary():
    # Target is all class 0 with an ignored column; the prediction changes label across that column.
    target = torch.zeros(5, 7, dtype=torch.int64)
    target[:, 3] = 255
    pred = torch.zeros(5, 7, dtype=torch.int64)
    pred[:, 3:] = 1  # its only label change is at the ignored column
    assert boundary_f_score(pred, target) == 1.0
    assert boundary_f_score(target.clamp(max=0), target) == 1.0
    # Without the ignore the same prediction has a boundary and the target none.
    assert boundary_f_score(pred, torch.zeros(5, 7, dtype=torch.int64)) == 0.0
    # Ignored pixels around a real edge add nothing: the edge alone is matched exactly.
    t2 = square(6, 6, 0, 3, 6)  # cols 3-5 are class 1
    t2[0, :] = 255  # would border every pixel of row 1 if it were a label
    p2 = square(6, 6, 0, 3, 6)  # the edge at cols 2|3 also in row 0, which is left out
    assert boundary_f_score(p2, t2, tolerance=0) == 1.0
    assert boundary_f_score(p2, t2, ignore_index=254, tolerance=0) < 1.0


def test_mean_boundary_f_score():
    target = torch.stack([square(5, 6, 1, 1, 2), torch.zeros(5, 6, dtype=torch.int64)])
    pred = torch.stack([square(5, 6, 1, 2, 2), square(5, 6, 1, 1, 2)])
    # image 0: 2/3 at tolerance 0 (see above); image 1: boundary vs none -> 0
    assert mean_boundary_f_score(pred, target, tolerance=0) == pytest.approx((2 / 3 + 0) / 2)
    assert mean_boundary_f_score(pred, target) == pytest.approx(0.5)
    assert mean_boundary_f_score(target, target) == 1.0
    assert math.isfinite(mean_boundary_f_score(pred.numpy(), target.numpy()))
