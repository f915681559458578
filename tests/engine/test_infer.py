"""Inference: sizes and class ids, interpolation choices, exact no-resize and nearest cases,
unreadable images, refused checkpoints (never executed), no overwriting, the study function."""

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rloss.engine.config import load_config
from rloss.data.io import read_labels, read_rgb
from rloss.cli import _add_infer_arguments as add_infer_arguments
from rloss.cli import _cmd_infer as cmd_infer
from rloss.engine.infer import infer_path, load_predictor
from rloss.study.interpolation import DEFAULT_COMBOS, evaluate_interpolations
from rloss.engine.train import train

from inputs import randomise_classifier

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MODES = ("bilinear", "bicubic", "nearest")


@pytest.fixture(scope="module")
def checkpoint(data_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    cfg = load_config(None, [
        f"data.root={data_root}", "data.crop_size=32", "data.batch_size=4", "data.num_workers=0",
        "model.name=deeplabv3plus_tiny", "optim.epochs=1", "loss.type=pce", "loss.kernel=exact",
        f"run.results_dir={results}", "run.name=tinyrun", "run.eval_every_epochs=1", "run.device=cpu",
    ])
    train(cfg)
    return results / "tinyrun" / "checkpoint.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint, device="cpu")


def photo(data_root, height, width, index=0):
    """A synthetic validation image resized (PIL bicubic) to height x width."""
    image = read_rgb(data_root / "JPEGImages" / f"val_{index:05d}.png")
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))


