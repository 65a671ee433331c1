"""How results other than a plain WORK_COMPLETE reach other projects' clients."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.gearclient import (
    WORK_COMPLETE,
    WORK_DATA,
    WORK_FAIL,
    WORK_STATUS,
    Conn,
    grab_until_job,
    worker,
)
from tests.interop import tools

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
]


def fresh() -> str:
    return f"res-{uuid.uuid4().hex[:12]}"


def serve_in_thread(address: str, func: str, *replies: tuple[int, tuple[bytes, ...]]):
    """A raw worker thread that takes one job and sends `replies` (type, args after handle)."""
    w = worker(Conn(address), func)

    def run() -> None:
        handle = grab_until_job(w, timeout=tools.TIMEOUT)[1][0]
        for ptype, args in replies:
            w.send(ptype, handle, *args)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return w, t


def finish(w, t):
    t.join(tools.TIMEOUT)
    w.close()


def test_perl_worker_failure_fails_perl_client(server, procs):
    tools.require_perl()
    func = fresh()
    p = tools.perl_worker(procs, server.address, func, "fail", count=1)
    r = tools.perl_client(server.address, func, "x")
    assert r.returncode == 1
    assert p.wait(tools.TIMEOUT) == 0


def test_perl_worker_failure_reaches_gear_client(server, procs):
    tools.require_perl()
    func = fresh()
    tools.perl_worker(procs, server.address, func, "fail", count=1)
    client = tools.gear_client(server.address)
    try:
        job = tools.gear_run(client, func, b"x")
    finally:
        client.shutdown()
    assert job.failure


def test_gear_client_gets_work_data_status_and_complete(server):
    func = fresh()
    w, t = serve_in_thread(
        server.address,
        func,
        (WORK_DATA, (b"part one",)),
        (WORK_STATUS, (b"1", b"2")),
        (WORK_DATA, (b"part two",)),
        (WORK_COMPLETE, (b"last",)),
    )
    client = tools.gear_client(server.address)
    try:
        job = tools.gear_run(client, func, b"x")
    finally:
        client.shutdown()
        finish(w, t)
    assert not job.failure
    assert job.data == [b"part one", b"part two", b"last"]
    assert (job.numerator, job.denominator) == (b"1", b"2")


def test_gear_client_gets_work_fail(server):
    func = fresh()
    w, t = serve_in_thread(server.address, func, (WORK_FAIL, ()))
    client = tools.gear_client(server.address)
    try:
        job = tools.gear_run(client, func, b"x")
    finally:
        client.shutdown()
        finish(w, t)
    assert job.failure


def test_cli_client_prints_work_data_chunks(server):
    tools.require_tools("gearman")
    func = fresh()
    w, t = serve_in_thread(
        server.address, func, (WORK_DATA, (b"chunk-",)), (WORK_COMPLETE, (b"end",))
    )
    try:
        out = tools.cli_client(server.address, func, "x")
    finally:
        finish(w, t)
    assert out == b"chunk-end"


def test_cli_worker_handles_several_jobs(server, procs):
    tools.require_tools("gearman")
    func = fresh()
    cw = tools.cli_worker(procs, server.address, func, "rev", count=3)
    for word in ("alpha", "beta", "gamma"):
        assert tools.cli_client(server.address, func, word) == word[::-1].encode()
    assert cw.wait(tools.TIMEOUT) == 0


def test_cli_cat_worker_keeps_newlines_and_binary_bytes(server, procs):
    tools.require_tools("gearman")
    func = fresh()
    cw = tools.cli_worker(procs, server.address, func, "cat", count=1)
    payload = "line one\nline two\n\ttabbed \u00e9\n"
    assert tools.cli_client(server.address, func, payload) == payload.encode()
    assert cw.wait(tools.TIMEOUT) == 0
