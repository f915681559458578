"""Images that are not 8-bit RGB: grey 8- and 16-bit PNG, multi-band TIFF and .npy, read at the data
set's band count (data.channels) with the intensity rule, and every joint transform on C bands."""

import json
import re

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rloss import cli
from rloss.data.folder import IMAGE_DIR, SegmentationFolder
from rloss.data.io import DataError, display_rgb, read_bands, read_image, save_label_png
from rloss.data.synthetic import CLASS_GREYS, generate_synthetic, make_sample, sample_rng
from rloss.data.transforms import EvalTransform, TrainTransform, normalisation


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_8_bit_grey_png_reads_as_one_band_with_its_exact_values(tmp_path):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = read_image(_png(tmp_path / "g.png", grey), channels=1)
    assert image.dtype == np.uint8 and image.shape == (16, 16, 1)
    np.testing.assert_array_equal(image[..., 0], grey)


def test_16_bit_grey_png_keeps_every_level_as_float_times_255_over_65535(tmp_path):
    levels = np.array([[0, 1, 2, 257, 32768, 65534, 65535, 12345]], dtype=np.uint16)
    path = _png(tmp_path / "g16.png", levels)
    assert read_bands(path).dtype == np.uint16
    image = read_image(path, channels=1)
    assert image.dtype == np.float32 and image.shape == (1, 8, 1)
    np.testing.assert_array_equal(image[..., 0], levels.astype(np.float32) * np.float32(255 / 65535))
    assert len(np.unique(image)) == levels.size  # 1 and 2 stay apart: no rounding to 8 bits
    # data.channels 3 reads it as RGB data sets always have: rounded to 8 bits, repeated
    rgb = read_image(path, channels=3)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 8, 3)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 0, 0, 1, 128, 255, 255, 48])


@pytest.mark.parametrize("layout", ["contig", "planar", "pages"])
def test_4_band_tiff_reads_with_its_exact_values(tmp_path, layout):
    bands = np.arange(5 * 6 * 4, dtype=np.uint16).reshape(5, 6, 4) * 500
    path = tmp_path / "four.tif"
    if layout == "planar":
        tifffile.imwrite(path, np.moveaxis(bands, -1, 0), photometric="minisblack", planarconfig="separate")
    elif layout == "pages":  # one band per page, written one by one
        with tifffile.TiffWriter(path) as tif:
            for b in range(4):
                tif.write(bands[..., b], photometric="minisblack")
    else:
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="contig")
    np.testing.assert_array_equal(read_bands(path), bands)
    np.testing.assert_array_equal(read_image(path, channels=4), bands.astype(np.float32) * np.float32(255 / 65535))


def test_npy_arrays_read_uint8_as_is_and_float_as_given(tmp_path):
    u8 = np.random.default_rng(0).integers(0, 256, (7, 9, 5), dtype=np.uint8)
    np.save(tmp_path / "a.npy", u8)
    np.testing.assert_array_equal(read_image(tmp_path / "a.npy", channels=5), u8)
    f = np.random.default_rng(1).uniform(-3, 300, (7, 9, 2))  # float64: cast, values as given
    np.save(tmp_path / "b.npy", f)
    out = read_image(tmp_path / "b.npy", channels=2)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, f.astype(np.float32))


@pytest.mark.parametrize("case, message", [
    ("bands", "b.npy: 3 band(s), but the data set is read with 4"),
    ("dtype", "c.npy: sample type int32 refused"),
    ("nan", "d.npy: holds non-finite values"),
    ("shape", "e.npy: expected an image [H, W] or [H, W, bands]"),
    ("pickle", "f.npy: unreadable .npy array"),
    ("tiff", "g.tif: unreadable TIFF"),
])
def test_bad_multiband_input_is_one_line_naming_the_file(tmp_path, case, message):
    name = message.split(":")[0]
    path = tmp_path / name
    if case == "bands":
        np.save(path, np.zeros((4, 4, 3), np.uint8))
    elif case == "dtype":
        np.save(path, np.zeros((4, 4, 4), np.int32))
    elif case == "nan":
        np.save(path, np.full((4, 4, 4), np.nan, np.float32))
    elif case == "shape":
        np.save(path, np.zeros((2, 4, 4, 4), np.uint8))
    elif case == "pickle":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        path.write_bytes(b"II*\x00 not a tiff")
    with pytest.raises(DataError, match=re.escape(message)) as info:
        read_image(path, channels=4)
    assert "\n" not in str(info.value)


