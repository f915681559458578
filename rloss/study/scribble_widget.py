"""Draw scribbles in JupyterLab or Voilà: a canvas (ipycanvas) over each image of a folder, a
class picked from the data set's palette, a round brush of a chosen width, erase, undo, clear,
zoom for small images, previous / next. Every stroke is saved at once in the VOC layout
(:mod:`rloss.data.annotation`, which holds the logic and the files); opening the folder again
resumes at the first image without scribbles.

    from rloss.study.scribble_widget import ScribbleWidget
    ScribbleWidget("data/mine", classes=["background", "cat", "dog"], images="photos").widget

    # or as an app in the browser, served by Voilà (python -m rloss data draw, make draw):
    serve("data/mine", images="photos", classes=["background", "cat", "dog"])

The stroke shown while drawing is the browser's; once the mouse is released, the saved labels are
drawn over the image, so what is on the screen is what is in the file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..data.annotation import ImageScribbles, ScribbleProject
from ..data.io import IGNORE_INDEX, DataError, colorize
from ..data.synthetic import stroke_width

__all__ = ["ScribbleWidget", "default_zoom", "notebook_copy", "serve", "NOTEBOOK"]

SCREEN_SIDE = 512  # pixels the longer image side is zoomed to, at most, by default
FIT_SIDE = 1024  # at zoom 1, a larger image is shown this size (the browser scales it; strokes map back)
MAX_CANVAS_SIDE = 4096  # the zoom slider stops where the canvas would grow beyond this
MAX_ZOOM = 32
MAX_BRUSH = 64
OVERLAY_ALPHA = 220  # scribbles over the image, nearly opaque
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "draw_scribbles.ipynb"  # in a source checkout
VOILA_PORT = 8866  # Voilà's own default


def default_zoom(shape: tuple[int, int]) -> int:
    """The largest whole zoom that keeps the longer side within SCREEN_SIDE (at least 1)."""
    return int(min(MAX_ZOOM, max(1, SCREEN_SIDE // max(shape))))


def _hex(class_id: int) -> str:
    r, g, b = (int(v) for v in colorize(np.array([[class_id]], dtype=np.uint8))[0, 0])
    return f"#{r:02x}{g:02x}{b:02x}"


def _zoomed(array: np.ndarray, zoom: int) -> np.ndarray:
    return np.repeat(np.repeat(array, zoom, axis=0), zoom, axis=1)


class ScribbleWidget:
    """The widget over a :class:`~rloss.data.annotation.ScribbleProject` (same arguments);
    ``widget`` is what to display. The methods the buttons call work without a browser too."""

    def __init__(self, root, classes=None, images=None, split: str = "train", start: int | None = None):
        import ipywidgets as widgets
        from ipycanvas import MultiCanvas

        self.project = ScribbleProject(root, classes=classes, images=images, split=split)
        self.current: ImageScribbles | None = None
        self._points: list[tuple[float, float]] | None = None  # the stroke being drawn, image pixels
        first = self.project.open(self.project.resume_index() if start is None else start)
        shape = first.shape

        names = self.project.classes
        self.class_picker = widgets.ToggleButtons(
            options=[(f"{i} {name}", i) for i, name in enumerate(names)], value=1 if len(names) > 1 else 0,
            description="class", style={"button_width": "auto"})
        self.legend = widgets.HTML(" ".join(
            f'<span style="background:{_hex(i)};padding:0 0.6em;margin-right:0.2em"></span>{i} {name}'
            for i, name in enumerate(names)))
        self.tool = widgets.ToggleButtons(options=["draw", "erase"], value="draw", description="tool")
        self.brush = widgets.IntSlider(value=stroke_width(min(shape)), min=1, max=MAX_BRUSH, description="width (px)")
        self.zoom = widgets.IntSlider(value=1, min=1, max=MAX_ZOOM, description="zoom")  # set by show()
        buttons = {name: widgets.Button(description=name) for name in ("◀ previous", "next ▶", "undo", "clear")}
        self.previous_button, self.next_button, self.undo_button, self.clear_button = buttons.values()
        self.status = widgets.HTML()
        self.canvas = MultiCanvas(2, width=1, height=1)

        self.previous_button.on_click(lambda _: self.show(self.current.index - 1))
        self.next_button.on_click(lambda _: self.show(self.current.index + 1))
        self.undo_button.on_click(lambda _: self._run(self.current.undo))
        self.clear_button.on_click(lambda _: self._run(self.current.clear))
        self.zoom.observe(lambda _: self._draw_all(), names="value")
        self.canvas.on_mouse_down(self._mouse_down)
        self.canvas.on_mouse_move(self._mouse_move)
        self.canvas.on_mouse_up(self._mouse_up)
        self.canvas.on_mouse_out(self._mouse_up)
        self.widget = widgets.VBox([
            self.status,
            widgets.HBox([self.class_picker]),
            self.legend,
            widgets.HBox([self.tool, self.brush, self.zoom]),
            widgets.HBox(list(buttons.values())),
            self.canvas,
        ])
        self._present(first)

    # ------------------------------------------------------------------ actions

    def show(self, index: int) -> None:
        """Opens image ``index`` (clamped to the folder)."""
        index = max(0, min(len(self.project) - 1, index))
        try:
            image = self.project.open(index)
        except (DataError, OSError) as exc:
            self._say_error(exc)
            return
        self._present(image)

    def _present(self, image: ImageScribbles) -> None:
        previous_shape = None if self.current is None else self.current.shape
        self.current = image
        self._points = None
        shape = image.shape
        # The zoom stays from image to image of one size; another size gets its own.
        self.zoom.max = max(1, min(MAX_ZOOM, MAX_CANVAS_SIDE // max(shape)))
        zoom = default_zoom(shape) if shape != previous_shape else min(self.zoom.value, self.zoom.max)
        if zoom != self.zoom.value:
            self.zoom.value = zoom  # its observer redraws
        else:
            self._draw_all()

    def stroke(self, points) -> int:
        """The tool along ``points`` (image pixels), with the chosen class and width; saved."""
        if self.tool.value == "erase":
            return self._run(self.current.erase, points, self.brush.value)
        return self._run(self.current.stroke, points, self.class_picker.value, self.brush.value)

    def _run(self, action, *args):
        try:
            result = action(*args)
        except (DataError, OSError) as exc:
            self._say_error(exc)
            return 0
        self._draw_labels()
        self._update_status()
        return result

    # ------------------------------------------------------------------ mouse

    def _mouse_down(self, x: float, y: float) -> None:
        zoom = self.zoom.value
        self._points = [(x / zoom, y / zoom)]
        layer = self.canvas[1]
        if self.tool.value == "erase":
            layer.global_composite_operation = "destination-out"
            layer.fill_style = "#000000"
        else:
            layer.global_composite_operation = "source-over"
            layer.fill_style = _hex(self.class_picker.value)
        layer.fill_circle(x, y, self.brush.value * zoom / 2)

    def _mouse_move(self, x: float, y: float) -> None:
        if self._points is None:
            return
        zoom = self.zoom.value
        last_x, last_y = self._points[-1]
        self._points.append((x / zoom, y / zoom))
        layer = self.canvas[1]
        layer.stroke_style = "#000000" if self.tool.value == "erase" else _hex(self.class_picker.value)
        layer.line_width = self.brush.value * zoom
        layer.line_cap = "round"
        layer.stroke_line(last_x * zoom, last_y * zoom, x, y)

    def _mouse_up(self, x: float, y: float) -> None:
        if self._points is None:
            return
        zoom = self.zoom.value
        if (x / zoom, y / zoom) != self._points[-1]:  # where the button came up (or the mouse left)
            self._points.append((x / zoom, y / zoom))
        points, self._points = self._points, None
        self.canvas[1].global_composite_operation = "source-over"
        self.stroke(points)

    # ------------------------------------------------------------------ drawing

    def _draw_all(self) -> None:
        from ipycanvas import hold_canvas

        if self.current is None:
            return
        zoom = self.zoom.value
        height, width = self.current.shape
        with hold_canvas():
            self.canvas.width, self.canvas.height = width * zoom, height * zoom
            # One image pixel is `zoom` screen pixels; at zoom 1 a photo larger than FIT_SIDE is fitted.
            shown = min(1.0, FIT_SIDE / max(width, height)) if zoom == 1 else 1.0
            self.canvas.layout.width = f"{round(width * zoom * shown)}px"
            self.canvas.layout.height = f"{round(height * zoom * shown)}px"
            self.canvas[0].put_image_data(_zoomed(self.current.image, zoom), 0, 0)
        self._draw_labels()
        self._update_status()

    def _draw_labels(self) -> None:
        from ipycanvas import hold_canvas

        labels = self.current.labels
        overlay = np.zeros(labels.shape + (4,), dtype=np.uint8)
        overlay[..., :3] = colorize(labels)
        overlay[..., 3] = np.where(labels != IGNORE_INDEX, OVERLAY_ALPHA, 0)
        layer = self.canvas[1]
        with hold_canvas():
            layer.global_composite_operation = "source-over"
            layer.clear()
            layer.put_image_data(_zoomed(overlay, self.zoom.value), 0, 0)

    def _update_status(self) -> None:
        image, project = self.current, self.project
        saved = "saved" if image.labeled_pixels() else "no scribbles yet"
        self.status.value = (f"<b>{image.id}</b> · image {image.index + 1} of {len(project)} · "
                             f"{project.scribbled_count()} with scribbles · {image.labeled_pixels()} pixels labeled, "
                             f"{saved} · {image.path.parent}")
        self.undo_button.disabled = not image.can_undo
        self.previous_button.disabled = image.index == 0
        self.next_button.disabled = image.index == len(project) - 1

    def _say_error(self, exc: Exception) -> None:
        self.status.value = f'<span style="color:#b00">error: {exc}</span>'


def notebook_copy(folder, project: ScribbleProject) -> Path:
    """A copy of ``notebooks/draw_scribbles.ipynb`` in ``folder`` with its parameters set to
    ``project``'s folders, classes and split (papermill's injected cell; not run)."""
    import papermill

    if not NOTEBOOK.is_file():
        raise DataError(f"{NOTEBOOK} not found: drawing in the browser needs rloss's source checkout "
                        "(pip install -e .); in Python, display ScribbleWidget(...).widget in a notebook instead")
    parameters = {"root": str(project.root.resolve()), "images": str(project.images_dir.resolve()),
                  "classes": project.classes, "split": project.split, "demo_images": 0}
    copy = Path(folder) / NOTEBOOK.name
    papermill.execute_notebook(str(NOTEBOOK), str(copy), parameters=parameters, prepare_only=True,
                               kernel_name="python3", progress_bar=False, log_output=False)
    return copy


def serve(root, images=None, classes=None, split: str = "train", port: int | None = None, open_browser: bool = True,
          call=subprocess.call) -> int:
    """The widget as an app in the browser: :func:`notebook_copy` (in a temporary folder) served by
    Voilà on localhost until Ctrl-C. The folders and classes are checked first, so a bad one is one
    line here rather than an error in the page. Returns Voilà's exit code (0 after Ctrl-C: every
    stroke is saved already)."""
    port = VOILA_PORT if port is None else port
    project = ScribbleProject(root, classes=classes, images=images, split=split)
    with tempfile.TemporaryDirectory(prefix="rloss-draw-") as tmp:
        copy = notebook_copy(tmp, project)
        command = [sys.executable, "-m", "voila", str(copy), f"--port={port}", "--Voila.port_retries=0"]
        if not open_browser:
            command.append("--no-browser")
        print(f"rloss data draw: {len(project)} images of {project.images_dir}, scribbles into {project.root}; "
              f"serving on http://localhost:{port} (Ctrl-C stops; every stroke is saved as it is drawn)", file=sys.stderr)
        try:
            return call(command, cwd=tmp)
        except KeyboardInterrupt:
            return 0
