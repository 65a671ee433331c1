"""A front's path for large messages (issue 7): a packet whose body the parser hands out as the
pieces it arrived in (``Parser(large_pieces=True)``) goes to its shard as those pieces, and a
message a shard sent in fragments goes to the socket as those fragments: neither is ever joined
into one buffer, so a message of P bytes costs the front about one P (ARCHITECTURE.md, "What bounds
memory"). Functions of the `Front`, as `front_lease` and `front_workers` are."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardgear import messages, routing
from shardgear.connection import E_DATA, E_SEQ, E_SHARD, Conn, Pending
from shardgear.front_recovery import RECENT_RESULT_BYTES
from shardgear.front_submit import ANSWERED, FORWARD, JOIN, check
from shardgear.messages import HEADER
from shardgear.proto.packets import SUBMIT_TYPES, WORK_TYPES, PacketType
from shardgear.shm.channel import Piece, head_bytes

if TYPE_CHECKING:
    from shardgear.front import Front

__all__ = ["forward_parts", "from_shard", "on_large"]

P = PacketType
_OP_PACKET: Final = messages.OP_PACKET
_OP_REPLY: Final = messages.OP_REPLY
_OP_SEND: Final = messages.OP_SEND
_pack_header = HEADER.pack
_K_OTHER, _K_SUBMIT, _K_WORK = range(3)
_RESULTS: Final = WORK_TYPES - {int(P.WORK_FAIL), int(P.WORK_STATUS)}
_INLINE_RESULTS: Final = frozenset({int(P.WORK_COMPLETE), int(P.WORK_EXCEPTION)})


def on_large(front: Front, conn: Conn, _large: int, frame: tuple[int, list[Piece]]) -> None:
    """A packet with a large body (`Parser` ``large_pieces``): a submission or a work result
    goes to its shard as the pieces it arrived in (as dispatch would send it whole); any
    other packet is joined and handled as usual."""
    ptype, pieces = frame
    kind = _K_SUBMIT if ptype in SUBMIT_TYPES else _K_WORK if ptype in _RESULTS else _K_OTHER
    if kind != _K_OTHER:
        head = head_bytes(pieces, 4096)
        end = head.find(b"\0")
        verdict = check(front, conn, ptype, head, False) if kind == _K_SUBMIT else JOIN
        if verdict == ANSWERED:
            return
        if verdict == FORWARD:
            shard = routing.shard_for(head[:end], front.shards)
            conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
            conn.pending.append([seq, shard, ptype, front.shard_epochs[shard], None])
            conn.shards_used |= 1 << shard
            forward_parts(front, shard, [_pack_header(_OP_PACKET, ptype, seq, conn.id), *pieces])
            return
        if end >= 0 and kind == _K_WORK:
            found = routing.shard_for_handle(head[:end], front.shards)
            if found is not None:
                conn.shards_used |= 1 << found
                header = _pack_header(_OP_PACKET, ptype, 0, conn.id)
                if ptype in _INLINE_RESULTS and sum(map(len, pieces)) <= RECENT_RESULT_BYTES:
                    # kept for a restarted shard, as dispatch does (none bigger is kept)
                    body = b"".join(pieces)
                    front.outbox[found].append(header + body)
                    front.restarts.results.remember(found, conn.id, ptype, body)
                else:
                    forward_parts(front, found, [header, *pieces])
                return
    front.handler_table[ptype](conn, ptype, b"".join(pieces))


def forward_parts(front: Front, shard: int, parts: list[Piece]) -> None:
    """Send a message in parts (a header and a large body as it arrived), never joined, after
    this turn's messages to the same shard."""
    sender = front.senders[shard]
    box = front.outbox[shard]
    if box:
        front.outbox[shard] = []
        sender.send_many(box)
    sender.send_parts(parts)


def from_shard(front: Front, s: int, fragments: list[bytes]) -> None:
    """A message from shard `s` that came in fragments (a big JOB_ASSIGN or result): its
    packet goes to the socket as the fragments themselves, never joined, in its turn among the
    connection's replies; a control message is joined and taken as drain_shards takes one."""
    op, _arg, extra, conn_id = HEADER.unpack_from(fragments[0])
    conn = front.by_id.get(conn_id)
    if op != _OP_REPLY and op != _OP_SEND:
        front.control_message(s, op, extra, conn_id, b"".join(fragments))
        return
    if conn is None:
        return
    pending = conn.pending
    first = fragments[0]
    parts: list[bytes | memoryview] = (
        [memoryview(first)[HEADER.size :]] if len(first) > HEADER.size else []
    )
    parts += fragments[1:]
    if (op == _OP_SEND and not pending) or (
        op == _OP_REPLY and pending and pending[0][E_SEQ] == extra and pending[0][E_SHARD] == s
    ):
        if op == _OP_REPLY:
            pending.popleft()
        front.emit_parts(conn, parts)
        if pending and pending[0][E_DATA] is not None:
            front.release(conn)
    elif op == _OP_REPLY:  # behind replies still owed: kept as its fragments until they go
        front.fill(conn, s, extra, parts)
    else:
        entry: Pending = [-1, -1, 0, 0, None]
        pending.append(entry)
        front.owe(conn, entry, parts)
