"""A worker's held next job, the shard's side (`shardgear.lease`): every rule and every crossing
of a lease with a worker's own messages, on the pure scheduler. The front is played by hand:
its messages are the OP_PACKETs it would forward (GRAB flagged LEASABLE, GRAB_LEASED,
LEASE_RETURN), in the order the ring would carry them."""

from __future__ import annotations

import struct

import pytest

from shardgear import build_info, lease, recovery, shard_admin
from shardgear.invariants import check_invariants
from shardgear.jobs import LEASED, QUEUED, RUNNING
from shardgear.messages import (
    GRAB_LEASED,
    HEADER,
    LEASABLE,
    LEASE_RETURN,
    OP_LEASE,
    OP_RECALL,
    OP_REPLY,
    OP_SEND,
    OP_WAKE,
    front_of,
)
from shardgear.scheduler import Scheduler

CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP = 1, 2, 3, 4
SUBMIT_JOB, JOB_CREATED, GRAB_JOB, NO_JOB, JOB_ASSIGN = 7, 8, 9, 10, 11
WORK_COMPLETE, GET_STATUS, STATUS_RES = 13, 15, 20
SUBMIT_JOB_BG, SUBMIT_JOB_HIGH, SUBMIT_JOB_LOW_BG = 18, 21, 34
SUBMIT_JOB_HIGH_BG = 32
CAN_DO_TIMEOUT, GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ = 23, 30, 31
GRAB_JOB_ALL, JOB_ASSIGN_ALL, SUBMIT_REDUCE_JOB = 39, 40, 37

C1, C2 = 0x11, 0x12
W1, W2, W3 = 0x21, 0x22, 0x23
W_OTHER_FRONT = (1 << 56) | 0x21


def packet(raw: bytes) -> tuple[int, bytes]:
    magic, ptype, size = struct.unpack("!4sII", raw[:12])
    assert magic == b"\0RES" and len(raw) == 12 + size
    return ptype, raw[12:]


class Rig:
    """A scheduler, spoken to as fronts would, with its messages read back raw."""

    def __init__(self, **kw: object) -> None:
        kw.setdefault("shard_index", 0)
        kw.setdefault("shard_count", 1)
        kw.setdefault("handle_prefix", b"H:t")
        self.s = Scheduler(**kw)  # type: ignore[arg-type]
        self.now = 1000.0

    def send(self, conn: int, ptype: int, body: bytes = b"") -> list[tuple[int, int, int, bytes]]:
        """One message from a front; returns the scheduler's output as (op, arg, conn, body)."""
        self.s.handle_packet(conn, ptype, body, self.now)
        out, self.s.out = self.s.out, []
        check_invariants(self.s)
        res = []
        for m in out:
            op, arg, _extra, c = HEADER.unpack_from(m)
            res.append((OP_SEND if op == OP_REPLY else op, arg, c, m[16:]))
        return res

    def submit(self, func: bytes, data: bytes, ptype: int = SUBMIT_JOB_BG, unique: bytes = b"",
               conn: int = C1) -> bytes:  # fmt: skip
        [(op, _, c, raw)] = self.send(conn, ptype, func + b"\0" + unique + b"\0" + data)
        t, handle = packet(raw)
        assert (op, c, t) == (OP_SEND, conn, JOB_CREATED)
        return handle

    def grab(self, w: int, ptype: int = GRAB_JOB, leasable: bool = True) -> Grab:
        return Grab(self.send(w, ptype | (LEASABLE if leasable else 0)), w)

    def job(self, handle: bytes):  # type: ignore[no-untyped-def]
        job = self.s.job(handle)
        assert job is not None
        return job


