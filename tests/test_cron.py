"""Cron schedules (shardgear/cron.py): SUBMIT_JOB_SCHED parsing, matching minutes, one run per match
across restarts, a missed run once at start. Time is passed in; the database is a real file."""

from __future__ import annotations

import sqlite3
import struct
from datetime import datetime
from pathlib import Path

import pytest

from shardgear.cron import Crontab, last_match, next_match, parse_fields
from shardgear.invariants import check_invariants
from shardgear.scheduler import Scheduler

F = b"report"


def ts(*args: int) -> float:
    """Local wall-clock time -> epoch seconds (the server's time zone, as cron uses)."""
    return datetime(*args).timestamp()  # type: ignore[arg-type]


def sched_body(func: bytes, unique: bytes, fields: str, data: bytes = b"d") -> bytes:
    return b"\0".join([func, unique, *[f.encode() for f in fields.split(" ")], data])


def reply(packet: bytes) -> tuple[int, bytes]:
    magic, ptype, size = struct.unpack("!4sII", packet[:12])
    assert magic == b"\0RES" and size == len(packet) - 12
    return ptype, packet[12:]


class Handles:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> bytes:
        self.n += 1
        return b"H:cron:%d" % self.n


def make(tmp_path: Path) -> tuple[Crontab, Scheduler]:
    tab = Crontab(str(tmp_path / "cron.4730.sqlite3"), lambda f: True)
    return tab, Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t")


def queued(s: Scheduler) -> list[tuple[bytes, bytes, bytes]]:
    return [(j.func, j.unique, j.data) for j in s.jobs()]


