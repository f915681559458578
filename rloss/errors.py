"""Errors that reach the user as one line (the command line prints them without a traceback)."""


class TrainingError(RuntimeError):
    """A run stopped for a reason the user can act on; the message says which and what to do."""
