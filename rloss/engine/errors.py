"""Errors that reach the user as one line (the command line prints them without a traceback)."""

from __future__ import annotations

import re

# torch re-raises a DataLoader worker's exception with this header and the worker's traceback.
_WORKER_HEADER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_QUALIFIED_TYPE = re.compile(r"^[\w.]+(Error|Exception|Interrupt|Exit|Warning): ")


class TrainingError(RuntimeError):
    """A run stopped for a reason the user can act on; the message says which and what to do."""


def first_line(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The line of ``exc``'s message that says what went wrong, cut at ``limit`` characters: the first
    one, or the second after a header ending in ``:`` (torch's "Error(s) in loading state_dict for
    ...:"); with ``typed``, after the exception's type name."""
    lines = [t.strip() for t in str(exc).strip().splitlines() if t.strip()]
    line = lines[1] if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    line = line if len(line) <= limit else line[:limit] + "..."
    if typed:
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line or type(exc).__name__


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
