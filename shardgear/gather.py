"""Answers assembled from several processes: a front's admin requests to every shard or front.

An admin command such as ``status`` needs a part from every shard; ``workers`` one from every
front (relayed through shard 0). A `Gather` reserves the asking connection's next reply slot
(a `Pending` entry, so the answer keeps its place among the connection's replies), collects the
parts as they arrive, and fills the slot with ``finish(parts)`` once all have come or its deadline
has passed (then with what did come, and a warning).

A gather outlives nothing: if its connection closes first, the parts are still collected (the
shards answer anyway) but the finished answer goes nowhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from shardgear.connection import Conn, Pending
from shardgear.proto import admin

log = logging.getLogger("shardgear.front")

GATHER_TIMEOUT: Final = 2.0
"""Seconds a gather waits for its parts before it answers with those that came."""

Finish = Callable[[list[Any]], bytes]
"""Turns the parts of a gather (in arrival order) into the reply bytes."""


class Gather:
    """An answer being assembled from several shards (or fronts) for one connection."""

    __slots__ = ("conn", "deadline", "entry", "expected", "finish", "parts")

    def __init__(
        self, conn: Conn, entry: Pending, expected: int, finish: Finish, deadline: float
    ) -> None:
        self.conn = conn
        self.entry = entry
        self.expected = expected
        self.finish = finish
        self.parts: list[Any] = []
        self.deadline = deadline


class Gathers:
    """A front's gathers in progress, by id (a u32 carried in the ring messages' ``extra``).

    A finished gather fills its reply slot with `owe` (`shardgear.replies.Replies.owe`, which
    counts it against the output caps), then calls `release` with the connection, so that the
    front can move the connection's ready replies to its socket; `release` is never called for
    a closed connection.
    """

    def __init__(
        self, owe: Callable[[Conn, Pending, bytes], None], release: Callable[[Conn], None]
    ) -> None:
        self._owe = owe
        self._release = release
        self._by_id: dict[int, Gather] = {}
        self._next = 1

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def start(self, conn: Conn, expected: int, finish: Finish, now: float) -> int:
        """Reserve `conn`'s next reply slot for `expected` parts; return the gather's id."""
        gid = self._next
        self._next = (gid + 1) & 0xFFFFFFFF or 1
        entry: Pending = [-1, -1, 0, 0, None]
        conn.pending.append(entry)
        self._by_id[gid] = Gather(conn, entry, expected, finish, now + GATHER_TIMEOUT)
        return gid

    def part(self, gid: int, part: Any) -> None:
        """A part for gather `gid` came; finish it if it was the last. Unknown ids (a gather that
        already timed out) are ignored."""
        gather = self._by_id.get(gid)
        if gather is None:
            return
        gather.parts.append(part)
        if len(gather.parts) >= gather.expected:
            self._finish(gid, gather)

    def next_deadline(self) -> float | None:
        """The earliest deadline of a gather in progress, or None."""
        if not self._by_id:
            return None
        return min(g.deadline for g in self._by_id.values())

    def expire(self, now: float) -> None:
        """Finish, with the parts they have, the gathers whose deadline has passed."""
        for gid, gather in list(self._by_id.items()):
            if gather.deadline <= now:
                log.warning(
                    "admin request answered by %d of %d processes",
                    len(gather.parts),
                    gather.expected,
                )
                self._finish(gid, gather)

    def _finish(self, gid: int, gather: Gather) -> None:
        del self._by_id[gid]
        try:
            data = gather.finish(gather.parts)
        except Exception:  # a malformed part must not take the front down
            log.exception("admin reply could not be assembled")
            data = admin.ERR_UNKNOWN_ERROR
        self._owe(gather.conn, gather.entry, data)
        if not gather.conn.closed:
            self._release(gather.conn)
