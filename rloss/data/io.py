"""Reading and writing data-set files: atomic writes, label PNGs with a palette,
and images read with one clear error naming the file: RGB (:func:`read_rgb`), or any band count
(:func:`read_image`: grey 8/16-bit PNG, multi-band TIFF and .npy) in the loss's 0..255 units by the
intensity rule (:func:`to_loss_units`), and shown as RGB by :func:`display_rgb`."""

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


# ---------------------------------------------------------------------------------- any channel count
# The intensity rule: every image reaches the DenseCRF loss in 0..255 float units (loss.sigma_rgb is
# in them). uint8 as is; uint16 times 255/65535 as float32, so no level of a 16-bit image is merged
# with another; float data as given (already in those units). Other sample types have no agreed
# range and are refused.
TIFF_SUFFIXES = (".tif", ".tiff")
ARRAY_SUFFIXES = (".npy",)
_UINT16_TO_255 = np.float32(255 / 65535)
# PIL modes by their band count once read (alpha dropped, as the RGB reading drops it).
_GREY_MODES, _COLOUR_MODES = ("1", "L", "LA"), ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")


def _bands_from_pil(path) -> np.ndarray:
    image = open_image(path, "image")
    try:
        with image:
            if image.mode in _SIXTEEN_BIT_MODES:
                return np.asarray(image).astype(np.uint16)[..., None]
            if image.mode == "F":
                return np.asarray(image, dtype=np.float32)[..., None]
            if image.mode in _GREY_MODES:
                return np.asarray(image.convert("L"))[..., None]
            if image.mode in _COLOUR_MODES:
                return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    raise DataError(f"{path}: image mode {image.mode} refused (its value range is unknown); save it as "
                    "8- or 16-bit greyscale PNG, 8-bit RGB, or as TIFF / .npy of uint8, uint16 or float")


def _bands_from_tiff(path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        raise DataError(f"{path}: reading TIFF needs the tifffile package (pip install tifffile)") from None
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            if array.ndim == 2 and len(tif.pages) > 1:  # one band per page (pages of another size: overviews)
                pages = [page.asarray() for page in tif.pages if page.shape == array.shape]
                array, axes = np.stack(pages), "IYX"
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # tifffile raises many types for a bad file
        raise DataError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from None
    if array.ndim == 3 and axes[0] in "SCQI" and axes[-1] not in "S":  # planar: bands first
        array = np.moveaxis(array, 0, -1)
    return array


def _bands_from_npy(path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable .npy array ({exc})") from None


def read_bands(path: str | os.PathLike) -> np.ndarray:
    """An image file's pixels as stored, ``[H, W, B]`` (B bands): uint8, uint16 or float32 (float64
    is cast). PNG/JPEG through PIL (greyscale 8- and 16-bit, RGB; an alpha band is dropped; PIL
    reads colour PNGs at 8 bits), TIFF through tifffile (bands last or planar), ``.npy`` arrays
    ``[H, W]`` or ``[H, W, B]``. Anything else (another sample type, non-finite floats, an empty
    image) is one DataError naming the file."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        array = _bands_from_tiff(path)
    elif suffix in ARRAY_SUFFIXES:
        array = _bands_from_npy(path)
    else:
        array = _bands_from_pil(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise DataError(f"{path}: expected an image [H, W] or [H, W, bands], got shape {array.shape}")
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.dtype not in (np.uint8, np.uint16, np.float32):
        raise DataError(f"{path}: sample type {array.dtype} refused (its value range is unknown); "
                        "use uint8, uint16 or float (in 0..255 units)")
    if array.dtype == np.float32 and not np.isfinite(array).all():
        raise DataError(f"{path}: holds non-finite values (nan or inf)")
    return np.ascontiguousarray(array)


def to_loss_units(bands: np.ndarray) -> np.ndarray:
    """The intensity rule: uint8 unchanged; uint16 x 255/65535 as float32; float32 as given."""
    if bands.dtype == np.uint16:
        return bands.astype(np.float32) * _UINT16_TO_255
    return bands


def read_image(path: str | os.PathLike, channels: int = 3) -> np.ndarray:
    """An image with ``channels`` bands, ``[H, W, channels]``, in the loss's units (:func:`to_loss_units`):
    uint8 where the file is 8-bit, else float32. With ``channels`` 3, PNG and JPEG files are read as
    :func:`read_rgb` reads them (greyscale repeated, 16-bit greyscale rounded to 8 bits): RGB data
    sets read exactly as before. A file with another band count is one DataError naming it."""
    if channels == 3 and Path(path).suffix.lower() not in TIFF_SUFFIXES + ARRAY_SUFFIXES:
        return read_rgb(path)
    bands = read_bands(path)
    if bands.shape[2] != channels:
        raise DataError(f"{path}: {bands.shape[2]} band(s), but the data set is read with {channels} (data.channels, --channels); "
                        "set data.channels to the images' band count (rloss data check reports it)")
    return to_loss_units(bands)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image in loss units ``[H, W, C]`` (or ``[H, W]``) as uint8 RGB for display: one band as
    grey, two as the first one grey, three or more as their first three. uint8 shown as is; other
    data (16-bit, float) stretched linearly from its minimum to its maximum over those bands."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    shown = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    if shown.dtype == np.uint8:
        return np.ascontiguousarray(shown)
    low, high = float(shown.min()), float(shown.max())
    scaled = (shown.astype(np.float32) - low) * (255 / (high - low) if high > low else 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """A uint8 image, RGB ``[H, W, 3]`` (:func:`save_rgb`) or greyscale ``[H, W]`` / ``[H, W, 1]``
    (an 8-bit greyscale PNG), written atomically."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return save_rgb(image, path)
    grey = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
    if grey.ndim != 2:
        raise DataError(f"{path}: save_image takes [H, W, 3] or [H, W] uint8, got {image.shape}")
    write_bytes_atomic(path, _encoded(Image.fromarray(grey, mode="L"), "PNG"))
