"""Scribbles drawn by hand (rloss.data.annotation): the brush's pixels against hand-computed sets,
the files written as one draws (VOC layout, accepted by `rloss data check`), resume, undo, and
refusals; and the widget's mouse handling (rloss.study.scribble_widget) without a browser."""

import numpy as np
import pytest

from rloss.cli import main
from rloss.data import annotation
from rloss.data.annotation import ScribbleProject, stroke_mask, write_demo_images
from rloss.data.folder import IMAGE_DIR, LIST_DIR, SCRIBBLE_DIR
from rloss.data.io import DataError, read_labels, save_label_png, save_rgb


def photos(folder, count=3, size=(30, 40)):
    """``count`` random RGB PNGs of height x width ``size``, named p0.png, p1.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        save_rgb(rng.integers(0, 256, size + (3,), dtype=np.uint8), folder / f"p{i}.png")
    return folder


def test_a_stroke_covers_the_pixels_whose_centres_lie_within_half_the_width():
    # Width 1 along row 3 (through the pixel centres) from column 2 to 6: that row only.
    expected = np.zeros((8, 10), dtype=bool)
    expected[3, 2:7] = True
    assert np.array_equal(stroke_mask((8, 10), [(2.5, 3.5), (6.5, 3.5)], 1), expected)
    # A click of width 3: the 3 x 3 block (corner centres at sqrt(2) < 1.5), not the next ring (2 > 1.5).
    expected = np.zeros((8, 10), dtype=bool)
    expected[4:7, 4:7] = True
    assert np.array_equal(stroke_mask((8, 10), [(5.5, 5.5)], 3), expected)
    # Width 1 along the diagonal: the diagonal pixels only (neighbours' centres are 0.71 away).
    assert np.array_equal(stroke_mask((5, 5), [(0.5, 0.5), (4.5, 4.5)], 1), np.eye(5, dtype=bool))
    # Width 5 along row 10 from column 5 to 15: rows 8-12 (row 7's centres are 3 > 2.5 away); the
    # round caps reach 2 columns out on rows 9-11 (sqrt(2^2 + 1^2) <= 2.5 < 3) and 1 on rows 8 and 12
    # (sqrt(1^2 + 2^2) <= 2.5 < sqrt(2^2 + 2^2)).
    mask = stroke_mask((20, 30), [(5.5, 10.5), (15.5, 10.5)], 5)
    spans = {row: (cols.min(), cols.max()) for row in range(20) if (cols := np.flatnonzero(mask[row])).size}
    assert spans == {8: (4, 16), 9: (3, 17), 10: (3, 17), 11: (3, 17), 12: (4, 16)} and mask.sum() == 13 * 2 + 15 * 3
    # A polyline is the union of its segments; off the image, nothing.
    corner = stroke_mask((20, 30), [(2.5, 2.5), (2.5, 12.5), (12.5, 12.5)], 1)
    assert corner.sum() == 21 and corner[2:13, 2].all() and corner[12, 2:13].all()
    assert not stroke_mask((20, 30), [(-10, -10), (-5, -5)], 3).any()


def test_strokes_are_saved_in_the_voc_layout_as_one_draws_and_data_check_accepts_them(tmp_path, capsys):
    images = photos(tmp_path / "photos")
    root = tmp_path / "mine"
    project = ScribbleProject(root, classes=["background", "cat", "dog"], images=images)
    assert project.ids == ["p0", "p1", "p2"] and project.resume_index() == 0
    assert (root / "classes.txt").read_text() == "background\ncat\ndog\n"

    first = project.open(0)
    assert first.stroke([(5.5, 10.5), (15.5, 10.5)], class_id=2, width=5) == 13 * 2 + 15 * 3
    saved = read_labels(root / SCRIBBLE_DIR / "p0.png")
    assert np.array_equal(saved == 2, stroke_mask((30, 40), [(5.5, 10.5), (15.5, 10.5)], 5))
    assert set(np.unique(saved)) == {2, 255}
    assert (root / LIST_DIR / "train.txt").read_text() == "p0\n"
    assert (root / IMAGE_DIR / "p0.png").read_bytes() == (images / "p0.png").read_bytes()
    assert not list(root.rglob("*.part")), "no temporary file is left behind"

    second = project.open(1)
    second.stroke([(2.5, 2.5)], class_id=0, width=1)
    assert (root / LIST_DIR / "train.txt").read_text() == "p0\np1\n"
    assert project.resume_index() == 2  # opening the folder again starts at the first without scribbles
    reopened = ScribbleProject(root, images=images)  # classes from root/classes.txt
    assert reopened.resume_index() == 2 and reopened.classes == ["background", "cat", "dog"]
    assert ScribbleProject(root).ids == ["p0", "p1"]  # the data set itself: the images copied so far

    assert main(["data", "check", "--root", str(root), "--split", "train"]) == 0
    report = capsys.readouterr().out
    assert "2" in report and "dog" in report


def test_erase_undo_and_clear_rewrite_the_file_and_an_empty_image_leaves_the_list(tmp_path):
    root = tmp_path / "mine"
    photos(root / IMAGE_DIR, count=2)
    project = ScribbleProject(root, classes=["background", "thing"])
    assert not project.copies_images
    image = project.open(0)
    image.stroke([(3.5, 3.5), (20.5, 3.5)], class_id=1, width=3)
    after_stroke = image.labels.copy()
    image.erase([(10.5, 3.5)], width=3)
    assert (read_labels(image.path) == after_stroke).sum() == after_stroke.size - 9  # a 3 x 3 hole
    assert image.undo() and np.array_equal(read_labels(image.path), after_stroke)
    image.clear()
    assert not image.path.exists() and not (root / LIST_DIR / "train.txt").exists()
    assert image.undo() and np.array_equal(read_labels(image.path), after_stroke)
    assert (root / LIST_DIR / "train.txt").read_text() == "p0\n"
    image.undo()  # back to before the first stroke: no scribbles, so no file and no list line
    assert not image.path.exists() and not image.undo()
    # Reopened, an image shows its saved scribbles.
    image.stroke([(1.5, 1.5)], class_id=1, width=1)
    assert project.open(0).labeled_pixels() == 1


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    root = tmp_path / "mine"
    photos(root / IMAGE_DIR, count=1)
    image = ScribbleProject(root, classes=["background", "thing"]).open(0)
    image.stroke([(3.5, 3.5)], class_id=1, width=1)
    before = image.path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(image.path))

    monkeypatch.setattr(annotation, "save_label_png", disk_full)
    with pytest.raises(OSError, match="No space left"):
        image.stroke([(8.5, 8.5)], class_id=1, width=1)
    assert image.path.read_bytes() == before


def test_bad_folders_and_classes_are_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such folder of images"):
        ScribbleProject(tmp_path / "mine", images=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ScribbleProject(tmp_path / "mine", images=tmp_path / "empty")
    images = photos(tmp_path / "photos", count=1)
    save_rgb(np.zeros((4, 4, 3), dtype=np.uint8), images / "p0.jpg")
    with pytest.raises(DataError, match="p0.png.*one image per id|one image per id"):
        ScribbleProject(tmp_path / "mine", images=images)
    (images / "p0.jpg").unlink()

    root = tmp_path / "mine"
    ScribbleProject(root, classes=["background", "cat"], images=images)
    assert ScribbleProject(root, classes=["background", "cat", "dog"], images=images).classes[-1] == "dog"
    assert (root / "classes.txt").read_text() == "background\ncat\ndog\n"  # extended at its end
    with pytest.raises(DataError, match="must start with these names"):
        ScribbleProject(root, classes=["background", "dog", "cat"], images=images)
    with pytest.raises(DataError, match="distinct"):
        ScribbleProject(tmp_path / "other", classes=["a", "a"], images=images)
    project = ScribbleProject(root, images=images)
    with pytest.raises(DataError, match="class 3 is not one of the 3"):
        project.open(0).stroke([(1, 1)], class_id=3, width=1)
    save_label_png(np.zeros((5, 5), dtype=np.uint8), root / SCRIBBLE_DIR / "p0.png")
    with pytest.raises(DataError, match="5x5 pixels, but its image"):
        project.open(0)


def test_an_image_of_the_same_id_already_in_the_data_set_is_never_replaced(tmp_path):
    images = photos(tmp_path / "photos", count=1)
    root = tmp_path / "mine"
    photos(root / IMAGE_DIR, count=1, size=(8, 8))  # another p0.png
    kept = (root / IMAGE_DIR / "p0.png").read_bytes()
    image = ScribbleProject(root, classes=["background", "cat"], images=images).open(0)
    with pytest.raises(DataError, match="exists and differs"):
        image.stroke([(1.5, 1.5)], class_id=1, width=1)
    assert (root / IMAGE_DIR / "p0.png").read_bytes() == kept and not image.path.exists()


def test_demo_images_are_written_only_into_a_folder_without_images(tmp_path):
    written = write_demo_images(tmp_path / "demo", 3, size=40)
    assert [p.name for p in written] == ["demo_000.png", "demo_001.png", "demo_002.png"]
    assert write_demo_images(tmp_path / "demo", 3, size=40) == []


def test_the_widget_maps_zoomed_mouse_strokes_to_image_pixels_and_saves_them(tmp_path):
    pytest.importorskip("ipycanvas")
    from rloss.study.scribble_widget import ScribbleWidget, default_zoom

    images = photos(tmp_path / "photos", count=2, size=(40, 40))
    widget = ScribbleWidget(tmp_path / "mine", classes=["background", "cat", "dog"], images=images)
    assert widget.zoom.value == default_zoom((40, 40)) == 12 and widget.canvas.width == 480
    assert widget.canvas.layout.width == "480px"  # shown at its size: 12 screen pixels per image pixel
    widget.class_picker.value, widget.brush.value = 2, 3
    # Canvas pixels at zoom 12: (66, 126) is image pixel (5.5, 10.5); a drag to (186, 126) = (15.5, 10.5).
    widget._mouse_down(66, 126)
    widget._mouse_move(126, 126)
    widget._mouse_up(186, 126)
    saved = read_labels(tmp_path / "mine" / SCRIBBLE_DIR / "p0.png")
    assert np.array_equal(saved == 2, stroke_mask((40, 40), [(5.5, 10.5), (15.5, 10.5)], 3))
    assert "1 with scribbles" in widget.status.value and not widget.undo_button.disabled
    widget.tool.value = "erase"
    widget.stroke([(0, 10.5), (40, 10.5)])
    assert not (tmp_path / "mine" / SCRIBBLE_DIR / "p0.png").exists()
    widget.next_button.click()
    assert widget.current.id == "p1" and widget.next_button.disabled and not widget.previous_button.disabled
    # A folder the widget cannot read is one line in its status, not a traceback.
    (images / "p0.png").write_bytes(b"not a png")
    widget.previous_button.click()
    assert widget.status.value.startswith('<span style="color:#b00">error:') and "p0.png" in widget.status.value


def test_rloss_data_draw_serves_the_notebook_with_the_folders_and_classes_given(tmp_path, capsys):
    pytest.importorskip("ipycanvas")
    import json

    from rloss.study import scribble_widget

    images = photos(tmp_path / "photos", count=1)
    seen = {}

    def voila(command, cwd):  # instead of serving: what Voilà would have been given
        notebook = json.loads(open(command[3]).read())
        seen.update(command=command, parameters="".join(next(
            c["source"] for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", []))))
        return 0

    assert scribble_widget.serve(tmp_path / "mine", images=images, classes=["background", "cat"], port=9999,
                                 open_browser=False, call=voila) == 0
    assert seen["command"][1:3] == ["-m", "voila"] and "--port=9999" in seen["command"] and "--no-browser" in seen["command"]
    assert f"root = \"{tmp_path / 'mine'}\"" in seen["parameters"] and "demo_images = 0" in seen["parameters"]
    assert "\"background\"" in seen["parameters"] and (tmp_path / "mine" / "classes.txt").read_text() == "background\ncat\n"
    # A bad folder is one line (exit code 1) before anything is served or written.
    assert main(["data", "draw", "--root", str(tmp_path / "other"), "--images", str(tmp_path / "nowhere")]) == 1
    assert not (tmp_path / "other").exists() and "nowhere: no such folder of images" in capsys.readouterr().err


def test_the_widget_fits_a_large_photo_and_keeps_its_canvas_bounded(tmp_path):
    pytest.importorskip("ipycanvas")
    from rloss.study.scribble_widget import FIT_SIDE, MAX_CANVAS_SIDE, ScribbleWidget

    images = tmp_path / "photos"
    save_rgb(np.zeros((30, 40, 3), np.uint8), images / "a_small.png")
    save_rgb(np.zeros((1500, 2048, 3), np.uint8), images / "b_large.png")
    widget = ScribbleWidget(tmp_path / "mine", classes=["background", "cat"], images=images)
    assert widget.zoom.value == 12 and widget.canvas.layout.width == "480px"
    widget.next_button.click()  # another size: its own zoom, 1, and shown FIT_SIDE wide
    assert widget.zoom.value == 1 and widget.zoom.max == MAX_CANVAS_SIDE // 2048
    assert widget.canvas.width == 2048 and widget.canvas.layout.width == f"{FIT_SIDE}px"
    assert widget.canvas.layout.height == f"{round(1500 * FIT_SIDE / 2048)}px"
    widget.zoom.value = 2  # zoomed in: shown at twice its size (the page scrolls)
    assert widget.canvas.width == 4096 and widget.canvas.layout.width == "4096px"
    # A stroke on the fitted canvas lands where it was drawn: canvas pixels are image pixels at zoom 1.
    widget.zoom.value, widget.brush.value = 1, 3
    widget._mouse_down(100.5, 200.5)
    widget._mouse_up(100.5, 200.5)
    expected = np.zeros((1500, 2048), dtype=bool)
    expected[199:202, 99:102] = True  # a click of width 3: the 3 x 3 block around pixel (200, 100)
    assert np.array_equal(widget.current.labels == 1, expected)