class Grab:
    """What a GRAB produced: the reply (the job's data or None), a lease, other messages."""

    def __init__(self, out: list[tuple[int, int, int, bytes]], w: int) -> None:
        self.reply: bytes | None = None
        self.handle: bytes | None = None
        self.lease: tuple[int, bytes, bytes] | None = None  # (GRAB type, handle, data)
        self.lease_type = 0
        self.rest: list[tuple[int, int, int, bytes]] = []
        for op, arg, c, body in out:
            if op == OP_SEND and c == w and self.reply is None and self.handle is None:
                t, b = packet(body)
                if t == NO_JOB:
                    self.reply = None
                    self.handle = b""
                    continue
                parts = b.split(b"\0")
                self.handle, self.reply = parts[0], parts[-1]
            elif op == OP_LEASE and c == w and body:
                t, b = packet(body)
                parts = b.split(b"\0")
                self.lease = (t, parts[0], parts[-1])
                self.lease_type = arg
            else:
                self.rest.append((op, arg, c, body))


def workers(rig: Rig, *ws: int, func: bytes = b"f") -> None:
    for w in ws:
        rig.send(w, CAN_DO, func)


# ---------------------------------------------------------------- making and using a lease


def test_a_leasable_grab_leases_the_next_job_as_a_complete_assign_packet() -> None:
    rig = Rig()
    workers(rig, W1)
    h1, h2, h3 = (rig.submit(b"f", d) for d in (b"a", b"b", b"c"))
    g = rig.grab(W1)
    assert g.reply == b"a" and g.lease == (JOB_ASSIGN, h2, b"b") and g.lease_type == GRAB_JOB
    assert rig.job(h2).state == LEASED and rig.job(h2).worker is not None
    # counted as queued, not running, and off the board
    assert shard_admin.status(rig.s) == [(b"f", 3, 1, 1)]
    [(_, _, _, raw)] = rig.send(C2, GET_STATUS, h2)
    assert packet(raw)[1].split(b"\0")[1:3] == [b"1", b"0"]
    assert rig.s.function(b"f").nready == 1  # type: ignore[union-attr]
    assert shard_admin.show_jobs(rig.s)[1][0] == h2
    del h1, h3


def test_grab_leased_runs_the_job_and_leases_the_next_one() -> None:
    rig = Rig()
    workers(rig, W1)
    _, h2, h3 = (rig.submit(b"f", d) for d in (b"a", b"b", b"c"))
    rig.grab(W1)
    out = rig.send(W1, GRAB_LEASED, h2)
    assert rig.job(h2).state == RUNNING and rig.s.running_count() == 2
    [(op, arg, c, body)] = out
    assert (op, arg, c) == (OP_LEASE, GRAB_JOB, W1) and packet(body)[1].startswith(h3 + b"\0")
    # nothing left to lease: the front is told so (it waits for this answer)
    assert rig.send(W1, GRAB_LEASED, h3) == [(OP_LEASE, 0, W1, b"")]
    assert rig.s.leased_count() == 0


@pytest.mark.parametrize(
    ("grab", "assign"),
    [(GRAB_JOB, JOB_ASSIGN), (GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ), (GRAB_JOB_ALL, JOB_ASSIGN_ALL)],
)
def test_the_lease_is_built_for_the_grab_type(grab: int, assign: int) -> None:
    rig = Rig()
    workers(rig, W1)
    rig.send(C1, SUBMIT_REDUCE_JOB, b"f\0u1\0red\0\0one")
    rig.send(C1, SUBMIT_REDUCE_JOB, b"f\0u2\0red\0\0two")
    g = rig.grab(W1, grab)
    assert g.lease is not None and g.lease[0] == assign and g.lease_type == grab


def test_no_lease_without_the_flag_or_without_a_next_job() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    rig.submit(b"f", b"b")
    assert rig.grab(W1, leasable=False).lease is None
    assert rig.grab(W1).lease is None  # it took the last one


def test_a_sleeping_unwoken_worker_gets_the_work_not_a_lease() -> None:
    """gearmand would give the next job to the sleeper (its NOOP is on its way): no lease."""
    rig = Rig()
    workers(rig, W1)
    rig.send(W2, CAN_DO, b"g")
    rig.send(W2, CAN_DO, b"f")
    rig.submit(b"f", b"a")
    rig.submit(b"f", b"b")
    w2 = rig.s._workers[W2]
    f = rig.s.function(b"f")
    assert f is not None
    # W2 asleep and not yet woken for this sleep (as if its wake-up were still to come)
    w2.sleeping, w2.woken = True, False
    f.sleepers[w2] = None
    rig.s.function(b"g").sleepers[w2] = None  # type: ignore[union-attr]
    g = rig.grab(W1)
    assert g.reply == b"a" and g.lease is None


