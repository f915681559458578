"""PASCAL VOC 2012 + SBD (SegmentationClassAug) + ScribbleSup scribbles in the VOC layout.

``prepare_voc(ROOT)`` (``python -m rloss data voc --root ROOT``) downloads the
archives into ROOT/downloads (or only verifies the ones already there),
extracts them safely, and builds::

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClassAug/<id>.png        class per pixel, 255 = ignore
    ROOT/pascal_2012_scribble/<id>.png        class on scribble pixels, 255 = unlabeled
    ROOT/ImageSets/Segmentation/{train,val}.txt
    ROOT/classes.txt

Scribbles come either as the published PNGs or from the original ScribbleSup
XML files (one per image: the class of each scribble and the points along it),
rasterised here with strokes of a given width.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import warnings
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .folder import IMAGE_DIR, LIST_DIR, MASK_DIR, SCRIBBLE_DIR, VOC_CLASSES, read_id_list
from .io import (IGNORE_INDEX, DataError, atomic_path, open_image, output_folder, read_labels, save_label_png,
                 write_text_atomic)

__all__ = [
    "VOC_CLASSES", "Archive", "ARCHIVES", "download", "verify_and_extract", "class_index", "parse_scribble_xml",
    "rasterize_scribbles", "xml_to_scribble", "convert_scribble_xmls", "prepare_voc",
]  # fmt: skip

DOWNLOADS = "downloads"
EXTRACTED = "extracted"  # ROOT/downloads/extracted/<archive name>/


# --------------------------------------------------------------------------- archives


@dataclass(frozen=True)
class Archive:
    """One file to fetch. ``filename`` is relative to ROOT/downloads (or absolute).
    A checksum of None means none is published that we can vouch for: then
    verification only checks that the file is a readable tar/zip archive."""

    name: str
    url: str
    filename: str
    md5: str | None = None
    sha256: str | None = None
    contents: str = ""
    optional: bool = False  # a failed fetch only warns (e.g. a list with a fallback)

    @property
    def checksum(self) -> str | None:
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"md5:{self.md5}" if self.md5 else None


ARCHIVES: dict[str, Archive] = {
    "voc2012": Archive(
        name="voc2012",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        filename="VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",  # published with the data set (also used by torchvision)
        contents="VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}",
    ),
    "sbd_aug": Archive(
        # The SBD masks converted to VOC's PNG encoding, as linked by DeepLab users and the rloss authors.
        name="sbd_aug",
        url="https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
        filename="SegmentationClassAug.zip",
        contents="SegmentationClassAug/<id>.png for the 10582 train_aug and 1449 val images",
    ),
    "scribble_png": Archive(
        # ScribbleSup scribbles drawn with 3-pixel strokes, published by the rloss authors.
        name="scribble_png",
        url="http://cs.uwaterloo.ca/~m62tang/rloss/pascal_2012_scribble.zip",
        filename="pascal_2012_scribble.zip",
        contents="pascal_2012_scribble/<id>.png",
    ),
    "scribble_xml": Archive(
        # The original ScribbleSup annotations (http://www.jifengdai.org/downloads/scribble_sup/).
        name="scribble_xml",
        url="https://www.dropbox.com/s/9vh3kvtd742red8/scribble_annotation.zip?dl=1",
        filename="scribble_annotation.zip",
        contents="scribble_annotation/pascal_2012/<id>.xml",
    ),
    "train_aug": Archive(
        # The standard 10582-image SBD-augmented train list (a plain text file, not an archive).
        name="train_aug",
        url="https://raw.githubusercontent.com/meng-tang/rloss/master/pytorch/pytorch-deeplab_v3_plus/data/SegmentationAug/train.txt",
        filename="train_aug.txt",
        contents="one id per line",
        optional=True,
    ),
}


def archives_for(scribbles: str, overrides: dict[str, Archive] | None = None) -> dict[str, Archive]:
    """The archives ``prepare_voc`` needs for a scribble format, with the caller's
    entries (other mirrors, checksums or local paths) replacing the defaults."""
    if scribbles not in ("png", "xml"):
        raise DataError(f"scribbles must be 'png' or 'xml', got {scribbles!r}")
    names = ("voc2012", "sbd_aug", f"scribble_{scribbles}", "train_aug")
    merged = {**ARCHIVES, **(overrides or {})}
    return {name: merged[name] for name in names if name in merged}


# --------------------------------------------------------------------------- checksums


def parse_checksum(checksum: str) -> tuple[str, str]:
    """'md5:<hex>', 'sha256:<hex>' or a bare hex digest (told apart by its length)."""
    algo, _, digest = checksum.rpartition(":")
    digest = digest.strip().lower()
    algo = algo.lower() or {32: "md5", 64: "sha256"}.get(len(digest), "")
    if algo not in ("md5", "sha256"):
        raise DataError(f"checksum {checksum!r}: expected an md5 or sha256 digest")
    return algo, digest


def file_digest(path: str | os.PathLike, algo: str, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def checksum_error(path: Path, checksum: str) -> str | None:
    """None when ``path`` matches ``checksum``, else a message naming the file and both digests."""
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo)
    if actual == expected:
        return None
    return f"{path}: {algo} mismatch: expected {expected}, got {actual}"


def _checksum_arg(expected_md5: str | None, expected_sha256: str | None) -> str | None:
    if expected_sha256:
        return f"sha256:{expected_sha256}"
    return f"md5:{expected_md5}" if expected_md5 else None


# --------------------------------------------------------------------------- download


def _open(url: str, offset: int, timeout: float):
    """The response for ``url`` from byte ``offset`` on (a Range request when offset > 0)."""
    if not url.lower().startswith(("http://", "https://")):
        raise DataError(f"{url}: only http(s) URLs can be downloaded")
    request = urllib.request.Request(url, headers={"User-Agent": "rloss-data/1"})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _resume_offset(response, offset: int) -> int:
    """Where the body starts: ``offset`` if the server honoured the Range (206 from
    that byte), else 0 (a 200 is the whole file, so the .part is restarted)."""
    if offset == 0 or response.status != 206:
        return 0
    content_range = response.headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        start = int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return 0
    return offset if start == offset else 0


def _stream(response, part: Path, start: int, url: str, progress: bool, chunk_size: int) -> None:
    """Appends (from ``start``) the body to ``part`` with a progress bar; a short body is an error."""
    from tqdm import tqdm

    length = response.headers.get("Content-Length")
    total = start + int(length) if length is not None else None
    with open(part, "r+b" if start else "wb") as f, tqdm(
        total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not progress, file=sys.stderr,
    ) as bar:  # fmt: skip
        f.seek(start)
        f.truncate()
        while block := response.read(chunk_size):
            f.write(block)
            bar.update(len(block))
    if total is not None and part.stat().st_size != total:
        raise DataError(f"{part}: download of {url} stopped at {part.stat().st_size} of {total} bytes; run again to resume")


def download(
    url: str,
    dest: str | os.PathLike,
    expected_md5: str | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60.0,
) -> Path:
    """Downloads ``url`` to ``dest`` through ``dest.part``, resuming a .part left by an
    interrupted run (HTTP Range), then checks the checksum (if given) and renames.
    A ``dest`` that already exists and verifies is kept. A checksum mismatch removes
    the bad file and raises a DataError naming it and both digests."""
    dest = Path(dest)
    checksum = _checksum_arg(expected_md5, expected_sha256)
    if dest.exists():
        if checksum is None or checksum_error(dest, checksum) is None:
            return dest
        warnings.warn(f"{dest}: checksum mismatch, downloading it again", stacklevel=2)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        with _open(url, offset, timeout) as response:
            _stream(response, part, _resume_offset(response, offset), url, progress, chunk_size)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or offset == 0:  # 416: nothing after the .part, so it is already complete
            raise DataError(f"{dest}: download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # incl. a connection cut short
        raise DataError(f"{dest}: download of {url} failed ({exc}); run again to resume") from None
    if checksum is not None and (error := checksum_error(part, checksum)):
        part.unlink()
        raise DataError(f"{error} (the downloaded file was removed)")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------- extraction


def _safe_member_path(out_dir: Path, name: str, archive_path: Path) -> None:
    """Rejects a member that is absolute or whose path leaves ``out_dir``."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (name[1:2] == ":") or ".." in posix.parts:
        raise DataError(f"{archive_path}: unsafe member {name!r} (absolute path or '..' escaping {out_dir})")
    target = (out_dir / posix).resolve()
    if target != out_dir and out_dir not in target.parents:
        raise DataError(f"{archive_path}: unsafe member {name!r} (escapes {out_dir})")


