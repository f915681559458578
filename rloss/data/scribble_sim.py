"""Scribbles simulated from full masks (``python -m rloss data scribbles --from-masks``): for data
sets that have masks but no scribbles, or to measure what scribbles cost against full masks.

The protocol is the built-in data set's (:func:`rloss.data.synthetic.scribble_instances`), applied
to the masks' regions:

- every class of a mask is one instance (255, ignore, none); its connected parts are the regions;
- every region larger than ``MIN_SCRIBBLED_AREA`` pixels, and the background's largest, gets
  strokes: smooth random walks, one or two per object region, two or three on the background;
- a stroke is ``width`` pixels wide (default: 1.2 % of the image's shorter side, at least 1) and
  every one of its pixels lies at least ``margin`` pixels inside its region (default 3 % of the
  shorter side, at least 1.5), so strokes never touch a boundary;
- together they aim to label ``LABELED_TARGET`` (2.8-4.4 %) of an image's pixels, objects at 1.6
  times that share of their area and the background at 0.8 times: about the 3 % of pixels of the
  ScribbleSup annotations the paper trained on, as this project's brief states it (their own
  statistics are not measured here: the annotations cannot be downloaded on this machine).

Each image's strokes come from the seed and the image's id alone, so a data set gives the same
scribbles whatever the order or the subset of images.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

from .folder import MASK_DIR, SCRIBBLE_DIR, check_sample_id, labeled_shares, read_class_names
from .io import IGNORE_INDEX, DataError, read_labels, save_label_png, write_text_atomic
from .synthetic import LABELED_TARGET, MIN_SCRIBBLED_AREA, scribble_instances, stroke_margin, stroke_width

SUMMARY_FILE = "scribbles.json"


def simulate_scribbles(mask: np.ndarray, rng: np.random.Generator, width: int | None = None,
                       margin: float | None = None) -> np.ndarray:
    """Scribbles ``[H, W]`` uint8 (class on stroke pixels, 255 elsewhere) for a full mask ``[H, W]``
    (class per pixel, 255 = ignore), by the module's protocol."""
    side = min(mask.shape)
    width = stroke_width(side) if width is None else width
    margin = stroke_margin(side) if margin is None else margin
    present = [int(c) for c in np.unique(mask) if c != IGNORE_INDEX]
    classes = [0] + [c for c in present if c != 0]  # instance 0 is the background, class 0, even if absent
    lookup = np.full(256, len(classes), dtype=np.int64)  # ignored pixels: an instance that gets no strokes
    lookup[classes] = np.arange(len(classes))
    return scribble_instances(rng, lookup[mask], np.array(classes), width, margin)


def image_rng(seed: int, sample_id: str) -> np.random.Generator:
    """The generator of one image's strokes: from the seed and the id alone."""
    return np.random.default_rng([seed, zlib.crc32(sample_id.encode())])


def simulate_dataset(root: str | Path, seed: int = 0, width: int | None = None, overwrite: bool = False,
                     progress: bool = True) -> dict:
    """Writes ``ROOT/pascal_2012_scribble/<id>.png`` for every ``ROOT/SegmentationClassAug/<id>.png``
    and ``ROOT/scribbles.json`` (the protocol's settings and the statistics), and returns the
    summary: images, the labeled share of all pixels (ignore excluded) and of each class's.
    Existing scribbles are refused unless ``overwrite``; nothing is written before that check."""
    from tqdm import tqdm

    root = Path(root)
    masks = sorted((root / MASK_DIR).glob("*.png"))
    if not masks:
        raise DataError(f"{root / MASK_DIR}: no full masks (<id>.png) to simulate scribbles from")
    ids = [check_sample_id(path.stem, str(path)) for path in masks]
    out = root / SCRIBBLE_DIR
    existing = [out / f"{i}.png" for i in ids if (out / f"{i}.png").exists()]
    if existing and not overwrite:
        raise DataError(f"{out}: holds scribbles for {len(existing)} of the {len(ids)} masked images "
                        f"(e.g. {existing[0].name}); --overwrite replaces them")
    names = read_class_names(root)
    labeled = np.zeros(256, dtype=np.int64)
    total = np.zeros(256, dtype=np.int64)
    out.mkdir(parents=True, exist_ok=True)
    for sample_id, path in zip(tqdm(ids, desc="scribbles", unit="img", disable=not progress, file=sys.stderr), masks):
        mask = read_labels(path)
        scribble = simulate_scribbles(mask, image_rng(seed, sample_id), width)
        save_label_png(scribble, out / f"{sample_id}.png")
        total += np.bincount(mask.ravel(), minlength=256)
        labeled += np.bincount(scribble.ravel(), minlength=256)
    summary = labeled_shares(labeled, total, names)
    settings = {"seed": seed, "width": "1.2% of the shorter side" if width is None else width,
                "labeled_target": list(LABELED_TARGET), "min_scribbled_area": MIN_SCRIBBLED_AREA}
    write_text_atomic(root / SUMMARY_FILE, json.dumps({"protocol": settings, "images": len(ids), **summary}, indent=1))
    return {"scribbles": str(out), "images": len(ids), **summary}