def save(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def by_hand(model, image, upsample=True):
    """Logits of the network on ``image`` as it is: normalised in numpy, no resizing before it."""
    x = (image.astype(np.float32) / 255.0 - MEAN) / STD
    with torch.no_grad():
        return model(torch.from_numpy(x).permute(2, 0, 1)[None].contiguous(), upsample=upsample)[0]


def test_outputs_have_the_input_size_and_valid_classes(predictor, data_root, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    sizes = {"a.png": (37, 53), "nested/deeper/b.jpg": (200, 150)}
    for rel, (h, w) in sizes.items():
        save(photo(data_root, h, w), src / rel)
    summary = infer_path(predictor, src, out, batch_size=2, save_probs=True, progress=False)

    assert summary["written"] == 2 and summary["images"] == 2
    assert summary["skipped_existing"] == 0 and summary["unreadable"] == 0
    k = predictor.num_classes
    assert k == len((data_root / "classes.txt").read_text().split())
    for rel, (h, w) in sizes.items():
        stem = out / Path(rel).parent / Path(rel).stem
        labels = read_labels(stem.with_name(stem.name + ".png"))
        assert labels.shape == (h, w)
        assert labels.max() < k
        overlay = read_rgb(stem.with_name(stem.name + "_overlay.jpg"))
        assert overlay.shape == (h, w, 3)
        probs = np.load(stem.with_name(stem.name + "_probs.npy"))
        assert probs.dtype == np.float16 and probs.shape == (k, h, w)
        np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=5e-3)
        # The label map is the argmax of the probabilities, up to float16 ties.
        agree = (probs.argmax(0) == labels).mean()
        assert agree > 0.99
    assert not list(out.rglob("*.part")), "a temporary file was left behind"
    assert json.loads((out / "inference.json").read_text()) == summary
    assert summary["seconds"] > 0 and summary["images_per_s"] > 0


def test_auto_picks_bicubic_below_128_and_records_it(predictor, data_root, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(photo(data_root, 127, 140), src / "small.png")
    save(photo(data_root, 200, 128), src / "large.png")
    summary = infer_path(predictor, src, out, progress=False)
    modes = {r["image"]: (r["input_interpolation"], r["logit_interpolation"]) for r in summary["per_image"]}
    assert modes == {"small.png": ("bicubic", "bicubic"), "large.png": ("bilinear", "bilinear")}
    assert summary["modes"] == {"bicubic/bicubic": 1, "bilinear/bilinear": 1}
    assert summary["interpolation"] == "auto"
    # An explicit mode is used as asked, whatever the size.
    summary = infer_path(predictor, src, tmp_path / "out2", interpolation="nearest", progress=False)
    assert summary["modes"] == {"nearest/nearest": 2}


def test_stride4_logits_upsample_bilinearly_to_the_forward_output(predictor, data_root):
    image = photo(data_root, 32, 45)
    stride4 = by_hand(predictor.model, image, upsample=False)
    assert stride4.shape[-2:] == (8, 12)  # ceil(32/4), ceil(45/4)
    upsampled = torch.nn.functional.interpolate(stride4[None], size=(32, 45), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsampled[0], by_hand(predictor.model, image))


def test_without_input_resizing_bilinear_logits_give_the_network_argmax(predictor, data_root):
    image = photo(data_root, 32, 45)  # shorter side = the checkpoint's crop size: the input is not resized
    logits = by_hand(predictor.model, image)
    expected = logits.argmax(0).numpy().astype(np.uint8)
    for a in MODES:
        [pred] = predictor.predict([image], input_interpolation=a, logit_interpolation="bilinear", return_probs=True)
        assert pred.network_size == (32, 45)
        np.testing.assert_array_equal(pred.labels, expected, err_msg=a)
        np.testing.assert_allclose(pred.probs, logits.softmax(0).numpy(), atol=1e-5)


def test_nearest_nearest_by_hand(predictor, data_root):
    # 16 x 20 at shorter side 32 is an exact 2x: nearest input upscaling repeats each pixel 2x2; the
    # network's stride-4 logits are then 8 x 10, and nearest logit upsampling straight to 16 x 20
    # repeats each of them 2x2 (no bilinear step in between).
    image = photo(data_root, 16, 20, index=1)
    upscaled = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    stride4 = by_hand(predictor.model, upscaled, upsample=False).argmax(0).numpy()
    assert stride4.shape == (8, 10)
    expected = np.repeat(np.repeat(stride4, 2, axis=0), 2, axis=1)
    [pred] = predictor.predict([image], interpolation="nearest", size=32)
    assert pred.network_size == (32, 40)
    np.testing.assert_array_equal(pred.labels, expected)


def test_batches_of_mixed_sizes_match_single_images(predictor, data_root):
    images = [photo(data_root, 37, 53), photo(data_root, 32, 45, 1), photo(data_root, 37, 53, 2),
              photo(data_root, 130, 129, 3)]
    together = predictor.predict(images, return_probs=True)
    for image, pred in zip(images, together):
        [alone] = predictor.predict([image], return_probs=True)
        assert pred.labels.shape == image.shape[:2]
        assert (pred.input_interpolation, pred.logit_interpolation) == (alone.input_interpolation, alone.logit_interpolation)
        np.testing.assert_allclose(pred.probs, alone.probs, atol=1e-4)
        assert (pred.labels == alone.labels).mean() > 0.999


def test_unreadable_images_are_skipped_and_counted(predictor, data_root, tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    save(photo(data_root, 40, 40), src / "good.png")
    (src / "x.png").write_bytes(b"\x89PNG garbage" + bytes(range(200)))
    summary = infer_path(predictor, src, out, progress=False)
    assert (summary["written"], summary["unreadable"], summary["images"]) == (1, 1, 2)
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "x.png" in line]) == 1
    assert (out / "good.png").is_file() and (out / "good_overlay.jpg").is_file()
    assert not (out / "x.png").exists() and not (out / "x_overlay.jpg").exists()
    assert {r["image"]: r["status"] for r in summary["per_image"]} == {"good.png": "written", "x.png": "unreadable"}


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_predictor(tmp_path / "nowhere.pt", device="cpu")


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("kind", ["random_bytes", "state_dict", "no_config", "pickle_payload", "torch_payload"])
def test_files_that_are_not_checkpoints_are_refused(kind, predictor, tmp_path):
    path = tmp_path / "bad.pt"
    marker = tmp_path / "executed.marker"
    if kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "state_dict":
        torch.save(predictor.model.state_dict(), path)
    elif kind == "no_config":
        torch.save({"model": predictor.model.state_dict(), "num_classes": predictor.num_classes}, path)
    elif kind == "pickle_payload":
        path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    else:
        torch.save({"model": _Payload(marker), "config": "{}"}, path)
    with pytest.raises(ValueError, match=r"bad\.pt: not a checkpoint written by `rloss train`"):
        load_predictor(path, device="cpu")
    assert not marker.exists(), "loading the checkpoint executed code"


def test_the_payload_would_run_if_unpickled(tmp_path):
    # Shows that the payload above is live: an unrestricted unpickler does run it.
    marker = tmp_path / "executed.marker"
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_existing_outputs_are_kept_unless_overwrite(predictor, data_root, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(photo(data_root, 40, 40), src / "a.png")
    save(photo(data_root, 50, 60, 1), src / "b.png")
    first = infer_path(predictor, src, out, progress=False)
    assert first["written"] == 2
    sentinel = b"written by someone else"
    (out / "a_overlay.jpg").write_bytes(sentinel)
    label_b = out / "b.png"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.*") if p.name != "inference.json"}

    again = infer_path(predictor, src, out, progress=False)
    assert (again["written"], again["skipped_existing"]) == (0, 2)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in before} == before

    # Only the missing file of an incomplete set is written; the existing ones stay.
    (out / "b_overlay.jpg").unlink()
    partial = infer_path(predictor, src, out, progress=False)
    assert (partial["written"], partial["skipped_existing"]) == (1, 1)
    assert (out / "b_overlay.jpg").is_file()
    assert (label_b.stat().st_mtime_ns, label_b.read_bytes()) == before[label_b]

    forced = infer_path(predictor, src, out, overwrite=True, progress=False)
    assert (forced["written"], forced["skipped_existing"]) == (2, 0)
    assert (out / "a_overlay.jpg").read_bytes() != sentinel
    assert read_rgb(out / "a_overlay.jpg").shape == (40, 40, 3)
    assert not list(out.rglob("*.part"))


def test_bad_inputs_are_clear_errors(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        infer_path(predictor, tmp_path / "missing_folder", tmp_path / "out", progress=False)
    empty = tmp_path / "empty_folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="empty_folder: no jpg/jpeg/png images"):
        infer_path(predictor, empty, tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="interpolation"):
        infer_path(predictor, empty, tmp_path / "out", interpolation="lanczos", progress=False)


def test_output_folder_inside_the_input_is_not_read_back(predictor, data_root, tmp_path):
    src = tmp_path / "in"
    save(photo(data_root, 40, 40), src / "a.png")
    out = src / "predictions"
    infer_path(predictor, src, out, progress=False)
    again = infer_path(predictor, src, out, overwrite=True, progress=False)
    assert again["images"] == 1 and [r["image"] for r in again["per_image"]] == ["a.png"]
    with pytest.raises(ValueError, match="must not be the input folder"):
        infer_path(predictor, src, src, progress=False)


def test_cmd_infer_default_output_and_summary_line(checkpoint, data_root, tmp_path, monkeypatch, capsys):
    save(photo(data_root, 40, 40), tmp_path / "one.png")
    parser = add_infer_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "one.png"),
                              "--device", "cpu", "--save-probs"])
    assert args.run is cmd_infer and args.interpolation == "auto" and args.batch_size == 8
    monkeypatch.chdir(tmp_path)
    assert args.run(args) == 0
    out = tmp_path / "results" / "inference" / "tinyrun"
    assert (out / "one.png").is_file() and (out / "one_probs.npy").is_file()
    line = capsys.readouterr().out.strip()
    assert "1 of 1 images written" in line and "images/s" in line and str(Path("results/inference/tinyrun")) in line


