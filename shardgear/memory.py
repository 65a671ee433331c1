"""Giving freed memory back to the system after large messages (glibc's malloc).

CPython takes every object over 512 bytes from malloc. glibc serves big blocks with mmap (given
back on free) only above a threshold that rises, up to 32 MiB, each time such a block is freed,
so after a few large messages a front's payloads live in its heap, and the heap keeps their pages
after they are freed: measured with six connections that never read (BENCHMARKS.md, "Memory"), a
front stayed at 337 MB, then 570 MB, after the connections closed, growing round after round.

`Trimmer` calls ``malloc_trim(0)``, which returns the free pages inside the heap too
(``madvise(MADV_DONTNEED)``, glibc >= 2.8), once large buffers have been let go: the shell calls
`freed` with the bytes it dropped and `maybe_trim` once a loop turn; a trim runs when at least
``TRIM_AFTER`` bytes were freed and ``TRIM_INTERVAL`` seconds have passed since the last one.
Fixing the mmap threshold instead (``M_MMAP_THRESHOLD``) returns memory too, but makes every
large payload pay for fresh pages; see BENCHMARKS.md. Without glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

TRIM_AFTER: Final = 8 * 1024 * 1024
"""Bytes freed since the last trim before another is worth its cost."""
TRIM_INTERVAL: Final = 1.0
"""Seconds between two trims at most (a trim walks the whole heap)."""


def _load_malloc_trim() -> Callable[[int], int] | None:
    # The C library is already in the process: look the symbol up there (dlopen(NULL)), not with
    # ctypes.util.find_library, which runs ldconfig (10 ms at every front's start).
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Trimmer:
    """Counts large frees and trims the heap now and then (see the module docstring)."""

    __slots__ = ("_clock", "_freed", "_last", "_trim", "due", "trims")

    due: bool
    """Enough has been freed for a trim (the shell calls `maybe_trim` while this is set)."""
    trims: int
    """Trims done (for tests and logs)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._trim = _load_malloc_trim()
        self._clock = clock
        self._freed = 0
        self._last = 0.0
        self.due = False
        self.trims = 0

    def freed(self, nbytes: int) -> None:
        """`nbytes` of large buffers were just dropped."""
        self._freed += nbytes
        if self._freed >= TRIM_AFTER and self._trim is not None:
            self.due = True

    def maybe_trim(self, interval: float = TRIM_INTERVAL) -> bool:
        """Trim if enough was freed and the last trim is at least `interval` seconds old; return
        whether it did."""
        if not self.due or self._trim is None:
            return False
        now = self._clock()
        if now - self._last < interval:
            return False
        self._last = now
        self._freed = 0
        self.due = False
        self._trim(0)
        self.trims += 1
        return True
