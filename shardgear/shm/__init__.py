"""Shared memory between shardgear processes: rings, channels, boards, control blocks, segments.

See ``shardgear.shm.layout`` for every byte layout and the memory-ordering assumptions.
"""

from __future__ import annotations

from shardgear.shm.channel import FLAG_CONT, FLAG_MORE, Receiver, Sender
from shardgear.shm.errors import ShmError
from shardgear.shm.layout import (
    BOARD_BYTES,
    CONTROL_BYTES,
    Board,
    board_index,
    board_view,
    control_bytes,
    control_view,
    ring_bytes,
)
from shardgear.shm.ring import Ring
from shardgear.shm.segment import (
    Segment,
    list_segments,
    pid_alive,
    sweep_stale,
    unlink_quietly,
)

__all__ = [
    "BOARD_BYTES",
    "CONTROL_BYTES",
    "FLAG_CONT",
    "FLAG_MORE",
    "Board",
    "Receiver",
    "Ring",
    "Segment",
    "Sender",
    "ShmError",
    "board_index",
    "board_view",
    "control_bytes",
    "control_view",
    "list_segments",
    "pid_alive",
    "ring_bytes",
    "sweep_stale",
    "unlink_quietly",
]
