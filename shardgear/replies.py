"""What a front owes each connection, in what order, and when a connection may close (sans-IO).

Replies in request order
------------------------
A connection keeps a FIFO of `Pending` reply slots (`shardgear.connection`), one per request that
expects a reply: a shard's reply fills its slot by (shard, sequence number) (`fill`), a gather
fills its own (`shardgear.gather`), and bytes leave only from the head of the FIFO (`release`),
so replies go out in request order whichever shard answers first. Anything else for the
connection (WORK_* relays, NOOP, local answers) queues behind the slots already there (`reply`).
Bytes that may go out are appended to ``Conn.out`` (`emit`); the shell's ``write`` sends them.
``Front.drain_shards`` inlines `fill` + `release` for the usual case (the reply fills the head).

Closing
-------
A connection is closed at once when the peer resets it or cannot be written to: nothing can
reach it any more. Otherwise it never loses a reply it is owed:

* **EOF** (the peer's FIN: ``echo status | nc -N``, or ``shutdown(SHUT_WR)`` after a request):
  DRAINING. Nothing more is read; once every owed slot is filled and sent, the connection closes.
* **A protocol error** (bad framing, an oversized packet, a malformed field gearmand closes for):
  REFUSING. Requests before the bad bytes are handled as gearmand handles them; input after them
  is read and dropped; the owed replies (and an ERROR packet where there is one) go out, then the
  front sends FIN and is LINGERING: it drops input until the peer closes or ``LINGER_TIMEOUT``
  passes (closing a socket with unread input would send RST, which can destroy the ERROR on its
  way; Apache's "lingering close").

A closing connection that cannot take its replies within ``DRAIN_TIMEOUT`` is closed anyway.
Nothing here touches a socket: `Replies.settle` decides, the shell's ``close`` and ``shut_write``
act (and tests drive this class with no sockets at all).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

from shardgear.connection import (
    DRAINING,
    E_DATA,
    E_SEQ,
    E_SHARD,
    LARGE_OUTPUT,
    LINGERING,
    OPEN,
    REFUSING,
    Conn,
    Pending,
    in_transit,
    unread,
)
from shardgear.log_limit import LogLimiter
from shardgear.unread import UnreadCap

log = logging.getLogger("shardgear.front")

DRAIN_TIMEOUT: Final = 10.0
"""Seconds a DRAINING or REFUSING connection has to read what it is owed before it is closed."""
LINGER_TIMEOUT: Final = 2.0
"""Seconds a LINGERING connection's input is dropped, waiting for the peer to close, after FIN."""
OWED_TRACKED: Final = 64 * 1024
"""Bytes of replies held behind an owed one from which `Replies.owe` has the total output cap track
a connection (`UnreadCap.note`). Tracking every connection with a reply held cost the front 7%
more CPU per job (a client with 100 jobs in flight almost always holds one); below this they
are tracked only once the front's ``owed_total`` passes the cap (`Replies.track_owing`)."""


