"""Cron jobs: SUBMIT_JOB_SCHED schedules that submit a background job at each matching minute.

Theory of operation
-------------------
SUBMIT_JOB_SCHED (packet 35, ``FUNC\\0UNIQ\\0MIN\\0HOUR\\0MDAY\\0MON\\0WDAY\\0DATA``), which
gearmand answers "Command not expected", makes a durable recurring schedule: at every minute that
the five crontab fields match, the shard that owns FUNC submits a background job with that function,
unique and data, exactly as SUBMIT_JOB_BG would (so a run whose predecessor with the same unique is
still queued coalesces onto it). The reply is JOB_CREATED with a handle naming the schedule.

* **Syntax.** Each field is a crontab field (numbers, ``*``, ranges, lists, steps, month and day
  names), read by the `cronsim` library (Healthchecks.io's evaluator: typed, maintained, and
  strict about impossible dates); an empty field means ``*``. A bad field is refused with
  ``ERROR INVALID_ARGUMENT``.
* **Time zone.** The minutes are wall-clock minutes of the server's local time zone (``TZ``, else
  the system's). Across a DST change a minute that does not exist does not run, and a minute
  that happens twice runs once.
* **Key.** A schedule is identified by its function and unique (an empty unique too): a new
  SUBMIT_JOB_SCHED with the same pair replaces the earlier schedule.
* **Exactly once per match.** Each schedule's last run (the matching minute it ran for) is kept in
  ``<state-dir>/cron.<port>.sqlite3`` (`shardgear.statedb`), written after the job log's
  commit of the turn that submitted the run: a run is never lost, and one interrupted between
  the two commits is submitted again at the next start (its unique makes it coalesce if it is
  still queued). A restart never runs a minute twice.
* **Missed runs.** Minutes that matched while the server was down run **once**, at start, however
  many were missed; the next run is the next matching minute after the start.

`Crontab` holds one shard's schedules; it is pure apart from its database (time is passed in).
The schedule is written synchronously when it is submitted, so its JOB_CREATED never precedes it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from shardgear.messages import json_bytes, json_text
from shardgear.proto.packets import PacketType, error_packet, response
from shardgear.scheduler import MAX_UNIQUE, NORMAL, Scheduler
from shardgear.statedb import StateDb, StateDbError, transaction

__all__ = ["Crontab", "Schedule", "db_path", "last_match", "next_match", "parse_fields"]

FIELD_NAMES: Final = ("minute", "hour", "day of month", "month", "day of week")
MAX_FIELD: Final = 256  # characters in one field: every minute of an hour listed is 170

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS schedules (
        func BLOB NOT NULL,
        uniq BLOB NOT NULL,
        expr TEXT NOT NULL,
        data BLOB NOT NULL,
        handle BLOB NOT NULL,
        created REAL NOT NULL,
        last_run REAL NOT NULL,
        PRIMARY KEY (func, uniq)
    )""",
)
_ERR_UNIQUE: Final = error_packet(b"ARGUMENT_TOO_LARGE", b"Unique value too large")


def db_path(state_dir: str, port: int) -> str:
    """The schedules' file of the server on `port`."""
    return f"{state_dir.rstrip('/')}/cron.{port}.sqlite3"


def parse_fields(fields: list[bytes]) -> str:
    """The five crontab fields of a SUBMIT_JOB_SCHED -> one expression ``"M H DOM MON DOW"``;
    an empty field is ``*``. Raises ValueError naming the bad field."""
    if len(fields) != 5:
        raise ValueError("five fields needed: minute, hour, day of month, month, day of week")
    parts = []
    for name, raw in zip(FIELD_NAMES, fields, strict=True):
        try:
            text = raw.decode("ascii").strip() or "*"
        except UnicodeDecodeError:
            raise ValueError(f"bad {name} field: not ASCII") from None
        if any(c.isspace() for c in text):
            raise ValueError(f"bad {name} field {text!r}: no spaces allowed")
        if len(text) > MAX_FIELD:
            raise ValueError(f"bad {name} field: longer than {MAX_FIELD} characters")
        parts.append(text)
    expr = " ".join(parts)
    from cronsim import CronSim, CronSimError  # imported once a schedule is used (2 ms)

    try:
        CronSim(expr, datetime(2000, 1, 1))
    except (CronSimError, ValueError, OverflowError) as exc:
        # cronsim lets int() errors through (a field of 5000 digits): name the field, not them
        reason = str(exc) if isinstance(exc, CronSimError) else "a number out of range"
        raise ValueError(f"bad schedule {expr!r}: {reason}") from None
    return expr


