"""The server's settings: one frozen dataclass, the only home of defaults.

`Config` holds every setting a flag or the config file (`config_file.py`) can set;
`FunctionRule` / `FunctionSettings` hold the per-function settings of the file's
``[functions."PATTERN"]`` tables and `Config.function_settings` resolves them for one name.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from fnmatch import fnmatchcase
from typing import Any

from shardgear.retries import RetryPolicy

MIB = 1024 * 1024
GIB = 1024 * MIB
MAX_PACKET_SIZE = 0xFFFFFFFF
"""The largest packet body the protocol's u32 size can announce (gearmand's only limit)."""
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical")
LOG_FORMATS = ("auto", "human", "journal")
CLIENT_CERT_MODES = ("required", "optional", "none")  # --tls-client-cert (tls.py)


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


_GLOB_CHARS = frozenset("*?[")


@dataclasses.dataclass(frozen=True)
class FunctionSettings:
    """What one ``[functions."PATTERN"]`` table of the config file sets; None = not set there.

    New per-function settings (retry policies, access rules) are new fields here, each None by
    default, plus one parser in ``config_file.FUNCTION_KEYS``.
    """

    maxqueue: tuple[int, int, int] | None = None
    """Queue limits for HIGH, NORMAL, LOW (0 = unlimited), as the admin ``maxqueue`` sets them."""

    retry: RetryPolicy | None = None
    """The retry policy (``retries.parse_policy`` of the table's ``retry`` table): attempts,
    backoff, the dead set and its bounds. None: gearmand's rules (no retry, no dead set)."""

    def merged(self, other: FunctionSettings) -> FunctionSettings:
        """Self, with every field that self leaves unset taken from `other`."""
        changes = {
            f.name: getattr(other, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is None
        }
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class FunctionRule:
    """One ``[functions."PATTERN"]`` table: an exact function name or a glob (fnmatch: ``*``,
    ``?``, ``[...]``), matched against the name's bytes (the pattern is UTF-8 encoded)."""

    pattern: str
    settings: FunctionSettings

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB_CHARS for c in self.pattern)

    def matches(self, name: bytes) -> bool:
        pattern = self.pattern.encode()
        return fnmatchcase(name, pattern) if self.is_glob else name == pattern


def resolve_function_settings(rules: tuple[FunctionRule, ...], name: bytes) -> FunctionSettings:
    """The settings of function `name`: each field from the table of its exact name if that
    sets it, else from the first glob table (in file order) that matches and sets it."""
    result = FunctionSettings()
    for rule in rules:
        if not rule.is_glob and rule.matches(name):
            result = result.merged(rule.settings)
    for rule in rules:
        if rule.is_glob and rule.matches(name):
            result = result.merged(rule.settings)
    return result


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
    grab_lease: bool = True  # a shard may lease a worker its next job, answered by the front
    max_packet_size: int = MAX_PACKET_SIZE  # gearmand's: any size the u32 header can say
    max_output_buffer: int = 0  # per connection, less the large packet being sent; 0 = 256 MiB
    max_total_output: int = 0  # per front, all connections; 0 = twice the per-connection limit
    max_total_input: int = 0  # per front, unfinished requests; 0 = see total_input_limit
    ring_size: int = 1 * MIB
    backlog: int = 1024
    graceful_timeout: float = 30.0
    log_level: str = "notice"
    log_format: str = "auto"  # auto: journal when stderr is journald's (JOURNAL_STREAM), else human
    store: str = "log"  # "log" (job logs in state_dir) or "none" (in /dev/shm, crashes only)
    state_dir: str = dataclasses.field(default_factory=default_state_dir)
    store_sync: str = (
        "normal"  # sqlite synchronous: "normal" (process crash) or "full" (power loss)
    )
    heartbeat_timeout: float = 20.0  # a serving child whose loop stalls this long is restarted
    metrics: str = ""  # "ADDR:PORT" of the Prometheus listener; "" = off
    http: str = ""  # "ADDR:PORT" of the HTTP API and dashboard process; "" = off
    http_threads: int = 64  # requests the HTTP process serves at once (a foreground one waits)
    config_file: str = ""  # the TOML file the settings came from ("" = flags only)
    functions: tuple[FunctionRule, ...] = ()  # the config file's [functions."PATTERN"] tables
    # TLS (tls.py): a certificate turns it on, on the main listener, or with tls_port on a
    # listener of its own beside the plain one
    tls_cert: str = ""
    tls_key: str = ""  # "" = the key is in tls_cert
    tls_ca: str = ""  # CAs that sign client certificates
    tls_client_cert: str = ""  # required | optional | none; "" = required with a CA, else none
    tls_listen: str = ""  # the TLS listener's address when tls_port is set ("" = every interface)
    tls_port: int = 0  # 0 = TLS on --listen/--port itself
    tls_handshake_timeout: float = 10.0
    # access rules (access.py): the config file's [access] table, checked and normalized
    access: dict[str, Any] = dataclasses.field(default_factory=dict)
    # limits against abuse (limits.py)
    max_connections: int = 65536  # in total; 0 = no limit
    max_connections_per_peer: int = 4096  # per peer address; 0 = no limit
    max_functions: int = 100_000  # functions known to the server
    max_function_name: int = 512  # bytes (gearmand's GEARMAN_FUNCTION_MAX_SIZE)
    max_queued_bytes: int = 1024 * MIB  # payload bytes of the jobs of one function; 0 = no limit
    max_schedules: int = 10_000  # SUBMIT_JOB_SCHED schedules kept (cron.py); 0 = no limit

    @property
    def tls(self) -> bool:
        """True if a TLS listener is configured."""
        return bool(self.tls_cert)

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
    def function_stats(self) -> bool:
        """Whether shards keep per-function counters (``stats.FunctionStats``, published to the
        stats segment): the Prometheus metrics and the HTTP dashboard's throughput read them."""
        return bool(self.metrics or self.http)

    @property
    def output_limit(self) -> int:
        """Bytes a connection may have waiting to be written before it is closed as too slow, not
        counting what is left of the one large packet it is being sent (`connection.unread`)."""
        return self.max_output_buffer or 256 * MIB

    @property
    def total_input_limit(self) -> int:
        """Bytes of unfinished requests all of a front's connections may hold before those holding
        the most are closed: by default twice ``max_packet_size`` but no more than 4 GiB, and
        never less than one packet of ``max_packet_size``."""
        if self.max_total_input:
            return self.max_total_input
        return max(self.max_packet_size, min(2 * self.max_packet_size, 4 * GIB))

    @property
    def total_output_limit(self) -> int:
        """Bytes all of a front's connections may leave unread before the worst are closed."""
        return self.max_total_output or 2 * self.output_limit

    def function_settings(self, name: bytes) -> FunctionSettings:
        """The per-function settings of function `name` (see `resolve_function_settings`)."""
        return resolve_function_settings(self.functions, name)

    def to_json_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (to hand to a child process)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of `to_json_dict` (JSON lists become the tuples they were, a retry policy's
        dict its `RetryPolicy`)."""
        data = dict(data)
        data["functions"] = tuple(
            FunctionRule(rule["pattern"], _function_settings(rule["settings"]))
            for rule in data.get("functions", ())
        )
        return cls(**data)


def _function_settings(data: dict[str, Any]) -> FunctionSettings:
    """A FunctionSettings from its `dataclasses.asdict` form (after a JSON round trip)."""
    fields = {k: _tuples(v) for k, v in data.items()}
    retry = fields.get("retry")
    if retry is not None:
        fields["retry"] = RetryPolicy(**retry)
    return FunctionSettings(**fields)


def _tuples(value: Any) -> Any:
    """JSON arrays back to tuples, recursively."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
