"""The worker's sans-IO core: grab, sleep on NO_JOB, wake on NOOP only, capacity, stop."""

from __future__ import annotations

from shardgear._protocol import Assignment, Connection
from shardgear._worker_core import SlotState, WorkerCore
from shardgear.proto.packets import PacketType, request, response

T = PacketType


def sent(conn: Connection) -> list[bytes]:
    """The packets queued on ``conn``, split."""
    data, out = conn.data_to_send(), []
    while data:
        size = int.from_bytes(data[8:12], "big")
        out.append(data[: 12 + size])
        data = data[12 + size :]
    return out


def core_with(concurrency: int = 1, servers: int = 1) -> tuple[WorkerCore, list[Connection]]:
    core = WorkerCore(concurrency, "uniq", b"me")
    core.add_function(b"f", None)
    core.add_function(b"slow", 2.5)
    conns = []
    for i in range(servers):
        slot = core.add_slot(f"s{i}")
        conn = Connection(f"s{i}")
        core.attach(slot, conn)
        conns.append(conn)
    return core, conns


def feed(core: WorkerCore, index: int, conn: Connection, wire: bytes) -> list[bytes]:
    jobs = core.received(core.slots[index], conn.receive(wire))
    return [j.handle for j in jobs]


def test_attach_registers_and_grabs() -> None:
    _, (conn,) = core_with()
    assert sent(conn) == [
        request(T.SET_CLIENT_ID, b"me"),
        request(T.CAN_DO, b"f"),
        request(T.CAN_DO_TIMEOUT, b"slow", b"2500"),
        request(T.GRAB_JOB_UNIQ),
    ]


def test_no_job_sleeps_and_nothing_is_sent_until_noop() -> None:
    core, (conn,) = core_with()
    sent(conn)
    assert feed(core, 0, conn, response(T.NO_JOB)) == []
    assert sent(conn) == [request(T.PRE_SLEEP)]
    assert core.slots[0].state is SlotState.SLEEPING
    for _ in range(3):  # whatever else happens, a sleeping slot sends nothing
        core.pump()
        assert sent(conn) == []
    feed(core, 0, conn, response(T.NOOP))
    assert sent(conn) == [request(T.GRAB_JOB_UNIQ)]


def test_job_then_next_grab_only_when_capacity_frees() -> None:
    core, (conn,) = core_with(concurrency=1)
    sent(conn)
    [handle] = feed(core, 0, conn, response(T.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"u", b"d"))
    assert handle == b"H:1" and sent(conn) == []  # at capacity: no GRAB
    job = next(iter(core.slots[0].held))
    assert job == b"H:1"
    assignment = Assignment(int(T.JOB_ASSIGN_UNIQ), b"H:1\0f\0u\0d")
    assert core.finish(core.slots[0], assignment, T.WORK_COMPLETE, b"r")
    assert sent(conn) == [request(T.WORK_COMPLETE, b"H:1", b"r"), request(T.GRAB_JOB_UNIQ)]
    assert not core.finish(core.slots[0], assignment, T.WORK_COMPLETE, b"r")  # only once


def test_concurrency_spans_servers() -> None:
    _, conns = core_with(concurrency=2, servers=3)
    grabs = [request(T.GRAB_JOB_UNIQ) in sent(c) for c in conns]
    assert grabs.count(True) == 2  # two GRABs outstanding, not three


def test_noop_while_grabbing_changes_nothing() -> None:
    core, (conn,) = core_with()
    sent(conn)
    feed(core, 0, conn, response(T.NOOP))
    assert sent(conn) == [] and core.slots[0].state is SlotState.GRABBING


def test_stop_defers_cant_do_of_held_functions() -> None:
    core, (conn,) = core_with(concurrency=2)
    sent(conn)
    feed(core, 0, conn, response(T.JOB_ASSIGN_UNIQ, b"H:1", b"slow", b"", b"d"))
    sent(conn)  # the next GRAB
    core.stop()
    assert sent(conn) == [request(T.CANT_DO, b"f")]
    feed(core, 0, conn, response(T.NO_JOB))  # the outstanding GRAB: no PRE_SLEEP now
    assert sent(conn) == [] and not core.idle
    core.finish(
        core.slots[0], Assignment(int(T.JOB_ASSIGN_UNIQ), b"H:1\0slow\0\0d"), T.WORK_COMPLETE, b""
    )
    assert sent(conn) == [request(T.WORK_COMPLETE, b"H:1", b""), request(T.CANT_DO, b"slow")]
    assert core.idle


def test_detach_returns_held_jobs_and_frees_capacity() -> None:
    core, conns = core_with(concurrency=1, servers=2)
    first = next(i for i, c in enumerate(conns) if request(T.GRAB_JOB_UNIQ) in sent(c))
    feed(core, first, conns[first], response(T.JOB_ASSIGN_UNIQ, b"H:1", b"f", b"", b""))
    other = 1 - first
    feed(core, other, conns[other], b"")
    assert core.detach(core.slots[first]) == [b"H:1"]
    assert core.held == 0 and request(T.GRAB_JOB_UNIQ) in sent(conns[other])
