"""SUBMIT_JOB_SCHED against the real server: a schedule submits its job at the next matching minute,
survives a restart, runs a missed minute once at start, and is listed and removed by admin commands.
(The minute arithmetic is tested with explicit time in tests/test_cron.py.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.gearclient import (
    ERROR,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    SUBMIT_JOB_SCHED,
    grab_until_job,
    parse_status,
    wait_for,
    worker,
)

pytestmark = pytest.mark.shardgear_only

GRAB_JOB_UNIQ = 30


def schedule(conn, func: bytes, unique: bytes, fields: str, data: bytes = b"") -> tuple[int, list]:
    conn.send(SUBMIT_JOB_SCHED, func, unique, *fields.split(" "), data)
    return conn.recv()


def schedules(conn) -> list[list[str]]:
    text = conn.admin("show schedules")
    return [line.split("\t") for line in text.splitlines() if line != "."]


def queued(conn, func: bytes) -> int:
    return parse_status(conn.admin("status")).get(func.decode(), [0])[0]


@pytest.mark.slow
def test_an_every_minute_schedule_submits_its_job_at_the_next_minute(
    server, connect, func_name: bytes
) -> None:
    client, w = connect(), connect(timeout=80)
    t, args = schedule(client, func_name, b"tick", "* * * * *", b"payload")
    assert t == JOB_CREATED and args[0].startswith(b"H:")
    submitted = time.time()
    worker(w, func_name)
    ptype, (handle, func, unique, data) = grab_until_job(w, GRAB_JOB_UNIQ, timeout=75, pause=0.5)
    ran = time.time()
    assert (ptype, func, unique, data) == (JOB_ASSIGN_UNIQ, func_name, b"tick", b"payload")
    assert handle != args[0]
    # at the first minute boundary after the submission, not before it
    assert int(ran // 60) == int(submitted // 60) + 1 or ran - submitted < 61


def test_bad_fields_get_an_error_and_no_schedule(server, connect, func_name: bytes) -> None:
    client = connect()
    t, (code, text) = schedule(client, func_name, b"u", "61 * * * *")
    assert (t, code) == (ERROR, b"INVALID_ARGUMENT")
    assert b"Bad minute" in text
    t, (code, _text) = schedule(client, func_name, b"u" * 65, "* * * * *")
    assert (t, code) == (ERROR, b"ARGUMENT_TOO_LARGE")
    assert [s for s in schedules(client) if s[0] == func_name.decode()] == []


def test_a_function_name_over_max_function_name_is_refused_at_submission(
    start_server, connect
) -> None:
    """Kept, such a schedule would be refused by its shard at each of its minutes (an ERROR in
    the log every minute, and a client told JOB_CREATED for a schedule that never runs)."""
    srv = start_server("--max-function-name", "16")
    client = connect(srv.address)
    t, (code, _text) = schedule(client, b"f" * 17, b"u", "* * * * *")
    assert (t, code) == (ERROR, b"ARGUMENT_TOO_LARGE")
    assert schedules(client) == []
    t, _args = schedule(client, b"f" * 16, b"u", "* * * * *")
    assert t == JOB_CREATED


def test_max_schedules_refuses_new_schedules_past_each_shards_share(
    start_server, connect, make_name
) -> None:
    """One client must not fill the schedules' database: `--max-schedules 2` on 2 shards keeps
    one per shard. Replacing a kept schedule (same function and unique) is never refused."""
    srv = start_server("--max-schedules", "2", "--shards", "2")
    client = connect(srv.address)
    a, b, other = make_name("s", shard=0), make_name("s", shard=0), make_name("s", shard=1)
    assert schedule(client, a, b"u", "* * * * *")[0] == JOB_CREATED
    t, (code, _text) = schedule(client, b, b"u", "* * * * *")
    assert (t, code) == (ERROR, b"QUEUE_ERROR")
    assert schedule(client, a, b"u", "*/5 * * * *")[0] == JOB_CREATED  # a replacement
    assert schedule(client, other, b"u", "* * * * *")[0] == JOB_CREATED  # the other shard's
    assert sorted(row[0] for row in schedules(client)) == sorted([a.decode(), other.decode()])


def test_schedules_are_listed_replaced_and_removed(server, connect, func_name: bytes) -> None:
    admin = connect()
    name = func_name.decode()
    assert schedule(connect(), func_name, b"a", "0 3 * * *")[0] == JOB_CREATED
    assert schedule(connect(), func_name, b"a", "*/10 * * * mon-fri", b"x")[0] == JOB_CREATED
    assert schedule(connect(), func_name, b"", "30 1 1 1 *")[0] == JOB_CREATED
    mine = [s for s in schedules(admin) if s[0] == name]
    assert [(s[1], s[2]) for s in mine] == [("", "30 1 1 1 *"), ("a", "*/10 * * * mon-fri")]
    assert all(int(s[3]) > time.time() and s[4] == "0" for s in mine)
    assert admin.admin(f"remove schedule {name} a") == "OK\r\n"
    assert admin.admin(f"remove schedule {name} a") == "ERR UNKNOWN_SCHEDULE\r\n"
    assert admin.admin(f"remove schedule {name}") == "OK\r\n"  # the empty unique
    assert [s for s in schedules(admin) if s[0] == name] == []


def test_a_schedule_survives_a_restart(
    start_server, connect, func_name: bytes, tmp_path: Path
) -> None:
    state = str(tmp_path)
    srv = start_server(state_dir=state)
    schedule(connect(srv.address), func_name, b"nightly", "15 2 * * *", b"d")
    port = srv.port
    srv.stop()
    again = start_server(port=port, state_dir=state)
    [row] = [s for s in schedules(connect(again.address)) if s[0] == func_name.decode()]
    assert row[1:3] == ["nightly", "15 2 * * *"]


def test_minutes_missed_while_down_run_once_at_start(
    start_server, connect, func_name: bytes, tmp_path: Path
) -> None:
    state = str(tmp_path)
    srv = start_server(state_dir=state)
    # an empty unique: runs never coalesce, so the queue counts the runs exactly
    assert schedule(connect(srv.address), func_name, b"", "* * * * *")[0] == JOB_CREATED
    port = srv.port
    srv.stop()
    # the server "was down" for two hours: its last run was then
    hour_ago = (int(time.time()) // 60 - 120) * 60.0
    with sqlite3.connect(tmp_path / f"cron.{port}.sqlite3") as db:
        db.execute("UPDATE schedules SET created = ?, last_run = ?", (hour_ago, hour_ago))
    again = start_server(port=port, state_dir=state)
    admin = connect(again.address)
    wait_for(lambda: queued(admin, func_name) >= 1, timeout=10, what="the missed run")
    time.sleep(1.0)  # a second run would have come with the first
    if int(time.time()) % 60 < 58:  # not when the next minute is about to run anyway
        assert queued(admin, func_name) == 1
    [row] = [s for s in schedules(admin) if s[0] == func_name.decode()]
    assert float(row[4]) > hour_ago  # the minute it ran for is recorded
    # a restart at once does not run that minute again
    ran_for = row[4]
    again.stop()
    third = start_server(port=port, state_dir=state)
    admin = connect(third.address)
    [row] = [s for s in schedules(admin) if s[0] == func_name.decode()]
    if row[4] == ran_for:  # (unless a new minute began and ran meanwhile)
        time.sleep(0.5)
        assert queued(admin, func_name) == 1  # the stored run, not a second one
