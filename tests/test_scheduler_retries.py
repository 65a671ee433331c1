"""The job core under retry policies (retries.py hooks in scheduler.py), time passed in."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from shardgear import routing, shard_admin
from shardgear.invariants import check_invariants
from shardgear.joblog import JobLog
from shardgear.jobs import FUTURE, OUT_EXCEPTION, OUT_FAIL, OUT_LOST, OUT_TIMEOUT, QUEUED, Job
from shardgear.retries import HELD_LIMIT, RetryPolicy
from shardgear.scheduler import Scheduler
from tests.test_joblog import RUN, crash, flushed, logged
from tests.test_scheduler import (
    C1,
    C2,
    CAN_DO,
    CAN_DO_TIMEOUT,
    GET_STATUS,
    GET_STATUS_UNIQUE,
    OP_EXCEPTION,
    OP_SEND,
    STATUS_RES,
    STATUS_RES_UNIQUE,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    W1,
    W2,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    Rig,
    parse,
)

F = b"resize"


class DeadSink:
    """Collects what the scheduler buries (the `DeadLetters` hook), as copies."""

    def __init__(self) -> None:
        self.jobs: list[tuple[bytes, bytes, bytes, int, int, bytes, float]] = []

    def add(self, job: Job, now: float) -> None:
        st = job.retry
        assert st is not None
        self.jobs.append((job.func, job.unique, job.data, st.failures, st.reason, st.error, now))


def make(policy: RetryPolicy | None, **kw: object) -> tuple[Rig, DeadSink]:
    sink = DeadSink()
    kw.setdefault("dead_letters", sink)
    kw.setdefault("rng", random.Random(3))
    rig = Rig(**kw)
    rig.s._function(F).retry = policy
    return rig, sink


def fixed(**kw: object) -> RetryPolicy:
    kw.setdefault("backoff", "fixed")
    kw.setdefault("delay", 5.0)
    kw.setdefault("jitter", 0.0)
    return RetryPolicy(**kw)  # type: ignore[arg-type]


def run_once(rig: Rig, worker: int, result: int, data: bytes = b"") -> bytes:
    """The worker grabs the next job of F and ends it with `result`; return its handle."""
    got = rig.grab(worker)
    assert got is not None, "no job to grab"
    handle = got[1]
    if result == WORK_FAIL:
        rig.send(worker, WORK_FAIL, handle)
    else:
        rig.send(worker, result, handle, data)
    return handle


def advance(rig: Rig, to: float) -> None:
    rig.now = to
    deadline = rig.s.next_deadline()
    if deadline is not None and deadline <= to:
        rig.s.tick(to)
    rig.drain()


def test_a_failed_background_job_waits_then_runs_again_with_its_handle() -> None:
    rig, sink = make(fixed(attempts=3))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"u1", b"img", ptype=SUBMIT_JOB_BG)
    assert run_once(rig, W1, WORK_FAIL) == h
    job = rig.s.job(h)
    assert job is not None and job.state == FUTURE
    assert job.retry is not None and job.retry.failures == 1 and job.retry.reason == OUT_FAIL
    assert rig.s.next_deadline() == 1005.0
    # known, not running; counted in status; not runnable
    assert rig.one(C2, GET_STATUS, h) == (STATUS_RES, h + b"\x001\x000\x000\x000")
    assert rig.one(C2, GET_STATUS_UNIQUE, b"u1")[0] == STATUS_RES_UNIQUE
    assert shard_admin.status(rig.s) == [(F, 1, 0, 1)]
    assert rig.grab(W1) is None
    # the same unique coalesces onto the waiting job
    assert rig.submit(C2, F, b"u1", b"other", ptype=SUBMIT_JOB_BG) == h
    advance(rig, 1004.9)
    assert rig.grab(W1) is None
    advance(rig, 1005.0)
    assert run_once(rig, W1, WORK_FAIL) == h
    assert rig.s.next_deadline() == 1010.0
    advance(rig, 1010.0)
    assert run_once(rig, W1, WORK_COMPLETE, b"ok") == h
    assert rig.s.job(h) is None and sink.jobs == []


def test_exponential_delays_grow_with_each_failure() -> None:
    rig, _ = make(RetryPolicy(attempts=5, delay=2.0, factor=3.0, jitter=0.0, max_delay=100.0))
    rig.send(W1, CAN_DO, F)
    rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    waits = []
    for _ in range(4):
        start = rig.now
        run_once(rig, W1, WORK_FAIL)
        deadline = rig.s.next_deadline()
        assert deadline is not None
        waits.append(deadline - start)
        advance(rig, deadline)
    assert waits == [2.0, 6.0, 18.0, 54.0]


def test_exhausted_background_job_goes_to_the_dead_set_with_its_last_error() -> None:
    rig, sink = make(fixed(attempts=2))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"u", b"payload", ptype=SUBMIT_JOB_BG)
    run_once(rig, W1, WORK_EXCEPTION, b"boom 1")
    advance(rig, 1005.0)
    run_once(rig, W1, WORK_EXCEPTION, b"boom 2")
    assert rig.s.job(h) is None
    assert sink.jobs == [(F, b"u", b"payload", 2, OUT_EXCEPTION, b"boom 2", 1005.0)]
    assert rig.s.next_deadline() is None


def test_dead_letter_off_drops_the_job_as_gearmand() -> None:
    rig, sink = make(fixed(attempts=1, dead_letter=False))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    run_once(rig, W1, WORK_FAIL)
    assert rig.s.job(h) is None and sink.jobs == []


def test_foreground_jobs_ignore_a_policy_unless_it_says_foreground() -> None:
    rig, sink = make(fixed(attempts=3))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x")
    rig.grab(W1)
    effects = rig.send(W1, WORK_FAIL, h)
    assert rig.packets(effects) == [(C1, WORK_FAIL, h)]
    assert rig.s.job(h) is None and sink.jobs == []


def test_a_foreground_client_sees_the_final_attempt_only() -> None:
    rig, sink = make(fixed(attempts=3, foreground=True))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x")
    rig.grab(W1)
    assert rig.send(W1, WORK_DATA, h, b"first try") == []
    assert rig.send(W1, WORK_STATUS, h, b"1", b"2") == []
    assert rig.send(W1, WORK_FAIL, h) == []
    advance(rig, 1005.0)
    rig.grab(W1)
    assert rig.send(W1, WORK_DATA, h, b"second try") == []
    effects = rig.send(W1, WORK_COMPLETE, h, b"done")
    assert rig.packets(effects) == [
        (C1, WORK_DATA, h + b"\0second try"),
        (C1, WORK_COMPLETE, h + b"\0done"),
    ]
    assert sink.jobs == []  # foreground jobs never go to the dead set


def test_a_final_foreground_failure_brings_its_attempts_packets_then_the_failure() -> None:
    rig, _ = make(fixed(attempts=2, foreground=True))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x")
    rig.grab(W1)
    rig.send(W1, WORK_EXCEPTION, h, b"e1")
    advance(rig, 1005.0)
    rig.grab(W1)
    rig.send(W1, WORK_DATA, h, b"partial")
    effects = rig.send(W1, WORK_EXCEPTION, h, b"e2")
    assert effects[0][0] == OP_SEND and parse(effects[0][2]) == (WORK_DATA, h + b"\0partial")
    assert effects[1] == (OP_EXCEPTION, C1, h + b"\0e2")
    assert len(effects) == 2


def test_held_packets_past_the_limit_go_out_and_make_the_attempt_final() -> None:
    rig, _ = make(fixed(attempts=3, foreground=True))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x")
    rig.grab(W1)
    chunk = b"z" * (HELD_LIMIT // 2 - 100)  # two of them, headers included, fit
    assert rig.send(W1, WORK_DATA, h, chunk) == []
    assert rig.send(W1, WORK_DATA, h, chunk) == []
    effects = rig.send(W1, WORK_DATA, h, b"m" * 300)
    assert [parse(b)[0] for _, _, b in effects] == [WORK_DATA] * 3
    assert rig.packets(rig.send(W1, WORK_FAIL, h)) == [(C1, WORK_FAIL, h)]
    assert rig.s.job(h) is None  # not retried: its client has seen this attempt


def test_a_lost_worker_counts_as_a_failure_when_the_policy_says_so() -> None:
    rig, sink = make(fixed(attempts=2))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    rig.grab(W1)
    rig.s.disconnect(W1, rig.now)
    rig.drain()
    job = rig.s.job(h)
    assert job is not None and job.state == FUTURE
    assert job.retry is not None and job.retry.reason == OUT_LOST
    rig.send(W2, CAN_DO, F)
    advance(rig, 1005.0)
    rig.grab(W2)
    rig.s.disconnect(W2, rig.now)
    rig.drain()
    assert rig.s.job(h) is None
    assert [(d[3], d[4]) for d in sink.jobs] == [(2, OUT_LOST)]


def test_an_uncounted_lost_worker_requeues_at_once_as_gearmand() -> None:
    rig, _ = make(fixed(attempts=2, on=OUT_FAIL))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    rig.grab(W1)
    rig.s.disconnect(W1, rig.now)
    rig.drain()
    job = rig.s.job(h)
    assert job is not None and job.state == QUEUED and job.retries == 1 and job.retry is None


def test_a_can_do_timeout_counts_as_a_timeout() -> None:
    rig, _ = make(fixed(attempts=3))
    rig.send(W1, CAN_DO_TIMEOUT, F, b"1")
    h = rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    rig.grab(W1)
    advance(rig, rig.now + 1.0)
    job = rig.s.job(h)
    assert job is not None and job.state == FUTURE
    assert job.retry is not None and job.retry.reason == OUT_TIMEOUT
    assert job.retry.next_at == 1006.0


def test_job_retries_drop_goes_to_the_dead_set_under_a_policy() -> None:
    rig, sink = make(fixed(attempts=5, on=OUT_FAIL), job_retries=1)
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x", ptype=SUBMIT_JOB_BG)
    rig.grab(W1)
    rig.s.disconnect(W1, rig.now)
    rig.drain()
    assert rig.s.job(h) is None
    assert [(d[3], d[4]) for d in sink.jobs] == [(1, OUT_LOST)]


def test_an_uncounted_failure_ends_the_job_and_releases_held_packets() -> None:
    rig, sink = make(fixed(attempts=3, on=OUT_EXCEPTION, foreground=True))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"", b"x")
    rig.grab(W1)
    rig.send(W1, WORK_DATA, h, b"d")
    effects = rig.send(W1, WORK_FAIL, h)
    assert rig.packets(effects) == [(C1, WORK_DATA, h + b"\0d"), (C1, WORK_FAIL, h)]
    assert rig.s.job(h) is None and sink.jobs == []


def test_a_waiting_foreground_job_whose_client_leaves_is_abandoned() -> None:
    rig, _ = make(fixed(attempts=3, foreground=True))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"u", b"x", ptype=SUBMIT_JOB)
    rig.grab(W1)
    rig.send(W1, WORK_FAIL, h)
    rig.s.disconnect(C1, rig.now)
    rig.drain()
    assert rig.s.job(h) is None
    advance(rig, 1005.0)
    assert rig.grab(W1) is None


def test_show_retries_lists_the_attempts_and_last_failure() -> None:
    rig, _ = make(fixed(attempts=3))
    rig.send(W1, CAN_DO, F)
    h = rig.submit(C1, F, b"u", b"x", ptype=SUBMIT_JOB_BG)
    rig.submit(C1, F, b"other", b"y", ptype=SUBMIT_JOB_BG)
    got = rig.grab(W1)
    assert got is not None and got[1] == h
    rig.send(W1, WORK_EXCEPTION, h, b"bad\tinput")
    assert shard_admin.show_retries(rig.s) == [
        (h, F, b"u", 1, "waiting", 1005.0, 1000.0, "exception", b"bad\tinput")
    ]


def test_server_submissions_coalesce_and_answer_handles() -> None:
    s = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t")
    h1 = s.submit_background(F, b"tick", b"d", 1, 1000.0)
    assert h1 == b"H:t:1"
    assert s.submit_background(F, b"tick", b"d", 1, 1000.0) == h1
    assert s.submit_background(F, b"x" * 65, b"d", 1, 1000.0) is None
    assert s.out == []  # nothing for any connection
    check_invariants(s)


def failing_log(tmp_path: Path, policy: RetryPolicy) -> tuple[str, JobLog, Scheduler]:
    """A logged scheduler with F under `policy`, one worker, and two background jobs (u, v) of
    which the first has just failed once with WORK_EXCEPTION "oops" at t=1000."""
    path, j, s = logged(tmp_path, rng=random.Random(1))
    s._function(F).retry = policy
    s.handle_packet(W1, CAN_DO, F, 1000.0)
    s.handle_packet(C1, SUBMIT_JOB_BG, F + b"\0u\0x", 1000.0)
    s.handle_packet(C2, SUBMIT_JOB_BG, F + b"\0v\0y", 1000.0)
    s.handle_packet(W1, 9, b"", 1000.0)  # GRAB_JOB -> u
    flushed(j)
    s.handle_packet(W1, WORK_EXCEPTION, b"H:t:1\0oops", 1000.0)
    flushed(j)
    s.out.clear()
    return path, j, s


def test_a_waiting_job_survives_a_shard_crash_with_its_attempts(tmp_path: Path) -> None:
    path, _j, _s = failing_log(tmp_path, fixed(attempts=3))
    t = crash(path, now=1001.0)
    job = t.job(b"H:t:1")
    assert job is not None and job.state == FUTURE
    assert job.retry is not None
    assert (job.retry.failures, job.retry.reason, job.retry.error) == (1, OUT_EXCEPTION, b"oops")
    assert job.retry.next_at == 1005.0 and t.next_deadline() == 1005.0
    other = t.job(b"H:t:2")
    assert other is not None and other.state == QUEUED
    t.tick(1005.0)  # once due it queues behind the other job
    check_invariants(t)
    f = t.function(F)
    assert f is not None
    assert [x.handle for x in f.queues[1] if x.state == QUEUED] == [b"H:t:2", b"H:t:1"]


def test_a_waiting_durable_job_survives_a_restart_of_the_server(tmp_path: Path) -> None:
    path, _j, _s = failing_log(tmp_path, fixed(attempts=3))
    t = crash(path, now=1001.0, run=RUN + 1)  # an earlier run's log: durable jobs only
    job = t.job(b"H:t:1")
    assert job is not None and job.state == FUTURE and job.retry is not None
    assert (job.retry.failures, job.retry.next_at) == (1, 1005.0)
    # a restart after the wait: queued at once, with its failures
    t = crash(path, now=2000.0, run=RUN + 1)
    job = t.job(b"H:t:1")
    assert job is not None and job.state == QUEUED and job.retry is not None
    assert job.retry.failures == 1


def test_a_snapshot_keeps_the_failures_of_queued_and_waiting_jobs(tmp_path: Path) -> None:
    path, j, s = failing_log(tmp_path, fixed(attempts=5))
    j.snapshot()
    t = crash(path, now=1001.0)
    job = t.job(b"H:t:1")
    assert job is not None and job.state == FUTURE and job.retry is not None
    assert job.retry.failures == 1 and job.retry.next_at == 1005.0
    # after the wait it is queued; a snapshot then records the failures but no wait
    s.tick(1005.0)
    j.snapshot()
    t = crash(path, now=1001.0)
    job = t.job(b"H:t:1")
    assert job is not None and job.state == QUEUED and job.retry is not None
    assert job.retry.failures == 1
    assert job.retry.error == b"oops"


def test_the_next_attempt_of_a_recovered_job_counts_on(tmp_path: Path) -> None:
    path, _j, _s = failing_log(tmp_path, fixed(attempts=2))
    sink = DeadSink()
    t = crash(path, now=1006.0, dead_letters=sink)
    t._function(F).retry = fixed(attempts=2)
    t.handle_packet(W2, CAN_DO, F, 1006.0)
    t.tick(1006.0)
    t.handle_packet(W2, 9, b"", 1006.0)
    t.handle_packet(W2, 9, b"", 1006.0)
    t.handle_packet(W2, WORK_FAIL, b"H:t:1", 1006.0)
    assert t.job(b"H:t:1") is None
    assert [(d[1], d[3]) for d in sink.jobs] == [(b"u", 2)]  # the second attempt was the last


def test_a_new_shard_count_keeps_a_waiting_jobs_failures(tmp_path: Path) -> None:
    from shardgear import recovery
    from shardgear.config import Config
    from shardgear.joblog import read_log
    from shardgear.reshard import prepare_job_logs

    cfg = Config(port=4730, fronts=1, shards=1, state_dir=str(tmp_path))
    s = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t", durable=True)
    j = JobLog(cfg.job_log_path(0, 0))
    assert recovery.start_log(s, j, 1, 0, 1)
    s._function(F).retry = fixed(attempts=4)
    s.handle_packet(W1, CAN_DO, F, 1000.0)
    s.handle_packet(C1, SUBMIT_JOB_BG, F + b"\0u\0x", 1000.0)
    s.handle_packet(W1, 9, b"", 1000.0)
    s.handle_packet(W1, WORK_EXCEPTION, b"H:t:1\0trace", 1000.0)
    flushed(j)
    j.close()
    three = Config(port=4730, fronts=1, shards=3, state_dir=str(tmp_path))
    prepare_job_logs(three, logging.getLogger("test"))
    owner = routing.shard_for(F, 3)
    t = Scheduler(shard_index=owner, shard_count=3, handle_prefix=b"H:t")
    [job] = recovery.recover_cold(t, read_log(three.job_log_path(owner, 0)).records, 1001.0)
    assert job.state == FUTURE and job.retry is not None
    assert (job.retry.failures, job.retry.next_at, job.retry.error) == (1, 1005.0, b"trace")
