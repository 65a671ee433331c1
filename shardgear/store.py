"""The persistent store of background jobs: one SQLite file in WAL mode shared by all shards.

Every shard process opens its own connection to `<state_dir>/jobs.sqlite3`. Rows are keyed by an
integer id of our own (never by unique, unlike gearmand, whose (unique, function) key lets two jobs
with empty or equal uniques overwrite one another), so the id order is the submission order and FIFO
survives a restart.

Writes are grouped per event-loop iteration: `add` and `remove` only queue work in memory and
`commit` writes the whole batch in one short `BEGIN IMMEDIATE ... COMMIT` transaction. Holding the
database's single write lock only for that flush (not across the whole iteration) keeps the shards
from stalling one another. A shard that finds the lock taken retries with short sleeps (20 µs
doubling to 1 ms, for up to `BUSY_TIMEOUT_MS`) instead of SQLite's busy handler, whose first sleep
is 1 ms: the event loop stalls far less when shards contend.

A store that cannot be opened or written never raises into the event loop: `add` returns False
while the store is down (the scheduler answers ERROR QUEUE_ERROR), `commit` returns the handles of
the jobs of a batch that did not become durable, and the store tries to reopen itself at most once
every `retry_interval` seconds, so a fixed disk or permission recovers without a restart.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shardgear.jobs import Job

__all__ = ["DB_NAME", "SCHEMA_VERSION", "SqliteStore", "StoreError", "StoredJob", "db_path"]

DB_NAME: Final = "jobs.sqlite3"
SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_MS: Final = 5000
RETRY_INTERVAL: Final = 5.0
_SYNC_MODES: Final = {"normal": "NORMAL", "full": "FULL"}
_SQLITE_BUSY: Final = 5

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id INTEGER PRIMARY KEY,
        func BLOB NOT NULL,
        uniq BLOB NOT NULL,
        priority INTEGER NOT NULL,
        data BLOB NOT NULL,
        when_to_run INTEGER NOT NULL,
        reducer BLOB NOT NULL,
        created REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_INSERT: Final = (
    "INSERT INTO jobs (id, func, uniq, priority, data, when_to_run, reducer, created)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DELETE: Final = "DELETE FROM jobs WHERE id = ?"

# One queued insert: (func, unique, priority, data, when, reducer, created)
_Row = tuple[bytes, bytes, int, bytes, int, bytes, float]


class _Busy(Exception):
    """Opening met a lock held by another shard's connection: try again."""


class StoreError(Exception):
    """The store cannot do what was asked (raised by `load` and `count` only)."""


@dataclass(frozen=True, slots=True)
class StoredJob:
    """One row of the store, as returned by `SqliteStore.load`."""

    id: int
    func: bytes
    unique: bytes
    priority: int
    data: bytes
    when: int
    reducer: bytes


def db_path(state_dir: str) -> str:
    """The database file of a state directory."""
    return os.path.join(state_dir, DB_NAME)


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF == _SQLITE_BUSY


