"""Process-level settings for the CPU hot path.

EM routing allocates and frees vote-sized temporaries (tens of MB) many times per step. With
glibc's defaults each one is a fresh ``mmap`` that is unmapped on free, so every step re-faults
hundreds of MB of zeroed pages -- on two cores that costs as much as the arithmetic. Serving big
blocks from the heap and never trimming it keeps those pages mapped and warm. ``capsrobust bench``
sets the same thing through glibc's environment variables for its measuring subprocesses; this
module does it from inside a running process with ``mallopt``.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc malloc to serve large blocks from the heap and keep freed memory (no-op elsewhere).

    Returns True if both settings were applied. Memory is reused, not leaked: peak RSS stays that
    of the largest step.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
