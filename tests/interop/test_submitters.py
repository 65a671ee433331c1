"""Each client tool's submission flavours (background, priority, unique) land on the server as the
right packet: checked by a raw-protocol worker that sees exactly what was queued."""

from __future__ import annotations

import uuid

import pytest

from tests.gearclient import (
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    Conn,
    grab,
    status_of,
    submit,
    wait_for,
    worker,
)
from tests.interop import tools

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
]


def fresh() -> str:
    return f"interop-{uuid.uuid4().hex[:12]}"


def submit_bg(
    kind: str, address: str, func: str, data: str, high: bool = False, unique: str = ""
) -> None:
    if kind == "cli":
        tools.require_tools("gearman")
        flags = ["-b"] + (["-I"] if high else []) + (["-u", unique] if unique else [])
        assert tools.cli_client(address, func, data, *flags) == b""
    elif kind == "perl":
        tools.require_perl()
        assert not high, "Gearman::Client has no high-priority background dispatch"
        r = tools.perl_client(address, func, data, "bg", unique)
        assert r.returncode == 0, r
        assert r.stdout.strip()
    else:
        import gear

        client = tools.gear_client(address)
        try:
            tools.gear_run(
                client,
                func,
                data.encode(),
                background=True,
                precedence=gear.PRECEDENCE_HIGH if high else None,
                unique=unique.encode() or None,
            )
        finally:
            client.shutdown()


@pytest.mark.parametrize("kind", ["cli", "perl", "gear"])
def test_background_submission(server, kind):
    func = fresh()
    submit_bg(kind, server.address, func, "bg payload", unique="bg-uniq-" + func)
    with worker(Conn(server.address), func) as w:
        ptype, args = grab(w, GRAB_JOB_UNIQ)
        assert ptype == JOB_ASSIGN_UNIQ
        assert args[1:] == [func.encode(), ("bg-uniq-" + func).encode(), b"bg payload"]
        assert grab(w) == (NO_JOB, [])


@pytest.mark.parametrize("kind", ["cli", "gear"])
def test_high_priority_background_submission_jumps_the_queue(server, kind):
    func = fresh()
    with Conn(server.address) as c:
        submit(c, func, b"normal", bg=True)
    submit_bg(kind, server.address, func, "high", high=True)
    with worker(Conn(server.address), func) as w:
        assert grab(w)[1][2] == b"high"
        assert grab(w)[1][2] == b"normal"


def test_cli_high_and_low_foreground(server, procs):
    tools.require_tools("gearman")
    func = fresh()
    # queue a normal job first, then high and low foreground jobs from the CLI
    with Conn(server.address) as c:
        submit(c, func, b"normal", bg=True)
        high = procs.spawn([*tools.cli_args(server.address), "-f", func, "-I", "high"])
        wait_for(lambda: status_of(server.address, func) == [2, 0, 0], what="high job queued")
        low = procs.spawn([*tools.cli_args(server.address), "-f", func, "-L", "low"])
        wait_for(lambda: status_of(server.address, func) == [3, 0, 0], what="low job queued")
        got = []
        with worker(Conn(server.address), func) as w:
            from tests.gearclient import WORK_COMPLETE

            for _ in range(3):
                handle, _f, data = grab(w)[1]
                got.append(data)
                w.send(WORK_COMPLETE, handle, data.upper())
        assert got == [b"high", b"normal", b"low"]
        assert high.communicate(timeout=tools.TIMEOUT)[0] == b"HIGH"
        assert low.communicate(timeout=tools.TIMEOUT)[0] == b"LOW"


def test_perl_high_priority_foreground(server, procs):
    tools.require_perl()
    func = fresh()
    with Conn(server.address) as c:
        submit(c, func, b"normal", bg=True)
    p = procs.spawn(
        ["perl", str(tools.PERL_DIR / "client.pl"), server.address, func, "urgent", "high"]
    )
    wait_for(lambda: status_of(server.address, func) == [2, 0, 0], what="perl job queued")
    with worker(Conn(server.address), func) as w:
        from tests.gearclient import WORK_COMPLETE

        handle, _f, data = grab(w)[1]
        assert data == b"urgent"
        w.send(WORK_COMPLETE, handle, b"done")
    assert p.communicate(timeout=tools.TIMEOUT)[0] == b"done"


def test_gear_unique_coalesces_with_raw_submission(server):
    func = fresh()
    with Conn(server.address) as c:
        h = submit(c, func, b"x", unique=b"shared-u", bg=True)
        submit_bg("gear", server.address, func, "x", unique="shared-u")
        with worker(Conn(server.address), func) as w:
            assert grab(w)[1][0] == h
            assert grab(w) == (NO_JOB, [])
