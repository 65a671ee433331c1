"""Large payloads of odd sizes across priorities on 2 fronts x 2 shards, from clients and workers
whose sockets are as small as libgearman's (32 KiB SO_SNDBUF / SO_RCVBUF): every one arrives
whole, in priority order (issue 7, "a rare stall of a big job").

The stall was the kernel's delayed ACK: with a 32 KiB send buffer one 64 KiB loopback segment is
in flight at a time, and each waited ~40 ms for its ACK, so a 16 MiB request took 11 s to reach
the server (a 16 MiB doHigh after a 16 MiB echo and a 16 MiB background job: 34 s); a client
that gave up left a job that never ran. The front now asks for immediate ACKs while it receives a
large packet. The sizes straddle the rings' record limit (a quarter of --ring-size), where
messages are cut into fragments.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from shardgear.shm.layout import max_record_for, ring_bytes, ring_capacity
from tests.gearclient import (
    CAN_DO,
    ECHO_REQ,
    ECHO_RES,
    GRAB_JOB,
    GRAB_JOB_ALL,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN,
    JOB_ASSIGN_ALL,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_LOW,
    SUBMIT_REDUCE_JOB,
    WORK_COMPLETE,
    Conn,
    status_of,
    wait_for,
)

pytestmark = pytest.mark.shardgear_only  # the ring geometry is shardgear's
MIB = 1024 * 1024
STEP_TIMEOUT = 60.0  # a bound on each request, far above what any of them needs
LIBGEARMAN_BUFFER = 32 * 1024  # libgearman's SO_SNDBUF and SO_RCVBUF


def small_buffers(c: Conn) -> Conn:
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIBGEARMAN_BUFFER)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LIBGEARMAN_BUFFER)
    return c


def odd_sizes(func: bytes) -> list[int]:
    """Data sizes whose SUBMIT message (16-byte ring header, 12-byte packet header, func, two
    NULs) is just under, exactly at and just over one ring record, and a few larger ones."""
    record = max_record_for(ring_capacity(ring_bytes(MIB)))
    overhead = 16 + 12 + len(func) + 2
    at = record - overhead
    return [at - 1, at, at + 1, 2 * record - overhead + 3, MIB - 7, 4 * MIB + 1, 16 * MIB + 4]


class Worker(threading.Thread):
    """Answers each job with its data reversed; records the order of the assignments."""

    def __init__(self, address: str, funcs: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.conn = small_buffers(Conn(address, timeout=STEP_TIMEOUT))
        for f in funcs:
            self.conn.send(CAN_DO, f)
        self.assigned: list[bytes] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        c = self.conn
        try:
            while not self.stop.is_set():
                c.send(GRAB_JOB)
                ptype, args = c.recv(STEP_TIMEOUT)
                while ptype == NOOP:
                    ptype, args = c.recv(STEP_TIMEOUT)
                if ptype == NO_JOB:
                    c.send(PRE_SLEEP)
                    try:
                        c.expect(NOOP, timeout=0.2)
                    except TimeoutError:
                        pass
                    continue
                assert ptype == JOB_ASSIGN, ptype
                handle, _func, data = args
                self.assigned.append(data[:16])
                c.send(WORK_COMPLETE, handle, data[::-1])
        except BaseException as exc:
            self.error = exc


def test_large_odd_sized_payloads_across_priorities(start_server, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    fg, bg = make_name("big", shard=0), make_name("big-bg", shard=1)
    client = small_buffers(Conn(srv.address, timeout=STEP_TIMEOUT))
    w = Worker(srv.address, [fg, bg])
    w.start()
    try:
        priorities = [SUBMIT_JOB_HIGH, SUBMIT_JOB, SUBMIT_JOB_LOW]
        for i, size in enumerate(odd_sizes(fg)):
            # the sequence on one connection: an echo, a background job, then the job
            tag = b"%08d" % i
            echo = tag + b"e" * size
            client.send(ECHO_REQ, echo)
            assert client.expect(ECHO_RES, timeout=STEP_TIMEOUT) == [echo]
            client.send(SUBMIT_JOB_BG, bg, b"", tag + b"b" * size)
            client.expect(JOB_CREATED, timeout=STEP_TIMEOUT)
            data = tag + b"y" * (size + i % 5)
            client.send(priorities[i % 3], fg, b"", data)
            handle = client.expect(JOB_CREATED, timeout=STEP_TIMEOUT)[0]
            assert client.expect(WORK_COMPLETE, timeout=STEP_TIMEOUT) == [handle, data[::-1]]
        wait_for(lambda: status_of(srv.address, bg) == [0, 0, 1], timeout=STEP_TIMEOUT)
    finally:
        w.stop.set()
    assert w.error is None, repr(w.error)


@pytest.mark.parametrize(
    ("grab", "assign"), [(GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ), (GRAB_JOB_ALL, JOB_ASSIGN_ALL)]
)
def test_a_large_job_reaches_a_worker_that_grabs_with_its_unique_id(
    start_server, make_name, grab, assign
):
    """A large payload in a JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL (libgearman's workers grab with
    GRAB_JOB_ALL) goes out as the message's tail, as in a JOB_ASSIGN: every byte arrives, after
    the unique id and the reducer, of a payload just over a ring record and of several MiB."""
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name("big-uniq", shard=1)
    client = small_buffers(Conn(srv.address, timeout=STEP_TIMEOUT))
    w = small_buffers(Conn(srv.address, timeout=STEP_TIMEOUT))
    w.send(CAN_DO, func)
    for i, size in enumerate((odd_sizes(func)[2], 5 * MIB + 3)):
        data = b"%08d" % i + bytes(range(256)) * (size // 256) + b"odd"
        unique = b"u-%d" % i
        if grab == GRAB_JOB_ALL:
            client.send(SUBMIT_REDUCE_JOB, func, unique, b"red", b"", data)  # aggregator: b""
        else:
            client.send(SUBMIT_JOB, func, unique, data)
        handle = client.expect(JOB_CREATED, timeout=STEP_TIMEOUT)[0]
        w.send(grab)
        args = w.expect(assign, timeout=STEP_TIMEOUT)
        expected = (
            [handle, func, unique, b"red", data]
            if grab == GRAB_JOB_ALL
            else [handle, func, unique, data]
        )
        assert args == expected
        w.send(WORK_COMPLETE, handle, b"ok")
        assert client.expect(WORK_COMPLETE, timeout=STEP_TIMEOUT) == [handle, b"ok"]


def test_queued_large_jobs_go_out_high_first(start_server, make_name):
    """Large jobs of every priority queued before any worker asks: HIGH, then NORMAL, then LOW,
    each whole, though their messages are fragmented in the rings."""
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name("big")
    client = small_buffers(Conn(srv.address, timeout=STEP_TIMEOUT))
    sizes = [*odd_sizes(func)[:4], 3 * MIB + 1]
    jobs = []
    kinds = ((SUBMIT_JOB_LOW, b"low"), (SUBMIT_JOB, b"normal"), (SUBMIT_JOB_HIGH, b"high"))
    for prio, name in kinds:
        for size in sizes:
            data = (b"%-8s" % name) + b"%08d" % size + b"z" * size
            client.send(prio, func, b"", data)
            jobs.append((client.expect(JOB_CREATED, timeout=STEP_TIMEOUT)[0], data))
    w = Worker(srv.address, [func])
    w.start()
    try:
        results = {}
        for _ in jobs:
            handle, result = client.expect(WORK_COMPLETE, timeout=STEP_TIMEOUT)
            results[handle] = result
    finally:
        w.stop.set()
    assert w.error is None, repr(w.error)
    assert results == {h: d[::-1] for h, d in jobs}
    order = [tag[:8].strip() for tag in w.assigned]
    n = len(sizes)
    assert order == [b"high"] * n + [b"normal"] * n + [b"low"] * n


def delayed_acks() -> int | None:
    """The kernel's count of delayed ACKs sent (TcpExt DelayedACKs), or None if unknown."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            if "DelayedACKs" in fields:
                return int(fields["DelayedACKs"])
    return None


def test_a_large_packet_from_a_small_socket_is_acked_segment_by_segment(start_server):
    """16 MiB from a socket with libgearman's 32 KiB buffers is 256 loopback segments sent one at
    a time; unless the front asks for quick ACKs, the kernel delays the ACK of nearly every one
    (about 200 delayed ACKs, 40 ms each: 9 s instead of 0.15 s). Counted, not timed: the
    namespace's delayed-ACK counter may move a little with other traffic."""
    if delayed_acks() is None:
        pytest.skip("no TcpExt DelayedACKs counter in /proc/net/netstat")
    srv = start_server("--fronts", "1", "--shards", "1")
    size = 16 * MIB
    with socket.create_connection((srv.host, srv.port), timeout=STEP_TIMEOUT) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LIBGEARMAN_BUFFER)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LIBGEARMAN_BUFFER)
        before = delayed_acks()
        s.sendall(struct.pack(">4sII", b"\0REQ", ECHO_REQ, size) + b"x" * size)
        after = delayed_acks()
        got = 0
        while got < 12 + size:
            chunk = s.recv(1 << 20)
            assert chunk
            got += len(chunk)
    assert before is not None and after is not None
    assert after - before < 48, f"{after - before} delayed ACKs while 16 MiB were sent"
