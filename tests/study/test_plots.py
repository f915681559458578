"""The notebooks' figure helpers: what each panel shows, computed here from the data's own transform."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from rloss.data.folder import SegmentationFolder  # noqa: E402
from rloss.data.transforms import TrainTransform  # noqa: E402
from rloss.study.data_prep import prepare_dataset  # noqa: E402
from rloss.study.plots import plot_training_crops  # noqa: E402


def test_training_crops_show_each_interpolation_and_leave_the_transform(tmp_path):
    prepare_dataset("synthetic", tmp_path / "data", size=40, n_train=3, n_val=1, seed=0)
    data = SegmentationFolder(tmp_path / "data", "train")
    fig = plot_training_crops(data, crop_size=48, seed=5, count=4)
    axes = np.array(fig.axes).reshape(2, 4)
    assert data.transform is None
    for row, interpolation in enumerate(("bicubic", "bilinear")):
        for col in range(4):
            index = col % 3  # four columns from three samples: the first again
            assert axes[row, col].get_title() == f"{interpolation}, sample {index}"
            data.transform = TrainTransform(48, interpolation=interpolation, seed=5)
            out = data[index]
            data.transform = None
            expected = out["image_raw"].permute(1, 2, 0).numpy() * out["roi"].numpy()[..., None] / 255
            assert np.asarray(axes[row, col].images[0].get_array()) == pytest.approx(expected)
            dots = axes[row, col].collections[0].get_offsets()
            assert len(dots) == int((out["scribble"].numpy() != 255).sum()) > 0
    assert not np.array_equal(axes[0, 0].images[0].get_array(), axes[1, 0].images[0].get_array())
