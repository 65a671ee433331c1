"""The dead set: background jobs that exhausted their retry policy, kept to inspect and replay.

Theory of operation
-------------------
A background job whose last attempt failed under a policy with ``dead-letter = true``
(`shardgear.retries`) is handed to `DeadSet.add` by the scheduler instead of vanishing. The dead
set is per-function state owned by the shard that owns the function: it lives in
``<state-dir>/dead.<port>.sqlite3`` (`shardgear.statedb`), which every shard opens, and a shard
reads and writes only the rows of its own functions (``sg_owns``). Nothing is kept in memory
but the rows of the current loop turn, so the dead set costs nothing until a job dies.

Durability, in the order of a shard's loop turn (ARCHITECTURE.md, "The dead set"):

1. `commit` (before the job log's commit) writes the turn's dead jobs: a job's DONE record
   reaches the job log only once its dead row is durable, so a crash between the two keeps it
   twice (it may run again), never zero times.
2. A replay re-submits a dead job as a new background job (`Scheduler.submit_background`: fresh
   attempts, a new handle; the same unique coalesces) and deletes its row at the *next* turn's
   `commit`, after the job log's commit made the new job durable. A replay whose job the log
   then refused keeps its row (`keep_replays_of`).

Bounds, per function (the policy's ``dead-max-jobs`` and ``dead-max-age``): each commit trims the
functions it wrote to the newest ``dead-max-jobs`` rows, and once a minute rows older than
``dead-max-age`` (by their last failure) go. Every row dropped so is counted per function
(``dead_drops``), shown by ``show dead functions`` and the HTTP API.

A database that cannot be opened or written is logged and tried again at the next commit (at most
every `RETRY_INTERVAL` seconds); the dead jobs of those turns wait in memory, up to
`MAX_WAITING` rows, beyond which they are dropped and logged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from shardgear.jobs import OUTCOME_NAMES, Job
from shardgear.messages import json_bytes, json_text
from shardgear.retries import RetryPolicy
from shardgear.scheduler import Scheduler
from shardgear.statedb import StateDb, StateDbError, transaction

__all__ = ["DeadJob", "DeadSet", "answer", "db_path", "replay"]

EXPIRE_INTERVAL: Final = 60.0
MAX_WAITING: Final = 10_000

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS dead (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        func BLOB NOT NULL,
        uniq BLOB NOT NULL,
        priority INTEGER NOT NULL,
        data BLOB NOT NULL,
        reducer BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        first_failed REAL NOT NULL,
        last_failed REAL NOT NULL,
        reason TEXT NOT NULL,
        error BLOB NOT NULL,
        handle BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS dead_by_func ON dead (func, id)",
    "CREATE TABLE IF NOT EXISTS dead_drops (func BLOB PRIMARY KEY, dropped INTEGER NOT NULL)",
)
_INSERT: Final = (
    "INSERT INTO dead (func, uniq, priority, data, reducer, attempts, first_failed, last_failed,"
    " reason, error, handle) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS: Final = (
    "id, func, uniq, priority, attempts, first_failed, last_failed, reason, error, handle,"
    " length(data)"
)
_COUNT_DROPS: Final = (
    "INSERT INTO dead_drops (func, dropped) VALUES (?, ?)"
    " ON CONFLICT(func) DO UPDATE SET dropped = dropped + excluded.dropped"
)

# A queued row: func, unique, priority, data, reducer, attempts, first, last, reason, error, handle
_Row = tuple[bytes, bytes, int, bytes, bytes, int, float, float, str, bytes, bytes]


def db_path(state_dir: str, port: int) -> str:
    """The dead set's file of the server on `port`."""
    return f"{state_dir.rstrip('/')}/dead.{port}.sqlite3"


