"""The job log: records round-trip through the file, the two write points of a loop turn,
damaged and torn records, compaction, write failures, and recovery of a scheduler from the log of a
"crashed" one (a fresh Scheduler reading a copy of the same file) or of an earlier run (durable
background jobs only)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardgear import recovery, routing, shard_admin
from shardgear.invariants import check_invariants
from shardgear.joblog import (
    HEADER_BYTES,
    JF_BACKGROUND,
    JF_STORED,
    JR_ASSIGN,
    JR_ATTACH,
    JR_COUNTER,
    JobLog,
    NewRecord,
    read_log,
)
from shardgear.jobs import QUEUED, RUNNING
from shardgear.scheduler import Scheduler
from tests.effects import take_effects
from tests.test_scheduler_invariants import FRONT_OF, ops

SUBMIT_JOB, SUBMIT_JOB_BG, GRAB_JOB, WORK_COMPLETE, CAN_DO, CANT_DO = 7, 18, 9, 13, 1, 2
C1, C2 = 0x11, 0x12
W1, W2 = 0x21, 0x22
W_OTHER_FRONT = 1 << 56 | 0x21
RUN = 0x5EED


def make_sched(**kw: Any) -> Scheduler:
    kw.setdefault("shard_index", 0)
    kw.setdefault("shard_count", 1)
    kw.setdefault("handle_prefix", b"H:t")
    kw.setdefault("board", [0] * (routing.BOARD_SLOTS * routing.PRIORITIES))
    kw.setdefault("durable", True)
    kw.setdefault("log", lambda m: None)
    return Scheduler(**kw)


def logged(
    tmp: Path, compact_min: int = 1 << 30, log: list[str] | None = None, **kw: Any
) -> tuple[str, JobLog, Scheduler]:
    """A scheduler writing a fresh log at tmp/shard.log."""
    path = str(tmp / "shard.log")
    j = JobLog(path, compact_min=compact_min, log=None if log is None else log.append)
    s = make_sched(**kw)
    assert recovery.start_log(s, j, RUN, kw.get("shard_index", 0), kw.get("shard_count", 1))
    return path, j, s


def crash(path: str, now: float = 1000.0, run: int = RUN, **kw: Any) -> Scheduler:
    """What a new shard does: read the log and recover (from a copy of the file, so that the test
    can go on with the old scheduler), then start a log of its own."""
    copy = path + ".copy"
    shutil.copyfile(path, copy)
    contents = read_log(copy)
    s = make_sched(**kw)
    if contents.run_id == run:
        recovery.recover(s, contents.records, now)
    else:
        recovery.recover_cold(s, contents.records, now)
    check_invariants(s)
    j = JobLog(copy + ".next")
    assert recovery.start_log(s, j, run, kw.get("shard_index", 0), kw.get("shard_count", 1))
    j.close()
    check_invariants(s)
    return s


def handle_of(s: Scheduler, conn: int, ptype: int, body: bytes, now: float = 1000.0) -> bytes:
    s.handle_packet(conn, ptype, body, now)
    out = take_effects(s)
    return out[0][2][12:].split(b"\0", 1)[0]


def submit(s: Scheduler, conn: int, func: bytes, data: bytes, bg: bool = False) -> bytes:
    return handle_of(s, conn, SUBMIT_JOB_BG if bg else SUBMIT_JOB, func + b"\0\0" + data)


def grab(s: Scheduler, conn: int) -> bytes:
    return handle_of(s, conn, GRAB_JOB, b"")


def flushed(j: JobLog) -> None:
    """A whole shard loop turn: commit, the (imaginary) ring flush, then the next commit that
    writes the records held back until the flush."""
    j.commit()
    j.end_turn(True)
    j.commit()


def news(path: str) -> list[NewRecord]:
    return [r for r in read_log(path).records if isinstance(r, NewRecord)]


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


# ---------------------------------------------------------------- the file


def test_a_new_log_is_a_header_and_a_snapshot(tmp_path: Path) -> None:
    path, _j, _s = logged(tmp_path, shard_index=2, shard_count=3)
    data = Path(path).read_bytes()
    assert data[:8] == b"SGJLOG01" and len(data) == HEADER_BYTES + 32
    contents = read_log(path)
    assert (contents.run_id, contents.shard_index, contents.shard_count) == (RUN, 2, 3)
    assert contents.records == [(JR_COUNTER, 3, 0)] and contents.skipped == 0
    assert not os.path.exists(path + ".new")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_a_missing_or_foreign_file_reads_as_empty(tmp_path: Path) -> None:
    assert read_log(str(tmp_path / "none.log")).records == []
    other = tmp_path / "other.log"
    other.write_bytes(b"SQLite format 3\0" + bytes(200))
    contents = read_log(str(other))
    assert contents.run_id == 0 and contents.records == [] and contents.skipped == 1


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path, shard_index=1, shard_count=2)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h1 = handle_of(s, C1, SUBMIT_JOB, b"f\0u1\0data")  # foreground, unique
    assert submit(s, C2, b"f", b"bg", bg=True) == b"H:t:4"
    assert handle_of(s, C2, SUBMIT_JOB, b"f\0u1\0other") == h1  # coalesced: ATTACH
    assert grab(s, W1) == h1
    flushed(j)
    recs = read_log(path).records
    new = [r for r in recs if isinstance(r, NewRecord)]
    assert [r.n for r in new] == [2, 4]
    assert new[0] == NewRecord(2, C1, 0, 0, 1, 0, b"f", b"u1", b"", b"data")
    assert new[1].flags == JF_BACKGROUND | JF_STORED and new[1].client == 0
    others = [r for r in recs if not isinstance(r, NewRecord)]
    assert others[0] == (JR_COUNTER, 2, 0)
    assert (JR_ATTACH, 2, C2) in others
    assert others[-1] == (JR_ASSIGN, 2, W1)


def test_big_payloads_round_trip_without_being_copied_first(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    odd = os.urandom(65537)  # over the size written as a piece of its own, and odd-sized
    h = submit(s, C1, b"f", odd, bg=True)
    after = submit(s, C1, b"f", b"after", bg=True)
    flushed(j)
    assert [(r.n, r.data) for r in news(path)] == [(1, odd), (2, b"after")]
    assert sorted(x.handle for x in crash(path).jobs()) == [h, after]


def test_records_not_committed_are_not_in_the_file(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    flushed(j)
    submit(s, C1, b"f", b"x")  # collected, not written: a shard killed mid-turn
    assert news(path) == [] and j.pending
    j.commit()
    assert len(news(path)) == 1 and not j.pending


def test_assign_and_done_wait_for_the_flush(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h = submit(s, C1, b"f", b"x")
    j.commit()
    assert grab(s, W1) == h
    j.commit()  # killed before the JOB_ASSIGN reached the ring: the job is still queued
    assert state(crash(path))["queues"] == {(b"f", 1): [h]}
    j.end_turn(False)  # a ring's overflow still holds messages: nothing is released
    j.commit()
    assert state(crash(path))["queues"] == {(b"f", 1): [h]}
    j.end_turn(True)  # that ring flush happened: now it is held
    j.commit()
    s.handle_packet(W1, WORK_COMPLETE, h + b"\0ok", 0.0)
    s.out = []
    j.commit()  # killed before the WORK_COMPLETE reached the ring: still running
    assert state(crash(path))["jobs"][h][-1] == RUNNING
    j.end_turn(True)
    j.commit()
    assert crash(path).job_count() == 0


def test_a_requeue_cancels_an_assign_not_yet_written(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h = submit(s, C1, b"f", b"x")
    grab(s, W1)
    s.disconnect(W1, 0.0)  # the same turn: back to the queue
    flushed(j)
    kinds = [r[0] for r in read_log(path).records if not isinstance(r, NewRecord)]
    assert JR_ASSIGN not in kinds
    s2 = crash(path)
    assert state(s2) == state(s)
    assert state(s2)["jobs"][h][-2] == 1  # retries


def test_a_corrupted_record_is_skipped_and_counted(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    hs = [submit(s, C1, b"f", b"payload-%d" % i, bg=True) for i in range(3)]
    flushed(j)
    # damage the second JR_NEW record's function name (the byte before its payload; the CRC
    # covers a record's structure and names, not its payload)
    buf = bytearray(Path(path).read_bytes())
    at = bytes(buf).index(b"payload-1") - 1
    assert buf[at] == ord("f")
    buf[at] ^= 0xFF
    Path(path).write_bytes(buf)
    contents = read_log(path)
    assert [r.data for r in contents.records if isinstance(r, NewRecord)] == [
        b"payload-0",
        b"payload-2",
    ]
    assert contents.skipped == 1
    assert sorted(x.handle for x in crash(path).jobs()) == sorted([hs[0], hs[2]])


def test_a_damaged_length_does_not_stop_recovery(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    submit(s, C1, b"f", b"a" * 100, bg=True)
    h2 = submit(s, C1, b"f", b"b", bg=True)
    flushed(j)
    buf = bytearray(Path(path).read_bytes())
    # the counter record is the first (32 bytes); the first job's record follows: break its length
    struct.pack_into("<I", buf, HEADER_BYTES + 32 + 4, 0xFFFFFF)
    Path(path).write_bytes(buf)
    contents = read_log(path)
    assert [r.data for r in contents.records if isinstance(r, NewRecord)] == [b"b"]
    assert contents.skipped == 1
    assert [x.handle for x in crash(path).jobs()] == [h2]


def test_a_torn_tail_loses_only_the_torn_record(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    h1 = submit(s, C1, b"f", b"first", bg=True)
    flushed(j)
    submit(s, C1, b"f", b"second" * 20, bg=True)
    flushed(j)
    size = os.path.getsize(path)
    os.truncate(path, size - 40)  # the last write cut short (a power loss without full sync)
    contents = read_log(path)
    assert [r.data for r in contents.records if isinstance(r, NewRecord)] == [b"first"]
    assert contents.skipped == 1
    assert [x.handle for x in crash(path).jobs()] == [h1]


def test_garbage_in_the_whole_log_never_raises(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    for i in range(20):
        submit(s, C1, b"f", b"%d" % i, bg=True)
    flushed(j)
    buf = bytearray(Path(path).read_bytes())
    for k in range(HEADER_BYTES, len(buf), 7):
        buf[k] = (k * 31) & 0xFF
    Path(path).write_bytes(buf)
    crash(path)  # whatever survives, recovery neither raises nor breaks an invariant


def test_compaction_keeps_the_live_jobs_and_bounds_the_file(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path, compact_min=4096)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    keep = [submit(s, C1, b"f", b"keep-%d" % i, bg=True) for i in range(5)]
    for i in range(300):  # many short-lived jobs fill the log again and again
        h = submit(s, C2, b"g", b"tmp-%d" % i, bg=True)
        s.handle_packet(W2, CAN_DO, b"g", 0.0)
        assert grab(s, W2) == h
        s.handle_packet(W2, WORK_COMPLETE, h + b"\0", 0.0)
        s.out = []
        flushed(j)
        assert os.path.getsize(path) < 3 * 4096
    assert j.compactions > 5
    s2 = crash(path)
    assert state(s2, workers=False) == state(s, workers=False)
    assert sorted(x.handle for x in s2.jobs()) == keep
    assert s2._next_n == s._next_n


def test_a_failed_write_refuses_its_durable_jobs_and_heals(tmp_path: Path) -> None:
    messages: list[str] = []
    path, j, s = logged(tmp_path, log=messages)
    kept = submit(s, C1, b"f", b"kept", bg=True)
    flushed(j)
    size = os.path.getsize(path)
    good_fd = j._fd
    j._fd = os.open(path, os.O_RDONLY)  # the next write fails with EBADF
    lost = submit(s, C1, b"f", b"lost", bg=True)
    fg = submit(s, C1, b"f", b"fg")
    assert j.commit() == [lost]  # a foreground job needs no store: it is not refused
    assert j.stale and j.failures == 1 and messages and "write failed" in messages[0]
    assert os.path.getsize(path) == size
    os.close(j._fd)
    j._fd = good_fd
    shard_admin.cancel_job(s, lost)  # what the shard does with a refused job
    s.out = []
    assert j.commit() == []  # too soon to try again: nothing new to refuse either
    j._next_retry = 0.0
    assert j.commit() == [] and not j.stale  # rewritten whole
    assert sorted(x.handle for x in crash(path).jobs()) == sorted([kept, fg])


def test_a_log_that_cannot_be_created_starts_stale(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    j = JobLog(str(blocker / "shard.log"))
    s = make_sched()
    assert not recovery.start_log(s, j, RUN, 0, 1)
    h = submit(s, C1, b"f", b"x", bg=True)
    assert j.commit() == [h]


# ---------------------------------------------------------------- recovery


def test_recovery_rebuilds_queues_clients_workers_and_counters(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path, shard_index=1, shard_count=3)
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
    s2 = crash(path, shard_index=1, shard_count=3)
    assert state(s2, workers=False) == state(s, workers=False)
    assert sorted(shard_admin.show_jobs(s2)) == sorted(shard_admin.show_jobs(s))
    assert state(s2)["board"] == state(s)["board"]  # the board the fronts read is right again
    assert submit(s2, C1, b"f", b"new") == submit(s, C1, b"f", b"new")  # a new handle
    # the worker that held a job completes it after the restart; its client hears of it
    s2.handle_packet(W2, WORK_COMPLETE, fg[0] + b"\0done", 0.0)
    out = take_effects(s2)
    assert [(c, b[12:]) for _op, c, b in out] == [(C1, fg[0] + b"\0done")]
    check_invariants(s2)
    # queue order survives; W1's connection closed while no shard ran (its front's PING does not
    # list it): its HIGH job is requeued
    s2.handle_packet(W2, CAN_DO, b"f", 0.0)
    recovery.front_synced(s2, 0, {W2, C1, C2}, 0.0)
    got = [grab(s2, W2) for _ in range(6)]
    assert got == [hi, *fg[1:], *bg]


def test_a_recovered_worker_whose_connection_closed_meanwhile_loses_its_job(
    tmp_path: Path,
) -> None:
    path, j, s = logged(tmp_path)
    for w in (W1, W2, W_OTHER_FRONT):
        s.handle_packet(w, CAN_DO, b"f", 0.0)
    a, b, c = (submit(s, C1, b"f", b"%d" % i, bg=True) for i in range(3))
    assert [grab(s, W1), grab(s, W2), grab(s, W_OTHER_FRONT)] == [a, b, c]
    flushed(j)
    s2 = crash(path)
    assert s2.running_count() == 3
    s2.handle_packet(W2, CAN_DO, b"f", 0.0)  # front 0 re-registers W2 only: W1 closed meanwhile
    recovery.front_synced(s2, 0, {W2, C1}, 0.0)
    check_invariants(s2)
    assert s2.running_count() == 2  # W1's job is queued again; front 1 has not synced yet
    jobs = {x.handle: x for x in s2.jobs()}
    assert jobs[a].state == QUEUED and jobs[a].retries == 1
    assert jobs[b].state == RUNNING and jobs[c].state == RUNNING
    s2.disconnect(W_OTHER_FRONT, 0.0)  # a DISCONNECT that was still in the ring
    check_invariants(s2)
    assert jobs[c].state == QUEUED


def test_a_recovered_worker_that_sent_cant_do_keeps_its_job_and_completes_it(
    tmp_path: Path,
) -> None:
    path, j, s = logged(tmp_path)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    h = submit(s, C1, b"f", b"x")
    assert grab(s, W1) == h
    s.handle_packet(W1, CANT_DO, b"f", 0.0)  # stops new work; the held job stays W1's
    flushed(j)
    s2 = crash(path)
    recovery.front_synced(s2, 0, {W1, C1}, 0.0)  # W1 is open but registered nothing again
    check_invariants(s2)
    assert s2.running_count() == 1
    s2.handle_packet(W1, WORK_COMPLETE, h + b"\0done", 0.0)
    assert [(c, b[12:]) for _op, c, b in take_effects(s2)] == [(C1, h + b"\0done")]
    assert s2.job_count() == 0
    check_invariants(s2)


def test_a_recovered_client_that_closed_while_no_shard_ran_is_detached(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    queued = submit(s, C1, b"f", b"queued")
    running = submit(s, C2, b"f", b"running")
    assert grab(s, W1) == queued
    flushed(j)
    s2 = crash(path)
    # C1 closed while no shard ran and its DISCONNECT died with the old shard: the PING lists W1
    # and C2 only
    s2.handle_packet(W1, CAN_DO, b"f", 0.0)
    recovery.front_synced(s2, 0, {W1, C2}, 0.0)
    check_invariants(s2)
    jobs = {x.handle: x for x in s2.jobs()}
    assert jobs[queued].clients == []  # still running for W1, its result goes to nobody
    assert jobs[running].clients == [C2]
    s2.handle_packet(W1, WORK_COMPLETE, queued + b"\0r", 0.0)
    assert take_effects(s2) == []
    assert s2.job_count() == 1


def test_a_foreground_job_whose_client_left_is_not_recovered(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path)
    submit(s, C1, b"f", b"x")
    flushed(j)
    s.disconnect(C1, 0.0)
    j.commit()  # the DETACH is written, the DONE (held back) is not: recovery drops it anyway
    assert crash(path).job_count() == 0


def test_a_new_run_recovers_only_durable_jobs_with_their_handles(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path, shard_index=1, shard_count=2)
    s.handle_packet(W1, CAN_DO, b"f", 0.0)
    queued = submit(s, C1, b"f", b"bg", bg=True)
    running = submit(s, C1, b"g", b"bg-running", bg=True)
    s.handle_packet(W1, CAN_DO, b"g", 0.0)
    submit(s, C1, b"f", b"fg")  # dies with its client
    later = handle_of(s, C1, 36, b"f\0\0%d\0epoch" % 5000)  # background epoch job
    s.handle_packet(W1, GRAB_JOB, b"g", 0.0)
    s.out = []
    s.disconnect(W1, 0.0)
    s.handle_packet(W1, CAN_DO, b"g", 0.0)
    assert grab(s, W1) == running
    flushed(j)
    s2 = crash(path, run=RUN + 1, shard_index=1, shard_count=2)
    jobs = {x.handle: x for x in s2.jobs()}
    assert set(jobs) == {queued, running, later}
    assert all(x.stored and x.background and not x.clients for x in jobs.values())
    assert jobs[running].state == QUEUED and jobs[running].retries == 1
    assert jobs[later].when == 5000 and s2.next_deadline() == 5000
    assert s2.running_count() == 0
    # the handle counter goes on past every handle the old run gave out
    assert submit(s2, C1, b"f", b"new") == submit(s, C1, b"f", b"new")


def test_a_new_run_without_a_durable_log_stores_nothing(tmp_path: Path) -> None:
    path, j, s = logged(tmp_path, durable=False)
    submit(s, C1, b"f", b"bg", bg=True)
    flushed(j)
    assert crash(path, run=RUN + 1).job_count() == 0


# ---------------------------------------------------------------- random traffic, then a crash


def drive(tmp: Path, steps: list[tuple[Any, ...]], retries: int, compact_min: int) -> None:
    path, j, s = logged(tmp, compact_min, shard_index=1, shard_count=2, job_retries=retries)
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
    s2 = crash(path, now, shard_index=1, shard_count=2, job_retries=retries)
    assert state(s2, workers=False) == state(s, workers=False)
    # the fronts re-register their workers; then both agree on workers too
    for w in list(s._workers.values()):
        for f, timeout in w.funcs.items():
            name = f.name + (b"\x000" if timeout else b"")
            s2.handle_packet(w.conn, 23 if timeout else 1, name, now)
    live = set(s._workers) | set(s._clients)  # no connection closed while no shard ran
    recovery.front_synced(s2, 0, live, now)
    recovery.front_synced(s2, 1, live, now)
    check_invariants(s2)
    assert state(s2) == state(s)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(ops, max_size=60),
    st.sampled_from([0, 2]),
    st.sampled_from([2048, 1 << 30]),
)
def test_random_traffic_then_a_crash_recovers_the_live_state(
    tmp_path: Path, steps: list[tuple[Any, ...]], retries: int, compact_min: int
) -> None:
    tmp = tmp_path / os.urandom(6).hex()
    tmp.mkdir()
    drive(tmp, steps, retries, compact_min)
