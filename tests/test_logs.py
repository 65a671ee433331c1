"""Log formats, priorities and the rate limit (no processes)."""

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


def test_rate_limited_warnings_count_what_they_leave_out(caplog) -> None:
    log = logging.getLogger("test.ratelimit")
    limited = logs.RateLimitedLog(log, burst=3, interval=3600)
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        for i in range(10):
            limited.warning("closing %d", i)
    assert [r.getMessage() for r in caplog.records] == ["closing 0", "closing 1", "closing 2"]
    assert limited.suppressed == 7
    limited.window_end = 0.0  # the window is over
    with caplog.at_level(logging.WARNING, "test.ratelimit"):
        limited.warning("closing again")
    assert "7 more such warnings were not logged" in caplog.records[-2].getMessage()