def _check_tar_members(tar: tarfile.TarFile, out_dir: Path, archive_path: Path) -> None:
    for member in tar.getmembers():
        _safe_member_path(out_dir, member.name, archive_path)
        if member.issym() or member.islnk():
            # A link's target is resolved from its own folder (symlink) or from out_dir (hard link).
            base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
            _safe_member_path(out_dir, str(base / member.linkname), archive_path)
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"{archive_path}: unsupported member {member.name!r} (device or fifo)")


def _extract(archive_path: Path, out_dir: Path) -> None:
    """Checks every member first, so a malicious archive writes nothing."""
    if tarfile.is_tarfile(archive_path):
        with tarfile.open(archive_path) as tar:
            _check_tar_members(tar, out_dir, archive_path)
            if hasattr(tarfile, "data_filter"):  # a second line of defence where Python has it
                tar.extractall(out_dir, filter="data")
            else:
                tar.extractall(out_dir)
    elif zipfile.is_zipfile(archive_path):
        with zipfile.ZipFile(archive_path) as archive:
            for name in archive.namelist():
                _safe_member_path(out_dir, name, archive_path)
            archive.extractall(out_dir)
    else:
        raise DataError(f"{archive_path}: not a readable tar or zip archive")


def _marker(archive_path: Path, out_dir: Path) -> tuple[Path, str]:
    """The completion marker and its expected text (the archive's name and size,
    so a replaced archive is extracted again)."""
    return out_dir / f".{archive_path.name}.extracted", f"{archive_path.name} {archive_path.stat().st_size}\n"


