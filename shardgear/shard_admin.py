"""A shard's side of the admin commands: what one shard answers about, or does to, its jobs.

A front turns an admin text line (`shardgear.admin`) into orjson requests ``{"cmd": ...}`` to one
or every shard; `answer` applies one to the shard's `Scheduler` and returns a JSON-able result
that the front merges with the other shards' and formats as gearmand would. Function names,
handles and uniques travel as latin-1 text (lossless for any bytes).

Read-only queries take the scheduler's records as they are; the commands that change state
(`cancel_job`, `drop_function`, `maxqueue`, `create_function`) go through the scheduler's job
lifecycle methods so that its invariants hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shardgear import lease
from shardgear.jobs import FUTURE, LEASED, OUTCOME_NAMES, QUEUED, RUNNING
from shardgear.messages import json_bytes, json_text

if TYPE_CHECKING:  # the scheduler imports this module (GET_STATUS_UNIQUE)
    from shardgear.scheduler import Scheduler


def answer(sched: Scheduler, request: dict[str, Any], log: Any = None) -> Any:
    """Apply one admin request to `sched`; return its JSON-able result (None if unknown)."""
    cmd = request.get("cmd")
    if cmd == "status":
        return [(json_text(f), *rest) for f, *rest in status(sched)]
    if cmd == "priority_status":
        return [(json_text(f), *rest) for f, *rest in priority_status(sched)]
    if cmd == "show_functions":
        return [(json_text(f), *rest) for f, *rest in show_functions(sched)]
    if cmd == "show_jobs":
        return [(json_text(h), *rest) for h, *rest in show_jobs(sched)]
    if cmd == "show_retries":
        return [
            (json_text(h), json_text(f), json_text(u), n, st, nxt, last, why, json_text(err))
            for h, f, u, n, st, nxt, last, why, err in show_retries(sched)
        ]
    if cmd == "show_unique_jobs":
        return [json_text(u) for u in show_unique_jobs(sched)]
    if cmd == "status_unique":
        return status_unique(sched, json_bytes(request["unique"]))
    if cmd == "job_status":
        return job_status(sched, json_bytes(request["handle"]))
    if cmd == "status_unique_function":
        return status_unique_function(sched, json_bytes(request["unique"]))
    if cmd == "cancel_job":
        return cancel_job(sched, json_bytes(request["handle"]))
    if cmd == "drop_function":
        return drop_function(sched, json_bytes(request["func"]))
    if cmd == "maxqueue":
        high, normal, low = request["limits"]
        maxqueue(sched, json_bytes(request["func"]), (int(high), int(normal), int(low)))
        return True
    if cmd == "create_function":
        create_function(sched, json_bytes(request["func"]))
        return True
    if log is not None:
        log(f"unknown admin request {cmd!r}")
    return None


# ---------------------------------------------------------------------------- read-only queries


def status(sched: Scheduler) -> list[tuple[bytes, int, int, int]]:
    """``status`` rows: (function, total = queued incl. future + running, running, workers)."""
    return [(f.name, f.total, f.running, len(f.workers)) for f in sched.functions()]


def priority_status(sched: Scheduler) -> list[tuple[bytes, int, int, int, int]]:
    """``prioritystatus`` rows: (function, HIGH, NORMAL, LOW queued incl. leased and future
    epoch jobs, registered workers)."""
    rows = []
    for f in sched.functions():
        r, u, n = f.ready, f.future, f.leased
        rows.append(
            (f.name, r[0] + u[0] + n[0], r[1] + u[1] + n[1], r[2] + u[2] + n[2], len(f.workers))
        )
    return rows


def show_functions(sched: Scheduler) -> list[tuple[bytes, int, int, int, int, int, int]]:
    """``show functions`` rows: (function, runnable HIGH, NORMAL, LOW (leased ones included),
    waiting (epoch jobs and jobs waiting for their next attempt), running, registered
    workers)."""
    rows = []
    for f in sched.functions():
        r, n = f.ready, f.leased
        rows.append(
            (f.name, r[0] + n[0], r[1] + n[1], r[2] + n[2], sum(f.future), f.running,
             len(f.workers))
        )  # fmt: skip
    return rows


def show_jobs(sched: Scheduler) -> list[tuple[bytes, int, int, int]]:
    """``show jobs`` rows: (handle, retries, ignored 0/1, persisted 0/1) of every job."""
    return [(j.handle, j.retries, int(j.ignored), int(j.stored)) for j in sched.jobs()]


def show_retries(
    sched: Scheduler,
) -> list[tuple[bytes, bytes, bytes, int, str, float, float, str, bytes]]:
    """``show retries`` rows, one per job with a failed attempt under a retry policy: (handle,
    function, unique, failed attempts, "waiting"/"queued"/"running", next attempt (epoch
    seconds, 0 unless waiting), last failure (epoch seconds), its reason, its error data)."""
    rows = []
    for j in sched.jobs():
        st = j.retry
        if st is None or not st.failures:
            continue
        waiting = j.state == FUTURE
        state = "waiting" if waiting else "running" if j.state == RUNNING else "queued"
        reason = OUTCOME_NAMES.get(st.reason, "")
        rows.append(
            (j.handle, j.func, j.unique, st.failures, state, st.next_at if waiting else 0.0,
             st.last_failed, reason, st.error)
        )  # fmt: skip
    return rows


def show_unique_jobs(sched: Scheduler) -> list[bytes]:
    """``show unique jobs``: the unique of every job (empty for jobs without one)."""
    return [j.unique for j in sched.jobs()]


def status_unique(sched: Scheduler, unique: bytes) -> tuple[int, int, int, int, int] | None:
    """GET_STATUS_UNIQUE on this shard: (1, running 0/1, num, den, attached clients) of the
    first job with `unique`, or None. (`-` matches a job coalesced by payload, as gearmand.)"""
    if not unique:
        return None
    for f in sched.functions():
        job = f.uniques.get(unique)
        if job is None and unique == b"-" and f.payloads:
            job = next(iter(f.payloads.values()))
        if job is not None:
            return (1, int(job.state == RUNNING), job.num, job.den, len(job.clients))
    return None


def job_status(sched: Scheduler, handle: bytes) -> list[Any] | None:
    """GET_STATUS with the job's function (for status access rules): [function, 1, running 0/1,
    numerator, denominator], or None if there is no such job."""
    job = sched.job(handle)
    if job is None:
        return None
    return [json_text(job.fn.name), 1, int(job.state == RUNNING), job.num, job.den]


def status_unique_function(sched: Scheduler, unique: bytes) -> list[Any] | None:
    """GET_STATUS_UNIQUE with the job's function: [function, 1, running 0/1, numerator,
    denominator, waiting clients] of the first job with `unique`, or None."""
    st = status_unique(sched, unique)
    if st is None:
        return None
    for f in sched.functions():
        job = f.uniques.get(unique)
        if job is None and unique == b"-" and f.payloads:
            job = next(iter(f.payloads.values()))
        if job is not None:
            return [json_text(f.name), *st]
    return None


# ---------------------------------------------------------------------------- commands


def cancel_job(sched: Scheduler, handle: bytes) -> bool:
    """``cancel job``: fail the job's clients (WORK_FAIL) and forget it; a running job's worker
    carries on unheard and its WORK_* packets are accepted. False if there is no such job."""
    job = sched.job(handle)
    if job is None:
        return False
    sched._fail_clients(job)
    sched._unindex(job)
    job.cancelled = True
    if job.stored:
        sched._unstore(job)
    joblog = sched._joblog
    if (job.state == RUNNING or job.state == LEASED) and joblog is not None:
        joblog.done(job)  # it runs on unheard; a successor need not know it
    if job.state == LEASED:
        lease.recall(sched, job)  # forgotten when it comes back; runs unheard if it was used
    elif job.state != RUNNING:
        if job.state == QUEUED:
            sched._unqueue(job)
        elif job.state == FUTURE:
            job.fn.future[job.priority] -= 1
        sched._forget(job)
    return True


def maxqueue(sched: Scheduler, func: bytes, limits: tuple[int, int, int]) -> None:
    """``maxqueue``: set the per-priority queue limits of `func` (negative or 0 = unlimited); a
    function that does not exist is left alone (gearmand)."""
    f = sched.function(func)
    if f is not None:
        f.maxq = [max(0, int(x)) for x in limits[:3]]


def create_function(sched: Scheduler, func: bytes) -> None:
    """``create function``: make `func` known (listed by ``status``) with no jobs."""
    sched._function(func)


def forget_idle_functions(sched: Scheduler) -> int:
    """Forget every function with no worker, no job (queued, scheduled, leased or running) and
    no maxqueue limit of its own: what ``drop function`` would let go. Returns how many. The
    per-function settings of the config file come back with a function made again."""
    idle = [
        f
        for f in sched.functions()
        if not f.workers and not f.total and not (f.maxq[0] or f.maxq[1] or f.maxq[2])
    ]
    for f in idle:
        del sched._functions[f.name]
    return len(idle)


def drop_function(sched: Scheduler, func: bytes) -> str:
    """``drop function`` (name matched case-insensitively, as gearmand): "ok", "busy" while
    workers are registered or the function has jobs (queued, scheduled or running), "missing".

    It never destroys a job: gearmand refuses only while workers are registered or jobs run, and
    then deletes the queued jobs from memory (its store keeps them); shardgear refuses while any
    job is left, so a dropped function never had one to lose."""
    low = func.lower()
    for f in sched.functions():
        if f.name.lower() == low:
            break
    else:
        return "missing"
    if f.workers or f.total:  # total: queued, scheduled and running jobs (cancelled ones too)
        return "busy"
    sched._functions.pop(f.name, None)
    return "ok"
