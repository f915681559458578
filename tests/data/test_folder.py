"""SegmentationFolder and the joint transforms on small generated data."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rloss.data.folder import SegmentationFolder
from rloss.data.io import DataError, save_label_png, save_rgb
from rloss.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    choose_interpolation,
    resize_labels,
)

CLASS_COLOURS = np.array([[20, 20, 20], [230, 40, 40], [40, 220, 40], [40, 40, 230]], dtype=np.uint8)


def blocks(height: int, width: int, block: int = 8) -> np.ndarray:
    """A class map of 4 classes in a checkerboard-like pattern of blocks."""
    ys, xs = np.mgrid[:height, :width]
    return (((ys // block) + 2 * (xs // block)) % 4).astype(np.uint8)


def write_sample(root: Path, sample_id: str, height: int = 40, width: int = 48, scribble_every: int = 5):
    mask = blocks(height, width)
    scribble = np.full_like(mask, 255)
    scribble[::scribble_every, ::scribble_every] = mask[::scribble_every, ::scribble_every]
    save_rgb(CLASS_COLOURS[mask], root / "JPEGImages" / f"{sample_id}.png")
    save_label_png(mask, root / "SegmentationClassAug" / f"{sample_id}.png")
    save_label_png(scribble, root / "pascal_2012_scribble" / f"{sample_id}.png")


def make_dataset(root: Path, ids=("a", "b"), split="train", classes=("bg", "red", "green", "blue")) -> Path:
    for sample_id in ids:
        write_sample(root, sample_id)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_folder_reads_images_scribbles_masks_and_classes(tmp_path):
    data = SegmentationFolder(make_dataset(tmp_path), "train")
    assert len(data) == 2 and data.class_names == ["bg", "red", "green", "blue"] and data.num_classes == 4
    sample = data[1]
    assert sample.id == "b" and sample.image.shape == (40, 48, 3)
    np.testing.assert_array_equal(sample.mask, blocks(40, 48))
    labeled = sample.scribble != 255
    np.testing.assert_array_equal(sample.scribble[labeled], sample.mask[labeled])
    np.testing.assert_array_equal(sample.image, CLASS_COLOURS[sample.mask])


def _break(root: Path, how: str):
    if how == "missing image":
        (root / "JPEGImages" / "b.png").unlink()
        return "b.jpg|png: image not found"
    if how == "truncated image":
        path = root / "JPEGImages" / "b.png"
        path.write_bytes(path.read_bytes()[:60])
        return "b.png: unreadable image"
    if how == "size mismatch":
        save_label_png(np.zeros((10, 10), np.uint8), root / "SegmentationClassAug" / "b.png")
        return "b.png: size 10x10 differs"
    if how == "class too large":
        save_label_png(np.full((40, 48), 7, np.uint8), root / "SegmentationClassAug" / "b.png")
        return "class id 7 is not below the 4 classes"
    if how == "no scribble pixel":
        save_label_png(np.full((40, 48), 255, np.uint8), root / "pascal_2012_scribble" / "b.png")
        return "b.png: no scribble pixel"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing image", "truncated image", "size mismatch", "class too large", "no scribble pixel"])
def test_bad_samples_raise_naming_the_file_or_are_skipped_and_counted(tmp_path, how):
    root = make_dataset(tmp_path)
    message = _break(root, how)
    with pytest.raises(DataError, match=message.replace("|", r"\|")):
        SegmentationFolder(root, "train").check(progress=False)
    data = SegmentationFolder(root, "train", skip_bad=True)
    report = data.check(progress=False)
    assert (report["split"], report["samples"], report["skipped"]) == ("train", 1, 1)
    assert data.ids == ["a"] and message.split(":")[-1].strip() in data.skipped["b"]


def test_empty_or_missing_split_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"val.txt: the split 'val' is empty"):
        SegmentationFolder(root, "val")
    with pytest.raises(DataError, match=r"test.txt: split list not found"):
        SegmentationFolder(root, "test")


def test_auto_interpolation_is_bicubic_below_128_px_only():
    assert choose_interpolation("auto", 40, 40) == "bicubic"
    assert choose_interpolation("auto", 127, 500) == "bicubic"
    assert choose_interpolation("auto", 128, 128) == "bilinear"
    assert choose_interpolation("bilinear", 40, 40) == "bilinear"
    with pytest.raises(ValueError, match="interpolation must be one of"):
        choose_interpolation("lanczos", 40, 40)


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Labeled pixels whose 3x3 neighbourhood holds one class (away from blended edges)."""
    same = torch.ones_like(mask, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = torch.roll(mask, shifts=(dy, dx), dims=(0, 1))
            same &= shifted == mask
    same[0, :] = same[-1, :] = False
    same[:, 0] = same[:, -1] = False
    return same & (mask != 255)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_train_transform_keeps_image_and_labels_aligned(tmp_path, interpolation):
    data = SegmentationFolder(make_dataset(tmp_path), "train", transform=TrainTransform(64, interpolation=interpolation))
    for index in range(2):
        for epoch in range(4):
            data.transform.set_epoch(epoch)
            out = data[index]
            assert out["image"].shape == (3, 64, 64) and out["mask"].shape == (64, 64)
            inside = interior(out["mask"])
            colours = torch.from_numpy(CLASS_COLOURS).float()[out["mask"][inside]]
            error = (out["image_raw"].permute(1, 2, 0)[inside] - colours).abs().max(dim=1).values
            assert (error < 40).float().mean() > 0.97, f"misaligned at epoch {epoch}"
            scribbled = out["scribble"] != 255
            assert torch.equal(out["scribble"][scribbled], out["mask"][scribbled])


def test_train_transform_marks_padding_in_roi_and_labels(tmp_path):
    transform = TrainTransform(96, scale_range=(0.5, 0.6))  # small: padding guaranteed
    data = SegmentationFolder(make_dataset(tmp_path), "train", transform=transform)
    out = data[0]
    pad = out["roi"] == 0
    assert pad.any() and (out["roi"][~pad] == 1).all()
    assert (out["mask"][pad] == 255).all() and (out["scribble"][pad] == 255).all()
    mean = torch.tensor(IMAGENET_MEAN) * 255
    assert torch.allclose(out["image_raw"].permute(1, 2, 0)[pad], mean.round().expand(int(pad.sum()), 3))
    assert (out["mask"][~pad] != 255).all()  # the whole image is labeled in the full mask


def test_two_label_maps_resized_as_one_image_equal_two_resizes():
    # The train transform resizes scribble and mask as the two bands of one image.
    rng = np.random.default_rng(0)
    for height, width in [(40, 40), (13, 29), (64, 50)]:
        scribble = rng.integers(0, 256, (height, width), dtype=np.uint8)
        mask = rng.integers(0, 256, (height, width), dtype=np.uint8)
        for size in [(64, 64), (45, 77), (7, 9), (height, width)]:
            both = resize_labels(np.dstack([scribble, mask]), *size)
            assert np.array_equal(both[..., 0], resize_labels(scribble, *size))
            assert np.array_equal(both[..., 1], resize_labels(mask, *size))


def test_train_transform_outputs_the_normalised_image_and_typed_labels(tmp_path):
    out = SegmentationFolder(make_dataset(tmp_path), "train", transform=TrainTransform(64))[0]
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (out["image_raw"].double() / 255 - mean.double()) / std.double()
    torch.testing.assert_close(out["image"].double(), expected, rtol=0, atol=1e-5)
    assert out["image"].dtype == out["image_raw"].dtype == out["roi"].dtype == torch.float32
    assert out["scribble"].dtype == out["mask"].dtype == torch.int64
    assert all(out[k].is_contiguous() for k in ("image", "image_raw", "scribble", "mask", "roi"))


def test_train_transform_is_deterministic_per_seed_epoch_and_index(tmp_path):
    root = make_dataset(tmp_path)
    a = SegmentationFolder(root, "train", transform=TrainTransform(64, seed=1))
    b = SegmentationFolder(root, "train", transform=TrainTransform(64, seed=1))
    assert torch.equal(a[0]["image"], b[0]["image"])
    a.transform.set_epoch(1)
    assert not torch.equal(a[0]["image"], b[0]["image"])


def test_small_inputs_use_bicubic_by_default(tmp_path):
    root = make_dataset(tmp_path)
    auto = SegmentationFolder(root, "train", transform=TrainTransform(64, interpolation="auto"))[0]
    bicubic = SegmentationFolder(root, "train", transform=TrainTransform(64, interpolation="bicubic"))[0]
    bilinear = SegmentationFolder(root, "train", transform=TrainTransform(64, interpolation="bilinear"))[0]
    assert torch.equal(auto["image_raw"], bicubic["image_raw"])
    assert not torch.equal(auto["image_raw"], bilinear["image_raw"])


def test_eval_transform_resizes_the_network_input_and_keeps_the_labels_at_the_image_size(tmp_path):
    data = SegmentationFolder(make_dataset(tmp_path), "train", transform=EvalTransform(80))
    out = data[1]  # a 40 x 48 image
    assert out["image"].shape == (3, 80, 96)  # shorter side 80, aspect kept, nothing cropped
    assert out["logit_mode"] == "bicubic"  # auto: the image is below 128 px
    np.testing.assert_array_equal(out["mask"].numpy(), blocks(40, 48))  # the image's own labels
    np.testing.assert_array_equal(out["image_raw"].permute(1, 2, 0).numpy(), CLASS_COLOURS[blocks(40, 48)])
    # The network input is the image upscaled: away from the block edges it keeps each class's colour.
    inside = interior(torch.from_numpy(np.kron(blocks(40, 48), np.ones((2, 2), np.int64))))
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
    rgb = ((out["image"] * std + mean) * 255).permute(1, 2, 0)
    colours = torch.from_numpy(CLASS_COLOURS).float()[torch.from_numpy(np.kron(blocks(40, 48), np.ones((2, 2), np.int64)))]
    error = (rgb[inside] - colours[inside]).abs().max(dim=1).values
    assert (error < 40).float().mean() > 0.97


def test_cache_keeps_decoded_samples_read_only_within_its_budget(tmp_path):
    root = make_dataset(tmp_path, ids=("a", "b", "c"))
    plain = SegmentationFolder(root, "train")
    one = plain.load("a")
    size = one.image.nbytes + one.scribble.nbytes + one.mask.nbytes
    cached = SegmentationFolder(root, "train", cache_bytes=2 * size)  # room for two samples
    first = [cached.load(i) for i in ("a", "b", "c")]
    again = [cached.load(i) for i in ("a", "b", "c")]
    assert again[0] is first[0] and again[1] is first[1] and again[2] is not first[2]  # "c" did not fit
    assert not any(a.flags.writeable for a in (first[0].image, first[0].scribble, first[0].mask))
    # Transforms copy what they change: the same tensors with and without the cache, and the cache intact.
    for transform in (TrainTransform(64, (0.9, 1.2), seed=3), EvalTransform(48)):
        plain.transform = cached.transform = transform
        for i in range(3):
            for key, value in plain[i].items():
                assert torch.equal(value, cached[i][key]) if isinstance(value, torch.Tensor) else value == cached[i][key]
    np.testing.assert_array_equal(cached.load("a").image, one.image)
