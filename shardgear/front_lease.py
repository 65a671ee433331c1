"""A worker's held next job: the front's side of the GRAB lease (ARCHITECTURE.md, "The lease").

A shard may answer a leasable GRAB (every function of the worker on that shard, ``--grab-lease``
on) with the job *and* an OP_LEASE: the complete JOB_ASSIGN* packet of the worker's next job,
built for the same GRAB type (`shardgear.lease`). The front keeps at most one per connection
(``Conn.lease``) and answers the worker's next GRAB of that type from it at once, through the
reply FIFO (so replies stay in request order), telling the shard with GRAB_LEASED; the GRAB
never waits for the shard. Otherwise the lease goes back (LEASE_RETURN) or is dropped.

The front alone decides what becomes of a lease while the worker lives; the shard follows one
rule that the front mirrors: **a GRAB of the worker that reaches the shard while the worker holds
a lease there is the end of that lease**: the shard answers the GRAB with the leased job, or, if a
better job of the worker's functions was queued meanwhile, puts the lease back at the head of its
queue and answers from the queue (`lease.answer`). So the front drops (does not return) a lease:

* that arrives while a GRAB of the worker is waiting for that shard's answer (it crossed the
  GRAB: the shard ends the lease when the GRAB gets there: rings are FIFO per direction, and
  the shard sends a GRAB's reply after any lease it made before);
* when it sends the worker's GRAB to the lease's shard (another GRAB type, or a regrab: the GRAB
  reaches the shard before any later message);
* when that shard restarts (its successor recovered the job as queued: leases are never logged).

It gives a lease back (LEASE_RETURN) when the worker sends CANT_DO of its function, RESET_ABILITIES
or PRE_SLEEP; when a lease arrives that the worker can no longer use (it sleeps, it is closing,
it has unregistered the function, or holds a lease already); when the shard recalls it
(OP_RECALL) and it is unused (a recall that finds it used or gone is ignored: the shard then gets
GRAB_LEASED, or already has it back); and when the worker's GRAB goes elsewhere (its functions
now span shards). A connection that closes takes its lease with it: its DISCONNECT makes the
shard requeue the job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from shardgear import grab
from shardgear.connection import E_DATA, E_PTYPE, E_SEQ, E_SHARD, OPEN, Conn
from shardgear.messages import GRAB_LEASED, HEADER, LEASABLE, LEASE_RETURN, OP_PACKET
from shardgear.proto.packets import PacketType

if TYPE_CHECKING:
    from shardgear.front import Front

__all__ = [
    "arrived",
    "give_back",
    "one_shard",
    "recalled",
    "send_leasable",
    "shard_restarted",
    "use",
    "waited",
]

_GRABS: Final = frozenset(
    {int(PacketType.GRAB_JOB), int(PacketType.GRAB_JOB_UNIQ), int(PacketType.GRAB_JOB_ALL)}
)
_pack = HEADER.pack


def waited(front: Front, conn: Conn, ptype: int) -> bool:
    """A GRAB of `conn` while the answer to its GRAB_LEASED (a lease or none) is on its way:
    the boards do not count a leased job, so a NO_JOB from them could be wrong. The GRAB waits
    for that answer in a reply slot of its own (`Conn.parked`): a lease answers it at once
    (`arrived`); no lease sends it on to the shard. Measured: a third of the GRABs of a busy
    worker come before its lease; sent to the shard, each took one more round trip through it,
    and the lease they crossed was made for nothing. A second GRAB while one waits goes to the
    shard. False if the worker's functions now span shards (the caller goes by the boards)."""
    s = conn.lease_shard
    if not front.grab_lease or one_shard(front, conn) != s:
        return False
    if conn.parked is not None:
        send_leasable(front, conn, ptype, s)
        return True
    # a reply slot no shard reply can fill (seqs are u32): `arrived` fills or forwards it, and a
    # restart of the shard answers it NO_JOB like any slot that was waiting on the dead shard
    entry: list[Any] = [-1, s, ptype, front.shard_epochs[s], None]
    conn.pending.append(entry)
    conn.parked = entry
    return True


def _unpark(front: Front, conn: Conn, shard: int) -> None:
    """The lease the parked GRAB waited for is not coming (none was made, or it cannot serve):
    send the GRAB on to `shard` in the slot it holds (the shard puts back a lease it crossed)."""
    entry = conn.parked
    assert entry is not None
    conn.parked = None
    conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
    entry[E_SEQ] = seq
    entry.append(1 << shard)  # E_TRIED: a GRAB's slot, as grab.send makes it
    conn.shards_used |= 1 << shard
    ptype = entry[E_PTYPE]
    front.outbox[shard].append(_pack(OP_PACKET, ptype | LEASABLE, seq, conn.id))


def one_shard(front: Front, conn: Conn) -> int:
    """The shard of every function `conn` registered, or -1 if they span shards (or there is
    none): only then may its GRAB be leasable (the boards' choice across shards stays as is)."""
    order = conn.grab_order
    if not order:
        return -1
    if front.shards == 1:
        return 0
    s = order[0][3]
    for entry in order:
        if entry[3] != s:
            return -1
    return s


