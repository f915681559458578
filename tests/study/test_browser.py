"""The result browser driven from Python: state, panels, per-image IoU, compare mode, widget wiring."""

import shutil

import numpy as np
import pytest
import torch

from rloss.engine.config import load_config
from rloss.data.folder import SegmentationFolder
from rloss.data.io import voc_palette
from rloss.engine.infer import load_predictor
from rloss.metrics import confusion_matrix, segmentation_scores
from rloss.engine.train import train
from rloss.study.browser import GAP, IGNORED, WRONG, ResultBrowser, error_map, image_iou, resolve_data_root

from inputs import randomise_classifier

PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
RUNS = ("a_pce", "b_full", "c_edited")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, size=40, n_train=8, n_val=4, seed=0, progress=False)
    results = tmp_path_factory.mktemp("results")
    for name, loss in zip(RUNS, ("pce", "full")):
        train(load_config(None, [
            f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "optim.epochs=1", f"loss.type={loss}", f"run.results_dir={results}", f"run.name={name}",
            "run.eval_every_epochs=1", "run.device=cpu", "run.seed=0" if loss == "pce" else "run.seed=1",
        ]))
    # One epoch on 8 images predicts background everywhere. c_edited is b_full with a random
    # classifier, so that its predictions vary over each image and differ from the other runs'.
    shutil.copytree(results / "b_full", results / "c_edited")
    randomise_classifier(results / "c_edited" / "checkpoint.pt", root)
    (results / "not_a_run").mkdir()  # no checkpoint: not listed
    return root, results


@pytest.fixture()
def browser(trained):
    _, results = trained
    return ResultBrowser(results, device="cpu")


def expected_prediction(results, run, image):
    [pred] = load_predictor(results / run / "checkpoint.pt", "cpu").predict([image])
    return pred.labels


def panel(strip, i, width):
    return strip[:, i * (width + GAP): i * (width + GAP) + width]


def test_state_and_panels(trained, browser):
    root, results = trained
    assert browser.runs == list(RUNS)
    assert (browser.run, browser.split, browser.index, browser.compare_run) == ("a_pce", "val", 0, None)
    val = SegmentationFolder(root, "val", require_scribbles=False)
    assert browser.ids == val.ids

    browser.select_image(2)
    sample = val.load(val.ids[2])
    h, w = sample.image.shape[:2]
    strip = browser.render_panel()
    assert strip.shape == (h, 5 * w + 4 * GAP, 3) and strip.dtype == np.uint8
    assert np.array_equal(panel(strip, 0, w), sample.image)
    assert np.array_equal(panel(strip, 2, w), PALETTE[sample.mask])
    labels = expected_prediction(results, "a_pce", sample.image)
    assert np.array_equal(panel(strip, 3, w), PALETTE[labels])
    errors = panel(strip, 4, w)
    wrong = labels != sample.mask  # the synthetic masks have no ignore pixels
    assert np.array_equal(np.all(errors == WRONG, axis=-1), wrong)
    scribbled = sample.scribble != 255
    assert np.array_equal(panel(strip, 1, w)[scribbled], PALETTE[sample.scribble[scribbled]])

    titles = [t for t, _ in browser.panels()]
    assert titles[:3] == ["image", "scribbles", "ground truth"] and titles[3] == "a_pce: prediction"

    browser.select_split("train")
    train_ids = SegmentationFolder(root, "train").ids
    assert (browser.split, browser.index, browser.ids) == ("train", 0, train_ids)
    first = train_ids[0]
    strip = browser.render_panel()
    assert np.array_equal(panel(strip, 0, w), SegmentationFolder(root, "train").load(first).image)
    browser.select_image(train_ids[5])  # by id
    assert browser.index == 5 and browser.sample_id == train_ids[5]


def test_next_previous_wrap_around(browser):
    n = len(browser.ids)
    assert n == 4
    browser.previous_image()
    assert browser.index == n - 1
    browser.next_image()
    assert browser.index == 0
    for _ in range(n + 1):
        browser.next_image()
    assert browser.index == 1
    with pytest.raises(IndexError):
        browser.select_image(n)
    with pytest.raises(ValueError):
        browser.select_run("nope")
    with pytest.raises(ValueError):
        browser.select_split("test")


def test_image_iou_matches_an_independent_computation(trained, browser):
    root, results = trained
    val = SegmentationFolder(root, "val")
    browser.select_run("c_edited")
    for index, sample_id in enumerate(val.ids):
        browser.select_image(index)
        sample = val.load(sample_id)
        labels = expected_prediction(results, "c_edited", sample.image)
        assert len(np.unique(labels)) > 1
        scores = segmentation_scores(confusion_matrix(torch.from_numpy(labels), torch.from_numpy(sample.mask),
                                                      val.num_classes))
        view = browser.view()
        assert view.iou["miou"] == pytest.approx(scores["miou"])
        assert f"IoU {100 * scores['miou']:.1f}%" in browser.panels(view)[4][0]


