"""A result browser for trained runs: image, scribbles, ground truth, prediction and error map.

    browser = ResultBrowser("results")          # every results/<run>/checkpoint.pt
    display(browser.widget)                     # in Jupyter / JupyterLab / Voilà

    browser.select_run("smoke40_pce_crf_seed0") # the same, without a browser
    browser.select_split("val"); browser.next_image()
    browser.select_compare_run("smoke40_pce_seed0")
    panel = browser.render_panel()              # RGB uint8, the panels side by side
    fig = browser.render_figure()               # the same with titles (a matplotlib Figure)

The logic lives in plain methods (``select_run``, ``select_split``, ``select_image``,
``next_image``, ``previous_image``, ``select_compare_run``) that change the state; the
ipywidgets controls call them (``observe`` / ``on_click``) and are kept in step with them.
The view is an ``ipywidgets.Image`` holding a PNG, so it renders wherever widgets do.

Predictions come from ``load_predictor(<run>/checkpoint.pt)`` (one predictor per run, cached)
on the image at its original size. A run's data set is its config's ``data.root``; a relative
root is looked up against ``<results_dir>/../notebooks`` (where the notebooks train from),
the working directory and ``<results_dir>/..``, the first that exists, unless ``data_root``
is given. An image that is not 8-bit RGB (``data.channels``) is shown as
:func:`rloss.data.io.display_rgb` shows it: grey as grey, several bands as their first three,
16-bit and float data stretched from their minimum to their maximum (the panel's title says so).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.config import TrainConfig
from ..data.folder import SegmentationFolder
from ..data.io import IGNORE_INDEX, colorize, display_rgb
from ..engine.infer import Predictor, load_predictor
from ..engine.runs import CHECKPOINT, CONFIG, legacy_data_root, legacy_root_candidates, read_run_config, run_folders

__all__ = ["ResultBrowser", "image_iou", "error_map", "scribble_panel", "colorize", "resolve_data_root", "find_runs"]

SPLITS = ("train", "val")
WRONG = np.array([255, 0, 0], dtype=np.uint8)  # wrong pixels in the error map
IGNORED = np.array([128, 128, 128], dtype=np.uint8)  # ignore pixels (255 in the mask) in the error map
GAP = 4  # white pixels between the panels of render_panel()


# --------------------------------------------------------------------------------------------
# Panels and scores (plain functions)
# --------------------------------------------------------------------------------------------


def scribble_panel(image: np.ndarray, scribble: np.ndarray) -> np.ndarray:
    """Scribbled pixels in their class colour over the photo dimmed to a third."""
    out = image // 3
    labeled = scribble != IGNORE_INDEX
    out[labeled] = colorize(scribble[labeled])
    return out


def error_map(image: np.ndarray, labels: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Wrong pixels red, ignore pixels grey, right pixels the photo dimmed to a third; all grey without a mask."""
    if mask is None:
        return np.broadcast_to(IGNORED, image.shape).copy()
    out = image // 3
    ignore = mask == IGNORE_INDEX
    out[(labels != mask) & ~ignore] = WRONG
    out[ignore] = IGNORED
    return out


def image_iou(labels: np.ndarray, mask: np.ndarray | None, class_names: list[str]) -> dict:
    """This image's IoU per class and their mean over the classes present (in the mask or the
    prediction, on pixels that are not ignored). ``{"miou": None, ...}`` without a mask."""
    if mask is None:
        return {"miou": None, "per_class_iou": {}}
    valid = mask != IGNORE_INDEX
    per_class = {}
    for k, name in enumerate(class_names):
        truth, pred = (mask == k) & valid, (labels == k) & valid
        union = int((truth | pred).sum())
        if union:
            per_class[name] = float((truth & pred).sum() / union)
    return {"miou": float(np.mean(list(per_class.values()))) if per_class else None, "per_class_iou": per_class}


