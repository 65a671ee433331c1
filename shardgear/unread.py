"""A front's cap on the output its connections leave unread, all of them together.

Each connection may leave ``--max-output-buffer`` bytes unread before it is closed as too slow
(`shardgear.replies.Replies.overflowed`); with many slow readers that alone would let a front hold
that much per connection. `UnreadCap` also bounds the sum (``--max-total-output``, by default
twice the per-connection limit): at the end of each loop turn, if the connections that could not
take all their output add up to more than the cap, the ones with the most unread output are closed
first, with a rate-limited WARNING each, until the rest fit.

Only connections whose socket has filled (the shell's ``write`` left bytes behind, `note`) are
tracked, so a turn costs nothing while every reader keeps up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shardgear.connection import Conn
from shardgear.log_limit import LogLimiter

log = logging.getLogger("shardgear.front")


class UnreadCap:
    """The connections with unread output, and the cap on their sum in bytes."""

    __slots__ = ("_log", "_slow", "limit")

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
        total = 0
        for conn in list(slow):
            if conn.closed or not conn.out:
                slow.discard(conn)
            else:
                total += conn.out_bytes
        if total <= self.limit:
            return total
        for conn in sorted(slow, key=_unread, reverse=True):
            unread = conn.out_bytes
            self._log.warning(
                "max-total-output",
                "closing connection from %s: %d bytes unread, %d unread by all connections "
                "(--max-total-output %d)",
                conn.ip,
                unread,
                total,
                self.limit,
            )
            slow.discard(conn)
            close(conn)
            total -= unread
            if total <= self.limit:
                break
        return total


def _unread(conn: Conn) -> int:
    return conn.out_bytes