def verify_and_extract(archive_path: str | os.PathLike, out_dir: str | os.PathLike, checksum: str | None = None) -> Path:
    """Verifies ``archive_path`` (its checksum if known, else that it is a readable
    tar/zip) and extracts it into ``out_dir``, rejecting members that would land
    outside it. A marker written after a complete extraction makes a second call a
    no-op; an interrupted extraction has no marker and is redone."""
    archive_path, out_dir = Path(archive_path), Path(out_dir).resolve()
    if not archive_path.is_file():
        raise DataError(f"{archive_path}: archive not found")
    marker, stamp = _marker(archive_path, out_dir)
    if marker.exists() and marker.read_text() == stamp:
        return out_dir
    if checksum is not None and (error := checksum_error(archive_path, checksum)):
        raise DataError(error)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        _extract(archive_path, out_dir)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{archive_path}: damaged archive ({exc})") from None
    write_text_atomic(marker, stamp)
    return out_dir


# --------------------------------------------------------------------------- ScribbleSup XML

CLASS_ALIASES = {
    "airplane": "aeroplane", "plane": "aeroplane", "aeroplane": "aeroplane",
    "motorcycle": "motorbike", "bike": "bicycle",
    "tv": "tvmonitor", "monitor": "tvmonitor", "television": "tvmonitor",
    "table": "diningtable", "plant": "pottedplant", "couch": "sofa", "bg": "background",
}  # fmt: skip


