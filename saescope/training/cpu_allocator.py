"""Stop glibc from returning large freed blocks to the OS during CPU training.

A dense SAE step allocates several [batch, d_sae] temporaries (76 MB each at 4096 × 4608). glibc
serves blocks that large with mmap and unmaps them on free, so every step page-faults and zeroes
hundreds of MB afresh: measured at ~30% of a CPU step (benchmarks/RESULTS.md). Disabling mmap
allocations and heap trimming lets freed blocks be reused. The cost: the process keeps its peak
memory until it exits, which suits a training run. No-op on other C libraries and platforms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger("saescope")
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied = False


def retain_freed_memory() -> bool:
    """Apply the glibc settings once per process; returns whether they are in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**30 * 64) == 1:
        _applied = True
        logger.debug("glibc: mmap allocations and heap trimming disabled for faster CPU steps")
    return _applied
