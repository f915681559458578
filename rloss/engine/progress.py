"""Progress of long work: a bar that renders in a terminal and in a notebook, and the channel that
brings a study notebook's training progress to the terminal of ``python -m rloss study``.

    bar = progress_bar(total=2000, desc="small_pce_seed0")   # tqdm.auto: a widget in JupyterLab
    report_run(2, 9, "small_pce_seed0")                       # the run being trained, i of N
    announce("sweep small: chose 16x")                        # a line for the terminal, also under the study

A notebook run by papermill is a separate process whose output goes into the notebook, not to
the terminal. The study runner names a file in ``RLOSS_PROGRESS_FILE`` (the kernel inherits the
environment); inside the kernel, :func:`report_run` and the bars append one JSON line per event to
it, a few times a second at most, and the runner's ``rloss.study.display.StudyDisplay`` reads them
and draws the run, its iterations, the time left and the study's elapsed time. Without the
variable (a notebook opened by hand, ``python -m rloss train``) nothing is written.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tqdm.auto import tqdm

__all__ = ["PROGRESS_ENV", "progress_bar", "report_run", "announce"]

PROGRESS_ENV = "RLOSS_PROGRESS_FILE"
REPORT_EVERY_S = 0.5  # the longest a terminal waits for an iteration count; also bounds the writes


def _report(event: dict) -> None:
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    try:
        with open(path, "a") as f:  # one short write per line: whole lines for the reader
            f.write(json.dumps(event) + "\n")
    except OSError:
        pass  # progress is a courtesy: never stop the work for it


def report_run(index: int, count: int, name: str, skipped: bool = False) -> None:
    """The study trains run ``index`` of ``count``, ``name`` (``skipped``: finished before)."""
    _report({"event": "run", "index": index, "count": count, "name": name, "skipped": skipped})


def announce(text: str) -> None:
    """One line for whoever runs the work: printed to stderr (in a notebook, under its cell) and,
    under ``python -m rloss study``, written in the study's terminal too."""
    print(text, file=sys.stderr, flush=True)
    _report({"event": "line", "text": text})


class _ReportingBar(tqdm):
    """tqdm.auto's bar (a widget in a notebook, text in a terminal) that also reports its count."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._reported_at = 0.0
        self._report()

    def _report(self) -> None:
        self._reported_at = time.monotonic()
        _report({"event": "iterations", "name": self.desc, "n": self.n, "total": self.total, "unit": self.unit,
                 "initial": self.initial, "elapsed": round(self.format_dict["elapsed"], 3),
                 "postfix": self.postfix or ""})

    def set_postfix_str(self, s="", refresh=True):
        super().set_postfix_str(s, refresh)
        if getattr(self, "_reported_at", None) is not None:  # e.g. the runs in flight: shown at once
            self._report()

    def update(self, n=1):
        shown = super().update(n)
        if self.n == self.total or time.monotonic() - self._reported_at >= REPORT_EVERY_S:
            self._report()
        return shown

    def close(self):
        if not self.disable and getattr(self, "_reported_at", None) is not None:
            self._report()
        super().close()


def progress_bar(total: int, initial: int = 0, desc: str = "", unit: str = "it", **kwargs):
    """A progress bar for iterations: in a notebook a widget, in a terminal text on stderr;
    under ``python -m rloss study`` its count also reaches the runner's terminal."""
    bar_class = _ReportingBar if os.environ.get(PROGRESS_ENV) else tqdm
    options = {"file": sys.stderr, "dynamic_ncols": True, **kwargs}
    return bar_class(total=total, initial=initial, desc=desc, unit=unit, **options)