def test_round_robin_and_priority_hold_through_leases() -> None:
    rig = Rig()
    rig.send(W1, CAN_DO, b"fa")
    rig.send(W1, CAN_DO, b"fb")
    for i in range(3):
        rig.submit(b"fa", b"a%d" % i)
        rig.submit(b"fb", b"b%d" % i)
    got = []
    g = rig.grab(W1)
    got.append(g.reply)
    while g.lease is not None:
        got.append(g.lease[2])
        out = rig.send(W1, GRAB_LEASED, g.lease[1])
        g = Grab([(OP_SEND, 0, W1, b"\x00RES" + struct.pack("!II", NO_JOB, 0)), *out], W1)
    assert got == [b"a0", b"b0", b"a1", b"b1", b"a2", b"b2"]


# ---------------------------------------------------------------- returns and recalls


def test_a_returned_lease_goes_back_to_the_head_of_its_queue_and_wakes_sleepers() -> None:
    rig = Rig()
    workers(rig, W1, W2)
    h1, h2, h3 = (rig.submit(b"f", d) for d in (b"a", b"b", b"c"))
    g = rig.grab(W1)
    assert g.lease is not None and g.lease[1] == h2
    rig.grab(W2)  # takes c (b is leased): W2 now runs h3
    rig.send(W2, WORK_COMPLETE, h3)
    assert rig.grab(W2).handle == b""  # NO_JOB: b is W1's ...
    assert rig.send(W2, PRE_SLEEP) == []
    assert rig.send(W1, LEASE_RETURN, h2) == [(OP_WAKE, 0, W2, b"")]
    assert rig.job(h2).state == QUEUED and rig.s.leased_count() == 0
    assert rig.grab(W2, leasable=False).reply == b"b"
    assert rig.s._workers[W1].lease is None
    del h1


def test_a_return_that_is_not_for_the_holder_is_ignored() -> None:
    rig = Rig()
    workers(rig, W1, W2)
    for d in (b"a", b"b", b"c"):
        rig.submit(b"f", d)
    g = rig.grab(W1)
    assert g.lease is not None
    h2 = g.lease[1]
    assert rig.send(W2, LEASE_RETURN, h2) == []  # not W2's
    assert rig.send(W1, LEASE_RETURN, b"H:t:99") == []  # no such job
    assert rig.job(h2).state == LEASED
    rig.send(W1, GRAB_LEASED, h2)
    assert rig.send(W1, LEASE_RETURN, h2) == []  # already running: a late return is ignored
    assert rig.job(h2).state == RUNNING


def test_starvation_recalls_a_lease_and_its_return_wakes_the_starved_worker() -> None:
    """W1 holds a long job and a lease; W2 grabs: NO_JOB as in gearmand, and the lease is
    recalled; once it is back W2 is woken and gets the job."""
    rig = Rig()
    workers(rig, W1, W2)
    rig.submit(b"f", b"long")
    h2 = rig.submit(b"f", b"next")
    g = rig.grab(W1)
    assert g.reply == b"long" and g.lease is not None and g.lease[1] == h2
    g2 = rig.grab(W2)
    assert g2.handle == b"" and g2.rest == [(OP_RECALL, 0, W1, h2)]
    assert rig.send(W2, PRE_SLEEP) == []  # recalled once, not again
    assert rig.send(W1, LEASE_RETURN, h2) == [(OP_WAKE, 0, W2, b"")]
    assert rig.grab(W2).reply == b"next"


def test_a_sleeping_worker_starved_by_a_lease_recalls_it() -> None:
    rig = Rig()
    workers(rig, W1, W2)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    assert rig.grab(W1).lease is not None
    assert rig.send(W2, PRE_SLEEP) == [(OP_RECALL, 0, W1, h2)]


