"""Before the shards start: make the job logs in the state directory fit this run's shard count.

Each shard reads only its own job log (`shardgear.joblog`), and a job's handle number says which
shard owns it. When the server starts with a different ``--shards`` than the run that wrote the
logs, or finds a store of the shardgear versions that kept background jobs in sqlite
(``jobs.<port>.sqlite3``), the supervisor rewrites the durable background jobs into one log per
shard of the new count, each job on the shard that now owns its function, numbered afresh, in the
order they were queued. It does so before any shard starts, with a roll-forward marker so that a
crash in the middle never loses or duplicates a job:

1. write every new log as ``<log>.reshard`` and flush them (fsync);
2. write the marker ``jobs.<port>.reshard`` (the commit point), fsync the directory;
3. remove the old logs and the imported sqlite store, rename each ``.reshard`` into place,
   remove the marker.

At the next start, a marker means step 3 is finished first; ``.reshard`` files without a marker
are the leftovers of a step 1 that never committed, and are removed.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sqlite3
from typing import Final

from shardgear import routing
from shardgear.config import Config
from shardgear.joblog import (
    JF_BACKGROUND,
    JF_STORED,
    JR_COUNTER,
    encode_delay,
    encode_header,
    encode_new_record,
    encode_pair,
    read_log,
    write_all,
)
from shardgear.jobs import RetryState
from shardgear.recovery import fold

_LOG_NAME: Final = re.compile(r"jobs\.(\d+)\.shard(\d+)\.log$")


class _Stored:
    """A durable background job on its way to a new log (what a JR_NEW record needs)."""

    __slots__ = ("data", "func", "n", "priority", "reducer", "retries", "retry", "unique", "when")

    def __init__(
        self,
        func: bytes,
        unique: bytes,
        priority: int,
        data: bytes,
        when: int,
        reducer: bytes,
        retries: int,
    ) -> None:
        self.func = func
        self.unique = unique
        self.priority = priority
        self.data = data
        self.when = when
        self.reducer = reducer
        self.retries = retries
        self.retry: RetryState | None = None  # failed attempts under a retry policy
        self.n = 0


def prepare_job_logs(config: Config, log: logging.Logger) -> None:
    """Make the job logs of ``config.port`` in ``config.state_dir`` fit ``config.shards``.

    Never raises: a state directory that cannot be made or read is logged (the shards then
    refuse background jobs until their logs can be written)."""
    state_dir = config.state_dir
    try:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
        _finish_or_undo(config)
        logs = _logs(config)
        legacy = config.legacy_store_path
        has_legacy = os.path.exists(legacy)
        wrong = [path for index, path in logs.items() if index >= config.shards]
        for path in logs.values():
            contents = read_log(path)
            if contents.records and contents.shard_count != config.shards:
                wrong.append(path)
        if not wrong and not has_legacy:
            return
        jobs: list[_Stored] = []
        for index in sorted(logs):
            jobs.extend(_durable_jobs(logs[index]))
        if has_legacy:
            rows = _legacy_rows(legacy)
            jobs.extend(rows)
            log.warning("importing %d background jobs from the sqlite store %s", len(rows), legacy)
        _rewrite(config, jobs, list(logs.values()), legacy if has_legacy else None)
        log.warning(
            "job logs rewritten for %d shards: %d stored background jobs", config.shards, len(jobs)
        )
    except (OSError, sqlite3.Error, ValueError) as exc:
        log.error("job logs in %s not prepared: %s", state_dir, exc)


def _logs(config: Config) -> dict[int, str]:
    """Shard index -> path of every job log of this port in the state directory."""
    out: dict[int, str] = {}
    for path in glob.glob(os.path.join(glob.escape(config.state_dir), f"jobs.{config.port}.*.log")):
        m = _LOG_NAME.search(os.path.basename(path))
        if m and int(m.group(1)) == config.port:
            out[int(m.group(2))] = path
    return out


def _marker(config: Config) -> str:
    return os.path.join(config.state_dir, f"jobs.{config.port}.reshard")


def _finish_or_undo(config: Config) -> None:
    """Complete a committed rewrite that a crash interrupted, or drop an uncommitted one."""
    marker = _marker(config)
    pending = glob.glob(
        os.path.join(glob.escape(config.state_dir), f"jobs.{config.port}.shard*.log.reshard")
    )
    if os.path.exists(marker):
        with open(marker, encoding="utf-8") as f:
            old = [line.strip() for line in f if line.strip()]
        for path in old:
            if os.path.exists(path) and path + ".reshard" not in pending:
                os.unlink(path)
        for path in pending:
            os.rename(path, path[: -len(".reshard")])
        os.unlink(marker)
    else:
        for path in pending:
            os.unlink(path)


def _durable_jobs(path: str) -> list[_Stored]:
    """The stored background jobs of one log, in the order they were last queued."""
    contents = read_log(path)
    if not contents.records:
        return []
    count = max(1, contents.shard_count)
    index = contents.shard_index if contents.shard_index < count else 0
    live, _next = fold(contents.records, index, count, index + 1)
    out = []
    for e in live:
        if e.flags & (JF_BACKGROUND | JF_STORED) == JF_BACKGROUND | JF_STORED:
            r = e.new
            job = _Stored(r.func, r.unique, r.priority, r.data, r.when, r.reducer, e.retries)
            job.retry = e.retry
            out.append(job)
    return out


def _legacy_rows(path: str) -> list[_Stored]:
    """The jobs of a sqlite store of earlier shardgear versions, in submission order."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT func, uniq, priority, data, when_to_run, reducer FROM jobs ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    out = []
    for func, unique, priority, data, when, reducer in rows:
        prio = priority if priority in (0, 1, 2) else 1
        out.append(
            _Stored(bytes(func), bytes(unique), prio, bytes(data), int(when), bytes(reducer), 0)
        )
    return out


