"""Scribbles simulated from full masks (rloss.data.scribble_sim, `rloss data scribbles --from-masks`)."""

import json

import numpy as np
import pytest
from scipy import ndimage

from inputs import tiny_synthetic
from rloss.cli import main
from rloss.data.folder import MASK_DIR, SCRIBBLE_DIR
from rloss.data.io import read_labels, save_label_png
from rloss.data.scribble_sim import image_rng, simulate_dataset, simulate_scribbles
from rloss.data.synthetic import LABELED_TARGET, MIN_SCRIBBLED_AREA


def hand_made_mask() -> np.ndarray:
    """96 x 80: background 0, a bar of class 1, a disk of class 2 and its second part, a sliver of
    class 3 (too small to scribble) and a band of 255 (ignore) along the bottom."""
    mask = np.zeros((96, 80), dtype=np.uint8)
    mask[10:30, 5:70] = 1
    y, x = np.mgrid[:96, :80]
    mask[(y - 60) ** 2 + (x - 30) ** 2 <= 15**2] = 2
    mask[50:70, 60:78] = 2  # a second part of class 2
    mask[40:43, 70:73] = 3  # 9 pixels
    mask[88:, :] = 255
    return mask


def test_every_stroke_lies_its_margin_inside_its_own_region():
    mask = hand_made_mask()
    width, margin = 3, 2.5
    scribble = simulate_scribbles(mask, np.random.default_rng(0), width, margin)
    assert not (scribble[mask == 255] != 255).any()  # nothing on ignored pixels
    for c in (0, 1, 2, 3):
        parts, n = ndimage.label(mask == c)
        for part in range(1, n + 1):
            region = parts == part
            # The distance of each pixel to the region's outside (the image border counts as outside).
            depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
            strokes = scribble == c
            assert not (strokes & ~(mask == c)).any()  # a stroke never leaves its class
            assert (depth[strokes & region] > margin).all()  # ... nor comes within the margin of its edge
            if region.sum() > MIN_SCRIBBLED_AREA:
                assert (strokes & region).any(), f"class {c} part {part} got no stroke"
    assert not (scribble == 3).any()  # the 9-pixel sliver goes without


def test_the_reported_shares_are_the_pixels_written(tmp_path):
    root = tiny_synthetic(tmp_path / "data")
    for path in (root / SCRIBBLE_DIR).glob("*.png"):
        path.unlink()  # a data set with masks only
    summary = simulate_dataset(root, seed=5, progress=False)
    labeled, total = np.zeros(256, np.int64), np.zeros(256, np.int64)
    for mask_path in sorted((root / MASK_DIR).glob("*.png")):
        mask, scribble = read_labels(mask_path), read_labels(root / SCRIBBLE_DIR / mask_path.name)
        assert not (scribble[scribble != 255] != mask[scribble != 255]).any()  # every labeled pixel has its mask's class
        total += np.bincount(mask.ravel(), minlength=256)
        labeled += np.bincount(scribble.ravel(), minlength=256)
    assert summary["images"] == len(list((root / MASK_DIR).glob("*.png")))
    assert summary["labeled_share"] == pytest.approx(labeled[:255].sum() / total[:255].sum(), abs=1e-5)
    assert summary["labeled_share_by_class"]["background"] == pytest.approx(labeled[0] / total[0], abs=1e-5)
    # The protocol's aim: about LABELED_TARGET of the pixels (2.8-4.4 %), on these small images too.
    assert 0.5 * LABELED_TARGET[0] <= summary["labeled_share"] <= 1.5 * LABELED_TARGET[1]
    recorded = json.loads((root / "scribbles.json").read_text())
    assert recorded["labeled_share"] == summary["labeled_share"] and recorded["protocol"]["seed"] == 5


def test_a_seed_gives_the_same_scribbles_in_any_order_and_another_seed_others():
    mask = hand_made_mask()
    first = simulate_scribbles(mask, image_rng(0, "a"))
    simulate_scribbles(mask, image_rng(0, "b"))  # another image in between changes nothing
    assert np.array_equal(simulate_scribbles(mask, image_rng(0, "a")), first)
    assert not np.array_equal(simulate_scribbles(mask, image_rng(1, "a")), first)


def test_existing_scribbles_are_refused_in_one_line_and_kept(tmp_path, capsys):
    root = tiny_synthetic(tmp_path / "data")
    one = sorted((root / SCRIBBLE_DIR).glob("*.png"))[0]
    before = one.read_bytes()
    assert main(["data", "scribbles", "--root", str(root), "--from-masks"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds scribbles for" in err[0] and "--overwrite replaces them" in err[0]
    assert one.read_bytes() == before and not (root / "scribbles.json").exists()
    assert main(["data", "scribbles", "--root", str(root), "--from-masks", "--overwrite", "--width", "2"]) == 0
    assert one.read_bytes() != before


def test_a_data_set_without_masks_is_one_line(tmp_path, capsys):
    (tmp_path / MASK_DIR).mkdir()
    save_label_png(np.zeros((4, 4), np.uint8), tmp_path / "not_a_mask.png")
    assert main(["data", "scribbles", "--root", str(tmp_path), "--from-masks"]) == 1
    assert capsys.readouterr().err.strip() == f"rloss data: {tmp_path / MASK_DIR}: no full masks (<id>.png) to simulate scribbles from"


def test_data_check_reports_the_scribbled_shares_the_simulator_reports(tmp_path, capsys):
    # Two 10 x 10 images, hand-made: the first all background with 5 scribbled pixels; the second
    # half class 1 (50 px, 3 scribbled) and half background with 10 ignored pixels (40 px, 2 scribbled).
    from rloss.data.folder import IMAGE_DIR, LIST_DIR
    from rloss.data.io import save_rgb

    masks = [np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)]
    masks[1][:, 5:] = 1
    masks[1][0, :5] = masks[1][1, :5] = 255
    scribbles = [np.full((10, 10), 255, np.uint8) for _ in range(2)]
    scribbles[0][4, 2:7] = 0
    scribbles[1][5, 6:9] = 1
    scribbles[1][5, 1:3] = 0
    for i, (mask, scribble) in enumerate(zip(masks, scribbles)):
        save_rgb(np.zeros((10, 10, 3), np.uint8), tmp_path / IMAGE_DIR / f"s{i}.png")
        save_label_png(mask, tmp_path / MASK_DIR / f"s{i}.png")
        save_label_png(scribble, tmp_path / SCRIBBLE_DIR / f"s{i}.png")
    (tmp_path / LIST_DIR).mkdir(parents=True)
    (tmp_path / LIST_DIR / "train.txt").write_text("s0\ns1\n")
    (tmp_path / "classes.txt").write_text("background\nthing\n")
    assert main(["data", "check", "--root", str(tmp_path), "--split", "train"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scribbled_share"] == 10 / 200 and report["scribbled_share_per_image"] == [0.05, 0.05, 0.05]
    assert report["labeled_share"] == round(10 / 190, 5)  # ignored pixels out of the count, as the simulator does
    assert report["labeled_share_by_class"] == {"background": round(7 / 140, 5), "thing": 3 / 50}
