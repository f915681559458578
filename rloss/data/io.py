"""Reading and writing data-set files: atomic writes, label PNGs with a palette,
and images read with one clear error naming the file."""

from __future__ import annotations

import errno
import io
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


_COLOURS = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def colorize(labels: np.ndarray) -> np.ndarray:
    """Class ids -> their VOC palette colours (uint8 RGB); 255 (ignore) is white: every picture of
    labels (overlays, the result browser, the notebooks' figures) takes its colours from here."""
    return _COLOURS[np.asarray(labels, dtype=np.uint8)]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yields a temporary path beside ``path``; renames it to ``path`` only if the
    block succeeds, so a failure or an interruption never leaves a half-written file.

    An OSError of writing it (a full disk: errno ENOSPC) names ``path``, the file asked for,
    not the temporary name nor none at all: ``<path>: No space left on device``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; results are ordinary files
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is not None and str(exc.filename) != tmp:
            raise  # about another file (a source being copied, say), which it names
        reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
        raise OSError(exc.errno, reason, str(path)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``data`` written to ``path`` atomically (:func:`atomic_path`) through Python's own file
    writes, which report a full disk as ENOSPC (numpy's and PIL's C writers to a file say only
    "24576 requested and 24512 written" or "broken data stream")."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def output_folder(path: str | os.PathLike) -> Path:
    """``path`` made a folder (with its parents) before any work starts, so a file in the way
    or a missing permission is an OSError naming it up front, not after a progress bar."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    write_bytes_atomic(path, _encoded(image, "PNG"))


def save_rgb(image: np.ndarray, path: str | os.PathLike) -> None:
    """An RGB uint8 image, JPEG or PNG by the path's suffix, written atomically."""
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    write_bytes_atomic(path, _encoded(Image.fromarray(np.asarray(image, dtype=np.uint8), mode="RGB"), fmt, quality=95))


# Modes PIL converts to RGB without losing what the pixels mean (an alpha channel is dropped).
_RGB_MODES = ("1", "L", "P", "RGB", "RGBA", "RGBX", "LA", "PA", "CMYK", "YCbCr")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit greyscale (PNG, TIFF)


def open_image(path: str | os.PathLike, what: str):
    """``Image.open`` with a missing file, a bad file and a decompression bomb as one DataError."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError as exc:  # a tiny file whose header claims a huge image
        raise DataError(f"{path}: refused, {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL raises these for bad or truncated files
        raise DataError(f"{path}: unreadable {what} ({exc})") from None


def _as_rgb(image: Image.Image, path) -> np.ndarray:
    if image.mode in _RGB_MODES:
        return np.asarray(image.convert("RGB"))
    if image.mode in _SIXTEEN_BIT_MODES:
        # PIL's own conversion clips 16-bit values at 255 (a white image): scale 0..65535 to 0..255.
        grey = np.asarray(image).astype(np.uint32)
        grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    raise DataError(f"{path}: image mode {image.mode} refused (its value range is unknown); "
                    "save it as 8-bit RGB or greyscale, or as 16-bit greyscale")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as RGB uint8 ``[H, W, 3]``; a missing, unreadable or truncated file,
    a decompression bomb or a pixel mode without a faithful 8-bit reading is one DataError."""
    image = open_image(path, "image")
    try:
        with image:
            return _as_rgb(image, path)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # decoding happens here, after the header
        raise DataError(f"{path}: unreadable image ({exc})") from None


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as class indices uint8 ``[H, W]`` (palette indices, not colours)."""
    image = open_image(path, "label image")
    try:
        with image:
            if image.mode not in ("P", "L"):
                raise DataError(f"{path}: a label PNG must be a palette or greyscale image of class ids, got mode {image.mode}")
            return np.asarray(image, dtype=np.uint8).copy()
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable label image ({exc})") from None