@dataclass(frozen=True, slots=True)
class DeadJob:
    """One dead job. `data` and `reducer` are filled by `DeadSet.get` and `take` only; `size`
    is the payload's length."""

    id: int
    func: bytes
    unique: bytes
    priority: int
    attempts: int
    first_failed: float
    last_failed: float
    reason: str
    error: bytes
    handle: bytes
    size: int
    data: bytes = b""
    reducer: bytes = b""

    def to_json(self) -> dict[str, Any]:
        """The JSON-able form that travels front <-> shard (bytes as latin-1 text)."""
        return {
            "id": self.id,
            "function": json_text(self.func),
            "unique": json_text(self.unique),
            "priority": self.priority,
            "attempts": self.attempts,
            "first_failed": self.first_failed,
            "last_failed": self.last_failed,
            "reason": self.reason,
            "error": json_text(self.error),
            "handle": json_text(self.handle),
            "size": self.size,
            "data": json_text(self.data),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> DeadJob:
        """The inverse of `to_json`."""
        return DeadJob(
            int(d["id"]),
            json_bytes(d["function"]),
            json_bytes(d["unique"]),
            int(d["priority"]),
            int(d["attempts"]),
            float(d["first_failed"]),
            float(d["last_failed"]),
            str(d["reason"]),
            json_bytes(d["error"]),
            json_bytes(d["handle"]),
            int(d["size"]),
            json_bytes(d.get("data", "")),
        )


def _dead_job(row: tuple[Any, ...], data: bytes = b"", reducer: bytes = b"") -> DeadJob:
    rid, func, uniq, prio, attempts, first, last, reason, error, handle, size = row[:11]
    return DeadJob(
        int(rid),
        bytes(func),
        bytes(uniq),
        int(prio),
        int(attempts),
        float(first),
        float(last),
        str(reason),
        bytes(error),
        bytes(handle),
        int(size),
        data,
        reducer,
    )


class DeadSet:
    """The dead jobs of the functions one shard owns (see the module docstring).

    Args:
        path: the database file (`db_path`).
        owns: whether this shard owns a function (`routing.shard_for(func, S) == index`).
        policy_of: a function's retry policy, for its bounds (the default policy's if it has
            none any more).
        synchronous: "normal" or "full", as ``--store-sync``.
        log: where errors go.
    """

    def __init__(
        self,
        path: str,
        owns: Callable[[bytes], bool],
        policy_of: Callable[[bytes], RetryPolicy | None],
        *,
        synchronous: str = "normal",
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._owns = owns
        self._policy_of = policy_of
        self._log = log
        self._store = StateDb(
            path, _SCHEMA, what="dead set", owns=owns, synchronous=synchronous, say=self._say
        )
        self._waiting: list[_Row] = []  # this turn's dead jobs (and earlier ones not yet written)
        self._replayed: dict[int, bytes] = {}  # dead row id -> handle of its replayed job
        self._taken: set[int] = set()  # ids replayed this turn: hidden until deleted
        self._next_expire = 0.0
        self.lost = 0
        """Dead jobs dropped because the database could not take them in time."""

    # ------------------------------------------------------------------ the database

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def close(self) -> None:
        """Write what waits (best effort) and close the file."""
        self.commit(time.time())
        self._store.close()

    # ------------------------------------------------------------------ the scheduler's hook

    def add(self, job: Job, now: float) -> None:
        """`DeadLetters.add`: queue `job` for this turn's `commit`."""
        st = job.retry
        failures = st.failures if st is not None else job.retries
        first = st.first_failed if st is not None and st.first_failed else now
        last = st.last_failed if st is not None and st.last_failed else now
        reason = OUTCOME_NAMES.get(st.reason, "") if st is not None else "lost"
        error = st.error if st is not None else b""
        self._waiting.append(
            (
                job.func,
                job.unique,
                job.priority,
                job.data,
                job.reducer,
                failures,
                first,
                last,
                reason,
                error,
                job.handle,
            )
        )

    def commit(self, now: float) -> None:
        """Write this turn's dead jobs and trim their functions; delete the rows replayed in the
        previous turn; once a minute, expire rows by age. Call once per loop turn, before the
        job log's commit."""
        if not self._waiting and not self._replayed:
            if now < self._next_expire:
                return
            if not self._exists():  # nothing ever died: nothing to expire
                self._next_expire = now + EXPIRE_INTERVAL
                return
        conn = self._store.get()
        if conn is None:
            if len(self._waiting) > MAX_WAITING:
                extra = len(self._waiting) - MAX_WAITING
                del self._waiting[:extra]
                self.lost += extra
                self._say(f"dead set unavailable: {extra} dead jobs dropped ({self.lost} so far)")
            return
        try:
            with transaction(conn):
                if self._replayed:
                    conn.executemany(
                        "DELETE FROM dead WHERE id = ?", [(i,) for i in self._replayed]
                    )
                if self._waiting:
                    conn.executemany(_INSERT, self._waiting)
                    for func in {row[0] for row in self._waiting}:
                        self._trim(conn, func)
                if now >= self._next_expire:
                    self._expire(conn, now)
        except sqlite3.Error as exc:
            self._store.failed(f"cannot write {self.path}: {exc}")
            return
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_INTERVAL
        self._waiting.clear()
        self._replayed.clear()
        self._taken.clear()

    def _policy(self, func: bytes) -> RetryPolicy:
        return self._policy_of(func) or RetryPolicy()

    def _trim(self, conn: sqlite3.Connection, func: bytes) -> None:
        keep = self._policy(func).dead_max_jobs
        cur = conn.execute(
            "DELETE FROM dead WHERE func = ? AND id IN"
            " (SELECT id FROM dead WHERE func = ? ORDER BY id DESC LIMIT -1 OFFSET ?)",
            (func, func, keep),
        )
        if cur.rowcount > 0:
            conn.execute(_COUNT_DROPS, (func, cur.rowcount))

    def _expire(self, conn: sqlite3.Connection, now: float) -> None:
        funcs = [
            bytes(f) for (f,) in conn.execute("SELECT DISTINCT func FROM dead WHERE sg_owns(func)")
        ]
        for func in funcs:
            cutoff = now - self._policy(func).dead_max_age
            cur = conn.execute(
                "DELETE FROM dead WHERE func = ? AND last_failed < ?", (func, cutoff)
            )
            if cur.rowcount > 0:
                conn.execute(_COUNT_DROPS, (func, cur.rowcount))

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._store.get()
        if conn is None:
            raise StateDbError(self._store.error)
        try:
            return list(conn.execute(sql, args))
        except sqlite3.Error as exc:
            self._store.failed(f"cannot read {self.path}: {exc}")
            raise StateDbError(self._store.error) from exc

    def _exists(self) -> bool:
        """False while the file was never created (nothing ever died): reads need not create it."""
        if self._store.conn is not None:
            return True
        try:
            with open(self.path, "rb"):
                return True
        except OSError:
            return False

    # ------------------------------------------------------------------ reading

    def newest(self, func: bytes | None = None, limit: int = 100) -> list[DeadJob]:
        """The newest `limit` dead jobs of `func` (every function of this shard if None), newest
        first, without payloads. Raises StateDbError."""
        if not self._exists():
            return []
        hidden = self._taken
        if func is None:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM dead WHERE sg_owns(func) ORDER BY id DESC LIMIT ?",
                (limit + len(hidden),),
            )
        elif not self._owns(func):
            return []
        else:
            rows = self._read(
                f"SELECT {_COLUMNS} FROM dead WHERE func = ? ORDER BY id DESC LIMIT ?",
                (func, limit + len(hidden)),
            )
        return [_dead_job(r) for r in rows if r[0] not in hidden][:limit]

    def get(self, rid: int) -> DeadJob | None:
        """Dead job `rid` with its payload, if this shard owns its function. Raises
        StateDbError."""
        if not self._exists() or rid in self._taken:
            return None
        rows = self._read(
            f"SELECT {_COLUMNS}, data, reducer FROM dead WHERE id = ? AND sg_owns(func)", (rid,)
        )
        if not rows:
            return None
        return _dead_job(rows[0], bytes(rows[0][11]), bytes(rows[0][12]))

    def functions(self) -> list[tuple[bytes, int, int]]:
        """(function, dead jobs, dropped by the bounds) of every function of this shard that has
        either. Raises StateDbError."""
        if not self._exists():
            return []
        counts = dict(
            self._read("SELECT func, count(*) FROM dead WHERE sg_owns(func) GROUP BY func")
        )
        drops = dict(self._read("SELECT func, dropped FROM dead_drops WHERE sg_owns(func)"))
        names = sorted(set(counts) | set(drops))
        return [(bytes(f), int(counts.get(f, 0)), int(drops.get(f, 0))) for f in names]

    # ------------------------------------------------------------------ commands

    def _selection(self, rid: int | None, func: bytes | None) -> tuple[str, tuple[Any, ...]]:
        """The WHERE clause of job `rid`, of `func`'s jobs, or of all of this shard's ("" if
        `func` is not this shard's)."""
        if rid is not None:
            return "id = ? AND sg_owns(func)", (rid,)
        if func is not None:
            return ("func = ?", (func,)) if self._owns(func) else ("", ())
        return "sg_owns(func)", ()

    def take(self, *, rid: int | None = None, func: bytes | None = None) -> list[DeadJob]:
        """The dead jobs to replay, with payloads, oldest first: job `rid`, every job of `func`,
        or (neither) every job of this shard. They are hidden at once and deleted at the next
        `commit` unless `keep` brings them back. Raises StateDbError."""
        if not self._exists():
            return []
        where, args = self._selection(rid, func)
        if not where:
            return []
        rows = self._read(
            f"SELECT {_COLUMNS}, data, reducer FROM dead WHERE {where} ORDER BY id", args
        )
        jobs = [_dead_job(r, bytes(r[11]), bytes(r[12])) for r in rows if r[0] not in self._taken]
        for job in jobs:
            self._taken.add(job.id)
        return jobs

    def replayed(self, rid: int, handle: bytes) -> None:
        """Dead job `rid` is back on the queue as `handle`: delete its row at the next commit."""
        self._replayed[rid] = handle

    def keep(self, rid: int) -> None:
        """A taken job could not be replayed: it stays in the dead set."""
        self._taken.discard(rid)
        self._replayed.pop(rid, None)

    def keep_replays_of(self, handles: set[bytes]) -> None:
        """The job log refused these jobs (its commit failed): the dead jobs they replayed
        stay in the dead set."""
        for rid, handle in list(self._replayed.items()):
            if handle in handles:
                self.keep(rid)

    def delete(self, *, rid: int | None = None, func: bytes | None = None) -> int:
        """Delete dead job `rid`, every job of `func`, or (neither) every job of this shard;
        return how many. Raises StateDbError."""
        if not self._exists():
            return 0
        where, args = self._selection(rid, func)
        if not where:
            return 0
        conn = self._store.get()
        if conn is None:
            raise StateDbError(self._store.error)
        try:
            with transaction(conn):
                cur = conn.execute(f"DELETE FROM dead WHERE {where}", args)
        except sqlite3.Error as exc:
            self._store.failed(f"cannot write {self.path}: {exc}")
            raise StateDbError(self._store.error) from exc
        return max(0, cur.rowcount)


# ---------------------------------------------------------------------------- admin requests


def replay(dead: DeadSet, sched: Scheduler, jobs: list[DeadJob], now: float) -> tuple[int, int]:
    """Put taken dead jobs back on their queues as new background jobs (fresh attempts; the same
    unique coalesces); return (replayed, refused). A refused one (maxqueue, a failed store)
    stays dead."""
    done = refused = 0
    for job in jobs:
        handle = sched.submit_background(job.func, job.unique, job.data, job.priority, now)
        if handle is None:
            dead.keep(job.id)
            refused += 1
        else:
            dead.replayed(job.id, handle)
            done += 1
    return done, refused


def answer(dead: DeadSet, sched: Scheduler, request: dict[str, Any], now: float) -> Any:
    """Apply one ``dead_*`` admin request from a front (`shardgear.admin_commands`); return its
    JSON-able part of the answer, or ``{"error": text}`` if the database failed. Requests:

    * ``dead_list`` {func: str | None, limit}: `DeadJob.to_json` rows, newest first, no data;
    * ``dead_get`` {id}: one row with its data, or None if this shard does not have it;
    * ``dead_functions``: [function, dead, dropped] rows;
    * ``dead_replay`` / ``dead_delete`` {id?, func?}: [done, refused] / done; neither key means
      every dead job of this shard.
    """
    cmd = request.get("cmd")
    func = json_bytes(request["func"]) if request.get("func") is not None else None
    rid = int(request["id"]) if request.get("id") is not None else None
    try:
        if cmd == "dead_list":
            limit = max(0, int(request.get("limit", 100)))
            return [j.to_json() for j in dead.newest(func, limit)]
        if cmd == "dead_get":
            job = dead.get(int(request["id"]))
            return None if job is None else job.to_json()
        if cmd == "dead_functions":
            return [(json_text(f), n, d) for f, n, d in dead.functions()]
        if cmd == "dead_replay":
            return replay(dead, sched, dead.take(rid=rid, func=func), now)
        if cmd == "dead_delete":
            return dead.delete(rid=rid, func=func)
    except StateDbError as exc:
        return {"error": str(exc)}
    return None
