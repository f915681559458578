"""Low-resolution versions of a data set in the VOC layout (e.g. 40 px).

Images are resized with an area, bicubic or bilinear filter so the shorter side
is ``size``. Each target pixel covers a footprint of source pixels: full masks
take the footprint's nearest or majority class; scribbles are kept wherever a
footprint holds scribble pixels (its majority scribble class wins a conflict),
and a class that would vanish from an image is put back where it is densest,
so no scribbled class is lost.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .folder import IMAGE_DIR, LIST_DIR, MASK_DIR, SCRIBBLE_DIR, SegmentationFolder, dataset_output_folder
from .io import IGNORE_INDEX, DataError, save_label_png, save_rgb, write_text_atomic

IMAGE_FILTERS = {"area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
MASK_MODES = ("nearest", "majority")


def target_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``size`` and the aspect ratio kept."""
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def footprint_counts(labels: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per target pixel, how many source pixels of each class its footprint holds
    (255 excluded): ``(classes [C], counts [height * width, C])``."""
    source_h, source_w = labels.shape
    ys = np.arange(source_h) * height // source_h
    xs = np.arange(source_w) * width // source_w
    target = (ys[:, None] * width + xs[None, :]).ravel()
    flat = labels.ravel()
    keep = flat != IGNORE_INDEX
    classes, compact = np.unique(flat[keep], return_inverse=True)
    counts = np.zeros((height * width, len(classes)), dtype=np.int64)
    np.add.at(counts, (target[keep], compact), 1)
    return classes, counts


def downscale_mask(mask: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    if mode == "nearest":
        return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    classes, counts = footprint_counts(mask, height, width)
    out = np.full(height * width, IGNORE_INDEX, dtype=np.uint8)
    if len(classes):
        labeled = counts.sum(axis=1) > 0
        out[labeled] = classes[counts[labeled].argmax(axis=1)]
    return out.reshape(height, width)


def downscale_scribble(scribble: np.ndarray, height: int, width: int) -> np.ndarray:
    classes, counts = footprint_counts(scribble, height, width)
    out = np.full(height * width, IGNORE_INDEX, dtype=np.uint8)
    if not len(classes):
        return out.reshape(height, width)
    labeled = counts.sum(axis=1) > 0
    out[labeled] = classes[counts[labeled].argmax(axis=1)]
    # A class outvoted everywhere goes back where it is densest, in a pixel
    # whose class is kept elsewhere, so restoring one class loses no other.
    for c, name in enumerate(classes):
        if (out == name).any():
            continue
        holders = np.flatnonzero(counts[:, c])
        holders = holders[np.argsort(-counts[holders, c], kind="stable")]
        spare = [t for t in holders if (out == out[t]).sum() > 1]
        out[spare[0] if spare else holders[0]] = name
    return out.reshape(height, width)


def downscale_dataset(
    src: str | Path,
    out: str | Path,
    size: int = 40,
    image_filter: str = "area",
    mask_mode: str = "majority",
    skip_bad: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Writes the low-resolution copy of every split of ``src`` to ``out``.

    Returns the counts and the labeled (scribble) fraction before and after. ``out`` must be missing
    or empty (and not ``src``); ``overwrite`` replaces a data set there (what a previous one wrote
    is removed first; other files are kept: :func:`rloss.data.folder.dataset_output_folder`).
    """
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if image_filter not in IMAGE_FILTERS:
        raise ValueError(f"image_filter must be one of {tuple(IMAGE_FILTERS)}, got {image_filter!r}")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if src.resolve() == out.resolve():
        raise ValueError(f"{out}: the output folder is the source data set {src}; choose another output folder")
    splits = sorted(p.stem for p in (src / LIST_DIR).glob("*.txt"))
    if not splits:
        raise DataError(f"{src / LIST_DIR}: no split lists (*.txt)")
    # Every split list and the class names read (and checked) before the output folder is touched.
    folders = [SegmentationFolder(src, split, require_scribbles=False, skip_bad=skip_bad) for split in splits]
    dataset_output_folder(out, overwrite)

    before, after, summary = [], [], {"size": size, "image_filter": image_filter, "mask_mode": mask_mode}
    for split, data in zip(splits, folders):
        written = []
        for sample_id in tqdm(data.ids, desc=f"downscale {split}", unit="img", disable=not progress, file=sys.stderr):
            try:
                sample = data.load(sample_id)
            except DataError as exc:
                if not skip_bad:
                    raise
                data.skipped[sample_id] = str(exc)
                continue
            h, w = sample.image.shape[:2]
            if min(h, w) < size:
                raise DataError(f"{data.image_path(sample_id)}: {w}x{h} is smaller than the target size {size}")
            th, tw = target_size(h, w, size)
            image = np.asarray(Image.fromarray(sample.image).resize((tw, th), IMAGE_FILTERS[image_filter]))
            save_rgb(image, out / IMAGE_DIR / f"{sample_id}.png")
            if sample.mask is not None:
                save_label_png(downscale_mask(sample.mask, th, tw, mask_mode), out / MASK_DIR / f"{sample_id}.png")
            if (src / SCRIBBLE_DIR / f"{sample_id}.png").exists():
                scribble = downscale_scribble(sample.scribble, th, tw)
                save_label_png(scribble, out / SCRIBBLE_DIR / f"{sample_id}.png")
                before.append(float((sample.scribble != IGNORE_INDEX).mean()))
                after.append(float((scribble != IGNORE_INDEX).mean()))
            written.append(sample_id)
        write_text_atomic(out / LIST_DIR / f"{split}.txt", "\n".join(written) + "\n")
        summary[split] = {"samples": len(written), "skipped": len(data.skipped)}
        if data.skipped:
            print(f"downscale {split}: skipped {len(data.skipped)} bad samples", file=sys.stderr)
    if (src / "classes.txt").exists():
        write_text_atomic(out / "classes.txt", (src / "classes.txt").read_text())
    summary["labeled_fraction_before"] = float(np.mean(before)) if before else 0.0
    summary["labeled_fraction_after"] = float(np.mean(after)) if after else 0.0
    return summary
