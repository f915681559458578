"""A sweep's noise (rloss.engine.sweep_noise) and the choice it allows (rloss.engine.sweep._choose): the paired
bootstrap over held-out images, checked against the metrics module and hand-made cases."""

import numpy as np
import pytest

from rloss.engine import sweep, sweep_noise
from rloss.metrics import segmentation_scores
from rloss.engine.sweep_noise import gain_interval, miou_of


def _images(rng, n, k=3, errors=10):
    """``n`` per-image confusion matrices: 100 pixels per class, ``errors`` of each class's pixels
    predicted as the next class."""
    m = np.zeros((n, k, k), dtype=np.int64)
    for c in range(k):
        m[:, c, c] = 100 - errors
        m[:, c, (c + 1) % k] = errors
    return m + rng.integers(0, 3, size=(n, k, k))


def test_miou_of_is_the_metrics_modules_miou():
    rng = np.random.default_rng(1)
    matrices = rng.integers(0, 50, size=(5, 4, 4))
    matrices[2, 3, :] = matrices[2, :, 3] = 0  # a class absent in one image: left out of its mean
    for m in matrices:
        assert miou_of(m) == pytest.approx(segmentation_scores(m)["miou"], abs=1e-12)
    assert miou_of(matrices) == pytest.approx([segmentation_scores(m)["miou"] for m in matrices], abs=1e-12)


def test_the_interval_of_no_change_is_zero_and_of_a_change_on_every_image_excludes_zero():
    rng = np.random.default_rng(0)
    base = _images(rng, 100, errors=20)
    assert gain_interval(base, base) == (0.0, 0.0)
    better = base.copy()
    for c in range(3):  # every image: 15 of each class's 20 errors corrected
        better[:, c, c] += 15
        better[:, c, (c + 1) % 3] -= 15
    low, high = gain_interval(better, base)
    full = miou_of(better.sum(0)) - miou_of(base.sum(0))
    assert 0 < low <= full <= high


def test_a_gain_that_rests_on_one_image_of_two_hundred_is_noise():
    rng = np.random.default_rng(0)
    base = _images(rng, 200)
    one = base.copy()
    one[7] = np.diag(one[7].sum(1))  # one image predicted perfectly
    low, high = gain_interval(one, base)
    # About 37% of resamples leave image 7 out: their gain is exactly 0, so the interval starts at 0.
    assert low == 0.0 < high
    with pytest.raises(ValueError, match="different held-out images"):
        gain_interval(one[:10], base)


def _points(scores):
    return [{"weight": w, "relative_weight": w, "absolute_weight": w * 1e-7, "heldout_miou": s, "run": f"w{w:g}",
             "loss_type": "pce_crf" if w else "pce"} for w, s in scores]


@pytest.fixture
def confusions(monkeypatch):
    """``confusions[run] = [images, K, K]`` stands in for re-evaluating the sweep's saved models."""
    table = {}
    monkeypatch.setattr(sweep_noise, "heldout_confusions", lambda cfg: table[cfg.run.name])
    return table


class _Cfg:
    def __init__(self, name):
        self.run = type("Run", (), {"name": name})()


def _choose(points, table):
    for p in points:
        p["heldout_miou"] = float(miou_of(table[p["run"]].sum(0)))
    return sweep._choose(points, [_Cfg(p["run"]) for p in points], sweep.DEFAULT_KEY)


def test_the_best_weight_that_beats_pce_beyond_the_noise_is_chosen(confusions):
    rng = np.random.default_rng(0)
    confusions["w0"] = _images(rng, 60, errors=30)
    confusions["w1"] = _images(rng, 60, errors=20)
    confusions["w4"] = _images(rng, 60, errors=10)
    best, noise = _choose(_points([(0.0, 0), (1.0, 0), (4.0, 0)]), confusions)
    assert best["weight"] == 4.0 and noise["beats_noise"] and noise["noise"]["images"] == 60
    assert noise["reason"].startswith(f"held-out mIoU {best['heldout_miou']:.4f}, +")
    assert noise["at_largest_weight"] and "it is the largest weight swept" in noise["reason"]
    confusions["w16"] = _images(rng, 60, errors=25)  # past the top: the curve turns down inside the grid
    best, noise = _choose(_points([(0.0, 0), (1.0, 0), (4.0, 0), (16.0, 0)]), confusions)
    assert best["weight"] == 4.0 and not noise["at_largest_weight"] and "largest" not in noise["reason"]


def test_without_a_weight_above_the_noise_the_published_one_is_kept(confusions):
    rng = np.random.default_rng(0)
    base = _images(rng, 60)
    confusions["w0"], confusions["w1"] = base, base.copy()
    confusions["w4"] = base.copy()
    confusions["w4"][3] = np.diag(base[3].sum(1))  # the top score, by one image: noise
    points = _points([(0.0, 0), (1.0, 0), (4.0, 0)])
    best, noise = _choose(points, confusions)
    assert best["weight"] == 1.0 and noise["beats_noise"] is False
    assert "no weight beats pCE by more than the held-out noise (best by score: 4" in noise["reason"]
    assert noise["reason"].endswith("keeping the published weight 1")


def test_a_published_weight_that_harms_beyond_the_noise_leaves_pce(confusions):
    rng = np.random.default_rng(0)
    confusions["w0"] = _images(rng, 60, errors=10)
    confusions["w1"] = _images(rng, 60, errors=40)
    best, noise = _choose(_points([(0.0, 0), (1.0, 0)]), confusions)
    assert best["weight"] == 0.0 and noise["reason"].endswith("keeping pCE (weight 0), the regularizer off")


def test_without_weight_0_the_top_score_is_chosen_and_no_noise_claimed():
    best, noise = sweep._choose(_points([(1.0, 0.5), (4.0, 0.6)]), [], sweep.DEFAULT_KEY)
    assert best["weight"] == 4.0 and noise["noise"] is None and "no noise estimate" in noise["reason"]
