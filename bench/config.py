"""What one load run is: the frozen, picklable description every generator process receives.

Also the small parsers for the CLI's value syntaxes (``64`` or ``16-1024``, ``high=1,normal=8``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("fg", "bg", "mixed")
UNIQUE_MODES = ("none", "distinct", "coalesce")
GRABS = {"job": 9, "uniq": 30, "all": 39}  # GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL
PRIORITY_NAMES = ("high", "normal", "low")

# Every payload starts with this prefix (see driver.PREFIX): u64 submit time (CLOCK_MONOTONIC ns),
# u32 run id, u8 flags. The rest is filler.
PAYLOAD_PREFIX = 13
MIN_PAYLOAD = 16


@dataclass(frozen=True)
class Load:
    """One run of the load generator against one set of targets."""

    targets: tuple[tuple[str, int], ...]
    clients: int = 4
    inflight: int = 100
    workers: int = 16
    functions: int = 4
    func_prefix: str = "bench"
    payload: tuple[int, int] = (64, 64)  # min, max bytes (inclusive)
    result_size: int = 0
    mode: str = "fg"
    bg_share: float = 0.5  # share of background jobs in "mixed"
    priority: tuple[float, float, float] = (0.0, 1.0, 0.0)  # weights high, normal, low
    unique: str = "none"
    coalesce_share: float = 0.2
    grab: str = "job"
    work_time_ms: tuple[float, float] = (0.0, 0.0)
    jobs: int | None = 100_000
    duration: float | None = None
    bg_backlog: int | None = None  # None: clients * inflight; 0: unlimited
    procs: int = 2
    max_time: float = 300.0
    drain_timeout: float = 10.0
    stall_timeout: float = 10.0
    connect_timeout: float = 15.0
    seed: int = 1
    run_id: int = 1
    # TLS (all three, or none: plain text): the CA that signed the server, our certificate, key
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("no target")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if self.unique not in UNIQUE_MODES:
            raise ValueError(f"unique must be one of {UNIQUE_MODES}")
        if self.grab not in GRABS:
            raise ValueError(f"grab must be one of {tuple(GRABS)}")
        if self.payload[0] < MIN_PAYLOAD or self.payload[1] < self.payload[0]:
            raise ValueError(
                f"payload must be at least {MIN_PAYLOAD} bytes (it carries a timestamp)"
            )
        if self.clients < 0 or self.workers < 0 or self.inflight < 1 or self.functions < 1:
            raise ValueError("clients/workers must be >= 0, inflight and functions >= 1")
        if self.procs < 1:
            raise ValueError("procs must be >= 1")
        if (self.jobs is None) == (self.duration is None):
            raise ValueError("give exactly one of a job count or a duration")
        if self.jobs is not None and self.jobs < 0:
            raise ValueError("job count must be >= 0")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be > 0")
        if self.max_time <= 0:
            raise ValueError("max_time must be > 0")
        if sum(self.priority) <= 0 or min(self.priority) < 0:
            raise ValueError("priority weights must be >= 0 with a positive sum")
        if self.work_time_ms[0] < 0 or self.work_time_ms[1] < self.work_time_ms[0]:
            raise ValueError("bad work time range")
        if not 0.0 <= self.bg_share <= 1.0 or not 0.0 <= self.coalesce_share <= 1.0:
            raise ValueError("shares must be within [0, 1]")

    @property
    def backlog_cap(self) -> int:
        """Soft cap on queued-but-not-executed background jobs (0 = unlimited)."""
        if self.bg_backlog is None:
            return max(1, self.clients * self.inflight)
        return self.bg_backlog

    @property
    def has_bg(self) -> bool:
        return self.mode == "bg" or (self.mode == "mixed" and self.bg_share > 0)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["targets"] = [f"{h}:{p}" for h, p in self.targets]
        return d


def parse_range(text: str, cast: type = int) -> tuple[Any, Any]:
    """``"64"`` -> (64, 64); ``"16-1024"`` -> (16, 1024)."""
    lo, sep, hi = text.partition("-")
    a = cast(lo)
    b = cast(hi) if sep else a
    if b < a:
        raise ValueError(f"bad range {text!r}")
    return a, b


def parse_priority(text: str) -> tuple[float, float, float]:
    """``"normal"`` or ``"high=1,normal=8,low=1"`` -> weights (high, normal, low)."""
    weights = dict.fromkeys(PRIORITY_NAMES, 0.0)
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.lower()
        if name not in weights:
            raise ValueError(f"unknown priority {name!r} (use high, normal, low)")
        weights[name] = float(value) if sep else 1.0
    return weights["high"], weights["normal"], weights["low"]


def parse_target(text: str) -> tuple[str, int]:
    """``host:port`` (or ``port`` alone for 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return "127.0.0.1", int(text)
    return host.strip("[]") or "127.0.0.1", int(port)
