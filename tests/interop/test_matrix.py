"""Every client tool against every worker tool: gearman CLI, Perl Gearman::*, PyPI gear, and our
raw client. The job reverses its payload."""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.gearclient import JOB_ASSIGN, WORK_COMPLETE, Conn, grab_until_job, submit, worker
from tests.interop import tools

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
]

PAYLOAD = "hello interop 123"
EXPECTED = PAYLOAD[::-1].encode()


def fresh() -> str:
    return f"interop-{uuid.uuid4().hex[:12]}"


class RawWorker:
    def __init__(self, address: str, func: str) -> None:
        self.conn = worker(Conn(address), func)

    def serve_one(self) -> None:
        ptype, (handle, _func, data) = grab_until_job(self.conn, timeout=tools.TIMEOUT)
        assert ptype == JOB_ASSIGN
        self.conn.send(WORK_COMPLETE, handle, data[::-1])

    def close(self) -> None:
        self.conn.close()


def start_worker(kind: str, procs, address: str, func: str):
    if kind == "cli":
        tools.require_tools("gearman")
        return tools.cli_worker(procs, address, func, "rev", count=1)
    if kind == "perl":
        tools.require_perl()
        return tools.perl_worker(procs, address, func, "rev", count=1)
    if kind == "gear":
        w = tools.GearWorker(address, func, lambda b: b[::-1], count=1)
        w.start()
        return w
    return RawWorker(address, func)


def run_client(kind: str, address: str, func: str) -> bytes:
    if kind == "cli":
        tools.require_tools("gearman")
        return tools.cli_client(address, func, PAYLOAD)
    if kind == "perl":
        tools.require_perl()
        r = tools.perl_client(address, func, PAYLOAD)
        assert r.returncode == 0, r
        return r.stdout
    if kind == "gear":
        client = tools.gear_client(address)
        try:
            job = tools.gear_run(client, func, PAYLOAD.encode())
            assert not job.failure
            return b"".join(job.data)
        finally:
            client.shutdown()
    with Conn(address) as c:
        submit(c, func, PAYLOAD)
        return c.expect(WORK_COMPLETE, timeout=tools.TIMEOUT)[1]


def check_worker(kind: str, w) -> None:
    """After a successful job: the worker handled exactly it and exits cleanly."""
    if kind in ("cli", "perl"):
        assert w.wait(tools.TIMEOUT) == 0, w.stderr.read()
    elif kind == "gear":
        w.stop()
        assert w.handled == [PAYLOAD.encode()]


def cleanup_worker(kind: str, w) -> None:
    """Always: stop in-process workers (subprocesses are stopped by the `procs` fixture)."""
    if kind == "gear":
        w.stop()
    elif kind == "raw":
        w.close()


def require(kind: str) -> None:
    if kind == "cli":
        tools.require_tools("gearman")
    elif kind == "perl":
        tools.require_perl()
    elif kind == "gear":
        tools.require_gear()


@pytest.mark.parametrize("worker_kind", ["cli", "perl", "gear", "raw"])
@pytest.mark.parametrize("client_kind", ["cli", "perl", "gear", "raw"])
def test_client_tool_with_worker_tool(server, procs, client_kind, worker_kind):
    if client_kind == worker_kind == "raw":
        pytest.skip("covered by tests/integration")
    require(client_kind)
    require(worker_kind)
    func = fresh()
    w = start_worker(worker_kind, procs, server.address, func)
    try:
        if worker_kind == "raw" and client_kind != "raw":
            t = threading.Thread(target=w.serve_one, daemon=True)
            t.start()
            result = run_client(client_kind, server.address, func)
            t.join(tools.TIMEOUT)
        else:
            result = run_client(client_kind, server.address, func)
        assert result == EXPECTED
        check_worker(worker_kind, w)
    finally:
        cleanup_worker(worker_kind, w)
