"""A job's attempts under its function's retry policy: the scheduler's side of `retries`.

`shardgear.retries` decides (policies, backoff, which WORK_* packets of an attempt are held back);
the functions here apply a decision to a `Scheduler`'s state: a failed attempt's job leaves its
worker and waits in the timer heap for the next one (state FUTURE, a JR_DELAY record in the job
log), or its failure is final and a background job goes to the dead set. They are called by the
scheduler only for jobs whose function has a policy or that carry a retry state, so that a server
without retries never runs them (the same pattern as `shardgear.recovery`, which also works on the
scheduler's internals).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from shardgear import retries
from shardgear.jobs import FUTURE, OUT_EXCEPTION, OUT_FAIL, Job
from shardgear.proto.packets import PacketType

if TYPE_CHECKING:
    from shardgear.scheduler import Scheduler

__all__ = ["ended", "last_failure", "lost", "relay"]


def lost(sched: Scheduler, job: Job, outcome: int, now: float) -> bool:
    """A held job's worker left or timed out (`outcome` OUT_LOST or OUT_TIMEOUT; the job has
    been released from its worker). True if its policy took the job: it waits for its next
    attempt, or, on the last one, failed for good and was dropped. False if the caller requeues
    it as gearmand would (no policy applies, or one that does not count this outcome: then the
    attempt never happened)."""
    policy = job.fn.retry
    if policy is None or not policy.applies(job):
        return False
    if not policy.on & outcome:
        retries.end_attempt(job)
        return False
    st = retries.record_failure(job, outcome, b"", now)
    at = retries.next_attempt(policy, st, now, sched._rng)
    if at is not None:
        _delay(sched, job, at)
    else:
        _give_up(sched, job, now)
        sched._drop(job)
    return True


def last_failure(sched: Scheduler, job: Job, outcome: int, now: float) -> None:
    """`--job-retries` drops a released job whose function has a policy: record the failure and
    give up (held packets out, the dead set if the policy says so). The caller drops it."""
    policy = job.fn.retry
    if policy is not None and policy.applies(job):
        retries.record_failure(job, outcome, b"", now)
        _give_up(sched, job, now)


def ended(sched: Scheduler, job: Job, ptype: int, error: bytes, now: float) -> bool:
    """A held job that has a retry state or a policy ended its attempt with WORK_COMPLETE,
    WORK_FAIL or WORK_EXCEPTION (`error`: its data). True if the policy took the job (it waits
    for its next attempt; nobody hears of this failure); False if the attempt is the last and the
    caller ends the job as usual (its held packets have gone to the clients first, and a
    dead-lettered job is in the dead set)."""
    policy = job.fn.retry
    outcome = OUT_FAIL if ptype == PacketType.WORK_FAIL else OUT_EXCEPTION
    if (
        ptype == PacketType.WORK_COMPLETE
        or policy is None  # a reload took the policy away mid-attempt
        or not policy.applies(job)
        or not policy.on & outcome  # a failure the policy does not count ends the job
    ):
        relay(sched, job, retries.release_held(job))
        return False
    st = retries.record_failure(job, outcome, error, now)
    at = retries.next_attempt(policy, st, now, sched._rng)
    if at is None:
        _give_up(sched, job, now)
        return False
    if sched._metrics is not None:
        sched._metrics.ended(job, ptype, now)  # the attempt's result; _delay counts a requeue
    w = job.worker
    assert w is not None
    sched._release(job)
    if not w.funcs and not w.jobs:  # a recovered worker that has not registered again
        sched._maybe_forget_worker(w)
    _delay(sched, job, at)
    return True


def relay(sched: Scheduler, job: Job, packets: list[bytes]) -> None:
    """Send an attempt's released packets (`retries.hold`, `retries.release_held`) to its
    clients."""
    for packet in packets:
        sched._relay(job, packet)


def _delay(sched: Scheduler, job: Job, at: float) -> None:
    """A released job waits in the timer heap (state FUTURE) until `at` (epoch seconds) for its
    next attempt, keeping its handle, unique and clients."""
    retries.end_attempt(job)
    st = job.retry
    assert st is not None
    st.next_at = at
    job.num = 0
    job.den = 0
    job.state = FUTURE
    job.fn.future[job.priority] += 1
    sched._seq += 1
    heapq.heappush(sched._epochs, (at, sched._seq, job))
    if sched._joblog is not None:
        sched._joblog.delay(job, at)
    if sched._metrics is not None:
        sched._metrics.requeued(job)


def _give_up(sched: Scheduler, job: Job, now: float) -> None:
    """The failure just recorded is the job's last: send the attempt's held packets on, and put
    a background job in the dead set if its policy says so."""
    relay(sched, job, retries.release_held(job))
    policy = job.fn.retry
    if job.background and policy is not None and policy.dead_letter and sched._dead is not None:
        sched._dead.add(job, now)
