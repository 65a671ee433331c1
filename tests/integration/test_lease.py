"""A worker's held next job (`--grab-lease`, on by default; ARCHITECTURE.md, "The lease"),
against the real server with real connections: what a client, a worker and an admin see."""

from __future__ import annotations

import pytest

from tests.gearclient import (
    CANT_DO,
    GET_STATUS,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    STATUS_RES,
    WORK_COMPLETE,
    grab,
    grab_job,
    parse_status,
    submit,
    wait_for,
    worker,
)

pytestmark = pytest.mark.shardgear_only


def status(conn, func: bytes) -> list[int] | None:
    return parse_status(conn.admin("status")).get(func.decode())


def test_a_leased_job_is_queued_not_running_and_runs_in_order(connect, func_name):
    client, adm = connect(), connect()
    handles = [submit(client, func_name, b"%d" % i, bg=True) for i in range(4)]
    w = worker(connect(), func_name)
    assert grab_job(w)[0] == handles[0]  # and, behind it, handles[1] is leased to w
    assert wait_for(lambda: status(adm, func_name) == [4, 1, 1], what="status")
    adm.send(GET_STATUS, handles[1])
    assert adm.expect(STATUS_RES) == [handles[1], b"1", b"0", b"0", b"0"]
    got = [handles[0]]
    for _ in range(3):
        w.send(WORK_COMPLETE, got[-1], b"ok")
        got.append(grab_job(w)[0])
    assert got == handles
    w.send(WORK_COMPLETE, got[-1], b"ok")
    assert grab(w) == (NO_JOB, [])
    assert wait_for(lambda: status(adm, func_name) == [0, 0, 1], what="status")


def test_the_grab_type_is_kept(connect, func_name):
    client = connect()
    h1 = submit(client, func_name, b"a", unique=b"u1", bg=True)
    h2 = submit(client, func_name, b"b", unique=b"u2", bg=True)
    w = worker(connect(), func_name)
    assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [h1, func_name, b"u1", b"a"])
    assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [h2, func_name, b"u2", b"b"])
    h3 = submit(client, func_name, b"c", bg=True)
    assert grab_job(w)[0] == h3  # another type after a lease of UNIQ


def test_a_starved_worker_gets_the_leased_job_after_the_recall(connect, func_name):
    """W1 runs a long job and holds the next one; W2 finds nothing (as in gearmand), sleeps,
    and is woken when the recalled lease is back."""
    client = connect()
    submit(client, func_name, b"long", bg=True)
    h2 = submit(client, func_name, b"next", bg=True)
    w1, w2 = worker(connect(), func_name), worker(connect(), func_name)
    assert grab_job(w1)[2] == b"long"
    kind, args = grab(w2)
    if kind == NO_JOB:
        w2.send(PRE_SLEEP)
        assert w2.expect(NOOP) == []
        assert grab_job(w2)[0] == h2
    else:  # W1's GRAB reply was answered before the shard leased: no lease was made
        assert args[0] == h2
    assert grab(w1) == (NO_JOB, [])


def test_a_better_job_overtakes_a_leased_one(connect, func_name):
    client = connect()
    h1 = submit(client, func_name, b"low1", prio="low", bg=True)
    h2 = submit(client, func_name, b"low2", prio="low", bg=True)
    w = worker(connect(), func_name)
    assert grab_job(w)[0] == h1  # low2 is leased to w
    hh = submit(client, func_name, b"high", prio="high", bg=True)
    w.send(WORK_COMPLETE, h1, b"")
    w.recv_nothing(0.3)  # the recall and the return cross the rings meanwhile
    assert grab_job(w)[0] == hh
    assert grab_job(w)[0] == h2


def test_cant_do_gives_the_lease_back_to_a_sleeping_worker(connect, func_name):
    client = connect()
    h1 = submit(client, func_name, b"1", bg=True)
    h2 = submit(client, func_name, b"2", bg=True)
    w1 = worker(connect(), func_name)
    assert grab_job(w1)[0] == h1
    w2 = worker(connect(), func_name)
    w2.send(PRE_SLEEP)
    w1.send(CANT_DO, func_name)
    assert w2.expect(NOOP) == []
    assert grab_job(w2)[0] == h2
    w1.send(WORK_COMPLETE, h1, b"done")  # its held job stays its job
    w1.recv_nothing(0.3)


def test_a_worker_that_leaves_loses_no_job(connect, func_name):
    client, adm = connect(), connect()
    handles = {submit(client, func_name, b"%d" % i, bg=True) for i in range(3)}
    w1 = worker(connect(), func_name)
    held = grab_job(w1)[0]
    w1.close()
    w2 = worker(connect(), func_name)
    got = set()
    for _ in range(3):
        h = grab_job(w2)[0]
        got.add(h)
        w2.send(WORK_COMPLETE, h, b"")
    assert got == handles and held in got
    assert grab(w2) == (NO_JOB, [])
    assert wait_for(lambda: status(adm, func_name) == [0, 0, 1], what="status")


def test_without_leases(start_server, connect, func_name):
    srv = start_server("--no-grab-lease")
    client, adm = connect(srv.address), connect(srv.address)
    handles = [submit(client, func_name, b"%d" % i, bg=True) for i in range(3)]
    w = worker(connect(srv.address), func_name)
    assert grab_job(w)[0] == handles[0]
    assert wait_for(lambda: status(adm, func_name) == [3, 1, 1], what="status")
    assert [grab_job(w)[0] for _ in range(2)] == handles[1:]
