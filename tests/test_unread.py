"""The small pieces that bound a front's memory: the cap on unread output of all connections, and
heap trims after large frees (issue 7). Rate-limited log lines: tests/test_log_limit.py."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from shardgear.connection import LARGE_OUTPUT, Conn, in_transit, unread
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


def sent(conn: Conn, n: int) -> None:
    """The socket took `n` bytes (as Front.write counts them)."""
    conn.out_bytes -= n
    conn.sent += n


def test_the_large_packet_in_transit_is_not_counted_and_what_follows_it_is(
    conns: list[Conn],
) -> None:
    conn = conns[0]
    fill(conn, 100)  # small output before it counts
    in_transit(conn, LARGE_OUTPUT * 4)
    fill(conn, LARGE_OUTPUT * 4)
    assert unread(conn) == 100
    fill(conn, 50)  # behind it
    assert unread(conn) == 150
    in_transit(conn, LARGE_OUTPUT * 2)  # a second large one while the first is in transit
    fill(conn, LARGE_OUTPUT * 2)
    assert unread(conn) == 150 + LARGE_OUTPUT * 2
    sent(conn, 100 + LARGE_OUTPUT)  # the small start and a part of the packet
    assert unread(conn) == 50 + LARGE_OUTPUT * 2
    sent(conn, LARGE_OUTPUT * 3)  # the rest of it: all that is left counts
    assert unread(conn) == conn.out_bytes == 50 + LARGE_OUTPUT * 2
    in_transit(conn, LARGE_OUTPUT)  # now a new one may be in transit
    fill(conn, LARGE_OUTPUT)
    assert unread(conn) == 50 + LARGE_OUTPUT * 2


def test_a_connection_whose_only_output_is_in_transit_stays_watched(conns: list[Conn]) -> None:
    """Its packet is spared, but what queues behind the packet must count once it does."""
    cap = UnreadCap(1000)
    conn = conns[0]
    in_transit(conn, LARGE_OUTPUT)
    fill(conn, LARGE_OUTPUT)
    cap.note(conn)
    assert cap.enforce(lambda c: pytest.fail("closed")) == LARGE_OUTPUT
    fill(conn, 5000)
    closed: list[Conn] = []
    assert cap.enforce(closed.append) == 0
    assert closed == [conn]


def test_the_total_spares_one_packet_in_transit_per_front_not_one_per_connection(
    conns: list[Conn],
) -> None:
    """Three readers of one large result each, cap 1000: two are closed, one gets its result."""
    cap = UnreadCap(1000)
    closed: list[Conn] = []

    def close(c: Conn) -> None:
        c.closed = True
        closed.append(c)

    for conn in conns[:3]:
        in_transit(conn, LARGE_OUTPUT)
        fill(conn, LARGE_OUTPUT)
        cap.note(conn)
    assert cap.enforce(close) == LARGE_OUTPUT
    assert len(closed) == 2
    assert sorted(c.id for c in closed) == sorted(c.id for c in conns[:3] if c.closed)


def test_a_slow_reader_of_small_packets_goes_before_a_reader_of_one_large_result(
    conns: list[Conn],
) -> None:
    cap = UnreadCap(1000)
    big, small = conns[0], conns[1]
    in_transit(big, LARGE_OUTPUT * 4)
    fill(big, LARGE_OUTPUT * 4)
    fill(small, 1500)
    cap.note(big)
    cap.note(small)
    closed: list[Conn] = []
    assert cap.enforce(closed.append) == LARGE_OUTPUT * 4
    assert closed == [small]


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
