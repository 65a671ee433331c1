"""SUBMIT_JOB_EPOCH (gearman-protocol.md §2.9)."""

from __future__ import annotations

import time

import pytest

from tests.gearclient import (
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB_SCHED,
    grab,
    grab_job,
    status_of,
    submit,
    submit_epoch,
    worker,
)


def test_epoch_in_the_past_runs_at_once(connect, func_name):
    client, w = connect(), connect()
    h = submit_epoch(client, func_name, int(time.time()) - 10, b"past")
    worker(w, func_name)
    assert grab_job(w) == [h, func_name, b"past"]


def test_a_large_epoch_job_reaches_its_worker_whole(connect, func_name):
    """A payload over a ring record (shardgear forwards it as the pieces it arrived in, after
    checking the epoch field at its start)."""
    client, w = connect(), connect()
    data = bytes(range(256)) * (3 * 4096) + b"odd"
    h = submit_epoch(client, func_name, int(time.time()) - 10, data)
    worker(w, func_name)
    assert grab_job(w, timeout=30) == [h, func_name, data]


def test_future_epoch_job_is_not_handed_out_early_but_counts_in_status(server, connect, func_name):
    client, w = connect(), connect()
    submit_epoch(client, func_name, int(time.time()) + 3600, b"later")
    worker(w, func_name)
    assert grab(w) == (NO_JOB, [])
    assert status_of(server.address, func_name)[0] == 1


def test_future_epoch_job_does_not_block_other_jobs(connect, func_name):
    client, w = connect(), connect()
    submit_epoch(client, func_name, int(time.time()) + 3600, b"later")
    h = submit(client, func_name, b"now", bg=True)
    worker(w, func_name)
    assert grab_job(w)[0] == h
    assert grab(w) == (NO_JOB, [])


def test_epoch_job_sends_nothing_to_its_submitter(connect, func_name):
    client, w = connect(), connect()
    h = submit_epoch(client, func_name, int(time.time()) - 1, b"x")
    worker(w, func_name)
    grab_job(w)
    from tests.gearclient import WORK_COMPLETE

    w.send(WORK_COMPLETE, h, b"r")
    client.recv_nothing()


def test_epoch_job_becomes_runnable_when_its_time_comes(connect, func_name):
    client, w = connect(), connect()
    h = submit_epoch(client, func_name, int(time.time()) + 2, b"soon")
    worker(w, func_name)
    assert grab(w) == (NO_JOB, [])
    time.sleep(3.1)
    assert grab_job(w) == [h, func_name, b"soon"]


@pytest.mark.shardgear_only
def test_epoch_job_wakes_a_sleeping_worker_without_other_traffic(connect, func_name):
    """gearmand 2.0 arms a timer; in 1.1.x the job waited for some other event (issue #101)."""
    client, w = connect(), connect()
    h = submit_epoch(client, func_name, int(time.time()) + 2, b"timed")
    worker(w, func_name)
    assert grab(w) == (NO_JOB, [])
    w.send(PRE_SLEEP)
    assert w.expect(NOOP, timeout=10) == []
    assert grab_job(w) == [h, func_name, b"timed"]


def test_submit_job_sched_is_not_expected_by_gearmand_and_a_schedule_here(
    connect, func_name, target
):
    from tests.gearclient import ECHO_REQ, ECHO_RES, ERROR, JOB_CREATED

    c = connect()
    c.send(SUBMIT_JOB_SCHED, func_name, b"", b"1", b"2", b"3", b"4", b"5", b"data")
    if target == "gearmand":
        assert c.expect(ERROR) == [b"INVALID_COMMAND", b"Command not expected"]
    else:  # shardgear keeps it as a cron schedule (tests/integration/test_cron.py)
        assert c.expect(JOB_CREATED)[0].startswith(b"H:")
        assert c.admin(f"remove schedule {func_name.decode()}") == "OK\r\n"
    c.send(ECHO_REQ, b"alive")
    assert c.expect(ECHO_RES) == [b"alive"]
