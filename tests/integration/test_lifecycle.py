"""A connection's life and death (issue 7): it is known by its object, never by its fd number, so
a reply gathered for a closed connection never reaches (or breaks) the next one on the same fd; a
half-closed connection gets every reply it asked for; bad input gets an ERROR packet or a WARNING
line and a closed connection, never a crashed front; slow readers cannot make a front hold more
than its cap."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time

import pytest

from shardgear import __version__
from tests.conftest import IS_GEARMAND
from tests.gearclient import (
    ECHO_REQ,
    ECHO_RES,
    ERROR,
    GET_STATUS_UNIQUE,
    JOB_CREATED,
    SET_CLIENT_ID,
    STATUS_RES_UNIQUE,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    WORK_DATA,
    Conn,
    grab_until_job,
    packet,
    parse_status,
    parse_workers,
    submit,
    wait_for,
    worker,
)
from tests.integration.test_restart import children

VERSION_REPLY = f"OK {__version__}\n".encode()
# Inputs whose reply a front gathers from every shard (or front); closing right after sending one
# crashed a front when the next connection took the same fd (issue 7).
GATHERED = [
    b"status\n",
    b"workers\n",
    b"prioritystatus\n",
    b"show jobs\n",
    packet(GET_STATUS_UNIQUE, b"no-such-unique"),
]


def host_port(srv) -> tuple[str, int]:
    return srv.host, srv.port


def raw(srv, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(host_port(srv), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def reset(s: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER 0)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def read_to_eof(s: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded by `timeout`)."""
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        if time.monotonic() > deadline:
            raise AssertionError(f"no EOF within {timeout} s; got {data[:200]!r}")
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def version_round(srv) -> bytes:
    with raw(srv) as b:
        b.sendall(b"version\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = b.recv(256)
            assert chunk, f"connection closed before a version reply: {reply!r}"
            reply += chunk
        return reply


def assert_no_child_restarted(srv, before: dict[str, int]) -> None:
    assert children(srv.pid) == before, "a front or shard was restarted"
    log = srv.stderr_text(limit=1_000_000)
    for bad in ("was killed", "exited with status", "Traceback", "halting"):
        assert bad not in log, f"{bad!r} in the server log:\n{log[-3000:]}"


# ------------------------------------------------------------------ fd reuse


@pytest.mark.shardgear_only
@pytest.mark.parametrize("layout", [("1", "1"), ("2", "2")], ids=["1x1", "2x2"])
@pytest.mark.parametrize("ending", ["close", "reset"])
def test_a_connection_closed_while_its_reply_is_gathered_does_not_touch_the_next(
    start_server, make_name, layout, ending
):
    """The issue's smallest input: A sends a gathered command and closes at once; B, often on the
    same fd, asks `version` and must get exactly its own answer, ten rounds for each input."""
    srv = start_server("--fronts", layout[0], "--shards", layout[1])
    func = make_name()
    w = worker(Conn(srv.address), func)
    client = Conn(srv.address)
    submit(client, func, b"queued", bg=True)
    before = children(srv.pid)
    for request in GATHERED:
        for _ in range(10):
            a = raw(srv)
            a.sendall(request)
            if ending == "reset":
                reset(a)
            else:
                a.close()
            assert version_round(srv) == VERSION_REPLY, request
    # the gathers of the closed connections went nowhere, and the right answers still come
    assert parse_status(client.admin("status"))[func.decode()] == [1, 0, 1]
    client.send(GET_STATUS_UNIQUE, b"no-such-unique")
    assert client.expect(STATUS_RES_UNIQUE) == [b"no-such-unique", b"0", b"0", b"0", b"0", b"0"]
    assert_no_child_restarted(srv, before)
    w.close()
    client.close()


@pytest.mark.shardgear_only
def test_600_short_connections_with_resets_and_cut_packets_restart_nothing(start_server, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name()
    client = Conn(srv.address)
    before = children(srv.pid)
    cut = packet(SUBMIT_JOB, func, b"", b"x" * 100)
    for i in range(600):
        s = raw(srv)
        kind = i % 6
        if kind == 0:  # RST right after a gathered command
            s.sendall(b"status\n")
            reset(s)
        elif kind == 1:  # closed in the middle of a packet's header
            s.sendall(cut[:7])
            s.close()
        elif kind == 2:  # closed in the middle of a packet's body (RST)
            s.sendall(cut[:40])
            reset(s)
        elif kind == 3:  # half-closed after a gathered command: the reply still comes
            s.sendall(b"workers\n")
            s.shutdown(socket.SHUT_WR)
            assert read_to_eof(s).endswith(b".\n")
            s.close()
        elif kind == 4:  # a plain request and answer
            s.sendall(b"version\n")
            assert s.recv(64) == VERSION_REPLY
            s.close()
        else:  # a job submitted, then RST before the answer is read
            s.sendall(packet(SUBMIT_JOB_BG, func, b"", b"churn"))
            reset(s)
    assert version_round(srv) == VERSION_REPLY
    queued = parse_status(client.admin("status")).get(func.decode(), [0])[0]
    assert queued <= 100  # at most the hundred background submissions of kind 5
    assert_no_child_restarted(srv, before)
    client.close()


# ------------------------------------------------------------------ half-close


@pytest.mark.shardgear_only  # gearmand closes on EOF without answering
def test_half_close_gets_every_reply_then_eof(start_server, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name()
    w = Conn(srv.address)
    w.send(SET_CLIENT_ID, b"half-close-worker")
    worker(w, func)
    client = Conn(srv.address)
    submit(client, func, b"queued", bg=True)
    wait_for(lambda: parse_status(client.admin("status")).get(func.decode()) == [1, 0, 1])

    def half_closed(request: bytes) -> bytes:
        with raw(srv) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            return read_to_eof(s)

    status = half_closed(b"status\n").decode()
    assert status.endswith("\n.\n")
    assert parse_status(status)[func.decode()] == [1, 0, 1]
    workers = half_closed(b"workers\n").decode()
    assert workers.endswith("\n.\n")
    mine = f"half-close-worker : {func.decode()}"
    assert any(line.endswith(mine) for line in workers.split("\n")), workers
    both = half_closed(b"status\nversion\n")
    assert both.endswith(b".\n" + VERSION_REPLY)
    assert parse_status(both.decode())[func.decode()] == [1, 0, 1]
    # binary requests a shard answers, pipelined: every answer, in order, then EOF
    answers = half_closed(
        packet(SUBMIT_JOB_BG, func, b"", b"one") + packet(ECHO_REQ, b"e") + b"version\n"
    )
    magic, ptype, size = struct.unpack(">4sII", answers[:12])
    assert (magic, ptype) == (b"\0RES", JOB_CREATED)
    rest = answers[12 + size :]
    assert rest == packet(ECHO_RES, b"e", magic=b"\0RES") + VERSION_REPLY
    wait_for(lambda: parse_status(client.admin("status"))[func.decode()] == [2, 0, 1])
    w.close()
    client.close()


@pytest.mark.shardgear_only
def test_echo_status_into_nc_n(start_server, make_name):
    """How operators script it: ``echo status | nc -N host 4730``."""
    nc = shutil.which("nc")
    if nc is None:
        pytest.skip("nc (netcat-openbsd) is not installed")
    usage = subprocess.run([nc, "-h"], capture_output=True, timeout=10)
    if b"-N" not in usage.stdout + usage.stderr:
        pytest.skip("this nc has no -N (shutdown after EOF on stdin)")
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name()
    w = worker(Conn(srv.address), func)
    wait_for(lambda: version_round(srv) and _status_via_nc(nc, srv).get(func.decode()) == [0, 0, 1])
    w.close()


def _status_via_nc(nc: str, srv) -> dict[str, list[int]]:
    r = subprocess.run(
        [nc, "-N", "-w", "5", srv.host, str(srv.port)],
        input=b"status\n",
        capture_output=True,
        timeout=15,
    )
    assert r.returncode == 0, r
    assert r.stdout.endswith(b".\n"), r.stdout
    return parse_status(r.stdout.decode())


# ------------------------------------------------------------------ bad input


@pytest.mark.shardgear_only  # gearmand has no packet size limit of its own
def test_an_oversized_packet_gets_an_error_packet_a_warning_and_a_close(start_server):
    srv = start_server("--max-packet-size", "1M")
    before = children(srv.pid)
    size = 2 * 1024 * 1024
    header = struct.pack(">4sII", b"\0REQ", ECHO_REQ, size)
    with raw(srv) as s:
        # a request before it is still answered, then the ERROR, then EOF, even though the client
        # sends the whole oversized body before it reads
        s.sendall(packet(ECHO_REQ, b"before") + header + b"y" * size)
        data = read_to_eof(s)
    echo = packet(ECHO_RES, b"before", magic=b"\0RES")
    assert data.startswith(echo)
    magic, ptype, length = struct.unpack(">4sII", data[len(echo) : len(echo) + 12])
    assert (magic, ptype) == (b"\0RES", ERROR)
    code, text = data[len(echo) + 12 :].split(b"\0")
    assert code == b"ARGUMENT_TOO_LARGE"
    assert text == b"packet of 2097152 bytes exceeds the limit of 1048576"
    assert len(data) == len(echo) + 12 + length
    warning = "WARNING closing connection from 127.0.0.1: packet of 2097152 bytes exceeds"
    wait_for(lambda: warning in srv.stderr_text(), what="the WARNING line")
    assert version_round(srv) == VERSION_REPLY
    assert_no_child_restarted(srv, before)


@pytest.mark.shardgear_only
def test_a_protocol_error_after_pipelined_requests_answers_them_first(start_server, make_name):
    srv = start_server("--fronts", "2", "--shards", "2")
    func = make_name()
    with raw(srv) as s:
        s.sendall(packet(SUBMIT_JOB_BG, func, b"", b"kept") + b"status\n" + b"\0BAD" + b"x" * 20)
        data = read_to_eof(s)
    magic, ptype, size = struct.unpack(">4sII", data[:12])
    assert (magic, ptype) == (b"\0RES", JOB_CREATED)
    assert data[12 + size :].endswith(b".\n")
    with Conn(srv.address) as c:
        assert parse_status(c.admin("status"))[func.decode()] == [1, 0, 0]
    assert "WARNING closing connection from 127.0.0.1: bad packet magic" in srv.stderr_text()


@pytest.mark.shardgear_only
def test_a_flood_of_protocol_errors_is_logged_rate_limited(start_server):
    srv = start_server("--fronts", "1", "--shards", "1")
    before = children(srv.pid)
    for i in range(200):
        with raw(srv) as s:
            s.sendall(b"\0BAD%d" % i)
            assert read_to_eof(s) == b""
    assert version_round(srv) == VERSION_REPLY
    log = srv.stderr_text(limit=10_000_000)
    lines = [x for x in log.splitlines() if "bad packet magic" in x]
    assert 1 <= len(lines) <= 40, len(lines)  # log_limit: 5 per 10 s; the run takes well under 70 s
    assert all(" WARNING " in x for x in lines)
    assert_no_child_restarted(srv, before)


# ------------------------------------------------------------------ slow readers


@pytest.mark.shardgear_only
def test_slow_readers_beyond_the_total_cap_are_closed_worst_first(start_server, make_name):
    """Per connection 100M, all connections of the one front 64M: two clients that never read get
    60 MiB and 30 MiB of WORK_DATA (a few MiB of each sit in the kernel's socket buffers); the
    first (the most unread) is closed, the second stays and gets everything."""
    srv = start_server(
        "--fronts", "1", "--shards", "1", "--max-output-buffer", "100M", "--max-total-output", "64M"
    )
    func = make_name()
    readers = []
    for i in range(2):
        c = Conn(srv.address, timeout=30)
        if i == 0:  # the kernel's buffers absorb less of what it is sent
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(SET_CLIENT_ID, b"reader-%d" % i)
        readers.append((c, submit(c, func, b"%d" % i)))
    w = worker(Conn(srv.address, timeout=30), func)
    chunk = b"d" * (1 << 20)
    held = {}
    for _ in range(2):
        _t, (handle, _f, data) = grab_until_job(w)
        held[data] = handle
    for data, mib in ((b"0", 60), (b"1", 30)):
        for _ in range(mib):
            w.send(WORK_DATA, held[data], chunk)
        w.send(ECHO_REQ, b"sync")  # the server has relayed all of it once this comes back
        w.expect(ECHO_RES, timeout=30)
    wait_for(
        lambda: "--max-total-output 67108864" in srv.stderr_text(), what="the cap's WARNING"
    )
    second = readers[1]

    def client_ids() -> set[str]:
        with Conn(srv.address) as adm:
            return {cid for _fd, _ip, cid, _f in parse_workers(adm.admin("workers"))}

    wait_for(lambda: "reader-0" not in client_ids(), what="the first reader to be closed")
    assert "reader-1" in client_ids()
    w.send(WORK_COMPLETE, held[b"1"], b"end")
    got = 0
    while True:  # the second reader, still connected, gets all 30 MiB and the result
        ptype, args = second[0].recv(timeout=30)
        if ptype == WORK_COMPLETE:
            assert args == [second[1], b"end"]
            break
        assert ptype == WORK_DATA
        got += len(args[1])
    assert got == 30 * len(chunk)
    log = srv.stderr_text()
    assert log.count("--max-total-output") == 1
    w.close()
    second[0].close()


@pytest.mark.skipif(IS_GEARMAND, reason="shardgear flags")
def test_max_total_output_is_a_flag(start_server):
    srv = start_server("--max-total-output", "1G")
    assert version_round(srv) == VERSION_REPLY
