"""The scheduler's two timer heaps: epoch jobs (FUTURE) and CAN_DO_TIMEOUT deadlines.

`Scheduler.next_deadline` and `Scheduler.tick` are these functions: the shard loop asks for the
next deadline once a turn and ticks when it is due. Both heaps are lazy (house rule 4 of
`shardgear.scheduler`): an epoch entry whose job is no longer FUTURE, or a timer entry whose
worker's ``timer_seq`` moved on, is skipped when it surfaces; a worker whose deadline moved later
gets a new entry then. Like `shardgear.attempts`, this works on the scheduler's internals and
changes job state only through its lifecycle methods (`_enqueue`, `_requeue`).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from shardgear.jobs import FUTURE, OUT_TIMEOUT

if TYPE_CHECKING:
    from shardgear.scheduler import Scheduler

__all__ = ["next_deadline", "tick"]


def next_deadline(sched: Scheduler) -> float | None:
    """The earliest time `tick` has something to do, or None (stale heap entries are dropped on
    the way: house rule 4 of `shardgear.scheduler`)."""
    ep = sched._epochs
    while ep and ep[0][2].state != FUTURE:
        heapq.heappop(ep)
    tm = sched._timers
    while tm:
        at, seq, w = tm[0]
        if seq != w.timer_seq or w.timer_at is None:
            heapq.heappop(tm)
            if seq == w.timer_seq:
                w.timer_seq = 0
        elif w.timer_at > at:
            heapq.heappop(tm)
            sched._push_timer(w, w.timer_at)
        else:
            break
    if ep and tm:
        return min(ep[0][0], tm[0][0])
    if ep:
        return ep[0][0]
    if tm:
        return tm[0][0]
    return None


def tick(sched: Scheduler, now: float) -> None:
    """Fire every epoch job and CAN_DO_TIMEOUT due at `now`: a due epoch job (or one whose
    next attempt is due) joins the tail of its queue; an expired assignment is requeued."""
    ep = sched._epochs
    while ep and ep[0][0] <= now:
        job = heapq.heappop(ep)[2]
        if job.state == FUTURE:
            job.fn.future[job.priority] -= 1
            sched._enqueue(job)
    tm = sched._timers
    while tm and tm[0][0] <= now:
        _, seq, w = heapq.heappop(tm)
        if seq != w.timer_seq:
            continue
        w.timer_seq = 0
        at = w.timer_at
        if at is None:
            continue
        if at > now:
            sched._push_timer(w, at)
            continue
        held = w.timer_job
        w.timer_at = None
        w.timer_job = None
        if held is not None and held.worker is w:
            sched._requeue(held, now, OUT_TIMEOUT)
            sched._maybe_forget_worker(w)  # it may have sent CANT_DO meanwhile
