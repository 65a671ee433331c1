"""GRAB_JOB across shards: which of a worker's functions a front asks for (ARCHITECTURE.md,
"Priority across shards: the board").

Each shard publishes a board of runnable-job counters per function slot and priority. On a GRAB
the front walks the worker's functions in round-robin order (`Conn.grab_order`), picks the first
with the highest priority that has work on its shard's board (`pick`), moves it to the end of the
order (`rotate`), and sends the GRAB to that shard with the function as the preferred one. If that
shard answers NO_JOB (a stale counter, or another function in the same slot), `regrab` tries the
worker's functions on the shards not asked yet before NO_JOB reaches the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shardgear.connection import E_EPOCH, E_PTYPE, E_SEQ, E_SHARD, E_TRIED, Conn
from shardgear.messages import HEADER, OP_PACKET

if TYPE_CHECKING:
    from shardgear.front import Front


def pick(conn: Conn, skip_shards: int) -> int:
    """Index in `conn.grab_order` of the first of the worker's functions (in round-robin order)
    with the highest priority that has work on its shard's board, or -1. Functions on the shards
    in the bit mask `skip_shards` are not considered."""
    best = -1
    best_prio = 3
    for i, (_func, board, base, shard) in enumerate(conn.grab_order):
        if skip_shards and skip_shards >> shard & 1:
            continue
        if board[base]:
            return i
        if best_prio > 1:
            if board[base + 1]:
                best = i
                best_prio = 1
            elif best_prio > 2 and board[base + 2]:
                best = i
                best_prio = 2
    return best


def rotate(conn: Conn, best: int) -> tuple[bytes, int]:
    """Move the chosen function to the end of the round-robin order; return it and its shard."""
    order = conn.grab_order
    if best == len(order) - 1:
        func, _board, _base, shard = order[best]
    else:
        entry = order.pop(best)
        order.append(entry)
        conn.rr.append(conn.rr.pop(best))
        func, _board, _base, shard = entry
    return func, shard


def send(front: Front, conn: Conn, ptype: int, shard: int, arg: int, func: bytes) -> None:
    """Send `conn`'s GRAB of type `ptype` to `shard` (message arg `arg`: the type, perhaps
    flagged LEASABLE) with `func` as the preferred function, and reserve its reply slot."""
    conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
    conn.pending.append([seq, shard, ptype, front.shard_epochs[shard], None, 1 << shard])
    conn.shards_used |= 1 << shard
    front.outbox[shard].append(HEADER.pack(OP_PACKET, arg, seq, conn.id) + func)


def regrab(front: Front, conn: Conn, shard: int, seq: int) -> bool:
    """Shard `shard` answered NO_JOB to the GRAB numbered `seq` that the boards sent there: try
    the worker's functions on the shards not asked yet. Return True if the GRAB went on to
    another shard (the reply slot stays, with a new seq), False if NO_JOB is the answer."""
    for entry in conn.pending:
        if entry[E_SEQ] == seq and entry[E_SHARD] == shard:
            break
    else:
        return False
    if len(entry) <= E_TRIED:  # not a GRAB
        return False
    best = pick(conn, entry[E_TRIED])
    if best < 0:
        return False
    func, shard = rotate(conn, best)
    if conn.lease is not None and conn.lease_shard == shard:
        conn.lease = None  # that shard puts it back when this GRAB arrives (front_lease.py)
    conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
    entry[E_SEQ] = seq
    entry[E_SHARD] = shard
    entry[E_EPOCH] = front.restarts.epochs[shard]
    entry[E_TRIED] |= 1 << shard
    conn.shards_used |= 1 << shard
    front.outbox[shard].append(HEADER.pack(OP_PACKET, entry[E_PTYPE], seq, conn.id) + func)
    return True
