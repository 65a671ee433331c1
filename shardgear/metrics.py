"""Prometheus metrics (``--metrics ADDR:PORT``), served by the supervisor from the stats segment.

A scrape reads shared memory only (``stats.StatsReader``: the children's counter blocks and the
shards' function tables, published at most once a second) and ``/proc``; it never asks a front or a
shard anything, so its cost falls on the supervisor alone (BENCHMARKS.md, "Metrics"). The
exposition format is ``prometheus_client``'s.

Metrics (labels in braces; ``role`` is front, shard or http, ``index`` its number):

* per function: ``shardgear_jobs_queued{function,priority}``, ``shardgear_jobs_running{function}``,
  ``shardgear_workers{function}``; ``shardgear_jobs_{submitted,completed,failed,exception,requeued,
  dropped}_total{function,priority}``; histograms ``shardgear_job_queue_wait_seconds`` and
  ``shardgear_job_run_seconds{function,priority}``. Function tables are up to a second old.
* per process: ``shardgear_connections``, ``shardgear_connections_accepted_total``,
  ``shardgear_protocol_closes_total``, ``shardgear_backpressure_pauses_total``,
  ``shardgear_access_denied_total{action}`` (fronts);
  ``shardgear_shard_jobs_queued``, ``shardgear_shard_jobs_running``,
  ``shardgear_store_commits_total``, ``shardgear_store_commit_failures_total`` (job log writes),
  histograms ``shardgear_store_commit_seconds`` and ``shardgear_store_batch_bytes``,
  ``shardgear_job_log_bytes``, ``shardgear_job_log_snapshots_total`` (shards);
  ``shardgear_child_restarts_total``, ``shardgear_process_cpu_seconds_total``,
  ``shardgear_process_resident_memory_bytes`` (all three, the HTTP process of ``--http`` too);
  ``shardgear_ring_used_bytes{from,to}`` and ``shardgear_ring_capacity_bytes{from,to}`` per ring;
  ``shardgear_build_info{version}``; and the supervisor's standard ``process_*`` metrics.

Counters survive a child's restart (``StatsReader.retire``); gauges are the live process's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shardgear import __version__, stats
from shardgear.httpd import WSGIApp
from shardgear.shm import layout

PRIORITIES: Final = ("high", "normal", "low")
_TICKS: Final = os.sysconf("SC_CLK_TCK")
#: action label -> a front's stats block counter of requests the access rules refused
_DENIALS: Final = (
    ("submit", layout.ST_DENIED_SUBMIT),
    ("work", layout.ST_DENIED_WORK),
    ("status", layout.ST_DENIED_STATUS),
    ("admin", layout.ST_DENIED_ADMIN),
)
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Process:
    """A child slot as the collector sees it."""

    role: str
    index: int
    slot: int
    pid: int  # 0 while no process fills the slot
    restarts: int


@dataclass(frozen=True)
class RingUse:
    """Bytes in one ring (``tail - head``) and its capacity."""

    source: str  # "front0"
    target: str  # "shard1"
    used: int
    capacity: int


class Source:
    """What the collector reads: the supervisor fills in the callables."""

    def __init__(
        self,
        reader: stats.StatsReader,
        processes: Callable[[], list[Process]],
        rings: Callable[[], list[RingUse]],
    ) -> None:
        self.reader = reader
        self.processes = processes
        self.rings = rings


def _function_label(key: str) -> str:
    """A function name from a table (bytes as latin-1) as a label value: UTF-8 where it is."""
    return key.encode("latin-1").decode("utf-8", errors="backslashreplace")


def _buckets(counts: list[int], bounds: tuple[float, ...]) -> list[tuple[str, float]]:
    """Per-bucket counts (+Inf last) -> cumulative (le, count) pairs."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=False):
        total += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    return out


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, resident bytes) of `pid` from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS, rss


