"""Rate-limited log lines: what a peer can trigger at will must not be able to fill a disk.

A `RateLimitedLog` lets at most ``burst`` lines through per ``interval`` seconds (journald's
``RateLimitBurst`` / ``RateLimitIntervalSec``, applied before the line is even formatted) and
counts the ones it drops; the first line let through after a drop is preceded by one line saying
how many were suppressed. Each instance is one budget: give each kind of event its own (protocol
errors, slow readers, accept failures) so a flood of one cannot hide the others.

Pure apart from the `logging.Logger` it writes to; the clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

DEFAULT_BURST: Final = 20
"""Lines let through per interval by default."""
DEFAULT_INTERVAL: Final = 10.0
"""Seconds of one interval by default."""


class RateLimitedLog:
    """At most `burst` lines per `interval` seconds to `logger`; the rest are counted.

    Args:
        logger: where the lines go.
        burst: lines let through per interval (at least 1).
        interval: seconds.
        clock: monotonic seconds (``time.monotonic`` by default).
    """

    __slots__ = ("_burst", "_clock", "_count", "_interval", "_logger", "_start", "suppressed")

    suppressed: int
    """Lines dropped since the last one let through."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = DEFAULT_BURST,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self._logger = logger
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._start = -interval  # the first line opens an interval
        self._count = 0
        self.suppressed = 0

    def log(self, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at `level` if the budget allows; return whether it was logged."""
        if not self._logger.isEnabledFor(level):
            return False
        now = self._clock()
        if now - self._start >= self._interval:
            self._start = now
            self._count = 0
        if self._count >= self._burst:
            self.suppressed += 1
            return False
        self._count += 1
        if self.suppressed:
            self._logger.log(
                level,
                "%d similar log lines suppressed (more than %d in %g s)",
                self.suppressed,
                self._burst,
                self._interval,
            )
            self.suppressed = 0
        self._logger.log(level, msg, *args)
        return True

    def warning(self, msg: str, *args: object) -> bool:
        """`log` at WARNING."""
        return self.log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> bool:
        """`log` at ERROR."""
        return self.log(logging.ERROR, msg, *args)
