"""shardgear.log_limit: the one rate limit of log lines a peer can cause at will (no processes)."""

from __future__ import annotations

import logging

import pytest

from shardgear.log_limit import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_per_key_goes_through_then_the_rest_is_counted_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    lim = LogLimiter(logging.getLogger("test.log_limit"), interval=10.0, burst=3, clock=clock)
    with caplog.at_level(logging.WARNING, "test.log_limit"):
        passed = [lim.warning("bad", "line %d", i) for i in range(10)]
        assert passed == [True] * 3 + [False] * 7
        assert lim.suppressed("bad") == 7
        assert lim.warning("other", "another kind")  # a budget of its own
        clock.now += 9.9
        assert not lim.warning("bad", "still in the window")
        clock.now += 0.1  # a new window
        assert lim.warning("bad", "after")
        assert lim.suppressed("bad") == 0
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "another kind",
        "after (8 more like this in the last 10 s not logged)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_lines_below_the_loggers_level_cost_nothing_and_are_not_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lim = LogLimiter(logging.getLogger("test.log_limit.quiet"), burst=1)
    with caplog.at_level(logging.ERROR, "test.log_limit.quiet"):
        assert not lim.warning("k", "hidden")
        assert lim.suppressed("k") == 0  # the logger would not have shown it anyway
        assert lim.error("k", "shown")
        assert not lim.error("k", "over the burst")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, "shown")]


def test_a_budget_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), burst=0)
    with pytest.raises(ValueError):
        LogLimiter(logging.getLogger("x"), interval=0)
