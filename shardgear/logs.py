"""Logging setup of every shardgear process: levels, formats, and the rate limit of noisy lines.

Levels are the stdlib's plus NOTICE (25, syslog's "normal but significant"): start, ready, reload,
stop and child restarts are logged at NOTICE, so they show at the default level (notice).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

NOTICE: Final = 25
logging.addLevelName(NOTICE, "NOTICE")

_handler: logging.Handler | None = None


def level_number(name: str) -> int:
    """The logging level of a ``--log-level`` name."""
    return NOTICE if name.lower() == "notice" else int(logging.getLevelName(name.upper()))


def setup(who: str, level: str) -> None:
    """Send every log record of this process to stderr, tagged with `who` (e.g. "front 0")."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s shardgear[{os.getpid()}] {who} %(levelname)s %(message)s")
    )
    root.addHandler(handler)
    _handler = handler
    set_level(level)


def set_level(level: str) -> None:
    """Change this process's log level (a reload)."""
    logging.getLogger().setLevel(level_number(level))
