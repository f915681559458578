"""SIGTERM and SIGHUP end a command as Ctrl-C does.

A scheduler, ``timeout``, ``docker stop`` or a closed terminal sends SIGTERM or SIGHUP to one
process, where Ctrl-C sends SIGINT to the terminal's whole process group. By default such a
process dies on the spot: its lock and a half-written file stay behind, and its children (a
study's Jupyter kernel, the training processes of ``--parallel-runs``) go on as orphans. Under
:func:`stop_like_ctrl_c` the process instead passes SIGINT on to its descendants, as Ctrl-C
would have, and raises :class:`Terminated` (a ``KeyboardInterrupt``), so the same cleanup runs:
locks released, partial files removed, checkpoints kept for ``--resume``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
GRACE_S = 5.0  # how long the descendants get to end on SIGINT before SIGKILL


class Terminated(KeyboardInterrupt):
    """The process was asked to end by ``signum``; ``exit_code`` is the shell's 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 128 + the signal's number for a :class:`Terminated`."""
    return getattr(interrupt, "exit_code", 130)


def reason(interrupt: KeyboardInterrupt) -> str:
    return f"stopped by {interrupt.signal_name}" if isinstance(interrupt, Terminated) else "interrupted"


def descendants(pid: int | None = None) -> list:
    """Every process below ``pid`` (this one by default): ``psutil.Process`` objects (which tell a
    reused pid from the process they were), or pids from Linux's /proc where psutil is missing."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return [p for p in psutil.Process(pid).children(recursive=True) if not _is_tracker(p.cmdline)]
        except psutil.Error:  # the process ended meanwhile
            return []
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return [p for p in found if not _is_tracker(lambda: (Path("/proc") / str(p) / "cmdline").read_text().split("\0"))]


def _is_tracker(cmdline) -> bool:
    """multiprocessing's resource tracker: it ends by itself once its parent has, after freeing what
    the workers left (ended early, it is started again at exit with a traceback per resource)."""
    try:
        return any("multiprocessing.resource_tracker" in part for part in cmdline())
    except Exception:  # ended meanwhile
        return False


def _send(processes: list, signum: int) -> list:
    """``signum`` to each process still running; returns those."""
    alive = []
    for process in processes:
        try:
            if isinstance(process, int):
                os.kill(process, signum)
            elif process.is_running():
                process.send_signal(signum)
            else:
                continue
            alive.append(process)
        except Exception:  # ended meanwhile, or not ours to signal
            continue
    return alive


def _running(processes: list) -> list:
    return _send(processes, 0)


def end_processes(processes: list, grace_s: float = GRACE_S) -> None:
    """SIGINT to each of ``processes`` still running, then SIGKILL to those alive after ``grace_s``
    (a process started where SIGINT is ignored, e.g. under nohup, ignores it)."""
    if not _send(processes, signal.SIGINT):
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _running(processes):
        time.sleep(0.1)
    _send(processes, signal.SIGKILL)


@contextmanager
def stop_like_ctrl_c():
    """Within the block, SIGTERM and SIGHUP pass SIGINT on to the descendants and raise
    :class:`Terminated` here (once: a second signal during the cleanup only passes on). On leaving
    by an interrupt, no descendant is left running: neither those of the moment the signal came
    (a Jupyter kernel shut down meanwhile leaves its children to init) nor later ones. Only the
    main thread can install handlers; elsewhere the block runs unchanged."""
    raised, seen = [], []

    def handler(signum, frame):
        now = descendants()
        seen.extend(now)
        _send(now, signal.SIGINT)
        if not raised:
            raised.append(signum)
            # The command ends: what libraries log about the children it ends (nbclient's "Kernel died",
            # asyncio's unretrieved task of the cell that ran) is not an error to report.
            logging.disable(logging.CRITICAL)
            raise Terminated(signum)

    def swallowed(unraisable):
        # Raised during a __del__, the interrupt is printed and ignored by Python: sent again, from a
        # thread a moment later, so that it is raised once the __del__ has returned.
        if isinstance(unraisable.exc_value, Terminated):
            raised.clear()
            threading.Timer(0.05, os.kill, (os.getpid(), signal.Signals[unraisable.exc_value.signal_name])).start()
        else:
            previous_hook(unraisable)

    try:
        previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, swallowed
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if interrupted or raised:  # also when the block caught the interrupt itself (rloss study does)
            end_processes(seen + descendants())
        for signum, old in previous.items():
            signal.signal(signum, old)
        sys.unraisablehook = previous_hook
        sys.stderr.flush()
