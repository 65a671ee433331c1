"""Background jobs survive a restart of the whole service (the shards' job logs in --state-dir).

Every background job acknowledged with JOB_CREATED is in its shard's job log; a restart on the same
state directory recovers them before the first connection is served, with handles, epoch times,
priorities and reducers kept (also when the restart has another number of shards), and jobs that
share an empty or equal unique never overwrite one another.
"""

from __future__ import annotations

import os
import resource
import signal
import tempfile
import time

import pytest

from tests.gearclient import (
    ERROR,
    GRAB_JOB_ALL,
    JOB_ASSIGN_ALL,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    WORK_COMPLETE,
    grab,
    submit,
    worker,
)

pytestmark = pytest.mark.shardgear_only


def drain_jobs(conn, func: bytes, limit: int, timeout: float = 10.0) -> list[list[bytes]]:
    """GRAB_JOB_ALL until NO_JOB, completing each job; return the assignments' arguments."""
    worker(conn, func)
    jobs = []
    deadline = time.monotonic() + timeout
    while len(jobs) < limit and time.monotonic() < deadline:
        ptype, args = grab(conn, GRAB_JOB_ALL)
        if ptype == NO_JOB:
            break
        assert ptype in (JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL), (ptype, args)
        jobs.append(args)
        conn.send(WORK_COMPLETE, args[0], b"done")
    return jobs


def restart(start_server, old) -> object:
    old.stop()
    return start_server(port=old.port, state_dir=old.state_dir)


def test_background_jobs_survive_a_restart(start_server, connect, make_name):
    state = tempfile.mkdtemp(prefix="shardgear-test-state.")
    srv = start_server(state_dir=state)
    func = make_name()
    client = connect(srv.address)
    submit(client, func, b"low", prio="low", bg=True)
    submit(client, func, b"normal", bg=True)
    submit(client, func, b"high", prio="high", bg=True)
    for i in range(3):  # empty uniques never coalesce, in memory or in the store
        submit(client, func, b"empty-%d" % i, bg=True)
    submit(client, func, b"u1", unique=b"same", bg=True)
    submit(client, func, b"u2", unique=b"same", bg=True)  # coalesces: one job
    client.send(38, func, b"r-uniq", b"my-reducer", b"", b"reduce-me")  # REDUCE_BACKGROUND
    assert client.expect(8)
    srv2 = restart(start_server, srv)
    jobs = drain_jobs(connect(srv2.address), func, 20)
    datas = [j[-1] for j in jobs]
    assert datas[0] == b"high"
    assert sorted(datas) == sorted(
        [b"low", b"normal", b"high", b"empty-0", b"empty-1", b"empty-2", b"u1", b"reduce-me"]
    )
    reduce_job = next(j for j in jobs if j[-1] == b"reduce-me")
    assert reduce_job[2:4] == [b"r-uniq", b"my-reducer"]
    assert datas.index(b"low") == len(datas) - 1
    # completed jobs are gone from the store: a second restart has nothing to replay
    srv3 = restart(start_server, srv2)
    assert drain_jobs(connect(srv3.address), func, 5) == []


def test_a_restart_with_another_shard_count_keeps_every_job(start_server, connect, make_name):
    state = tempfile.mkdtemp(prefix="shardgear-test-state.")
    srv = start_server(state_dir=state)  # --shards 2
    funcs = [make_name() for _ in range(6)]
    client = connect(srv.address)
    want = {}
    for func in funcs:
        want[func] = [b"%s-%d" % (func, i) for i in range(5)]
        for data in want[func]:
            submit(client, func, data, bg=True)
    srv.stop()
    for shards in ("3", "1"):
        srv = start_server("--shards", shards, port=srv.port, state_dir=state)
        assert sorted(os.listdir(state)) == [
            f"jobs.{srv.port}.shard{i}.log" for i in range(int(shards))
        ]
        srv.stop()
    srv = start_server(port=srv.port, state_dir=state)
    for func in funcs:  # every job once, in the order it was queued
        assert [j[-1] for j in drain_jobs(connect(srv.address), func, 10)] == want[func]


