"""Crash recovery of a shard's job core: rebuilding a `Scheduler` from its predecessor's journal.

A shard killed by anything is restarted by the supervisor, and the new shard calls `recover` with
the records its predecessor journaled (`shardgear.journal`) to re-create every job with its handle,
queue position, attached clients and holding worker; `front_synced` then requeues recovered
running jobs whose worker did not register again. `add_recovered` re-creates a stored background
job on a cold start (store replay). `start_journal` hands the scheduler a journal, starting with a
snapshot. See ARCHITECTURE.md, "Shard crash".

These functions work on the scheduler's internals through its lifecycle methods (`_insert`,
`_enqueue`, `_requeue`...), so the scheduler's invariants hold when they return.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from shardgear.jobs import (
    FUTURE,
    QUEUED,
    RUNNING,
    UK_PAYLOAD,
    UK_UNIQUE,
    Job,
    JobJournal,
    Worker,
    add_client,
)
from shardgear.journal import NewRecord, Record
from shardgear.messages import front_of
from shardgear.scheduler import HIGH, LOW, MAX_UNIQUE, NORMAL, Scheduler
from shardgear.shm.layout import (
    JF_BACKGROUND,
    JF_STORED,
    JR_ASSIGN,
    JR_ATTACH,
    JR_COUNTER,
    JR_DETACH,
    JR_DONE,
    JR_FLAGS,
    JR_REQUEUE,
)


class _Rec:
    """A job being rebuilt by `recover`."""

    __slots__ = ("clients", "flags", "new", "order", "retries", "worker")

    def __init__(
        self, new: NewRecord, clients: list[int], worker: int, retries: int, order: int, flags: int
    ) -> None:
        self.new = new
        self.clients = clients
        self.worker = worker
        self.retries = retries
        self.order = order
        self.flags = flags


def _order(e: _Rec) -> int:
    return e.order


def add_recovered(
    sched: Scheduler,
    func: bytes,
    unique: bytes,
    data: bytes,
    priority: int,
    when: int,
    reducer: bytes,
    now: float,
) -> bytes:
    """Add a stored background job with no client (store replay) and return its handle.
    Coalesces by unique like a submission; the job counts as persisted."""
    f = sched._function(func)
    old = sched._lookup(f, unique, data)
    if old is not None:
        old.background = True
        old.stored = True
        if sched._journal is not None:
            sched._journal.flags(old)
        return old.handle
    prio = priority if priority in (HIGH, NORMAL, LOW) else NORMAL
    n = sched._next_n
    job = Job(sched._new_handle(), f, unique, data, prio, when, reducer, True)
    job.n = n
    job.stored = True
    sched._insert(job, when, now)
    if sched._journal is not None:
        sched._journal.new(job, 0)
    return job.handle


def start_journal(sched: Scheduler, journal: JobJournal) -> None:
    """Journal every change from now on, starting with a snapshot of the current state."""
    sched._journal = journal
    journal.bind(lambda: _journal_snapshot(sched))
    journal.snapshot()


def _journal_snapshot(sched: Scheduler) -> tuple[int, list[Job]]:
    """(next handle number, live jobs): queued ones in queue order first."""
    jobs: list[Job] = []
    for f in sched._functions.values():
        for q in f.queues:
            jobs.extend(j for j in q if j.state == QUEUED)
    jobs.extend(j for j in sched._jobs.values() if j.state != QUEUED and not j.cancelled)
    return sched._next_n, jobs


def recover(sched: Scheduler, records: Iterable[Record], now: float) -> list[Job]:
    """Re-create the jobs of a dead predecessor from its journal records (in log order);
    return them. Call on a fresh scheduler, before any packet.

    Queued jobs keep their queue order (the order of the records that last queued them) and
    handles; foreground clients are re-attached; a running job is held again by its worker
    connection, which is registered for nothing until its front re-sends CAN_DO (see
    `front_synced`); epoch jobs wait for their time again; the handle counter continues
    after every handle ever journaled. A queued foreground job with no client left is not
    re-created. Never raises for any records: ones that make no sense are ignored."""
    S = sched.shard_count
    nxt = sched._next_n
    live: dict[int, _Rec] = {}
    seq = 0
    for r in records:
        if isinstance(r, NewRecord):
            n = r.n
            if n <= 0 or (n - 1) % S != sched.shard_index or len(r.unique) > MAX_UNIQUE:
                continue
            seq += 1
            live[n] = _Rec(r, [r.client] if r.client else [], 0, r.retries, seq, r.flags)
            if n + S > nxt:
                nxt = n + S
            continue
        kind, n, arg = r
        if kind == JR_COUNTER:
            if n > nxt:
                k = -(-(n - sched._next_n) // S)  # round up to one of our numbers
                nxt = sched._next_n + k * S
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
        elif kind == JR_REQUEUE:
            e.worker = 0
            e.retries = arg
            seq += 1
            e.order = seq
        elif kind == JR_DONE:
            del live[n]
        elif kind == JR_FLAGS:
            e.flags |= arg
    out: list[Job] = []
    for e in sorted(live.values(), key=_order):
        r = e.new
        bg = bool(e.flags & JF_BACKGROUND)
        if not e.worker and not bg and not e.clients:
            continue
        handle = sched._prefix + b"%d" % r.n
        if handle in sched._jobs:
            continue
        f = sched._function(r.func)
        job = Job(handle, f, r.unique, r.data, r.priority, r.when, r.reducer, bg)
        job.n = r.n
        job.retries = e.retries
        job.stored = bool(e.flags & JF_STORED)
        sched._jobs[handle] = job
        if r.unique and sched._lookup(f, r.unique, r.data) is None:
            if r.unique == b"-":
                if r.data:
                    f.payloads[r.data] = job
                    job.ukind = UK_PAYLOAD
            else:
                f.uniques[r.unique] = job
                job.ukind = UK_UNIQUE
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
            f.running += 1
            sched._running += 1
        elif r.when > now:
            job.state = FUTURE
            f.future[job.priority] += 1
            sched._seq += 1
            heapq.heappush(sched._epochs, (float(r.when), sched._seq, job))
        else:
            sched._enqueue(job)
        out.append(job)
    sched._next_n = max(sched._next_n, nxt)
    return out


def front_synced(sched: Scheduler, front: int, now: float) -> None:
    """Front `front` has re-sent the registrations of its workers since our start (its PING
    reached us). A recovered job held by one of its connections that did not register the
    job's function again (the connection closed while no shard was running, or it sent
    CANT_DO) goes back to its queue, as it would have on the shard that died."""
    if not sched._recovered:
        return
    for conn, w in list(sched._recovered.items()):
        if front_of(conn) != front:
            continue
        del sched._recovered[conn]
        w.recovered = False
        if not w.alive:
            continue
        for job in [j for j in w.jobs if j.fn not in w.funcs]:
            sched._requeue(job)
        sched._maybe_forget_worker(w)
