"""Gearman binary packets: type numbers, argument counts, encoding and argument splitting.

Wire format (spec section 1.1)::

    offset  size  field
    0       4     magic   b"\\0REQ" (to the server) or b"\\0RES" (from the server)
    4       4     type    uint32 big-endian, a PacketType
    8       4     size    uint32 big-endian, length of the payload that follows
    12      size  payload the arguments joined by single NUL bytes; the last one is unterminated

Argument splitting follows gearmand (``libgearman/command.cc``), not the ``PROTOCOL`` document:
a type with ``ARGC[t] == n`` has ``n - 1`` NUL-terminated arguments and then a last argument
that is the whole remainder of the payload, NULs included. So ``CAN_DO b"foo\\0"`` names the
function ``b"foo\\0"``, and SUBMIT_REDUCE_JOB has four NUL-terminated fields before DATA.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

from shardgear.proto.errors import BadCommand, MissingArguments

REQ_MAGIC: Final = b"\0REQ"
RES_MAGIC: Final = b"\0RES"
HEADER: Final = struct.Struct("!4sII")
HEADER_SIZE: Final = HEADER.size  # 12

_pack_header = HEADER.pack


class PacketType(enum.IntEnum):
    """Gearman packet types, named letter for letter as gearmand's ``GEARMAN_COMMAND_*``.

    Type 0 (``GEARMAN_COMMAND_TEXT``) is gearmand's internal marker for a text line and never a
    valid binary packet type, so it has no member here.
    """

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


MAX_PACKET_TYPE: Final = 42
"""The highest valid type; a header with type 0 or above this closes the connection."""

_T = PacketType

REQUEST_TYPES: Final[frozenset[int]] = frozenset(
    int(t)
    for t in (
        _T.CAN_DO,
        _T.CANT_DO,
        _T.RESET_ABILITIES,
        _T.PRE_SLEEP,
        _T.SUBMIT_JOB,
        _T.GRAB_JOB,
        _T.WORK_STATUS,
        _T.WORK_COMPLETE,
        _T.WORK_FAIL,
        _T.GET_STATUS,
        _T.ECHO_REQ,
        _T.SUBMIT_JOB_BG,
        _T.SUBMIT_JOB_HIGH,
        _T.SET_CLIENT_ID,
        _T.CAN_DO_TIMEOUT,
        _T.WORK_EXCEPTION,
        _T.OPTION_REQ,
        _T.WORK_DATA,
        _T.WORK_WARNING,
        _T.GRAB_JOB_UNIQ,
        _T.SUBMIT_JOB_HIGH_BG,
        _T.SUBMIT_JOB_LOW,
        _T.SUBMIT_JOB_LOW_BG,
        _T.SUBMIT_JOB_EPOCH,
        _T.SUBMIT_REDUCE_JOB,
        _T.SUBMIT_REDUCE_JOB_BACKGROUND,
        _T.GRAB_JOB_ALL,
        _T.GET_STATUS_UNIQUE,
    )
)
"""Types a client or worker may send and the server handles (plain ints, for fast lookups)."""

SUBMIT_TYPES: Final[frozenset[int]] = frozenset(
    int(t)
    for t in (
        PacketType.SUBMIT_JOB,
        PacketType.SUBMIT_JOB_BG,
        PacketType.SUBMIT_JOB_HIGH,
        PacketType.SUBMIT_JOB_HIGH_BG,
        PacketType.SUBMIT_JOB_LOW,
        PacketType.SUBMIT_JOB_LOW_BG,
        PacketType.SUBMIT_JOB_EPOCH,
        PacketType.SUBMIT_REDUCE_JOB,
        PacketType.SUBMIT_REDUCE_JOB_BACKGROUND,
    )
)
"""The requests that submit a job (SUBMIT_JOB_SCHED, which makes a schedule, is not one)."""

WORK_TYPES: Final[frozenset[int]] = frozenset(
    int(t)
    for t in (
        PacketType.WORK_DATA,
        PacketType.WORK_WARNING,
        PacketType.WORK_STATUS,
        PacketType.WORK_COMPLETE,
        PacketType.WORK_FAIL,
        PacketType.WORK_EXCEPTION,
    )
)
"""A worker's WORK_* packets about a job it holds."""

REJECTED_TYPES: Final[frozenset[int]] = frozenset(int(t) for t in PacketType) - REQUEST_TYPES
"""Valid types the server answers with ERROR INVALID_COMMAND "Command not expected" (spec 1.2):
the response types plus UNUSED, ALL_YOURS and SUBMIT_JOB_SCHED. The connection stays open."""

