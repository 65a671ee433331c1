"""The supervisor restarts a child that dies; the rest of the server carries on.

What survives what: a killed front loses only its own connections; a killed shard keeps its jobs
(its successor recovers them from the journal, see test_shard_crash.py), requests it had taken
are answered with an error instead of hanging, and workers stay registered.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.gearclient import (
    ERROR,
    JOB_CREATED,
    WORK_COMPLETE,
    grab_job,
    grab_until_job,
    submit,
    wait_for,
    worker,
)

pytestmark = pytest.mark.shardgear_only


def children(pid: int) -> dict[str, int]:
    """Map "front 0" / "shard 1" to the pid of each child of supervisor `pid`."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"shardgear.child" in argv:
                i = argv.index(b"shardgear.child")
                out[f"{argv[i + 1].decode()} {argv[i + 2].decode()}"] = int(child)
    return out


def respawned(server, name: str, old: int) -> int:
    return wait_for(
        lambda: (p := children(server.pid).get(name)) not in (None, old) and p,
        timeout=15,
        what=f"{name} to be restarted",
    )


def round_trip(connect, func: bytes, payload: bytes = b"ping") -> None:
    client, w = connect(), connect()
    h = submit(client, func, payload)
    worker(w, func)
    handle, _f, data = grab_job(w)
    assert (handle, data) == (h, payload)
    w.send(WORK_COMPLETE, h, data.upper())
    assert client.expect(WORK_COMPLETE) == [h, payload.upper()]


def test_a_killed_front_is_restarted_and_jobs_flow(start_server, connect, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    conn = lambda: connect(srv.address)  # noqa: E731
    before = children(srv.pid)
    assert {"front 0", "front 1", "shard 0", "shard 1"} <= set(before)
    os.kill(before["front 0"], signal.SIGKILL)
    respawned(srv, "front 0", before["front 0"])
    wait_for(lambda: try_connect(connect, srv.address), timeout=10, what="a new front")
    for _ in range(6):  # whichever front the kernel picks
        round_trip(conn, make_name())


def test_jobs_held_by_a_killed_fronts_worker_are_requeued(start_server, connect, make_name):
    srv = start_server("--fronts", "1", "--shards", "1")
    func = make_name()
    h = submit(connect(srv.address), func, b"work", bg=True)
    w = worker(connect(srv.address), func)
    assert grab_job(w)[0] == h
    before = children(srv.pid)
    os.kill(before["front 0"], signal.SIGKILL)  # the worker holding the job goes with it
    respawned(srv, "front 0", before["front 0"])
    w2 = wait_for(lambda: try_connect(connect, srv.address), timeout=10, what="a new front")
    worker(w2, func)
    # the shard requeues the job when it hears the new front's HELLO: poll until it has
    assert grab_until_job(w2, timeout=10)[1][0] == h


def try_connect(connect, address: str):
    try:
        return connect(address)
    except ConnectionRefusedError:
        return None


def test_a_killed_shard_is_restarted_and_answers_or_errors(start_server, connect, make_name):
    srv = start_server("--fronts", "1", "--shards", "2")
    conn = lambda: connect(srv.address)  # noqa: E731
    func = make_name(shard=1)
    waiting = connect(srv.address)
    w = worker(connect(srv.address), func)  # stays registered across the restart
    before = children(srv.pid)
    os.kill(before["shard 1"], signal.SIGKILL)
    respawned(srv, "shard 1", before["shard 1"])
    # A request sent around the restart gets an answer, never silence.
    waiting.send(7, func, b"", b"after")  # SUBMIT_JOB
    ptype, args = waiting.recv(timeout=10)
    assert ptype in (JOB_CREATED, ERROR), args
    if ptype == JOB_CREATED:
        handle, _f, data = grab_job(w, timeout=10)
        assert data == b"after"
        w.send(WORK_COMPLETE, handle, b"ok")
        assert waiting.expect(WORK_COMPLETE) == [handle, b"ok"]
    for _ in range(3):
        round_trip(conn, make_name(shard=1))
        round_trip(conn, make_name(shard=0))
