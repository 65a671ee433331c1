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
from typing import Any, Final

from shardgear.access import Rights
from shardgear.proto.parser import Parser
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


class Conn:
    """Everything a front knows about one client/worker/admin connection."""

    __slots__ = (
        "abilities",
        "client_id",
        "closed",
        "exceptions",
        "fd",
        "grab_order",
        "id",
        "ip",
        "names",
        "noop_sent",
        "out",
        "out_bytes",
        "parser",
        "pending",
        "rights",
        "rr",
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
        self.out: list[bytes | memoryview] = []
        self.out_bytes = 0
        self.pending: collections.deque[Pending] = collections.deque()  # see Pending
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
