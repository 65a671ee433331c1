"""Tests of the persistent job store (shardgear.store) on real SQLite files."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardgear import routing
from shardgear.jobs import Function, Job
from shardgear.store import SqliteStore, StoredJob, StoreError

_n = 0


def mkjob(
    func: bytes = b"f",
    unique: bytes = b"",
    data: bytes = b"payload",
    priority: int = 1,
    when: int = 0,
    reducer: bytes = b"",
    handle: bytes | None = None,
) -> Job:
    global _n
    _n += 1
    h = handle if handle is not None else b"H:host:%d" % _n
    return Job(h, Function(func, 0), unique, data, priority, when, reducer, True)


class Logs(list[str]):
    def __call__(self, msg: str) -> None:
        self.append(msg)


def everything(_f: bytes) -> bool:
    return True


def shard_owner(i: int, shards: int) -> Callable[[bytes], bool]:
    return lambda f: routing.shard_for(f, shards) == i


def named(name: bytes) -> Callable[[bytes], bool]:
    return lambda f: f == name


def rows(path: Path) -> list[tuple[int, bytes, bytes]]:
    with sqlite3.connect(path) as c:
        return list(c.execute("SELECT id, func, uniq FROM jobs ORDER BY id"))


# ---------------------------------------------------------------------- round trip


def test_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.sqlite3"
    s = SqliteStore(str(path))
    assert not s.failed and s.error == ""
    jobs = [
        mkjob(b"plain", b"u1", b"d1", 0),
        mkjob(b"epoch", b"u2", b"d2", 1, when=4_102_444_800),
        mkjob(b"reduce", b"u3", b"d3", 1, reducer=b"red\0ucer"),
        mkjob(b"f\0n\xff\xfe", b"\0u\x80\xc3(", b"\x00\xff" * 1000, 2),
        mkjob(b"neg", b"", b"", 2, when=-(2**63)),
        mkjob(b"big", b"", b"x", 0, when=2**63 - 1),
    ]
    for j in jobs:
        assert s.add(j)
    assert s.count() == 0  # nothing is written before commit
    assert s.commit() == []
    assert s.count() == len(jobs)
    s.close()

    s2 = SqliteStore(str(path))
    got = s2.load(everything)
    assert [(g.func, g.unique, g.priority, g.data, g.when, g.reducer) for g in got] == [
        (j.func, j.unique, j.priority, j.data, j.when, j.reducer) for j in jobs
    ]
    assert all(isinstance(g, StoredJob) for g in got)
    assert [g.id for g in got] == sorted(g.id for g in got)
    s2.close()


def test_layout_wal_modes_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.sqlite3"
    s = SqliteStore(str(path), synchronous="FULL")
    assert not s.failed
    assert stat.S_IMODE(os.stat(path.parent).st_mode) & ~0o750 == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
    assert s._conn is not None
    assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    s.close()
    s = SqliteStore(str(path))
    assert s._conn is not None
    assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert s._busy_timeout >= 5.0
    s.close()
    with pytest.raises(ValueError):
        SqliteStore(str(path), synchronous="off")


def test_equal_and_empty_uniques_never_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    a, b = mkjob(b"f", b"same", b"1"), mkjob(b"f", b"same", b"2")
    c, d = mkjob(b"f", b"", b"3"), mkjob(b"f", b"", b"4")
    assert s.add(a) and s.add(c)
    assert s.commit() == []
    assert s.add(b) and s.add(d)  # a later batch, same keys as gearmand's
    assert s.commit() == []
    got = s.load(everything)
    assert [g.data for g in got] == [b"1", b"3", b"2", b"4"]  # FIFO by submission
    s.close()


def test_remove_after_commit_and_within_batch(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    keep, gone = mkjob(data=b"keep"), mkjob(data=b"gone")
    s.add(keep)
    s.add(gone)
    assert s.commit() == []
    s.remove(gone)
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"keep"]

    quick = mkjob(data=b"quick")
    s.add(quick)
    s.remove(quick)  # completed within the same batch: never written
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"keep"]
    s.remove(quick)  # unknown: no-op
    s.remove(mkjob())
    assert s.commit() == []
    assert s.count() == 1
    s.close()


def test_load_filters_by_owner(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    funcs = [b"fn%d" % i for i in range(40)]
    for f in funcs:
        s.add(mkjob(f, data=f))
    assert s.commit() == []
    shards = 3
    seen: list[bytes] = []
    for i in range(shards):
        got = s.load(shard_owner(i, shards))
        assert all(routing.shard_for(g.func, shards) == i for g in got)
        assert [g.id for g in got] == sorted(g.id for g in got)
        seen += [g.func for g in got]
    assert sorted(seen) == sorted(funcs)
    s.close()


def test_adopt_forget_and_coalesced_replay(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    for d in (b"a", b"b", b"c"):
        s.add(mkjob(b"f", b"dup" if d != b"c" else b"other", d))
    assert s.commit() == []
    s.close()

    s = SqliteStore(str(path))  # "restart"
    a, b, c = s.load(everything)
    ja = mkjob(handle=b"H:new:1")
    jc = mkjob(handle=b"H:new:4")
    s.adopt(ja.handle, a.id)
    s.adopt(ja.handle, b.id)  # coalesced onto the same live job: the duplicate row goes
    s.adopt(jc.handle, c.id)
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"a", b"c"]
    s.remove(ja)
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"c"]
    s.forget(c.id)
    assert s.commit() == []
    assert s.count() == 0
    s.remove(jc)  # its row is gone already: deleting again is harmless
    assert s.commit() == []
    s.close()


def test_close_flushes_the_open_batch(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    s.add(mkjob(data=b"late"))
    s.close()
    s.close()
    assert s.failed
    assert not s.add(mkjob())  # a closed store stays closed
    assert [r[1] for r in rows(path)] == [b"f"]


# ---------------------------------------------------------------------- several shards


def test_two_stores_on_one_file_alternating(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s0, s1 = SqliteStore(str(path)), SqliteStore(str(path))
    live: list[tuple[SqliteStore, Job]] = []
    for i in range(200):
        s = (s0, s1)[i % 2]
        for k in range(i % 5):
            j = mkjob(b"s%d" % (i % 2), data=b"%d.%d" % (i, k))
            assert s.add(j)
            live.append((s, j))
        if i % 7 == 0 and live:
            owner, j = live.pop(0)
            owner.remove(j)
            assert owner.commit() == []
        assert s.commit() == []
    assert s0.count() == s1.count() == len(live)
    got0 = s0.load(lambda f: f == b"s0")
    got1 = s1.load(lambda f: f == b"s1")
    assert [g.data for g in got0] == [j.data for s, j in live if s is s0]
    assert [g.data for g in got1] == [j.data for s, j in live if s is s1]
    s0.close()
    s1.close()


def _writer(path: str, idx: int, batches: int, per: int) -> None:
    s = SqliteStore(path)
    assert not s.failed, s.error
    mine: list[Job] = []
    for b in range(batches):
        for k in range(per):
            j = mkjob(b"p%d" % idx, data=b"%d:%d" % (b, k), handle=b"H:%d:%d:%d" % (idx, b, k))
            assert s.add(j)
            mine.append(j)
        if b % 3 == 2:
            s.remove(mine.pop(0))
        failed = s.commit()
        if failed:
            raise SystemExit(f"commit failed: {s.error}")
    s.close()


def test_processes_write_concurrently(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite3")
    SqliteStore(path).close()  # create the schema once; the writers race on nothing else
    ctx = multiprocessing.get_context("spawn")
    nproc, batches, per = 4, 150, 4
    procs = [ctx.Process(target=_writer, args=(path, i, batches, per)) for i in range(nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = SqliteStore(path)
    removed = batches // 3
    assert s.count() == nproc * (batches * per - removed)
    for i in range(nproc):
        got = s.load(named(b"p%d" % i))
        assert len(got) == batches * per - removed
        # FIFO within a writer survives the interleaving
        keys = [tuple(int(x) for x in g.data.split(b":")) for g in got]
        assert keys == sorted(keys)
    s.close()


def test_processes_create_schema_concurrently(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh" / "jobs.sqlite3")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, i, 5, 2)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    s = SqliteStore(path)
    assert s.count() == 4 * (5 * 2 - 1)
    s.close()


# ---------------------------------------------------------------------- failures


@pytest.mark.parametrize("kind", ["under_a_file", "is_a_directory"])
def test_unopenable_store_fails_softly(tmp_path: Path, kind: str) -> None:
    if kind == "under_a_file":
        (tmp_path / "afile").write_bytes(b"")
        path = tmp_path / "afile" / "jobs.sqlite3"
    else:
        path = tmp_path / "jobs.sqlite3"
        path.mkdir()
    log = Logs()
    s = SqliteStore(str(path), log=log, retry_interval=3600)
    assert s.failed
    assert str(path) in s.error
    assert len(log) == 1 and "QUEUE_ERROR" in log[0]
    j = mkjob()
    assert s.add(j) is False
    assert s.add(mkjob()) is False
    s.remove(j)
    assert s.commit() == []
    with pytest.raises(StoreError):
        s.load(everything)
    with pytest.raises(StoreError):
        s.count()
    assert len(log) == 1  # logged once, not per call
    s.close()


def test_open_recovers_when_fixed_but_not_before_retry_interval(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.mkdir()
    log = Logs()
    s = SqliteStore(str(path), log=log, retry_interval=0.2)
    assert s.failed and not s.add(mkjob())
    path.rmdir()  # the fault is fixed
    assert not s.add(mkjob())  # too early: no retry yet
    time.sleep(0.25)
    j = mkjob(data=b"back")
    assert s.add(j)
    assert not s.failed
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"back"]
    assert any("reopened" in m for m in log)
    s.close()


def test_bad_schema_version_fails(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    SqliteStore(str(path)).close()
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s = SqliteStore(str(path), retry_interval=3600)
    assert s.failed and "schema version" in s.error
    assert not s.add(mkjob())


def _fill_limit(s: SqliteStore) -> None:
    assert s._conn is not None
    (pages,) = s._conn.execute("PRAGMA page_count").fetchone()
    s._conn.execute(f"PRAGMA max_page_count = {pages + 2}")


def test_disk_full_refuses_the_batch_and_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    log = Logs()
    s = SqliteStore(str(path), log=log)
    old = [mkjob(data=b"old%d" % i) for i in range(3)]
    for j in old:
        s.add(j)
    assert s.commit() == []
    _fill_limit(s)  # SQLITE_FULL from now on for anything that grows the file

    big = [mkjob(data=os.urandom(64 * 1024)) for _ in range(3)]
    small = mkjob(data=b"small")
    for j in [*big, small]:
        assert s.add(j) is True  # errors surface at commit
    s.remove(old[0])  # a delete in the failing batch
    failed = s.commit()
    assert failed == [j.handle for j in [*big, small]]
    assert "SQLITE_FULL" in s.error or "full" in s.error
    assert not s.failed  # still open: the store keeps working
    assert s.count() == 3  # rolled back, the delete included ...
    assert s.commit() == []  # ... and retried with the next batch
    assert s.count() == 2
    s.remove(old[1])  # removes work while the disk is full
    assert s.commit() == []
    assert s.count() == 1

    before = len(log)
    for _ in range(3):  # a lasting fault is logged once, not once per batch
        s.add(mkjob(data=os.urandom(64 * 1024)))
        assert len(s.commit()) == 1
    assert len([m for m in log[before:] if "write failed" in m]) == 1

    assert s._conn is not None
    s._conn.execute("PRAGMA max_page_count = 1073741823")  # the disk is fixed
    j = mkjob(data=os.urandom(64 * 1024))
    s.add(j)
    assert s.commit() == []
    assert any("writes again" in m for m in log)
    assert [g.data for g in s.load(everything)] == [b"old2", j.data]
    s.remove(j)
    assert s.commit() == []
    assert s.count() == 1
    s.close()


def test_locked_past_busy_timeout_refuses_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path), log=Logs())
    s._busy_timeout = 0.05
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    j = mkjob()
    assert s.add(j)
    t = time.monotonic()
    assert s.commit() == [j.handle]
    assert 0.04 < time.monotonic() - t < 2
    assert "SQLITE_BUSY" in s.error
    other.execute("ROLLBACK")
    other.close()
    j2 = mkjob()
    assert s.add(j2)
    assert s.commit() == []
    assert s.count() == 1
    s.close()


def test_commit_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.2, lambda: other.execute("ROLLBACK"))
    release.start()
    s.add(mkjob())
    assert s.commit() == []  # waited for the lock, well within the busy timeout
    release.join()
    other.close()
    assert s.count() == 1
    s.close()


def test_store_recovers_after_losing_its_connection(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    log = Logs()
    s = SqliteStore(str(path), log=log, retry_interval=0)
    j = mkjob()
    s.add(j)
    assert s.commit() == []
    s._lose(sqlite3.OperationalError("disk I/O error"))
    assert s.failed
    s.remove(j)  # queued while down ...
    k = mkjob(data=b"k")
    assert s.add(k)  # retry_interval=0: reopens at once
    assert s.commit() == []
    assert [g.data for g in s.load(everything)] == [b"k"]  # ... and applied after the reopen
    s.close()


# ---------------------------------------------------------------------- size


def test_load_of_100k_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    s = SqliteStore(str(path))
    for b in range(100):
        for k in range(1000):
            s.add(
                mkjob(
                    b"f%d" % (k % 7), data=b"%d" % (b * 1000 + k), handle=b"H:%d" % (b * 1000 + k)
                )
            )
        assert s.commit() == []
    s.close()
    s = SqliteStore(str(path))
    t = time.perf_counter()
    got = s.load(everything)
    elapsed = time.perf_counter() - t
    assert len(got) == 100_000
    assert [int(g.data) for g in got[:5]] == [0, 1, 2, 3, 4]
    assert elapsed < 30  # generous bound: typically well under a second
    s.close()
