"""Rate-limited log lines for what a peer can cause at will (denials, refused connections, failed
TLS handshakes, protocol errors, slow readers): a flood of bad requests must not become a flood
of log lines, nor fill a disk.

`LogLimiter.warning` (or `error`, or `log` at any level) logs at most `burst` lines per `key`
(e.g. "denied submit", "protocol error") in each `interval` seconds, so a flood of one kind
cannot hide the others; at the next line of that key after its window ends it says how many were
suppressed. A line the logger would not show anyway (below its level) costs one check and is
not counted. Pure apart from the `logging.Logger` it writes to; the clock is injectable for
tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

INTERVAL: Final = 10.0
"""Seconds of one window by default."""
BURST: Final = 5
"""Lines let through per key and window by default."""
_MAX_KEYS: Final = 1024
"""Windows kept at most (keys may name a peer): past it they all start again."""


class LogLimiter:
    """Per-key line counting over fixed windows (monotonic seconds).

    Args:
        logger: where the lines go.
        interval: seconds of one window (positive).
        burst: lines let through per key and window (at least 1).
        clock: monotonic seconds (``time.monotonic`` by default).
    """

    __slots__ = ("burst", "clock", "interval", "logger", "windows")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be at least 1 and interval positive")
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.clock = clock
        # key -> [window start, lines logged in the window, lines suppressed]
        self.windows: dict[str, list[float]] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at `level` unless `key` has used its burst; True if logged."""
        logger = self.logger
        if not logger.isEnabledFor(level):
            return False
        now = self.clock()
        w = self.windows.get(key)
        if w is None or now - w[0] >= self.interval:
            suppressed = int(w[2]) if w is not None else 0
            if len(self.windows) >= _MAX_KEYS:
                self.windows.clear()
            self.windows[key] = [now, 1.0, 0.0]
            if suppressed:
                msg += " (%d more like this in the last %g s not logged)"
                args = (*args, suppressed, self.interval)
            logger.log(level, msg, *args)
            return True
        if w[1] < self.burst:
            w[1] += 1
            logger.log(level, msg, *args)
            return True
        w[2] += 1
        return False

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """`log` at WARNING."""
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        """`log` at ERROR."""
        return self.log(logging.ERROR, key, msg, *args)

    def suppressed(self, key: str) -> int:
        """Lines of `key` dropped in its current window (not yet reported)."""
        w = self.windows.get(key)
        return int(w[2]) if w is not None else 0
