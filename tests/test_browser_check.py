"""The result browser in a real browser: notebook 05 served by Voilà, driven in headless Chromium.

Needs Debian's chromium (/usr/bin/chromium); without it the check fails with its install hint
(no skip)."""

import io

import numpy as np
import pytest
from PIL import Image

from rloss.browser_check import BrowserCheckError, check_result_browser
from rloss.cli import main
from rloss.config import load_config
from rloss.data.folder import SegmentationFolder
from rloss.data.io import voc_palette
from rloss.infer import load_predictor
from rloss.train import train
from rloss.widgets import WRONG, ResultBrowser

from inputs import randomise_classifier

PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
FIRST, SECOND = "a_pce", "b_full"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs (one epoch on 8 images of 40 px); the second's classifier made random, with
    biases that level three classes, so that its prediction has several colours."""
    from rloss.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("data")
    generate_synthetic(root, size=40, n_train=8, n_val=4, seed=0, progress=False)
    results = tmp_path_factory.mktemp("project") / "results"
    for name, loss, seed in ((FIRST, "pce", 0), (SECOND, "full", 1)):
        train(load_config(None, [
            f"data.root={root}", "data.crop_size=32", "data.batch_size=4", "model.name=deeplabv3plus_tiny",
            "optim.epochs=1", f"loss.type={loss}", f"run.results_dir={results}", f"run.name={name}",
            "run.eval_every_epochs=1", "run.device=cpu", f"run.seed={seed}",
        ]))
    randomise_classifier(results / SECOND / "checkpoint.pt", root)
    return root, results


def test_browser_changes_selection_and_screenshot_shows_the_overlay(trained, tmp_path):
    root, results = trained
    shot = tmp_path / "shots" / "browser.png"
    summary = check_result_browser(results, shot, timeout_s=120)

    # The selection changed in the page: next image, then the compare run.
    assert summary["runs"] == [FIRST, SECOND] and summary["compare_run"] == SECOND
    assert FIRST in summary["initial_info"] and " 1/4 " in summary["initial_info"]
    assert summary["image_changed_after_next"] and " 2/4 " in summary["after_next_info"]
    assert summary["image_changed_after_compare"] and SECOND in summary["final_info"]
    assert " 2/4 " in summary["final_info"] and "error" not in summary["final_info"]
    assert not list(results.glob("miou_*")), "the check must not rewrite the study's table and plots"

    # The screenshot: a PNG written under its name only (atomically), the page's width.
    assert summary["screenshot"] == str(shot) and list(shot.parent.iterdir()) == [shot]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == summary["screenshot_bytes"] > 20_000
    page = np.asarray(Image.open(shot).convert("RGB"))
    assert list(page.shape[1::-1]) == summary["screenshot_size"] and page.shape[1] == 1920

    # The view in the screenshot is what the browser draws for this state here (the page shows it
    # stretched to its width, so compared after resizing).
    box = summary["view_box"]
    assert box["natural_width"] > 1500  # 7 panels: compare mode
    x, y, w, h = (round(box[k]) for k in ("x", "y", "width", "height"))
    assert 0 <= x and x + w <= page.shape[1] and 1000 < y and y + h <= page.shape[0]  # the whole page, browser last
    view = page[y: y + h, x: x + w].astype(int)
    browser = ResultBrowser(results, device="cpu")
    browser.select_image(1)
    browser.select_compare_run(SECOND)
    expected = Image.open(io.BytesIO(browser.render_png())).convert("RGB")
    assert expected.size == (box["natural_width"], box["natural_height"])
    expected = np.asarray(expected.resize((w, h), Image.BILINEAR)).astype(int)
    assert np.abs(view - expected).mean() < 4.0

    # Independently of the widget code: the second run's prediction on image 2, in VOC colours,
    # and its wrong pixels in red, fill a share of the view like theirs of the image.
    sample = SegmentationFolder(root, "val").load(SegmentationFolder(root, "val").ids[1])
    [pred] = load_predictor(results / SECOND / "checkpoint.pt", "cpu").predict([sample.image])
    classes, counts = np.unique(pred.labels, return_counts=True)
    assert len(classes) >= 2
    panel_pixels = (0.6 * h) ** 2  # a panel: at least 60% of the view's height, squared
    for cls, count in zip(classes, counts):
        share = count / pred.labels.size
        if share >= 0.1:
            seen = np.all(view == PALETTE[cls], axis=-1).sum()
            assert seen >= 0.5 * share * panel_pixels, (cls, share, seen)
    wrong = (pred.labels != sample.mask).mean()
    assert wrong > 0.05 and np.all(view == WRONG, axis=-1).sum() >= 0.5 * wrong * panel_pixels


def test_missing_chromium_is_one_clear_error(trained, tmp_path):
    _, results = trained
    with pytest.raises(BrowserCheckError, match="apt-get install chromium"):
        check_result_browser(results, tmp_path / "x.png", chromium_path=tmp_path / "no-chromium")
    assert not (tmp_path / "x.png").exists()


def test_no_runs_is_one_clear_error_on_the_command_line(tmp_path, capsys):
    (tmp_path / "results" / "not_a_run").mkdir(parents=True)  # no checkpoint
    assert main(["browser-check", "--results", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("rloss browser-check: no run with a checkpoint under")