def test_image_iou_and_error_map_by_hand():
    mask = np.array([[0, 0, 1], [1, 255, 2]], dtype=np.uint8)
    labels = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    iou = image_iou(labels, mask, ["bg", "a", "b", "c"])
    # bg: 1 right / 3 in union (0,0 right; 0,1 predicted a; 1,2 predicted bg); a: 2/3; b: 0/1; c absent
    assert iou["per_class_iou"] == pytest.approx({"bg": 1 / 3, "a": 2 / 3, "b": 0.0})
    assert iou["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    image = np.full((2, 3, 3), 90, dtype=np.uint8)
    errors = error_map(image, labels, mask)
    assert np.array_equal(errors[1, 1], IGNORED)  # ignore pixel, though the prediction differs
    assert np.array_equal(errors[0, 1], WRONG) and np.array_equal(errors[1, 2], WRONG)
    assert np.array_equal(errors[0, 0], [30, 30, 30])  # right: the photo dimmed
    assert image_iou(labels, None, ["bg"])["miou"] is None


def test_compare_mode(trained, browser):
    root, results = trained
    sample = SegmentationFolder(root, "val").load(browser.sample_id)
    w = sample.image.shape[1]
    browser.select_compare_run("c_edited")
    assert browser.compare_run == "c_edited"
    strip = browser.render_panel()
    assert strip.shape[1] == 7 * w + 6 * GAP
    first = expected_prediction(results, "a_pce", sample.image)
    second = expected_prediction(results, "c_edited", sample.image)
    assert not np.array_equal(first, second)
    assert np.array_equal(panel(strip, 3, w), PALETTE[first])
    assert np.array_equal(panel(strip, 5, w), PALETTE[second])
    assert np.array_equal(np.all(panel(strip, 6, w) == WRONG, axis=-1), second != sample.mask)
    titles = [t for t, _ in browser.panels()]
    assert titles[5] == "c_edited: prediction" and titles[6].startswith("c_edited: errors")
    browser.select_run("b_full")  # the image stays
    assert browser.sample_id == sample.id
    browser.select_compare_run(None)
    assert browser.render_panel().shape[1] == 5 * w + 4 * GAP
    assert browser.predictor("a_pce") is browser.predictor("a_pce")  # loaded once per run


def test_render_figure(browser):
    fig = browser.render_figure()
    assert len(fig.axes) == 5 and fig.axes[3].get_title() == "a_pce: prediction"
    assert browser.render_png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_widget_controls_follow_and_drive_the_state(browser):
    import ipywidgets

    box = browser.widget
    assert isinstance(box, ipywidgets.VBox)
    c = browser.controls
    assert c["run"].value == "a_pce" and c["split"].value == "val" and c["image"].value == 0
    first_png = c["view"].value
    assert first_png[:8] == b"\x89PNG\r\n\x1a\n" and "a_pce" in c["info"].value

    c["image"].value = 2  # widget -> state
    assert browser.index == 2 and c["slider"].value == 2 and c["view"].value != first_png
    c["slider"].value = 3
    assert browser.index == 3 and c["image"].value == 3
    c["next"].click()
    assert browser.index == 0 and c["image"].value == 0 and c["slider"].value == 0
    c["previous"].click()
    assert browser.index == 3

    c["run"].value = "b_full"
    assert browser.run == "b_full" and "b_full" in c["info"].value
    c["compare"].value = "a_pce"
    assert browser.compare_run == "a_pce" and "a_pce" in c["info"].value
    c["compare"].value = ""
    assert browser.compare_run is None

    c["split"].value = "train"
    assert browser.split == "train" and browser.index == 0
    assert len(c["image"].options) == 8 and c["slider"].max == 7

    browser.select_image(6)  # state -> widget
    assert c["image"].value == 6 and c["slider"].value == 6
    browser.select_run("a_pce")
    assert c["run"].value == "a_pce"
    browser.select_split("val")
    assert c["split"].value == "val" and len(c["image"].options) == 4 and c["slider"].max == 3
    browser.select_compare_run("b_full")
    assert c["compare"].value == "b_full"
    assert browser.error is None


def test_data_root_resolution(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "data" / "set").mkdir(parents=True)
    results = project / "results"
    assert resolve_data_root("../data/set", results) == (project / "data" / "set").resolve()  # as from notebooks/
    assert resolve_data_root("data/set", results) == (project / "data" / "set").resolve()  # beside results
    elsewhere = tmp_path / "cwd"
    (elsewhere / "own").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert resolve_data_root("own", results) == (elsewhere / "own").resolve()
    assert resolve_data_root("whatever", results, data_root=tmp_path / "x") == tmp_path / "x"
    assert resolve_data_root(str(tmp_path / "abs"), results) == tmp_path / "abs"
    with pytest.raises(FileNotFoundError, match="missing"):
        resolve_data_root("missing", results)


def test_no_runs(tmp_path):
    empty = ResultBrowser(tmp_path / "nothing")
    assert empty.runs == [] and empty.run is None and empty.render_panel() is None
    _ = empty.widget
    assert "No run with a checkpoint" in empty.controls["info"].value
    assert empty.render_png()[:8] == b"\x89PNG\r\n\x1a\n"
