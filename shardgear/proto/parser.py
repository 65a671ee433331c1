"""The incremental framer: bytes from a connection in, Gearman packets and admin lines out.

Theory of operation
-------------------
One port carries binary packets and text admin lines, decided per event by its first byte
(spec 1.1): ``\\0`` starts a 12-byte binary header, anything else a text line up to ``\\n``.

The parser holds the bytes it has not framed yet in two parts:

* ``_data`` / ``_pos``: one immutable ``bytes`` object and the offset of its first unframed byte.
  Headers are read with ``Struct.unpack_from(_data, pos)`` and a body is one slice of ``_data``:
  one copy, no bytearray-to-bytes conversion. When a connection's ``recv`` ends on an event
  boundary (the usual case for request/response clients) ``feed`` adopts the received object as
  ``_data`` without copying it.
* ``_chunks``: what arrived after ``_data`` ran out in the middle of an event. Appending is O(1);
  the chunks are joined once, when the pending event can be complete (``_need`` bytes for a packet
  whose header has been seen, or a chunk with a ``\\n`` for a text line; a partial header, under
  12 bytes, is merged at every call so that its magic is checked as soon as it is in).
  So a 64 MiB body fed in 64 KiB pieces costs one join, never a quadratic series of
  concatenations; bodies of at least ``_LARGE`` bytes are joined straight from the chunks,
  without first joining the header in. Nothing ever needs compacting: consumed ``bytes`` objects
  are simply dropped.

House rules
-----------
1. No I/O, no clock, no logging: the front calls ``feed`` then ``events`` (or ``next_event``).
2. Every header is checked as soon as it is complete (and the magic as soon as 4 bytes are in), so
   an oversized packet is refused before its body is buffered.
3. Only :class:`~shardgear.proto.errors.ProtocolError` subclasses escape; anything else is a bug.
   After one is raised the parser is broken for good: every later call raises it again.
4. After ``events`` returns, at most one partial event is held: fewer than
   ``12 + max_packet_size`` bytes of a packet, or at most ``max_line`` bytes of a text line.
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final, NamedTuple, NoReturn

from shardgear.proto.errors import (
    BadCommand,
    BadMagic,
    LineTooLong,
    PacketTooLarge,
    ProtocolError,
    TooManyTokens,
)
from shardgear.proto.packets import HEADER, MAX_PACKET_TYPE, REQ_MAGIC, RES_MAGIC

RESPONSE_MAGIC_TYPE: Final = -1
"""``Packet.ptype`` of a complete packet that came with ``\\0RES`` magic (its real type is dropped).

