"""Which job a GRAB_JOB gets: HIGH before NORMAL before LOW, FIFO within a priority, and (2.0
semantics) priority across all of a worker's functions with round-robin between functions."""

from __future__ import annotations

import itertools

import pytest

from tests.gearclient import NO_JOB, grab, grab_job, submit, worker


def test_priority_within_a_function(connect, func_name):
    client, w = connect(), connect()
    for prio in ("low", "normal", "high", "low", "normal", "high"):
        submit(client, func_name, prio.encode(), prio=prio, bg=True)
    worker(w, func_name)
    got = [grab_job(w)[2] for _ in range(6)]
    assert got == [b"high", b"high", b"normal", b"normal", b"low", b"low"]
    assert grab(w) == (NO_JOB, [])


@pytest.mark.parametrize("prio", ["high", "normal", "low"])
def test_fifo_within_a_priority(connect, func_name, prio):
    client, w = connect(), connect()
    handles = [submit(client, func_name, f"job{i}", prio=prio, bg=True) for i in range(8)]
    worker(w, func_name)
    assert [grab_job(w)[0] for _ in range(8)] == handles


def test_fifo_for_foreground_jobs(connect, func_name):
    clients = [connect() for _ in range(4)]
    handles = [submit(c, func_name, f"job{i}") for i, c in enumerate(clients)]
    w = worker(connect(), func_name)
    assert [grab_job(w)[0] for _ in range(4)] == handles


def layouts(make_name):
    return {
        "same-shard": [make_name("p", shard=0) for _ in range(3)],
        "across-shards": [
            make_name("p", shard=0),
            make_name("p", shard=1),
            make_name("p", shard=0),
        ],
    }


@pytest.mark.shardgear_only
@pytest.mark.parametrize("layout", ["same-shard", "across-shards"])
@pytest.mark.parametrize("order", ["low-first", "high-first"])
def test_priority_across_a_workers_functions(connect, make_name, layout, order):
    """gearmand 2.0: every HIGH job of any of the worker's functions before any NORMAL one."""
    fa, fb, fc = layouts(make_name)[layout]
    client, w = connect(), connect()
    jobs = [(fa, "low"), (fb, "normal"), (fc, "high"), (fa, "high"), (fb, "low")]
    if order == "high-first":
        jobs.reverse()
    for func, prio in jobs:
        submit(client, func, f"{func.decode()}:{prio}", prio=prio, bg=True)
    registration = [fa, fb, fc] if order == "low-first" else [fc, fb, fa]
    worker(w, *registration)
    got = [grab_job(w)[2].decode().split(":")[1] for _ in range(5)]
    assert got == ["high", "high", "normal", "low", "low"]
    assert grab(w) == (NO_JOB, [])


@pytest.mark.shardgear_only
@pytest.mark.parametrize("layout", ["same-shard", "across-shards"])
def test_round_robin_between_functions_at_one_priority(connect, make_name, layout):
    fa, fb, _ = layouts(make_name)[layout]
    client, w = connect(), connect()
    for i in range(4):
        submit(client, fa, f"a{i}", bg=True)
    for i in range(4):
        submit(client, fb, f"b{i}", bg=True)
    worker(w, fa, fb)
    got = [grab_job(w)[1] for _ in range(8)]
    assert sorted(got) == sorted([fa] * 4 + [fb] * 4)
    for first, second in itertools.pairwise(got):
        assert first != second, f"not round-robin: {got}"


def test_fifo_within_each_function_of_a_multi_function_worker(connect, make_name):
    fa, fb = make_name("r", shard=0), make_name("r", shard=1)
    client, w = connect(), connect()
    ha = [submit(client, fa, f"a{i}", bg=True) for i in range(3)]
    hb = [submit(client, fb, f"b{i}", bg=True) for i in range(3)]
    worker(w, fa, fb)
    got = [grab_job(w) for _ in range(6)]
    assert [h for h, f, _ in got if f == fa] == ha
    assert [h for h, f, _ in got if f == fb] == hb


@pytest.mark.shardgear_only
@pytest.mark.parametrize("low_registered_first", [True, False])
def test_low_jobs_of_one_function_do_not_starve_high_jobs_of_another(
    connect, make_name, low_registered_first
):
    """The 1.1.x bug (issue #173): the first function (in list order) with any job won."""
    fa, fb = make_name("s", shard=0), make_name("s", shard=1)
    client, w = connect(), connect()
    for i in range(3):
        submit(client, fa, f"low{i}", prio="low", bg=True)
    submit(client, fb, b"urgent", prio="high", bg=True)
    worker(w, *([fa, fb] if low_registered_first else [fb, fa]))
    assert grab_job(w)[2] == b"urgent"
