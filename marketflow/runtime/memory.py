"""Give freed heap memory back to the system: glibc's `malloc_trim`, run by the daemon once a minute.

CPython keeps small objects in its own arenas; anything larger (frame buffers, decoded batches, lists of
trades on their way to storage) comes from glibc's malloc, which keeps freed chunks for reuse and only
hands the top of its heap back to the kernel. A daemon that churns through megabytes of buffers a second
ends up with free pages scattered inside the heap, still counted in its RSS, and the figure creeps up
over hours although nothing is held. `malloc_trim(0)` releases those pages (`madvise(MADV_DONTNEED)`)
in a few milliseconds. Where there is no glibc (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable

import attrs
import trio

__all__ = ["TRIM_INTERVAL_S", "HeapTrimmer", "release_free_memory", "rss_bytes"]

TRIM_INTERVAL_S = 60.0

log = logging.getLogger("marketflow.runtime.memory")


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where glibc's `malloc_trim` is not available."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def rss_bytes() -> int:
    """This process's resident memory (Linux `/proc/self/statm`); 0 where that cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@attrs.define
class HeapTrimmer:
    """Calls :func:`release_free_memory` every `interval_s` and counts what it gave back (RSS before less
    after, for `/metrics`). Stops at once where `malloc_trim` is not available."""

    interval_s: float = TRIM_INTERVAL_S
    trims: int = 0
    released_bytes: int = 0
    available: bool = attrs.field(factory=lambda: _malloc_trim is not None)

    def trim(self) -> None:
        before = rss_bytes()
        if not release_free_memory():
            self.available = False
            return
        self.trims += 1
        self.released_bytes += max(0, before - rss_bytes())

    async def run(self) -> None:
        """Trim every `interval_s` seconds until cancelled."""
        if not self.available:
            log.info("malloc_trim is not available here; freed heap pages stay with the process")
            return
        while self.available:
            await trio.sleep(self.interval_s)
            self.trim()
