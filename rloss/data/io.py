"""Reading and writing data-set files: atomic writes, label PNGs with a palette,
and images read with one clear error naming the file."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255


class DataError(ValueError):
    """Bad input data: the message names the file or value at fault."""


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (class i -> RGB), 256 entries, flattened; 255 is white."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    palette[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = [255, 255, 255]
    return palette


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside ``path``; renames it to ``path`` only if the
    block succeeds, so a failure or an interruption never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; results are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_label_png(labels: np.ndarray, path: str | os.PathLike) -> None:
    """A class-index map (uint8, 255 = ignore) as a palette PNG, written atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise DataError(f"{path}: a label map must be 2-D uint8, got {labels.dtype} {labels.shape}")
    image = Image.fromarray(labels, mode="P")
    image.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_rgb(image: np.ndarray, path: str | os.PathLike) -> None:
    """An RGB uint8 image, JPEG or PNG by the path's suffix, written atomically."""
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB").save(tmp, format=fmt, quality=95)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 ``[H, W, 3]``; a missing, unreadable or truncated file is one DataError."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for bad or truncated files
        raise DataError(f"{path}: unreadable image ({exc})") from None


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as class indices uint8 ``[H, W]`` (palette indices, not colours)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: a label PNG must be a palette or greyscale image of class ids, got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable label image ({exc})") from None
