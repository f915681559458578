"""VOC + ScribbleSup preparation on small archives, XML files and a loopback HTTP server."""

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rloss.data.io import DataError, read_labels, save_label_png
from rloss.data.voc import (
    ARCHIVES,
    VOC_CLASSES,
    Archive,
    class_index,
    convert_scribble_xmls,
    download,
    prepare_voc,
    verify_and_extract,
    xml_to_scribble,
)

# --------------------------------------------------------------------------- XML scribbles


def scribble_xml(path: Path, scribbles, size=(10, 6), case=str.lower) -> Path:
    """A ScribbleSup-style XML; ``scribbles`` is [(class name, [(x, y), ...])]; ``case`` styles the tags."""
    t = case
    parts = [f"<{t('annotation')}><{t('filename')}>{path.stem}.jpg</{t('filename')}>"]
    if size is not None:
        parts.append(f"<{t('size')}><{t('width')}>{size[0]}</{t('width')}><{t('height')}>{size[1]}</{t('height')}></{t('size')}>")
    for name, points in scribbles:
        pts = "".join(f"<{t('point')}><X>{x}</X><Y>{y}</Y></{t('point')}>" for x, y in points)
        parts.append(f"<{t('polygon')}><{t('tag')}>{name}</{t('tag')}>{pts}</{t('polygon')}>")
    parts.append(f"</{t('annotation')}>")
    path.write_text("\n".join(parts))
    return path


def expected_map(pixels, value, shape=(6, 10)) -> np.ndarray:
    out = np.full(shape, 255, dtype=np.uint8)
    for y, x in pixels:
        out[y, x] = value
    return out


def test_horizontal_two_point_scribble_width_3(tmp_path):
    # 1-based points (3,3)-(8,3) are pixels (x 2..7, row 2). Width 3 = radius 1.5 around the
    # segment: rows 1..3, and the caps reach one column further (x = 1 and 8; corners at
    # distance sqrt(2) < 1.5 are in, x = 0 and 9 at distance 2 are out).
    path = scribble_xml(tmp_path / "a.xml", [("Aeroplane", [(3, 3), (8, 3)])], case=str.upper)
    labels = xml_to_scribble(path, stroke_width=3)
    expected = expected_map([(y, x) for y in (1, 2, 3) for x in range(1, 9)], 1)
    assert labels.dtype == np.uint8 and labels.shape == (6, 10)
    np.testing.assert_array_equal(labels, expected)


def test_zero_based_origin_and_width_5_caps(tmp_path):
    # Points (2,2)-(6,2) as 0-based pixels, width 5 = radius 2.5: rows 0..4 along x 2..6;
    # beyond each end, dx = 1 reaches |dy| <= 2 (1 + 4 <= 6.25), dx = 2 only |dy| <= 1 (4 + 1).
    path = scribble_xml(tmp_path / "a.xml", [("cat", [(2, 2), (6, 2)])])
    labels = xml_to_scribble(path, stroke_width=5, origin=0)
    pixels = [(y, x) for y in range(0, 5) for x in range(1, 8)] + [(y, x) for y in (1, 2, 3) for x in (0, 8)]
    np.testing.assert_array_equal(labels, expected_map(pixels, 8))


def test_single_point_scribble_is_a_dot(tmp_path):
    path = scribble_xml(tmp_path / "a.xml", [("dog", [(5, 4)])])
    dot3 = xml_to_scribble(path, stroke_width=3)  # 1-based (5,4) = pixel x 4, row 3: a 3x3 square
    np.testing.assert_array_equal(dot3, expected_map([(y, x) for y in (2, 3, 4) for x in (3, 4, 5)], 12))
    dot1 = xml_to_scribble(path, stroke_width=1)
    np.testing.assert_array_equal(dot1, expected_map([(3, 4)], 12))


def test_later_scribble_overwrites_and_points_are_clipped(tmp_path):
    # A vertical background scribble at x = 4, then a horizontal person scribble over row 2
    # starting far outside the image (clipped to x = 0).
    path = scribble_xml(tmp_path / "a.xml", [("background", [(4, 0), (4, 5)]), ("person", [(-20, 2), (9, 2)])])
    labels = xml_to_scribble(path, stroke_width=1, origin=0)
    expected = expected_map([(y, 4) for y in range(6)], 0)
    expected[2, 0:10] = 15
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize(
    "name, index",
    [("tv/monitor", 20), ("TVMonitor", 20), ("motorcycle", 14), ("airplane", 1), ("Dining Table", 11),
     ("potted_plant", 16), ("BACKGROUND", 0), ("sheep", 17)],
)  # fmt: skip
def test_class_names_and_aliases(name, index):
    assert class_index(name) == index