def side_by_side(panels: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Equal-height RGB panels in a row, ``gap`` white pixels apart."""
    height = max(p.shape[0] for p in panels)
    spacer = np.full((height, gap, 3), 255, dtype=np.uint8)
    row = []
    for i, p in enumerate(panels):
        if p.shape[0] < height:
            p = np.concatenate([p, np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)])
        row += ([spacer] if i else []) + [p]
    return np.concatenate(row, axis=1)


# --------------------------------------------------------------------------------------------
# Runs and their data
# --------------------------------------------------------------------------------------------


def find_runs(results_dir, study_names=None) -> list[str]:
    """Names of the runs under ``results_dir`` with a checkpoint and a config, sorted; with
    ``study_names`` (a name or a list of them) only the runs of those studies (matched exactly)."""
    # A folder mixing two runs' files would show one under the other's name: left out.
    return [d.name for d in run_folders(results_dir, study_names, needs=(CHECKPOINT, CONFIG), label="result browser")]


def resolve_data_root(config_root: str, results_dir, data_root=None) -> Path:
    """``data_root`` if given; else the config's root: as is when absolute (as runs save it), otherwise
    (an older config) the first of ``<results_dir>/../notebooks/<root>``, ``<cwd>/<root>``,
    ``<results_dir>/../<root>`` that exists (:func:`rloss.engine.runs.legacy_data_root`)."""
    if data_root is not None:
        return Path(data_root)
    root = Path(config_root)
    if root.is_absolute():
        return root
    found = legacy_data_root(config_root, results_dir)
    if found is None:
        tried = ", ".join(str(c) for c in legacy_root_candidates(config_root, results_dir))
        raise FileNotFoundError(f"data root {config_root!r} not found (tried {tried}); pass data_root=")
    return found


@dataclass
class _View:
    """What render_* draws: the sample and the predictions of the run (and the compare run)."""

    run: str
    split: str
    index: int
    sample_id: str
    image: np.ndarray
    scribble: np.ndarray
    mask: np.ndarray | None
    labels: np.ndarray
    iou: dict
    compare_run: str | None = None
    compare_labels: np.ndarray | None = None
    compare_iou: dict | None = None


class ResultBrowser:
    """Browse the predictions of trained runs, image by image, optionally two runs side by side.

    State: :attr:`run`, :attr:`split` (``"train"`` or ``"val"``: the run's ``data.train_split`` /
    ``data.val_split``), :attr:`index` (into :attr:`ids`) and :attr:`compare_run` (None: off).
    """

    def __init__(self, results_dir, data_root=None, study_names=None, device: str = "cpu",
                 interpolation: str = "auto", max_cached: int = 64):
        self.results_dir = Path(results_dir)
        self.data_root = None if data_root is None else Path(data_root)
        self.device = device
        self.interpolation = interpolation
        self.max_cached = max_cached
        self.runs = find_runs(self.results_dir, study_names)
        self.run: str | None = None
        self.split = "val"
        self.index = 0
        self.compare_run: str | None = None
        self._configs: dict[str, TrainConfig] = {}
        self._predictors: dict[str, Predictor] = {}
        self._datasets: dict[tuple, SegmentationFolder] = {}
        self._predictions: dict[tuple, np.ndarray] = {}
        self._widget = None
        self._controls: dict = {}
        self._syncing = False
        self.error: str | None = None  # the last failure shown by the widget (None: none)
        if self.runs:
            try:
                self.select_run(self.runs[0])
            except Exception as exc:  # e.g. its data set is not found: the widget shows why
                self.error = f"{type(exc).__name__}: {exc}"

    # ---------------------------------------------------------------- loading (cached)

    def config(self, run: str) -> TrainConfig:
        if run not in self._configs:
            self._configs[run] = read_run_config(self.results_dir / run)
        return self._configs[run]

    def predictor(self, run: str) -> Predictor:
        """The run's predictor, loaded once."""
        if run not in self._predictors:
            self._predictors[run] = load_predictor(self.results_dir / run / CHECKPOINT, self.device)
        return self._predictors[run]

    def data_root_of(self, run: str) -> Path:
        return resolve_data_root(self.config(run).data.root, self.results_dir, self.data_root)

    def dataset(self, run: str | None = None, split: str | None = None) -> SegmentationFolder:
        run, split = run or self.run, split or self.split
        if run is None:
            raise ValueError("no run selected")
        cfg = self.config(run)
        root = self.data_root_of(run)
        name = cfg.data.train_split if split == "train" else cfg.data.val_split
        key = (str(root), name)
        if key not in self._datasets:
            self._datasets[key] = SegmentationFolder(root, name, require_scribbles=False, channels=cfg.data.channels)
        return self._datasets[key]

    @property
    def ids(self) -> list[str]:
        return list(self.dataset().ids) if self.run is not None else []

    def _safe(self, get, default=None):
        try:
            return get()
        except Exception:
            return default

    @property
    def sample_id(self) -> str | None:
        ids = self.ids
        return ids[self.index] if ids else None

    def prediction(self, run: str, image: np.ndarray, key: tuple) -> np.ndarray:
        """The run's label map for ``image`` (cached under ``(run, *key)``)."""
        cache_key = (run, *key)
        if cache_key not in self._predictions:
            [pred] = self.predictor(run).predict([image], self.interpolation)
            if len(self._predictions) >= self.max_cached:
                self._predictions.pop(next(iter(self._predictions)))
            self._predictions[cache_key] = pred.labels
        return self._predictions[cache_key]

    # ---------------------------------------------------------------- callbacks

    def select_run(self, run: str) -> None:
        if run not in self.runs:
            raise ValueError(f"unknown run {run!r}; runs with a checkpoint: {', '.join(self.runs) or 'none'}")
        keep, position = self._safe(lambda: self.sample_id), self.index
        self.run, self.index = run, 0
        ids = self.ids  # the same image where the new run's data has it, else the same position
        self.index = ids.index(keep) if keep in ids else min(position, max(len(ids) - 1, 0))
        self._changed()

    def select_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if split != self.split:
            self.split = split
            self.index = 0
        self._changed()

    def select_image(self, image) -> None:
        """By position in :attr:`ids` (an int) or by id (a str)."""
        ids = self.ids
        if isinstance(image, str):
            if image not in ids:
                raise ValueError(f"{image!r} is not in the {self.split} split")
            image = ids.index(image)
        if not 0 <= int(image) < len(ids):
            raise IndexError(f"image index {image} outside 0..{len(ids) - 1}")
        self.index = int(image)
        self._changed()

    def next_image(self) -> None:
        if self.ids:
            self.select_image((self.index + 1) % len(self.ids))

    def previous_image(self) -> None:
        if self.ids:
            self.select_image((self.index - 1) % len(self.ids))

    def select_compare_run(self, run: str | None) -> None:
        """A second run shown beside the first; None (or "") turns compare mode off."""
        if run in (None, ""):
            self.compare_run = None
        elif run not in self.runs:
            raise ValueError(f"unknown run {run!r}")
        else:
            self.compare_run = run
        self._changed()

    # ---------------------------------------------------------------- rendering

    def view(self) -> _View | None:
        """The current sample with its predictions and per-image IoU; None without a run."""
        if self.run is None or not self.ids:
            return None
        sample_id = self.sample_id
        sample = self.dataset().load(sample_id)
        key = (self.split, sample_id)
        predictor = self.predictor(self.run)
        labels = self.prediction(self.run, sample.image, key)
        view = _View(self.run, self.split, self.index, sample_id, sample.image, sample.scribble, sample.mask,
                     labels, image_iou(labels, sample.mask, predictor.class_names))
        if self.compare_run is not None:
            other = self.prediction(self.compare_run, sample.image, key)
            view.compare_run, view.compare_labels = self.compare_run, other
            view.compare_iou = image_iou(other, sample.mask, self.predictor(self.compare_run).class_names)
        return view

    def panels(self, view: _View | None = None) -> list[tuple[str, np.ndarray]]:
        """``(title, RGB uint8 [H, W, 3])`` per panel: image, scribbles, ground truth, prediction,
        errors, then (compare mode) the second run's prediction and errors."""
        view = view or self.view()
        if view is None:
            return []
        shown = display_rgb(view.image)  # grey as grey, several bands as their first three, 16-bit stretched
        gt = colorize(view.mask) if view.mask is not None else np.broadcast_to(IGNORED, shown.shape).copy()
        out = [(_image_title(view.image), shown), ("scribbles", scribble_panel(shown, view.scribble)),
               ("ground truth" if view.mask is not None else "ground truth (none)", gt),
               (f"{view.run}: prediction", colorize(view.labels)),
               (f"{view.run}: errors ({_iou_text(view.iou)})", error_map(shown, view.labels, view.mask))]
        if view.compare_run is not None:
            out += [(f"{view.compare_run}: prediction", colorize(view.compare_labels)),
                    (f"{view.compare_run}: errors ({_iou_text(view.compare_iou)})",
                     error_map(shown, view.compare_labels, view.mask))]
        return out

    def render_panel(self) -> np.ndarray | None:
        """The panels side by side at the image's size, :data:`GAP` white pixels apart; None without a run."""
        panels = self.panels()
        return side_by_side([p for _, p in panels]) if panels else None

    def render_figure(self, view: _View | None = None, panel_inches: float = 2.4):
        """The panels with titles as a matplotlib Figure (not registered with pyplot: nothing pops up)."""
        from matplotlib.figure import Figure

        view = view or self.view()
        panels = self.panels(view)
        fig = Figure(figsize=(panel_inches * max(len(panels), 1), panel_inches + 0.8), layout="constrained")
        if not panels:
            ax = fig.add_subplot()
            ax.axis("off")
            ax.text(0.5, 0.5, "no run with a checkpoint" if not self.runs else "no images", ha="center", va="center")
            return fig
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, picture) in zip(axes, panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_title(title, fontsize=7, wrap=True)
            ax.axis("off")
        fig.suptitle(f"{view.split} {view.index + 1}/{len(self.ids)}: {view.sample_id}", fontsize=9)
        return fig

    def render_png(self, view: _View | None = None, dpi: int = 100) -> bytes:
        fig = self.render_figure(view)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()

    # ---------------------------------------------------------------- the widget

    @property
    def widget(self):
        """The ipywidgets VBox (built on first use) wired to the callbacks."""
        if self._widget is None:
            self._widget = self._build_widget()
            self._changed()
        return self._widget

    @property
    def controls(self) -> dict:
        """The widget's controls by name: run, compare, split, image, slider, previous, next, view, info."""
        _ = self.widget
        return self._controls

    def _build_widget(self):
        import ipywidgets as W

        c = self._controls
        c["run"] = W.Dropdown(options=self.runs, value=self.run, description="run",
                              layout=W.Layout(width="420px"))
        c["compare"] = W.Dropdown(options=[("(none)", "")] + [(r, r) for r in self.runs], value="",
                                  description="compare", layout=W.Layout(width="420px"))
        c["split"] = W.ToggleButtons(options=list(SPLITS), value=self.split, description="split")
        c["image"] = W.Dropdown(options=[], description="image", layout=W.Layout(width="320px"))
        c["slider"] = W.IntSlider(min=0, max=0, value=0, description="index", continuous_update=False)
        c["previous"] = W.Button(description="◀ previous", layout=W.Layout(width="110px"))
        c["next"] = W.Button(description="next ▶", layout=W.Layout(width="110px"))
        c["view"] = W.Image(format="png", layout=W.Layout(max_width="100%"))
        c["info"] = W.HTML()

        def guarded(action):
            def handler(change):
                if self._syncing:
                    return
                try:
                    action(change)
                except Exception as exc:  # shown in the widget; a callback must not die silently
                    self._show_error(exc)
            return handler

        c["run"].observe(guarded(lambda ch: self.select_run(ch["new"])), names="value")
        c["compare"].observe(guarded(lambda ch: self.select_compare_run(ch["new"] or None)), names="value")
        c["split"].observe(guarded(lambda ch: self.select_split(ch["new"])), names="value")
        c["image"].observe(guarded(lambda ch: ch["new"] is not None and self.select_image(ch["new"])), names="value")
        c["slider"].observe(guarded(lambda ch: self.select_image(ch["new"])), names="value")
        c["previous"].on_click(guarded(lambda _: self.previous_image()))
        c["next"].on_click(guarded(lambda _: self.next_image()))
        return W.VBox([
            W.HBox([c["run"], c["compare"]]),
            W.HBox([c["split"]]),
            W.HBox([c["previous"], c["image"], c["next"], c["slider"]]),
            c["info"],
            c["view"],
        ])

    def _sync_controls(self) -> None:
        c = self._controls
        ids = self._safe(lambda: self.ids, [])
        self._syncing = True
        try:
            c["run"].value = self.run
            c["compare"].value = self.compare_run or ""
            c["split"].value = self.split
            options = [(f"{i + 1}: {sample_id}", i) for i, sample_id in enumerate(ids)]
            if list(c["image"].options) != options:
                c["image"].options = options
            c["image"].value = self.index if ids else None
            c["slider"].max = max(len(ids) - 1, 0)
            c["slider"].value = self.index
            c["slider"].disabled = c["previous"].disabled = c["next"].disabled = len(ids) < 2
        finally:
            self._syncing = False

    def _changed(self) -> None:
        """After every state change: the controls follow the state and the view is redrawn."""
        if self._widget is None:
            return
        self._sync_controls()
        try:
            view = self.view()
            self._controls["view"].value = self.render_png(view)
            self.error = None
            self._controls["info"].value = self._info_html(view)
        except Exception as exc:
            self._show_error(exc)

    def _show_error(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        if self._controls:
            import html

            self._controls["info"].value = f"<b style='color:#b00'>error:</b> {html.escape(self.error)}"

    def _info_html(self, view: _View | None) -> str:
        import html

        if self.run is None:
            return f"No run with a checkpoint under <code>{html.escape(str(self.results_dir))}</code>."
        if view is None:
            return "No images in this split."
        text = (f"<b>{html.escape(view.run)}</b> · {view.split} {view.index + 1}/{len(self.ids)} · "
                f"<code>{html.escape(view.sample_id)}</code> · image {_iou_text(view.iou)}")
        if view.compare_run is not None:
            text += f" · <b>{html.escape(view.compare_run)}</b> {_iou_text(view.compare_iou)}"
        return text


def _image_title(image: np.ndarray) -> str:
    """The image panel's title, saying what it shows of an image that is not 8-bit RGB."""
    bands = image.shape[2] if image.ndim == 3 else 1
    what = "" if bands == 3 else " (grey)" if bands == 1 else f" (band 1 of {bands}, grey)" if bands == 2 \
        else f" (bands 1-3 of {bands})"
    return "image" + what + ("" if image.dtype == np.uint8 else ", stretched min-max")


def _iou_text(iou: dict | None) -> str:
    if not iou or iou.get("miou") is None:
        return "IoU n/a"
    return f"IoU {100 * iou['miou']:.1f}%"