def test_fields_join_into_one_expression_and_empty_means_any() -> None:
    assert (
        parse_fields([b"*/5", b"", b"1-15", b"jan,jun", b"mon-fri"]) == "*/5 * 1-15 jan,jun mon-fri"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([b"61", b"*", b"*", b"*", b"*"], "Bad minute"),
        ([b"*", b"25", b"*", b"*", b"*"], "Bad hour"),
        ([b"0", b"0", b"30", b"2", b"*"], "Bad day-of-month"),
        ([b"1 2", b"*", b"*", b"*", b"*"], "no spaces"),
        ([b"\xff", b"*", b"*", b"*", b"*"], "not ASCII"),
        ([b"*", b"*", b"*", b"*"], "five fields"),
        ([b"1" * 5000, b"*", b"*", b"*", b"*"], "minute field: longer than 256"),
        ([b"1" * 200 + b"-2", b"*", b"*", b"*", b"*"], "bad schedule"),  # a huge number
    ],
)
def test_bad_fields_are_refused(fields: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_fields(fields)
    assert "digits" not in str(caught.value)  # never Python's own int() wording


def test_matching_minutes_in_local_time() -> None:
    assert next_match("*/15 * * * *", ts(2026, 3, 1, 10, 7, 30)) == ts(2026, 3, 1, 10, 15)
    assert next_match("* * * * *", ts(2026, 3, 1, 10, 0)) == ts(2026, 3, 1, 10, 1)
    assert next_match("0 9 * * mon", ts(2026, 3, 1, 10, 0)) == ts(2026, 3, 2, 9, 0)
    assert last_match("* * * * *", ts(2026, 3, 1, 10, 0)) == ts(2026, 3, 1, 10, 0)
    assert last_match("* * * * *", ts(2026, 3, 1, 10, 0, 59)) == ts(2026, 3, 1, 10, 0)
    assert last_match("0 * * * *", ts(2026, 3, 1, 10, 59)) == ts(2026, 3, 1, 10, 0)


def test_a_schedule_runs_at_each_matching_minute_and_once_each(tmp_path: Path) -> None:
    tab, s = make(tmp_path)
    now = ts(2026, 3, 1, 10, 0, 20)
    t, handle = reply(tab.submit(sched_body(F, b"u", "*/2 * * * *", b"payload"), now, Handles()))
    assert (t, handle) == (8, b"H:cron:1")  # JOB_CREATED
    assert tab.next_deadline() == ts(2026, 3, 1, 10, 2)
    assert tab.run_due(s, ts(2026, 3, 1, 10, 1, 59)) == 0
    assert tab.run_due(s, ts(2026, 3, 1, 10, 2, 0)) == 1
    assert queued(s) == [(F, b"u", b"payload")]
    assert tab.run_due(s, ts(2026, 3, 1, 10, 2, 30)) == 0  # the same minute never runs twice
    assert tab.next_deadline() == ts(2026, 3, 1, 10, 4)
    # the run's unique coalesces while the previous run is still queued
    assert tab.run_due(s, ts(2026, 3, 1, 10, 4, 1)) == 1
    assert len(queued(s)) == 1
    check_invariants(s)


def test_a_bad_submission_gets_an_error_packet(tmp_path: Path) -> None:
    tab, _ = make(tmp_path)
    t, body = reply(tab.submit(sched_body(F, b"u", "99 * * * *"), 0.0, Handles()))
    assert t == 19 and body.startswith(b"INVALID_ARGUMENT\0bad schedule")
    t, body = reply(tab.submit(b"f\0u\0*", 0.0, Handles()))
    assert t == 19 and body.startswith(b"INVALID_ARGUMENT\0")
    t, body = reply(tab.submit(sched_body(F, b"u" * 65, "* * * * *"), 0.0, Handles()))
    assert (t, body) == (19, b"ARGUMENT_TOO_LARGE\0Unique value too large")
    assert tab.schedules() == []


def test_the_same_function_and_unique_replace_the_schedule(tmp_path: Path) -> None:
    tab, _ = make(tmp_path)
    now = ts(2026, 3, 1, 10, 0, 20)
    tab.submit(sched_body(F, b"u", "0 * * * *", b"old"), now, Handles())
    tab.submit(sched_body(F, b"u", "30 * * * *", b"new"), now, Handles())
    tab.submit(sched_body(F, b"", "30 * * * *", b"other"), now, Handles())
    [a, b] = tab.schedules()
    assert (a.unique, b.unique) == (b"", b"u")
    assert (b.expr, b.data) == ("30 * * * *", b"new")


def test_a_restart_neither_repeats_nor_loses_a_minute(tmp_path: Path) -> None:
    tab, s = make(tmp_path)
    tab.submit(sched_body(F, b"u", "* * * * *"), ts(2026, 3, 1, 10, 0, 10), Handles())
    assert tab.run_due(s, ts(2026, 3, 1, 10, 1, 5)) == 1
    tab.commit()
    tab.close()
    again, s2 = make(tmp_path)
    assert again.load(ts(2026, 3, 1, 10, 1, 40)) == 1
    assert again.run_due(s2, ts(2026, 3, 1, 10, 1, 40)) == 0  # 10:01 already ran
    assert again.next_deadline() == ts(2026, 3, 1, 10, 2)


def test_runs_missed_while_down_run_once_at_start(tmp_path: Path) -> None:
    tab, s = make(tmp_path)
    tab.submit(sched_body(F, b"u", "* * * * *"), ts(2026, 3, 1, 10, 0, 10), Handles())
    tab.run_due(s, ts(2026, 3, 1, 10, 1, 0))
    tab.commit()
    tab.close()
    again, s2 = make(tmp_path)
    start = ts(2026, 3, 1, 12, 30, 15)  # two and a half hours later
    again.load(start)
    assert again.next_deadline() == ts(2026, 3, 1, 10, 2)
    assert again.run_due(s2, start) == 1
    assert len(queued(s2)) == 1
    assert again.next_deadline() == ts(2026, 3, 1, 12, 31)
    [sch] = again.schedules()
    assert sch.last_run == ts(2026, 3, 1, 12, 30)


def test_an_uncommitted_run_runs_again_after_a_restart(tmp_path: Path) -> None:
    tab, s = make(tmp_path)
    tab.submit(sched_body(F, b"u", "* * * * *"), ts(2026, 3, 1, 10, 0, 10), Handles())
    tab.run_due(s, ts(2026, 3, 1, 10, 1, 0))  # died before commit(): the run is not recorded
    again, s2 = make(tmp_path)
    again.load(ts(2026, 3, 1, 10, 1, 30))
    assert again.run_due(s2, ts(2026, 3, 1, 10, 1, 30)) == 1


def test_removal_is_durable(tmp_path: Path) -> None:
    tab, _ = make(tmp_path)
    tab.submit(sched_body(F, b"u", "* * * * *"), 0.0, Handles())
    assert tab.remove(F, b"u") and not tab.remove(F, b"u")
    again, _ = make(tmp_path)
    assert again.load(100.0) == 0


def test_a_shard_loads_only_the_schedules_of_its_functions(tmp_path: Path) -> None:
    path = str(tmp_path / "cron.4730.sqlite3")
    everything = Crontab(path, lambda f: True)
    everything.submit(sched_body(b"mine", b"", "* * * * *"), 0.0, Handles())
    everything.submit(sched_body(b"theirs", b"", "* * * * *"), 0.0, Handles())
    mine = Crontab(path, lambda f: f == b"mine")
    assert mine.load(10.0) == 1 and mine.schedules()[0].func == b"mine"


def test_no_file_is_created_until_the_first_schedule(tmp_path: Path) -> None:
    tab, _ = make(tmp_path)
    assert tab.load(0.0) == 0
    assert not (tmp_path / "cron.4730.sqlite3").exists()
    tab.submit(sched_body(F, b"", "* * * * *"), 0.0, Handles())
    with sqlite3.connect(tmp_path / "cron.4730.sqlite3") as c:
        assert list(c.execute("SELECT func, expr FROM schedules")) == [(F, "* * * * *")]
