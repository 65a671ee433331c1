"""A front's caps on what its connections make it hold, all of them together: the output they
leave unread (`UnreadCap`) and the requests they have begun and not finished (`PartialCap`).

Each connection may leave ``--max-output-buffer`` bytes unread before it is closed as too slow
(`shardgear.replies.Replies.overflowed`); with many slow readers that alone would let a front hold
that much per connection. `UnreadCap` also bounds the sum (``--max-total-output``, by default
twice the per-connection limit): at the end of each loop turn, if the connections that could not
take all their output add up to more than the cap, the ones with the most unread output are closed
first, with a rate-limited WARNING each, until the rest fit. The per-connection limit does not
count what is left of the one large packet a connection is being sent
(`shardgear.connection.unread`): that packet is bounded by ``--max-packet-size``. The total counts
every such packet but one, the largest, front-wide: one reader may be sent a packet larger than
the cap, but many readers of large results add up like any other backlog (a breaker made a front
hold 3 x 32 MiB of results with a 4 MiB cap when each connection's packet was spared).

Only connections whose socket has filled (the shell's ``write`` left bytes behind) or that hold
replies behind one still owed (`shardgear.replies.Replies.owe`) are tracked (`note`), so a turn
costs nothing while every reader keeps up.

`PartialCap` does the same for input (``--max-total-input``, by default twice ``--max-packet-size``
but at most 4 GiB, and at least one such packet): a connection may hold one unfinished request of
up to ``--max-packet-size``, and without it many connections that each send most of a large packet
and then nothing more would hold that much each (a breaker held 500 MiB of a front with six). The
front notes a connection that is in the middle of a large packet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shardgear.connection import Conn, unread
from shardgear.log_limit import LogLimiter

log = logging.getLogger("shardgear.front")


class UnreadCap:
    """The connections with unread output, and the cap on their sum in bytes."""

    __slots__ = ("_log", "_slow", "limit")

    KIND = "max-total-output"
    MESSAGE = (
        "closing connection from %s: %d bytes unread, %d unread by all connections "
        "(--max-total-output %d)"
    )

    @staticmethod
    def measure(conn: Conn) -> int:
        """The bytes `conn` makes the front hold: all of its unsent output, and the replies held
        behind one it is still owed."""
        return conn.out_bytes + conn.owed

    @staticmethod
    def spare(conn: Conn) -> int:
        """The part of `measure(conn)` the total may leave out: the one large packet
        `shardgear.connection.unread` leaves out (what is unsent of the one in transit, or the
        largest reply held behind an owed one). Only the largest one front-wide is."""
        return conn.out_bytes + conn.owed - unread(conn)

    @staticmethod
    def holds(conn: Conn) -> bool:
        """Whether `conn` still holds anything (False: forget it)."""
        return bool(conn.out) or conn.owed > 0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slow: set[Conn] = set()
        self._log = LogLimiter(log)

    def __bool__(self) -> bool:
        return bool(self._slow)

    def note(self, conn: Conn) -> None:
        """`conn`'s socket is full and bytes stay in ``conn.out``."""
        self._slow.add(conn)

    def enforce(self, close: Callable[[Conn], None]) -> int:
        """Close the connections with the most unread output while the total is over the cap;
        return the total left. Forgets connections that are closed or have caught up."""
        slow = self._slow
        measure = self.measure
        total = 0
        holds = self.holds
        for conn in list(slow):
            if conn.closed or not holds(conn):
                slow.discard(conn)
            else:
                total += measure(conn)
        if total <= self.limit or total - self._spared(slow) <= self.limit:
            return total  # (the first test, the usual case, spares computing the second)
        spare = self.spare
        # the most backlog besides a packet in transit first, so that a reader being sent one
        # large result outlasts a slow reader of many small ones
        for conn in sorted(slow, key=lambda c: (measure(c) - spare(c), measure(c)), reverse=True):
            held = measure(conn)
            self._log.warning(self.KIND, self.MESSAGE, conn.ip, held, total, self.limit)
            slow.discard(conn)
            close(conn)
            total -= held
            if total - self._spared(slow) <= self.limit:
                break
        return total

    def _spared(self, held: set[Conn]) -> int:
        """The largest `spare` among `held`: the one packet in transit the total leaves out."""
        spare = self.spare
        return max((spare(c) for c in held), default=0)


class PartialCap(UnreadCap):
    """The connections in the middle of a large request, and the cap on the sum of what they
    have sent of it (their parsers' buffered bytes)."""

    __slots__ = ()

    KIND = "max-total-input"
    MESSAGE = (
        "closing connection from %s: %d bytes of an unfinished request, %d held for all "
        "connections (--max-total-input %d)"
    )

    @staticmethod
    def measure(conn: Conn) -> int:
        """The bytes of `conn`'s unfinished request."""
        return conn.parser.buffered

    @staticmethod
    def spare(conn: Conn) -> int:
        """Nothing: every unfinished request counts."""
        return 0

    @staticmethod
    def holds(conn: Conn) -> bool:
        """Whether `conn` is still in the middle of a request."""
        return conn.parser.buffered > 0
