"""Segmentation data in the VOC folder layout (VOC itself, the synthetic set, or your own).

ROOT/JPEGImages/<id>.jpg|png|tif|npy      the images (any band count: rloss.data.io.read_image)
ROOT/SegmentationClassAug/<id>.png        full masks: class per pixel, 255 = ignore (optional)
ROOT/pascal_2012_scribble/<id>.png        scribbles: class on scribble pixels, 255 = unlabeled
ROOT/ImageSets/Segmentation/<split>.txt   one id per line
ROOT/classes.txt                          class names, line i = class i (optional; VOC's 21 by default)
"""

from __future__ import annotations

import errno
import hashlib
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.data import Dataset

from .io import IGNORE_INDEX, DataError, output_folder, read_bands, read_image, read_labels

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

IMAGE_DIR, MASK_DIR, SCRIBBLE_DIR = "JPEGImages", "SegmentationClassAug", "pascal_2012_scribble"
LIST_DIR = Path("ImageSets") / "Segmentation"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".npy")
# What rloss writes at the root of a data set in this layout (rloss.data.synthetic, rloss.data.downscale;
# synthetic.json: the synthetic set's summary): all that overwriting a data set removes, never anything else.
# .synthetic-in-progress: the generator's mark while it writes (a set whose making was interrupted has it).
SYNTHETIC_IN_PROGRESS = ".synthetic-in-progress"
DATASET_ENTRIES = (IMAGE_DIR, MASK_DIR, SCRIBBLE_DIR, LIST_DIR.parts[0], "classes.txt", "synthetic.json",
                   SYNTHETIC_IN_PROGRESS)


@dataclass
class Sample:
    id: str
    image: np.ndarray  # [H, W, C]: uint8, or float32 for 16-bit and float data (0..255 units: io.to_loss_units)
    scribble: np.ndarray  # [H, W] uint8, 255 = unlabeled
    mask: np.ndarray | None  # [H, W] uint8, 255 = ignore; None where the data set has no full masks


def read_class_names(root: Path, class_names: list[str] | None = None) -> list[str]:
    """Class names from the arguments, else ROOT/classes.txt, else VOC's 21.

    Line i of classes.txt names class i - 1 (blank lines at the end are ignored). An empty line
    before the last name, or a name given twice (one class's IoU would replace another's in
    metrics.json), is a DataError naming the file and the lines."""
    if class_names is not None:
        return list(class_names)
    path = root / "classes.txt"
    if path.exists():
        names = [line.strip() for line in path.read_text().splitlines()]
        while names and not names[-1]:
            names.pop()
        if not names:
            raise DataError(f"{path}: no class names")
        first_line: dict[str, int] = {}
        for number, name in enumerate(names, 1):
            if not name:
                raise DataError(f"{path}: line {number} is empty, so class {number - 1} has no name "
                                "(line i names class i - 1)")
            if name in first_line:
                raise DataError(f"{path}: class name {name!r} is given twice (lines {first_line[name]} and {number}); "
                                "class names must differ")
            first_line[name] = number
        return names
    return list(VOC_CLASSES)


def dataset_output_folder(path: str | Path, overwrite: bool = False) -> Path:
    """``path`` made ready (created where missing) for a new data set, before anything is written.

    A folder that is not empty is refused (a DataError naming it) unless ``overwrite``; with it,
    what a previous data set left there (:data:`DATASET_ENTRIES`) is removed first, so no file of
    the old set (an image the new one lacks, an old synthetic.json) survives beside the new one,
    and one line on stderr says what went. Other files, and the folder itself, are kept."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise DataError(f"{path}: the output folder is not empty (it holds {shown}); refusing to write a data set "
                        "over it: --overwrite (overwrite=True in Python) replaces the data set there")
    removed = []
    for name in DATASET_ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
            removed.append(f"{name}/")
        elif entry.is_symlink() or entry.exists():
            entry.unlink()  # a link: the link only, never what it points to
            removed.append(name)
    if removed:
        print(f"{path}: removed the previous data set's {', '.join(removed)} (overwrite)", file=sys.stderr)
    return output_folder(path)


def check_sample_id(sample_id: str, where: str) -> str:
    """``sample_id`` if it can only name a file inside the data set's folders, else a DataError:
    ids become file names under ROOT, so a path separator, '..', a drive or a control
    character could place or read files elsewhere."""
    bad = next((c for c in sample_id if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        reason = f"a control character (U+{ord(bad):04X})"
    elif "/" in sample_id or "\\" in sample_id:
        reason = "a path separator"
    elif ".." in sample_id:
        reason = "'..'"
    elif ":" in sample_id:
        reason = "':' (a drive or stream name)"
    else:
        return sample_id
    raise DataError(f"{where}: id {sample_id!r} refused: it contains {reason}; an id is a file name without suffix")


def read_id_list(path: Path, what: str = "the list") -> list[str]:
    """The first word of every non-empty line (a UTF-8 BOM is ignored); a missing or empty list,
    an id that is not a plain file name (:func:`check_sample_id`) or an id listed twice is a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        sample_id = check_sample_id(line.split()[0], f"{path}, line {number}")
        if sample_id in first_line:
            raise DataError(f"{path}, line {number}: id {sample_id!r} is listed twice (first on line {first_line[sample_id]})")
        first_line[sample_id] = number
        ids.append(sample_id)
    if not ids:
        raise DataError(f"{path}: {what} is empty")
    return ids


