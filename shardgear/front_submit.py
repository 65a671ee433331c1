"""The checks a submission (SUBMIT_JOB*) passes in a front before it goes to its shard, for a
whole packet (`shardgear.front.Front.on_submit`) and for a large one from the start of its body
(`shardgear.front_large.on_large`, which forwards the pieces it arrived in without joining them).
Front.dispatch inlines the usual case: a unique id present and no access rules."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardgear.access import SUBMIT
from shardgear.connection import Conn
from shardgear.proto.numbers import fits_int64
from shardgear.proto.packets import PacketType

if TYPE_CHECKING:
    from shardgear.front import Front

__all__ = ["ANSWERED", "FORWARD", "JOIN", "check"]

FORWARD, ANSWERED, JOIN = range(3)
"""`check`'s verdicts."""
_EPOCH: Final = int(PacketType.SUBMIT_JOB_EPOCH)


def check(front: Front, conn: Conn, ptype: int, head: bytes, whole: bool) -> int:
    """The checks a submission passes before it goes to its shard, made from `head`, the start
    of its body (all of it if `whole`): a unique id (none: the connection is closed, as gearmand
    does), a SUBMIT_JOB_EPOCH's time (not a number: closed), the access rules (ERROR
    PERMISSION_DENIED). Returns ANSWERED when it was refused here, FORWARD when it may go on,
    and JOIN when `head` is only a part and does not hold the fields to check (the caller joins
    the body and takes the usual path, `Front.on_submit`)."""
    end = head.find(b"\0")
    if end < 0:
        if not whole:
            return JOIN
        front.protocol_close(conn, "submit without a unique")
        return ANSWERED
    if ptype == _EPOCH:
        fields = head.split(b"\0", 3)
        if len(fields) < 4 and not whole:
            return JOIN
        if len(fields) < 4 or not fits_int64(fields[2]):
            front.protocol_close(conn, "bad epoch")
            return ANSWERED
    rights = conn.rights
    if rights is not None and not rights.may_submit(head[:end]):
        front.security.deny(conn, SUBMIT, head[:end])
        return ANSWERED
    return FORWARD
