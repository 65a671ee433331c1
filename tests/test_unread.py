"""The small pieces that bound a front's memory: the cap on unread output of all connections, and
heap trims after large frees (issue 7). Rate-limited log lines: tests/test_log_limit.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from shardgear.connection import Conn
from shardgear.memory import TRIM_AFTER, TRIM_INTERVAL, Trimmer
from shardgear.proto.parser import Parser
from shardgear.unread import UnreadCap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    socks = [socket.socket() for _ in range(4)]
    yield [Conn(i + 1, s, Parser(), False, "127.0.0.1") for i, s in enumerate(socks)]
    for s in socks:
        s.close()


def fill(conn: Conn, n: int) -> None:
    conn.out.append(b"x" * n)
    conn.out_bytes += n


def test_unread_cap_closes_the_worst_offenders_first(conns: list[Conn]) -> None:
    cap = UnreadCap(800)
    closed: list[Conn] = []

    def close(c: Conn) -> None:
        c.closed = True
        closed.append(c)

    for conn, n in zip(conns, (300, 700, 200, 400), strict=True):
        fill(conn, n)
        cap.note(conn)
    assert cap.enforce(close) == 500  # 1600: the 700, then the 400 go
    assert closed == [conns[1], conns[3]]
    assert cap.enforce(close) == 500  # the closed ones are forgotten
    conns[0].out.clear()  # caught up
    assert cap.enforce(close) == 200
    assert bool(cap)


def test_unread_cap_under_the_limit_closes_nothing(conns: list[Conn]) -> None:
    cap = UnreadCap(10_000)
    for conn in conns:
        fill(conn, 1000)
        cap.note(conn)
    assert cap.enforce(lambda c: pytest.fail("closed")) == 4000


def test_trimmer_trims_after_enough_was_freed_at_most_once_an_interval() -> None:
    clock = Clock()
    t = Trimmer(clock=clock)
    if t._trim is None:  # pragma: no cover - not glibc
        pytest.skip("no malloc_trim here")
    t.freed(TRIM_AFTER - 1)
    assert not t.due and not t.maybe_trim()
    t.freed(1)
    assert t.due and t.maybe_trim() and t.trims == 1
    t.freed(TRIM_AFTER)
    assert t.due and not t.maybe_trim()  # too soon after the last one
    clock.now += TRIM_INTERVAL
    assert t.maybe_trim() and t.trims == 2 and not t.due
