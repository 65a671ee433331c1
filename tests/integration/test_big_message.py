"""A payload far bigger than a ring, of an odd size, foreground and background across 2 fronts x
2 shards (issue 7, "a 1 GiB message"): it travels in pieces (front -> ring -> shard -> ring ->
front, `shm.channel.Sender.send_parts`, `Receiver.take_large`) and every byte arrives in order,
in the JOB_ASSIGN and in the WORK_COMPLETE. bench/big_message.py measures the memory it takes."""

from __future__ import annotations

import threading

import pytest

from tests.gearclient import (
    CAN_DO,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    Conn,
)

pytestmark = pytest.mark.shardgear_only  # make_name(shard=...) places the functions on shards
MIB = 1024 * 1024
SIZE = 64 * MIB + 3
TIMEOUT = 120.0


def payload(seed: int) -> bytes:
    """SIZE bytes in which a misplaced or lost piece shows (a counter every 8 bytes)."""
    step = (seed * 1_000_003).to_bytes(4, "big")
    unit = b"".join(step + i.to_bytes(4, "big") for i in range(8192))
    return (unit * (SIZE // len(unit) + 1))[:SIZE]


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
