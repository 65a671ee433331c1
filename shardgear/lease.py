"""A worker's held next job: the shard's side of the GRAB lease (ARCHITECTURE.md, "The lease").

Why: every GRAB_JOB used to cross worker -> front -> ring -> shard -> ring -> front -> worker, and
with 16 to 64 workers that round trip, not CPU, bounded throughput. So when a shard answers a
*leasable* GRAB (the front sets `messages.LEASABLE` in the arg: every function of the worker is
on this shard, and ``--grab-lease`` is on) with a job, it may also take the worker's next job
(`offer`): the job leaves its queue and the board (state LEASED, ``job.worker`` = the worker,
``Worker.lease``) and its complete JOB_ASSIGN* packet goes to the front as OP_LEASE. The
front answers the worker's next GRAB of that type from it at once and tells the shard
(GRAB_LEASED: `grabbed` makes it RUNNING exactly as `Scheduler._grab` would, and may lease the
next one), or gives it back unused (LEASE_RETURN: `returned`).

The rule that keeps both sides agreed without a handshake: **only the front decides what becomes
of a lease** while the worker lives (it uses it, gives it back, or drops it when it sends the
worker's GRAB to this shard); the shard takes a lease back on its own only when the worker is
gone (`Scheduler.disconnect`, `drop_front`), or when a GRAB of that worker arrives while it holds
one (`release` from `_grab`): the front drops a lease that crosses a GRAB it sent here, so that
GRAB is answered from the queue instead. A shard that wants a lease back (another worker starves,
a better job arrived, the job was cancelled or abandoned) asks with OP_RECALL (`recall`) and the
front returns it if it is still unused. A returned lease goes back to the *head* of its queue
(it was taken from there: FIFO order holds) and is not a retry (it never ran).

Rules, and where gearmand's behaviour shows through (README, "Where shardgear differs"):

* A lease is made only when no other worker sleeps on its function: those get the work (NOOP)
  instead, as gearmand would give it to them.
* A worker that finds nothing (NO_JOB, or PRE_SLEEP with no work) while the runnable jobs of one
  of its functions are leased to others gets NO_JOB as in gearmand, and one such lease is
  recalled (`starved`); its return wakes the sleeper.
* A job queued with a better priority than a leased one of a worker that can run it recalls
  that lease (`outranked`); leases are counted by priority, so a load of one priority never scans.
* A LEASED job is counted as queued (not running) by ``status``, GET_STATUS and the admin
  commands; it is never written to the job log (which still says queued), so a crashed shard's
  leases come back queued, in their place.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from shardgear.jobs import LEASED, QUEUED, Function, Job, Worker, best_ready
from shardgear.messages import HEADER, OP_LEASE, OP_RECALL
from shardgear.proto.packets import RES_MAGIC, PacketType
from shardgear.proto.parser import LARGE_BODY

if TYPE_CHECKING:
    from shardgear.scheduler import Scheduler

__all__ = [
    "assign_packet",
    "assign_parts",
    "grabbed",
    "offer",
    "outranked",
    "recall",
    "release",
    "returned",
    "starved",
    "stop",
]

_GRAB_JOB: Final = int(PacketType.GRAB_JOB)
_GRAB_JOB_ALL: Final = int(PacketType.GRAB_JOB_ALL)
_JOB_ASSIGN: Final = int(PacketType.JOB_ASSIGN)
_JOB_ASSIGN_UNIQ: Final = int(PacketType.JOB_ASSIGN_UNIQ)
_JOB_ASSIGN_ALL: Final = int(PacketType.JOB_ASSIGN_ALL)
_header = HEADER.pack
_II: Final = struct.Struct("!II")


def assign_packet(ptype: int, job: Job) -> bytes:
    """The JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL packet that answers a GRAB of type
    `ptype` with `job` (gearman-protocol.md §2.4: ALL only for a job with a reducer, UNIQ
    otherwise). The scheduler's GRAB reply and a lease are the same bytes."""
    return b"".join(assign_parts(ptype, job))