def next_match(expr: str, after: float) -> float:
    """The first matching minute (epoch seconds) strictly after the minute of `after`, in local
    wall-clock time."""
    from cronsim import CronSim

    dt = next(CronSim(expr, datetime.fromtimestamp(after)))
    at = dt.timestamp()
    if at <= after:  # a repeated hour (DST ends): the earlier instance is in the past
        dt = next(CronSim(expr, datetime.fromtimestamp(after + 3600)))
        at = dt.timestamp()
    return at


def last_match(expr: str, at: float) -> float:
    """The last matching minute (epoch seconds) at or before `at`, in local wall-clock time."""
    from cronsim import CronSim

    start = datetime.fromtimestamp(at).replace(second=0, microsecond=0) + timedelta(seconds=1)
    return next(CronSim(expr, start, reverse=True)).timestamp()


@dataclass(slots=True)
class Schedule:
    """One schedule. `last_run` is the matching minute it last ran for (0: never); `next_run`
    the next one it will run for."""

    func: bytes
    unique: bytes
    expr: str
    data: bytes
    handle: bytes
    created: float
    last_run: float
    next_run: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "function": json_text(self.func),
            "unique": json_text(self.unique),
            "expression": self.expr,
            "data": json_text(self.data),
            "handle": json_text(self.handle),
            "created": self.created,
            "last_run": self.last_run,
            "next_run": self.next_run,
        }


