"""Rate-limited log lines for what a peer can cause at will (denials, refused connections,
failed TLS handshakes): a flood of bad requests must not become a flood of log lines.

`LogLimiter.warning` logs at most `burst` lines per `key` (e.g. "denied submit") in each
`interval` seconds; at the next line after a quiet period it says how many were suppressed.
"""

from __future__ import annotations

import logging
import time
from typing import Final

INTERVAL: Final = 10.0
BURST: Final = 5
_MAX_KEYS: Final = 1024


class LogLimiter:
    """Per-key token counting over fixed windows (monotonic seconds)."""

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, burst: int = BURST):
        self.logger = logger
        self.interval = interval
        self.burst = burst
        # key -> [window start, lines logged in the window, lines suppressed]
        self.windows: dict[str, list[float]] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` at WARNING unless `key` has used its burst; True if logged."""
        now = time.monotonic()
        w = self.windows.get(key)
        if w is None or now - w[0] >= self.interval:
            suppressed = int(w[2]) if w is not None else 0
            if len(self.windows) >= _MAX_KEYS:
                self.windows.clear()
            self.windows[key] = [now, 1.0, 0.0]
            if suppressed:
                msg += " (%d more like this in the last %g s not logged)"
                args = (*args, suppressed, self.interval)
            self.logger.warning(msg, *args)
            return True
        if w[1] < self.burst:
            w[1] += 1
            self.logger.warning(msg, *args)
            return True
        w[2] += 1
        return False
