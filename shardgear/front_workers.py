"""A worker's registrations as its front knows them: CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP.

The front keeps, per connection, the functions a worker registered (``Conn.abilities``: shard,
board index, CAN_DO_TIMEOUT body) and their round-robin order (``Conn.rr``, ``Conn.grab_order``,
read by `shardgear.grab`), and forwards each registration to the shard that owns the function,
so that a restarted shard can be told them again (`shardgear.front_recovery`). A change that
makes the worker's lease unusable gives it back first (`shardgear.front_lease`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardgear import front_lease, routing
from shardgear.access import WORK
from shardgear.connection import Conn
from shardgear.proto.numbers import fits_int64
from shardgear.proto.packets import PacketType

if TYPE_CHECKING:
    from shardgear.front import Front

__all__ = ["can_do", "cant_do", "pre_sleep", "reset_abilities"]

CAN_DO_TIMEOUT: Final = int(PacketType.CAN_DO_TIMEOUT)


def can_do(front: Front, conn: Conn, ptype: int, body: bytes) -> None:
    """CAN_DO / CAN_DO_TIMEOUT: register the function (on its shard, and in the round-robin
    order of `shardgear.grab`), unless the access rules refuse it or it is registered already."""
    timeout: bytes | None = None
    func = body
    if ptype == CAN_DO_TIMEOUT:
        func, sep, value = body.partition(b"\0")
        if not sep or len(value) > 20 or not fits_int64(value):
            front.protocol_close(conn, "bad CAN_DO_TIMEOUT")
            return
        timeout = body
    if conn.rights is not None and not conn.rights.may_work(func):
        front.security.deny(conn, WORK, func)
        return
    old = conn.abilities.get(func)
    if old is not None and old[2] == timeout:
        return  # already registered: gearmand would count a second registration
    shard = routing.shard_for(func, front.shards)
    base = routing.board_slot(func) * 3
    if old is None:
        conn.rr.append(func)
        conn.grab_order.append((func, front.boards[shard], base, shard))
    conn.abilities[func] = (shard, base, timeout)
    front.forward(conn, shard, ptype, body)

def cant_do(front: Front, conn: Conn, ptype: int, body: bytes) -> None:
    """CANT_DO (or REVOKE_ABILITY, when the access rules withdrew it): unregister; a lease of
    that function goes back first."""
    if conn.lease is not None and conn.lease_func == body:
        front_lease.give_back(front, conn)
    if conn.abilities.pop(body, None) is not None:
        i = conn.rr.index(body)
        del conn.rr[i]
        del conn.grab_order[i]
    front.forward(conn, routing.shard_for(body, front.shards), ptype, body)

def reset_abilities(front: Front, conn: Conn, ptype: int, body: bytes) -> None:
    """RESET_ABILITIES: unregister everything (the lease goes back first)."""
    if conn.lease is not None:
        front_lease.give_back(front, conn)
    for s in {v[0] for v in conn.abilities.values()}:
        front.forward(conn, s, ptype, b"")
    conn.abilities.clear()
    conn.rr.clear()
    conn.grab_order.clear()

def pre_sleep(front: Front, conn: Conn, ptype: int, body: bytes) -> None:
    """PRE_SLEEP: the worker sleeps until a shard of its functions has work (NOOP)."""
    conn.sleeping = True
    conn.noop_sent = False
    if conn.lease is not None:  # it found no job, so it should have none: safe anyway
        front_lease.give_back(front, conn)
    for s in {v[0] for v in conn.abilities.values()}:
        front.forward(conn, s, ptype, b"")
