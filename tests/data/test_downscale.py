import numpy as np
import pytest

from rloss.data.downscale import downscale_dataset, downscale_mask, downscale_scribble, target_size
from rloss.data.folder import SegmentationFolder
from rloss.data.io import DataError, save_label_png, save_rgb


def test_majority_mask_by_hand():
    mask = np.array(
        [
            [1, 1, 2, 2],
            [1, 3, 2, 255],
            [0, 0, 255, 255],
            [0, 4, 255, 255],
        ],
        dtype=np.uint8,
    )
    expected = np.array([[1, 2], [0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(downscale_mask(mask, 2, 2, "majority"), expected)


def test_scribbles_survive_and_conflicts_go_to_the_majority():
    scribble = np.full((6, 6), 255, dtype=np.uint8)
    scribble[0, 0:6] = 1  # class 1 across the footprints of targets (0, 0) and (0, 1) ...
    scribble[1, 1] = 2  # ... outvotes class 2's one pixel in footprint (0, 0)
    scribble[5, 5] = 3  # a lone pixel in another footprint
    out = downscale_scribble(scribble, 2, 2)
    expected = np.array([[2, 1], [255, 3]], dtype=np.uint8)  # 2 restored where class 1 is kept elsewhere
    np.testing.assert_array_equal(out, expected)
    plain = np.full((6, 6), 255, dtype=np.uint8)
    plain[0, 0:3] = 1
    plain[1, 4] = 2
    np.testing.assert_array_equal(downscale_scribble(plain, 2, 2), [[1, 2], [255, 255]])


def test_target_size_keeps_the_aspect_ratio():
    assert target_size(300, 500, 40) == (40, 67)
    assert target_size(500, 300, 40) == (67, 40)


def make_tree(root, sizes=((120, 160), (100, 100))):
    rng = np.random.default_rng(0)
    ids = []
    for i, (h, w) in enumerate(sizes):
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : h // 2, w // 4 : w // 2] = 1
        mask[h // 2 :, w // 2 :] = 2
        scribble = np.full_like(mask, 255)
        scribble[h // 3, w // 4 + 2 : w // 2 - 2] = 1  # a one-pixel-wide stroke
        scribble[h - 5, w // 2 + 2 : w - 2] = 2
        scribble[2, 2:20] = 0
        image = (rng.random((h, w, 3)) * 60 + mask[..., None] * 60).astype(np.uint8)
        save_rgb(image, root / "JPEGImages" / f"s{i}.png")
        save_label_png(mask, root / "SegmentationClassAug" / f"s{i}.png")
        save_label_png(scribble, root / "pascal_2012_scribble" / f"s{i}.png")
        ids.append(f"s{i}")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("background\nsquare\ncorner\n")
    return root


@pytest.mark.parametrize("image_filter", ["area", "bicubic", "bilinear"])
def test_downscaled_dataset_keeps_every_scribbled_class(tmp_path, image_filter):
    src = make_tree(tmp_path / "src")
    summary = downscale_dataset(src, tmp_path / "out", size=10, image_filter=image_filter, progress=False)
    small = SegmentationFolder(tmp_path / "out", "train")
    big = SegmentationFolder(src, "train")
    assert summary["train"] == {"samples": 2, "skipped": 0}
    assert small.class_names == ["background", "square", "corner"]
    for i in range(2):
        s, b = small[i], big[i]
        assert min(s.image.shape[:2]) == 10
        assert set(np.unique(s.scribble)) == set(np.unique(b.scribble))
    assert 0 < summary["labeled_fraction_before"] < summary["labeled_fraction_after"]


def test_images_smaller_than_the_target_are_a_clear_error(tmp_path):
    src = make_tree(tmp_path / "src", sizes=((30, 30),))
    with pytest.raises(DataError, match=r"s0.png: 30x30 is smaller than the target size 40"):
        downscale_dataset(src, tmp_path / "out", size=40, progress=False)
    with pytest.raises(ValueError, match="image_filter must be one of"):
        downscale_dataset(src, tmp_path / "out", size=10, image_filter="lanczos", progress=False)
