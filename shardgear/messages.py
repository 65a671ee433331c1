"""Messages between fronts and shards, as carried by the shared-memory rings.

Every ring record is one message: a 16-byte little-endian header followed by a body.

    offset  size  field
    0       2     op      one of the OP_* constants below
    2       2     arg     op-specific: Gearman packet type (OP_PACKET), process index (OP_HELLO)
    4       4     extra   op-specific: the request's sequence number (OP_PACKET, OP_REPLY) or an
                          admin request id (OP_ADMIN*, OP_RELAY*)
    8       8     conn    connection id; ``conn >> 56`` is the index of the front that owns it

The data path (OP_PACKET, OP_SEND) carries Gearman bytes untouched so that neither side re-encodes
what the other already has: a front forwards a request body as it came off the socket, and a shard
sends back complete response packets that the front writes to the socket as they are.
"""

from __future__ import annotations

import struct
from typing import Final

HEADER: Final = struct.Struct("<HHIQ")
HEADER_SIZE: Final = HEADER.size

OP_PACKET: Final = 1  # front -> shard: arg = Gearman packet type, body = request body
OP_SEND: Final = 2  # shard -> front: body = complete response packet(s) for conn
OP_WAKE: Final = 3  # shard -> front: conn is a sleeping worker with work available
OP_EXCEPTION: Final = 4  # shard -> front: body = HANDLE\0DATA of a WORK_EXCEPTION for client conn
OP_DISCONNECT: Final = 5  # front -> shard: conn is gone
OP_HELLO: Final = 6  # both: the sender (index in arg) has (re)started
OP_ADMIN: Final = 7  # front -> shard: extra = request id, body = orjson request
OP_ADMIN_REPLY: Final = 8  # shard -> front: extra = request id, body = orjson reply
OP_CLOSE: Final = 9  # shard -> front: close conn (protocol error found by the shard)
OP_RELAY: Final = 10  # front -> shard 0 -> every front: admin request that needs every front
OP_RELAY_REPLY: Final = 11  # front -> shard 0 -> asking front: reply to an OP_RELAY
OP_REPLY: Final = 12  # shard -> front: the reply to the request whose seq is in `extra`
OP_PING: Final = 13  # front -> shard: extra = marker; answered by OP_PONG after all before it
OP_PONG: Final = 14  # shard -> front: extra = the marker of the OP_PING
OP_LEASE: Final = 15  # shard -> front: arg = GRAB type, body = JOB_ASSIGN* of conn's next job
OP_RECALL: Final = 16  # shard -> front: body = handle: give the lease back if it is unused
OP_LARGE: Final = 17  # never in a ring: a Receiver's stand-in for a message it kept in fragments
LARGE_MARKER: Final = HEADER.pack(OP_LARGE, 0, 0, 0)
"""What `shm.channel.Receiver.receive` returns in place of a fragmented message (`take_large`)."""

# An OP_PACKET arg that is no Gearman packet type (the parser refuses those from a socket):
REVOKE_ABILITY: Final = 0x100  # front -> shard: CANT_DO that also takes back the held jobs
GRAB_LEASED: Final = 0x101  # front -> shard: body = handle: the front answered a GRAB with it
LEASE_RETURN: Final = 0x102  # front -> shard: body = handle: the lease goes back unused
# A flag in the arg of a GRAB_JOB* OP_PACKET: the shard may lease the worker its next job
# (every function of the worker lives on that shard: see lease.py).
LEASABLE: Final = 0x8000

# `extra` of an OP_PACKET carrying a work result re-sent to a restarted shard: the shard applies
# it if the job is still running and otherwise drops it silently.
REPLAYED: Final = 0xFFFFFFFF

FRONT_SHIFT: Final = 56


def pack(op: int, conn: int, body: bytes = b"", arg: int = 0, extra: int = 0) -> bytes:
    """Return one message: header plus body."""
    return HEADER.pack(op, arg, extra, conn) + body


def front_of(conn: int) -> int:
    """Return the index of the front that owns connection id `conn`."""
    return conn >> FRONT_SHIFT


def json_text(raw: bytes) -> str:
    """Bytes -> str for the orjson bodies of admin messages, losslessly (latin-1): function names,
    handles and uniques are arbitrary bytes."""
    return raw.decode("latin-1")


def json_bytes(text: str) -> bytes:
    """The inverse of `json_text`."""
    return text.encode("latin-1")
