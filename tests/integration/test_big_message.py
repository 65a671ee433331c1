"""A payload far bigger than a ring, of an odd size, foreground and background across 2 fronts x
2 shards (issue 7, "a 1 GiB message"): it travels in pieces (front -> ring -> shard -> ring ->
front, `shm.channel.Sender.send_parts`, `Receiver.take_large`) and every byte arrives in order,
in the JOB_ASSIGN and in the WORK_COMPLETE. bench/big_message.py measures the memory it takes.

The defaults accept what gearmand accepts (any size a packet's u32 header can say), and the output
caps leave out the one large packet a connection is being sent, so a slow reader is closed for
its backlog and never because one packet it asked for is big."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from tests.gearclient import (
    CAN_DO,
    ECHO_REQ,
    ECHO_RES,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    WORK_DATA,
    Conn,
    ConnectionClosed,
    parse_status,
    submit,
)
from tests.integration.test_lifecycle import (
    VERSION_REPLY,
    assert_no_child_restarted,
    raw,
    version_round,
)
from tests.integration.test_restart import children

pytestmark = pytest.mark.shardgear_only  # make_name(shard=...) places the functions on shards
MIB = 1024 * 1024
SIZE = 64 * MIB + 3
TIMEOUT = 120.0


def payload(seed: int, size: int = SIZE) -> bytes:
    """`size` bytes in which a misplaced or lost piece shows (a counter every 8 bytes)."""
    step = (seed * 1_000_003).to_bytes(4, "big")
    unit = b"".join(step + i.to_bytes(4, "big") for i in range(8192))
    return (unit * (size // len(unit) + 1))[:size]


def grab(w: Conn) -> list[bytes]:
    while True:
        w.send(GRAB_JOB)
        ptype, args = w.recv(TIMEOUT)
        while ptype == NOOP:
            ptype, args = w.recv(TIMEOUT)
        if ptype == JOB_ASSIGN:
            return args
        assert ptype == NO_JOB, ptype
        w.send(PRE_SLEEP)
        w.expect(NOOP, timeout=TIMEOUT)


def test_a_64_mib_odd_sized_payload_foreground_and_background(start_server, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    fg, bg = make_name("big-fg", shard=0), make_name("big-bg", shard=1)
    w = Conn(srv.address, timeout=TIMEOUT)
    w.send(CAN_DO, fg)
    w.send(CAN_DO, bg)
    client = Conn(srv.address, timeout=TIMEOUT)

    # background: the worker gets every byte
    data = payload(1)
    client.send(SUBMIT_JOB_BG, bg, b"", data)
    handle = client.expect(JOB_CREATED, timeout=TIMEOUT)[0]
    got_handle, func, got = grab(w)
    assert (got_handle, func) == (handle, bg)
    assert len(got) == SIZE and got == data
    w.send(WORK_COMPLETE, handle, b"")

    # foreground: the worker echoes another payload back, reversed, while the client reads
    data = payload(2)
    result: list[object] = []

    def work() -> None:
        try:
            h, _f, d = grab(w)
            w.send(WORK_COMPLETE, h, d[::-1])
            result.append(d == data)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    client.send(SUBMIT_JOB, fg, b"", data)
    handle = client.expect(JOB_CREATED, timeout=TIMEOUT)[0]
    got_handle, got = client.expect(WORK_COMPLETE, timeout=TIMEOUT)
    t.join(TIMEOUT)
    assert result == [True]
    assert got_handle == handle
    assert len(got) == SIZE and got == data[::-1]


def test_a_payload_over_the_former_256_mib_default_needs_no_flag(start_server, make_name):
    """The default --max-packet-size is gearmand's, 4294967295: 300 MiB, 44 MiB past the
    former default, goes to the worker and back whole with no size flag."""
    size = 300 * MIB + 5
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name("big300")
    w = Conn(srv.address, timeout=TIMEOUT)
    w.send(CAN_DO, func)
    client = Conn(srv.address, timeout=TIMEOUT)
    data = payload(3, size)
    result: list[object] = []

    def work() -> None:
        try:
            h, _f, d = grab(w)
            result.append(d == data)
            w.send(WORK_COMPLETE, h, d)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    client.send(SUBMIT_JOB, func, b"", data)
    handle = client.expect(JOB_CREATED, timeout=TIMEOUT)[0]
    got_handle, got = client.expect(WORK_COMPLETE, timeout=TIMEOUT)
    t.join(TIMEOUT)
    assert result == [True]
    assert got_handle == handle and len(got) == size and got == data


def test_a_header_announcing_4_gib_is_read_not_refused(start_server):
    """By default a SUBMIT_JOB_BG announcing 4294967295 bytes is read (gearmand's limit), not
    answered ERROR ARGUMENT_TOO_LARGE; one that stops half way and closes loses nothing else."""
    srv = start_server("--fronts", "1", "--shards", "1")
    before = children(srv.pid)
    with raw(srv) as s:
        s.sendall(struct.pack(">4sII", b"\0REQ", SUBMIT_JOB_BG, 0xFFFFFFFF) + b"f\0\0")
        s.sendall(b"z" * (2 * MIB))
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)  # no ERROR, no close: the server waits for the rest
    assert version_round(srv) == VERSION_REPLY
    assert "exceeds the limit" not in srv.stderr_text()
    with Conn(srv.address) as adm:
        assert "f" not in parse_status(adm.admin("status"))  # nothing of it was queued
    assert_no_child_restarted(srv, before)


def test_one_packet_bigger_than_the_output_caps_reaches_a_slow_reader(start_server, make_name):
    """The caps on unread output (--max-output-buffer, --max-total-output, 4M each here) leave out
    the one large packet in transit: a client that reads nothing until its 32 MiB result is all
    at the server gets it whole. A backlog of small packets past the cap still closes it."""
    srv = start_server(
        "--fronts", "1", "--shards", "1", "--max-output-buffer", "4M", "--max-total-output", "4M"
    )
    func = make_name("slowbig")
    client = Conn(srv.address, timeout=TIMEOUT)  # the kernel's buffers take under 16 MiB of it
    handle = submit(client, func, b"job")
    w = Conn(srv.address, timeout=TIMEOUT)
    w.send(CAN_DO, func)
    assert grab(w)[0] == handle
    big = payload(4, 32 * MIB)
    w.send(WORK_COMPLETE, handle, big)
    w.send(ECHO_REQ, b"sync")  # the front has taken all of it once this comes back
    w.expect(ECHO_RES, timeout=TIMEOUT)
    time.sleep(0.5)  # a turn or two for the caps' checks
    assert client.expect(WORK_COMPLETE, timeout=TIMEOUT) == [handle, big]
    assert "slow reader" not in srv.stderr_text() and "--max-total-output" not in srv.stderr_text()

    # 48 packets of 512 KiB, none large: 24 MiB, past the kernel's buffers and the 4M cap
    handle = submit(client, func, b"job2")
    assert grab(w)[0] == handle
    for _ in range(48):
        w.send(WORK_DATA, handle, b"d" * (512 * 1024))
    w.send(ECHO_REQ, b"sync")
    w.expect(ECHO_RES, timeout=TIMEOUT)
    deadline = time.monotonic() + 30
    while "slow reader" not in srv.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "over --max-output-buffer" in srv.stderr_text()
    with pytest.raises(ConnectionClosed):
        for _ in range(100):
            client.recv(timeout=TIMEOUT)


def test_many_readers_of_large_results_add_up_to_the_front_cap(start_server, make_name):
    """Only one packet in transit is spared front-wide: three clients that read nothing while
    each is sent a 32 MiB result (--max-total-output 4M) are not 96 MiB the cap ignores. Two are
    closed with a WARNING each; the third gets its result whole, and no process restarts."""
    srv = start_server(
        "--fronts", "1", "--shards", "1", "--max-output-buffer", "4M", "--max-total-output", "4M"
    )
    before = children(srv.pid)
    func = make_name("manybig")
    clients = [Conn(srv.address, timeout=TIMEOUT) for _ in range(3)]
    handles = [submit(c, func, b"job%d" % i) for i, c in enumerate(clients)]
    w = Conn(srv.address, timeout=TIMEOUT)
    w.send(CAN_DO, func)
    big = payload(5, 32 * MIB)
    for _ in handles:
        handle = grab(w)[0]
        w.send(WORK_COMPLETE, handle, big)
    w.send(ECHO_REQ, b"sync")  # the front has taken all of them once this comes back
    w.expect(ECHO_RES, timeout=TIMEOUT)
    deadline = time.monotonic() + 30
    while srv.stderr_text().count("--max-total-output") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a turn or two more: no third one
    assert srv.stderr_text().count("--max-total-output") == 2
    whole = 0
    for client, handle in zip(clients, handles, strict=True):
        try:
            assert client.expect(WORK_COMPLETE, timeout=TIMEOUT) == [handle, big]
            whole += 1
        except ConnectionClosed:
            pass
    assert whole == 1
    assert version_round(srv) == VERSION_REPLY
    assert_no_child_restarted(srv, before)


def test_a_large_result_behind_an_owed_reply_waits_its_turn_whole(start_server, make_name):
    """A large WORK_COMPLETE (it crosses the ring in fragments) for a client that is still owed
    the reply to an earlier request from another shard goes out after that reply, every byte in
    order (front_large.from_shard keeps its fragments in the reply queue, never joined). Shard 1
    is stopped (SIGSTOP) so that the owed JOB_CREATED stays owed while the result arrives."""
    import os
    import signal

    srv = start_server("--fronts", "1", "--shards", "2")
    before = children(srv.pid)
    first, second = make_name("first", shard=0), make_name("second", shard=1)
    client = Conn(srv.address, timeout=TIMEOUT)
    handle = submit(client, first, b"job")
    w = Conn(srv.address, timeout=TIMEOUT)
    w.send(CAN_DO, first)
    assert grab(w)[0] == handle
    shard1 = before["shard 1"]
    os.kill(shard1, signal.SIGSTOP)
    try:
        client.send(SUBMIT_JOB, second, b"", b"owed")  # its JOB_CREATED must come first
        time.sleep(0.2)
        big = payload(6, 8 * MIB + 5)
        w.send(WORK_COMPLETE, handle, big)
        w.send(ECHO_REQ, b"sync")
        w.expect(ECHO_RES, timeout=TIMEOUT)
        time.sleep(0.3)  # the result is at the front, queued behind the owed reply
    finally:
        os.kill(shard1, signal.SIGCONT)
    assert client.recv(TIMEOUT)[0] == JOB_CREATED
    assert client.expect(WORK_COMPLETE, timeout=TIMEOUT) == [handle, big]
    assert version_round(srv) == VERSION_REPLY
    assert_no_child_restarted(srv, before)


def test_replies_held_behind_an_owed_one_count_against_max_output_buffer(start_server):
    """Echoes pipelined behind a request to a stopped shard wait in the connection's reply queue
    (replies go out in request order); they count as unread output, so the connection is closed
    at --max-output-buffer (4M here) instead of holding all 64 MiB. Other connections and the
    shard, once it runs again, are unaffected."""
    import os
    import signal

    srv = start_server("--fronts", "1", "--shards", "1", "--max-output-buffer", "4M")
    before = children(srv.pid)
    shard = before["shard 0"]
    os.kill(shard, signal.SIGSTOP)
    try:
        with raw(srv) as s:
            s.sendall(struct.pack(">4sII", b"\0REQ", SUBMIT_JOB, 5) + b"f\0\0ab")  # owed
            echo = struct.pack(">4sII", b"\0REQ", ECHO_REQ, MIB) + b"e" * MIB
            try:
                for _ in range(64):
                    s.sendall(echo)
            except OSError:
                pass  # closed by the server while we were still sending
            deadline = time.monotonic() + 30
            while "over --max-output-buffer" not in srv.stderr_text():
                assert time.monotonic() < deadline, srv.stderr_text()[-2000:]
                time.sleep(0.05)
            s.settimeout(TIMEOUT)
            try:
                assert s.recv(100) == b""  # closed before anything it was owed could go
            except ConnectionResetError:
                pass
    finally:
        os.kill(shard, signal.SIGCONT)
    assert version_round(srv) == VERSION_REPLY
    assert_no_child_restarted(srv, before)