def _band_dataset(root, channels, size=(48, 40), dtype=np.uint8):
    """Two images whose bands are a function of their class map: band b = 30 * class + 7 * b (x 200 for
    uint16), so any misalignment of image and labels shows as a wrong value inside a class region."""
    for d in (IMAGE_DIR, "pascal_2012_scribble", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    h, w = size
    ids = []
    for i in range(2):
        labels = np.zeros((h, w), np.uint8)
        labels[:, w // 3:] = 1
        labels[h // 2:, : w // 2] = 2
        labels[h // 4: h // 2, w // 2 + 4:] = 3
        if i:
            labels = labels[::-1].copy()
        bands = np.stack([30 * labels.astype(np.float64) + 7 * b for b in range(channels)], axis=2)
        sid = f"im{i}"
        if dtype == np.uint16 and channels == 1:
            _png(root / IMAGE_DIR / f"{sid}.png", (bands[..., 0] * 200).astype(np.uint16))
        elif dtype == np.uint16:
            np.save(root / IMAGE_DIR / f"{sid}.npy", (bands * 200).astype(np.uint16))
        elif channels == 1:
            _png(root / IMAGE_DIR / f"{sid}.png", bands[..., 0].astype(np.uint8))
        else:
            tifffile.imwrite(root / IMAGE_DIR / f"{sid}.tif", bands.astype(np.uint8), photometric="minisblack",
                             planarconfig="contig")
        save_label_png(labels, root / "SegmentationClassAug" / f"{sid}.png")
        save_label_png(labels, root / "pascal_2012_scribble" / f"{sid}.png")
        ids.append(sid)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("a\nb\nc\nd\n")
    return root


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood holds one class (away from edges, where the image blends)."""
    h, w = mask.shape
    padded = np.pad(mask, 2, mode="edge")
    same = np.ones_like(mask, dtype=bool)
    for dy in range(5):
        for dx in range(5):
            same &= padded[dy:dy + h, dx:dx + w] == mask
    return same


@pytest.mark.parametrize("channels, dtype", [(1, np.uint8), (1, np.uint16), (4, np.uint8), (4, np.uint16)])
def test_train_transform_keeps_c_band_images_aligned_with_their_labels(tmp_path, channels, dtype):
    scale = 200 * 255 / 65535 if dtype == np.uint16 else 1.0
    root = _band_dataset(tmp_path, channels, dtype=dtype)
    transform = TrainTransform(56, scale_range=(0.6, 1.7), interpolation="bilinear", seed=3)
    data = SegmentationFolder(root, "train", channels=channels, transform=transform)
    mean, _ = normalisation(channels)
    checked = 0
    for epoch in range(6):  # scales, crops, flips and (at small scales) padding
        transform.set_epoch(epoch)
        for index in range(len(data)):
            out = data[index]
            raw, mask, roi = out["image_raw"].numpy(), out["mask"].numpy(), out["roi"].numpy()
            assert raw.shape == (channels, 56, 56) and out["image"].shape == (channels, 56, 56)
            assert (out["scribble"].numpy() == mask).all()
            inside = _interior(mask) & (roi == 1) & (mask != 255)
            expected = np.stack([(30 * mask + 7 * b) * scale for b in range(channels)])
            np.testing.assert_allclose(raw[:, inside], expected[:, inside], rtol=1e-5, atol=1e-3)
            pad = roi == 0  # the padding: the normalisation's mean, ignored by the labels
            assert (mask[pad] == 255).all()
            fill = np.array(mean) * 255
            fill = np.round(fill) if dtype == np.uint8 else fill
            np.testing.assert_allclose(raw[:, pad], np.broadcast_to(fill[:, None], (channels, pad.sum())), atol=1e-4)
            assert out["image"].numpy()[:, pad].std() < 0.02 if pad.any() else True
            checked += inside.sum()
    assert checked > 1000


@pytest.mark.parametrize("channels", [1, 4])
def test_eval_transform_normalises_c_bands_by_the_stated_rule(tmp_path, channels):
    root = _band_dataset(tmp_path, channels)
    out = SegmentationFolder(root, "train", channels=channels, transform=EvalTransform(40))[0]
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in normalisation(channels))
    assert out["image_raw"].shape == (channels, 48, 40)
    assert out["image"].shape == (channels, 48, 40)
    torch.testing.assert_close(out["image"], (out["image_raw"] / 255 - mean) / std)


def test_normalisation_rule():
    assert normalisation(3) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    (m,), (s,) = normalisation(1)
    assert m == pytest.approx(0.449) and s == pytest.approx(0.226)
    assert normalisation(5) == ((0.485, 0.456, 0.406, 0.485, 0.456), (0.229, 0.224, 0.225, 0.229, 0.224))


def test_display_shows_grey_as_grey_bands_as_their_first_three_and_16_bit_stretched():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    np.testing.assert_array_equal(display_rgb(grey), np.repeat(grey, 3, axis=2))
    bands = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    np.testing.assert_array_equal(display_rgb(bands), bands[..., :3])
    wide = np.array([[[10.0], [20.0], [30.0]]], dtype=np.float32)
    np.testing.assert_array_equal(display_rgb(wide)[0, :, 0], [0, 128, 255])


def test_grey_synthetic_set_draws_the_same_scenes_with_a_grey_level_per_class(tmp_path):
    for i in range(4):
        grey, mask, scribble = make_sample(sample_rng(0, "train", i), 64, low_contrast=0.0, channels=1)
        rgb, mask3, scribble3 = make_sample(sample_rng(0, "train", i), 64, low_contrast=0.0)
        assert grey.shape == (64, 64) and grey.dtype == np.uint8 and rgb.shape == (64, 64, 3)
        np.testing.assert_array_equal(mask, mask3)
        np.testing.assert_array_equal(scribble, scribble3)
        for cls in set(np.unique(mask)) - {0}:  # each object near its class's level (jitter, shading, texture)
            assert abs(np.median(grey[mask == cls]) - min(CLASS_GREYS[cls, 0], 255)) < 60
    summary = generate_synthetic(tmp_path / "g", size=40, n_train=3, n_val=2, progress=False, channels=1)
    assert summary["channels"] == 1
    assert Image.open(tmp_path / "g" / IMAGE_DIR / "train_00000.png").mode == "L"
    with pytest.raises(ValueError, match="channels must be 1 .grey. or 3 .RGB., got 2"):
        generate_synthetic(tmp_path / "h", size=40, n_train=1, n_val=1, progress=False, channels=2)


def test_data_check_reports_channels_bit_depth_and_range_of_a_grey_set(tmp_path, capsys):
    generate_synthetic(tmp_path / "g", size=40, n_train=3, n_val=2, progress=False, channels=1)
    assert cli.main(["data", "check", "--root", str(tmp_path / "g"), "--channels", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    grey = [read_bands(p) for p in sorted((tmp_path / "g" / IMAGE_DIR).glob("train_*.png"))]
    assert report["channels"] == 1 and report["bands_in_files"] == [1] and report["bit_depth"] == ["8-bit"]
    assert report["intensity_range"] == [min(float(g.min()) for g in grey), max(float(g.max()) for g in grey)]
    assert "note" not in report
    # read as RGB (the default 3): the report says what the files hold and how to read them as they are
    assert cli.main(["data", "check", "--root", str(tmp_path / "g")]) == 0
    assert "data.channels 1 reads them as they are" in json.loads(capsys.readouterr().out)["note"]
    # a band count that is not the files': one line naming the file
    assert cli.main(["data", "check", "--root", str(tmp_path / "g"), "--channels", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train_00000.png: 1 band(s), but the data set is read with 4" in err


def test_data_check_reports_16_bit_depth(tmp_path, capsys):
    root = _band_dataset(tmp_path, 4, dtype=np.uint16)
    assert cli.main(["data", "check", "--root", str(root), "--channels", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bit_depth"] == ["16-bit"] and report["bands_in_files"] == [4]
    assert report["intensity_range"] == [0.0, float((30 * 3 + 7 * 3) * 200)]


def test_bicubic_upscaling_of_16_bit_bands_stays_in_their_range():
    # PIL's bicubic overshoots at a sharp edge and does not clamp float images: the loss would then
    # see values outside 0..255 and refuse the batch.
    from PIL import Image

    from rloss.data.transforms import resize_bands

    band = np.zeros((8, 8, 1), dtype=np.float32)
    band[:, 4:] = 255.0
    overshoot = np.asarray(Image.fromarray(band[..., 0]).resize((32, 32), Image.Resampling.BICUBIC))
    assert overshoot.max() > 255.0 and overshoot.min() < 0.0  # what the clip is for
    resized = resize_bands(band, 32, 32, Image.Resampling.BICUBIC)
    assert resized.min() == 0.0 and resized.max() == 255.0 and resized.shape == (32, 32, 1)
