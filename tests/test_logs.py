"""Log formats and priorities (no processes; the rate limit: tests/test_log_limit.py)."""

from __future__ import annotations

import logging
import os

from shardgear import logs


def record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("t", level, __file__, 1, msg, None, exc_info)


def test_syslog_priorities() -> None:
    assert [logs.syslog_priority(lv) for lv in (10, 20, 25, 30, 40, 50)] == [7, 6, 5, 4, 3, 2]


def test_the_journal_format_is_one_line_per_record() -> None:
    f = logs.JournalFormatter("front0")
    assert f.format(record(logging.WARNING, "closing")) == "<4>front0: closing"
    line = f.format(record(logging.CRITICAL, "crashed", exc=True))
    assert "\n" not in line and line.startswith("<2>front0: crashed\\nTraceback")
    assert "ValueError: boom" in line


def test_journal_stream_must_name_stderr(monkeypatch) -> None:
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert not logs.stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", "junk")
    assert not logs.stderr_is_journal()