class ShardgearCollector(Collector):
    """Builds every shardgear metric from a `Source` at each scrape."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        src = self.source
        processes = src.processes()
        yield from self._processes(processes)
        yield from self._rings(src.rings())
        shards = [p for p in processes if p.role == "shard"]
        yield from self._functions([src.reader.table(p.index) for p in shards])
        info = InfoMetricFamily("shardgear_build", "shardgear version")
        info.add_metric([], {"version": __version__})
        yield info

    def _processes(self, processes: list[Process]) -> Iterable[Metric]:
        reader = self.source.reader
        labels = ["role", "index"]
        g = {
            name: GaugeMetricFamily(f"shardgear_{name}", doc, labels=labels)
            for name, doc in (
                ("connections", "Open client and worker connections of a front"),
                ("shard_jobs_queued", "Jobs queued on a shard (epoch jobs included)"),
                ("shard_jobs_running", "Jobs running on a shard"),
                ("job_log_bytes", "Bytes in a shard's job log file"),
                ("process_resident_memory_bytes", "Resident memory of a front or shard"),
            )
        }
        c = {
            name: CounterMetricFamily(f"shardgear_{name}", doc, labels=labels)
            for name, doc in (
                ("connections_accepted", "Connections a front accepted"),
                ("protocol_closes", "Connections closed for a protocol error or the output cap"),
                ("backpressure_pauses", "Times a front stopped reading sockets for full rings"),
                ("store_commits", "Writes of a turn's records to a shard's job log"),
                ("store_commit_failures", "Job log writes that failed"),
                ("job_log_snapshots", "Snapshots (compactions) of a shard's job log"),
                ("child_restarts", "Times a front or shard was restarted"),
                ("process_cpu_seconds", "CPU time (user + system) of a front or shard"),
            )
        }
        denied = CounterMetricFamily(
            "shardgear_access_denied",
            "Requests refused by the access rules, by kind (submit, work, status, admin)",
            labels=[*labels, "action"],
        )
        commit = HistogramMetricFamily(
            "shardgear_store_commit_seconds", "Duration of a job log write", labels=labels
        )
        batch = HistogramMetricFamily(
            "shardgear_store_batch_bytes", "Bytes of a job log write", labels=labels
        )
        for p in processes:
            lv = [p.role, str(p.index)]
            b = reader.block(p.slot)
            c["child_restarts"].add_metric(lv, p.restarts)
            if p.pid:
                usage = _proc_stat(p.pid)
                if usage is not None:
                    c["process_cpu_seconds"].add_metric(lv, usage[0])
                    g["process_resident_memory_bytes"].add_metric(lv, usage[1])
            if p.role == "front":
                live = reader.live(p.slot)
                g["connections"].add_metric(
                    lv, max(0, live[layout.ST_ACCEPTED] - live[layout.ST_CLOSED])
                )
                c["connections_accepted"].add_metric(lv, b[layout.ST_ACCEPTED])
                c["protocol_closes"].add_metric(lv, b[layout.ST_PROTOCOL_CLOSES])
                c["backpressure_pauses"].add_metric(lv, b[layout.ST_PAUSES])
                for action, field in _DENIALS:
                    denied.add_metric([*lv, action], b[field])
                continue
            if p.role != "shard":  # the HTTP process (--http): restarts, CPU and memory only
                continue
            g["shard_jobs_queued"].add_metric(lv, b[layout.ST_QUEUED])
            g["shard_jobs_running"].add_metric(lv, b[layout.ST_RUNNING])
            g["job_log_bytes"].add_metric(lv, b[layout.ST_LOG_BYTES])
            c["job_log_snapshots"].add_metric(lv, b[layout.ST_LOG_SNAPSHOTS])
            c["store_commits"].add_metric(lv, b[layout.ST_STORE_COMMITS])
            c["store_commit_failures"].add_metric(lv, b[layout.ST_STORE_FAILURES])
            nb = len(layout.STORE_COMMIT_BOUNDS) + 1
            commit.add_metric(
                lv,
                _buckets(
                    b[layout.ST_STORE_COMMIT_BUCKETS : layout.ST_STORE_COMMIT_BUCKETS + nb],
                    layout.STORE_COMMIT_BOUNDS,
                ),
                b[layout.ST_STORE_COMMIT_NS] / 1e9,
            )
            nb = len(layout.STORE_BATCH_BOUNDS) + 1
            batch.add_metric(
                lv,
                _buckets(
                    b[layout.ST_STORE_BATCH_BUCKETS : layout.ST_STORE_BATCH_BUCKETS + nb],
                    tuple(float(x) for x in layout.STORE_BATCH_BOUNDS),
                ),
                b[layout.ST_STORE_BYTES],
            )
        yield from g.values()
        yield from c.values()
        yield denied
        yield commit
        yield batch

    def _rings(self, rings: list[RingUse]) -> Iterable[Metric]:
        used = GaugeMetricFamily(
            "shardgear_ring_used_bytes", "Bytes waiting in a ring", labels=["from", "to"]
        )
        cap = GaugeMetricFamily(
            "shardgear_ring_capacity_bytes", "Data bytes of a ring", labels=["from", "to"]
        )
        for r in rings:
            used.add_metric([r.source, r.target], r.used)
            cap.add_metric([r.source, r.target], r.capacity)
        yield used
        yield cap

    def _functions(self, tables: list[dict[str, list[Any]]]) -> Iterable[Metric]:
        fp = ["function", "priority"]
        queued = GaugeMetricFamily("shardgear_jobs_queued", "Jobs queued (epoch too)", labels=fp)
        running = GaugeMetricFamily("shardgear_jobs_running", "Jobs running", labels=["function"])
        workers = GaugeMetricFamily(
            "shardgear_workers", "Worker connections registered", labels=["function"]
        )
        totals = [
            CounterMetricFamily(f"shardgear_jobs_{kind}", f"Jobs {kind}", labels=fp)
            for kind in stats.KINDS
        ]
        wait = HistogramMetricFamily(
            "shardgear_job_queue_wait_seconds",
            "Time from runnable to assigned to a worker",
            labels=fp,
        )
        run = HistogramMetricFamily(
            "shardgear_job_run_seconds", "Time from assigned to a result", labels=fp
        )
        nk, nb = stats.NK, stats.NB
        for table in tables:
            for key, row in table.items():
                name = _function_label(key)
                running.add_metric([name], row[stats.R_RUNNING])
                workers.add_metric([name], row[stats.R_WORKERS])
                for p, prio in enumerate(PRIORITIES):
                    lv = [name, prio]
                    queued.add_metric(lv, row[stats.R_QUEUED + p])
                    for k, family in enumerate(totals):
                        family.add_metric(lv, row[stats.R_COUNTS + p * nk + k])
                    w = stats.R_WAIT + p * nb
                    wait.add_metric(
                        lv, _buckets(row[w : w + nb], stats.TIME_BOUNDS), row[stats.R_WAIT_SUM + p]
                    )
                    r = stats.R_RUN + p * nb
                    run.add_metric(
                        lv, _buckets(row[r : r + nb], stats.TIME_BOUNDS), row[stats.R_RUN_SUM + p]
                    )
        yield queued
        yield running
        yield workers
        yield from totals
        yield wait
        yield run


def make_registry(source: Source) -> CollectorRegistry:
    """A registry with the shardgear collector and the supervisor's process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ShardgearCollector(source))
    ProcessCollector(registry=registry)
    return registry


def make_app(registry: CollectorRegistry) -> WSGIApp:
    """The WSGI app of the exposition (``prometheus_client.make_wsgi_app``), to mount on a
    ``httpd.Router`` at ``/metrics``."""
    app: WSGIApp = make_wsgi_app(registry)
    return app
