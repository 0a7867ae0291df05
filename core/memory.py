"""Process memory that goes back to the system after a large decode.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which buffers
of a decode (a 4096x4096 slice holds several of 32-134 MiB) are carved from per-thread heaps that
keep the pages: a server's resident memory would stay at its worst request. A fixed threshold keeps
every buffer of 1 MiB and more in its own mapping, returned when freed. Entry points call this once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter (glibc malloc.h)
THRESHOLD_BYTES = 1024 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB; False where the C library is not glibc (nothing to do)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):  # musl, macOS: their allocators return large blocks anyway
        return False
