"""Give freed memory back to the operating system.

glibc's malloc raises its mmap threshold after large blocks are freed (up to 32 MiB), so after a burst
of big uploads later buffers come from the heap, which it rarely returns: the process's RSS stays at
its peak. A fixed threshold keeps every large buffer (uploads, decoded audio) in its own mapping,
unmapped the moment it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def trim_heap() -> bool:
    """Hand the free pages inside malloc's heap back to the OS (glibc ``malloc_trim``; no-op elsewhere).

    Small blocks (request chunks, Python objects) live in the heap, which fragments under a burst and
    cannot shrink from its top; trimming releases every whole free page inside it."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False


def return_freed_memory_to_os() -> bool:
    """Fix glibc's mmap and trim thresholds (no-op elsewhere); True when set."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:  # not glibc (musl, macOS)
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, LARGE_BLOCK_BYTES)
    )
    log.debug("malloc thresholds fixed at %d bytes: %s", LARGE_BLOCK_BYTES, ok)
    return ok
