"""What a front knows about one connection: its socket, parser, registrations and owed replies.

A `Conn` is identified by its object and by `Conn.id` (a u64 unique across fronts and restarts,
see ARCHITECTURE.md "Routing"), never by its file descriptor alone: the kernel gives a closed
descriptor's number to the next connection at once, while replies, gathers and shard messages for
the old one may still be on their way. `Conn.closed` tells every late arrival that its connection
is gone.
"""

from __future__ import annotations

import collections
import socket
from select import EPOLLIN
from typing import TYPE_CHECKING, Any, Final

from shardgear.access import Rights
from shardgear.proto.parser import Parser

if TYPE_CHECKING:  # ssl is imported only when TLS is configured
    from shardgear.tls import TLSStream

Pending = list[Any]
"""A reply owed to a connection, filled by a shard's reply (matched by seq) or a gather: a plain
list (four times cheaper to make than an object in CPython) ``[seq, shard, ptype, epoch, data
(, tried)]``, indexed with the E_* constants. shard -1: filled locally; epoch: the shard's start
count when the request was sent; data: None until filled; tried: for a GRAB, the bit mask of the
shards asked so far."""

E_SEQ: Final = 0
E_SHARD: Final = 1
E_PTYPE: Final = 2
E_EPOCH: Final = 3
E_DATA: Final = 4
E_TRIED: Final = 5  # GRABs only

# Conn.closing: where a connection is on its way out (shardgear.replies, "Closing").
OPEN: Final = 0
"""Reading and answering."""
DRAINING: Final = 1
"""The peer shut down its sending side (EOF): the replies it is owed go out, then we close."""
REFUSING: Final = 2
"""A protocol error: input is read and dropped; owed replies (and any ERROR) go out, then FIN."""
LINGERING: Final = 3
"""Our FIN is sent: input is read and dropped until the peer closes or the linger time is up."""
CLOSED: Final = 4
"""Closed (`Conn.closed` is set too)."""


class Conn:
    """Everything a front knows about one client/worker/admin connection."""

    __slots__ = (
        "abilities",
        "big_end",
        "big_size",
        "client_id",
        "close_by",
        "closed",
        "closing",
        "exceptions",
        "fd",
        "grab_order",
        "id",
        "ip",
        "lease",
        "lease_func",
        "lease_handle",
        "lease_shard",
        "lease_type",
        "lease_wait",
        "names",
        "noop_sent",
        "out",
        "out_bytes",
        "owed",
        "owed_max",
        "parked",
        "parser",
        "pending",
        "rights",
        "rmask",
        "rr",
        "sent",
        "seq",
        "shards_used",
        "sleeping",
        "sock",
        "want_write",
    )

    def __init__(
        self,
        conn_id: int,
        sock: socket.socket | TLSStream,
        parser: Parser,
        exceptions: bool,
        ip: str,
    ) -> None:
        self.id = conn_id
        self.sock = sock
        self.fd = sock.fileno()
        self.ip = ip  # the peer's address as text (`sockets.address_text`)
        self.parser = parser
        self.closed = False  # set once by Front.close; nothing is sent or owed after that
        self.closing = OPEN  # OPEN, DRAINING, REFUSING, LINGERING or CLOSED
        self.close_by = 0.0  # monotonic deadline of DRAINING, REFUSING and LINGERING
        self.rmask = EPOLLIN  # the epoll events wanted besides EPOLLOUT: 0 once input has ended
        self.out: list[bytes | memoryview] = []
        self.out_bytes = 0
        self.sent = 0  # bytes written to the socket since it opened
        # the large packet in transit (`unread`): where it ends, counted as `sent` counts, and
        # its size; big_end <= sent: none
        self.big_end = 0
        self.big_size = 0
        self.pending: collections.deque[Pending] = collections.deque()  # see Pending
        # bytes of the replies filled in `pending` and held there behind one not filled yet
        # (`unread` counts them), and the largest such reply of LARGE_OUTPUT or more since
        # none was held (the one `unread` may leave out, as it leaves out a packet in transit)
        self.owed = 0
        self.owed_max = 0
        self.seq = 0
        # function -> (shard, board base index, CAN_DO_TIMEOUT body or None)
        self.abilities: dict[bytes, tuple[int, int, bytes | None]] = {}
        self.rr: list[bytes] = []  # the worker's functions in round-robin order
        # rr's functions, in the same order, as (function, board, board base index, shard)
        self.grab_order: list[tuple[bytes, memoryview, int, int]] = []
        self.exceptions = exceptions
        self.client_id = b"-"
        self.sleeping = False
        self.noop_sent = False
        self.shards_used = 0  # bit mask of shards that may hold state for this connection
        self.want_write = False
        self.names: tuple[str, ...] = ()  # the names its verified TLS client certificate proves
        self.rights: Rights | None = None  # its access decisions; None: nothing is restricted
        # its held next job (front_lease.py): the JOB_ASSIGN* packet, for GRABs of lease_type
        self.lease: bytes | None = None
        self.lease_type = 0
        self.lease_shard = 0
        self.lease_handle = b""
        self.lease_func = b""
        self.lease_wait = False  # GRAB_LEASED sent to lease_shard, whose OP_LEASE is to come
        self.parked: list[Any] | None = None  # slot of a GRAB waiting for that OP_LEASE


LARGE_OUTPUT: Final = 1 << 20
"""A packet this big, queued for a connection, is one the output caps may leave out (`unread`)."""


def unread(conn: Conn) -> int:
    """The bytes of `conn`'s unread output that the output caps count (``--max-output-buffer``,
    ``--max-total-output``): all of ``conn.out`` and the replies held in ``conn.pending`` behind
    one still owed (``conn.owed``), but one large packet: what is still unsent of the one in
    transit (`in_transit`), or the largest one held, whichever is more.

    A slow reader is closed when its backlog grows, not because one packet it asked for is big:
    gearmand sends a packet of any size the u32 header can say, so a cap that had to admit one
    such packet whole would admit 4 GiB of backlog per connection. Replies held behind an owed
    one count: a client that pipelined echoes behind a request to a stopped shard made a front
    hold 200 MiB past a 4 MiB cap."""
    left = conn.big_end - conn.sent
    spare = min(left, conn.big_size) if left > 0 else 0
    if conn.owed_max > spare:
        spare = conn.owed_max
    held = conn.out_bytes + conn.owed
    return held - spare if held > spare else 0


def in_transit(conn: Conn, size: int) -> None:
    """A packet of `size` bytes (at least `LARGE_OUTPUT`) is about to join ``conn.out``: unless
    another is still in transit, it becomes the one `unread` leaves out."""
    if conn.big_end <= conn.sent:
        conn.big_size = size
        conn.big_end = conn.sent + conn.out_bytes + size
