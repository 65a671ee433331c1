"""Retry policies and the dead set against the real server, with real workers: a job that fails
twice and then succeeds runs three times with the configured delays (measured loosely); one that
always fails lands in the dead set after N attempts, stays there across a restart, and replays; a
job waiting for its next attempt survives a shard crash."""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import shard_of
from tests.gearclient import (
    JOB_ASSIGN,
    STATUS_RES,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    WORK_FAIL,
    grab_until_job,
    submit,
    wait_for,
    worker,
)
from tests.integration.test_restart import children, respawned

pytestmark = pytest.mark.shardgear_only

GET_STATUS = 15


def retry_config(directory: Path, policies: dict[str, str]) -> tuple[str, str]:
    """``--config FILE`` giving each function of `policies` its ``retry`` table (the inline TOML
    of the value, e.g. ``attempts = 3, delay = "1s"``)."""
    path = directory / f"retry-{len(list(directory.glob('retry-*.toml')))}.toml"
    path.write_text(
        "".join(f'[functions."{f}"]\nretry = {{ {p} }}\n\n' for f, p in policies.items())
    )
    return "--config", str(path)


def retries(admin) -> list[list[str]]:
    return [line.split("\t") for line in admin.admin("show retries").splitlines() if line != "."]


def dead(admin, func: bytes) -> list[list[str]]:
    text = admin.admin(f"show dead jobs {func.decode()}")
    return [line.split("\t") for line in text.splitlines() if line != "."]


def test_a_job_that_fails_twice_then_succeeds_runs_three_times_with_the_delays(
    start_server, connect, func_name: bytes, tmp_path: Path
) -> None:
    # 3 s: long enough that a loaded machine still sees the job waiting between attempts
    policy = 'attempts = 5, backoff = "fixed", delay = "3s", jitter = 0'
    srv = start_server(*retry_config(tmp_path, {func_name.decode(): policy}))
    client, w, admin = connect(srv.address), connect(srv.address), connect(srv.address)
    handle = submit(client, func_name, b"payload", unique=b"once", bg=True)
    worker(w, func_name)
    attempts: list[float] = []
    for result in (WORK_FAIL, WORK_FAIL, WORK_COMPLETE):
        ptype, (h, _f, data) = grab_until_job(w, timeout=15, pause=0.05)
        attempts.append(time.monotonic())
        assert (ptype, h, data) == (JOB_ASSIGN, handle, b"payload")  # the same job each time
        if result == WORK_FAIL:
            w.send(WORK_FAIL, h)
            # waiting: known, not running, listed with its failures; the unique coalesces
            # (the row is listed while the attempt runs too: wait for this failure to land)
            [row] = wait_for(
                lambda: [r for r in retries(admin) if r[4] == "waiting"],
                what="the failed attempt waiting in show retries",
            )
            assert row[:5] == [handle.decode(), func_name.decode(), "once", row[3], "waiting"]
            client.send(GET_STATUS, handle)
            assert client.expect(STATUS_RES)[1:3] == [b"1", b"0"]
            assert submit(client, func_name, b"other", unique=b"once", bg=True) == handle
        else:
            w.send(WORK_COMPLETE, h, b"done")
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(2.5 <= gap < 30 for gap in gaps), gaps  # 3 s apart, loosely
    # the WORK_COMPLETE went on the worker's connection: the admin's may be read first
    wait_for(lambda: retries(admin) == [], what="the completed job out of show retries")
    assert dead(admin, func_name) == []


def test_an_always_failing_job_goes_dead_survives_a_restart_and_replays(
    start_server, connect, func_name: bytes, tmp_path: Path
) -> None:
    policy = retry_config(
        tmp_path, {func_name.decode(): 'attempts = 3, backoff = "fixed", delay = 0.2, jitter = 0'}
    )
    state = str(tmp_path)
    srv = start_server(*policy, state_dir=state)
    client, w = connect(srv.address), connect(srv.address)
    handle = submit(client, func_name, b"input", unique=b"u-dead", bg=True)
    worker(w, func_name)
    for n in range(1, 4):
        _t, (h, _f, _d) = grab_until_job(w, timeout=15)
        assert h == handle
        w.send(WORK_EXCEPTION, h, f"boom {n}\nTraceback".encode())
    admin = connect(srv.address)
    [row] = wait_for(lambda: dead(admin, func_name), what="the job in the dead set")
    assert row[1:4] == [func_name.decode(), "u-dead", "3"]
    assert (row[6], row[7], row[8]) == ("exception", "5", "boom%203%0ATraceback")
    assert admin.admin("status").count(func_name.decode() + "\t0\t0\t") == 1  # gone from queue
    dead_id = row[0]
    # a restart keeps the dead set
    port = srv.port
    srv.stop()
    srv = start_server(*policy, port=port, state_dir=state)
    admin = connect(srv.address)
    [again] = dead(admin, func_name)
    assert again == row
    detail = admin.admin(f"show dead job {dead_id}")
    assert "data\tinput\n" in detail and "attempts\t3\n" in detail
    # replay: back on the queue with fresh attempts
    assert admin.admin(f"replay dead job {dead_id}") == "OK 1 0\r\n"
    w = connect(srv.address)
    worker(w, func_name)
    _t, (h, _f, data) = grab_until_job(w, timeout=15)
    assert data == b"input"
    w.send(WORK_COMPLETE, h, b"fixed")
    wait_for(lambda: dead(admin, func_name) == [], what="the replayed job to leave the dead set")
    assert admin.admin(f"replay dead job {dead_id}") == "ERR UNKNOWN_JOB\r\n"


def test_a_waiting_job_survives_a_crash_of_its_shard(
    start_server, connect, make_name, tmp_path: Path
) -> None:
    func = make_name(shard=1)
    policy = 'attempts = 3, backoff = "fixed", delay = "3s", jitter = 0'
    srv = start_server(*retry_config(tmp_path, {func.decode(): policy}))
    client, w, admin = connect(srv.address), connect(srv.address), connect(srv.address)
    handle = submit(client, func, b"x", bg=True)
    worker(w, func)
    _t, (h, _f, _d) = grab_until_job(w, timeout=15)
    w.send(WORK_FAIL, h)
    wait_for(lambda: retries(admin), what="the job to wait")
    assert shard_of(func) == 1
    old = children(srv.pid)["shard 1"]
    os.kill(old, signal.SIGKILL)
    respawned(srv, "shard 1", old)
    [row] = wait_for(lambda: retries(admin), timeout=15, what="the job after the crash")
    assert row[0] == handle.decode() and row[3] == "1" and row[4] == "waiting"
    _t, (h, _f, _d) = grab_until_job(w, timeout=20, pause=0.1)
    assert h == handle  # its second attempt, after the wait
    w.send(WORK_COMPLETE, h, b"ok")
    wait_for(lambda: retries(admin) == [], what="the job to end")


def test_dead_set_ids_and_limits_past_64_bits_are_refused_and_no_front_dies(
    start_server, connect
) -> None:
    srv = start_server()
    admin = connect(srv.address)
    huge = "9" * 25
    for line in (
        f"show dead job {huge}",
        f"show dead jobs * {huge}",
        f"replay dead job {huge}",
        "delete dead job 9223372036854775808",
        "show dead job " + "1" * 5000,
    ):
        assert admin.admin(line).startswith("ERR INVALID_ARGUMENTS"), line
    assert admin.admin("show dead job 9223372036854775807").startswith("ERR")
    assert admin.admin("show dead functions") == ".\n"
    log = srv.stderr_text()
    assert "Traceback" not in log and "crashed" not in log, log