def test_a_recall_the_front_ignores_because_the_lease_was_used() -> None:
    rig = Rig()
    workers(rig, W1, W2)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.grab(W1)
    assert rig.grab(W2).rest == [(OP_RECALL, 0, W1, h2)]
    rig.send(W2, PRE_SLEEP)
    # the front had answered W1 from the lease before the recall reached it
    assert rig.send(W1, GRAB_LEASED, h2) == [(OP_LEASE, 0, W1, b"")]
    assert rig.job(h2).state == RUNNING


def test_a_better_job_recalls_a_worse_lease_and_the_next_grab_gets_it() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"low1", SUBMIT_JOB_LOW_BG)
    h2 = rig.submit(b"f", b"low2", SUBMIT_JOB_LOW_BG)
    rig.submit(b"f", b"low3", SUBMIT_JOB_LOW_BG)
    assert rig.grab(W1).lease is not None
    out = rig.send(C1, SUBMIT_JOB_HIGH_BG, b"f\0\0high")
    assert (OP_RECALL, 0, W1, h2) in [(op, a, c, b) for op, a, c, b in out]
    rig.send(W1, LEASE_RETURN, h2)
    assert [rig.grab(W1, leasable=False).reply for _ in range(3)] == [b"high", b"low2", b"low3"]


def test_a_better_job_queued_before_a_crossing_grab_gets_it() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"low1", SUBMIT_JOB_LOW_BG)
    rig.submit(b"f", b"low2", SUBMIT_JOB_LOW_BG)
    rig.grab(W1)
    rig.send(C1, SUBMIT_JOB_HIGH_BG, b"f\0\0high")  # recalls; the GRAB crosses the recall
    g = rig.grab(W1)
    assert g.reply == b"high" and g.lease is not None and g.lease[2] == b"low2"


@pytest.mark.skipif(build_info.compiled(), reason="patches a module function")
def test_leases_of_one_priority_never_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    rig = Rig()
    workers(rig, W1, W2)

    def boom(*_: object) -> None:
        raise AssertionError("scanned")

    monkeypatch.setattr(lease, "outranked", boom)
    for i in range(6):
        rig.submit(b"f", b"%d" % i)
    rig.grab(W1)
    rig.grab(W2)
    rig.submit(b"f", b"more")


# ---------------------------------------------------------------- crossings


def test_a_grab_that_crosses_the_workers_lease_is_answered_with_it() -> None:
    """The front sent W1's next GRAB before the lease reached it, and dropped the lease: the
    shard answers that GRAB with the leased job (no job lost, none given twice)."""
    rig = Rig()
    workers(rig, W1)
    handles = [rig.submit(b"f", b"%d" % i) for i in range(4)]
    g1 = rig.grab(W1)
    assert g1.lease is not None and g1.lease[1] == handles[1]
    g2 = rig.grab(W1)  # crossed the lease
    assert g2.handle == handles[1] and g2.lease is not None and g2.lease[1] == handles[2]
    g3 = rig.grab(W1, GRAB_JOB_UNIQ)  # another type crossing: the same rule
    assert g3.handle == handles[2] and g3.lease is not None and g3.lease_type == GRAB_JOB_UNIQ
    assert [rig.job(h).state for h in handles] == [RUNNING, RUNNING, RUNNING, LEASED]


def test_cant_do_leaves_the_lease_to_the_front_which_returns_it() -> None:
    """CANT_DO crossing a lease: the shard keeps it leased (the front decides); the front,
    seeing the function gone, returns it; the worker is forgotten then, not before."""
    rig = Rig()
    workers(rig, W1, W2)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    g = rig.grab(W1)
    rig.send(W1, WORK_COMPLETE, g.handle or b"")
    rig.send(W1, CANT_DO, b"f")
    assert rig.job(h2).state == LEASED and W1 in rig.s._workers
    rig.send(W2, PRE_SLEEP)
    assert rig.send(W1, LEASE_RETURN, h2) == [(OP_WAKE, 0, W2, b"")]
    assert W1 not in rig.s._workers


