"""Notebook 01's steps: its parameters checked, a synthetic set made once per parameters, the scribbles
measured, lost classes counted."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rloss.data.folder import SegmentationFolder
from rloss.study.data_prep import check_prep_parameters, labeled_fractions, prepare_dataset, scribbled_classes_lost


def test_a_synthetic_set_is_made_once_per_parameters(tmp_path):
    root = tmp_path / "synthetic"
    first = prepare_dataset("synthetic", root, size=40, n_train=3, n_val=2, seed=0)
    image = root / "JPEGImages" / "train_00000.png"
    made = image.stat().st_mtime_ns
    again = prepare_dataset("synthetic", root, size=40, n_train=3, n_val=2, seed=0)
    assert again == {k: v for k, v in first.items() if k != "root"}  # the summary the folder holds
    assert image.stat().st_mtime_ns == made  # found made: not written again
    prepare_dataset("synthetic", root, size=40, n_train=3, n_val=2, seed=1)
    assert image.stat().st_mtime_ns != made  # another seed: made again
    with pytest.raises(ValueError, match="dataset must be one of"):
        prepare_dataset("imagenet", root)


def test_scribble_measures(tmp_path):
    root = tmp_path / "synthetic"
    prepare_dataset("synthetic", root, size=40, n_train=3, n_val=2, seed=0)
    train = SegmentationFolder(root, "train")
    fractions = labeled_fractions(train)
    by_hand = [(np.asarray(Image.open(root / "pascal_2012_scribble" / f"{i}.png")) != 255).mean() for i in train.ids]
    assert fractions.tolist() == pytest.approx(by_hand) and 0 < fractions.min()

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert scribbled_classes_lost(train, SegmentationFolder(copy, "train")) == 0
    # One class's strokes removed from one image (another class keeps the image usable): one lost.
    for sample_id in train.ids:
        path = copy / "pascal_2012_scribble" / f"{sample_id}.png"
        scribble = np.asarray(Image.open(path))
        classes = sorted(set(np.unique(scribble)) - {255})
        if len(classes) >= 2:
            Image.fromarray(np.where(scribble == classes[0], 255, scribble).astype(np.uint8)).save(path)
            break
    else:
        pytest.fail("no training image with two scribbled classes")
    assert scribbled_classes_lost(train, SegmentationFolder(copy, "train")) == 1


PREP_PARAMETERS = ("dataset", "data_root", "data_size", "n_train", "n_val", "low_res_size", "low_res_root",
                   "low_res_filter", "crop_size")


@pytest.fixture
def defaults(notebook_parameters):
    return notebook_parameters("01_data_prep", PREP_PARAMETERS)


def test_the_notebook_defaults_and_the_bounds_pass_and_give_the_folders_as_paths(defaults):
    assert check_prep_parameters(**defaults) == (Path(defaults["data_root"]), Path(defaults["low_res_root"]))
    for dataset in ("voc", "folder"):
        check_prep_parameters(**{**defaults, "dataset": dataset})
    check_prep_parameters(**{**defaults, "data_size": 32, "n_train": 1, "n_val": 1, "low_res_size": 0,
                             "low_res_filter": "bicubic", "crop_size": 8})
    check_prep_parameters(**{**defaults, "data_size": 1024, "low_res_filter": "bilinear"})


@pytest.mark.parametrize("changes, message", [
    ({"dataset": "imagenet"}, "dataset must be one of synthetic, voc, folder; got 'imagenet'"),
    ({"data_size": 31}, "data_size must be an integer in 32..1024; got 31"),
    ({"data_size": 1025}, "data_size must be an integer in 32..1024; got 1025"),
    ({"n_train": 0}, "n_train must be an integer >= 1; got 0"),
    ({"n_val": 2.5}, "n_val must be an integer >= 1; got 2.5"),
    ({"low_res_size": -1}, "low_res_size must be an integer >= 0; got -1"),
    ({"low_res_filter": "lanczos"}, "low_res_filter must be one of area, bicubic, bilinear; got 'lanczos'"),
    ({"crop_size": 7}, "crop_size must be an integer >= 8; got 7"),
])
def test_each_bad_parameter_is_one_line_naming_it(defaults, changes, message):
    with pytest.raises(ValueError) as info:
        check_prep_parameters(**{**defaults, **changes})
    assert str(info.value) == message
