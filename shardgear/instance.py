"""Names of one running server's shared-memory objects, agreed by the supervisor and its children.

Every name is ``/shardgear.<port>.<supervisor pid>.<what>`` so that a new supervisor can find and
remove what a crashed one left behind (`shm.segment.sweep_stale`).
"""

from __future__ import annotations

import dataclasses


def prefix_for_port(port: int) -> str:
    """The name prefix shared by every server instance on `port`."""
    return f"/shardgear.{port}."


@dataclasses.dataclass(frozen=True)
class Instance:
    """The shared-memory names of one server instance."""

    port: int
    supervisor_pid: int
    fronts: int
    shards: int

    @property
    def prefix(self) -> str:
        return f"{prefix_for_port(self.port)}{self.supervisor_pid}"

    def to_shard(self, front: int, shard: int) -> str:
        """The ring that front `front` writes and shard `shard` reads."""
        return f"{self.prefix}.f{front}s{shard}"

    def to_front(self, shard: int, front: int) -> str:
        """The ring that shard `shard` writes and front `front` reads."""
        return f"{self.prefix}.s{shard}f{front}"

    def board(self, shard: int) -> str:
        """Shard `shard`'s board of runnable-job counters."""
        return f"{self.prefix}.board{shard}"

    @property
    def control(self) -> str:
        """The control block: one slot per child (heartbeat, pid, state, running jobs)."""
        return f"{self.prefix}.control"

    @property
    def settings(self) -> str:
        """The running config, republished on each reload (``live_config``)."""
        return f"{self.prefix}.settings"

    @property
    def stats(self) -> str:
        """Counters and function tables for operators (``stats``)."""
        return f"{self.prefix}.stats"

    def all_names(self) -> list[str]:
        names = [self.control, self.settings, self.stats]
        for s in range(self.shards):
            names.append(self.board(s))
            for f in range(self.fronts):
                names += [self.to_shard(f, s), self.to_front(s, f)]
        return names

    def front_slot(self, front: int) -> int:
        """Control-block slot of front `front`."""
        return self.shards + front

    def shard_slot(self, shard: int) -> int:
        """Control-block slot of shard `shard`."""
        return shard

    @property
    def http_slot(self) -> int:
        """Control-block slot of the HTTP process (``--http``), after every front and shard."""
        return self.shards + self.fronts
