"""Training and inference on a greyscale data set (data.channels 1), end to end on the CPU."""

import json

import numpy as np
import pytest
import torch

from inputs import tiny_pce_config
from rloss.data.folder import IMAGE_DIR, SegmentationFolder
from rloss.data.io import read_bands, read_image
from rloss.data.synthetic import generate_synthetic
from rloss.engine.config import load_config
from rloss.engine.infer import infer_path, load_predictor, overlay
from rloss.engine.train import train


@pytest.fixture(scope="module")
def grey_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("grey") / "grey40"
    generate_synthetic(root, size=40, n_train=8, n_val=4, seed=0, progress=False, channels=1)
    return root


@pytest.fixture(scope="module")
def grey_run(grey_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = tiny_pce_config(grey_root, results, "grey_pce", "data.channels=1", "model.pretrained=false")
    final = train(cfg)
    return cfg, final


def test_a_pce_run_trains_on_grey_images_end_to_end(grey_run):
    cfg, final = grey_run
    assert 0 <= final["miou"] <= 1
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert metrics["final"] is not None
    ckpt = torch.load(cfg.run_dir / "checkpoint.pt", weights_only=True)
    first = next(v for k, v in ckpt["model"].items() if v.dim() == 4)
    assert first.shape[1] == 1  # the network takes one band
    assert json.loads(ckpt["config"])["data"]["channels"] == 1


def test_an_rgb_config_on_grey_files_still_reads_them_as_rgb(grey_root):
    data = SegmentationFolder(grey_root, "val")  # channels 3: as before this setting existed
    assert data.load(data.ids[0]).image.shape == (40, 40, 3)


def test_inference_reads_grey_images_and_shows_them_grey(grey_run, grey_root, tmp_path):
    cfg, _ = grey_run
    predictor = load_predictor(cfg.run_dir / "checkpoint.pt", "cpu")
    assert predictor.channels == 1
    image = read_image(grey_root / IMAGE_DIR / "val_00000.png", 1)
    [a] = predictor.predict([image])
    [b] = predictor.predict([image[..., 0]])  # [H, W] is taken for one band
    assert a.labels.shape == (40, 40) and np.array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match=r"image 0: expected \[H, W, 1\]"):
        predictor.predict([np.zeros((40, 40, 3), np.uint8)])
    summary = infer_path(predictor, grey_root / IMAGE_DIR, tmp_path / "out", progress=False)
    assert summary["written"] == 12 and summary["unreadable"] == 0
    shown = overlay(image, np.zeros((40, 40), np.uint8), alpha=0.0)  # no label colour: the image itself
    assert shown.shape == (40, 40, 3) and (shown == read_bands(grey_root / IMAGE_DIR / "val_00000.png")).all()


def test_data_channels_is_validated_in_one_line():
    assert load_config(None).data.channels == 3
    for bad in ("0", "-2"):
        with pytest.raises(ValueError, match=rf"^config: data.channels must be >= 1, got {bad}$"):
            load_config(None, [f"data.channels={bad}"])
    with pytest.raises(ValueError, match=r"^config: data.channels must be int, got 'grey'$"):
        load_config(None, ["data.channels=grey"])


def test_a_channel_count_that_differs_from_the_files_stops_training_naming_the_file(grey_root, tmp_path):
    from rloss.data.io import DataError

    cfg = tiny_pce_config(grey_root, tmp_path, "four", "data.channels=4")
    with pytest.raises(DataError, match=r"(train|val)_\d+\.png: 1 band\(s\), but the data set is read with 4"):
        train(cfg)


def _loss_takes_one_band() -> bool:
    from rloss.losses import DenseCRFLoss

    try:
        DenseCRFLoss(1e-9, 15.0, 10.0, kernel="exact")(torch.rand(1, 1, 8, 8) * 255,
                                                       torch.rand(1, 2, 8, 8).softmax(1), torch.ones(1, 8, 8))
    except (ValueError, RuntimeError):
        return False
    return True


def test_a_densecrf_run_trains_on_grey_images(grey_root, tmp_path):
    if not _loss_takes_one_band():
        pytest.skip("the DenseCRF loss does not take images [N, 1, H, W] yet")
    cfg = tiny_pce_config(grey_root, tmp_path, "grey_crf", "data.channels=1", "loss.type=pce_crf")
    final = train(cfg)
    assert 0 <= final["miou"] <= 1


def test_logged_examples_of_grey_images_are_rgb(grey_run, grey_root):
    from rloss.data.transforms import EvalTransform
    from rloss.engine.evaluation import evaluate

    cfg, _ = grey_run
    predictor = load_predictor(cfg.run_dir / "checkpoint.pt", "cpu")
    val = SegmentationFolder(grey_root, "val", channels=1, transform=EvalTransform(32))
    loader = torch.utils.data.DataLoader(val, batch_size=2, collate_fn=list)
    _, examples = evaluate(predictor.model, loader, torch.device("cpu"), 6, [str(i) for i in range(6)], num_examples=2)
    first = examples["image"][0].numpy()
    assert first.shape == (40, 40, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, np.repeat(read_bands(grey_root / IMAGE_DIR / f"{val.ids[0]}.png"), 3, axis=2))
