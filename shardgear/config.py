"""The server's settings: one frozen dataclass, the only home of defaults."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def cpu_count() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def default_fronts(cpus: int) -> int:
    """Front processes for `cpus` CPUs: half of them (at least one); see BENCHMARKS.md."""
    return max(1, cpus // 2)


def default_shards(cpus: int) -> int:
    """Shard processes for `cpus` CPUs: half of them (at least one); see BENCHMARKS.md."""
    return max(1, cpus // 2)


def default_state_dir() -> str:
    """Where a user's server keeps its store: $XDG_STATE_HOME/shardgear (~/.local/state/...).

    The systemd unit passes ``--state-dir /var/lib/shardgear``.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "shardgear")


def default_handle_prefix() -> str:
    """gearmand's default job-handle prefix, ``H:<node name>``."""
    return "H:" + socket.gethostname().split(".")[0]


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a running server. ``cli.py`` builds it; children get it as JSON."""

    listen: str = ""  # "" = every interface, IPv6 and IPv4, as gearmand
    port: int = 4730
    fronts: int = dataclasses.field(default_factory=lambda: default_fronts(cpu_count()))
    shards: int = dataclasses.field(default_factory=lambda: default_shards(cpu_count()))
    job_retries: int = 0  # 0 = unlimited, as gearmand up to 2.0
    exceptions: bool = False
    job_handle_prefix: str = dataclasses.field(default_factory=default_handle_prefix)
    worker_wakeup: int = 0  # NOOPs per queued job; 0 = every sleeping worker
    max_packet_size: int = 256 * MIB
    max_output_buffer: int = 0  # per connection; 0 = max_packet_size + 16 MiB
    ring_size: int = 1 * MIB
    backlog: int = 1024
    graceful_timeout: float = 30.0
    log_level: str = "warning"
    store: str = "log"  # "log" (job logs in state_dir) or "none" (in /dev/shm, crashes only)
    state_dir: str = dataclasses.field(default_factory=default_state_dir)
    store_sync: str = (
        "normal"  # sqlite synchronous: "normal" (process crash) or "full" (power loss)
    )
    # retry policies: (function name or glob, "key=value,..." as retries.parse_spec reads it)
    retry: tuple[tuple[str, str], ...] = ()
    http: str = ""  # ADDR:PORT of the HTTP API and dashboard process; "" = off
    http_threads: int = 64  # requests the HTTP process serves at once (a foreground one waits)

    @property
    def legacy_store_path(self) -> str:
        """The sqlite store of shardgear before the job log (imported once at start)."""
        return os.path.join(self.state_dir, f"jobs.{self.port}.sqlite3")

    def job_log_path(self, shard: int, supervisor_pid: int) -> str:
        """Shard `shard`'s job log: in the state directory (one set per port, so servers on
        different ports never share jobs), or with ``store="none"`` in /dev/shm under this
        run's shared-memory names (removed when the server stops)."""
        if self.store == "none":
            return f"/dev/shm/shardgear.{self.port}.{supervisor_pid}.log{shard}"
        return os.path.join(self.state_dir, f"jobs.{self.port}.shard{shard}.log")

    @property
    def output_limit(self) -> int:
        """Bytes a connection may have waiting to be written before it is closed as too slow."""
        return self.max_output_buffer or self.max_packet_size + 16 * MIB

    def to_json_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (to hand to a child process)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of `to_json_dict`."""
        data = dict(data)
        data["retry"] = tuple((str(p), str(spec)) for p, spec in data.get("retry", ()))
        return cls(**data)
