"""A front's per-connection state without sockets: `shardgear.replies.Replies` and
`shardgear.gather.Gathers`, driven by hypothesis through any interleaving of requests, shard
replies (in any order, late or for unknown requests), local replies, unsolicited packets, gathers
(parts, timeouts), partial socket writes, FIN from the peer, protocol errors, resets, overflow and
the passing of time (issue 7).

The model: each connection owes an ordered list of replies; what it has been sent must always be
exactly the filled prefix of that list, nothing may be sent after it closed, a connection that
half-closed or was refused closes only once everything it was owed has been written (or its time
ran out), and one connection's replies never reach another.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from shardgear import replies as _replies
from shardgear.connection import (
    CLOSED,
    DRAINING,
    LARGE_OUTPUT,
    LINGERING,
    OPEN,
    REFUSING,
    Conn,
    unread,
)
from shardgear.gather import GATHER_TIMEOUT, Gathers
from shardgear.proto.parser import Parser
from shardgear.replies import DRAIN_TIMEOUT, LINGER_TIMEOUT, Replies, _largest_held

# The harness subclasses Replies, which mypyc forbids when Replies is compiled (a native base of
# the compiled Front); .ci/run runs this file on the pure-Python build.
pytestmark = pytest.mark.skipif(
    not _replies.__file__ or _replies.__file__.endswith(".so"),
    reason="Replies is compiled (interpreted subclasses are refused); run on the pure build",
)

LIMIT = 400  # bytes a connection may leave unread
ERROR = b"<error>"


class Harness(Replies):
    """Replies with the shell's two I/O actions recorded instead of performed (the bookkeeping of
    Front.close, without the socket and the shards)."""

    def __init__(self) -> None:
        super().__init__(LIMIT, 2, 4 * LIMIT)
        self.fins: list[Conn] = []

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.closing = CLOSED
        self.closing.pop(conn, None)
        self.writers.discard(conn)
        conn.out.clear()
        conn.out_bytes = 0
        self.forget_owed(conn)

    def shut_write(self, conn: Conn) -> None:
        self.fins.append(conn)


class Model:
    """What one connection is owed, in order; None marks a reply not filled yet."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.slots: list[bytes | None] = []
        self.keys: dict[tuple[int, int], int] = {}  # (shard, seq) -> slot of an open request
        self.answered: dict[tuple[int, int], int] = {}  # (shard, seq) -> slot, once answered
        self.gathers: dict[int, int] = {}  # gid -> slot
        self.written = b""  # what the socket took
        self.sent_at_close: bytes | None = None
        self.refused = False

    def ready(self) -> bytes:
        out = []
        for data in self.slots:
            if data is None:
                break
            out.append(data)
        return b"".join(out)

    def owed_all(self) -> bool:
        return all(d is not None for d in self.slots) and self.written == b"".join(
            d for d in self.slots if d is not None
        )


def finisher(tag: int) -> Callable[[list[Any]], bytes]:
    def finish(parts: list[Any]) -> bytes:
        return b"G%d[" % tag + b",".join(parts) + b"]"

    return finish


