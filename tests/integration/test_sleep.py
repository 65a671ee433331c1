"""PRE_SLEEP and NOOP (gearman-protocol.md §2.4)."""

from __future__ import annotations

from tests.gearclient import (
    GRAB_JOB,
    JOB_ASSIGN,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    grab,
    grab_job,
    submit,
    worker,
)


def sleeping_worker(connect, *funcs):
    w = worker(connect(), *funcs)
    assert grab(w) == (NO_JOB, [])
    w.send(PRE_SLEEP)
    w.recv_nothing(0.2)
    return w


def test_sleeping_worker_gets_one_noop_for_several_jobs(connect, func_name):
    client = connect()
    w = sleeping_worker(connect, func_name)
    h1 = submit(client, func_name, b"1", bg=True)
    assert w.expect(NOOP) == []
    h2 = submit(client, func_name, b"2", bg=True)
    h3 = submit(client, func_name, b"3", bg=True)
    w.recv_nothing(0.5)
    assert [grab_job(w)[0] for _ in range(3)] == [h1, h2, h3]
    assert grab(w) == (NO_JOB, [])


def test_pre_sleep_with_work_queued_gets_noop_at_once(connect, func_name):
    client = connect()
    h = submit(client, func_name, b"x", bg=True)
    w = worker(connect(), func_name)
    w.send(PRE_SLEEP)
    assert w.expect(NOOP) == []
    w.recv_nothing(0.3)
    assert grab_job(w)[0] == h


def test_one_noop_per_sleep_cycle(connect, func_name):
    client = connect()
    w = sleeping_worker(connect, func_name)
    submit(client, func_name, b"1", bg=True)
    w.expect(NOOP)
    grab_job(w)
    assert grab(w) == (NO_JOB, [])
    w.send(PRE_SLEEP)
    w.recv_nothing(0.2)
    submit(client, func_name, b"2", bg=True)
    assert w.expect(NOOP) == []
    w.recv_nothing(0.3)


def test_worker_that_never_sent_pre_sleep_gets_no_noop(connect, func_name):
    client = connect()
    w = worker(connect(), func_name)
    submit(client, func_name, b"x", bg=True)
    w.recv_nothing(0.5)


def test_every_sleeping_worker_is_woken(connect, func_name):
    client = connect()
    workers = [sleeping_worker(connect, func_name) for _ in range(3)]
    submit(client, func_name, b"x", bg=True)
    for w in workers:
        assert w.expect(NOOP) == []
    assigned = 0
    for w in workers:
        ptype, _ = grab(w, GRAB_JOB)
        assigned += ptype == JOB_ASSIGN
    assert assigned == 1


def test_sleeping_worker_is_not_woken_by_other_functions(connect, make_name):
    mine, other = make_name(), make_name()
    client = connect()
    w = sleeping_worker(connect, mine)
    submit(client, other, b"x", bg=True)
    w.recv_nothing(0.4)


def test_noop_for_any_of_the_workers_functions(connect, make_name):
    fa, fb = make_name(shard=0), make_name(shard=1)
    client = connect()
    w = sleeping_worker(connect, fa, fb)
    h = submit(client, fb, b"x", bg=True)
    assert w.expect(NOOP) == []
    assert grab_job(w)[0] == h


def test_requeued_job_wakes_a_sleeper(connect, func_name):
    client = connect()
    first = worker(connect(), func_name)
    h = submit(client, func_name, b"x")
    assert grab_job(first)[0] == h
    sleeper = sleeping_worker(connect, func_name)
    first.close()
    assert sleeper.expect(NOOP) == []
    assert grab_job(sleeper)[0] == h