def test_alias_in_xml_and_unknown_class_names_file_and_name(tmp_path):
    good = scribble_xml(tmp_path / "good.xml", [("tv/monitor", [(1, 1)])])
    assert xml_to_scribble(good, stroke_width=1)[0, 0] == VOC_CLASSES.index("tvmonitor")
    bad = scribble_xml(tmp_path / "bad.xml", [("dragon", [(1, 1)])])
    with pytest.raises(DataError, match=r"bad\.xml.*'dragon'"):
        xml_to_scribble(bad)


def test_missing_size_needs_width_and_height(tmp_path):
    path = scribble_xml(tmp_path / "nosize.xml", [("cow", [(1, 1), (3, 1)])], size=None)
    with pytest.raises(DataError, match=r"nosize\.xml: no <size>"):
        xml_to_scribble(path)
    labels = xml_to_scribble(path, width=4, height=2, stroke_width=1)
    np.testing.assert_array_equal(labels, [[10, 10, 10, 255], [255, 255, 255, 255]])
    sized = scribble_xml(tmp_path / "sized.xml", [("cow", [(1, 1)])])
    with pytest.raises(DataError, match=r"sized\.xml: <size> 10x6 differs"):
        xml_to_scribble(sized, width=4, height=2)


def test_malformed_xml_names_the_file(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<annotation><polygon>")
    with pytest.raises(DataError, match=r"broken\.xml: not well-formed"):
        xml_to_scribble(path, width=3, height=3)


def test_convert_folder_counts_skips_and_reports_bad_files(tmp_path):
    xml_dir, out = tmp_path / "xml", tmp_path / "png"
    xml_dir.mkdir()
    scribble_xml(xml_dir / "a.xml", [("bird", [(2, 2), (2, 5)])])
    scribble_xml(xml_dir / "b.xml", [("boat", [(1, 1), (10, 6)])])
    scribble_xml(xml_dir / "c.xml", [("unicorn", [(1, 1)])])
    with pytest.raises(DataError, match=r"c\.xml.*'unicorn'"):
        convert_scribble_xmls(xml_dir, out, progress=False)
    counts = convert_scribble_xmls(xml_dir, out, progress=True, skip_bad=True)
    assert (counts["converted"], counts["skipped"], counts["errors"]) == (0, 2, 1)  # a, b were written before c failed
    assert list(counts["bad"]) == [str(xml_dir / "c.xml")] and not (out / "c.png").exists()
    for stem in ("a", "b"):
        np.testing.assert_array_equal(read_labels(out / f"{stem}.png"), xml_to_scribble(xml_dir / f"{stem}.xml"))
    again = convert_scribble_xmls(xml_dir, out, progress=False, skip_bad=True, overwrite=True)
    assert (again["converted"], again["skipped"], again["errors"]) == (2, 0, 1)
    assert again["labeled_fraction"] == pytest.approx(np.mean([(read_labels(out / f"{s}.png") != 255).mean() for s in "ab"]))


# --------------------------------------------------------------------------- download

PAYLOAD = bytes(range(256)) * 400  # 102400 bytes


class _Handler(BaseHTTPRequestHandler):
    honour_range = True
    cut_after = None
    log: list = []

    def do_GET(self):
        data = PAYLOAD
        start = 0
        header = self.headers.get("Range")
        if header and self.honour_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
        body = data[start:]
        if self.cut_after is not None:  # promise the whole body, then drop the connection
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: self.cut_after])
            type(self).cut_after = None
            self.close_connection = True
            return
        type(self).log.append((self.path, header, len(body)))  # before replying, so the client sees it
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    """A loopback HTTP server serving PAYLOAD (Range honoured unless told otherwise)."""
    handler = type("Handler", (_Handler,), {"log": [], "honour_range": True, "cut_after": None})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_with_progress_and_checksum(server, tmp_path, capsys):
    handler, url = server
    dest = download(url, tmp_path / "d" / "file.bin", expected_md5=MD5, progress=True, chunk_size=4096)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "d" / "file.bin.part").exists()
    assert handler.log == [("/file.bin", None, len(PAYLOAD))]
    assert "file.bin" in capsys.readouterr().err  # the tqdm bar
    # Already there and verified: no second request.
    download(url, dest, expected_sha256=SHA256, progress=False)
    assert len(handler.log) == 1