def assign_parts(ptype: int, job: Job) -> list[bytes]:
    """`assign_packet` in the pieces it is joined from; the last is the job's payload, so that
    a large one can be sent as a message's tail (`Scheduler.send_assign`) instead of copied."""
    h = job.handle
    name = job.fn.name
    data = job.data
    if ptype == _GRAB_JOB:
        head = _II.pack(_JOB_ASSIGN, len(h) + len(name) + len(data) + 2)
        return [RES_MAGIC, head, h, b"\0", name, b"\0", data]
    u = job.unique
    if ptype == _GRAB_JOB_ALL and job.reducer:
        red = job.reducer
        size = len(h) + len(name) + len(u) + len(red) + len(data) + 4
        head = _II.pack(_JOB_ASSIGN_ALL, size)
        return [RES_MAGIC, head, h, b"\0", name, b"\0", u, b"\0", red, b"\0", data]
    head = _II.pack(_JOB_ASSIGN_UNIQ, len(h) + len(name) + len(u) + len(data) + 3)
    return [RES_MAGIC, head, h, b"\0", name, b"\0", u, b"\0", data]


def offer(sched: Scheduler, w: Worker, ptype: int) -> None:
    """`w` was just given a job in answer to a leasable GRAB of type `ptype`: lease it its next
    one, chosen as `Scheduler._grab` would (best priority across its functions, round-robin),
    unless it has none or another worker sleeps on that function (it must get the work)."""
    if w.lease is not None or not sched.leasing:
        return
    chosen, best = best_ready(w.funcs)
    if chosen is None or chosen.sleepers:
        return
    for head in chosen.queues[best]:  # the live head (tombstones are skipped)
        if head.state == QUEUED:
            if len(head.data) >= LARGE_BODY:
                return  # a lease is one joined packet, kept by the front: a large one would
                # cost two more copies of its payload (issue 7 bounds a message to ~2 P)
            break
    funcs = w.funcs
    if len(funcs) > 1:  # the round-robin moves on as if the worker had grabbed it
        timeout = funcs.pop(chosen)
        funcs[chosen] = timeout
    job = sched._take(chosen, best)
    job.state = LEASED
    job.worker = w
    w.lease = job
    w.lease_type = ptype
    w.recalled = False
    chosen.leased[best] += 1
    sched._leased[best] += 1
    sched._nleased += 1
    sched.out.append(_header(OP_LEASE, ptype, 0, w.conn) + assign_packet(ptype, job))


def grabbed(sched: Scheduler, conn: int, handle: bytes, now: float) -> None:
    """GRAB_LEASED: the front answered a GRAB of `conn` with the lease of job `handle`. The job
    runs (RUNNING, logged, timed) and the worker may be leased its next one. A job that a
    restarted shard recovered as queued (its lease died with our predecessor) is taken from its
    queue for the worker, which has it; anything else (no such job, held by another) is
    ignored: the worker's results for it then get JOB_NOT_FOUND."""
    job = sched._jobs.get(handle)
    w = sched._workers.get(conn)
    if job is None:
        pass
    elif job.state == LEASED:
        if w is not None and job.worker is w:
            _clear(sched, w, job)
            _run(sched, w, job, now)
            offer(sched, w, w.lease_type)
    elif job.state == QUEUED:
        _dequeue(sched, job)
        if w is None:  # not registered again yet: held like a recovered worker's job
            w = sched._workers[conn] = Worker(conn)
            w.recovered = True
            sched._recovered[conn] = w
        _run(sched, w, job, now)
    if w is None or w.lease is None:  # the front waits for a lease: there is none
        sched.out.append(_header(OP_LEASE, 0, 0, conn))


