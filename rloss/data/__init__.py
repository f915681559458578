"""Data sets (VOC layout, synthetic scribbles), conversions and joint transforms."""

from .io import IGNORE_INDEX, DataError

__all__ = ["DataError", "IGNORE_INDEX"]
