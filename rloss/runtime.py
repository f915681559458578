"""Process-level settings that make CPU training faster."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_retaining = False


def retain_large_allocations() -> bool:
    """Keeps freed large blocks in the heap instead of returning them to the OS.

    glibc serves allocations above its mmap threshold (at most 32 MiB by
    default) with fresh pages and unmaps them on free, so a training step that
    allocates the same large tensors every iteration page-faults all of them in
    again: about 20% of the DenseCRF loss's CPU time for N=12, K=21, 256x256
    (benchmarks/README.md). After this call the process's resident memory stays
    near its peak instead. Returns False (and changes nothing) where the C
    library is not glibc. Opt-in: it changes the whole process's allocator.
    """
    global _retaining
    if _retaining:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _retaining = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _retaining