def _rewrite(config: Config, jobs: list[_Stored], old: list[str], legacy: str | None) -> None:
    """Steps 1 to 3 of the module docstring."""
    S = config.shards
    per_shard: list[list[_Stored]] = [[] for _ in range(S)]
    for job in jobs:
        s = routing.shard_for(job.func, S)
        job.n = routing.handle_number(len(per_shard[s]), s, S)
        per_shard[s].append(job)
    new_paths = []
    for s in range(S):
        path = config.job_log_path(s, 0) + ".reshard"
        new_paths.append(path)
        first = per_shard[s]
        next_n = routing.handle_number(len(first), s, S)
        chunks: list[bytes | memoryview] = [
            encode_header(s, S, 0),
            encode_pair(JR_COUNTER, next_n, 0),
        ]
        stored = JF_BACKGROUND | JF_STORED
        for job in first:
            encode_new_record(
                job.n,
                0,
                job.when,
                job.retries,
                job.priority,
                stored,
                job.func,
                job.unique,
                job.reducer,
                job.data,
                chunks,
            )
            st = job.retry
            if st is not None:
                chunks.append(
                    encode_delay(
                        job.n,
                        st.next_at,
                        st.first_failed,
                        st.last_failed,
                        st.failures,
                        st.reason,
                        st.error,
                    )
                )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, chunks)
            os.fsync(fd)
        finally:
            os.close(fd)
    marker = _marker(config)
    with open(marker, "w", encoding="utf-8") as f:
        f.write("".join(p + "\n" for p in [*old, *([legacy] if legacy else [])]))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(config.state_dir)
    for path in old:
        if path + ".reshard" not in new_paths:
            os.unlink(path)
    if legacy is not None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(legacy + suffix):
                os.rename(legacy + suffix, legacy + ".imported" + suffix)
    for path in new_paths:
        os.rename(path, path[: -len(".reshard")])
    os.unlink(marker)
    _fsync_dir(config.state_dir)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
