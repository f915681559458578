"""Notebook 01's steps: a synthetic set made once per parameters, the scribbles measured, lost classes counted."""

import shutil

import numpy as np
import pytest
from PIL import Image

from rloss.data.folder import SegmentationFolder
from rloss.study.data_prep import labeled_fractions, prepare_dataset, scribbled_classes_lost


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