def test_download_resumes_from_part_file(server, tmp_path):
    handler, url = server
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:30000])
    download(url, dest, expected_md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert handler.log == [("/file.bin", "bytes=30000-", len(PAYLOAD) - 30000)]  # only the rest was sent


def test_download_cut_short_keeps_the_part_and_resumes(server, tmp_path):
    handler, url = server
    handler.cut_after = 40000
    dest = tmp_path / "file.bin"
    with pytest.raises(DataError, match=r"file\.bin.*run again to resume"):
        download(url, dest, expected_md5=MD5, progress=False)
    assert (tmp_path / "file.bin.part").read_bytes() == PAYLOAD[:40000] and not dest.exists()
    download(url, dest, expected_md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD and handler.log[-1] == ("/file.bin", "bytes=40000-", len(PAYLOAD) - 40000)


def test_download_restarts_when_server_ignores_range(server, tmp_path):
    handler, url = server
    handler.honour_range = False
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    download(url, dest, expected_md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert handler.log == [("/file.bin", "bytes=5000-", len(PAYLOAD))]


def test_download_checksum_mismatch_removes_file_and_names_it(server, tmp_path):
    _, url = server
    dest = tmp_path / "file.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download(url, dest, expected_md5=wrong, progress=False)
    message = str(info.value)
    assert "file.bin" in message and wrong in message and MD5 in message
    assert not dest.exists() and not (tmp_path / "file.bin.part").exists()


def test_download_http_error_is_a_data_error(server, tmp_path):
    _, url = server
    with pytest.raises(DataError, match="only http"):
        download("ftp://127.0.0.1/x", tmp_path / "x", progress=False)
    with pytest.raises(DataError, match=r"missing\.bin: download of .* failed"):
        download("http://127.0.0.1:1/nothing", tmp_path / "missing.bin", progress=False, timeout=5)


# --------------------------------------------------------------------------- extraction


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_and_extract_tar_with_checksum_is_idempotent(tmp_path):
    archive = make_tar(tmp_path / "a.tar", {"top/x.txt": b"hello", "top/sub/y.bin": b"\x00\x01"})
    out = tmp_path / "out"
    verify_and_extract(archive, out, checksum=f"md5:{md5_of(archive)}")
    assert (out / "top" / "x.txt").read_bytes() == b"hello" and (out / "top" / "sub" / "y.bin").read_bytes() == b"\x00\x01"
    (out / "top" / "x.txt").write_bytes(b"changed")
    verify_and_extract(archive, out, checksum=md5_of(archive))  # marker present: nothing redone
    assert (out / "top" / "x.txt").read_bytes() == b"changed"
    for marker in out.glob(".*.extracted"):  # as if the first extraction had been interrupted
        marker.unlink()
    verify_and_extract(archive, out, checksum=hashlib.sha256(archive.read_bytes()).hexdigest())
    assert (out / "top" / "x.txt").read_bytes() == b"hello"


def test_verify_and_extract_rejects_bad_checksum_and_non_archives(tmp_path):
    archive = make_tar(tmp_path / "a.tar", {"x.txt": b"hello"})
    with pytest.raises(DataError, match=r"a\.tar: md5 mismatch: expected 0{32}, got [0-9a-f]{32}"):
        verify_and_extract(archive, tmp_path / "out", checksum="0" * 32)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match=r"junk\.zip: not a readable tar or zip"):
        verify_and_extract(junk, tmp_path / "out2")


@pytest.mark.parametrize("maker", [make_tar, make_zip])
@pytest.mark.parametrize("member", ["../evil", "ok/../../evil", "/abs_evil"])
def test_verify_and_extract_rejects_escaping_members(tmp_path, maker, member):
    archive = maker(tmp_path / ("bad.tar" if maker is make_tar else "bad.zip"), {"fine.txt": b"ok", member: b"pwned"})
    out = tmp_path / "sub" / "out"
    with pytest.raises(DataError, match="unsafe member '" + member.replace(".", r"\.") + "'"):
        verify_and_extract(archive, out)
    assert not (tmp_path / "sub" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not (out / "fine.txt").exists()  # checked before anything is written


def test_verify_and_extract_zip(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"d/a.txt": b"1", "d/b.txt": b"2"})
    out = verify_and_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (out / "d").iterdir()) == ["a.txt", "b.txt"]


# --------------------------------------------------------------------------- prepare_voc

TRAIN_VOC, TRAIN_AUG, VAL = ["a1", "a2"], ["a1", "a2", "a3"], ["v1", "v2"]
H, W = 8, 12


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _label_png(labels: np.ndarray, tmp: Path) -> bytes:
    save_label_png(labels, tmp)
    return tmp.read_bytes()


def mask_of(i: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:6, 3:9] = i % 20 + 1
    mask[1, :] = 255
    return mask


def scribble_of(i: int) -> np.ndarray:
    scribble = np.full((H, W), 255, dtype=np.uint8)
    scribble[4, 4:8] = i % 20 + 1
    scribble[7, 0:3] = 0
    return scribble


def fake_voc_downloads(root: Path, scribble_ids=TRAIN_AUG, xml=False, train_aug=True) -> dict[str, Archive]:
    """Small stand-ins for the real archives in ROOT/downloads, and the registry entries that describe them."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True)
    tmp = root.parent / f"{root.name}_png.png"
    ids = list(dict.fromkeys(TRAIN_AUG + VAL + ["unlisted"]))
    voc = {f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg": _jpeg(n) for n, i in enumerate(ids)}
    voc |= {f"VOCdevkit/VOC2012/SegmentationClass/{i}.png": _label_png(mask_of(n), tmp) for n, i in enumerate(ids) if i != "a3"}
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = ("\n".join(TRAIN_VOC) + "\n").encode()
    voc["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = ("\n".join(VAL) + "\n").encode()
    voc_tar = make_tar(downloads / "voc.tar", voc)
    aug = {f"SegmentationClassAug/{i}.png": _label_png(mask_of(n), tmp) for n, i in enumerate(ids)}
    aug["__MACOSX/SegmentationClassAug/._a1.png"] = b"resource fork junk"
    make_zip(downloads / "aug.zip", aug)
    archives = {
        "voc2012": Archive("voc2012", "http://127.0.0.1:9/unused", "voc.tar", md5=md5_of(voc_tar)),
        "sbd_aug": Archive("sbd_aug", "http://127.0.0.1:9/unused", "aug.zip"),
        "train_aug": Archive("train_aug", "http://127.0.0.1:9/unused", "train_aug.txt", optional=True),
    }
    if train_aug:
        (downloads / "train_aug.txt").write_text("\n".join(TRAIN_AUG) + "\n")
    if xml:
        # 1-based points, drawn 1 px wide, that give scribble_of's strokes: background on
        # pixel row 7, x 0..2, then the object class on pixel row 4, x 4..7.
        files = {}
        for n, i in enumerate(ids):
            if i in scribble_ids:
                strokes = [("background", [(1, 8), (3, 8)]), (VOC_CLASSES[n % 20 + 1], [(5, 5), (8, 5)])]
                xml_path = scribble_xml(root.parent / f"{i}.xml", strokes, size=(W, H))
                files[f"scribble_annotation/pascal_2012/{i}.xml"] = xml_path.read_bytes()
        make_zip(downloads / "scribble_xml.zip", files)
        archives["scribble_xml"] = Archive("scribble_xml", "http://127.0.0.1:9/unused", "scribble_xml.zip")
    else:
        files = {f"pascal_2012_scribble/{i}.png": _label_png(scribble_of(n), tmp) for n, i in enumerate(ids) if i in scribble_ids}
        make_zip(downloads / "scribbles.zip", files)
        archives["scribble_png"] = Archive("scribble_png", "http://127.0.0.1:9/unused", "scribbles.zip")
    return archives


def read_list(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def test_prepare_voc_builds_the_layout_from_local_archives(tmp_path):
    root = tmp_path / "voc"
    archives = fake_voc_downloads(root)
    summary = prepare_voc(root, download=False, archives=archives, progress=False)
    assert read_list(root, "train") == TRAIN_AUG and read_list(root, "val") == VAL
    assert (root / "classes.txt").read_text().splitlines() == list(VOC_CLASSES)
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"
    ids = list(dict.fromkeys(TRAIN_AUG + VAL + ["unlisted"]))
    for n, i in enumerate(ids[:-1]):
        with Image.open(root / "JPEGImages" / f"{i}.jpg") as image:
            assert image.format == "JPEG" and image.size == (W, H)
        np.testing.assert_array_equal(read_labels(root / "SegmentationClassAug" / f"{i}.png"), mask_of(n))
    for n, i in enumerate(TRAIN_AUG):
        np.testing.assert_array_equal(read_labels(root / "pascal_2012_scribble" / f"{i}.png"), scribble_of(n))
    assert not (root / "JPEGImages" / "unlisted.jpg").exists()  # only listed images are placed
    assert summary["train"] == 3 and summary["val"] == 2 and summary["skipped"] == {"train": 0, "val": 0}
    assert summary["labeled_fraction"] == pytest.approx(7 / (H * W))
    # A second run finds everything in place and gives the same result.
    assert prepare_voc(root, download=False, archives=archives, progress=False)["train"] == 3


def test_prepare_voc_layout_reads_as_a_segmentation_folder(tmp_path):
    from rloss.data.folder import SegmentationFolder

    root = tmp_path / "voc"
    prepare_voc(root, download=False, archives=fake_voc_downloads(root), progress=False)
    train = SegmentationFolder(root, "train")
    report = train.check(progress=False)
    assert (report["split"], report["samples"], report["skipped"]) == ("train", 3, 0)
    assert SegmentationFolder(root, "val", require_scribbles=False).check(progress=False)["samples"] == 2
    sample = train[0]
    assert sample.image.shape == (H, W, 3) and sample.mask is not None and (sample.scribble != 255).sum() == 7


def test_prepare_voc_falls_back_to_voc_train_list(tmp_path):
    root = tmp_path / "voc"
    archives = fake_voc_downloads(root, train_aug=False)
    with pytest.warns(UserWarning, match="train_aug"):
        summary = prepare_voc(root, download=False, archives=archives, progress=False)
    assert read_list(root, "train") == TRAIN_VOC and summary["train_list"].endswith("VOC2012/ImageSets/Segmentation/train.txt")


def test_prepare_voc_from_xml_scribbles(tmp_path):
    root = tmp_path / "voc"
    archives = fake_voc_downloads(root, xml=True)
    summary = prepare_voc(root, download=False, scribbles="xml", stroke_width=1, archives=archives, progress=False)
    for n, i in enumerate(TRAIN_AUG):
        np.testing.assert_array_equal(read_labels(root / "pascal_2012_scribble" / f"{i}.png"), scribble_of(n))
    assert summary["scribbles"]["converted"] == 3 and summary["scribbles"]["stroke_width"] == 1
    # A new stroke width redraws the scribbles rather than keeping the old ones.
    prepare_voc(root, download=False, scribbles="xml", stroke_width=3, archives=archives, progress=False)
    assert (read_labels(root / "pascal_2012_scribble" / "a1.png") != 255).sum() > 7


def test_prepare_voc_missing_scribble_is_an_error_or_skipped(tmp_path):
    root = tmp_path / "voc"
    archives = fake_voc_downloads(root, scribble_ids=["a1", "a2"])
    with pytest.raises(DataError, match=r"train: 1 of 3 listed ids lack files, first: .*pascal_2012_scribble/a3\.png"):
        prepare_voc(root, download=False, archives=archives, progress=False)
    summary = prepare_voc(root, download=False, archives=archives, progress=False, skip_bad=True)
    assert summary["skipped"] == {"train": 1, "val": 0} and read_list(root, "train") == ["a1", "a2"]


def test_prepare_voc_without_archives_and_downloads_off_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"downloads/VOCtrainval_11-May-2012\.tar: not found and downloads are off"):
        prepare_voc(tmp_path, download=False, progress=False)
    with pytest.raises(DataError, match="scribbles must be"):
        prepare_voc(tmp_path, download=False, scribbles="svg", progress=False)


def test_registry_facts():
    voc = ARCHIVES["voc2012"]
    assert voc.url == "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
    assert voc.md5 == "6cd6e144f989b92b3379bac3b3de84fd" and voc.checksum == f"md5:{voc.md5}"
    assert all(a.md5 is None and a.sha256 is None for name, a in ARCHIVES.items() if name != "voc2012")


def test_voc_refuses_an_id_that_leaves_the_root(tmp_path):
    root = tmp_path / "voc"
    archives = fake_voc_downloads(root)
    # The train list carries no checksum: a2.jpg of the VOC archive would be placed at <tmp>/outside/a2.jpg.
    (root / "downloads" / "train_aug.txt").write_text("a1\n../../outside/a2\n")
    with pytest.raises(DataError, match=r"train_aug\.txt, line 2: id '\.\./\.\./outside/a2' refused"):
        prepare_voc(root, download=False, archives=archives, progress=False)
    assert not (tmp_path / "outside").exists()