def split_holdout(ids: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """``(kept, held_out)``: about ``fraction`` of ``ids`` held out from training, at least one
    each way. Membership depends on the id alone (its hash), not on the list's order or length
    elsewhere, so a data set that grows keeps its held-out images held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise DataError(f"a held-out split needs at least 2 training images, got {len(ids)}")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    count = min(len(ids) - 1, max(1, math.ceil(fraction * len(ids))))
    held = set(ranked[:count])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def read_split(root: Path, split: str) -> list[str]:
    path = root / LIST_DIR / f"{split}.txt"
    if not path.exists():
        raise DataError(f"{path}: split list not found (is {root} a data set in the VOC layout?)")
    return read_id_list(path, f"the split '{split}'")


class SegmentationFolder(Dataset):
    """The images, scribbles and (where present) full masks of one split.

    ``ids`` restricts the split to those ids (a held-out share, say); ``require_masks``
    makes a missing full mask an error (evaluation needs them); ``cache_bytes`` keeps
    decoded samples in memory up to that size (see :meth:`load`).
    ``dataset[i]`` is a :class:`Sample`, or ``transform(sample, index)``'s output
    when a transform is given. Bad data (missing or unreadable files, sizes that
    differ, class ids >= K other than 255, images without a scribble pixel)
    raises a DataError naming the file; with ``skip_bad=True``, :meth:`check`
    drops such ids and counts them instead. ``channels``: the band count every image must have
    (:func:`rloss.data.io.read_image`; 3, the default, reads any PNG/JPEG as RGB, as before).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        class_names: list[str] | None = None,
        transform: Callable[[Sample, int], object] | None = None,
        require_scribbles: bool = True,
        skip_bad: bool = False,
        ids: list[str] | None = None,
        require_masks: bool = False,
        cache_bytes: int = 0,
        channels: int = 3,
    ):
        self.root = Path(root)
        self.channels = channels
        self.split = split
        self.class_names = read_class_names(self.root, class_names)
        self.num_classes = len(self.class_names)
        self.ids = read_split(self.root, split) if ids is None else list(ids)  # ids: a subset of the split
        self.require_masks = require_masks
        self.transform = transform
        self.require_scribbles = require_scribbles
        self.skip_bad = skip_bad
        self.skipped: dict[str, str] = {}  # id -> reason, filled by check()
        self.image_facts: dict = {}  # filled by check()
        self.cache_bytes = cache_bytes
        self._cache: dict[str, Sample] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, sample_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.root / IMAGE_DIR / f"{sample_id}{suffix}"
            if path.exists():
                return path
        raise DataError(f"{self.root / IMAGE_DIR / sample_id}.jpg|png: image not found (listed in {self.split}.txt; "
                        "nor .jpeg, .tif, .tiff or .npy)")

    def load(self, sample_id: str) -> Sample:
        """Reads and validates one sample. With ``cache_bytes``, decoded samples are kept (read-only) until
        they fill that many bytes: a small data set is decoded once, not every epoch (decoding is a
        third of a training step of the tiny network at 64 px)."""
        cached = self._cache.get(sample_id)
        if cached is not None:
            return cached
        sample = self._read(sample_id)
        arrays = [a for a in (sample.image, sample.scribble, sample.mask) if a is not None]
        size = sum(a.nbytes for a in arrays)
        if self._cached_bytes + size <= self.cache_bytes:
            for array in arrays:
                array.setflags(write=False)  # shared by every epoch: a transform must copy, never write
            self._cache[sample_id] = sample
            self._cached_bytes += size
        return sample

    def _read(self, sample_id: str) -> Sample:
        image = read_image(self.image_path(sample_id), self.channels)
        scribble_path = self.root / SCRIBBLE_DIR / f"{sample_id}.png"
        mask_path = self.root / MASK_DIR / f"{sample_id}.png"
        if mask_path.exists():
            mask = self._labels(mask_path, image.shape)
        elif self.require_masks:
            raise DataError(f"{mask_path}: full mask not found (evaluating on {self.split} images needs their masks)")
        else:
            mask = None
        if scribble_path.exists():
            scribble = self._labels(scribble_path, image.shape)
        elif self.require_scribbles:
            raise DataError(f"{scribble_path}: scribble not found")
        else:
            scribble = np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        if self.require_scribbles and not (scribble != IGNORE_INDEX).any():
            raise DataError(f"{scribble_path}: no scribble pixel (every pixel is {IGNORE_INDEX})")
        return Sample(sample_id, image, scribble, mask)

    def _labels(self, path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
        labels = read_labels(path)
        if labels.shape != image_shape[:2]:
            raise DataError(f"{path}: size {labels.shape[1]}x{labels.shape[0]} differs from its image's {image_shape[1]}x{image_shape[0]}")
        bad = (labels >= self.num_classes) & (labels != IGNORE_INDEX)
        if bad.any():
            raise DataError(
                f"{path}: class id {int(labels[bad][0])} is not below the {self.num_classes} classes (nor {IGNORE_INDEX} = ignore)"
            )
        return labels

    def __getitem__(self, index: int):
        sample = self.load(self.ids[index])
        return self.transform(sample, index) if self.transform is not None else sample

    def check(self, progress: bool = True) -> dict:
        """Reads every sample once. Raises on the first bad one, or with
        ``skip_bad`` drops the bad ids and reports how many. What the image files hold (band counts,
        bit depths, their intensity range as stored) is left in ``image_facts``."""
        from tqdm import tqdm

        good, facts, scribbles = [], _ImageFacts(), _ScribbleFacts()
        for sample_id in tqdm(self.ids, desc=f"check {self.split}", unit="img", disable=not progress, file=sys.stderr):
            try:
                sample = self.load(sample_id)
                facts.add(read_bands(self.image_path(sample_id)))  # the file as stored: its depth and range
                scribbles.add(sample)
                good.append(sample_id)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self.skipped[sample_id] = str(exc)
        if not good:
            raise DataError(f"{self.root / LIST_DIR / self.split}.txt: no usable sample ({len(self.skipped)} skipped)")
        self.ids = good
        if self.skipped:
            print(f"{self.split}: skipped {len(self.skipped)} bad samples, e.g. {next(iter(self.skipped.values()))}", file=sys.stderr)
        self.image_facts = facts.summary(self.channels)
        return {"split": self.split, "samples": len(good), "skipped": len(self.skipped),
                **scribbles.summary(self.class_names)}


def labeled_shares(labeled: np.ndarray, total: np.ndarray, names: list[str]) -> dict:
    """From per-class pixel counts (256 bins: scribble pixels ``labeled``, mask pixels ``total``):
    the labeled share of all pixels (ignore excluded) and of each class's area, by class name."""
    labeled, total = labeled[:IGNORE_INDEX], total[:IGNORE_INDEX]
    by_class = {(names[c] if c < len(names) else str(c)): round(float(labeled[c] / total[c]), 5)
                for c in np.flatnonzero(total)}
    return {"labeled_share": round(float(labeled.sum() / max(total.sum(), 1)), 5), "labeled_share_by_class": by_class}


class _ScribbleFacts:
    """What ``rloss data check`` reports about the scribbles: the share of pixels they label, over
    all pixels and per image, and, where every image has a full mask, of each class's area (the
    figures ``rloss data scribbles --from-masks`` reports, so hand-made and simulated scribbles
    compare directly)."""

    def __init__(self):
        self.labeled = np.zeros(256, dtype=np.int64)
        self.area = np.zeros(256, dtype=np.int64)
        self.pixels, self.per_image, self.all_masked = 0, [], True

    def add(self, sample: Sample) -> None:
        counts = np.bincount(sample.scribble.ravel(), minlength=256)
        self.labeled += counts
        self.pixels += sample.scribble.size
        self.per_image.append(float(counts[:IGNORE_INDEX].sum() / sample.scribble.size))
        if sample.mask is None:
            self.all_masked = False
        else:
            self.area += np.bincount(sample.mask.ravel(), minlength=256)

    def summary(self, names: list[str]) -> dict:
        if not self.per_image:
            return {}
        shares = np.asarray(self.per_image)
        out = {"scribbled_share": round(float(self.labeled[:IGNORE_INDEX].sum() / self.pixels), 5),
               "scribbled_share_per_image": [round(float(np.percentile(shares, q)), 5) for q in (0, 50, 100)]}
        if self.all_masked:  # the share of each class's area, as the simulator reports it
            out.update(labeled_shares(self.labeled, self.area, names))
        return out


class _ImageFacts:
    """What ``rloss data check`` reports about the images as stored: band counts, bit depths, range."""

    _DEPTHS = {"uint8": "8-bit", "uint16": "16-bit", "float32": "float"}

    def __init__(self):
        self.bands: set[int] = set()
        self.depths: set[str] = set()
        self.low, self.high = math.inf, -math.inf

    def add(self, bands: np.ndarray) -> None:
        self.bands.add(int(bands.shape[2]))
        self.depths.add(self._DEPTHS[bands.dtype.name])
        self.low, self.high = min(self.low, float(bands.min())), max(self.high, float(bands.max()))

    def summary(self, channels: int) -> dict:
        out = {"channels": channels, "bands_in_files": sorted(self.bands), "bit_depth": sorted(self.depths),
               "intensity_range": [self.low, self.high] if self.bands else None}
        if self.bands and self.bands != {channels}:  # only 3 reads other band counts (PNG/JPEG as RGB)
            found = "/".join(map(str, sorted(self.bands)))
            rounded = ", 16-bit rounded to 8 bits" if "16-bit" in self.depths else ""
            advice = f"data.channels {found} reads them as they are" if len(self.bands) == 1 else \
                "mixed band counts can only be read this way"
            out["note"] = f"files with {found} band(s) read as RGB (data.channels 3{rounded}); {advice}"
        return out
