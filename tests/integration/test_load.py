"""Big payloads, slow readers and many connections."""

from __future__ import annotations

import hashlib
import os
import resource
import socket
import time

from tests.gearclient import (
    ECHO_REQ,
    ECHO_RES,
    WORK_COMPLETE,
    Conn,
    grab_job,
    packet,
    submit,
    worker,
)

MiB = 1 << 20


def round_trip(connect, func_name, n=5):
    client, w = connect(), connect()
    worker(w, func_name)
    for i in range(n):
        h = submit(client, func_name, f"job{i}".encode())
        assert grab_job(w) == [h, func_name, f"job{i}".encode()]
        w.send(WORK_COMPLETE, h, f"done{i}".encode())
        assert client.expect(WORK_COMPLETE) == [h, f"done{i}".encode()]


def test_64_mib_payload_round_trips(connect, func_name):
    payload = os.urandom(64 * MiB)
    digest = hashlib.sha256(payload).digest()
    client, w = connect(timeout=60), connect(timeout=60)
    client.send(7, func_name, b"", payload)  # SUBMIT_JOB
    (h,) = client.expect(8, timeout=60)
    worker(w, func_name)
    handle, func, data = grab_job(w, timeout=60)
    assert (handle, func) == (h, func_name)
    assert len(data) == len(payload) and hashlib.sha256(data).digest() == digest
    w.send(WORK_COMPLETE, h, data[::-1])
    del data
    got_handle, result = client.expect(WORK_COMPLETE, timeout=60)
    assert got_handle == h
    assert hashlib.sha256(result[::-1]).digest() == digest


def test_slow_reader_does_not_stall_other_connections(connect, func_name):
    slow = connect()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    chunk = packet(ECHO_REQ, b"s" * MiB)
    slow.sock.settimeout(1.0)
    deadline = time.monotonic() + 15
    sent = 0
    try:
        while sent < 48 and time.monotonic() < deadline:  # never read a single reply
            slow.sock.sendall(chunk)
            sent += 1
    except TimeoutError:
        pass  # the server stopped reading from us: fine, that is backpressure
    assert sent > 0
    other = connect()
    for i in range(10):
        other.send(ECHO_REQ, f"ping{i}".encode())
        assert other.expect(ECHO_RES, timeout=10) == [f"ping{i}".encode()]
    round_trip(connect, func_name)


def test_jobs_flow_with_2000_idle_connections(server, connect, func_name):
    wanted = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 512
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    idle: list[Conn] = []
    deadline = time.monotonic() + 60
    try:
        for i in range(wanted):
            assert time.monotonic() < deadline, f"only {len(idle)} connections in 60 s"
            idle.append(Conn(server.address, timeout=10))
            if i % 20 == 19:  # pace ourselves to the accept queue (gearmand's backlog is 32)
                idle[-1].send(ECHO_REQ, b"")
                idle[-1].expect(ECHO_RES, timeout=10)
        round_trip(connect, func_name)
        for c in (idle[0], idle[len(idle) // 2], idle[-1]):
            c.send(ECHO_REQ, b"awake")
            assert c.expect(ECHO_RES, timeout=10) == [b"awake"]
    finally:
        for c in idle:
            c.close()