gearmand answers such a packet with ERROR INVALID_MAGIC "Request magic expected" and keeps the
connection open, so the parser consumes the packet whole and goes on framing what follows.
(gearmand does parse the arguments first and closes if NULs are missing; shardgear does not.)"""

ADMIN_LINE_TYPE: Final = 0
"""``ptype`` of an admin line in the pairs of :meth:`Parser.feed_frames` (no packet has type 0)."""

LARGE_PACKET_TYPE: Final = MAX_PACKET_TYPE + 1
"""``ptype`` of a large packet in the pairs of :meth:`Parser.feed_frames` of a parser made with
``large_pieces``: the pair is ``(LARGE_PACKET_TYPE, (ptype, pieces))``, the body as the buffers it
arrived in (never joined), of at least ``LARGE_BODY`` bytes in all."""

LARGE_BODY: Final = 1 << 20
"""Bodies this big are joined from the received chunks directly (or, with ``large_pieces``, not
joined at all)."""

Frame = tuple[int, Any]
"""What :meth:`Parser.feed_frames` yields: ``(ptype, body)`` for a packet, as :class:`Packet`;
``(ADMIN_LINE_TYPE, tokens)`` for an admin line, as :class:`AdminLine`."""

MAX_TOKENS: Final = 5
"""More tokens than this on one admin line closes the connection (gearmand TOO_MANY_ARGS)."""

_LARGE: Final = LARGE_BODY
_HEADER_SIZE: Final = HEADER.size
# received pieces under this many bytes are merged while a partial event waits (Parser.feed)
_SMALL_CHUNK: Final = 4096
_unpack_header = HEADER.unpack_from
_split_spaces = re.compile(b" +").split


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel."""

    NEED_DATA = enum.auto()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by :meth:`Parser.next_event` when no complete event is buffered."""


class Packet(NamedTuple):
    """A complete binary request: its type and its raw payload.

    ``ptype`` is 1..42, or :data:`RESPONSE_MAGIC_TYPE` for a packet sent with response magic.
    Split the payload with :func:`shardgear.proto.packets.split_args`.
    """

    ptype: int
    body: bytes


class AdminLine(NamedTuple):
    """A complete text admin line, split the way gearmand splits it.

    One trailing ``\\r`` is stripped and the line is split at every run of spaces (tabs are not
    separators). As in gearmand, leading spaces give an empty first token and trailing spaces an
    empty last token (``b"status \\r\\n"`` is ``[b"status", b""]``, which matters for the 5-token
    limit and for ``cancel job H``). An empty line gives ``[]``.
    """

    tokens: list[bytes]


Event = Packet | AdminLine
"""What the parser yields."""

_tuple_new = tuple.__new__  # tuple.__new__(Packet, (t, b)) skips Packet.__new__: ~50 ns less


def _tokenize(line: bytes) -> list[bytes]:
    if line[-1:] == b"\r":
        line = line[:-1]
    if not line:
        return []
    tokens = _split_spaces(line)
    if len(tokens) > MAX_TOKENS:
        raise TooManyTokens(f"admin line has {len(tokens)} tokens, at most {MAX_TOKENS} allowed")
    return tokens


class Parser:
    """Frames the byte stream of one connection into :class:`Packet` and :class:`AdminLine` events.

    Args:
        max_packet_size: the largest payload accepted; a header announcing more raises
            :class:`PacketTooLarge` at once.
        max_line: the longest admin line accepted, in bytes before the ``\\n``.
        large_pieces: :meth:`feed_frames` returns a body of at least ``LARGE_BODY`` bytes as the
            list of buffers it arrived in (see :data:`LARGE_PACKET_TYPE`), not joined: whoever
            forwards it need not hold it twice.
    """

    __slots__ = (
        "_chunks",
        "_data",
        "_error",
        "_large_pieces",
        "_line",
        "_max_line",
        "_max_packet_size",
        "_need",
        "_pending",
        "_pos",
        "_ptype",
        "_scanned",
    )

    def __init__(
        self,
        max_packet_size: int = 256 * 1024 * 1024,
        max_line: int = 8192,
        large_pieces: bool = False,
    ) -> None:
        self._max_packet_size = max_packet_size
        self._large_pieces = large_pieces
        self._max_line = max_line
        self._data = b""  # bytes being framed
        self._pos = 0  # offset of the first unframed byte of _data
        self._chunks: list[bytes] = []  # received after _data, not joined yet
        self._pending = 0  # total length of _chunks
        self._need = 0  # join once this many bytes from _pos are held (partial packet)
        self._ptype = 0  # event type of the partial packet whose header was seen
        self._line = False  # the partial event is a text line: join once a chunk has "\n"
        self._scanned = 0  # _chunks[:_scanned] are known to hold no "\n"
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._data) - self._pos + self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer. ``b""`` is allowed and does nothing.

        ``bytes`` is kept as is (no copy); another buffer is copied into ``bytes`` first.

        Never raises; errors surface from :meth:`events` / :meth:`next_event`. After an error
        the data is dropped.
        """
        if type(data) is not bytes:
            data = bytes(data)
        if self._chunks or self._pos < len(self._data):
            if data and self._error is None:
                chunks = self._chunks
                if chunks and len(data) < _SMALL_CHUNK and len(chunks[-1]) < _SMALL_CHUNK:
                    # A peer that trickles a request a byte at a time would otherwise make each
                    # byte a bytes object of ~40, past what --max-total-input counts (buffered).
                    chunks[-1] += data
                    if self._scanned == len(chunks):
                        self._scanned -= 1  # the merged chunk may now hold the "\n"
                else:
                    chunks.append(data)
                self._pending += len(data)
        elif self._error is None:
            self._data = data
            self._pos = 0

    def next_event(self) -> Packet | AdminLine | NeedData:
        """Return the next complete event, or :data:`NEED_DATA`.

        Raises:
            ProtocolError: a subclass naming what is wrong; the connection must be closed. Any
                other exception is a bug.
        """
        if self._error is not None:
            self._raise_again()
        out: list[Event] = []
        try:
            if self._chunks:
                joined = self._join(False)
                if joined is False:
                    return NEED_DATA
                if joined is not True:
                    packet: Packet = joined
                    return packet
            self._scan(out, True, False)
        except ProtocolError as exc:
            self._fail(exc, out)
            raise
        return out[0] if out else NEED_DATA

    def events(self) -> list[Event]:
        """Return every complete event buffered, in order (possibly none).

        Raises:
            ProtocolError: as :meth:`next_event`. Events framed before the error in this call
                are in the exception's ``events`` attribute. Any other exception is a bug.
        """
        if self._error is not None:
            self._raise_again()
        return self._drain(plain=False)

    def feed_frames(self, data: bytes) -> list[Frame]:
        """``feed(data)`` then every complete event, as plain pairs (the front's fast path).

        A packet is ``(ptype, body)`` (a plain tuple, or a :class:`Packet`, which is one too);
        an admin line is ``(ADMIN_LINE_TYPE, tokens)``. Otherwise as :meth:`events`: on a
        :class:`ProtocolError` the pairs framed before it are in its ``events`` attribute.
        """
        if self._error is not None:
            self._raise_again()
        if self._chunks or self._pos < len(self._data):
            self.feed(data)
        else:
            if type(data) is not bytes:
                data = bytes(data)
            self._data = data
            self._pos = 0
        return self._drain(plain=True)

    def _drain(self, plain: bool) -> list[Any]:
        """Frame every complete event buffered: `Event` objects, or plain pairs if `plain`."""
        out: list[Any] = []
        try:
            if self._chunks:
                joined = self._join(plain)
                if joined is False:
                    return out
                if joined is not True:
                    out.append(joined)
            self._scan(out, False, plain)
        except ProtocolError as exc:
            self._fail(exc, out)
            raise
        return out

    # -- internals ---------------------------------------------------------------------------

    def _raise_again(self) -> NoReturn:
        error = self._error
        assert error is not None
        error.events = ()
        raise error.with_traceback(None)

    def _fail(self, exc: ProtocolError, out: list[Event]) -> None:
        """Enter the sticky error state, dropping everything buffered."""
        self._error = exc
        self._data = b""
        self._pos = 0
        self._chunks = []
        self._pending = 0
        exc.events = out

    def _join(self, plain: bool) -> Any:
        """Merge ``_chunks`` into ``_data`` if the partial event can be complete.

        Returns False if it cannot yet, True once merged, or the partial packet itself when its
        large body was assembled straight from the chunks (``_data`` then holds what follows);
        for `plain` frames of a ``large_pieces`` parser, the pair of :data:`LARGE_PACKET_TYPE`.
        """
        chunks = self._chunks
        held = len(self._data) - self._pos + self._pending
        if self._line:
            for i in range(self._scanned, len(chunks)):
                if b"\n" in chunks[i]:
                    break
            else:
                self._scanned = len(chunks)
                if held > self._max_line:
                    raise LineTooLong(f"admin line longer than {self._max_line} bytes")
                return False
        elif held < self._need and self._need != _HEADER_SIZE:
            # (a partial header, under 12 bytes, is always merged so its magic is checked early)
            return False
        head = memoryview(self._data)[self._pos :]
        self._chunks = []
        self._pending = 0
        self._pos = 0
        self._line = False
        self._scanned = 0
        body_size = self._need - _HEADER_SIZE
        self._need = 0
        if body_size < _LARGE:
            self._data = b"".join([head, *chunks])
            return True
        # A large body: join it from the pieces directly, leaving the header out.
        parts: list[bytes | memoryview] = [head[_HEADER_SIZE:]] if len(head) > _HEADER_SIZE else []
        have = len(head) - _HEADER_SIZE
        rest: list[bytes | memoryview] = []
        for i, chunk in enumerate(chunks):
            if have + len(chunk) >= body_size:
                cut = body_size - have
                parts.append(memoryview(chunk)[:cut])
                rest.append(memoryview(chunk)[cut:])
                rest.extend(chunks[i + 1 :])
                break
            parts.append(chunk)
            have += len(chunk)
        self._data = b"".join(rest)
        if plain and self._large_pieces:
            return (LARGE_PACKET_TYPE, (self._ptype, parts))
        return _tuple_new(Packet, (self._ptype, b"".join(parts)))

    def _scan(self, out: list[Any], one: bool, plain: bool) -> None:
        """Frame complete events from ``_data[_pos:]`` into ``out`` (only the first if ``one``),
        as plain ``Frame`` pairs if ``plain``."""
        data = self._data
        pos = self._pos
        end = len(data)
        max_size = self._max_packet_size
        append = out.append
        self._need = 0
        self._line = False
        while pos < end:
            if data[pos] == 0:
                if end - pos < _HEADER_SIZE:
                    magic = data[pos : pos + 4]
                    if len(magic) == 4 and magic != REQ_MAGIC and magic != RES_MAGIC:
                        raise BadMagic(f"bad packet magic {magic!r}")
                    self._need = _HEADER_SIZE
                    break
                magic, ptype, size = _unpack_header(data, pos)
                if magic != REQ_MAGIC or not 0 < ptype <= MAX_PACKET_TYPE or size > max_size:
                    ptype = self._odd_header(magic, ptype, size)
                start = pos + _HEADER_SIZE
                stop = start + size
                if stop > end:
                    self._need = stop - pos
                    self._ptype = ptype
                    break
                if plain:
                    append((ptype, data[start:stop]))
                else:
                    append(_tuple_new(Packet, (ptype, data[start:stop])))
                pos = stop
            else:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    if end - pos > self._max_line:
                        raise LineTooLong(f"admin line longer than {self._max_line} bytes")
                    self._line = True
                    break
                if nl - pos > self._max_line:
                    raise LineTooLong(f"admin line longer than {self._max_line} bytes")
                tokens = _tokenize(data[pos:nl])
                append((ADMIN_LINE_TYPE, tokens) if plain else AdminLine(tokens))
                pos = nl + 1
            if one:
                break
        if pos >= end:
            self._data = b""  # let a large consumed buffer go now
            self._pos = 0
        else:
            self._pos = pos

    def _odd_header(self, magic: bytes, ptype: int, size: int) -> int:
        """Check a header off the fast path: return the event type to use, or raise."""
        if magic != REQ_MAGIC and magic != RES_MAGIC:
            raise BadMagic(f"bad packet magic {magic!r}")
        if not 0 < ptype <= MAX_PACKET_TYPE:
            raise BadCommand(f"bad packet type {ptype}")
        if size > self._max_packet_size:
            raise PacketTooLarge(
                f"packet of {size} bytes exceeds the limit of {self._max_packet_size}"
            )
        return RESPONSE_MAGIC_TYPE