class ConnectionStates(RuleBasedStateMachine):
    requests = Bundle("requests")
    gathers = Bundle("gathers")

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness()
        self.g = Gathers(self.h.owe, self.h.release)
        self.now = 1000.0
        self.n = 0
        self.finishes: dict[int, Callable[[list[Any]], bytes]] = {}
        self.socks = [socket.socket() for _ in range(2)]
        self.models = []
        for i, sock in enumerate(self.socks):
            conn = Conn(i + 1, sock, Parser(), False, "127.0.0.1")
            self.models.append(Model(conn))

    def teardown(self) -> None:
        for s in self.socks:
            s.close()

    def data(self, size: int) -> bytes:
        self.n += 1
        return (b"<%d>" % self.n).ljust(size, b".")

    def after(self, m: Model) -> None:
        """Record what a closing connection had sent (nothing may follow)."""
        if m.conn.closed and m.sent_at_close is None:
            m.sent_at_close = m.written

    # ---------------------------------------------------------------- requests and replies

    @rule(target=requests, i=st.integers(0, 1), shard=st.integers(0, 1))
    def request(self, i: int, shard: int) -> tuple[int, int, int]:
        m = self.models[i]
        seq = self.h.expect(m.conn, shard, 7)
        m.keys[(shard, seq)] = len(m.slots)
        m.slots.append(None)
        return (i, shard, seq)

    @rule(req=consumes(requests), size=st.integers(1, 120), cut=st.integers(0, 3))
    def shard_reply(self, req: tuple[int, int, int], size: int, cut: int) -> None:
        """`cut` > 0: the reply came in fragments (a large message, front_large.from_shard), and
        is filled as `cut` + 1 pieces, never joined."""
        i, shard, seq = req
        m = self.models[i]
        data = self.data(size)
        if not m.conn.closed:
            slot = m.keys.pop((shard, seq), None)
            if slot is None:  # answered already: a late reply replaces one not sent yet
                slot = m.answered[(shard, seq)]
                if not any(e[0] == seq and e[1] == shard for e in m.conn.pending):
                    slot = None
            if slot is not None:
                m.slots[slot] = data
                m.answered[(shard, seq)] = slot
        if cut:
            step = len(data) // (cut + 1) + 1
            pieces: list[bytes | memoryview] = [
                memoryview(data)[k : k + step] for k in range(0, len(data), step)
            ]
            self.h.fill(m.conn, shard, seq, pieces)
        else:
            self.h.fill(m.conn, shard, seq, data)
        self.after(m)

    @rule(i=st.integers(0, 1), shard=st.integers(0, 1), seq=st.integers(10_000, 20_000))
    def reply_for_no_request(self, i: int, shard: int, seq: int) -> None:
        m = self.models[i]
        before = list(m.conn.pending)
        self.h.fill(m.conn, shard, seq, b"stale")
        assert list(m.conn.pending) == before

    @rule(req=requests)
    def reply_from_the_wrong_shard(self, req: tuple[int, int, int]) -> None:
        """A seq is matched together with the shard it was sent to (a GRAB moves between
        shards, and a restarted shard may answer an old number)."""
        i, shard, seq = req
        m = self.models[i]
        before = [list(e) for e in m.conn.pending]
        self.h.fill(m.conn, 1 - shard, seq, b"wrong shard")
        assert [list(e) for e in m.conn.pending] == before

    @rule(i=st.integers(0, 1), size=st.integers(1, 120))
    def local_reply(self, i: int, size: int) -> None:
        """ECHO_RES, NO_JOB from the boards, NOOP, a WORK_* relay: behind the owed replies."""
        m = self.models[i]
        data = self.data(size)
        if not m.conn.closed:
            m.slots.append(data)
        self.h.reply(m.conn, data)
        self.after(m)

    # ---------------------------------------------------------------- gathers

    @rule(target=gathers, i=st.integers(0, 1), expected=st.integers(1, 3))
    def gather(self, i: int, expected: int) -> int:
        m = self.models[i]
        self.n += 1
        finish = finisher(self.n)
        gid = self.g.start(m.conn, expected, finish, self.now)
        self.finishes[gid] = finish
        if not m.conn.closed:
            m.gathers[gid] = len(m.slots)
            m.slots.append(None)
        return gid

    @rule(gid=gathers)
    def gather_part(self, gid: int) -> None:
        for m in self.models:
            if gid in m.gathers:
                gather = self.g._by_id.get(gid)
                if gather is not None and len(gather.parts) + 1 >= gather.expected:
                    done = [*gather.parts, b"p%d" % gid]
                    m.slots[m.gathers.pop(gid)] = self.finishes[gid](done)
        self.g.part(gid, b"p%d" % gid)
        for m in self.models:
            self.after(m)

    # ---------------------------------------------------------------- the socket

    @rule(i=st.integers(0, 1), n=st.integers(1, 200))
    def socket_takes(self, i: int, n: int) -> None:
        m = self.models[i]
        conn = m.conn
        if conn.closed or not conn.out:
            return
        joined = b"".join(conn.out)
        taken, rest = joined[:n], joined[n:]
        conn.out[:] = [rest] if rest else []
        conn.out_bytes -= len(taken)
        m.written += taken
        self.h.writers.discard(conn)

    @rule(i=st.integers(0, 1), reverse=st.booleans())
    def everything_answered_and_read(self, i: int, reverse: bool) -> None:
        """Every shard answers (in or against request order), gathers time out, the peer reads
        everything: the shortest way to a connection that is owed nothing."""
        m = self.models[i]
        for (shard, seq), slot in sorted(m.keys.items(), key=lambda kv: kv[1], reverse=reverse):
            data = self.data(10)
            if not m.conn.closed:
                m.slots[slot] = data
                m.answered[(shard, seq)] = slot
            self.h.fill(m.conn, shard, seq, data)
            self.after(m)
        m.keys.clear()
        self.time_passes(GATHER_TIMEOUT)
        self.socket_takes(i, 1 << 30)

    @rule(i=st.integers(0, 1))
    def fin_from_peer(self, i: int) -> None:
        m = self.models[i]
        if m.conn.closed:
            return
        owed = bool(m.conn.pending or m.conn.out)
        state = m.conn.closing
        self.h.end_of_input(m.conn, self.now)
        if state in (OPEN, REFUSING) and owed:
            assert m.conn.closing == DRAINING and not m.conn.closed
        else:
            assert m.conn.closed
        self.after(m)

    @rule(i=st.integers(0, 1), with_error=st.booleans())
    def protocol_error(self, i: int, with_error: bool) -> None:
        m = self.models[i]
        state = m.conn.closing
        self.h.refuse(m.conn, "bad input", ERROR if with_error else None, self.now)
        if state == OPEN and not m.conn.closed:
            assert m.conn.closing == REFUSING
            m.refused = True
            if with_error:
                m.slots.append(ERROR)
        self.after(m)

    @rule(i=st.integers(0, 1))
    def reset_by_peer(self, i: int) -> None:
        self.h.close(self.models[i].conn)
        self.after(self.models[i])

    @rule(dt=st.sampled_from([0.1, 1.0, GATHER_TIMEOUT, LINGER_TIMEOUT, DRAIN_TIMEOUT]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for gid, gather in list(self.g._by_id.items()):
            if gather.deadline <= self.now:
                for m in self.models:
                    if gid in m.gathers:
                        m.slots[m.gathers.pop(gid)] = self.finishes[gid](list(gather.parts))
        self.g.expire(self.now)
        for m in self.models:
            self.after(m)

    @precondition(lambda self: bool(self.h.closing))
    @rule()
    def loop_turn_ends(self) -> None:
        before = {id(m.conn): (m.conn.closing, m.owed_all(), m.conn.close_by) for m in self.models}
        fins = len(self.h.fins)
        self.h.settle(self.now)
        for m in self.models:
            state, owed_all, close_by = before[id(m.conn)]
            if state in (DRAINING, REFUSING) and not owed_all:
                # never closed before its replies are out, unless it is out of time
                assert m.conn.closed == (self.now >= close_by)
            if state == DRAINING and owed_all:
                assert m.conn.closed
            elif state == REFUSING and not m.conn.closed:
                if owed_all:
                    assert m.conn.closing == LINGERING and self.h.fins[fins:].count(m.conn) == 1
            elif state == LINGERING and self.now >= close_by:
                assert m.conn.closed
            self.after(m)

    # ---------------------------------------------------------------- invariants

    @invariant()
    def sent_is_the_filled_prefix_in_request_order(self) -> None:
        for m in self.models:
            conn = m.conn
            if conn.closed:
                assert not conn.out and conn.out_bytes == 0
                assert m.written == m.sent_at_close  # nothing after the close
                continue
            assert m.written + b"".join(conn.out) == m.ready()
            assert conn.out_bytes == sum(map(len, conn.out)) <= LIMIT

    @invariant()
    def replies_held_behind_an_owed_one_count_against_the_limit(self) -> None:
        """`Replies.owe`: ``owed`` is exactly what the filled slots in ``pending`` hold, and an
        open connection's unread output, those included, stays within the limit."""
        for m in self.models:
            conn = m.conn
            if conn.closed:
                continue
            held = 0
            for entry in conn.pending:
                data = entry[4]
                if data is not None:
                    held += len(data) if isinstance(data, bytes) else sum(map(len, data))
            assert conn.owed == held
            assert conn.owed_max == _largest_held(conn)
            assert unread(conn) <= LIMIT
        assert self.h.owed_total == sum(m.conn.owed for m in self.models)

    @invariant()
    def one_connection_never_gets_anothers_replies(self) -> None:
        a, b = self.models
        for data in (x for x in a.slots if x is not None and x != ERROR):
            assert data not in b.written
        for data in (x for x in b.slots if x is not None and x != ERROR):
            assert data not in a.written

    @invariant()
    def closing_set_holds_exactly_the_closing_connections(self) -> None:
        for m in self.models:
            assert (m.conn in self.h.closing) == (m.conn.closing in (DRAINING, REFUSING, LINGERING))


ConnectionStates.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None
)
test_connection_states = ConnectionStates.TestCase


@pytest.fixture
def harness_conn() -> Any:
    sock = socket.socket()
    yield Harness(), Conn(1, sock, Parser(), False, "127.0.0.1")
    sock.close()


def test_replies_held_behind_an_owed_one_count_against_the_output_limit(
    harness_conn: tuple[Harness, Conn],
) -> None:
    """Echoes pipelined behind a request to a stopped shard were held uncounted (200 MiB past a
    4 MiB --max-output-buffer); now they count, and the connection is closed as a slow reader."""
    h, conn = harness_conn
    h.expect(conn, 0, 7)
    for _ in range(4):
        h.reply(conn, b"e" * 100)
    assert not conn.closed and conn.owed == 400 and unread(conn) == 400
    h.reply(conn, b"e")
    assert conn.closed


def test_one_large_reply_held_behind_an_owed_one_is_left_out_like_a_packet_in_transit(
    harness_conn: tuple[Harness, Conn],
) -> None:
    h, conn = harness_conn
    first = h.expect(conn, 0, 7)
    second = h.expect(conn, 1, 7)
    big = b"r" * LARGE_OUTPUT
    h.fill(conn, 1, second, big)  # held: the first is still owed
    assert not conn.closed and conn.owed == LARGE_OUTPUT and unread(conn) == 0
    h.reply(conn, b"n" * 300)
    assert not conn.closed and unread(conn) == 300
    h.fill(conn, 0, first, b"j" * 50)  # everything goes to the socket, in order
    assert conn.owed == 0 and conn.owed_max == 0
    assert b"".join(conn.out) == b"j" * 50 + big + b"n" * 300
    assert not conn.closed


def test_a_released_large_reply_is_no_longer_left_out(harness_conn: tuple[Harness, Conn]) -> None:
    """``owed_max`` is the largest reply still held: once a large one has gone to the socket,
    what queues behind the next owed reply counts in full (a breaker held 1 MiB of 100-byte
    replies past a 400-byte limit while a released reply's size was still spared)."""
    h, conn = harness_conn
    first = h.expect(conn, 0, 7)
    h.reply(conn, b"r" * LARGE_OUTPUT)  # held behind `first`
    h.expect(conn, 1, 7)  # owed, answered never
    h.reply(conn, b"s" * 100)
    h.fill(conn, 0, first, b"j")  # `first` and the large reply go; the rest waits
    conn.sent += conn.out_bytes  # the peer read everything (as Front.write counts it)
    conn.out.clear()
    conn.out_bytes = 0
    assert conn.owed == 100 and conn.owed_max == 0
    for _ in range(2):
        h.reply(conn, b"t" * 100)
    assert not conn.closed
    h.reply(conn, b"t" * 150)  # 450 held
    assert conn.closed


def test_many_connections_just_under_the_tracking_threshold_count_in_the_total() -> None:
    """`OWED_TRACKED` spares the total cap the work of tracking every connection, but once the
    front's ``owed_total`` passes the cap, `track_owing` has them all counted (a breaker held
    25 MB with a 2 MiB cap on 400 connections of 64,000 bytes each)."""
    h = Harness()
    socks = [socket.socket() for _ in range(6)]
    try:
        conns = [Conn(i + 1, s, Parser(), False, "127.0.0.1") for i, s in enumerate(socks)]
        for conn in conns:
            h.expect(conn, 0, 7)
            h.reply(conn, b"x" * 390)  # under LIMIT and under OWED_TRACKED
        assert h.owed_total == 6 * 390 > h.unread.limit == 4 * LIMIT
        assert not h.unread  # none tracked yet
        h.track_owing(conns)
        h.unread.enforce(h.close)
        assert sum(c.closed for c in conns) == 2
        assert h.owed_total == 4 * 390 <= h.unread.limit
    finally:
        for s in socks:
            s.close()
