"""The dead set (shardgear/deadset.py) on a real SQLite file: kept, bounded by count and age with
the drops counted, listed, replayed (deleted only at the next commit) and deleted."""

from __future__ import annotations

import random
from pathlib import Path

from shardgear import deadset
from shardgear.deadset import DeadSet
from shardgear.invariants import check_invariants
from shardgear.jobs import OUT_EXCEPTION, QUEUED, Function, Job, RetryState
from shardgear.retries import RetryPolicy
from shardgear.scheduler import Scheduler

F, G = b"resize", b"thumb"


def dead_job(func: bytes = F, unique: bytes = b"", data: bytes = b"img", n: int = 1) -> Job:
    job = Job(b"H:t:%d" % n, Function(func, 0), unique, data, 1, 0, b"", True)
    job.retry = RetryState(3, 100.0, 130.0 + n, OUT_EXCEPTION, b"Traceback: boom", 0.0)
    return job


def make(
    tmp_path: Path, policies: dict[bytes, RetryPolicy] | None = None, owns: object = None
) -> DeadSet:
    pol = policies or {}
    return DeadSet(
        str(tmp_path / "dead.4730.sqlite3"),
        owns if callable(owns) else (lambda f: True),  # type: ignore[arg-type]
        pol.get,
    )


def test_a_dead_job_keeps_what_is_needed_to_replay_and_explain_it(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.add(dead_job(unique=b"u1", data=b"payload"), 500.0)
    assert d.newest() == []  # nothing before the commit
    d.commit(500.0)
    [row] = d.newest()
    assert (row.func, row.unique, row.attempts, row.reason, row.error) == (
        F,
        b"u1",
        3,
        "exception",
        b"Traceback: boom",
    )
    assert (row.first_failed, row.last_failed, row.size, row.data) == (100.0, 131.0, 7, b"")
    full = d.get(row.id)
    assert full is not None and full.data == b"payload" and full.handle == b"H:t:1"
    # and it is durable
    again = make(tmp_path)
    assert [j.id for j in again.newest()] == [row.id]


def test_listing_is_newest_first_per_function_with_a_limit(tmp_path: Path) -> None:
    d = make(tmp_path)
    for n in range(1, 6):
        d.add(dead_job(F if n % 2 else G, unique=b"%d" % n, n=n), 500.0)
    d.commit(500.0)
    assert [j.unique for j in d.newest()] == [b"5", b"4", b"3", b"2", b"1"]
    assert [j.unique for j in d.newest(F, 2)] == [b"5", b"3"]
    assert [j.unique for j in d.newest(G)] == [b"4", b"2"]
    assert d.functions() == [(F, 3, 0), (G, 2, 0)]


def test_the_oldest_go_first_past_the_count_and_are_counted(tmp_path: Path) -> None:
    d = make(tmp_path, {F: RetryPolicy(dead_max_jobs=3)})
    for n in range(1, 6):
        d.add(dead_job(unique=b"%d" % n, n=n), 500.0)
        d.commit(500.0)
    assert [j.unique for j in d.newest()] == [b"5", b"4", b"3"]
    assert d.functions() == [(F, 3, 2)]


def test_jobs_older_than_the_age_limit_expire(tmp_path: Path) -> None:
    d = make(tmp_path, {F: RetryPolicy(dead_max_age=3600.0)})
    d.add(dead_job(unique=b"old", n=1), 0.0)  # last failed at 131
    d.commit(200.0)
    job = dead_job(unique=b"new", n=2)
    assert job.retry is not None
    job.retry.last_failed = 4000.0
    d.add(job, 4000.0)
    d.commit(4000.0)  # expiry runs at most once a minute: 200 + 60 <= 4000
    assert [j.unique for j in d.newest()] == [b"new"]
    assert d.functions() == [(F, 1, 1)]


def test_replay_requeues_with_fresh_attempts_and_deletes_at_the_next_commit(
    tmp_path: Path,
) -> None:
    d = make(tmp_path)
    d.add(dead_job(unique=b"u", data=b"again"), 500.0)
    d.commit(500.0)
    s = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t", rng=random.Random(1))
    [row] = d.newest()
    assert deadset.answer(d, s, {"cmd": "dead_replay", "id": row.id}, 600.0) == (1, 0)
    [job] = s.jobs()
    assert (job.func, job.unique, job.data, job.state, job.retry) == (
        F,
        b"u",
        b"again",
        QUEUED,
        None,
    )
    assert job.background
    check_invariants(s)
    assert d.newest() == []  # hidden at once
    assert make(tmp_path).newest() != []  # but still on disk until the job store has it
    d.commit(600.0)
    assert make(tmp_path).newest() == []


def test_a_replay_the_store_refused_stays_dead(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.add(dead_job(unique=b"u"), 500.0)
    d.commit(500.0)
    s = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t")
    deadset.answer(d, s, {"cmd": "dead_replay"}, 600.0)
    [job] = s.jobs()
    d.keep_replays_of({job.handle})
    d.commit(600.0)
    assert len(d.newest()) == 1


def test_replay_refused_by_maxqueue_stays_dead(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.add(dead_job(unique=b"a", n=1), 500.0)
    d.add(dead_job(unique=b"b", n=2), 500.0)
    d.commit(500.0)
    s = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t")
    s._function(F).maxq = [1, 1, 1]
    assert deadset.answer(d, s, {"cmd": "dead_replay", "func": "resize"}, 600.0) == (1, 1)
    d.commit(600.0)
    assert [j.unique for j in d.newest()] == [b"b"]


def test_delete_one_a_function_or_all(tmp_path: Path) -> None:
    d = make(tmp_path)
    for n in range(1, 5):
        d.add(dead_job(F if n < 3 else G, unique=b"%d" % n, n=n), 500.0)
    d.commit(500.0)
    first = d.newest(F)[-1].id
    assert d.delete(rid=first) == 1 and d.delete(rid=first) == 0
    assert d.delete(func=G) == 2
    assert d.delete() == 1
    assert d.newest() == []


def test_a_shard_sees_only_its_functions(tmp_path: Path) -> None:
    d = make(tmp_path)
    d.add(dead_job(F, n=1), 500.0)
    d.add(dead_job(G, n=2), 500.0)
    d.commit(500.0)
    mine = make(tmp_path, owns=lambda f: f == F)
    assert [j.func for j in mine.newest()] == [F]
    assert mine.newest(G) == []
    assert mine.get(d.newest(G)[0].id) is None
    assert mine.delete() == 1
    assert [j.func for j in d.newest()] == [G]


def test_reading_before_anything_died_creates_no_file(tmp_path: Path) -> None:
    d = make(tmp_path)
    assert d.newest() == [] and d.functions() == [] and d.get(1) is None
    d.commit(0.0)
    assert not (tmp_path / "dead.4730.sqlite3").exists()


def test_an_unwritable_database_keeps_the_jobs_for_later(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    logs: list[str] = []
    d = DeadSet(str(blocker / "dead.4730.sqlite3"), lambda f: True, {}.get, log=logs.append)
    d.add(dead_job(), 500.0)
    d.commit(500.0)
    assert logs and "cannot open" in logs[0]
    blocker.unlink()
    d._store._retry_at = 0.0  # the retry interval, shortened for the test
    d.commit(501.0)
    assert len(d.newest()) == 1
