"""Freed heap handed back to the operating system after the bursts that free most of it.

A full translation at 10,000 Ingresses, or a gateway's first sync (tens of megabytes of route
configurations copied into responses, then into gRPC's buffers), frees far more than it keeps.
CPython hands objects over 512 bytes — every encoded resource — to the C allocator, and glibc's
returns only the free memory at the top of its heap: the rest stays resident until reused (measured:
~50 MB at 10,000 Ingresses after a gateway synced). `malloc_trim(0)` releases every free page.

Large blocks are mapped on their own instead (`map_large_blocks`), so they never stay resident at all.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

# glibc maps a block of at least M_MMAP_THRESHOLD bytes on its own and unmaps it when it is freed. Left
# alone, it raises that threshold to the largest such block freed so far (up to 32 MiB): after the first
# multi-megabyte response, every later one comes from the heap, where what a burst frees stays resident
# and fragments it. Fixed at 256 KiB, measured at 10,000 Ingresses through a gateway's first sync:
# primed 306 -> 295 MiB, peak 352 -> 339, after the sync 349 -> 316; no more CPU per event.
MMAP_THRESHOLD_BYTES = 256 * 1024
_M_MMAP_THRESHOLD = -3  # <malloc.h>

# Resource bytes sent to gateways (or a full translation, which counts as this much) between releases.
RELEASE_AFTER_BYTES = 32 * 1024 * 1024


def _libc(name: str) -> Callable[..., int] | None:
    """A glibc allocator function, or None where the C library has none (musl's malloc_trim, macOS)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    return function


_TRIM = _libc("malloc_trim")


def map_large_blocks(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have every block of at least `threshold` bytes mapped on its own from now on (see above); False
    where the C library cannot. Call it before the process allocates much."""
    mallopt = _libc("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the operating system; False where it cannot."""
    return _TRIM is not None and bool(_TRIM(0))


class Releaser:
    """Says when to release: after a burst — at least `threshold` units of churn (bytes sent,
    full translations weighted as that many bytes) since the last release — once things have
    `settled` (every gateway applied the current snapshot), when what the burst freed is free. A
    gateway's first sync pauses for seconds while Envoy applies what it was sent: a release in
    such a pause left the rest of the sync's garbage resident (measured). What a burst's state
    keeps alive for a while (streams remember the mappings they derived) is freed by the changes
    after it: a trickle of churn is released too, at most once every `period` seconds. Never while
    idle, and only in a lull (no churn since the last look): a release walks the whole heap holding
    each arena's lock in turn, 0.8 s at 10,000 Ingresses (measured), and a change that needs the
    allocator meanwhile would wait for it."""

    def __init__(self, churn: Callable[[], int], settled: Callable[[], bool], threshold: int = RELEASE_AFTER_BYTES,
                 period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._churn, self._settled, self._threshold = churn, settled, threshold
        self._period, self._clock = period, clock
        self._released_at = 0  # churn counts from zero: what priming freed is released too
        self._seen = churn()  # the churn at the last look
        self._last = clock()

    def take(self) -> bool:
        """Is a release due? If so, the churn so far counts as released."""
        churn, now = self._churn(), self._clock()
        lull, self._seen = churn == self._seen, churn
        new = churn - self._released_at
        burst = new >= self._threshold
        trickle = new > 0 and now - self._last >= self._period
        if not (burst or trickle) or not lull or not self._settled():
            return False
        self._released_at, self._last = churn, now
        return True
