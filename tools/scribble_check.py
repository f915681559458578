"""The scribble widget drawn on in a real browser: ``notebooks/draw_scribbles.ipynb`` opened in
JupyterLab (Run > Run All Cells) or served by Voilà, in headless Chromium driven by Playwright,
with real mouse strokes on its canvas.

    summary = draw_in_browser("data/mine", [[(5.5, 20.5), (30.5, 20.5)]], class_id=2, width=5,
                              images="photos", classes=["background", "cat", "dog"])

A developer tool, not part of the ``rloss`` package (it needs the study's extras, Playwright and a
source checkout), used by the tests. The notebook's parameterized copy, the server's files and its
log live in a temporary folder; only ``root`` gets files, as the widget writes them. The class is
picked by clicking its button, the width typed into the width slider's readout; each stroke is
pressed, dragged in small steps and released at points given in image pixels, and the check waits
until the widget's status line has changed after each (the kernel has saved it).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from tools.browser_check import (BrowserCheckError, _check_prerequisites, _chromium_page, _free_port, _page_failure,
                                 _voila, jupyterlab)

DRAG_STEPS = 12  # mouse moves between a stroke's points

_FIND_STATUS = """[...document.querySelectorAll(".widget-html-content")].find(e => e.innerText.includes(" of "))"""
_STATUS_JS = f"() => {{ const s = {_FIND_STATUS}; return s ? s.innerText.trim() : null; }}"
# True once the status line reads otherwise than ``before`` (the kernel has handled the stroke).
_STATUS_CHANGED_JS = f"(before) => {{ const s = {_FIND_STATUS}; return !!s && s.innerText.trim() !== before; }}"


def draw_in_browser(root, strokes, class_id: int, width: int, *, images=None, classes=None, server: str = "lab",
                    timeout_s: float = 180.0, chromium_path=None, port: int | None = None) -> dict:
    """Draws ``strokes`` (each a list of (x, y) points in image pixels) on the first image without
    scribbles, with class ``class_id`` and brush ``width``, in JupyterLab (``server="lab"``) or
    Voilà (``"voila"``). Returns the status line after each stroke, the canvas's box on the page,
    the number of error outputs and a PNG screenshot (``png``)."""
    from rloss.data.annotation import ScribbleProject
    from rloss.study.scribble_widget import NOTEBOOK, notebook_copy

    if server not in ("lab", "voila"):
        raise ValueError(f"server must be 'lab' or 'voila', got {server!r}")
    chromium_path = _check_prerequisites(chromium_path, NOTEBOOK, "jupyterlab" if server == "lab" else "voila")
    root = Path(root).resolve()
    images = None if images is None else Path(images).resolve()
    project = ScribbleProject(root, classes=classes, images=images)
    image = project.open(project.resume_index())
    class_label = f"{class_id} {project.classes[class_id]}"

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rloss-scribble-check-") as tmp:
        tmp = Path(tmp)
        (tmp / "notebooks").mkdir()
        served = notebook_copy(tmp / "notebooks", project)
        log_path = tmp / "server.log"
        if server == "lab":
            with jupyterlab(served, tmp, timeout_s, port) as (url, log_path):
                summary = _drive(url, True, chromium_path, image.shape, strokes, class_label, width, timeout_s, log_path)
        else:
            with _voila(served, port or _free_port(), log_path, timeout_s) as url:
                summary = _drive(url, False, chromium_path, image.shape, strokes, class_label, width, timeout_s, log_path)
    summary.update(image_id=image.id, seconds=round(time.monotonic() - start, 1))
    return summary


def _drive(url: str, in_lab: bool, chromium_path: Path, shape, strokes, class_label: str, width: int,
           timeout_s: float, log_path: Path) -> dict:
    from playwright.sync_api import Error as PlaywrightError

    timeout_ms = timeout_s * 1000
    console: list[str] = []
    server = "JupyterLab" if in_lab else "Voilà"

    def fail(what: str) -> BrowserCheckError:
        return _page_failure(f"{server}: {what} (timeout {timeout_s:.0f} s)", console, server, log_path)

    with _chromium_page(chromium_path, console) as page:
        if in_lab:
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            try:
                page.locator(".jp-Notebook .jp-Cell").first.wait_for(state="visible", timeout=timeout_ms)
                page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\|\s*Idle")).first.wait_for(
                    state="visible", timeout=timeout_ms)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click(timeout=timeout_ms)
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click(timeout=timeout_ms)
            except PlaywrightError:
                raise fail("the notebook did not open and run") from None
        else:  # Voilà runs the notebook before the page arrives
            page.goto(url, wait_until="commit", timeout=timeout_ms)
        canvas = page.locator("canvas").last
        try:
            canvas.wait_for(state="visible", timeout=timeout_ms)
            page.wait_for_function(_STATUS_JS, timeout=timeout_ms)
        except PlaywrightError:
            raise fail("the scribble widget did not render (no canvas and status line)") from None
        try:
            page.locator("button.widget-toggle-button", has_text=class_label).first.click(timeout=timeout_ms)
            readout = page.locator(".widget-slider", has=page.locator("label", has_text="width (px)")).locator(
                ".widget-readout").first
            readout.click(timeout=timeout_ms)
            page.keyboard.press("ControlOrMeta+A")
            page.keyboard.type(str(width))
            page.keyboard.press("Enter")
            page.wait_for_function("([el, w]) => el.innerText.trim() === w", arg=[readout.element_handle(), str(width)],
                                   timeout=timeout_ms)
        except PlaywrightError:
            raise fail(f"could not pick class {class_label!r} and width {width}") from None
        canvas.scroll_into_view_if_needed(timeout=timeout_ms)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        box = canvas.bounding_box()
        height, image_width = shape

        def on_page(point):  # image pixels -> page coordinates
            return box["x"] + point[0] * box["width"] / image_width, box["y"] + point[1] * box["height"] / height

        statuses = []
        for stroke in strokes:
            before = page.evaluate(_STATUS_JS)
            page.mouse.move(*on_page(stroke[0]))
            page.mouse.down()
            for point in stroke[1:]:
                page.mouse.move(*on_page(point), steps=DRAG_STEPS)
            page.mouse.up()
            try:
                page.wait_for_function(_STATUS_CHANGED_JS, arg=before, timeout=timeout_ms)
            except PlaywrightError:
                raise fail(f"the status line did not change after a stroke (still {before!r})") from None
            statuses.append(page.evaluate(_STATUS_JS))
        errors = page.locator("[data-mime-type='application/vnd.jupyter.error']").count()
        page.locator("button.widget-toggle-button").first.scroll_into_view_if_needed(timeout=timeout_ms)
        png = page.screenshot(type="png", timeout=timeout_ms)  # the viewport: the controls and the canvas
    return {"statuses": statuses, "canvas_box": box, "error_outputs": errors, "console_errors": console, "png": png}
