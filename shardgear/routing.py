"""Where things live: function name -> shard, job handle -> shard, function name -> board slot.

Every process must agree, so these use stable hashes (zlib), never Python's per-process salted
``hash()``.
"""

from __future__ import annotations

import zlib
from typing import Final

BOARD_SLOTS: Final = 65536  # 768 KiB of u32 counters per shard; see ARCHITECTURE.md
PRIORITIES: Final = 3  # HIGH = 0, NORMAL = 1, LOW = 2


def shard_for(func: bytes, shards: int) -> int:
    """Return the index of the shard that owns function `func`."""
    return zlib.crc32(func) % shards


def board_slot(func: bytes) -> int:
    """Return the board slot whose counters include `func`: the high 16 bits of its crc32, while
    `shard_for` uses the low bits, so the functions of one shard spread over every slot.

    (adler32 was used first: for short names its low bits are just the sum of the bytes, which
    put many names in one slot.)"""
    return (zlib.crc32(func) >> 16) % BOARD_SLOTS


def handle_number(n: int, shard: int, shards: int) -> int:
    """Return the n-th (from 0) handle number that shard `shard` hands out.

    That is ``shard + 1 + n * shards``, so that ``(number - 1) % shards`` names the shard.
    """
    return shard + 1 + n * shards


def shard_for_handle(handle: bytes, shards: int) -> int | None:
    """Return the shard that issued `handle` (``<prefix>:<number>``), or None if not one of ours."""
    _, sep, number = handle.rpartition(b":")
    if not sep or not number.isdigit() or len(number) > 19:
        return None
    n = int(number)
    if n < 1:
        return None
    return (n - 1) % shards
