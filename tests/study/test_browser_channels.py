"""The result browser on a greyscale run (data.channels 1): the image shown grey, the panels RGB."""

import numpy as np

from inputs import tiny_pce_config
from rloss.data.folder import IMAGE_DIR
from rloss.data.io import read_bands
from rloss.data.synthetic import generate_synthetic
from rloss.engine.train import train
from rloss.study.browser import ResultBrowser, _image_title


def test_browser_shows_a_grey_run_in_grey(tmp_path):
    root = generate_synthetic(tmp_path / "grey", size=40, n_train=8, n_val=4, progress=False, channels=1)["root"]
    train(tiny_pce_config(root, tmp_path / "results", "grey", "data.channels=1"))
    browser = ResultBrowser(tmp_path / "results", device="cpu")
    assert browser.error is None
    panels = dict(browser.panels())
    grey = read_bands(f"{root}/{IMAGE_DIR}/{browser.sample_id}.png")
    np.testing.assert_array_equal(panels["image (grey)"], np.repeat(grey, 3, axis=2))
    assert all(p.shape == (40, 40, 3) and p.dtype == np.uint8 for p in panels.values())


def test_image_titles_say_what_is_shown():
    assert _image_title(np.zeros((2, 2, 3), np.uint8)) == "image"
    assert _image_title(np.zeros((2, 2, 1), np.float32)) == "image (grey), stretched min-max"
    assert _image_title(np.zeros((2, 2, 13), np.uint8)) == "image (bands 1-3 of 13)"
