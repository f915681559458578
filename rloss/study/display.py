"""The terminal of ``python -m rloss study``: the notebook's cells, then the iterations of the run
being trained, with the study's elapsed time, read from the channel of :mod:`rloss.engine.progress`."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..engine.progress import PROGRESS_ENV

POLL_S = 0.5  # how often the runner reads the channel and ticks the study's elapsed time
# Cells take seconds to hours each: their rate and ETA would say nothing, so the cell bar shows neither.
CELL_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| cell {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class StudyDisplay:
    """The study runner's terminal: one bar for the notebook being run (its cells), replaced by one
    for the iterations of the run being trained, both with the study's elapsed time.

        with StudyDisplay(step=3, steps=6, notebook="02_train_40px", start=t0) as display:
            papermill.execute_notebook(..., on_notebook_start=display.notebook_started,
                                       on_cell_start=display.cell_started)
    """

    def __init__(self, step: int, steps: int, notebook: str, start: float, file=None):
        self.prefix = f"[{step}/{steps}] {notebook}"
        self.start = start  # time.monotonic() when the study began
        self.file = file or sys.stderr
        self._lock = threading.RLock()  # the follower thread and papermill's hooks both draw
        self._stop = threading.Event()
        self._bar = None
        self._cells = None  # the notebook's cell count, once papermill has parameterized it
        self._run = None  # (index, count, name) of the run being trained
        self._postfix = ""  # what the kernel's bar shows after its count
        self._channel = None
        self._offset = 0
        self._thread = None

    # -- the channel -------------------------------------------------------------------------
    def __enter__(self):
        import tempfile

        fd, name = tempfile.mkstemp(prefix="rloss-progress-", suffix=".jsonl")
        os.close(fd)
        self._channel = Path(name)
        self._previous = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = name  # the kernel papermill starts inherits it
        self._thread = threading.Thread(target=self._follow, name="rloss-study-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *_):
        self._stop.set()
        self._thread.join()
        self._read()  # the last events
        with self._lock:
            if exc_type is None and self._bar is not None and self._bar.unit == "cell" and self._bar.total:
                self._bar.update(self._bar.total - self._bar.n)  # every cell ran
            self._close_bar()
        if self._previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self._previous
        self._channel.unlink(missing_ok=True)
        return False

    def _follow(self) -> None:
        while not self._stop.wait(POLL_S):
            self._read()
            with self._lock:
                self._tick()

    def _read(self) -> None:
        with self._lock:
            try:
                with open(self._channel, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except OSError:
                return
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits for the next read
            self._offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self._handle(event)

    # -- drawing -------------------------------------------------------------------------------
    def _new_bar(self, total, desc: str, unit: str, initial: int = 0) -> None:
        self._close_bar()
        # smoothing 0: the rate is iterations over elapsed time, and the elapsed time is the kernel's
        self._bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.file, dynamic_ncols=True,
                         leave=True, bar_format=CELL_FORMAT if unit == "cell" else None,
                         postfix=self._elapsed(), smoothing=0)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._tick()
            self._bar.close()
            self._bar = None

    def _elapsed(self) -> str:
        return f"study {clock(time.monotonic() - self.start)}"

    def _tick(self, force: bool = False) -> None:
        """The bar's own postfix and the study's elapsed time, redrawn when the text changes (once a
        second at most) or when ``force``d."""
        if self._bar is None:
            return
        text = ", ".join(part for part in (self._postfix if self._bar.unit != "cell" else "", self._elapsed()) if part)
        if force or self._bar.postfix != text:
            self._bar.set_postfix_str(text, refresh=True)

    def _handle(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "line":
            tqdm.write(f"{self.prefix} {event.get('text', '')}", file=self.file)
        elif kind == "run":
            self._run = (event["index"], event["count"], event["name"])
            if event.get("skipped"):
                tqdm.write(f"{self.prefix} run {event['index']}/{event['count']} {event['name']}: "
                           "finished before, skipped", file=self.file)
        elif kind == "iterations":
            name = event.get("name") or ""
            if self._run is not None and self._run[2] == name:
                desc = f"{self.prefix} run {self._run[0]}/{self._run[1]} {name}"
            else:  # a bar of other work in the notebook
                desc = f"{self.prefix} {name}"
            if self._bar is None or self._bar.desc != desc:
                # a resumed run starts part-way: its rate and time left count this session's iterations
                self._new_bar(total=event["total"], desc=desc, unit=event.get("unit", "it"),
                              initial=event.get("initial", event["n"]))
            self._bar.total = event["total"]
            # the kernel's clock (tqdm's is time.time): events arrive in batches, twice a second
            self._bar.start_t = time.time() - event.get("elapsed", 0.0)
            self._bar.n = event["n"]
            self._postfix = event.get("postfix") or ""  # e.g. the runs in flight of a parallel bar
            self._tick(force=True)  # every count drawn: they come twice a second

    # -- papermill's hooks (nbclient's on_notebook_start, on_cell_start) --------------------------
    def notebook_started(self, notebook, **_) -> None:
        with self._lock:
            self._cells = len(notebook.cells)  # with papermill's injected parameters
            self._new_bar(total=self._cells, desc=self.prefix, unit="cell")

    def cell_started(self, cell, cell_index: int, **_) -> None:
        self._read()  # the previous cell's last events first: they belong before this cell
        with self._lock:
            if self._bar is None or self._bar.unit != "cell":  # back from a training run's bar
                self._new_bar(total=self._cells, desc=self.prefix, unit="cell", initial=cell_index)
            self._bar.update(cell_index - self._bar.n)  # the cells finished before this one
            self._tick()
