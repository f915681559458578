"""Checks of notebook parameters (papermill passes them as plain values): each failure is one
line naming the parameter and the value at fault."""

from __future__ import annotations

import numbers

from ..engine.config import LOSS_TYPES, is_plain_name
from ..engine.runs import run_name, study_of


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int, if it is an integer (not a bool, not 2.5, not "3") within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an integer {bounds}; got {value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a number > 0; got {value!r}")
    return float(value)


def check_distinct_list(name: str, values, allowed=None, item: str = "value") -> list:
    """A non-empty list without repeats: with ``allowed``, of those ``item``s (one outside them is
    "unknown"); else of integers >= 0 (seeds: a run name holds ``seed<n>``)."""
    what = f"values from {', '.join(allowed)}" if allowed is not None else "integers >= 0"
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name} must be a non-empty list of distinct {what}; got {values!r}")
    for i, value in enumerate(values):
        if allowed is None:
            check_integer(f"{name}[{i}]", value, 0)
        elif value not in allowed:
            raise ValueError(f"{name}: unknown {item} {value!r} (choose from {', '.join(allowed)})")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty list of distinct {what}; got {values!r}")
    return list(values)


def check_study_name(name: str, value) -> str:
    """A study name: the prefix of its runs' folder names, which :func:`rloss.engine.runs.study_of` reads back."""
    if not is_plain_name(value) or study_of(run_name(value, LOSS_TYPES[0], 0)) != value:
        raise ValueError(f"{name} must be a run-name prefix such as 'small' (a plain folder name); got {value!r}")
    return value
