"""The response framer: bytes from a server in, Gearman response packets out (the client side).

A client or worker reads only binary ``\\0RES`` packets: no text lines, no request magic. So this
framer is much simpler than :class:`~shardgear.proto.parser.Parser` (which frames requests for
the server, and stays untouched by this module) and keeps the same contract:

1. No I/O, no clock, no logging: the caller ``feed``s what it received and takes the packets.
2. A header is checked as soon as it is complete (the magic as soon as 4 bytes are in), so an
   oversized packet is refused before its body is buffered.
3. Only :class:`~shardgear.proto.errors.ProtocolError` subclasses escape, and the error is sticky:
   every later call raises it again. Any other exception is a bug.

Buffering: one ``bytes`` object and an offset (``unpack_from`` on it, one slice per body), plus a
list of chunks received while a packet is incomplete, joined once the packet can be complete, so
a large body fed in small pieces costs one join.
"""

from __future__ import annotations

from typing import Final

from shardgear.proto.errors import BadCommand, BadMagic, PacketTooLarge, ProtocolError
from shardgear.proto.packets import HEADER, MAX_PACKET_TYPE, RES_MAGIC

_HEADER_SIZE: Final = HEADER.size
_unpack_header = HEADER.unpack_from

DEFAULT_MAX_RESPONSE_SIZE: Final = 256 * 1024 * 1024
"""Default payload limit of :class:`ResponseParser`: shardgear's own ``--max-packet-size``."""


class ResponseParser:
    """Frames the byte stream a client or worker receives into ``(ptype, body)`` pairs.

    Args:
        max_packet_size: the largest payload accepted, in bytes; a header announcing more raises
            :class:`PacketTooLarge` at once.

    Split a body into its arguments with :func:`shardgear.proto.packets.split_args`.
    """

    __slots__ = ("_chunks", "_data", "_error", "_max", "_need", "_pending", "_pos")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self._max = max_packet_size
        self._data = b""  # bytes being framed
        self._pos = 0  # first unframed byte of _data
        self._chunks: list[bytes] = []  # received while the packet at _pos is incomplete
        self._pending = 0  # total length of _chunks
        self._need = 0  # bytes from _pos that make the partial packet complete
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as packets."""
        return len(self._data) - self._pos + self._pending

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        """Append bytes received from the server; return every packet now complete, in order.

        Args:
            data: what ``recv`` returned (``b""`` is allowed and frames nothing new).

        Returns:
            ``(ptype, body)`` pairs; ``ptype`` is 1..42.

        Raises:
            BadMagic: a header's magic is not ``\\0RES``.
            BadCommand: a header's type is 0 or above 42.
            PacketTooLarge: a header announces more than ``max_packet_size`` bytes.
        """
        if self._error is not None:
            raise self._error.with_traceback(None)
        if type(data) is not bytes:
            data = bytes(data)
        if self._pos < len(self._data):
            if data:
                self._chunks.append(data)
                self._pending += len(data)
            held = len(self._data) - self._pos + self._pending
            if held < self._need and self._need != _HEADER_SIZE:
                return []
            self._data = b"".join([memoryview(self._data)[self._pos :], *self._chunks])
            self._chunks = []
            self._pending = 0
        else:
            self._data = data
        self._pos = 0
        try:
            return self._scan()
        except ProtocolError as exc:
            self._error = exc
            self._data = b""
            self._pos = 0
            self._chunks = []
            self._pending = 0
            raise

    def _scan(self) -> list[tuple[int, bytes]]:
        data = self._data
        pos = 0
        end = len(data)
        out: list[tuple[int, bytes]] = []
        self._need = 0
        while pos < end:
            if end - pos < _HEADER_SIZE:
                magic = data[pos : pos + 4]
                if len(magic) == 4 and magic != RES_MAGIC:
                    raise BadMagic(f"bad response magic {magic!r}")
                self._need = _HEADER_SIZE
                break
            magic, ptype, size = _unpack_header(data, pos)
            if magic != RES_MAGIC:
                raise BadMagic(f"bad response magic {magic!r}")
            if not 0 < ptype <= MAX_PACKET_TYPE:
                raise BadCommand(f"bad packet type {ptype}")
            if size > self._max:
                raise PacketTooLarge(f"packet of {size} bytes exceeds the limit of {self._max}")
            stop = pos + _HEADER_SIZE + size
            if stop > end:
                self._need = stop - pos
                break
            out.append((ptype, data[pos + _HEADER_SIZE : stop]))
            pos = stop
        if pos >= end:
            self._data = b""
            self._pos = 0
        else:
            self._pos = pos
        return out
