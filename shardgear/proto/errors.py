"""Protocol errors and the gearmand ERROR packet codes and texts.

A :class:`ProtocolError` from the parser means "close this connection": the stream can no longer
be framed. Where gearmand answers with an ERROR packet first, the front does the same; for the
framing errors below gearmand closes without a word (spec section 6).

The ``ERR_*`` constants are ``(CODE, TEXT)`` pairs for :func:`shardgear.proto.packets.error_packet`,
byte for byte what gearmand 1.1.20 sends (checked against the binary). CODE is the libgearman
``gearman_return_t`` name without the ``GEARMAN_`` prefix, and the connection stays open after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final


class ProtocolError(Exception):
    """The peer broke the Gearman framing; the connection must be closed.

    Attributes:
        message: a short human-readable reason, safe to log (never sent to the peer).
        events: events the same :meth:`Parser.events` call had framed before the error, in order.
            The front may act on them before closing, as gearmand handles every packet that
            precedes a bad one. Empty when the error is raised again (the parser's error state is
            sticky) or comes from outside the parser.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.events: Sequence[object] = ()


class BadMagic(ProtocolError):
    """A binary packet whose magic is neither ``\\0REQ`` nor ``\\0RES``."""


class PacketTooLarge(ProtocolError, ValueError):
    """A packet header announces a payload larger than the parser's ``max_packet_size``."""


class BadCommand(ProtocolError):
    """A packet type of 0 (TEXT) or of 43 and above, or one the caller has no argument count for."""


class MissingArguments(ProtocolError):
    """A payload has fewer NUL separators than its packet type's argument count needs."""


class TooManyTokens(ProtocolError):
    """A text admin line with more than 5 tokens (gearmand's TOO_MANY_ARGS)."""


class LineTooLong(ProtocolError):
    """A text admin line longer than the parser's ``max_line`` bytes."""


# -- ERROR packets (CODE, TEXT), spec section 6 -------------------------------------------------

ERR_MAGIC_REQ_EXPECTED: Final = (b"INVALID_MAGIC", b"Request magic expected")
"""A packet with ``\\0RES`` magic was sent to the server."""

ERR_COMMAND_NOT_EXPECTED: Final = (b"INVALID_COMMAND", b"Command not expected")
"""A response-type or unimplemented packet type (see ``packets.REJECTED_TYPES``)."""

ERR_INVALID_COMMAND: Final = (b"INVALID_COMMAND", b"Invalid command expected")
"""Type >= 43 past parsing; unreachable over TCP in gearmand (it closes first). For reference."""

ERR_UNIQUE_TOO_LARGE: Final = (b"ARGUMENT_TOO_LARGE", b"Unique value too large")
"""A SUBMIT* unique longer than 64 bytes."""

ERR_QUEUE_FULL: Final = (b"QUEUE_ERROR", b"Job queue is full")
"""The function's ``maxqueue`` limit for the job's priority is reached (not ``JOB_QUEUE_FULL``)."""

ERR_UNKNOWN_OPTION: Final = (b"UNKNOWN_OPTION", b"Server does not recognize given option")
"""OPTION_REQ with anything but ``exceptions``."""

ERR_WORK_DATA_NOT_FOUND: Final = (b"JOB_NOT_FOUND", b"Job does not exist on server")
"""WORK_DATA or WORK_WARNING for a job this connection does not hold."""

ERR_WORK_RESULT_NOT_FOUND: Final = (b"JOB_NOT_FOUND", b"Job given in work result not found")
"""WORK_STATUS, WORK_COMPLETE or WORK_FAIL for an unknown or not-owned job."""

ERR_EXCEPTION_NOT_FOUND: Final = (
    b"JOB_NOT_FOUND",
    b"An exception was received for a job that does not exist",
)
"""WORK_EXCEPTION for an unknown job."""

ERR_HANDLE_TOO_LARGE: Final = (
    b"ARGUMENT_TOO_LARGE",
    b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
)
"""WORK_FAIL whose handle is 64 bytes or longer."""

# Packet type numbers, spelled out here so that this module imports nothing from packets.py
# (packets.py raises these errors).
_WORK_STATUS: Final = 12
_WORK_COMPLETE: Final = 13
_WORK_FAIL: Final = 14
_WORK_EXCEPTION: Final = 25
_WORK_DATA: Final = 28
_WORK_WARNING: Final = 29

_NOT_FOUND: Final[dict[int, tuple[bytes, bytes]]] = {
    _WORK_DATA: ERR_WORK_DATA_NOT_FOUND,
    _WORK_WARNING: ERR_WORK_DATA_NOT_FOUND,
    _WORK_STATUS: ERR_WORK_RESULT_NOT_FOUND,
    _WORK_COMPLETE: ERR_WORK_RESULT_NOT_FOUND,
    _WORK_FAIL: ERR_WORK_RESULT_NOT_FOUND,
    _WORK_EXCEPTION: ERR_EXCEPTION_NOT_FOUND,
}


def not_found_error(ptype: int) -> tuple[bytes, bytes]:
    """Return gearmand's JOB_NOT_FOUND ``(CODE, TEXT)`` for a WORK_* packet naming an unknown job.

    Args:
        ptype: WORK_DATA, WORK_WARNING, WORK_STATUS, WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION.

    Returns:
        One of ERR_WORK_DATA_NOT_FOUND, ERR_WORK_RESULT_NOT_FOUND, ERR_EXCEPTION_NOT_FOUND.

    Raises:
        ValueError: ``ptype`` is not one of those six types.
    """
    try:
        return _NOT_FOUND[ptype]
    except KeyError:
        raise ValueError(f"packet type {ptype} has no JOB_NOT_FOUND error") from None