def _describe(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    text = str(exc) or type(exc).__name__
    return f"{text} ({name})" if name else text


class SqliteStore:
    """A `shardgear.jobs.JobStore` over one SQLite file in WAL mode.

    Use from one thread. Call `commit` once per event-loop iteration, before sending the
    iteration's JOB_CREATED packets: it returns the handles of the jobs that could not be saved.
    """

    failed: bool
    """True while the database is not open (the last open failed); `add` then returns False."""
    error: str
    """Text of the last failure ("" if the store has not failed yet)."""

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "normal",
        log: Callable[[str], None] | None = None,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        """Open (or create) the store at `path`. Never raises for I/O reasons: on failure the
        store starts in the failed state. `synchronous` is "normal" (durable across process
        crashes) or "full" (also across power loss); anything else raises ValueError."""
        sync = _SYNC_MODES.get(synchronous.strip().lower())
        if sync is None:
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self.path = path
        self.synchronous = sync
        self.retry_interval = retry_interval
        self.failed = True
        self.error = ""
        self._log = log
        self._conn: sqlite3.Connection | None = None
        self._retry_at = 0.0
        self._ids: dict[bytes, int] = {}  # handle -> row id, committed rows of live jobs
        self._pending: dict[bytes, _Row] = {}  # handle -> row to insert at the next commit
        self._deletes: list[int] = []  # row ids to delete at the next commit
        self._broken = False  # the last write failed (logged); cleared and logged on success
        self._closed = False
        self._busy_timeout = BUSY_TIMEOUT_MS / 1000  # seconds; for BEGIN IMMEDIATE in `commit`
        self._open()

    # ------------------------------------------------------------------ opening

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def _open(self) -> bool:
        """Try to open the database; on failure enter (or stay in) the failed state.

        Shards open the same new file at the same moment, and switching it to WAL can report
        "database is locked" without waiting: that is retried for a few seconds.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self._open_once()
            except _Busy:
                if time.monotonic() >= deadline:
                    return self._open_once(final=True)
                time.sleep(0.02)

    def _open_once(self, final: bool = False) -> bool:
        conn: sqlite3.Connection | None = None
        try:
            parent = os.path.dirname(self.path)
            if parent:
                os.makedirs(parent, mode=0o750, exist_ok=True)
            if not os.path.exists(self.path):
                # Create the file ourselves so that it is not world-readable (the -wal and -shm
                # files SQLite creates take the database file's permissions).
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640))
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if row is None or row[0] != str(SCHEMA_VERSION):
                    raise sqlite3.DatabaseError(
                        f"schema version {row[0] if row else None!r}, this server knows "
                        f"{SCHEMA_VERSION}"
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # From now on `_begin` waits for the write lock itself; reads set it back for a while.
            conn.execute("PRAGMA busy_timeout = 0")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            if not final and isinstance(exc, sqlite3.Error) and _is_busy(exc):
                raise _Busy from exc
            self._retry_at = time.monotonic() + self.retry_interval
            text = f"cannot open job store {self.path}: {_describe(exc)}"
            if not self.failed or text != self.error:
                self._say(f"{text}; background jobs are refused with QUEUE_ERROR")
            self.failed = True
            self.error = text
            return False
        was_failed = self.error != ""
        self._conn = conn
        self.failed = False
        if was_failed:
            self._say(f"job store {self.path} reopened")
        return True

    def _usable(self) -> sqlite3.Connection | None:
        """The open connection, reopening a failed store if its retry time has come."""
        if self._conn is None and not self._closed and time.monotonic() >= self._retry_at:
            self._open()
        return self._conn

    def _lose(self, exc: BaseException) -> None:
        """The connection is unusable: close it and enter the failed state."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        self.failed = True
        self.error = f"job store {self.path} failed: {_describe(exc)}"
        self._retry_at = time.monotonic() + self.retry_interval
        self._say(f"{self.error}; closed, will reopen")

    # ------------------------------------------------------------------ JobStore

    def add(self, job: Job) -> bool:
        """Queue `job` for the next `commit`. False if the store is down (the submission is then
        refused with QUEUE_ERROR); a write error surfaces from `commit` instead."""
        if self._usable() is None:
            return False
        h = job.handle
        old = self._ids.pop(h, None)
        if old is not None:  # not expected: the job was stored already; keep one row
            self._deletes.append(old)
        self._pending[h] = (
            job.func,
            job.unique,
            job.priority,
            job.data,
            job.when,
            job.reducer,
            time.time(),
        )
        return True

    def remove(self, job: Job) -> None:
        """Queue the deletion of `job`'s row for the next `commit` (no-op if it has none). A job
        added in the same batch is simply never written."""
        h = job.handle
        if self._pending.pop(h, None) is not None:
            return
        rid = self._ids.pop(h, None)
        if rid is not None:
            self._deletes.append(rid)

    # ------------------------------------------------------------------ batches

    def commit(self) -> list[bytes]:
        """Write the batch (queued inserts and deletes) in one transaction.

        Returns [] on success or when there was nothing to do. On failure the transaction is
        rolled back and the handles of the jobs added in this batch (and not removed since) are
        returned: they are not durable and the caller must refuse them (QUEUE_ERROR) and drop
        them. The batch's deletes are kept and retried with the next batch."""
        pending = self._pending
        deletes = self._deletes
        if not pending and not deletes:
            return []
        conn = self._usable()
        if conn is None:
            failed = list(pending)
            pending.clear()
            return failed
        first = 0
        try:
            self._begin(conn)
            if deletes:
                conn.executemany(_DELETE, [(rid,) for rid in deletes])
            if pending:
                (top,) = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()
                first = int(top) + 1
                conn.executemany(
                    _INSERT, [(first + k, *row) for k, row in enumerate(pending.values())]
                )
            conn.execute("COMMIT")
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            failed = list(pending)
            pending.clear()
            self._write_failed(conn, exc, len(failed))
            return failed
        if pending:
            ids = self._ids
            for k, h in enumerate(pending):
                ids[h] = first + k
            pending.clear()
        deletes.clear()
        if self._broken:
            self._broken = False
            self._say(f"job store {self.path} writes again")
        return []

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting for another process's write lock for up to the busy timeout
        with short sleeps."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.00002
        while True:
            time.sleep(delay)
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            delay = min(delay * 2, 0.001)

    def _read(self, sql: str) -> list[tuple[object, ...]]:
        """Run a query with SQLite's own busy timeout (reads in WAL mode rarely wait at all)."""
        conn = self._usable()
        if conn is None:
            raise StoreError(self.error)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            try:
                return list(conn.execute(sql))
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read job store {self.path}: {_describe(exc)}") from exc

    def _write_failed(self, conn: sqlite3.Connection, exc: BaseException, lost: int) -> None:
        text = f"job store {self.path} write failed: {_describe(exc)}"
        if not self._broken or text != self.error:
            self._say(f"{text}; {lost} job(s) refused with QUEUE_ERROR")
        self._broken = True
        self.error = text
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc2:
            self._lose(exc2)

    # ------------------------------------------------------------------ replay

    def load(self, owns: Callable[[bytes], bool]) -> list[StoredJob]:
        """Every row whose function `owns(func)`, in id (submission) order. Raises StoreError if
        the store is down or cannot be read. Map each replayed job with `adopt`."""
        conn = self._usable()
        if conn is None:
            raise StoreError(self.error)

        def _owns(func: bytes) -> int:
            return 1 if owns(func) else 0

        conn.create_function("sg_owns", 1, _owns, deterministic=True)
        got = self._read(
            "SELECT id, func, uniq, priority, data, when_to_run, reducer FROM jobs"
            " WHERE sg_owns(func) ORDER BY id"
        )
        return [StoredJob(*row) for row in got]  # type: ignore[arg-type]

    def adopt(self, handle: bytes, row_id: int) -> None:
        """The shard re-created a job from row `row_id` under `handle`: a later `remove` of that
        job deletes the row. If `handle` already owns a row (replay coalesced this row onto a job
        replayed earlier) the duplicate row is deleted instead, as with `forget`."""
        if handle in self._pending:
            self.forget(row_id)
            return
        cur = self._ids.get(handle)
        if cur is None:
            self._ids[handle] = row_id
        elif cur != row_id:
            self.forget(row_id)

    def forget(self, row_id: int) -> None:
        """Delete row `row_id` at the next `commit` (a replayed duplicate)."""
        self._deletes.append(row_id)

    # ------------------------------------------------------------------ misc

    def count(self) -> int:
        """Committed rows in the database file (every shard's). Raises StoreError if down."""
        ((n,),) = self._read("SELECT count(*) FROM jobs")
        assert isinstance(n, int)
        return n

    def close(self) -> None:
        """Commit what is queued (best effort) and close the connection for good."""
        if self._conn is not None:
            self.commit()
        self._closed = True
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None
        self.failed = True
        self.error = self.error or f"job store {self.path} closed"