def _normalise_name(name: str) -> str:
    """Lower case without separators: 'TV/Monitor', 'dining table', 'potted_plant' -> one spelling."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_index(name: str, source: str | os.PathLike = "") -> int:
    """The VOC class index of a class name (case-insensitive, with a few aliases)."""
    key = _normalise_name(name)
    key = CLASS_ALIASES.get(key, key)
    if key not in VOC_CLASSES:
        raise DataError(f"{source}: unknown class name {name!r} (not one of the 21 VOC classes)")
    return VOC_CLASSES.index(key)


def _children(element: ET.Element, tag: str) -> list[ET.Element]:
    return [child for child in element if child.tag.lower() == tag]


def _child_text(element: ET.Element, tag: str) -> str | None:
    found = _children(element, tag)
    return found[0].text.strip() if found and found[0].text else None


def _read_size(root: ET.Element, path: Path) -> tuple[int, int] | None:
    """(width, height) from <size>, or None where the XML has none."""
    sizes = _children(root, "size")
    if not sizes:
        return None
    try:
        width, height = int(float(_child_text(sizes[0], "width"))), int(float(_child_text(sizes[0], "height")))
    except (TypeError, ValueError):
        raise DataError(f"{path}: <size> needs numeric <width> and <height>") from None
    if width <= 0 or height <= 0:
        raise DataError(f"{path}: image size {width}x{height} is empty")
    return width, height


def _read_points(polygon: ET.Element, path: Path) -> np.ndarray:
    """The scribble's points as float [N, 2] (x, y)."""
    points = []
    for point in _children(polygon, "point"):
        try:
            points.append((float(_child_text(point, "x")), float(_child_text(point, "y"))))
        except (TypeError, ValueError):
            raise DataError(f"{path}: a <point> needs numeric <X> and <Y>") from None
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def parse_scribble_xml(xml_path: str | os.PathLike) -> tuple[tuple[int, int] | None, list[tuple[int, np.ndarray]]]:
    """Reads one ScribbleSup XML: ``((width, height) or None, [(class, points [N, 2] x, y), ...])``
    in file order. Tag names are matched case-insensitively."""
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ET.ParseError as exc:
        raise DataError(f"{path}: not well-formed XML ({exc})") from None
    scribbles = []
    for polygon in _children(root, "polygon"):
        name = _child_text(polygon, "tag") or _child_text(polygon, "name")
        if name is None:
            raise DataError(f"{path}: a <polygon> has no <tag> (class name)")
        points = _read_points(polygon, path)
        if len(points):  # a scribble without points draws nothing
            scribbles.append((class_index(name, path), points))
    return _read_size(root, path), scribbles


