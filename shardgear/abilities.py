"""A worker's registrations in the job core: CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP and the
front's REVOKE_ABILITY (gearman-protocol.md §2.3). Functions of the `Scheduler` they change, as
`attempts` and `lease` are; `Scheduler.handle_packet` calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from shardgear import lease
from shardgear.jobs import Worker
from shardgear.messages import OP_WAKE
from shardgear.proto.numbers import strtoll
from shardgear.proto.packets import PacketType

if TYPE_CHECKING:
    from shardgear.scheduler import Scheduler

__all__ = ["can_do", "cant_do", "pre_sleep", "reset_abilities", "revoke_ability"]

CAN_DO_TIMEOUT: Final = int(PacketType.CAN_DO_TIMEOUT)
CANT_DO: Final = int(PacketType.CANT_DO)


def can_do(sched: Scheduler, conn: int, ptype: int, body: bytes, now: float) -> None:
    """CAN_DO / CAN_DO_TIMEOUT: `conn` can run the function (a new one within the limits)."""
    timeout = 0
    name = body
    if ptype == CAN_DO_TIMEOUT:
        name, _, t = body.partition(b"\0")
        tv = strtoll(t)
        if tv is None or len(t) > 20:
            sched._close(conn)
            return
        timeout = tv
    f = sched._functions.get(name)
    if f is None:
        refused = sched.refuse_function(name)
        if refused is not None:
            sched._send(conn, refused)
            return
        f = sched._function(name)
    w = sched._workers.get(conn)
    if w is None:
        w = sched._workers[conn] = Worker(conn)
    if f not in w.funcs:
        f.workers[conn] = w
        if w.sleeping and not w.woken:
            f.sleepers[w] = None
    w.funcs[f] = timeout


def cant_do(sched: Scheduler, conn: int, ptype: int, body: bytes, now: float) -> None:
    """CANT_DO: no new jobs of the function for `conn`; one it holds still finishes (issue 7)."""
    w = sched._workers.get(conn)
    f = sched._functions.get(body)
    if w is None or f is None or f not in w.funcs:
        return
    del w.funcs[f]
    del f.workers[conn]
    f.sleepers.pop(w, None)
    sched._maybe_forget_worker(w)


def revoke_ability(sched: Scheduler, conn: int, ptype: int, body: bytes, now: float) -> None:
    """The front withdrew the worker's right to run function `body` (access rules reloaded):
    CANT_DO, and unlike the worker's own CANT_DO the jobs of it that the worker holds go
    back to their queue, so a result it sends later is refused (JOB_NOT_FOUND)."""
    w = sched._workers.get(conn)
    f = sched._functions.get(body)
    if w is None or f is None:
        return
    for job in [j for j in w.jobs if j.fn is f]:
        sched._requeue(job, now)
    cant_do(sched, conn, CANT_DO, body, now)
    if sched._workers.get(conn) is w:
        sched._maybe_forget_worker(w)


def reset_abilities(sched: Scheduler, conn: int, ptype: int, body: bytes, now: float) -> None:
    """RESET_ABILITIES: CANT_DO for every function of `conn`."""
    w = sched._workers.get(conn)
    if w is None:
        return
    for f in w.funcs:
        del f.workers[conn]
        f.sleepers.pop(w, None)
    w.funcs.clear()
    sched._maybe_forget_worker(w)


def pre_sleep(sched: Scheduler, conn: int, ptype: int, body: bytes, now: float) -> None:
    """PRE_SLEEP: `conn` sleeps until a job of one of its functions is queued (NOOP at once if one
    already is; gearmand 2.0)."""
    w = sched._workers.get(conn)
    if w is None:
        return
    w.timer_at = None
    w.timer_job = None
    w.sleeping = True
    for f in w.funcs:
        if f.nready:
            w.woken = True
            for g in w.funcs:
                g.sleepers.pop(w, None)
            sched._emit(OP_WAKE, conn, b"")
            return
    w.woken = False
    for f in w.funcs:
        f.sleepers[w] = None
    if sched._nleased:
        lease.starved(sched, w)