class Crontab:
    """The schedules of the functions one shard owns (see the module docstring).

    Args:
        path: the database file (`db_path`); created with the first schedule.
        owns: whether this shard owns a function.
        synchronous: "normal" or "full", as ``--store-sync``.
        log: where errors go.
    """

    def __init__(
        self,
        path: str,
        owns: Callable[[bytes], bool],
        *,
        synchronous: str = "normal",
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.path = path
        self._log = log
        self._store = StateDb(
            path, _SCHEMA, what="schedules", owns=owns, synchronous=synchronous, say=self._say
        )
        self._schedules: dict[tuple[bytes, bytes], Schedule] = {}
        self._next: float | None = None
        self._ran: dict[tuple[bytes, bytes], float] = {}  # last runs to write after the log
        self._run_handles: dict[bytes, tuple[bytes, bytes]] = {}  # this turn's runs' jobs

    # ------------------------------------------------------------------ the database

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    def load(self, now: float) -> int:
        """Read this shard's schedules; those that missed a run while the server was down are
        due at once (and run once). Return how many were loaded."""
        conn = self._store.get(create=False)
        if conn is None:
            return 0
        from cronsim import CronSimError

        try:
            rows = list(
                conn.execute(
                    "SELECT func, uniq, expr, data, handle, created, last_run FROM schedules"
                    " WHERE sg_owns(func)"
                )
            )
        except sqlite3.Error as exc:
            self._store.failed(f"cannot read {self.path}: {exc}")
            return 0
        for func, uniq, expr, data, handle, created, last_run in rows:
            s = Schedule(
                bytes(func), bytes(uniq), str(expr), bytes(data), bytes(handle), created, last_run
            )
            try:
                s.next_run = next_match(s.expr, last_run or created)
            except (CronSimError, ValueError, OverflowError) as exc:
                self._say(f"schedule {s.func!r}/{s.unique!r} ({s.expr}) skipped: {exc}")
                continue
            self._schedules[(s.func, s.unique)] = s
        self._recompute()
        return len(self._schedules)

    def close(self) -> None:
        self.commit()
        self._store.close()

    # ------------------------------------------------------------------ SUBMIT_JOB_SCHED

    def submit(
        self,
        body: bytes,
        now: float,
        new_handle: Callable[[], bytes],
        max_name: int = 0,
        max_count: int = 0,
    ) -> bytes:
        """Apply a SUBMIT_JOB_SCHED body; return the reply packet: JOB_CREATED with the
        schedule's handle, or ERROR (a bad field, a unique over 64 bytes, a function name over
        `max_name` bytes, a new schedule beyond `max_count` on this shard (0: no limit for
        either), a database that cannot keep it). The name is checked here: a schedule the shard
        would refuse to run must not be kept, to fail every minute."""
        parts = body.split(b"\0", 7)
        if len(parts) < 8:
            return error_packet(
                b"INVALID_ARGUMENT",
                b"SUBMIT_JOB_SCHED needs FUNC, UNIQUE, MIN, HOUR, MDAY, MON, WDAY and DATA",
            )
        func, unique, data = parts[0], parts[1], parts[7]
        if len(unique) > MAX_UNIQUE:
            return _ERR_UNIQUE
        if max_name and len(func) > max_name:
            return error_packet(
                b"ARGUMENT_TOO_LARGE",
                b"Function name longer than max-function-name (%d bytes)" % max_name,
            )
        new = (func, unique) not in self._schedules  # a replacement is never refused
        if max_count and new and len(self._schedules) >= max_count:
            return error_packet(
                b"QUEUE_ERROR", b"Too many schedules (max-schedules: %d on this shard)" % max_count
            )
        try:
            expr = parse_fields(parts[2:7])
        except ValueError as exc:
            return error_packet(b"INVALID_ARGUMENT", str(exc).encode())
        handle = new_handle()
        s = Schedule(func, unique, expr, data, handle, now, 0.0, next_match(expr, now))
        conn = self._store.get()
        try:
            if conn is None:
                raise sqlite3.OperationalError(self._store.error)
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO schedules (func, uniq, expr, data, handle, created,"
                    " last_run) VALUES (?, ?, ?, ?, ?, ?, 0)",
                    (func, unique, expr, data, handle, now),
                )
        except sqlite3.Error as exc:
            if conn is not None:
                self._store.failed(f"cannot write {self.path}: {exc}")
            return error_packet(b"QUEUE_ERROR", b"Persistent store failed: could not save it")
        self._ran.pop((func, unique), None)
        self._schedules[(func, unique)] = s
        self._recompute()
        return response(PacketType.JOB_CREATED, handle)

    # ------------------------------------------------------------------ running

    def next_deadline(self) -> float | None:
        """When the next schedule is due (epoch seconds), or None."""
        return self._next

    def _recompute(self) -> None:
        self._next = min((s.next_run for s in self._schedules.values()), default=None)

    def run_due(self, sched: Scheduler, now: float) -> int:
        """Submit the run of every schedule due at `now` (one per schedule, however many of its
        minutes passed); return how many were submitted."""
        if self._next is None or self._next > now:
            return 0
        runs = 0
        for key, s in self._schedules.items():
            if s.next_run > now:
                continue
            s.last_run = last_match(s.expr, now)
            s.next_run = next_match(s.expr, max(s.last_run, now))
            handle = sched.submit_background(s.func, s.unique, s.data, NORMAL, now)
            if handle is None:
                self._say(f"schedule {s.func!r}/{s.unique!r}: run at {now:.0f} refused")
            else:
                self._run_handles[handle] = key
            runs += 1
            self._ran[key] = s.last_run
        self._recompute()
        return runs

    def refused(self, handles: set[bytes]) -> None:
        """The job log could not keep these jobs (the shard cancels them): a run among them is
        not recorded, so that the next start runs its minute again."""
        for handle in handles:
            key = self._run_handles.get(handle)
            if key is not None:
                self._ran.pop(key, None)
                self._say(f"schedule {key[0]!r}/{key[1]!r}: its run was refused by the job log")

    def commit(self) -> None:
        """Record the runs of this turn. Call after the job log's commit."""
        self._run_handles.clear()
        if not self._ran:
            return
        conn = self._store.get()
        if conn is None:
            return
        try:
            with transaction(conn):
                conn.executemany(
                    "UPDATE schedules SET last_run = ? WHERE func = ? AND uniq = ?",
                    [(at, f, u) for (f, u), at in self._ran.items()],
                )
        except sqlite3.Error as exc:
            self._store.failed(f"cannot write {self.path}: {exc}")
            return
        self._ran.clear()

    # ------------------------------------------------------------------ admin

    def schedules(self) -> list[Schedule]:
        """This shard's schedules, by function and unique."""
        return [self._schedules[k] for k in sorted(self._schedules)]

    def remove(self, func: bytes, unique: bytes) -> bool:
        """Remove the schedule of `func` and `unique`; False if there is none. Raises
        StateDbError if the database cannot forget it (then it stays)."""
        if (func, unique) not in self._schedules:
            return False
        conn = self._store.get()
        try:
            if conn is None:
                raise sqlite3.OperationalError(self._store.error)
            with transaction(conn):
                conn.execute("DELETE FROM schedules WHERE func = ? AND uniq = ?", (func, unique))
        except sqlite3.Error as exc:
            if conn is not None:
                self._store.failed(f"cannot write {self.path}: {exc}")
            raise StateDbError(f"cannot remove the schedule: {exc}") from exc
        del self._schedules[(func, unique)]
        self._ran.pop((func, unique), None)
        self._recompute()
        return True

    def answer(self, request: dict[str, Any]) -> Any:
        """Apply one ``cron_*`` admin request: ``cron_list`` -> `Schedule.to_json` rows;
        ``cron_remove`` {func, unique} -> True/False, or ``{"error": text}``."""
        cmd = request.get("cmd")
        if cmd == "cron_list":
            return [s.to_json() for s in self.schedules()]
        if cmd == "cron_remove":
            try:
                return self.remove(json_bytes(request["func"]), json_bytes(request["unique"]))
            except StateDbError as exc:
                return {"error": str(exc)}
        return None
