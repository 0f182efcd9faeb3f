"""Give freed memory back to the operating system after a burst; keep the garbage collector's pauses
short.

Under a burst of uploads malloc's heap grows and fragments: small blocks (request chunks, Python objects)
stay scattered across it, so it cannot shrink from its top and the process's RSS stays at its peak after
the burst. ``trim_heap`` (glibc's ``malloc_trim``) releases every whole free page inside the heap;
``app.engine.admission.HeapTrimmer`` runs it once no request holds memory. Measured on a synthetic burst: RSS
566 MB after freeing, 66 MB after trimming. (Fixing malloc's mmap threshold instead gave the same
result but cost about 0.5 ms per request: every large buffer became its own mapping.)
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterator


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
    cannot shrink from its top; trimming releases every whole free page inside it. A full garbage
    collection first: a refused request's exception and its traceback form a cycle that keeps the
    request's frames, hence its upload and decoded audio, alive until the cyclic collector runs."""
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[None]:
    """While serving, leave the objects that start-up made (modules, the app, schemas, the model's
    sessions: hundreds of thousands) out of the cyclic collector's full passes (``gc.freeze``).

    A full pass holds the GIL, so it stalls the event loop and every request with it: measured under
    2x overload, a full pass every 5-12 s took 40-98 ms, the tail of the 429s' latency. The start-up
    objects live as long as the process, so scanning them finds nothing. Unfrozen again on shutdown
    (several apps in one process, as in tests, would otherwise keep each other's garbage forever)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
