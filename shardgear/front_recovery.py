"""What a front does when a shard restarts (ARCHITECTURE.md, "Shard crash").

A restarted shard recovers its jobs from its predecessor's journal but knows nothing of the
front's connections. On the new shard's HELLO the front:

1. re-sends the registrations (CAN_DO / CAN_DO_TIMEOUT, and PRE_SLEEP of sleeping workers) of
   every connection for the functions that live on that shard;
2. re-sends the work results it sent that shard lately (`RecentResults`): the dead shard may
   have read a WORK_COMPLETE from the ring and died before journaling it, which would leave the
   job "running" and its client waiting; the new shard applies those whose job is still running
   and drops the rest silently;
3. sends a PING behind all of that, carrying the ids of its open connections that used that
   shard: the new shard disconnects the others (`recovery.front_synced`), whose DISCONNECT may
   have died with its predecessor. Requests still in the ring reach the new shard and are
   answered; requests the dead one took and never answered are lost. When the PONG comes back,
   every reply slot still waiting on that shard from before its restart is answered here: NO_JOB
   for a GRAB, ``ERROR QUEUE_ERROR`` for anything else (`ShardRestarts.fail_lost_requests`).
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Final

from shardgear import front_lease, messages
from shardgear.connection import E_DATA, E_EPOCH, E_PTYPE, E_SHARD
from shardgear.proto.packets import NO_JOB_PACKET, PacketType, error_packet
from shardgear.recovery import pack_live_connections

if TYPE_CHECKING:
    from shardgear.front import Front

log = logging.getLogger("shardgear.front")

RECENT_RESULTS: Final = 4096
"""Work results kept per shard for a restarted shard (and at most RECENT_RESULT_BYTES)."""
RECENT_RESULT_BYTES: Final = 16 * 1024 * 1024

_GRAB_TYPES: Final = frozenset(
    {int(PacketType.GRAB_JOB), int(PacketType.GRAB_JOB_UNIQ), int(PacketType.GRAB_JOB_ALL)}
)
_LOST: Final = error_packet(b"QUEUE_ERROR", b"Shard restarted; the request was lost")


class RecentResults:
    """The last work results (WORK_COMPLETE / FAIL / EXCEPTION) a front sent to each shard."""

    __slots__ = ("_bytes", "_recent")

    def __init__(self, shards: int) -> None:
        self._recent: list[collections.deque[tuple[int, int, bytes]]] = [
            collections.deque() for _ in range(shards)
        ]
        self._bytes = [0] * shards

    def remember(self, shard: int, conn_id: int, ptype: int, body: bytes) -> None:
        """Keep a result sent to `shard`, forgetting the oldest beyond the limits."""
        recent = self._recent[shard]
        recent.append((conn_id, ptype, body))
        size = self._bytes[shard] + len(body)
        while len(recent) > RECENT_RESULTS or size > RECENT_RESULT_BYTES:
            size -= len(recent.popleft()[2])
        self._bytes[shard] = size

    def take(self, shard: int) -> list[tuple[int, int, bytes]]:
        """Return and forget the results kept for `shard`, oldest first."""
        recent = list(self._recent[shard])
        self._recent[shard].clear()
        self._bytes[shard] = 0
        return recent


class ShardRestarts:
    """A front's handling of shard (re)starts: HELLO, then PING/PONG (see the module docstring)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.epochs = [0] * front.shards  # HELLOs seen from each shard
        self.results = RecentResults(front.shards)

    def shard_started(self, shard: int) -> None:
        """Shard `shard` said HELLO: re-register our workers there, re-send recent results, and
        PING it to learn which requests were lost with its predecessor."""
        front = self.front
        self.epochs[shard] += 1
        epoch = self.epochs[shard]
        if epoch > 1:
            log.warning("shard %d restarted", shard)
        for conn in front.conns.values():
            front_lease.shard_restarted(conn, shard)
            on_shard = False
            for func, (s, _base, timeout) in conn.abilities.items():
                if s == shard:
                    on_shard = True
                    if timeout is None:
                        front.forward(conn, shard, PacketType.CAN_DO, func)
                    else:
                        front.forward(conn, shard, PacketType.CAN_DO_TIMEOUT, timeout)
            if conn.sleeping and on_shard:
                front.forward(conn, shard, PacketType.PRE_SLEEP, b"")
        if epoch > 1:
            for conn_id, ptype, body in self.results.take(shard):
                if conn_id in front.by_id:  # a result of a gone connection was requeued anyway
                    front.send_shard(
                        shard,
                        messages.pack(
                            messages.OP_PACKET, conn_id, body, arg=ptype, extra=messages.REPLAYED
                        ),
                    )
        live = pack_live_connections(
            c.id for c in front.conns.values() if c.shards_used >> shard & 1
        )
        front.send_shard(shard, messages.pack(messages.OP_PING, 0, live, extra=epoch))

    def fail_lost_requests(self, shard: int, epoch: int) -> None:
        """The PONG of shard start number `epoch` came: answer the requests sent to `shard`
        before that start and never answered, NO_JOB for a GRAB and an ERROR for anything else."""
        front = self.front
        for conn in list(front.conns.values()):
            lost = False
            for entry in conn.pending:
                if entry[E_SHARD] == shard and entry[E_DATA] is None and entry[E_EPOCH] < epoch:
                    lost = True
                    front.owe(
                        conn, entry, NO_JOB_PACKET if entry[E_PTYPE] in _GRAB_TYPES else _LOST
                    )
            if lost and not conn.closed:
                front.release(conn)
