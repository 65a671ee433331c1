"""Small SQLite files of per-function state beside the job logs: the dead set and the schedules.

Each is one file per port in the state directory (``dead.<port>.sqlite3``,
``cron.<port>.sqlite3``), shared by the shards in WAL mode: every shard opens its own connection
and reads and writes only the rows of the functions it owns (`routing.shard_for`), so nothing is
ever shared in memory and a change of the shard count needs no migration. Writes are rare (a
job's last failure, an admin command, a schedule's run) and batched per loop turn by the owner.

`StateDb` holds one such file for a shard: opened when first needed, and after a failure left
closed for `RETRY_INTERVAL` seconds, so a full or unwritable disk costs a log line, never the
shard. `open_db` creates the directory and the file (mode 0640), switches to WAL,
sets the busy timeout and the durability (``synchronous``) and creates the schema. It raises
`StateDbError` with the path and the reason; callers log it and retry later, never crash.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Final

BUSY_TIMEOUT_MS: Final = 5000
RETRY_INTERVAL: Final = 5.0  # seconds a failed database stays closed before the next try
_SYNC_MODES: Final = {"normal": "NORMAL", "full": "FULL"}


class StateDbError(Exception):
    """A state database cannot be opened, read or written; the text says which and why."""


def open_db(
    path: str,
    schema: Iterable[str],
    *,
    synchronous: str = "normal",
    owns: Callable[[bytes], bool] | None = None,
) -> sqlite3.Connection:
    """Open (creating if needed) the SQLite file at `path` with `schema` (CREATE ... IF NOT
    EXISTS statements). `owns` becomes the SQL function ``sg_owns(func)`` (1 if this shard owns
    the function). Raises StateDbError."""
    sync = _SYNC_MODES.get(synchronous.strip().lower(), "NORMAL")
    conn: sqlite3.Connection | None = None
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            parent = os.path.dirname(path)
            if parent:
                os.makedirs(parent, mode=0o750, exist_ok=True)
            if not os.path.exists(path):
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640))
            conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode})")
            conn.execute(f"PRAGMA synchronous = {sync}")
            with transaction(conn):
                for stmt in schema:
                    conn.execute(stmt)
            if owns is not None:

                def _owns(func: bytes) -> int:
                    return 1 if owns(func) else 0

                conn.create_function("sg_owns", 1, _owns, deterministic=True)
            return conn
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
                conn = None
            # shards open a new file at the same moment: switching it to WAL may report
            # "database is locked" without waiting
            if "locked" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise StateDbError(f"cannot open {path}: {exc}") from exc


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


class StateDb:
    """One state database as a shard uses it: opened on first use; after a failure (logged once
    per distinct reason through `say`, prefixed with `what`) closed and retried no sooner than
    `RETRY_INTERVAL` seconds later.

    Attributes:
        path: the SQLite file.
        conn: the open connection, or None (not opened yet, or failed).
        error: the last failure's text; "" once an open succeeded.
    """

    def __init__(
        self,
        path: str,
        schema: Iterable[str],
        *,
        what: str,
        owns: Callable[[bytes], bool] | None = None,
        synchronous: str = "normal",
        say: Callable[[str], None] = lambda msg: None,
    ) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.error = ""
        self._schema = tuple(schema)
        self._what = what
        self._owns = owns
        self._synchronous = synchronous
        self._say = say
        self._retry_at = 0.0

    def get(self, create: bool = True) -> sqlite3.Connection | None:
        """The connection, opening the file if it is time to (with `create` False, only a file
        that exists); None while it cannot be had."""
        if self.conn is None and time.monotonic() >= self._retry_at:
            if not create and not os.path.exists(self.path):
                return None
            try:
                self.conn = open_db(
                    self.path, self._schema, synchronous=self._synchronous, owns=self._owns
                )
                if self.error:
                    self._say(f"{self._what} {self.path} open again")
                self.error = ""
            except StateDbError as exc:
                self.failed(str(exc))
        return self.conn

    def failed(self, text: str) -> None:
        """A read or write failed (`text` says what and why): log it, close, retry later."""
        if text != self.error:
            self._say(f"{self._what}: {text}")
        self.error = text
        self._retry_at = time.monotonic() + RETRY_INTERVAL
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