def test_cant_do_then_can_do_again_before_the_lease_arrives_keeps_it_usable() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.send(W1, CAN_DO_TIMEOUT, b"f\x005")
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.grab(W1)
    rig.send(W1, CANT_DO, b"f")
    rig.send(W1, CAN_DO, b"f")
    rig.send(W1, GRAB_LEASED, h2)
    assert rig.job(h2).state == RUNNING


def test_reset_abilities_then_return() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    g = rig.grab(W1)
    rig.send(W1, WORK_COMPLETE, g.handle or b"")
    rig.send(W1, RESET_ABILITIES)
    assert W1 in rig.s._workers  # it still holds the lease
    rig.send(W1, LEASE_RETURN, h2)
    assert W1 not in rig.s._workers and rig.job(h2).state == QUEUED


@pytest.mark.parametrize("how", ["disconnect", "drop_front"])
def test_a_gone_worker_s_lease_goes_back_to_the_head(how: str) -> None:
    rig = Rig()
    for w in (W_OTHER_FRONT, W2):
        rig.send(w, CAN_DO, b"f")
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.submit(b"f", b"c")
    assert rig.grab(W_OTHER_FRONT).lease is not None
    if how == "disconnect":
        rig.s.disconnect(W_OTHER_FRONT, rig.now)
    else:
        rig.s.drop_front(front_of(W_OTHER_FRONT), rig.now)
    check_invariants(rig.s)
    job = rig.job(h2)
    assert job.state == QUEUED and job.retries == 0  # it never ran: not a retry
    assert rig.grab(W2, leasable=False).reply == b"b"


# ---------------------------------------------------------------- clients and admin


def test_a_unique_coalesces_onto_a_leased_job() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a", SUBMIT_JOB)
    h2 = rig.submit(b"f", b"b", SUBMIT_JOB, unique=b"u")
    rig.grab(W1)
    assert rig.submit(b"f", b"b", SUBMIT_JOB, unique=b"u", conn=C2) == h2
    assert list(rig.job(h2).clients) == [C1, C2]


def test_cancel_of_a_leased_job_recalls_it_and_forgets_it_on_return() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b", SUBMIT_JOB)
    rig.grab(W1)
    assert shard_admin.cancel_job(rig.s, h2)
    out, rig.s.out = rig.s.out, []
    ops = [HEADER.unpack_from(m)[0] for m in out]
    assert OP_RECALL in ops and OP_SEND in ops  # WORK_FAIL to C1
    check_invariants(rig.s)
    rig.send(W1, LEASE_RETURN, h2)
    assert rig.s.job(h2) is None and rig.s.job_count() == 1


def test_a_cancelled_lease_already_handed_out_runs_unheard() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.grab(W1)
    shard_admin.cancel_job(rig.s, h2)
    rig.s.out.clear()
    rig.send(W1, GRAB_LEASED, h2)
    assert rig.job(h2).state == RUNNING
    assert rig.send(W1, WORK_COMPLETE, h2) == []  # accepted, to nobody
    assert rig.s.job(h2) is None


def test_a_leased_job_whose_client_left_is_recalled_and_dropped() -> None:
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b", SUBMIT_JOB, conn=C2)
    rig.grab(W1)
    rig.s.disconnect(C2, rig.now)
    out, rig.s.out = rig.s.out, []
    assert [HEADER.unpack_from(m)[0] for m in out] == [OP_RECALL]
    check_invariants(rig.s)
    rig.send(W1, LEASE_RETURN, h2)
    assert rig.s.job(h2) is None


def test_drop_function_and_maxqueue_count_a_leased_job() -> None:
    rig = Rig()
    workers(rig, W1)
    h1 = rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.grab(W1)
    rig.send(W1, WORK_COMPLETE, h1)
    rig.send(W1, RESET_ABILITIES)
    assert shard_admin.drop_function(rig.s, b"f") == "busy"
    shard_admin.maxqueue(rig.s, b"f", (1, 1, 1))
    [(_, _, _, raw)] = rig.send(C1, SUBMIT_JOB_BG, b"f\0\0c")
    assert packet(raw)[0] != JOB_CREATED  # the queue is full: the leased job counts
    rig.send(W1, LEASE_RETURN, h2)
    assert shard_admin.priority_status(rig.s) == [(b"f", 0, 1, 0, 0)]


