"""Logging setup of every shardgear process: levels and the two formats (rate-limited lines are
`shardgear.log_limit`'s).

Levels are the stdlib's plus NOTICE (25, syslog's "normal but significant"): start, ready, reload,
stop and child restarts are logged at NOTICE, so they show at the default level (notice).

Formats (``--log-format``):

* ``human``: ``2026-01-02 03:04:05,678 shardgear[PID] front0 WARNING message``, a traceback on the
  lines after it.
* ``journal``: for systemd-journald's stream protocol (``systemd.exec(5)``, StandardError=journal):
  ``<N>front0: message``, one line per record. ``<N>`` is the record's syslog priority (sd-daemon(3)
  prefixes, so ``journalctl -p warning`` filters); no timestamp and no pid of our own, since the
  journal records both. The journal splits a stream at newlines, so a record's newlines (a
  traceback's) are written as the two characters ``\\n``: a child's traceback stays one record.
* ``auto`` (default): ``journal`` when stderr is the journal's stream (``$JOURNAL_STREAM`` holds the
  device and inode of stderr, as systemd sets it), else ``human``.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Final

NOTICE: Final = 25
logging.addLevelName(NOTICE, "NOTICE")

#: syslog priorities of the logging levels (sd-daemon.h: SD_ERR "<3>" ... SD_DEBUG "<7>").
_PRIORITIES: Final = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (NOTICE, 5))

_handler: logging.Handler | None = None


def level_number(name: str) -> int:
    """The logging level of a ``--log-level`` name."""
    return NOTICE if name.lower() == "notice" else int(logging.getLevelName(name.upper()))


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0-7) of a logging level."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 6 if levelno >= logging.INFO else 7


def stderr_is_journal() -> bool:
    """True if stderr is connected to systemd-journald (``$JOURNAL_STREAM`` is ``DEV:INODE`` of
    the stream systemd connected; a child process whose stderr was redirected elsewhere must not
    trust the inherited variable, hence the comparison)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>WHO: message`` on one line (newlines escaped as ``\\n``)."""

    def __init__(self, who: str) -> None:
        super().__init__()
        self.who = who

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # the message, then any traceback on new lines
        text = text.replace("\\", "\\\\").replace("\n", "\\n")
        return f"<{syslog_priority(record.levelno)}>{self.who}: {text}"


def human_formatter(who: str) -> logging.Formatter:
    pid = os.getpid()
    return logging.Formatter(f"%(asctime)s shardgear[{pid}] {who} %(levelname)s %(message)s")


def setup(who: str, level: str, fmt: str = "auto") -> None:
    """Send every log record of this process to stderr, tagged with `who` (e.g. "front0"), in
    format `fmt` (auto, human, journal)."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    journal = fmt == "journal" or (fmt == "auto" and stderr_is_journal())
    handler.setFormatter(JournalFormatter(who) if journal else human_formatter(who))
    root.addHandler(handler)
    _handler = handler
    set_level(level)


def set_level(level: str) -> None:
    """Change this process's log level (a reload)."""
    logging.getLogger().setLevel(level_number(level))

