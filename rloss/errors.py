"""Errors that reach the user as one line (the command line prints them without a traceback)."""

from __future__ import annotations

import re

# torch re-raises a DataLoader worker's exception with this header and the worker's traceback.
_WORKER_HEADER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_QUALIFIED_TYPE = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Exit|Warning): ")


class TrainingError(RuntimeError):
    """A run stopped for a reason the user can act on; the message says which and what to do."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line for the command line: for an error raised in a
    DataLoader worker, the worker's own message (the last line of its traceback, without the
    exception's type); for an OSError, the file and the reason."""
    text = str(exc).strip()
    if _WORKER_HEADER.match(text):
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return _QUALIFIED_TYPE.sub("", last, count=1)
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