def test_can_do_timeout_starts_when_the_leased_job_is_handed_out() -> None:
    rig = Rig()
    rig.send(W1, CAN_DO_TIMEOUT, b"f\x002000")
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    g = rig.grab(W1)
    rig.send(W1, WORK_COMPLETE, g.handle or b"")
    rig.now += 10  # the lease waits at the front: no timer runs for it
    rig.s.tick(rig.now)
    assert rig.job(h2).state == LEASED
    rig.send(W1, GRAB_LEASED, h2)
    rig.s.tick(rig.now + 1.9)
    assert rig.job(h2).state == RUNNING
    rig.s.tick(rig.now + 2.1)
    assert rig.job(h2).state == QUEUED and rig.job(h2).retries == 1


# ---------------------------------------------------------------- crash, restart, stop


def test_a_restarted_shard_hands_a_queued_job_to_the_worker_the_old_lease_went_to() -> None:
    """The front answered a GRAB from a lease and the shard died before reading GRAB_LEASED:
    its successor recovered the job as queued (a lease is never logged), then reads it."""
    rig = Rig()
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    out = rig.send(W1, GRAB_LEASED, h2)  # W1 not registered yet on this shard
    assert out == [(OP_LEASE, 0, W1, b"")]
    assert rig.job(h2).state == RUNNING and rig.s._workers[W1].recovered
    recovery.front_synced(rig.s, 0, {W1}, rig.now)
    check_invariants(rig.s)
    rig.send(W2, CAN_DO, b"f")
    assert rig.grab(W2, leasable=False).reply == b"a"
    assert rig.send(W3, GRAB_LEASED, h2) == [(OP_LEASE, 0, W3, b"")]  # held: ignored
    assert rig.send(W3, GRAB_LEASED, b"H:t:77") == [(OP_LEASE, 0, W3, b"")]


def test_snapshot_lists_a_leased_job_first_as_queued() -> None:
    rig = Rig()
    workers(rig, W1)
    h1, h2, h3 = (rig.submit(b"f", d) for d in (b"a", b"b", b"c"))
    rig.grab(W1)
    _, jobs = recovery.snapshot_source(rig.s)
    assert [j.handle for j in jobs] == [h2, h3, h1]  # leased, queued, running
    del h1


def test_a_graceful_stop_recalls_every_lease_and_makes_no_more() -> None:
    rig = Rig()
    workers(rig, W1, W2)
    hs = [rig.submit(b"f", b"%d" % i) for i in range(6)]
    rig.grab(W1)
    rig.grab(W2)
    lease.stop(rig.s)
    out, rig.s.out = rig.s.out, []
    assert sorted(HEADER.unpack_from(m)[3] for m in out) == [W1, W2]
    assert rig.s.leased_count() == 2
    g = rig.grab(W1)  # crossing GRAB: answered with the lease, and no new one
    assert g.lease is None and g.handle == hs[1]


def test_results_for_a_job_leased_but_not_handed_out_are_refused() -> None:
    """A worker that guesses the handle of the job leased to it (handles are sequential) has
    not been given it: its results get JOB_NOT_FOUND, and nothing breaks."""
    rig = Rig()
    workers(rig, W1)
    rig.submit(b"f", b"a")
    h2 = rig.submit(b"f", b"b")
    rig.grab(W1)
    results = ((WORK_COMPLETE, h2 + b"\0x"), (14, h2), (25, h2 + b"\0e"), (28, h2 + b"\0d"))
    for ptype, body in results:
        [(op, _, c, raw)] = rig.send(W1, ptype, body)
        assert (op, c) == (OP_SEND, W1) and packet(raw)[1].startswith(b"JOB_NOT_FOUND")
    assert rig.job(h2).state == LEASED
