"""The job core's invariants, checked in full: for tests and fuzzers, never on the hot path.

`check_invariants` walks every function, job, worker and client of a `Scheduler` and asserts the
house rules of `shardgear.scheduler` (one place per job, board counters equal to runnable jobs,
leased jobs out of every queue and board count and held by one live worker each,
sleepers exactly the sleeping, unwoken workers, indexes consistent both ways). It is O(jobs).
"""

from __future__ import annotations

from shardgear.jobs import FUTURE, GONE, LEASED, QUEUED, RUNNING, UK_PAYLOAD, UK_UNIQUE
from shardgear.scheduler import Scheduler


def check_invariants(sched: Scheduler) -> None:
    """Assert every internal invariant (slow; for tests)."""
    board: dict[int, int] = {}
    seen: set[int] = set()
    running = 0
    leased = [0, 0, 0]
    for name, f in sched._functions.items():
        assert f.name == name
        dead = 0
        for p in range(3):
            live = [j for j in f.queues[p] if j.state == QUEUED]
            dead += len(f.queues[p]) - len(live)
            assert len(live) == f.ready[p], (name, p)
            for j in live:
                assert id(j) not in seen, j
                seen.add(id(j))
                assert j.fn is f and j.priority == p and j.worker is None
                assert sched._jobs.get(j.handle) is j
                assert not j.ignored, j
            board[f.bidx + p] = board.get(f.bidx + p, 0) + f.ready[p]
        assert dead == f.dead
        assert f.nready == sum(f.ready)
        for conn, w in f.workers.items():
            assert sched._workers.get(conn) is w and f in w.funcs
        for w in f.sleepers:
            assert w.sleeping and not w.woken and f in w.funcs
        for u, j in f.uniques.items():
            assert j.unique == u and j.ukind == UK_UNIQUE and sched._jobs.get(j.handle) is j
        for pd, j in f.payloads.items():
            assert j.data == pd and j.unique == b"-" and j.ukind == UK_PAYLOAD
            assert sched._jobs.get(j.handle) is j
        running += f.running
        held = sum(len(j.data) + len(j.reducer) for j in sched._jobs.values() if j.fn is f)
        assert f.qbytes == held, (name, f.qbytes, held)  # --max-queued-bytes
        assert f.running == sum(1 for j in sched._jobs.values() if j.fn is f and j.state == RUNNING)
        assert sum(f.future) == sum(
            1 for j in sched._jobs.values() if j.fn is f and j.state == FUTURE
        )
        for p in range(3):  # LEASED jobs: counted apart, never on the board or in `ready`
            mine = [j for j in sched._jobs.values() if j.fn is f and j.priority == p]
            assert f.leased[p] == sum(1 for j in mine if j.state == LEASED), (name, p)
            leased[p] += f.leased[p]
    assert leased == sched._leased and sum(leased) == sched._nleased, (leased, sched._leased)
    assert running == sched._running
    if sched._board is not None:
        for i, v in enumerate(sched._board):
            assert v == board.get(i, 0), (i, v, board.get(i, 0))
    for h, j in sched._jobs.items():
        assert j.handle == h and j.state != GONE
        assert sched._functions.get(j.func) is j.fn
        if j.state == RUNNING:
            assert j.worker is not None and j.worker.alive
            assert sched._workers.get(j.worker.conn) is j.worker and j in j.worker.jobs
        elif j.state == LEASED:  # held by exactly one live worker, as its only lease
            assert j.worker is not None and j.worker.alive and j.worker.lease is j
            assert sched._workers.get(j.worker.conn) is j.worker and j not in j.worker.jobs
        else:
            assert j.worker is None
        if j.ukind == UK_UNIQUE:
            assert j.fn.uniques.get(j.unique) is j
        elif j.ukind == UK_PAYLOAD:
            assert j.fn.payloads.get(j.data) is j
        elif j.unique and not j.cancelled and (j.unique != b"-" or j.data):
            raise AssertionError(f"{j} missing from the unique index")
        for c in j.clients:
            assert j in sched._clients[c]
    for c, attached in sched._clients.items():
        assert attached
        for j in attached:
            assert c in j.clients and sched._jobs.get(j.handle) is j
    for conn, w in sched._workers.items():
        assert w.conn == conn and w.alive and (w.funcs or w.jobs or w.lease is not None)
        if w.lease is not None:  # at most one per worker (a slot), and it is LEASED to it
            assert w.lease.state == LEASED and w.lease.worker is w
        else:
            assert not w.recalled
        assert w.recovered == (conn in sched._recovered)
        for j in w.jobs:
            assert j.worker is w and j.state == RUNNING
        for f in w.funcs:
            assert f.workers.get(conn) is w
            assert (w in f.sleepers) == (w.sleeping and not w.woken)
