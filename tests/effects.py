"""Reading a scheduler's output in tests: its messages as ``(op, conn, body)`` effects."""

from __future__ import annotations

from shardgear.messages import HEADER, OP_REPLY, OP_SEND
from shardgear.scheduler import Scheduler


def take_effects(s: Scheduler) -> list[tuple[int, int, bytes]]:
    """The messages `s` produced since the last call, as (op, conn, body), and forget them.

    OP_REPLY (a reply carrying its request's sequence number) reads as OP_SEND."""
    out, s.out = s.out, []
    effects = []
    for m in out:
        op, _arg, _extra, conn = HEADER.unpack_from(m)
        effects.append((OP_SEND if op == OP_REPLY else op, conn, m[16:]))
    return effects
