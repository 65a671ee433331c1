"""Recovery of a shard's job core from its job log (`shardgear.joblog`).

A shard starts by reading its log and rebuilding its `Scheduler` from the records, in one of two
ways (ARCHITECTURE.md, "Shard crash" and "The job log"):

* `recover`: its predecessor in the same run died (a crash, SIGKILL included). Every job comes
  back with its handle, queue position, attached foreground clients and holding worker; the
  fronts kept their connections open, so those clients and workers are still there. A recovered
  running job's worker is registered for nothing until its front re-sends CAN_DO; `front_synced`
  then disconnects the connections its front no longer has (requeueing what they held).
* `recover_cold`: the log was written by an earlier run of the server. Its connections are gone,
  so only durable (stored background) jobs come back: queued, with their handles, retries and
  epoch times; a job that was running is queued again.

Then `start_log` hands the scheduler its log, which begins a fresh file with a snapshot.

These functions work on the scheduler's internals through its lifecycle methods (`_enqueue`,
`_requeue`, `_attach`...), so the scheduler's invariants hold when they return. They never raise
for any records: records that make no sense are ignored.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Container, Iterable

from shardgear.joblog import (
    JF_BACKGROUND,
    JF_STORED,
    JR_ASSIGN,
    JR_ATTACH,
    JR_COUNTER,
    JR_DETACH,
    JR_DONE,
    JR_FLAGS,
    JR_REQUEUE,
    DelayRecord,
    JobLog,
    NewRecord,
    Record,
)
from shardgear.jobs import (
    FUTURE,
    LEASED,
    QUEUED,
    RUNNING,
    UK_PAYLOAD,
    UK_UNIQUE,
    Function,
    Job,
    RetryState,
    Worker,
    add_client,
)
from shardgear.messages import front_of
from shardgear.scheduler import MAX_UNIQUE, Scheduler


class LiveJob:
    """A job rebuilt from its log records: its JR_NEW record and what later records changed."""

    __slots__ = ("clients", "flags", "new", "order", "retries", "retry", "worker")

    def __init__(
        self, new: NewRecord, clients: list[int], worker: int, retries: int, order: int, flags: int
    ) -> None:
        self.new = new
        self.clients = clients
        self.worker = worker
        self.retries = retries
        self.order = order
        self.flags = flags
        self.retry: RetryState | None = None  # from JR_DELAY records (retries.py)


def _order(e: LiveJob) -> int:
    return e.order


def start_log(
    sched: Scheduler, joblog: JobLog, run_id: int, shard_index: int, shard_count: int
) -> bool:
    """Log every change from now on, beginning a fresh file with a snapshot of the current state.
    False if the file could not be written (the log retries; background jobs are refused)."""
    sched._joblog = joblog
    return joblog.start(run_id, shard_index, shard_count, lambda: snapshot_source(sched))


def snapshot_source(sched: Scheduler) -> tuple[int, list[Job]]:
    """(next handle number, live jobs): queued ones in queue order first (what a snapshot of
    the job log holds; a cancelled job still running is left out). A LEASED job is queued as
    far as the log knows, and was taken from the head of its queue: it comes first."""
    jobs: list[Job] = [j for j in sched._jobs.values() if j.state == LEASED and not j.cancelled]
    for f in sched._functions.values():
        for q in f.queues:
            jobs.extend(j for j in q if j.state == QUEUED)
    jobs.extend(
        j for j in sched._jobs.values() if j.state not in (QUEUED, LEASED) and not j.cancelled
    )
    return sched._next_n, jobs


def fold(
    records: Iterable[Record], shard_index: int, shard_count: int, base_n: int
) -> tuple[list[LiveJob], int]:
    """Apply log records in order: the live jobs of shard `shard_index` of `shard_count`, in the
    order they were last queued, and the next handle number (one of the shard's numbers from
    `base_n` on, past every handle ever logged). Records that make no sense are ignored."""
    S = shard_count
    base = base_n
    nxt = base
    live: dict[int, LiveJob] = {}
    seq = 0
    for r in records:
        if isinstance(r, NewRecord):
            n = r.n
            if n <= 0 or (n - 1) % S != shard_index or len(r.unique) > MAX_UNIQUE:
                continue
            seq += 1
            live[n] = LiveJob(r, [r.client] if r.client else [], 0, r.retries, seq, r.flags)
            if n + S > nxt:
                nxt = n + S
            continue
        if isinstance(r, DelayRecord):
            e = live.get(r.n)
            if e is None:
                continue
            e.retry = RetryState(
                r.failures, r.first_failed, r.last_failed, r.reason, r.error, r.next_at
            )
            if r.next_at > 0.0:  # waiting for its next attempt, then at the tail of its queue
                e.worker = 0
                seq += 1
                e.order = seq
            continue
        kind, n, arg = r
        if kind == JR_COUNTER:
            if n > nxt:
                k = -(-(n - base) // S)  # round up to one of our numbers
                nxt = base + k * S
            continue
        e = live.get(n)
        if e is None:
            continue
        if kind == JR_ATTACH:
            e.clients.append(arg)
        elif kind == JR_DETACH:
            e.clients = [c for c in e.clients if c != arg]
        elif kind == JR_ASSIGN:
            e.worker = arg
            if e.retry is not None:
                e.retry.next_at = 0.0
        elif kind == JR_REQUEUE:
            e.worker = 0
            e.retries = arg
            seq += 1
            e.order = seq
        elif kind == JR_DONE:
            del live[n]
        elif kind == JR_FLAGS:
            e.flags |= arg
    return sorted(live.values(), key=_order), nxt


def recover(sched: Scheduler, records: Iterable[Record], now: float) -> list[Job]:
    """Re-create the jobs of a dead predecessor of this run from its log records; return them.
    Call on a fresh scheduler, before any packet.

    Queued jobs keep their queue order (the order of the records that last queued them) and
    handles; foreground clients are re-attached; a running job is held again by its worker
    connection, which is registered for nothing until its front re-sends CAN_DO (see
    `front_synced`); epoch jobs wait for their time again; the handle counter continues after
    every handle ever logged. A queued foreground job with no client left is not re-created."""
    recs, nxt = fold(records, sched.shard_index, sched.shard_count, sched._next_n)
    out: list[Job] = []
    for e in recs:
        bg = bool(e.flags & JF_BACKGROUND)
        if not e.worker and not bg and not e.clients:
            continue
        job = _job(sched, e, bg)
        if job is None:
            continue
        for c in e.clients:
            add_client(job, c)
            sched._attach(c, job)
        if e.worker:
            w = sched._workers.get(e.worker)
            if w is None:
                w = sched._workers[e.worker] = Worker(e.worker)
                w.recovered = True
                sched._recovered[e.worker] = w
            job.state = RUNNING
            job.worker = w
            w.jobs[job] = None
            job.fn.running += 1
            sched._running += 1
        else:
            _queue(sched, job, now)
        out.append(job)
    sched._next_n = max(sched._next_n, nxt)
    return out


def recover_cold(sched: Scheduler, records: Iterable[Record], now: float) -> list[Job]:
    """Re-create the durable background jobs of an earlier run from its log records; return
    them. Call on a fresh scheduler, before any packet.

    Only jobs stored as background come back (foreground jobs died with their clients), with
    their handles, retry counts and epoch times, queued in the order they were last queued; a
    job that was running goes back to its queue."""
    recs, nxt = fold(records, sched.shard_index, sched.shard_count, sched._next_n)
    out: list[Job] = []
    for e in recs:
        if e.flags & (JF_BACKGROUND | JF_STORED) != JF_BACKGROUND | JF_STORED:
            continue
        job = _job(sched, e, True)
        if job is None:
            continue
        job.stored = True
        _queue(sched, job, now)
        out.append(job)
    sched._next_n = max(sched._next_n, nxt)
    return out


def _job(sched: Scheduler, e: LiveJob, bg: bool) -> Job | None:
    """A job for `e`, indexed by handle and unique (None if its handle is taken)."""
    r = e.new
    handle = sched._prefix + b"%d" % r.n
    if handle in sched._jobs:
        return None
    f: Function = sched._function(r.func)
    job = Job(handle, f, r.unique, r.data, r.priority, r.when, r.reducer, bg)
    job.n = r.n
    job.retries = e.retries
    job.retry = e.retry
    job.stored = bool(e.flags & JF_STORED)
    sched._jobs[handle] = job
    f.qbytes += len(job.data) + len(job.reducer)  # max-queued-bytes (limits.py)
    if r.unique and sched._lookup(f, r.unique, r.data) is None:
        if r.unique == b"-":
            if r.data:
                f.payloads[r.data] = job
                job.ukind = UK_PAYLOAD
        else:
            f.uniques[r.unique] = job
            job.ukind = UK_UNIQUE
    return job


def _queue(sched: Scheduler, job: Job, now: float) -> None:
    """Queue a recovered job, or hold it until its epoch time or its next attempt."""
    at = float(job.when)
    if job.retry is not None and job.retry.next_at > at:
        at = job.retry.next_at
    if at > now:
        job.state = FUTURE
        job.fn.future[job.priority] += 1
        sched._seq += 1
        heapq.heappush(sched._epochs, (at, sched._seq, job))
    else:
        if job.retry is not None:
            job.retry.next_at = 0.0
        sched._enqueue(job)


def front_synced(sched: Scheduler, front: int, live: Container[int], now: float) -> None:
    """Front `front` has re-sent the registrations of its workers since our start (its PING
    reached us), and `live` holds the ids of its connections that are still open. A connection
    of that front that is not in `live` closed while no shard was running (its DISCONNECT may
    have died with our predecessor): it is disconnected here, so a recovered job it held goes
    back to its queue and the jobs it waited for lose it as a client, as on the shard that died.
    A live connection keeps its jobs whether or not it registered their functions again: after
    CANT_DO a worker still completes the job it holds (`Scheduler`, "where shardgear differs").
    """
    for conn, w in list(sched._recovered.items()):
        if front_of(conn) != front:
            continue
        del sched._recovered[conn]
        w.recovered = False
        if conn in live:
            sched._maybe_forget_worker(w)
        else:
            sched.disconnect(conn, now)
    # A client that closed while no shard ran, whose DISCONNECT the dead shard consumed without
    # journaling it, would otherwise stay attached to its jobs for good.
    gone = [c for c in sched._clients if front_of(c) == front and c not in live]
    for conn in gone:
        sched.disconnect(conn, now)


def live_connections(body: bytes) -> frozenset[int]:
    """The connection ids a front's PING carries (little-endian u64s), as a set; a malformed
    tail is ignored."""
    n = len(body) // 8
    return frozenset(struct.unpack_from(f"<{n}Q", body)) if n else frozenset()


def pack_live_connections(conns: Iterable[int]) -> bytes:
    """The body of a front's PING: `conns` as little-endian u64s (see `live_connections`)."""
    ids = list(conns)
    return struct.pack(f"<{len(ids)}Q", *ids)
