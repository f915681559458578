"""Scribbles drawn by hand, saved as you go: everything the JupyterLab scribble widget
(:mod:`rloss.study.scribble_widget`) does to files and label maps, with no widget in it.

    project = ScribbleProject("data/mine", classes=["background", "cat", "dog"], images="photos")
    image = project.open(project.resume_index())
    image.stroke([(10.5, 12.5), (30.5, 12.5)], class_id=1, width=3)   # image pixel coordinates
    image.undo()

The data set is written in the VOC layout of ``rloss data check`` (README, "Data layout"):

- ``ROOT/pascal_2012_scribble/<id>.png``: class id on scribble pixels, 255 elsewhere, written
  atomically after every stroke, erase, undo or clear, so a kernel that dies loses at most the
  stroke being drawn; an image whose last scribble pixel is erased loses its file and its line
  in the split list (``data check`` refuses images without a scribble pixel);
- ``ROOT/ImageSets/Segmentation/<split>.txt``: extended by each image's id at its first save;
- ``ROOT/classes.txt``: the class names, written when given, extended by new names at its end,
  never renamed or reordered (a renamed class would relabel every saved scribble);
- ``ROOT/JPEGImages/<id>.<suffix>``: where the images already are, or, when ``images`` names
  another folder of plain images, a byte copy of each image at its first save (the folder of
  images itself is only read).

A stroke labels every pixel whose centre lies within ``width / 2`` of the polyline through its
points (a round brush dragged along it); pixel (row r, column c) covers ``[c, c+1) x [r, r+1)``.
Opening a folder again resumes at the first image without scribbles.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .folder import IMAGE_DIR, IMAGE_SUFFIXES, LIST_DIR, SCRIBBLE_DIR, check_sample_id, read_class_names, read_id_list
from .io import IGNORE_INDEX, DataError, atomic_path, display_rgb, read_bands, read_labels, save_label_png, write_text_atomic

__all__ = ["ScribbleProject", "ImageScribbles", "stroke_mask", "write_demo_images", "MAX_CLASSES", "MAX_UNDO"]

MAX_CLASSES = IGNORE_INDEX  # class ids 0..254: 255 marks unlabeled pixels
MAX_UNDO = 100  # edits kept per image for undo


def stroke_mask(shape: tuple[int, int], points, width: float) -> np.ndarray:
    """``[H, W]`` bool: the pixels whose centres lie within ``width / 2`` of the polyline through
    ``points`` (x, y in image pixels; one point: a disc)."""
    if width <= 0:
        raise ValueError(f"brush width must be positive, got {width}")
    height, width_px = shape
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points) == 0:
        return np.zeros(shape, dtype=bool)
    radius = width / 2
    mask = np.zeros(shape, dtype=bool)
    segments = zip(points, points[1:]) if len(points) > 1 else [(points[0], points[0])]
    for a, b in segments:
        x0 = max(0, int(np.floor(min(a[0], b[0]) - radius)))
        x1 = min(width_px, int(np.ceil(max(a[0], b[0]) + radius)) + 1)
        y0 = max(0, int(np.floor(min(a[1], b[1]) - radius)))
        y1 = min(height, int(np.ceil(max(a[1], b[1]) + radius)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue  # the segment's brush lies outside the image
        cx = np.arange(x0, x1) + 0.5
        cy = (np.arange(y0, y1) + 0.5)[:, None]
        d = b - a
        length2 = float(d @ d)
        # The nearest point of the segment to each pixel centre, at parameter t in [0, 1].
        t = np.zeros((y1 - y0, x1 - x0)) if length2 == 0 else \
            np.clip(((cx - a[0]) * d[0] + (cy - a[1]) * d[1]) / length2, 0.0, 1.0)
        dx, dy = cx - (a[0] + t * d[0]), cy - (a[1] + t * d[1])
        mask[y0:y1, x0:x1] |= dx * dx + dy * dy <= radius * radius
    return mask


class ImageScribbles:
    """One image's scribbles being edited; every edit is saved at once (see the module)."""

    def __init__(self, project: ScribbleProject, index: int):
        self.project = project
        self.index = index
        self.id = project.ids[index]
        self.source = project.image_paths[index]
        self.image = display_rgb(read_bands(self.source))  # uint8 RGB for the screen
        self.path = project.root / SCRIBBLE_DIR / f"{self.id}.png"
        shape = self.image.shape[:2]
        if self.path.exists():
            self.labels = read_labels(self.path)
            if self.labels.shape != shape:
                raise DataError(f"{self.path}: {self.labels.shape[1]}x{self.labels.shape[0]} pixels, but its image "
                                f"{self.source} has {shape[1]}x{shape[0]}")
        else:
            self.labels = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
        self._history: list[np.ndarray] = []
        self._image_in_data_set = False  # copied (or found) in ROOT/JPEGImages by this image's first save

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def labeled_pixels(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def stroke(self, points, class_id: int, width: float) -> int:
        """Paints ``class_id`` along ``points``; returns the pixels it changed (0: nothing saved)."""
        self.project.check_class(class_id)
        return self._edit(stroke_mask(self.shape, points, width), class_id)

    def erase(self, points, width: float) -> int:
        """Unlabels the pixels along ``points``; returns the pixels it changed."""
        return self._edit(stroke_mask(self.shape, points, width), IGNORE_INDEX)

    def clear(self) -> int:
        """Unlabels every pixel (undoable); returns the pixels it changed."""
        return self._edit(np.ones(self.shape, dtype=bool), IGNORE_INDEX)

    def undo(self) -> bool:
        """Takes back the last edit (and saves); False when there is none."""
        if not self._history:
            return False
        self.labels = self._history.pop()
        self.save()
        return True

    def _edit(self, where: np.ndarray, value: int) -> int:
        changed = int((where & (self.labels != value)).sum())
        if changed:
            self._history.append(self.labels.copy())
            del self._history[:-MAX_UNDO]
            self.labels = self.labels.copy()
            self.labels[where] = value
            self.save()
        return changed

    def save(self) -> None:
        """The scribble file as the labels are now (removed, with its list line, once empty)."""
        if self.labeled_pixels():
            if not self._image_in_data_set:  # once, not on every stroke: it compares the files' bytes
                self.project.copy_image(self.index)
                self._image_in_data_set = True
            save_label_png(self.labels, self.path)
            self.project.list_id(self.id)
        else:
            self.path.unlink(missing_ok=True)
            self.project.unlist_id(self.id)


class ScribbleProject:
    """A folder of images to scribble and the VOC-layout data set at ``root`` that gets the
    scribbles (see the module). ``classes``: the class names (class 0 first, usually the
    background), else ``root/classes.txt``, else VOC's 21; ``images``: the folder walked, by
    default ``root/JPEGImages``; ``split``: the id list that gets each scribbled image."""

    def __init__(self, root, classes=None, images=None, split: str = "train"):
        self.root = Path(root)
        self.split = check_sample_id(split, "split")
        self.images_dir = Path(images) if images is not None else self.root / IMAGE_DIR
        self.copies_images = self.images_dir.resolve() != (self.root / IMAGE_DIR).resolve()
        self.classes = self._class_names(classes)
        self.image_paths = self._find_images()
        self.ids = [path.stem for path in self.image_paths]
        self.list_path = self.root / LIST_DIR / f"{self.split}.txt"
        # The ids with a scribble file: read once here, then kept in step by every save (list_id,
        # unlist_id), so the status line and resume look at no file per stroke.
        self._scribbled = {i for i in self.ids if (self.root / SCRIBBLE_DIR / f"{i}.png").exists()}

    def _class_names(self, given) -> list[str]:
        path = self.root / "classes.txt"
        existing = read_class_names(self.root) if path.exists() else None
        if given is None:
            return existing if existing is not None else read_class_names(self.root)
        names = [str(name).strip() for name in given]
        if not names or not all(names) or len(set(names)) != len(names):
            raise DataError(f"classes: give distinct, non-empty names (class 0 first), got {list(given)!r}")
        if len(names) > MAX_CLASSES:
            raise DataError(f"classes: at most {MAX_CLASSES} (255 marks unlabeled pixels), got {len(names)}")
        if existing is not None and names[: len(existing)] != existing:
            raise DataError(f"{path}: holds {existing!r}; the classes given must start with these names, in this "
                            "order (new names go at the end: renaming a class would relabel saved scribbles)")
        if existing != names:
            write_text_atomic(path, "\n".join(names) + "\n")
        return names

    def _find_images(self) -> list[Path]:
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: no such folder of images")
        paths = sorted(p for p in self.images_dir.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        if not paths:
            raise DataError(f"{self.images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        seen: dict[str, Path] = {}
        for path in paths:
            check_sample_id(path.stem, str(path))
            if path.stem in seen:
                raise DataError(f"{path}: id {path.stem!r} also names {seen[path.stem].name}: "
                                "one image per id (file name without suffix)")
            seen[path.stem] = path
        return paths

    def __len__(self) -> int:
        return len(self.ids)

    def check_class(self, class_id: int) -> None:
        if not 0 <= class_id < len(self.classes):
            raise DataError(f"class {class_id} is not one of the {len(self.classes)} classes (0..{len(self.classes) - 1})")

    def has_scribbles(self, index: int) -> bool:
        return self.ids[index] in self._scribbled

    def scribbled_count(self) -> int:
        return len(self._scribbled)

    def resume_index(self) -> int:
        """The first image without scribbles (the last image when every one has some)."""
        return next((i for i in range(len(self)) if not self.has_scribbles(i)), len(self) - 1)

    def open(self, index: int) -> ImageScribbles:
        if not 0 <= index < len(self):
            raise IndexError(f"image {index} of {len(self)}")
        return ImageScribbles(self, index)

    def copy_image(self, index: int) -> None:
        """The image into ROOT/JPEGImages (when walking another folder), once."""
        if not self.copies_images:
            return
        source = self.image_paths[index]
        target = self.root / IMAGE_DIR / source.name
        if target.exists():
            if target.read_bytes() != source.read_bytes():
                raise DataError(f"{target}: exists and differs from {source}; refusing to replace it")
            return
        clash = [p for p in (self.root / IMAGE_DIR).glob(f"{source.stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES]
        if clash:
            raise DataError(f"{clash[0]}: id {source.stem!r} is taken by another image; rename {source}")
        with atomic_path(target) as part:
            shutil.copyfile(source, part)

    def listed_ids(self) -> list[str]:
        return read_id_list(self.list_path, f"the split '{self.split}'") if self.list_path.exists() else []

    def list_id(self, sample_id: str) -> None:
        """``sample_id`` has scribbles now: in the split's list (added at its end once)."""
        self._scribbled.add(sample_id)
        ids = self.listed_ids()
        if sample_id not in ids:
            write_text_atomic(self.list_path, "".join(f"{i}\n" for i in ids + [sample_id]))

    def unlist_id(self, sample_id: str) -> None:
        """``sample_id`` has no scribbles any more: out of the split's list (removed once empty)."""
        self._scribbled.discard(sample_id)
        ids = self.listed_ids()
        if sample_id in ids:
            ids.remove(sample_id)
            if ids:
                write_text_atomic(self.list_path, "".join(f"{i}\n" for i in ids))
            else:
                self.list_path.unlink()


def write_demo_images(folder, count: int, size: int = 64, seed: int = 0) -> list[Path]:
    """``count`` generated images (the built-in set's, without their masks and scribbles; its
    classes are :data:`rloss.data.synthetic.CLASS_NAMES`) written to ``folder`` when it holds no
    image yet, to try the widget on; returns the paths written (none where images are there)."""
    from .io import save_rgb
    from .synthetic import make_sample

    folder = Path(folder)
    if folder.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
        return []
    paths = []
    for index in range(count):
        image, _, _ = make_sample(np.random.default_rng([seed, index]), size)
        paths.append(folder / f"demo_{index:03d}.png")
        save_rgb(image, paths[-1])
    return paths