def answer(sched: Scheduler, w: Worker, ptype: int, leasable: bool, now: float) -> bool:
    """A GRAB of type `ptype` from `w` crossed the lease `w` holds, which its front dropped
    (it sends GRABs here only while it holds no lease from us). Answer it with the leased job,
    as the worker's front would have, unless a better job of its functions is queued meanwhile
    (then the lease goes back and the caller answers it from the queue): True if answered."""
    job = w.lease
    assert job is not None
    if job.fn not in w.funcs:  # the worker sent CANT_DO (or RESET_ABILITIES) of it meanwhile
        release(sched, w)
        return False
    p = job.priority
    for f in w.funcs:
        r = f.ready
        if f.nready and (r[0] if p == 1 else (r[0] or r[1]) if p == 2 else 0):
            release(sched, w)
            return False
    _clear(sched, w, job)
    _run(sched, w, job, now)
    sched.send_assign(w.conn, ptype, job)
    if leasable:
        offer(sched, w, ptype)
    return True


def _run(sched: Scheduler, w: Worker, job: Job, now: float) -> None:
    sched._assign(w, job, w.funcs.get(job.fn, 0), now)
    if job.cancelled and sched._joblog is not None:
        sched._joblog.done(job)  # it runs on unheard, as a running job cancelled


def returned(sched: Scheduler, conn: int, handle: bytes) -> None:
    """LEASE_RETURN: the front gives back `conn`'s unused lease of job `handle` (to the head
    of its queue). Ignored unless that job is still leased to `conn`."""
    w = sched._workers.get(conn)
    job = sched._jobs.get(handle)
    if w is None or job is None or job.state != LEASED or job.worker is not w:
        return
    release(sched, w)
    sched._maybe_forget_worker(w)


def release(sched: Scheduler, w: Worker) -> None:
    """Put `w`'s lease back at the head of its queue (and wake its function's sleepers), or
    forget it if nobody wants it any more (cancelled, or its clients left)."""
    job = w.lease
    assert job is not None
    _clear(sched, w, job)
    if job.ignored:
        if job.stored:
            sched._unstore(job)
        sched._forget(job)
        return
    sched._enqueue(job, head=True)


def recall(sched: Scheduler, job: Job) -> None:
    """Ask the front of the worker that holds LEASED `job` to give it back (once)."""
    w = job.worker
    if w is not None and not w.recalled:
        w.recalled = True
        sched.out.append(_header(OP_RECALL, 0, 0, w.conn) + job.handle)


def starved(sched: Scheduler, w: Worker) -> None:
    """`w` found no job (NO_JOB, or PRE_SLEEP with nothing to do): if a function of its has
    runnable jobs only in other workers' leases, recall one of them."""
    for f in w.funcs:
        n = f.leased
        if n[0] or n[1] or n[2]:
            for v in f.workers.values():
                job = v.lease
                if v is not w and job is not None and job.fn is f and not v.recalled:
                    recall(sched, job)
                    return


def outranked(sched: Scheduler, f: Function, p: int) -> None:
    """A job of `f` at priority `p` was queued: recall the leases of worse jobs held by `f`'s
    workers, whose next GRAB must get it."""
    for v in f.workers.values():
        job = v.lease
        if job is not None and job.priority > p:
            recall(sched, job)


def stop(sched: Scheduler) -> None:
    """A graceful stop began: make no more leases and recall every one held."""
    sched.leasing = False
    for w in sched._workers.values():
        if w.lease is not None:
            recall(sched, w.lease)


def _clear(sched: Scheduler, w: Worker, job: Job) -> None:
    w.lease = None
    w.recalled = False
    job.worker = None
    job.fn.leased[job.priority] -= 1
    sched._leased[job.priority] -= 1
    sched._nleased -= 1


def _dequeue(sched: Scheduler, job: Job) -> None:
    """Take one QUEUED job out of the middle of its queue (rare: a restarted shard's lease)."""
    f = job.fn
    p = job.priority
    f.queues[p].remove(job)
    f.ready[p] -= 1
    f.nready -= 1
    b = sched._board
    if b is not None:
        b[f.bidx + p] -= 1
