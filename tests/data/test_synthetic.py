"""The built-in synthetic scribble data set: determinism, layout, label consistency,
scribble coverage, edges that follow the objects, and argument checks."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from rloss.data.folder import SegmentationFolder
from rloss.data.synthetic import generate_synthetic, make_sample, sample_rng

DIRS = ("JPEGImages", "SegmentationClassAug", "pascal_2012_scribble")


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def load(root: Path, sample_id: str):
    image = np.asarray(Image.open(root / "JPEGImages" / f"{sample_id}.png"))
    with Image.open(root / "SegmentationClassAug" / f"{sample_id}.png") as m, Image.open(root / "pascal_2012_scribble" / f"{sample_id}.png") as s:
        assert m.mode == "P" and s.mode == "P"  # palette PNGs of class ids
        return image, np.asarray(m), np.asarray(s)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a = generate_synthetic(tmp_path / "a", size=40, n_train=3, n_val=2, seed=7, progress=False)
    generate_synthetic(tmp_path / "b", size=40, n_train=3, n_val=2, seed=7, progress=False)
    generate_synthetic(tmp_path / "c", size=40, n_train=3, n_val=2, seed=8, progress=False)
    ha, hb, hc = hashes(tmp_path / "a"), hashes(tmp_path / "b"), hashes(tmp_path / "c")
    assert len(ha) == 3 * 5 + 2 + 1 + 1 and not any(".part" in name for name in ha)  # no temporary files left
    assert ha == hb  # every file, synthetic.json included, byte for byte
    images = [name for name in ha if name.startswith("JPEGImages")]
    assert all(ha[name] != hc[name] for name in images)
    assert hc["classes.txt"] == ha["classes.txt"]
    assert a["root"] == str(tmp_path / "a")


def test_val_images_do_not_depend_on_the_number_of_train_images(tmp_path):
    generate_synthetic(tmp_path / "small", size=40, n_train=1, n_val=2, seed=3, progress=False)
    generate_synthetic(tmp_path / "large", size=40, n_train=4, n_val=2, seed=3, progress=False)
    small, large = hashes(tmp_path / "small"), hashes(tmp_path / "large")
    for sample_id in ids(tmp_path / "small", "val") + ids(tmp_path / "small", "train"):
        for folder in DIRS:
            name = f"{folder}/{sample_id}.png"
            assert small[name] == large[name], name
    # make_sample is driven by the per-image stream only
    first = make_sample(sample_rng(3, "val", 1), 40)
    image, mask, scribble = load(tmp_path / "small", ids(tmp_path / "small", "val")[1])
    for got, expected in zip((image, mask, scribble), first):
        np.testing.assert_array_equal(got, expected)


def test_layout_summary_and_the_folder_reader(tmp_path, capsys):
    root = tmp_path / "syn"
    summary = generate_synthetic(root, size=48, n_train=5, n_val=3, seed=0, progress=False)
    assert capsys.readouterr().err == ""  # no progress bar when asked for none
    train, val = ids(root, "train"), ids(root, "val")
    assert len(train) == len(set(train)) == 5 and len(val) == len(set(val)) == 3 and not set(train) & set(val)
    names = (root / "classes.txt").read_text().splitlines()
    assert names[0] == "background" and 5 <= len(names) <= 7 and len(set(names)) == len(names)
    assert summary["num_classes"] == len(names) and summary["class_names"] == names
    assert (summary["size"], summary["n_train"], summary["n_val"]) == (48, 5, 3)
    fractions = []
    for sample_id in train + val:
        image, mask, scribble = load(root, sample_id)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == scribble.shape == (48, 48)
        fractions.append((scribble != 255).mean())
    assert summary["labeled_fraction"] == pytest.approx(np.mean(fractions))
    assert summary["labeled_fraction_min"] == pytest.approx(min(fractions))
    assert summary["labeled_fraction_max"] == pytest.approx(max(fractions))
    written = json.loads((root / "synthetic.json").read_text())
    assert written == {k: v for k, v in summary.items() if k != "root"}
    for split, n in (("train", 5), ("val", 3)):  # the pipeline's own reader accepts it
        data = SegmentationFolder(root, split)
        assert data.num_classes == len(names) and data.check(progress=False)["samples"] == n


@pytest.mark.parametrize("size", [40, 64, 128])
def test_masks_and_scribbles_agree_and_cover_two_to_five_percent(tmp_path, size):
    root = tmp_path / "syn"
    summary = generate_synthetic(root, size=size, n_train=8, n_val=4, seed=11, progress=False)
    k = summary["num_classes"]
    fractions = []
    for sample_id in ids(root, "train") + ids(root, "val"):
        _, mask, scribble = load(root, sample_id)
        assert mask.max() < k and (mask != 0).any()
        labeled = scribble != 255
        np.testing.assert_array_equal(scribble[labeled], mask[labeled])  # a scribble never contradicts the mask
        assert (scribble == 0).any(), f"{sample_id}: no background scribble"
        for c in range(1, k):
            if (mask == c).sum() > 20:
                assert (scribble == c).any(), f"{sample_id}: class {c} has {(mask == c).sum()} pixels but no scribble"
        fractions.append(labeled.mean())
    assert 0.02 <= np.mean(fractions) <= 0.05, np.mean(fractions)
    assert max(fractions) < 0.1


def test_scribbles_stay_well_inside_their_regions():
    # every scribble pixel lies at least one pixel away from any other class (eroded regions)
    for i in range(6):
        _, mask, scribble = make_sample(sample_rng(5, "train", i), 64)
        for c in np.unique(scribble[scribble != 255]):
            eroded = ndimage.binary_erosion(mask == c, structure=np.ones((3, 3)), border_value=0)
            assert eroded[scribble == c].all()


def test_colour_edges_follow_the_mask_boundaries():
    on_boundary, inside = [], []
    for i in range(12):
        image, mask, _ = make_sample(sample_rng(0, "val", i), 64)
        grey = image.astype(np.float64).mean(axis=2)
        gy, gx = np.gradient(grey)
        magnitude = np.hypot(gy, gx)
        boundary = np.zeros(mask.shape, dtype=bool)
        boundary[:, 1:] |= mask[:, 1:] != mask[:, :-1]
        boundary[:, :-1] |= mask[:, 1:] != mask[:, :-1]
        boundary[1:] |= mask[1:] != mask[:-1]
        boundary[:-1] |= mask[1:] != mask[:-1]
        uniform = ndimage.maximum_filter(mask, size=7) == ndimage.minimum_filter(mask, size=7)
        on_boundary.append(magnitude[boundary])
        inside.append(magnitude[uniform])
    edge, flat = np.concatenate(on_boundary).mean(), np.concatenate(inside).mean()
    assert edge > 2.5 * flat, (edge, flat)


def _object_contrast(low_contrast: float) -> float:
    """Mean distance in RGB between each object's mean colour and the mean colour of the background
    pixels around it (a 4-pixel ring), over 40 images."""
    distances = []
    for i in range(40):
        image, mask, _ = make_sample(sample_rng(3, "train", i), 64, low_contrast)
        rgb = image.astype(np.float64)
        for c in np.unique(mask[mask > 0]):
            inside = ndimage.binary_erosion(mask == c, iterations=2)
            ring = ndimage.binary_dilation(mask == c, iterations=4) & (mask == 0)
            if inside.sum() > 10 and ring.sum() > 10:
                distances.append(np.linalg.norm(rgb[inside].mean(0) - rgb[ring].mean(0)))
    return float(np.mean(distances))


def test_low_contrast_objects_are_closer_in_colour_to_their_background():
    """--low-contrast is how much colour tells objects from the background: more of it, less contrast."""
    none, built_in, most = (_object_contrast(share) for share in (0.0, 0.2, 0.9))
    assert none > built_in > most and most < 0.6 * none, (none, built_in, most)


def test_the_built_in_set_is_the_default_low_contrast_share(tmp_path):
    generate_synthetic(tmp_path / "a", size=32, n_train=3, n_val=1, progress=False)
    generate_synthetic(tmp_path / "b", size=32, n_train=3, n_val=1, progress=False, low_contrast=0.2)
    generate_synthetic(tmp_path / "c", size=32, n_train=3, n_val=1, progress=False, low_contrast=0.7)
    assert hashes(tmp_path / "a") == hashes(tmp_path / "b")
    assert json.loads((tmp_path / "c" / "synthetic.json").read_text())["low_contrast"] == 0.7
    assert hashes(tmp_path / "a") != hashes(tmp_path / "c")


def test_make_sample_at_odd_and_large_sizes():
    for size in (33, 513):
        image, mask, scribble = make_sample(np.random.default_rng(1), size)
        assert image.shape == (size, size, 3) and mask.shape == scribble.shape == (size, size)
        assert image.dtype == mask.dtype == scribble.dtype == np.uint8
        assert 0.005 < (scribble != 255).mean() < 0.1
    # anti-aliased: the large image has many grey levels in the band along the object outlines
    grey = image.mean(axis=2)
    boundary = ndimage.binary_dilation(mask != ndimage.minimum_filter(mask, size=3), iterations=1)
    assert len(np.unique(np.rint(grey[boundary]))) > 50


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 8}, "size"),
        ({"size": 2000}, "size"),
        ({"size": 64.0}, "size"),
        ({"n_train": -1}, "n_train"),
        ({"n_val": 0}, "n_val"),
        ({"seed": -1}, "seed"),
        ({"low_contrast": 1.5}, "low_contrast"),
        ({"low_contrast": "high"}, "low_contrast"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        generate_synthetic(tmp_path / "syn", progress=False, **kwargs)
    assert not (tmp_path / "syn").exists()


def test_make_sample_checks_its_arguments():
    with pytest.raises(ValueError, match="size"):
        make_sample(np.random.default_rng(0), 8)
    with pytest.raises(ValueError, match="rng"):
        make_sample(0, 64)
