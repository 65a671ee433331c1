"""The stats segment: what fronts and shards publish for operators, and how the supervisor reads it.

Layout: ``shm/layout.py``, "Stats". Three parts:

* `ChildStats` (every child): its counter block, plain u64 stores. A front counts connections
  accepted and closed, protocol closes and read pauses as they happen; a shard calls `publish`
  once a second (`PUBLISH_INTERVAL`) to store its gauges and its job log's numbers.
* `FunctionStats` (a shard, only with ``--metrics``): the scheduler's ``metrics`` hook
  (``jobs.JobMetrics``). It keeps per function and priority the submitted, completed, failed,
  exception, requeued and dropped totals and histograms of queue wait and run time, in plain
  Python lists; `ChildStats.publish` writes them as one JSON table into the shard's function table
  (a seqlock), so a scrape costs a shard nothing.
* `StatsReader` (the supervisor): reads blocks and tables, and keeps the totals of dead children
  (`retire`) so that counters never go back when a child is restarted.

Queue wait runs from the moment a job became runnable (its submission, or its time for an epoch
job, or its requeue) to its assignment; run time from the assignment to WORK_COMPLETE, WORK_FAIL
or WORK_EXCEPTION. Jobs recovered after a restart have no start time and are not observed.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any, Final

import orjson

from shardgear.jobs import Function, Job
from shardgear.proto.packets import PacketType
from shardgear.shm import layout
from shardgear.shm.layout import Buffer

PUBLISH_INTERVAL: Final = 1.0
#: Bytes of each shard's function table when metrics are on (untouched pages cost nothing).
TABLE_BYTES: Final = 8 * 1024 * 1024

#: Upper bounds (seconds) of the queue-wait and run-time buckets; +Inf follows.
TIME_BOUNDS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
NB: Final = len(TIME_BOUNDS) + 1  # buckets per histogram, +Inf included

# Kinds of per-priority totals, in the order of a row's `counts`.
SUBMITTED, COMPLETED, FAILED, EXCEPTION, REQUEUED, DROPPED = range(6)
KINDS: tuple[str, ...] = ("submitted", "completed", "failed", "exception", "requeued", "dropped")
NK: Final = len(KINDS)

# A published row, flat: [queued HIGH, NORMAL, LOW, running, workers, counts (3 x NK),
#   wait buckets (3 x NB), wait sums (3), run buckets (3 x NB), run sums (3)]
R_QUEUED: Final = 0
R_RUNNING: Final = 3
R_WORKERS: Final = 4
R_COUNTS: Final = 5
R_WAIT: Final = R_COUNTS + 3 * NK
R_WAIT_SUM: Final = R_WAIT + 3 * NB
R_RUN: Final = R_WAIT_SUM + 3
R_RUN_SUM: Final = R_RUN + 3 * NB
ROW_LEN: Final = R_RUN_SUM + 3
#: Row fields that are gauges (not carried over from a dead shard).
GAUGE_FIELDS: Final = frozenset(range(R_COUNTS))

_COMPLETE: Final = int(PacketType.WORK_COMPLETE)
_FAIL: Final = int(PacketType.WORK_FAIL)


class _Counters:
    """Totals and histograms of one function (index: priority * width + item)."""

    __slots__ = ("counts", "run", "run_sum", "wait", "wait_sum")

    def __init__(self) -> None:
        self.counts = [0] * (3 * NK)
        self.wait = [0] * (3 * NB)
        self.run = [0] * (3 * NB)
        self.wait_sum = [0.0, 0.0, 0.0]
        self.run_sum = [0.0, 0.0, 0.0]


class FunctionStats:
    """Per-function counters of one shard: the scheduler's ``jobs.JobMetrics`` hook.

    Functions are kept by name for the life of the process (a dropped function's totals stay),
    at most `max_functions` of them; later ones are counted in `omitted` only.
    """

    def __init__(self, max_functions: int = 100_000) -> None:
        self.funcs: dict[bytes, _Counters] = {}
        self.max_functions = max_functions
        self.omitted = 0
        self._spare = _Counters()  # absorbs functions past max_functions

    def _get(self, name: bytes) -> _Counters:
        c = self.funcs.get(name)
        if c is None:
            if len(self.funcs) >= self.max_functions:
                self.omitted += 1
                return self._spare
            c = self.funcs[name] = _Counters()
        return c

    # -- the hook (called by the scheduler)

    def submitted(self, job: Job, now: float) -> None:
        self._get(job.func).counts[job.priority * NK + SUBMITTED] += 1
        job.mark = now if job.when <= now else float(job.when)

    def assigned(self, job: Job, now: float) -> None:
        mark = job.mark
        if mark:
            wait = now - mark if now > mark else 0.0
            c = self._get(job.func)
            p = job.priority
            c.wait[p * NB + bisect_left(TIME_BOUNDS, wait)] += 1
            c.wait_sum[p] += wait
        job.mark = now

    def ended(self, job: Job, ptype: int, now: float) -> None:
        c = self._get(job.func)
        p = job.priority
        kind = COMPLETED if ptype == _COMPLETE else FAILED if ptype == _FAIL else EXCEPTION
        c.counts[p * NK + kind] += 1
        mark = job.mark
        if mark:
            run = now - mark if now > mark else 0.0
            c.run[p * NB + bisect_left(TIME_BOUNDS, run)] += 1
            c.run_sum[p] += run

    def requeued(self, job: Job) -> None:
        self._get(job.func).counts[job.priority * NK + REQUEUED] += 1
        job.mark = time.time()

    def dropped(self, job: Job) -> None:
        self._get(job.func).counts[job.priority * NK + DROPPED] += 1

    # -- publishing

    def table(self, functions: Iterable[Function]) -> dict[str, list[Any]]:
        """{function name (latin-1): row} for every function the scheduler has or had."""
        out: dict[str, list[Any]] = {}
        empty = _Counters()
        funcs = self.funcs
        for f in functions:
            c = funcs.get(f.name, empty)
            r, u, n = f.ready, f.future, f.leased  # a leased job is queued (lease.py)
            out[f.name.decode("latin-1")] = [
                r[0] + u[0] + n[0], r[1] + u[1] + n[1], r[2] + u[2] + n[2], f.running,
                len(f.workers),
                *c.counts, *c.wait, *c.wait_sum, *c.run, *c.run_sum,
            ]  # fmt: skip
        for name, c in funcs.items():
            key = name.decode("latin-1")
            if key not in out:
                out[key] = [0, 0, 0, 0, 0, *c.counts, *c.wait, *c.wait_sum, *c.run, *c.run_sum]
        return out


class ChildStats:
    """A child's view of its counter block (and, for a shard with metrics, its table)."""

    def __init__(self, buf: Buffer, slot: int, shard: int = -1) -> None:
        mv = memoryview(buf).cast("B")
        _magic, _version, children, _shards, table_bytes = layout.STATS_HEADER.unpack_from(mv, 0)
        start = layout.stats_block_offset(slot)
        self.block = mv[start : start + layout.STATS_BLOCK_BYTES].cast("Q")
        self.table: memoryview | None = None
        self.table_q: memoryview | None = None
        if shard >= 0 and table_bytes:
            t = layout.stats_table_offset(children, shard, table_bytes)
            self.table = mv[t : t + table_bytes]
            self.table_q = self.table[: layout.STATS_TABLE_HEADER_BYTES].cast("Q")
        self.next_publish = 0.0
        self.table_omitted = 0

    # -- shard: once a second

    def commit_done(self, size: int, seconds: float) -> None:
        """The shard wrote a turn's records, `size` bytes, to its job log in `seconds`."""
        b = self.block
        b[layout.ST_STORE_COMMITS] += 1
        b[layout.ST_STORE_BYTES] += size
        b[layout.ST_STORE_COMMIT_NS] += int(seconds * 1e9)
        b[layout.ST_STORE_COMMIT_BUCKETS + bisect_left(layout.STORE_COMMIT_BOUNDS, seconds)] += 1
        b[layout.ST_STORE_BATCH_BUCKETS + bisect_left(layout.STORE_BATCH_BOUNDS, size)] += 1

    def commit_failed(self) -> None:
        self.block[layout.ST_STORE_FAILURES] += 1

    def publish(
        self,
        now: float,
        queued: int,
        running: int,
        log_bytes: int,
        log_snapshots: int,
        table: dict[str, list[Any]] | None = None,
    ) -> None:
        """Store the shard's gauges and job-log numbers, and its function table if it has
        one."""
        self.next_publish = now + PUBLISH_INTERVAL
        b = self.block
        b[layout.ST_QUEUED] = queued
        b[layout.ST_RUNNING] = running
        b[layout.ST_LOG_BYTES] = log_bytes
        b[layout.ST_LOG_SNAPSHOTS] = log_snapshots
        if table is not None and self.table is not None:
            self._write_table(table)

    def _write_table(self, table: dict[str, list[Any]]) -> None:
        assert self.table is not None and self.table_q is not None
        room = len(self.table) - layout.STATS_TABLE_HEADER_BYTES
        data = orjson.dumps(table)
        if len(data) > room:  # keep what fits; the rest is counted as omitted
            keep = max(0, len(table) * room // len(data) * 9 // 10)
            self.table_omitted = len(table) - keep
            data = orjson.dumps(dict(list(table.items())[:keep]))
        q = self.table_q
        gen = q[0]
        q[0] = gen + 1
        start = layout.STATS_TABLE_HEADER_BYTES
        self.table[start : start + len(data)] = data
        q[1] = len(data)
        q[2] = time.time_ns()
        q[0] = gen + 2


def initialize(buf: Buffer, children: int, shards: int, table_bytes: int) -> None:
    """Write the stats header (once, by the creator; the segment is zero-filled)."""
    layout.STATS_HEADER.pack_into(
        buf, 0, layout.STATS_MAGIC, layout.STATS_VERSION, children, shards, table_bytes
    )


def _add_row(base: list[Any], row: list[Any]) -> None:
    for i in range(R_COUNTS, ROW_LEN):
        base[i] += row[i]


class StatsReader:
    """The supervisor's view: every child's counters plus what earlier processes in each slot
    counted (`retire`), and every shard's function table."""

    def __init__(self, buf: Buffer) -> None:
        mv = memoryview(buf).cast("B")
        magic, version, children, shards, table_bytes = layout.STATS_HEADER.unpack_from(mv, 0)
        if (magic, version) != (layout.STATS_MAGIC, layout.STATS_VERSION):
            raise ValueError("not a stats segment of this version")
        self.mv = mv
        self.children = int(children)
        self.shards = int(shards)
        self.table_bytes = int(table_bytes)
        self.base = [[0] * (layout.STATS_BLOCK_BYTES // 8) for _ in range(self.children)]
        self.table_base: list[dict[str, list[Any]]] = [{} for _ in range(self.shards)]

    def live(self, slot: int) -> list[int]:
        """The counters of the process now in child slot `slot` alone."""
        start = layout.stats_block_offset(slot)
        view = self.mv[start : start + layout.STATS_BLOCK_BYTES].cast("Q")
        try:
            values: list[int] = view.tolist()
        finally:
            view.release()
        return values

    def block(self, slot: int) -> list[int]:
        """The counters of child slot `slot`, earlier processes in the slot included."""
        live = self.live(slot)
        base = self.base[slot]
        return [v if i in layout.ST_GAUGES else v + base[i] for i, v in enumerate(live)]

    def table(self, shard: int) -> dict[str, list[Any]]:
        """Shard `shard`'s function table (gauges of the live shard, totals of every shard that
        ran in the slot); {} with metrics off or before the first publish."""
        live = self._read_table(shard) or {}
        base = self.table_base[shard] if shard < len(self.table_base) else {}
        if not base:
            return live
        merged = {name: list(row) for name, row in live.items()}
        for name, old in base.items():
            row = merged.get(name)
            if row is None:
                merged[name] = [0] * R_COUNTS + old[R_COUNTS:]
            else:
                _add_row(row, old)
        return merged

    def _read_table(self, shard: int) -> dict[str, list[Any]] | None:
        if not self.table_bytes or shard >= self.shards:
            return None
        start = layout.stats_table_offset(self.children, shard, self.table_bytes)
        table = self.mv[start : start + self.table_bytes]
        q = table[: layout.STATS_TABLE_HEADER_BYTES].cast("Q")
        try:
            for _ in range(100):
                gen = q[0]
                if gen == 0:
                    return None
                if gen & 1:
                    time.sleep(0.0001)
                    continue
                length = min(int(q[1]), self.table_bytes - layout.STATS_TABLE_HEADER_BYTES)
                first = layout.STATS_TABLE_HEADER_BYTES
                data = bytes(table[first : first + length])
                if q[0] == gen:
                    result: dict[str, list[Any]] = orjson.loads(data)
                    return result
            return None
        finally:
            q.release()
            table.release()

    def retire(self, slot: int, shard: int = -1) -> None:
        """A new process is about to fill child slot `slot`: keep what the old one counted and
        zero its block (and its function table, for a shard)."""
        start = layout.stats_block_offset(slot)
        view = self.mv[start : start + layout.STATS_BLOCK_BYTES].cast("Q")
        try:
            base = self.base[slot]
            for i, v in enumerate(view.tolist()):
                if i not in layout.ST_GAUGES:
                    base[i] += v
                view[i] = 0
        finally:
            view.release()
        if shard < 0 or not self.table_bytes:
            return
        old = self._read_table(shard) or {}
        base_table = self.table_base[shard]
        for name, row in old.items():
            b = base_table.get(name)
            if b is None:
                base_table[name] = [0] * R_COUNTS + list(row[R_COUNTS:])
            else:
                _add_row(b, row)
        t = layout.stats_table_offset(self.children, shard, self.table_bytes)
        q = self.mv[t : t + layout.STATS_TABLE_HEADER_BYTES].cast("Q")
        q[0] = 0
        q[1] = 0
        q.release()

    def release(self) -> None:
        self.mv.release()