class Replies:
    """A front's per-connection reply bookkeeping and closing rules; `shardgear.front.Front` is
    one (a base class, so that the hot paths pay no extra call). A subclass provides the I/O:
    `close` (forget the connection, close its socket) and `shut_write` (send FIN, read again),
    and may count closes for cause (`count_close`, for metrics).

    Attributes:
        writers: connections with bytes in ``out`` to write at the end of the loop turn.
        output_limit: bytes a connection may leave unread before it is closed as too slow.
        unread: the cap on the unread output of all connections together (its shell enforces
            it once a loop turn).
        owed_total: bytes of replies held behind an owed one, all open connections together.
        shard_epochs: the HELLOs seen from each shard, kept in each reply slot sent there.
        closing: the connections that are DRAINING, REFUSING or LINGERING.
        warn: rate-limited WARNINGs about slow readers and protocol errors (a budget each).
    """

    def __init__(self, output_limit: int, shards: int, total_output_limit: int) -> None:
        self.writers: set[Conn] = set()
        self.output_limit = output_limit
        self.unread = UnreadCap(total_output_limit)
        self.owed_total = 0  # every open connection's ``owed``
        self.shard_epochs = [0] * shards
        self.closing: dict[Conn, None] = {}
        self.warn = LogLimiter(log)

    # -------------------------------------------------------------- the shell's part

    def close(self, conn: Conn) -> None:
        """Forget `conn` and close its socket (idempotent)."""
        raise NotImplementedError

    def shut_write(self, conn: Conn) -> None:
        """Send FIN on `conn` and watch it for input again (to drop it)."""
        raise NotImplementedError

    def count_close(self) -> None:
        """A connection is refused, or closed as too slow (a subclass counts it for metrics)."""

    # -------------------------------------------------------------- replies

    def emit(self, conn: Conn, data: bytes) -> None:
        """Queue bytes for the socket now (no reply ordering involved)."""
        if len(data) >= LARGE_OUTPUT:
            in_transit(conn, len(data))
        conn.out.append(data)
        conn.out_bytes += len(data)
        if conn.out_bytes > self.output_limit and self.overflowed(conn):
            return
        if not conn.want_write:
            self.writers.add(conn)

    def emit_parts(self, conn: Conn, parts: list[bytes | memoryview]) -> None:
        """`emit` a reply that is the concatenation of `parts` (a large message as the fragments
        it crossed a ring in), without joining them."""
        size = _size(parts)
        if size >= LARGE_OUTPUT:
            in_transit(conn, size)
        conn.out.extend(parts)
        conn.out_bytes += size
        if conn.out_bytes > self.output_limit and self.overflowed(conn):
            return
        if not conn.want_write:
            self.writers.add(conn)

    def overflowed(self, conn: Conn) -> bool:
        """Close `conn` if it left more than ``output_limit`` bytes unread, not counting the large
        packet in transit (`shardgear.connection.unread`); return True if it did. Call it only
        once ``conn.out_bytes`` is over the limit (the cheap test first)."""
        held = unread(conn)
        if held <= self.output_limit:
            return False
        self.count_close()
        self.warn.warning(
            "slow reader",
            "closing connection from %s: %d bytes of output unread (over --max-output-buffer)",
            conn.ip,
            held,
        )
        self.close(conn)
        return True

    def reply(self, conn: Conn, data: bytes) -> None:
        """Queue bytes behind any reply the connection is still owed (dropped once closed)."""
        if conn.pending:
            entry: Pending = [-1, -1, 0, 0, None]
            conn.pending.append(entry)
            self.owe(conn, entry, data)
        elif not conn.closed:
            self.emit(conn, data)

    def owe(self, conn: Conn, entry: Pending, data: bytes | list[bytes | memoryview]) -> None:
        """Fill `conn`'s reply slot `entry` with `data` (bytes, or a large reply's pieces): held
        until `release` reaches it, and counted by the output caps meanwhile (``conn.owed``,
        `shardgear.connection.unread`). Every slot is filled here, so that `release` can take
        off what was counted. Closes `conn` if that puts it over ``--max-output-buffer``."""
        entry[E_DATA] = data
        size = len(data) if type(data) is bytes else _size(data)
        if not size or conn.closed:
            return
        owed = conn.owed = conn.owed + size
        self.owed_total += size
        if size >= LARGE_OUTPUT and size > conn.owed_max:
            conn.owed_max = size
        if owed >= OWED_TRACKED:
            self.unread.note(conn)
        if conn.out_bytes + owed > self.output_limit:
            self.overflowed(conn)

    def _unowe(self, conn: Conn, size: int) -> None:
        """A reply of `size` bytes that `owe` counted left ``conn.pending`` (released, or its
        slot emptied for a late reply). ``owed_max`` stays the largest one still held."""
        paid = size if size < conn.owed else conn.owed
        self.owed_total -= paid
        owed = conn.owed = conn.owed - paid
        if not owed:
            conn.owed_max = 0
        elif size >= LARGE_OUTPUT and size >= conn.owed_max:
            conn.owed_max = _largest_held(conn)

    def forget_owed(self, conn: Conn) -> None:
        """`conn` is closed: what it held no longer counts (the shell's `close` calls this)."""
        self.owed_total -= conn.owed
        conn.owed = 0
        conn.owed_max = 0

    def track_owing(self, conns: Iterable[Conn]) -> None:
        """Have the total output cap track every one of `conns` that holds replies behind an owed
        one. `owe` tracks a connection from `OWED_TRACKED` on; once ``owed_total`` passes the
        cap, the shell calls this so that many connections just under it are counted too."""
        for conn in conns:
            if conn.owed:
                self.unread.note(conn)

    def expect(self, conn: Conn, shard: int, ptype: int) -> int:
        """Reserve the connection's next reply slot for `shard`; return the request's seq."""
        conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
        conn.pending.append([seq, shard, ptype, self.shard_epochs[shard], None])
        return seq

    def release(self, conn: Conn) -> None:
        """Move filled replies at the head of the FIFO to the socket (none once closed)."""
        pending = conn.pending
        while pending and pending[0][E_DATA] is not None and not conn.closed:
            data = pending.popleft()[E_DATA]
            if conn.owed:  # `owe` counted it
                self._unowe(conn, len(data) if type(data) is bytes else _size(data))
            if type(data) is list:  # a large reply's fragments (`fill`)
                self.emit_parts(conn, data)
            else:
                self.emit(conn, data)

    def fill(
        self, conn: Conn, shard: int, seq: int, data: bytes | list[bytes | memoryview]
    ) -> None:
        """Shard `shard` answered request `seq`: fill its slot and release what is ready. A reply
        with no slot (a request already answered on a shard restart) is dropped. `data` is the
        reply's bytes, or for a large one the list of pieces it came in (never joined)."""
        for entry in conn.pending:
            if entry[E_SEQ] == seq and entry[E_SHARD] == shard:
                old = entry[E_DATA]
                if old is not None and conn.owed:  # a late reply replaces one not sent yet
                    entry[E_DATA] = None
                    self._unowe(conn, _size(old))
                self.owe(conn, entry, data)
                break
        else:
            return
        self.release(conn)

    # -------------------------------------------------------------- closing

    def end_of_input(self, conn: Conn, now: float) -> None:
        """The peer sent FIN (recv returned nothing): close now if nothing is owed, else drain.
        Called again on a connection whose input already ended, it means the peer is gone."""
        if (conn.closing == OPEN or conn.closing == REFUSING) and (conn.pending or conn.out):
            conn.rmask = 0
            self._closing(conn, DRAINING, now)
        else:
            self.close(conn)

    def refuse(self, conn: Conn, why: str, error: bytes | None, now: float) -> None:
        """A protocol error on `conn`: log it (rate-limited), queue `error` (an ERROR packet, or
        None) behind the owed replies, and close once they are out (see "Closing")."""
        if conn.closed or conn.closing != OPEN:
            return
        self.count_close()
        self.warn.warning("protocol error", "closing connection from %s: %s", conn.ip, why)
        if error is not None:
            self.reply(conn, error)
        self._closing(conn, REFUSING, now)

    def _closing(self, conn: Conn, state: int, now: float) -> None:
        conn.closing = state
        conn.close_by = now + DRAIN_TIMEOUT
        self.closing[conn] = None

    def settle(self, now: float) -> None:
        """Close, or send FIN on, the closing connections that have had every reply they are
        owed, and those out of time. Call once a loop turn (after the writes) while
        ``closing`` is not empty."""
        for conn in list(self.closing):
            if conn.closed:
                del self.closing[conn]
                continue
            state = conn.closing
            if state == LINGERING:
                if now >= conn.close_by:
                    self.close(conn)
            elif not conn.pending and not conn.out:
                if state == DRAINING:
                    self.close(conn)
                else:
                    conn.closing = LINGERING
                    conn.close_by = now + LINGER_TIMEOUT
                    self.shut_write(conn)
            elif now >= conn.close_by:
                self.count_close()
                self.warn.warning(
                    "slow reader",
                    "closing connection from %s: %d replies and %d bytes unsent after %g s",
                    conn.ip,
                    len(conn.pending),
                    conn.out_bytes,
                    DRAIN_TIMEOUT,
                )
                self.close(conn)


def _size(data: bytes | list[bytes | memoryview]) -> int:
    """The bytes of a reply slot's data (`Replies.owe`)."""
    if type(data) is list:
        size = 0
        for part in data:
            size += len(part)
        return size
    return len(data)


def _largest_held(conn: Conn) -> int:
    """The largest reply of at least LARGE_OUTPUT bytes filled in ``conn.pending`` (0: none)."""
    largest = 0
    for entry in conn.pending:
        data = entry[E_DATA]
        if data is not None:
            size = _size(data)
            if size >= LARGE_OUTPUT and size > largest:
                largest = size
    return largest
