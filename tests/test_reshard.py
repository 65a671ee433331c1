"""Job logs made to fit a new shard count, and the sqlite store of earlier versions imported, before
any shard starts (`shardgear.reshard`): every durable job once, on the shard that owns its
function, in queue order; a crash at any step neither loses nor duplicates a job."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from shardgear import recovery, routing
from shardgear.config import Config
from shardgear.joblog import JobLog, NewRecord, read_log
from shardgear.reshard import prepare_job_logs
from shardgear.scheduler import Scheduler

SUBMIT_JOB, SUBMIT_JOB_BG, SUBMIT_JOB_LOW_BG = 7, 18, 34
LOG = logging.getLogger("test")
FUNCS = [b"resize", b"email", b"thumb", b"report", b"index"]


def config(tmp: Path, shards: int) -> Config:
    return Config(port=4730, fronts=1, shards=shards, state_dir=str(tmp))


def write_logs(tmp: Path, shards: int, jobs_per_func: int = 4) -> dict[bytes, list[bytes]]:
    """Logs of a run with `shards` shards; return each function's payloads in queue order
    (foreground jobs are left out: they do not survive a restart)."""
    cfg = config(tmp, shards)
    want: dict[bytes, list[bytes]] = {f: [] for f in FUNCS}
    for s in range(shards):
        sched = Scheduler(shard_index=s, shard_count=shards, handle_prefix=b"H:t", durable=True)
        joblog = JobLog(cfg.job_log_path(s, 0))
        assert recovery.start_log(sched, joblog, 1, s, shards)
        for i in range(jobs_per_func):
            for f in FUNCS:
                if routing.shard_for(f, shards) != s:
                    continue
                data = b"%s-%d" % (f, i)
                ptype = SUBMIT_JOB_LOW_BG if i % 2 else SUBMIT_JOB_BG
                sched.handle_packet(0x11, ptype, f + b"\0\0" + data, 0.0)
                sched.handle_packet(0x11, SUBMIT_JOB, f + b"\0\0fg", 0.0)
                want[f].append(data)
        joblog.commit()
        joblog.close()
    return want


def durable(tmp: Path, shards: int) -> dict[bytes, list[bytes]]:
    """What each shard of `shards` would recover, checked to be on the right shard."""
    cfg = config(tmp, shards)
    got: dict[bytes, list[bytes]] = {f: [] for f in FUNCS}
    for s in range(shards):
        contents = read_log(cfg.job_log_path(s, 0))
        assert contents.skipped == 0
        sched = Scheduler(shard_index=s, shard_count=shards, handle_prefix=b"H:t")
        jobs = recovery.recover_cold(sched, contents.records, 0.0)
        for job in jobs:
            assert routing.shard_for(job.func, shards) == s
            assert (job.n - 1) % shards == s
            got[job.func].append(job.data)
    return got


def log_files(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir())


def test_logs_that_fit_are_left_alone(tmp_path: Path) -> None:
    write_logs(tmp_path, 2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    prepare_job_logs(config(tmp_path, 2), LOG)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_more_shards_get_every_durable_job_once_in_order(tmp_path: Path) -> None:
    want = write_logs(tmp_path, 2)
    prepare_job_logs(config(tmp_path, 3), LOG)
    assert log_files(tmp_path) == [f"jobs.4730.shard{i}.log" for i in range(3)]
    assert durable(tmp_path, 3) == want


def test_fewer_shards_get_every_durable_job_once_in_order(tmp_path: Path) -> None:
    want = write_logs(tmp_path, 4)
    prepare_job_logs(config(tmp_path, 1), LOG)
    assert log_files(tmp_path) == ["jobs.4730.shard0.log"]
    assert durable(tmp_path, 1) == want


def test_the_sqlite_store_of_earlier_versions_is_imported_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.4730.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY, func BLOB NOT NULL, uniq BLOB NOT NULL,"
        " priority INTEGER NOT NULL, data BLOB NOT NULL, when_to_run INTEGER NOT NULL,"
        " reducer BLOB NOT NULL, created REAL NOT NULL)"
    )
    rows = [(b"email", b"u%d" % i, i % 3, b"old-%d" % i, 0, b"", 0.0) for i in range(5)]
    conn.executemany(
        "INSERT INTO jobs (func, uniq, priority, data, when_to_run, reducer, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()
    prepare_job_logs(config(tmp_path, 2), LOG)
    assert not db.exists() and (tmp_path / "jobs.4730.sqlite3.imported").exists()
    got = durable(tmp_path, 2)
    assert got[b"email"] == [b"old-%d" % i for i in range(5)]
    s = routing.shard_for(b"email", 2)
    recs = [r for r in read_log(config(tmp_path, 2).job_log_path(s, 0)).records]
    assert [(r.unique, r.priority) for r in recs if isinstance(r, NewRecord)] == [
        (b"u%d" % i, i % 3) for i in range(5)
    ]
    prepare_job_logs(config(tmp_path, 2), LOG)  # a second start imports nothing again
    assert durable(tmp_path, 2) == got


def test_an_uncommitted_rewrite_is_dropped(tmp_path: Path) -> None:
    want = write_logs(tmp_path, 2)
    (tmp_path / "jobs.4730.shard0.log.reshard").write_bytes(b"half written")
    (tmp_path / "jobs.4730.shard5.log.reshard").write_bytes(b"half written")
    prepare_job_logs(config(tmp_path, 2), LOG)  # died before the marker: back to the old logs
    assert log_files(tmp_path) == ["jobs.4730.shard0.log", "jobs.4730.shard1.log"]
    assert durable(tmp_path, 2) == want


def test_a_committed_rewrite_is_finished(tmp_path: Path) -> None:
    want = write_logs(tmp_path, 2)
    other = tmp_path / "other"
    other.mkdir()
    for name in log_files(tmp_path):
        if name.endswith(".log"):
            os.link(tmp_path / name, other / name)
    prepare_job_logs(config(other, 3), LOG)  # the rewrite, done in full elsewhere
    for i in range(3):
        os.rename(other / f"jobs.4730.shard{i}.log", tmp_path / f"jobs.4730.shard{i}.log.reshard")
    old = [str(tmp_path / f"jobs.4730.shard{i}.log") for i in range(2)]
    (tmp_path / "jobs.4730.reshard").write_text("".join(p + "\n" for p in old))
    # died after the marker, before the renames: the next start finishes the job
    prepare_job_logs(config(tmp_path, 3), LOG)
    assert log_files(tmp_path) == [
        "jobs.4730.shard0.log",
        "jobs.4730.shard1.log",
        "jobs.4730.shard2.log",
        "other",
    ]
    assert durable(tmp_path, 3) == want


def test_an_unusable_state_dir_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    prepare_job_logs(config(blocker / "sub", 2), LOG)  # never raises
