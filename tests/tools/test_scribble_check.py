"""The scribble widget drawn on with real mouse events in headless Chromium (Playwright): in
JupyterLab (notebooks/draw_scribbles.ipynb, Run All Cells) and served by Voilà. The saved PNGs
are read back and compared with the pixels a round brush of the chosen width covers along the
stroke, worked out by hand. Without a Chromium these are skipped with one line (`make browser`),
and fail under CI=true."""

import numpy as np
import pytest

from rloss.data.annotation import ScribbleProject
from rloss.data.folder import LIST_DIR, SCRIBBLE_DIR
from rloss.data.io import read_labels, save_rgb
from tools.scribble_check import draw_in_browser

CLASSES = ["background", "cat", "dog"]


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        save_rgb(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), folder / f"p{i}.png")
    return folder


def spans(labels: np.ndarray, class_id: int) -> dict:
    """row -> (first, last) column labeled ``class_id``."""
    return {row: (int(cols.min()), int(cols.max())) for row in range(labels.shape[0])
            if (cols := np.flatnonzero(labels[row] == class_id)).size}


def test_a_stroke_drawn_in_jupyterlab_is_saved_with_the_chosen_class_and_width(photos, tmp_path, chromium):
    root = tmp_path / "mine"
    summary = draw_in_browser(root, [[(5.5, 20.5), (30.5, 20.5)]], class_id=2, width=5, images=photos,
                              classes=CLASSES, server="lab", chromium_path=chromium, timeout_s=150)
    labels = read_labels(root / SCRIBBLE_DIR / "p0.png")
    # Width 5 along row 20, pixel centres 5.5 .. 30.5: rows 18-22; the round caps reach 2 columns
    # out on rows 19-21 (2^2 + 1^2 <= 2.5^2 < 3^2) and 1 on rows 18 and 22 (1^2 + 2^2 <= 2.5^2 < 2^2 + 2^2).
    assert spans(labels, 2) == {18: (4, 31), 19: (3, 32), 20: (3, 32), 21: (3, 32), 22: (4, 31)}
    assert set(np.unique(labels)) == {2, 255}  # the chosen class, nothing else
    assert summary["image_id"] == "p0" and summary["error_outputs"] == 0
    assert "146 pixels labeled, saved" in summary["statuses"][-1]  # 28 * 2 + 30 * 3
    assert (root / LIST_DIR / "train.txt").read_text() == "p0\n"
    assert (root / "classes.txt").read_text().split() == CLASSES


def test_voila_serves_the_widget_and_opening_the_folder_again_resumes_at_the_next_image(photos, tmp_path, chromium):
    root = tmp_path / "mine"
    ScribbleProject(root, classes=CLASSES, images=photos).open(0).stroke([(2.5, 2.5)], class_id=1, width=1)
    first = (root / SCRIBBLE_DIR / "p0.png").read_bytes()
    summary = draw_in_browser(root, [[(10.5, 5.5), (10.5, 15.5), (10.5, 25.5)]], class_id=1, width=3,
                              images=photos, server="voila", chromium_path=chromium, timeout_s=150)
    assert summary["image_id"] == "p1"  # p0 has scribbles: the widget opens at p1
    labels = read_labels(root / SCRIBBLE_DIR / "p1.png")
    # Width 3 down column 10 from row 5 to 25: columns 9-11 (1^2 <= 1.5^2 < 2^2), each over rows
    # 4-26 (1^2 + 1^2 <= 1.5^2 < 1^2 + 2^2 at the ends).
    assert spans(labels, 1) == {row: (9, 11) for row in range(4, 27)} and set(np.unique(labels)) == {1, 255}
    assert (root / SCRIBBLE_DIR / "p0.png").read_bytes() == first
    assert (root / LIST_DIR / "train.txt").read_text() == "p0\np1\n"
