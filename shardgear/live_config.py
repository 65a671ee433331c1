"""The running config in shared memory: how a reload (SIGHUP) reaches every front and shard.

The supervisor publishes the whole ``Config`` (as JSON) into the settings segment at start and
after each reload, then rings every child's doorbell; each child checks the segment's generation
once per loop turn (one shared-memory read), and on a new one reads the config, applies what it
can, and acknowledges the generation in its control block. Byte layout and the seqlock:
``shm/layout.py``, "Settings". Nothing here touches a socket, so a reload drops no connection.
"""

from __future__ import annotations

from typing import Final

import orjson

from shardgear.config import Config
from shardgear.shm import layout
from shardgear.shm.errors import ShmError
from shardgear.shm.layout import Buffer

#: Room for the JSON of a config (a few hundred bytes plus the function tables). Untouched pages
#: of a shared-memory segment take no memory.
CAPACITY: Final = 4 * 1024 * 1024
SEGMENT_BYTES: Final = layout.settings_bytes(CAPACITY)
_READ_TRIES: Final = 1000


class SettingsWriter:
    """The supervisor's side: `publish` a config."""

    def __init__(self, buf: Buffer) -> None:
        """Initialize the segment in `buf` (once, by its creator)."""
        mv = memoryview(buf).cast("B")
        self.capacity = len(mv) - layout.SETTINGS_HEADER_BYTES
        if self.capacity <= 0:
            raise ShmError(f"settings buffer too small: {len(mv)} bytes")
        layout.SETTINGS_HEADER.pack_into(
            mv, 0, layout.SETTINGS_MAGIC, layout.SETTINGS_VERSION, self.capacity, 0, 0
        )
        self.mv = mv
        self.q = mv[: layout.SETTINGS_HEADER_BYTES].cast("Q")

    @property
    def generation(self) -> int:
        return int(self.q[layout.SETTINGS_GENERATION_Q])

    def publish(self, config: Config) -> int:
        """Write `config`; return its generation (even, > 0). Raises ValueError if its JSON does
        not fit (then nothing changes)."""
        data = orjson.dumps(config.to_json_dict())
        if len(data) > self.capacity:
            raise ValueError(
                f"the config is {len(data)} bytes as JSON, more than the {self.capacity} "
                "a reload can carry"
            )
        q = self.q
        gen = q[layout.SETTINGS_GENERATION_Q]
        q[layout.SETTINGS_GENERATION_Q] = gen + 1  # odd: being written
        start = layout.SETTINGS_HEADER_BYTES
        self.mv[start : start + len(data)] = data
        q[layout.SETTINGS_LENGTH_Q] = len(data)
        q[layout.SETTINGS_GENERATION_Q] = gen + 2
        return int(gen + 2)

    def release(self) -> None:
        self.q.release()
        self.mv.release()


class SettingsReader:
    """A child's side: `changed` once per loop turn, `read` when it says so."""

    def __init__(self, buf: Buffer) -> None:
        mv = memoryview(buf).cast("B")
        magic, version, capacity, _gen, _len = layout.SETTINGS_HEADER.unpack_from(mv, 0)
        if (magic, version) != (layout.SETTINGS_MAGIC, layout.SETTINGS_VERSION):
            raise ShmError("not a settings segment of this version")
        self.mv = mv
        self.q = mv[: layout.SETTINGS_HEADER_BYTES].cast("Q")
        self.capacity = int(capacity)
        # -1: the first turn reads the segment even if the generation is the one the config on
        # our command line came from (a reload may have happened while we started)
        self.seen = -1

    def changed(self) -> bool:
        """True if a config newer than the last one read has been published."""
        return self.q[layout.SETTINGS_GENERATION_Q] != self.seen

    def read(self) -> tuple[int, Config] | None:
        """(generation, config) of the published config; None if none is published or it kept
        changing while being read (try again next turn)."""
        q = self.q
        start = layout.SETTINGS_HEADER_BYTES
        for _ in range(_READ_TRIES):
            gen = int(q[layout.SETTINGS_GENERATION_Q])
            if gen == 0:
                self.seen = 0
                return None
            if gen & 1:
                continue
            length = int(q[layout.SETTINGS_LENGTH_Q])
            data = bytes(self.mv[start : start + min(length, self.capacity)])
            if q[layout.SETTINGS_GENERATION_Q] != gen:
                continue
            self.seen = gen
            return gen, Config.from_json_dict(orjson.loads(data))
        return None

    def release(self) -> None:
        self.q.release()
        self.mv.release()