_ARGC_BY_NAME: Final[dict[PacketType, int]] = {
    # gearmand's command.cc table as (argc + 1 if the command has opaque data else argc):
    # the total number of arguments, the last of which is the unterminated remainder.
    _T.CAN_DO: 1,  # FUNC
    _T.CANT_DO: 1,  # FUNC
    _T.RESET_ABILITIES: 0,
    _T.PRE_SLEEP: 0,
    _T.UNUSED: 0,
    _T.NOOP: 0,
    _T.SUBMIT_JOB: 3,  # FUNC UNIQ DATA
    _T.JOB_CREATED: 1,  # HANDLE
    _T.GRAB_JOB: 0,
    _T.NO_JOB: 0,
    _T.JOB_ASSIGN: 3,  # HANDLE FUNC DATA
    _T.WORK_STATUS: 3,  # HANDLE NUM DEN
    _T.WORK_COMPLETE: 2,  # HANDLE DATA
    _T.WORK_FAIL: 1,  # HANDLE
    _T.GET_STATUS: 1,  # HANDLE
    _T.ECHO_REQ: 1,  # DATA
    _T.ECHO_RES: 1,  # DATA
    _T.SUBMIT_JOB_BG: 3,
    _T.ERROR: 2,  # CODE TEXT
    _T.STATUS_RES: 5,  # HANDLE KNOWN RUNNING NUM DEN
    _T.SUBMIT_JOB_HIGH: 3,
    _T.SET_CLIENT_ID: 1,  # ID
    _T.CAN_DO_TIMEOUT: 2,  # FUNC TIMEOUT
    _T.ALL_YOURS: 0,
    _T.WORK_EXCEPTION: 2,  # HANDLE DATA
    _T.OPTION_REQ: 1,  # NAME
    _T.OPTION_RES: 1,  # NAME
    _T.WORK_DATA: 2,  # HANDLE DATA
    _T.WORK_WARNING: 2,  # HANDLE DATA
    _T.GRAB_JOB_UNIQ: 0,
    _T.JOB_ASSIGN_UNIQ: 4,  # HANDLE FUNC UNIQ DATA
    _T.SUBMIT_JOB_HIGH_BG: 3,
    _T.SUBMIT_JOB_LOW: 3,
    _T.SUBMIT_JOB_LOW_BG: 3,
    _T.SUBMIT_JOB_SCHED: 8,  # FUNC UNIQ MIN HOUR MDAY MON WDAY DATA
    _T.SUBMIT_JOB_EPOCH: 4,  # FUNC UNIQ EPOCH DATA
    _T.SUBMIT_REDUCE_JOB: 5,  # FUNC UNIQ REDUCER AGGREGATE DATA
    _T.SUBMIT_REDUCE_JOB_BACKGROUND: 5,
    _T.GRAB_JOB_ALL: 0,
    _T.JOB_ASSIGN_ALL: 5,  # HANDLE FUNC UNIQ REDUCER DATA
    _T.GET_STATUS_UNIQUE: 1,  # UNIQUE
    _T.STATUS_RES_UNIQUE: 6,  # UNIQUE KNOWN RUNNING NUM DEN CLIENT_COUNT
}

ARGC: Final[dict[int, int]] = {int(k): v for k, v in _ARGC_BY_NAME.items()}
"""Number of arguments of every packet type (spec 1.2), keyed by the plain int type."""


def response(ptype: int, *args: bytes) -> bytes:
    """Encode a server-to-peer packet.

    Args:
        ptype: the packet type.
        *args: the arguments, joined with single NUL bytes (the last one unterminated).

    Returns:
        ``\\0RES`` + type + size + payload.
    """
    body = b"\0".join(args)
    return _pack_header(RES_MAGIC, ptype, len(body)) + body


def request(ptype: int, *args: bytes) -> bytes:
    """Encode a peer-to-server packet; as :func:`response` with ``\\0REQ`` magic."""
    body = b"\0".join(args)
    return _pack_header(REQ_MAGIC, ptype, len(body)) + body


def split_args(ptype: int, body: bytes) -> list[bytes]:
    """Split a payload into its ``ARGC[ptype]`` arguments the way gearmand does.

    The first ``ARGC - 1`` arguments are NUL-terminated; the last is the whole remainder and may
    contain NULs. A type with no arguments yields ``[]`` whatever the body (gearmand ignores it).

    Args:
        ptype: a valid packet type (1..42).
        body: the payload.

    Returns:
        Exactly ``ARGC[ptype]`` byte strings.

    Raises:
        MissingArguments: the payload has fewer NULs than ``ARGC - 1``.
        BadCommand: ``ptype`` is not a packet type.
    """
    try:
        argc = ARGC[ptype]
    except KeyError:
        raise BadCommand(f"no argument count for packet type {ptype}") from None
    if argc == 1:
        return [body]
    if argc == 0:
        return []
    args = body.split(b"\0", argc - 1)
    if len(args) != argc:
        raise MissingArguments(f"packet type {ptype} needs {argc} arguments, got {len(args)}")
    return args


def error_packet(code: bytes, text: bytes) -> bytes:
    """Encode an ERROR packet ``CODE\\0TEXT`` (no trailing NUL, as gearmand sends it).

    Use with the ``ERR_*`` pairs of :mod:`shardgear.proto.errors`:
    ``error_packet(*ERR_QUEUE_FULL)``.
    """
    return response(PacketType.ERROR, code, text)


NOOP_PACKET: Final = response(PacketType.NOOP)
"""A complete NOOP packet."""

NO_JOB_PACKET: Final = response(PacketType.NO_JOB)
"""A complete NO_JOB packet."""
