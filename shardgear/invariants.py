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
    # per function, from one pass over the jobs: [running, future, payload + reducer bytes,
    # leased HIGH, NORMAL, LOW] (a pass per function made a hypothesis run time out)
    counted: dict[int, list[int]] = {}
    for j in sched._jobs.values():
        tally = counted.get(id(j.fn))
        if tally is None:
            tally = counted[id(j.fn)] = [0, 0, 0, 0, 0, 0]
        tally[0] += j.state == RUNNING
        tally[1] += j.state == FUTURE
        tally[2] += len(j.data) + len(j.reducer)
        if j.state == LEASED:
            tally[3 + j.priority] += 1
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
        tally = counted.get(id(f), [0, 0, 0, 0, 0, 0])
        assert f.running == tally[0], (name, f.running, tally)
        assert sum(f.future) == tally[1], (name, f.future, tally)
        assert f.qbytes == tally[2], (name, f.qbytes, tally)  # --max-queued-bytes
        for p in range(3):  # LEASED jobs: counted apart, never on the board or in `ready`
            assert f.leased[p] == tally[3 + p], (name, p, f.leased, tally)
            leased[p] += f.leased[p]
    assert leased == sched._leased and sum(leased) == sched._nleased, (leased, sched._leased)
    assert running == sched._running
    if sched._board is not None:
        # every counter the queues account for, and no other one non-zero (C-speed: the board
        # has 196,608 counters, and this runs after every step of a fuzzer)
        values = list(sched._board)
        for i, v in board.items():
            assert values[i] == v, (i, values[i], v)
        assert len(values) - values.count(0) == sum(1 for v in board.values() if v)
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