def use(front: Front, conn: Conn, ptype: int) -> bool:
    """A GRAB of type `ptype` from `conn`, which holds a lease. True if it is dealt with: answered
    from the lease (GRAB_LEASED to its shard), or of another type and sent to the lease's shard
    as a plain leasable GRAB (which puts the lease back first: dropped here). False if the
    caller forwards it as usual: the lease went back, since the worker's functions now span
    shards or leasing was turned off."""
    s = conn.lease_shard
    packet = conn.lease
    assert packet is not None
    conn.lease = None
    if front.grab_lease and one_shard(front, conn) == s:
        if ptype == conn.lease_type:
            front.reply(conn, packet)
            front.outbox[s].append(_pack(OP_PACKET, GRAB_LEASED, 0, conn.id) + conn.lease_handle)
            conn.lease_wait = True
        else:
            send_leasable(front, conn, ptype, s)
        return True
    front.outbox[s].append(_pack(OP_PACKET, LEASE_RETURN, 0, conn.id) + conn.lease_handle)
    return False


def _crossed(conn: Conn, shard: int) -> bool:
    """Whether a GRAB of `conn` sent to `shard` waits for its answer: a lease from there crossed
    it, and the shard ends that lease when the GRAB arrives (`lease.answer`)."""
    for entry in conn.pending:
        if (
            entry[E_SHARD] == shard
            and entry[E_DATA] is None
            and entry[E_PTYPE] in _GRABS
            and entry is not conn.parked
        ):
            return True
    return False


def send_leasable(front: Front, conn: Conn, ptype: int, shard: int) -> None:
    """Send `conn`'s GRAB of type `ptype` to `shard`, which owns every function of the worker,
    flagged LEASABLE and with no preferred function: the shard's own round-robin is the
    gearmand 2.0 rule, and it may lease the worker its next job."""
    grab.send(front, conn, ptype, shard, ptype | LEASABLE, b"")


def arrived(front: Front, shard: int, ptype: int, conn_id: int, message: bytes) -> None:
    """OP_LEASE from `shard`: keep the lease for connection `conn_id`'s next GRAB of type
    `ptype`, drop it, or give it back (see the module docstring)."""
    conn = front.by_id.get(conn_id)
    if conn is None:
        return  # closed: its DISCONNECT, behind us in the ring, requeues the job
    if shard == conn.lease_shard:
        conn.lease_wait = False
    parked = conn.parked
    if parked is not None and parked[E_SHARD] == shard:
        if (
            len(message) > 16
            and ptype == parked[E_PTYPE]
            and conn.lease is None
            and conn.closing == OPEN
            and front.grab_lease
            and not _crossed(conn, shard)
        ):
            i = message.find(b"\0", 28)
            func = message[i + 1 : message.find(b"\0", i + 1)]
            where = conn.abilities.get(func)
            if where is not None and where[0] == shard:
                conn.parked = None
                front.owe(conn, parked, message[16:])
                front.release(conn)
                front.outbox[shard].append(
                    _pack(OP_PACKET, GRAB_LEASED, 0, conn_id) + message[28:i]
                )
                conn.lease_shard = shard
                conn.lease_wait = True
                return
        _unpark(front, conn, shard)  # the shard takes back the lease this GRAB crosses
        return
    if len(message) == 16:
        return  # the answer to GRAB_LEASED when the shard leased nothing
    if _crossed(conn, shard):
        return  # it crossed a GRAB sent there, which the shard answers from the queue
    # JOB_ASSIGN*: the 12-byte header, then HANDLE\0FUNCTION\0...
    i = message.find(b"\0", 28)
    j = message.find(b"\0", i + 1)
    handle = message[28:i]
    func = message[i + 1 : j]
    where = conn.abilities.get(func)
    if (
        conn.lease is not None
        or conn.sleeping
        or conn.closing != OPEN
        or where is None
        or where[0] != shard
        or not front.grab_lease
    ):
        front.outbox[shard].append(_pack(OP_PACKET, LEASE_RETURN, 0, conn_id) + handle)
        return
    conn.lease = message[16:]
    conn.lease_type = ptype
    conn.lease_shard = shard
    conn.lease_handle = handle
    conn.lease_func = func


def recalled(front: Front, shard: int, conn_id: int, handle: bytes) -> None:
    """OP_RECALL: give the lease of `handle` back if `conn_id` still holds it unused."""
    conn = front.by_id.get(conn_id)
    if (
        conn is not None
        and conn.lease is not None
        and conn.lease_shard == shard
        and conn.lease_handle == handle
    ):
        give_back(front, conn)


def give_back(front: Front, conn: Conn) -> None:
    """Return `conn`'s lease, if it holds one, to its shard (LEASE_RETURN)."""
    if conn.lease is not None:
        conn.lease = None
        front.outbox[conn.lease_shard].append(
            _pack(OP_PACKET, LEASE_RETURN, 0, conn.id) + conn.lease_handle
        )


def shard_restarted(conn: Conn, shard: int) -> None:
    """`shard` said HELLO: a lease from it is void (its job came back queued there)."""
    if conn.lease_shard == shard:
        conn.lease = None
        conn.lease_wait = False
        conn.parked = None  # its slot is answered NO_JOB with the others lost with the shard