def _draw_segment(labels: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, value: int) -> None:
    """Sets the pixels whose centre lies within ``radius`` of segment a-b (a dot if a == b)."""
    height, width = labels.shape
    x0, y0 = np.floor(np.minimum(a, b) - radius).astype(int)
    x1, y1 = np.ceil(np.maximum(a, b) + radius).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
    if x0 > x1 or y0 > y1:
        return
    ys, xs = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
    d = b - a
    length2 = float(d @ d)
    # Projection of each pixel centre onto the segment, clamped to its ends.
    t = np.zeros_like(xs) if length2 == 0 else np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1)
    dist2 = (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2
    inside = dist2 <= radius * radius + 1e-9
    labels[y0 : y1 + 1, x0 : x1 + 1][inside] = value


def rasterize_scribbles(
    scribbles: list[tuple[int, np.ndarray]], width: int, height: int, stroke_width: int = 3, origin: int = 1
) -> np.ndarray:
    """A uint8 [height, width] map: each scribble's class on its stroke pixels (consecutive
    points joined by straight strokes ``stroke_width`` wide), 255 elsewhere; later
    scribbles overwrite earlier ones. Points outside the image are clipped to its border.
    ``origin`` is the coordinate of the first pixel: 1 as in the reference MATLAB
    conversion (insertShape, 1-based), which produced the published PNGs."""
    if stroke_width < 1:
        raise DataError(f"stroke width must be >= 1, got {stroke_width}")
    labels = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
    radius = (stroke_width - 1) / 2 + 0.5
    limits = np.array([width - 1, height - 1], dtype=np.float64)
    for value, points in scribbles:
        pixels = np.clip(points - origin, 0, limits)
        ends = zip(pixels[:-1], pixels[1:]) if len(pixels) > 1 else [(pixels[0], pixels[0])]
        for a, b in ends:
            _draw_segment(labels, a, b, radius, value)
    return labels


def xml_to_scribble(
    xml_path: str | os.PathLike, width: int | None = None, height: int | None = None, stroke_width: int = 3, origin: int = 1
) -> np.ndarray:
    """One ScribbleSup XML as a scribble map uint8 [H, W] (class on strokes, 255 elsewhere).
    The size is the XML's <size>, else ``width``/``height``; both given and different is an error."""
    size, scribbles = parse_scribble_xml(xml_path)
    given = (width, height) if width is not None and height is not None else None
    if size is None and given is None:
        raise DataError(f"{xml_path}: no <size> in the XML and no width/height given")
    if size is not None and given is not None and size != given:
        raise DataError(f"{xml_path}: <size> {size[0]}x{size[1]} differs from the image's {given[0]}x{given[1]}")
    width, height = size or given
    return rasterize_scribbles(scribbles, width, height, stroke_width, origin)


def _image_size(image_dir: Path | None, sample_id: str) -> tuple[int | None, int | None]:
    """(width, height) of the image with this id, read from its header only; Nones without one."""
    if image_dir is None:
        return None, None
    for suffix in (".jpg", ".jpeg", ".png"):
        path = image_dir / f"{sample_id}{suffix}"
        if path.exists():
            with open_image(path, "image") as image:
                return image.size
    return None, None


def convert_scribble_xmls(
    xml_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    stroke_width: int = 3,
    progress: bool = True,
    skip_bad: bool = False,
    overwrite: bool = False,
    image_dir: str | os.PathLike | None = None,
    origin: int = 1,
) -> dict:
    """Converts every <id>.xml in ``xml_dir`` to ``out_dir/<id>.png``. Existing PNGs are
    kept unless ``overwrite``. With ``image_dir`` each image's size is checked against
    (or stands in for) the XML's. A bad file raises, or with ``skip_bad`` is counted
    and reported. Returns {converted, skipped, errors, bad: {file: reason}, labeled_fraction}."""
    from tqdm import tqdm

    xml_dir, out_dir = Path(xml_dir), Path(out_dir)
    image_dir = Path(image_dir) if image_dir is not None else None
    files = sorted(p for p in xml_dir.iterdir() if p.suffix.lower() == ".xml" and not p.name.startswith("._"))
    counts = {"converted": 0, "skipped": 0, "errors": 0, "bad": {}}
    labeled = total = 0
    for path in tqdm(files, desc="scribbles xml->png", unit="file", disable=not progress, file=sys.stderr):
        target = out_dir / f"{path.stem}.png"
        if target.exists() and not overwrite:
            counts["skipped"] += 1
            continue
        try:
            labels = xml_to_scribble(path, *_image_size(image_dir, path.stem), stroke_width=stroke_width, origin=origin)
        except DataError as exc:
            if not skip_bad:
                raise
            counts["errors"] += 1
            counts["bad"][str(path)] = str(exc)
            continue
        save_label_png(labels, target)
        counts["converted"] += 1
        labeled, total = labeled + int((labels != IGNORE_INDEX).sum()), total + labels.size
    counts["labeled_fraction"] = labeled / total if total else None
    return counts


# --------------------------------------------------------------------------- prepare_voc


def _fetch(root: Path, archive: Archive, allow_download: bool, progress: bool) -> Path | None:
    """The local file of ``archive``, downloaded first where allowed and missing.
    None for a missing optional file (which only warns)."""
    path = root / DOWNLOADS / archive.filename
    try:
        if path.exists():
            return path
        if not allow_download:
            raise DataError(f"{path}: not found and downloads are off (fetch it from {archive.url})")
        return download(archive.url, path, archive.md5, archive.sha256, progress=progress)
    except DataError as exc:
        if not archive.optional:
            raise
        warnings.warn(f"{archive.name}: {exc}", stacklevel=3)
        return None


def _unpack(root: Path, archive: Archive, path: Path) -> Path:
    """An archive's extracted tree; a plain text file (a list) stands for itself."""
    if archive.filename.lower().endswith(".txt"):
        if archive.checksum is not None and (error := checksum_error(path, archive.checksum)):
            raise DataError(error)
        return path
    return verify_and_extract(path, root / DOWNLOADS / EXTRACTED / archive.name, archive.checksum)


def _is_hidden(path: Path) -> bool:
    # macOS zips add __MACOSX/ and ._ files that look like data.
    return any(part == "__MACOSX" or part.startswith("._") for part in path.parts)


def _find_dir(tree: Path, name: str, label: str) -> Path:
    """The folder called ``name`` inside an extracted tree (the tree itself if so named)."""
    if tree.name == name:
        return tree
    found = sorted((p for p in tree.rglob(name) if p.is_dir() and not _is_hidden(p)), key=lambda p: len(p.parts))
    if not found:
        raise DataError(f"{tree}: no {name}/ folder in the extracted {label}")
    return found[0]


def _find_file_dir(tree: Path, suffix: str, label: str) -> Path:
    """The folder holding the most ``*suffix`` files in an extracted tree."""
    counts: dict[Path, int] = {}
    for path in tree.rglob(f"*{suffix}"):
        if not _is_hidden(path):
            counts[path.parent] = counts.get(path.parent, 0) + 1
    if not counts:
        raise DataError(f"{tree}: no {suffix} files in the extracted {label}")
    return max(counts, key=counts.get)


def _train_aug_list(trees: dict[str, Path | None]) -> Path | None:
    """The SBD-augmented train list: the fetched file, else a train_aug.txt in the SBD tree."""
    given = trees.get("train_aug")
    if given is not None and given.is_file():
        return given
    aug = trees.get("sbd_aug")
    found = sorted(aug.rglob("train_aug.txt")) if aug is not None else []
    return found[0] if found else None


def _link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``src`` (no second copy of VOC), else a copy; atomic either way."""
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or links not supported
            shutil.copyfile(src, tmp)


def _place(ids: list[str], sources: list[Path], out_dir: Path, suffix: str, desc: str, progress: bool) -> int:
    """Links each id's file from the first source folder that has it into ``out_dir``;
    files already in place (same size) are kept. Returns how many were placed now."""
    from tqdm import tqdm

    placed = 0
    for sample_id in tqdm(ids, desc=desc, unit="file", disable=not progress, file=sys.stderr):
        dest = out_dir / f"{sample_id}{suffix}"
        src = next((s / dest.name for s in sources if (s / dest.name).is_file()), None)
        if src is None or (dest.exists() and dest.stat().st_size == src.stat().st_size):
            continue
        _link_or_copy(src, dest)
        placed += 1
    return placed


def _missing(root: Path, split: str, ids: list[str]) -> dict[str, str]:
    """id -> the first required file it lacks: image (all), mask (val), scribble (train)."""
    required = [(IMAGE_DIR, ".jpg")] + ([(MASK_DIR, ".png")] if split == "val" else []) + (
        [(SCRIBBLE_DIR, ".png")] if split == "train" else []
    )  # fmt: skip
    missing = {}
    for sample_id in ids:
        for folder, suffix in required:
            path = root / folder / f"{sample_id}{suffix}"
            if not path.is_file():
                missing[sample_id] = str(path)
                break
    return missing


def _check_split(root: Path, split: str, ids: list[str], skip_bad: bool) -> tuple[list[str], int]:
    """The listed ids that have their files; a missing file raises (naming the first
    few) or, with ``skip_bad``, drops the id and is counted."""
    missing = _missing(root, split, ids)
    if missing and not skip_bad:
        first = ", ".join(list(missing.values())[:5])
        raise DataError(f"{split}: {len(missing)} of {len(ids)} listed ids lack files, first: {first}")
    return [i for i in ids if i not in missing], len(missing)


def _labeled_fraction(scribble_dir: Path, ids: list[str], sample: int = 200) -> float | None:
    """Fraction of scribble pixels over (up to) ``sample`` evenly spaced ids: cheap, indicative."""
    picked = ids[:: max(1, len(ids) // sample)][:sample]
    labeled = total = 0
    for sample_id in picked:
        try:
            labels = read_labels(scribble_dir / f"{sample_id}.png")
        except DataError:  # a statistic only: SegmentationFolder.check reports unreadable files
            continue
        labeled, total = labeled + int((labels != IGNORE_INDEX).sum()), total + labels.size
    return labeled / total if total else None


def _make_scribbles(
    root: Path, tree: Path, ids: list[str], scribbles: str, stroke_width: int, progress: bool, skip_bad: bool
) -> dict:
    """Places the published PNGs, or draws the XML scribbles (again when the stroke width changed)."""
    out_dir = root / SCRIBBLE_DIR
    if scribbles == "png":
        try:
            source = _find_dir(tree, SCRIBBLE_DIR, "scribble PNGs")
        except DataError:  # a mirror may name the folder differently
            source = _find_file_dir(tree, ".png", "scribble PNGs")
        return {"placed": _place(ids, [source], out_dir, ".png", "scribbles", progress)}
    settings, stamp = out_dir / ".xml_settings", f"stroke_width={stroke_width} origin=1\n"
    redraw = not settings.exists() or settings.read_text() != stamp
    counts = convert_scribble_xmls(
        _find_file_dir(tree, ".xml", "ScribbleSup XML"), out_dir, stroke_width, progress, skip_bad,
        overwrite=redraw, image_dir=root / IMAGE_DIR,
    )  # fmt: skip
    write_text_atomic(settings, stamp)
    return counts


def prepare_voc(
    root: str | os.PathLike,
    download: bool = True,
    scribbles: str = "png",
    stroke_width: int = 3,
    archives: dict[str, Archive] | None = None,
    progress: bool = True,
    skip_bad: bool = False,
) -> dict:
    """Builds ROOT in the VOC layout from the archives in ROOT/downloads, downloading
    the missing ones when ``download``. ``archives`` replaces registry entries by name
    (other URLs, checksums, local file names). Train = the SBD-augmented 10582-image
    list when available, else VOC's train.txt; val = VOC's val.txt. Every listed id
    must have an image, val ids a mask, train ids a scribble: a missing file raises a
    DataError (or with ``skip_bad`` the id is dropped and counted). Returns a summary."""
    root = output_folder(root)
    wanted = archives_for(scribbles, archives)
    files = {name: _fetch(root, archive, download, progress) for name, archive in wanted.items()}
    trees = {name: _unpack(root, wanted[name], path) if path is not None else None for name, path in files.items()}

    voc = _find_dir(trees["voc2012"], LIST_DIR.parts[0], "VOC 2012 archive").parent
    train_list = _train_aug_list(trees) or voc / LIST_DIR / "train.txt"
    train_ids, val_ids = read_id_list(train_list), read_id_list(voc / LIST_DIR / "val.txt")
    all_ids = list(dict.fromkeys(train_ids + val_ids))

    mask_sources = [_find_dir(trees["sbd_aug"], MASK_DIR, "SegmentationClassAug archive"), voc / "SegmentationClass"]
    _place(all_ids, [voc / IMAGE_DIR], root / IMAGE_DIR, ".jpg", "images", progress)
    _place(all_ids, mask_sources, root / MASK_DIR, ".png", "masks", progress)
    scribble_counts = _make_scribbles(root, trees[f"scribble_{scribbles}"], all_ids, scribbles, stroke_width, progress, skip_bad)

    train_ids, train_missing = _check_split(root, "train", train_ids, skip_bad)
    val_ids, val_missing = _check_split(root, "val", val_ids, skip_bad)
    if not train_ids or not val_ids:
        raise DataError(f"{root}: no usable {'train' if not train_ids else 'val'} ids left")
    write_text_atomic(root / LIST_DIR / "train.txt", "\n".join(train_ids) + "\n")
    write_text_atomic(root / LIST_DIR / "val.txt", "\n".join(val_ids) + "\n")
    write_text_atomic(root / "classes.txt", "\n".join(VOC_CLASSES) + "\n")
    return {
        "root": str(root),
        "train": len(train_ids),
        "val": len(val_ids),
        "train_list": str(train_list),
        "skipped": {"train": train_missing, "val": val_missing},
        "scribbles": {"format": scribbles, **({"stroke_width": stroke_width} if scribbles == "xml" else {}), **scribble_counts},
        "labeled_fraction": _labeled_fraction(root / SCRIBBLE_DIR, train_ids),
    }