def test_a_stored_job_keeps_its_handle(start_server, connect, make_name):
    state = tempfile.mkdtemp(prefix="shardgear-test-state.")
    srv = start_server(state_dir=state)
    func = make_name()
    handle = submit(connect(srv.address), func, b"x", bg=True)
    srv2 = restart(start_server, srv)
    client = connect(srv2.address)
    client.send(15, handle)  # GET_STATUS: known, not running
    assert client.expect(20) == [handle, b"1", b"0", b"0", b"0"]
    assert drain_jobs(connect(srv2.address), func, 5)[0][0] == handle


def test_epoch_times_are_kept(start_server, connect, make_name):
    state = tempfile.mkdtemp(prefix="shardgear-test-state.")
    srv = start_server(state_dir=state)
    func = make_name()
    client = connect(srv.address)
    when = int(time.time()) + 3
    client.send(36, func, b"", str(when).encode(), b"later")  # SUBMIT_JOB_EPOCH
    assert client.expect(8)
    srv2 = restart(start_server, srv)
    w = worker(connect(srv2.address), func)
    if time.time() < when - 0.5:
        assert grab(w)[0] == NO_JOB  # not yet
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ptype, args = grab(w)
        if ptype != NO_JOB:
            assert args[-1] == b"later"
            assert time.time() >= when - 0.01
            break
        time.sleep(0.2)
    else:
        pytest.fail("the epoch job never ran after the restart")


def test_kill_9_of_everything_loses_no_acknowledged_job(start_server, connect, make_name):
    state = tempfile.mkdtemp(prefix="shardgear-test-state.")
    srv = start_server(state_dir=state)
    func = make_name()
    client = connect(srv.address)
    acked = set()
    for i in range(300):
        acked.add(b"job-%d" % i)
        submit(client, func, b"job-%d" % i, bg=True)
    # SIGKILL the supervisor and its children at once: no clean shutdown, no final commit
    os.killpg(srv.pid, signal.SIGKILL)
    srv.proc.wait(10)
    srv.stop(check=False)
    srv2 = start_server(port=srv.port, state_dir=state)  # also sweeps the dead run's shm
    jobs = drain_jobs(connect(srv2.address), func, 400)
    assert {j[-1] for j in jobs} == acked
    assert len(jobs) == len(acked)


def test_unwritable_state_dir_refuses_background_jobs_but_serves(start_server, connect, make_name):
    fd, blocker = tempfile.mkstemp(prefix="shardgear-not-a-dir.")
    os.close(fd)
    srv = start_server("--state-dir", os.path.join(blocker, "sub"))  # under a file: unusable
    func = make_name()
    client = connect(srv.address)
    client.send(18, func, b"", b"bg")  # SUBMIT_JOB_BG
    code, text = client.expect(ERROR)
    assert code == b"QUEUE_ERROR" and b"store" in text.lower()
    # foreground jobs need no store
    h = submit(client, func, b"fg")
    w = worker(connect(srv.address), func)
    _ptype, args = grab(w, GRAB_JOB_ALL)
    assert args[0] == h
    os.unlink(blocker)


def _small_files() -> None:
    # Every file the server writes may grow to 1 MiB; past that, writes fail with EFBIG
    # (Python ignores SIGXFSZ), which is what a full disk looks like to sqlite. The limit also
    # caps shared-memory segments (boards are 768 KiB), hence the small rings below.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))


def test_a_full_store_refuses_background_jobs_and_keeps_serving(start_server, connect, make_name):
    srv = start_server("--ring-size", "256K", preexec_fn=_small_files)
    func = make_name()
    client = connect(srv.address)
    refused = accepted = 0
    for _ in range(2000):
        client.send(18, func, b"", os.urandom(900))  # SUBMIT_JOB_BG, ~1 KB each
        ptype, args = client.recv()
        if ptype == ERROR:
            assert args[0] == b"QUEUE_ERROR"
            refused += 1
            break
        accepted += 1
    assert refused == 1, "the store never filled up"
    assert accepted > 0
    # the server is still up and still runs the jobs it accepted
    jobs = drain_jobs(connect(srv.address), func, accepted + 5)
    assert len(jobs) == accepted
