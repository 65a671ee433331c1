"""The shard journal: records round-trip, compaction, damaged records, and recovery of a scheduler
from the journal of a "crashed" one (a fresh Scheduler reading the same buffer)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardgear import recovery, routing, shard_admin
from shardgear.invariants import check_invariants
from shardgear.jobs import QUEUED, RUNNING
from shardgear.journal import Journal, JournalError, NewRecord
from shardgear.scheduler import Scheduler
from shardgear.shm import layout
from tests.test_scheduler_invariants import FRONT_OF, ops

SUBMIT_JOB, SUBMIT_JOB_BG, GRAB_JOB, WORK_COMPLETE, CAN_DO = 7, 18, 9, 13, 1
C1, C2 = 0x11, 0x12
W1, W2 = 0x21, 0x22
W_OTHER_FRONT = 1 << 56 | 0x21


def make_journal(size: int = 1 << 20, log: list[str] | None = None) -> tuple[bytearray, Journal]:
    buf = bytearray(size)
    Journal.initialize(buf)
    return buf, Journal(buf, log=None if log is None else log.append)


def make_sched(**kw: Any) -> Scheduler:
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    kw.setdefault("handle_prefix", b"H:t")
    kw.setdefault("board", [0] * (routing.BOARD_SLOTS * routing.PRIORITIES))
    return Scheduler(**kw)


def journaled(size: int = 1 << 20, **kw: Any) -> tuple[bytearray, Journal, Scheduler]:
    buf, j = make_journal(size)
    s = make_sched(**kw)
    recovery.start_journal(s, j)
    return buf, j, s


def crash(buf: bytearray, now: float = 1000.0, **kw: Any) -> Scheduler:
    """What a new shard does: attach the journal and recover from it (on a copy of the buffer,
    so that the test can go on with the old scheduler)."""
    log: list[str] = []
    j = Journal(bytearray(buf), log=log.append)
    s = make_sched(**kw)
    recovery.recover(s, j.read(), now)
    check_invariants(s)
    recovery.start_journal(s, j)
    check_invariants(s)
    return s


def handle_of(s: Scheduler, conn: int, ptype: int, body: bytes, now: float = 1000.0) -> bytes:
    s.handle_packet(conn, ptype, body, now)
    out, s.out = s.out, []
    return out[0][2][12:].split(b"\0", 1)[0]


def submit(s: Scheduler, conn: int, func: bytes, data: bytes, bg: bool = False) -> bytes:
    return handle_of(s, conn, SUBMIT_JOB_BG if bg else SUBMIT_JOB, func + b"\0\0" + data)


def grab(s: Scheduler, conn: int) -> bytes:
    return handle_of(s, conn, GRAB_JOB, b"")


def flushed(j: Journal) -> None:
    """End of a shard loop turn: publish before and after the (imaginary) ring flush."""
    j.commit()
    j.commit_deferred()


def state(s: Scheduler, *, workers: bool = True) -> dict[str, Any]:
    """Everything recovery must rebuild, in comparable form."""
    jobs = {}
    for j in s.jobs():
        if j.cancelled:
            continue  # runs on unheard; the journal forgets it at once
        jobs[j.handle] = (
            j.func,
            j.unique,
            j.data,
            j.priority,
            j.when,
            j.reducer,
            j.background,
            j.stored,
            sorted(j.clients),
            j.worker.conn if j.worker is not None else 0,
            j.retries,
            j.state,
        )
    queues = {}
    uniques = {}
    for f in s._functions.values():
        for p, q in enumerate(f.queues):
            live = [j.handle for j in q if j.state == QUEUED and j.when == 0]
            if live:
                queues[f.name, p] = live
        for u, j in f.uniques.items():
            if not j.cancelled:
                uniques[f.name, u] = j.handle
        for d, j in f.payloads.items():
            uniques[f.name, b"-", d] = j.handle
    status = sorted(
        (f, total, running, nw if workers else 0)
        for f, total, running, nw in shard_admin.status(s)
        if total or (workers and nw)
    )
    return {
        "jobs": jobs,
        "queues": queues,
        "uniques": uniques,
        "status": status,
        "next": s._next_n,
        "board": list(s._board or []),
    }


# ---------------------------------------------------------------- the buffer


def test_header_is_checked() -> None:
    buf = bytearray(layout.JOURNAL_MIN_BYTES)
    with pytest.raises(JournalError):
        Journal(buf)
    Journal.initialize(buf)
    j = Journal(buf)
    assert j.fresh and j.read() == []
    assert buf[:8] == b"SGJRNL01"
    assert struct.unpack_from("<Q", buf, 8)[0] == layout.JOURNAL_VERSION
    buf[0] ^= 1
    with pytest.raises(JournalError):
        Journal(buf)
    with pytest.raises(JournalError):
        Journal.initialize(bytearray(100))


def test_records_round_trip_in_order() -> None:
    buf, j, s = journaled(shard_index=1, shard_count=2)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h1 = handle_of(s, C1, SUBMIT_JOB, b"f\0u1\0data")  # foreground, unique
    assert submit(s, C2, b"f", b"bg", bg=True) == b"H:t:4"
    assert handle_of(s, C2, SUBMIT_JOB, b"f\0u1\0other") == h1  # coalesced: ATTACH
    assert grab(s, W1) == h1
    flushed(j)
    recs = Journal(buf).read()
    new = [r for r in recs if isinstance(r, NewRecord)]
    assert [r.n for r in new] == [2, 4]
    assert new[0] == NewRecord(2, C1, 0, 0, 1, 0, b"f", b"u1", b"", b"data")
    assert new[1].flags == layout.JF_BACKGROUND and new[1].client == 0
    others = [r for r in recs if not isinstance(r, NewRecord)]
    assert others[0] == (layout.JR_COUNTER, 2, 0)
    assert (layout.JR_ATTACH, 2, C2) in others
    assert others[-1] == (layout.JR_ASSIGN, 2, W1)


def test_unpublished_records_are_invisible() -> None:
    buf, j, s = journaled()
    flushed(j)
    submit(s, C1, b"f", b"x")  # written, not published: a shard killed mid-turn
    assert not [r for r in Journal(buf).read() if isinstance(r, NewRecord)]
    j.commit()
    assert len([r for r in Journal(buf).read() if isinstance(r, NewRecord)]) == 1


def test_assign_and_done_wait_for_the_flush() -> None:
    buf, j, s = journaled()
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h = submit(s, C1, b"f", b"x")
    j.commit()
    assert grab(s, W1) == h
    j.commit()  # killed before the JOB_ASSIGN reached the ring: the job is still queued
    s2 = crash(buf)
    assert state(s2)["queues"] == {(b"f", 1): [h]}
    flushed(j)  # that ring flush happened: now it is held
    s.handle_packet(W1, WORK_COMPLETE, h + b"\0ok", 0.0)
    s.out = []
    j.commit()  # killed before the WORK_COMPLETE reached the ring: still running
    s3 = crash(buf)
    assert state(s3)["jobs"][h][-1] == RUNNING
    j.commit_deferred()
    assert crash(buf).job_count() == 0


def test_a_requeue_cancels_an_assign_not_yet_written() -> None:
    buf, j, s = journaled()
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h = submit(s, C1, b"f", b"x")
    grab(s, W1)
    s.disconnect(W1, 0.0)  # the same turn: back to the queue
    flushed(j)
    kinds = [r[0] for r in Journal(buf).read() if not isinstance(r, NewRecord)]
    assert layout.JR_ASSIGN not in kinds
    s2 = crash(buf)
    assert state(s2) == state(s)
    assert state(s2)["jobs"][h][-2] == 1  # retries


def test_a_corrupted_record_is_skipped_and_logged() -> None:
    buf, j, s = journaled()
    hs = [submit(s, C1, b"f", b"payload-%d" % i, bg=True) for i in range(3)]
    flushed(j)
    # find the second JR_NEW record and damage its function name (the byte before its payload;
    # the CRC covers a record's structure and names, not its payload)
    at = bytes(buf).index(b"payload-1") - 1
    assert buf[at] == ord("f")
    buf[at] ^= 0xFF
    log: list[str] = []
    recs = Journal(buf, log=log.append).read()
    assert [r.data for r in recs if isinstance(r, NewRecord)] == [b"payload-0", b"payload-2"]
    assert log and "skipped 1" in log[0]
    s2 = crash(buf)
    assert sorted(j.handle for j in s2.jobs()) == sorted([hs[0], hs[2]])


def test_a_damaged_length_does_not_stop_recovery() -> None:
    buf, j, s = journaled()
    submit(s, C1, b"f", b"a" * 100, bg=True)
    h2 = submit(s, C1, b"f", b"b", bg=True)
    flushed(j)
    half = layout.journal_half_bytes(len(buf))
    gen = struct.unpack_from("<Q", buf, 32)[0]
    base = layout.JOURNAL_HEADER_BYTES + (gen & 1) * half
    # record 0 is the snapshot's counter (32 bytes); record 1 the first job: break its length
    struct.pack_into("<I", buf, base + 32 + 4, 0xFFFFFF)
    log: list[str] = []
    recs = Journal(buf, log=log.append).read()
    assert [r.data for r in recs if isinstance(r, NewRecord)] == [b"b"]
    assert log
    assert [j.handle for j in crash(buf).jobs()] == [h2]


def test_garbage_in_the_whole_log_never_raises() -> None:
    buf, j, s = journaled(size=layout.JOURNAL_MIN_BYTES)
    for i in range(20):
        submit(s, C1, b"f", b"%d" % i, bg=True)
    flushed(j)
    half = layout.journal_half_bytes(len(buf))
    gen = struct.unpack_from("<Q", buf, 32)[0]
    base = layout.JOURNAL_HEADER_BYTES + (gen & 1) * half
    for k in range(base, base + half, 7):
        buf[k] = (k * 31) & 0xFF
    crash(buf)  # whatever survives, recovery neither raises nor breaks an invariant


def test_compaction_keeps_the_live_jobs() -> None:
    buf, j, s = journaled(size=layout.JOURNAL_MIN_BYTES)  # halves of 4 KiB
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    keep = [submit(s, C1, b"f", b"keep-%d" % i, bg=True) for i in range(5)]
    for i in range(300):  # many short-lived jobs fill the log again and again
        h = submit(s, C2, b"g", b"tmp-%d" % i, bg=True)
        s.handle_packet(W2, CAN_DO, b"g", 0.0)
        assert grab(s, W2) == h
        s.handle_packet(W2, WORK_COMPLETE, h + b"\0", 0.0)
        s.out = []
        flushed(j)
    assert j.compactions > 5
    s2 = crash(buf)
    assert state(s2, workers=False) == state(s, workers=False)
    assert sorted(x.handle for x in s2.jobs()) == keep
    assert s2._next_n == s._next_n


def test_a_job_too_big_for_the_journal_is_skipped_with_a_warning() -> None:
    log: list[str] = []
    buf, j = make_journal(layout.JOURNAL_MIN_BYTES, log)
    s = make_sched()
    recovery.start_journal(s, j)
    small = submit(s, C1, b"f", b"small", bg=True)
    submit(s, C1, b"f", b"x" * 10000, bg=True)  # bigger than a half
    after = submit(s, C1, b"f", b"after", bg=True)
    flushed(j)
    assert any("not journaled" in m for m in log)
    s2 = crash(buf)
    assert sorted(x.handle for x in s2.jobs()) == [small, after]


def test_recovery_rebuilds_queues_clients_workers_and_counters() -> None:
    buf, j, s = journaled(shard_index=1, shard_count=3)
    for w in (W1, W2):
        s.handle_packet(w, CAN_DO, b"f", 0.0)
    fg = [submit(s, C1, b"f", b"fg%d" % i) for i in range(3)]
    bg = [submit(s, C2, b"f", b"bg%d" % i, bg=True) for i in range(3)]
    hi = handle_of(s, C2, 21, b"f\0\0high")  # SUBMIT_JOB_HIGH
    epoch = handle_of(s, C1, 36, b"f\0e\0%d\0later" % 5000)  # an epoch job, not due yet
    assert handle_of(s, C2, SUBMIT_JOB, b"f\0e\0x") == epoch  # a second client attaches
    assert grab(s, W1) == hi
    assert grab(s, W2) == fg[0]
    flushed(j)
    s2 = crash(buf, shard_index=1, shard_count=3)
    assert state(s2, workers=False) == state(s, workers=False)
    assert sorted(shard_admin.show_jobs(s2)) == sorted(shard_admin.show_jobs(s))
    # the board the fronts read is right again
    assert state(s2)["board"] == state(s)["board"]
    # a new job gets a new handle
    assert submit(s2, C1, b"f", b"new") == submit(s, C1, b"f", b"new")
    # the worker that held a job completes it after the restart; its client hears of it
    s2.handle_packet(W2, WORK_COMPLETE, fg[0] + b"\0done", 0.0)
    out, s2.out = s2.out, []
    assert [(c, b[12:]) for _op, c, b in out] == [(C1, fg[0] + b"\0done")]
    check_invariants(s2)
    # queue order survives: the rest come out in order once the worker registers again; W1 did
    # not register again (its connection closed while no shard ran): its HIGH job is requeued
    s2.handle_packet(W2, CAN_DO, b"f", 0.0)
    recovery.front_synced(s2, 0, 0.0)
    got = [grab(s2, W2) for _ in range(6)]
    assert got == [hi, *fg[1:], *bg]


def test_a_recovered_worker_that_does_not_register_again_loses_its_job() -> None:
    buf, j, s = journaled()
    for w in (W1, W2, W_OTHER_FRONT):
        s.handle_packet(w, CAN_DO, b"f", 0.0)
    a, b, c = (submit(s, C1, b"f", b"%d" % i, bg=True) for i in range(3))
    assert [grab(s, W1), grab(s, W2), grab(s, W_OTHER_FRONT)] == [a, b, c]
    flushed(j)
    s2 = crash(buf)
    assert s2.running_count() == 3
    s2.handle_packet(W2, CAN_DO, b"f", 0.0)  # front 0 re-registers W2 only: W1 closed meanwhile
    recovery.front_synced(s2, 0, 0.0)
    check_invariants(s2)
    assert s2.running_count() == 2  # W1's job is queued again; front 1 has not synced yet
    jobs = {x.handle: x for x in s2.jobs()}
    assert jobs[a].state == QUEUED and jobs[a].retries == 1
    assert jobs[b].state == RUNNING and jobs[c].state == RUNNING
    s2.disconnect(W_OTHER_FRONT, 0.0)  # a DISCONNECT that was still in the ring
    check_invariants(s2)
    assert jobs[c].state == QUEUED


def test_a_foreground_job_whose_client_left_is_not_recovered() -> None:
    buf, j, s = journaled()
    submit(s, C1, b"f", b"x")
    flushed(j)
    s.disconnect(C1, 0.0)
    j.commit()  # the DETACH is published, the DONE (deferred) is not: recovery drops it anyway
    assert crash(buf).job_count() == 0


def test_a_crash_during_the_store_replay_starts_over() -> None:
    buf, j = make_journal()
    assert j.fresh  # the shard replays the store, then start_journal makes it not fresh
    s = make_sched()
    recovery.add_recovered(s, b"f", b"", b"x", 1, 0, b"", 0.0)
    assert Journal(buf).fresh
    recovery.start_journal(s, j)
    assert not Journal(buf).fresh
    s2 = crash(buf)
    assert [x.stored for x in s2.jobs()] == [True]


# ---------------------------------------------------------------- random traffic, then a crash


def drive(steps: list[tuple[Any, ...]], retries: int, size: int) -> None:
    buf, j = make_journal(size)
    s = make_sched(shard_index=1, shard_count=2, job_retries=retries, log=lambda m: None)
    recovery.start_journal(s, j)
    now = 100.0
    handles = [b"H:t:%d" % (2 + 2 * i) for i in range(12)] + [b"junk"]
    gen = [0] * len(FRONT_OF)

    def cid(slot: int) -> int:  # real ids carry pid bits, so never 0 (JR_NEW's "no client")
        return FRONT_OF[slot] << 56 | 1 << 32 | gen[slot] << 8 | slot

    for step in steps:
        kind = step[0]
        if kind in ("submit", "reduce", "can_do", "cant_do", "packet", "grab", "work", "raw"):
            c = cid(step[1])
        if kind == "submit":
            s.handle_packet(c, step[2], b"\0".join(step[3:6]), now)
        elif kind == "reduce":
            s.handle_packet(c, step[2], b"\0".join((step[3], step[4], step[5], b"", b"d")), now)
        elif kind == "can_do":
            t = step[3]
            s.handle_packet(
                c, 1 if t is None else 23, step[2] + (b"" if t is None else b"\x000"), now
            )
        elif kind in ("cant_do",):
            s.handle_packet(c, 2, step[2], now)
        elif kind == "packet":
            s.handle_packet(c, step[2], b"", now)
        elif kind == "grab":
            s.handle_packet(c, step[2], step[3], now)
        elif kind == "work":
            _, _c, t, i, d = step
            h = handles[i]
            body = h if t in (14, 15, 41) else (h + b"\0" + d if t != 12 else h + b"\x001\x002")
            s.handle_packet(c, t, body, now)
        elif kind == "disconnect":
            s.disconnect(cid(step[1]), now)
            gen[step[1]] += 1
        elif kind == "drop_front":
            s.drop_front(step[1], now)
            for i, f in enumerate(FRONT_OF):
                if f == step[1]:
                    gen[i] += 1
        elif kind == "cancel":
            shard_admin.cancel_job(s, handles[step[1]])
        elif kind == "drop_function":
            shard_admin.drop_function(s, step[1])
        elif kind == "raw":
            s.handle_packet(c, step[2], step[3], now)
        elif kind == "epoch":
            c = cid(step[1])
            body = b"\0".join((step[2], step[3], b"%d" % int(now + 10 + step[4]), b"e"))
            s.handle_packet(c, 36, body, now)
        s.out = []
        if kind == "tick":  # a turn ends here
            flushed(j)
    flushed(j)
    s2 = crash(buf, now, shard_index=1, shard_count=2, job_retries=retries)
    assert state(s2, workers=False) == state(s, workers=False)
    # the fronts re-register their workers; then both agree on workers too
    for w in list(s._workers.values()):
        for f, timeout in w.funcs.items():
            name = f.name + (b"\x000" if timeout else b"")
            s2.handle_packet(w.conn, 23 if timeout else 1, name, now)
    recovery.front_synced(s2, 0, now)
    recovery.front_synced(s2, 1, now)
    check_invariants(s2)
    assert state(s2) == state(s)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(ops, max_size=60),
    st.sampled_from([0, 2]),
    st.sampled_from([layout.JOURNAL_MIN_BYTES, 1 << 20]),
)
def test_random_traffic_then_a_crash_recovers_the_live_state(
    steps: list[tuple[Any, ...]], retries: int, size: int
) -> None:
    drive(steps, retries, size)
