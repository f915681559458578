"""Notebook 01's steps: the data set made (or found made), its scribbles measured, its low-resolution copy checked.

    data_root, low_res_root = check_prep_parameters(dataset, data_root, data_size, n_train, n_val,
                                                    low_res_size, low_res_root, low_res_filter, crop_size)
    summary = prepare_dataset("synthetic", "data/synthetic_64px", size=64, n_train=1000, n_val=100)
    labeled_fractions(SegmentationFolder(root, "train"))     # share of scribbled pixels per image
    scribbled_classes_lost(original_train, low_res_train)    # classes whose scribbles vanished
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data.downscale import IMAGE_FILTERS
from ..data.folder import SYNTHETIC_IN_PROGRESS, SegmentationFolder
from ..data.io import IGNORE_INDEX, DataError
from ..data.synthetic import MAX_SIZE, MIN_SIZE
from .parameters import check_choice, check_integer

DATASETS = ("synthetic", "voc", "folder")
# Notebook 01's parameters that are training settings, and their config keys (as the training notebooks'
# NOTEBOOK_SETTINGS): left None, each is the recipe's.
PREP_SETTINGS = {"crop_size": "data_crop_size"}
SYNTHETIC_SUMMARY = "synthetic.json"  # what generate_synthetic writes beside the data


def check_prep_parameters(dataset: str, data_root, data_size: int, n_train: int, n_val: int, low_res_size: int,
                          low_res_root, low_res_filter: str, crop_size: int | None) -> tuple[Path, Path]:
    """Notebook 01's parameters checked (one ValueError line naming the first at fault; ``crop_size`` None
    is the recipe's); returns ``data_root`` and ``low_res_root`` as paths."""
    check_choice("dataset", dataset, DATASETS)
    check_integer("data_size", data_size, MIN_SIZE, MAX_SIZE)
    check_integer("n_train", n_train, 1)
    check_integer("n_val", n_val, 1)
    check_integer("low_res_size", low_res_size, 0)  # 0: no low-resolution copy
    check_choice("low_res_filter", low_res_filter, IMAGE_FILTERS)
    if crop_size is not None:
        check_integer("crop_size", crop_size, 8)
    return Path(data_root), Path(low_res_root)


def prepare_dataset(dataset: str, data_root, size: int = 64, n_train: int = 200, n_val: int = 50,
                    seed: int = 0) -> dict:
    """``synthetic``: generated, unless the folder holds one made with these parameters (it is
    deterministic: nothing to redo); ``voc``: downloaded or verified and prepared; ``folder``: used
    as it is. Returns the summary."""
    check_choice("dataset", dataset, DATASETS)
    data_root = Path(data_root)
    if dataset == "synthetic":
        from ..data.synthetic import generate_synthetic

        wanted = {"size": size, "n_train": n_train, "n_val": n_val, "seed": seed}
        done = data_root / SYNTHETIC_SUMMARY
        previous = json.loads(done.read_text()) if done.exists() else {}
        if all(previous.get(k) == v for k, v in wanted.items()):
            return previous
        ours = done.exists() or (data_root / SYNTHETIC_IN_PROGRESS).exists()
        if not ours and data_root.is_dir() and any(data_root.iterdir()):
            raise DataError(f"{data_root}: not empty and not a synthetic set made here (no {SYNTHETIC_SUMMARY}); "
                            "remove it or choose another data_root")
        # A synthetic set made here before with other parameters (its synthetic.json says so), or one whose
        # making was interrupted, is replaced by the set of these, as it always was: data_root holds the set
        # of the notebook's parameters, made again from them at will. overwrite=True removes only what a data
        # set holds, so none of the old set's files is left beside the new one.
        return generate_synthetic(data_root, size=size, n_train=n_train, n_val=n_val, seed=seed, progress=False,
                                  overwrite=ours)
    if dataset == "voc":
        from ..data.voc import prepare_voc

        return prepare_voc(data_root)
    return {"root": str(data_root)}


def labeled_fractions(data: SegmentationFolder) -> np.ndarray:
    """The share of scribbled (labelled) pixels of each image of the split."""
    return np.array([(data.load(i).scribble != IGNORE_INDEX).mean() for i in data.ids])


def scribbled_classes_lost(original: SegmentationFolder, copy: SegmentationFolder) -> int:
    """How many (image, class) scribbles of ``original`` have no pixel left in its resized ``copy``."""
    lost = 0
    for sample_id in copy.ids:
        before = set(np.unique(original.load(sample_id).scribble)) - {IGNORE_INDEX}
        after = set(np.unique(copy.load(sample_id).scribble)) - {IGNORE_INDEX}
        lost += len(before - after)
    return lost