def test_evaluate_interpolations_rows(predictor, data_root):
    rows = evaluate_interpolations(predictor, data_root, "val")
    assert [(r["input_interpolation"], r["logit_interpolation"]) for r in rows] == list(DEFAULT_COMBOS)
    assert len(rows) == 5
    for r in rows:
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["boundary_f"] <= 1.0
        assert r["median_s_per_image"] > 0 and r["images"] == 4


def test_training_scores_are_the_inference_scores_at_the_image_size(checkpoint, data_root, tmp_path):
    # One mIoU definition: what training reports equals inference with its mode (auto: bicubic at
    # 40 px) at each image's own size, on the same checkpoint.
    from rloss.engine.evaluation import evaluate

    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    [row] = evaluate_interpolations(checkpoint, data_root, "val", combos=[("bicubic", "bicubic")], device="cpu")
    assert row["miou"] == pytest.approx(metrics["final"]["miou"], abs=1e-9)
    assert row["per_class_iou"] == pytest.approx(metrics["final"]["per_class_iou"], abs=1e-9)

    # And on a model with varied predictions: evaluate() against predict(), image by image.
    from torch.utils.data import DataLoader

    from rloss.data.folder import SegmentationFolder
    from rloss.data.transforms import EvalTransform
    from rloss.metrics import ConfusionMatrix

    randomised = tmp_path / "checkpoint.pt"
    randomised.write_bytes(checkpoint.read_bytes())
    randomise_classifier(randomised, data_root)
    predictor = load_predictor(randomised, device="cpu")
    val = SegmentationFolder(data_root, "val", transform=EvalTransform(32), require_scribbles=False)
    loader = DataLoader(val, batch_size=3, collate_fn=list)
    scores, _ = evaluate(predictor.model, loader, torch.device("cpu"), predictor.num_classes, predictor.class_names)
    cm = ConfusionMatrix(predictor.num_classes)
    raw = SegmentationFolder(data_root, "val", require_scribbles=False)
    for sample in raw:
        [pred] = predictor.predict([sample.image], "bicubic")
        cm.update(torch.from_numpy(pred.labels), torch.from_numpy(sample.mask))
    expected = cm.scores(predictor.class_names)
    assert scores["miou"] == pytest.approx(expected["miou"], abs=1e-9)
    assert scores["per_class_iou"] == pytest.approx(expected["per_class_iou"], abs=1e-9)
    assert sum(1 for v in scores["per_class_iou"].values() if v) >= 2  # several classes predicted, and right
