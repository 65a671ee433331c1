"""Small SQLite files of per-function state beside the job logs: the dead set and the schedules.

Each is one file per port in the state directory (``dead.<port>.sqlite3``,
``cron.<port>.sqlite3``), shared by the shards in WAL mode: every shard opens its own connection
and reads and writes only the rows of the functions it owns (`routing.shard_for`), so nothing is
ever shared in memory and a change of the shard count needs no migration. Writes are rare (a
job's last failure, an admin command, a schedule's run) and batched per loop turn by the owner.

`open_db` creates the directory and the file (mode 0640), switches to WAL,
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
