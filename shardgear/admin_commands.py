"""A front's side of gearmand's text admin protocol: run a command, asking shards or fronts.

`shardgear.proto.admin` parses a line and formats replies (pure); this module decides who answers:

* per-shard data (``status``, ``prioritystatus``, ``show jobs``, ``show unique jobs``) is
  gathered from every shard (`shardgear.gather`) and merged, sorted as gearmand sorts it;
* per-function commands (``maxqueue``, ``create function``) go to the function's shard, ``cancel
  job`` to the handle's shard, ``drop function`` to every shard (names match case-insensitively);
  they are answered once the shard has applied them, so that the admin's next command sees it;
* ``workers`` needs every connection of every front: shard 0 relays the request to each front
  (`worker_lines`) and their answers back;
* ``version``, ``getpid`` (the supervisor's pid, the server's pid as users know it),
  ``verbose`` and ``shutdown [graceful]`` are answered here;
* shardgear's own (issue 9): ``show retries``, ``show dead jobs|functions`` and ``show schedules``
  are gathered from every shard; a dead job's id names no shard, so ``show dead job``, ``replay
  dead job`` and ``delete dead job`` ask every shard and the one that has it answers; the
  ``function`` forms and ``remove schedule`` go to the function's shard.

Shards answer with `shardgear.shard_admin.answer`.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Final

import orjson

from shardgear import __version__, messages, routing
from shardgear.connection import Conn
from shardgear.gather import Finish
from shardgear.messages import json_bytes, json_text
from shardgear.proto import admin
from shardgear.proto.packets import PacketType, response

if TYPE_CHECKING:
    from shardgear.front import Front

_C = admin.AdminCommand
STATUS_RES_UNIQUE: Final = int(PacketType.STATUS_RES_UNIQUE)
_JOBSET_COMMANDS: Final = frozenset(
    {
        _C.SHOW_FUNCTIONS,
        _C.SHOW_RETRIES,
        _C.SHOW_DEAD_JOBS,
        _C.SHOW_DEAD_JOB,
        _C.SHOW_DEAD_FUNCTIONS,
        _C.REPLAY_DEAD,
        _C.DELETE_DEAD,
        _C.SHOW_SCHEDULES,
        _C.REMOVE_SCHEDULE,
    }
)

LEVEL_NAMES: Final = {
    "debug": b"DEBUG",
    "info": b"INFO",
    "notice": b"NOTICE",
    "warning": b"WARNING",
    "error": b"ERROR",
    "critical": b"CRITICAL",
}


#: The name an access rule knows each command by (``access.READ_ONLY`` / ``STATE_CHANGING``).
COMMAND_NAMES: Final = {
    admin.AdminCommand.STATUS: "status",
    admin.AdminCommand.PRIORITY_STATUS: "prioritystatus",
    admin.AdminCommand.WORKERS: "workers",
    admin.AdminCommand.VERSION: "version",
    admin.AdminCommand.GETPID: "getpid",
    admin.AdminCommand.VERBOSE: "verbose",
    admin.AdminCommand.MAXQUEUE: "maxqueue",
    admin.AdminCommand.SHOW_JOBS: "show jobs",
    admin.AdminCommand.SHOW_UNIQUE_JOBS: "show unique jobs",
    admin.AdminCommand.CANCEL_JOB: "cancel job",
    admin.AdminCommand.CREATE_FUNCTION: "create function",
    admin.AdminCommand.DROP_FUNCTION: "drop function",
    admin.AdminCommand.SHUTDOWN: "shutdown",
    admin.AdminCommand.SHOW_FUNCTIONS: "show functions",
    admin.AdminCommand.SHOW_RETRIES: "show retries",
    admin.AdminCommand.SHOW_DEAD_JOBS: "show dead jobs",
    admin.AdminCommand.SHOW_DEAD_JOB: "show dead job",
    admin.AdminCommand.SHOW_DEAD_FUNCTIONS: "show dead functions",
    admin.AdminCommand.REPLAY_DEAD: "replay dead",
    admin.AdminCommand.DELETE_DEAD: "delete dead",
    admin.AdminCommand.SHOW_SCHEDULES: "show schedules",
    admin.AdminCommand.REMOVE_SCHEDULE: "remove schedule",
    admin.AdminCommand.UNKNOWN: "unknown",
}


class AdminCommands:
    """The admin commands of one front."""

    def __init__(self, front: Front) -> None:
        self.front = front

    def run(self, conn: Conn, tokens: list[bytes]) -> None:
        """Run the admin line `tokens` from `conn`; its reply keeps its place in conn's replies."""
        front = self.front
        cmd = admin.parse_admin(tokens)
        if cmd.error is not None:
            front.reply(conn, cmd.error)
            return
        C = admin.AdminCommand
        c, args = cmd.command, cmd.args
        denial = front.security.admin_denial(conn, COMMAND_NAMES[c])
        if denial is not None:
            front.reply(conn, denial)
            return
        shards = front.shards
        if c is C.STATUS:
            self.ask_shards(conn, {"cmd": "status"}, _finish_status)
        elif c is C.PRIORITY_STATUS:
            self.ask_shards(conn, {"cmd": "priority_status"}, _finish_priority_status)
        elif c is C.SHOW_JOBS:
            self.ask_shards(conn, {"cmd": "show_jobs"}, _finish_show_jobs)
        elif c is C.SHOW_UNIQUE_JOBS:
            self.ask_shards(conn, {"cmd": "show_unique_jobs"}, _finish_show_unique_jobs)
        elif c is C.WORKERS:
            gid = front.gathers.start(conn, front.config.fronts, _finish_workers, front.clock())
            front.send_shard(0, messages.pack(messages.OP_RELAY, conn.id, b"workers", extra=gid))
        elif c is C.VERSION:
            front.reply(conn, admin.format_ok(__version__.encode()))
        elif c is C.GETPID:
            front.reply(conn, admin.format_ok(b"%d" % front.instance.supervisor_pid))
        elif c is C.VERBOSE:
            front.reply(conn, admin.format_ok(LEVEL_NAMES.get(front.config.log_level, b"ERROR")))
        elif c is C.MAXQUEUE:
            func, limits = admin.maxqueue_limits(args)
            request = {"cmd": "maxqueue", "func": json_text(func), "limits": limits}
            self.ask_shards(conn, request, _ok, [routing.shard_for(func, shards)])
        elif c is C.CANCEL_JOB:
            handle = args[0]
            shard = routing.shard_for_handle(handle, shards)
            if shard is None:
                front.reply(conn, admin.ERR_UNKNOWN_JOB)
                return
            request = {"cmd": "cancel_job", "handle": json_text(handle)}
            self.ask_shards(conn, request, _finish_cancel, [shard])
        elif c is C.CREATE_FUNCTION:
            func = args[0]
            request = {"cmd": "create_function", "func": json_text(func)}
            self.ask_shards(conn, request, _ok, [routing.shard_for(func, shards)])
        elif c is C.DROP_FUNCTION:
            self.ask_shards(
                conn, {"cmd": "drop_function", "func": json_text(args[0])}, _finish_drop
            )
        elif c in _JOBSET_COMMANDS:
            self.run_jobsets(conn, c, args)
        elif c is C.SHUTDOWN:
            graceful = bool(args) and args[0].lower() == b"graceful"
            # the supervisor: SIGUSR1 waits for running jobs, SIGQUIT stops at once; never
            # whoever adopted us if it died (then we are about to stop anyway)
            supervisor = front.instance.supervisor_pid
            if os.getppid() != supervisor:
                front.reply(conn, admin.ERR_UNKNOWN_ERROR)
                return
            front.reply(conn, admin.OK_REPLY)
            os.kill(supervisor, signal.SIGUSR1 if graceful else signal.SIGQUIT)
        else:  # pragma: no cover - parse_admin answers unknown commands itself
            front.reply(conn, admin.unknown_command(tokens[0] if tokens else b""))

    def run_jobsets(self, conn: Conn, c: admin.AdminCommand, args: list[bytes]) -> None:
        """The commands of retries, the dead set and schedules (see the module docstring)."""
        C = admin.AdminCommand
        shards = self.front.shards
        request: dict[str, Any]
        targets: list[int] | None = None  # every shard
        finish: Finish
        if c is C.SHOW_FUNCTIONS:
            request, finish = {"cmd": "show_functions"}, _finish_show_functions
        elif c is C.SHOW_RETRIES:
            request, finish = {"cmd": "show_retries"}, _finish_show_retries
        elif c is C.SHOW_DEAD_JOBS:
            limit = int(args[1]) if args[1] else 100
            request = {"cmd": "dead_list", "limit": limit, "func": None}
            if args[0]:
                request["func"] = json_text(args[0])
                targets = [routing.shard_for(args[0], shards)]

            def finish(parts: list[Any]) -> bytes:
                return _finish_dead_jobs(parts, limit)

        elif c is C.SHOW_DEAD_JOB:
            request, finish = {"cmd": "dead_get", "id": int(args[0])}, _finish_dead_job
        elif c is C.SHOW_DEAD_FUNCTIONS:
            request, finish = {"cmd": "dead_functions"}, _finish_dead_functions
        elif c is C.REPLAY_DEAD or c is C.DELETE_DEAD:
            replay = c is C.REPLAY_DEAD
            request = {"cmd": "dead_replay" if replay else "dead_delete"}
            finish = _finish_replay if replay else _finish_delete
            if args[0] == b"job":
                request["id"] = int(args[1])
                finish = _finish_replay_one if replay else _finish_delete_one
            elif args[0] == b"function":
                request["func"] = json_text(args[1])
                targets = [routing.shard_for(args[1], shards)]
        elif c is C.SHOW_SCHEDULES:
            request, finish = {"cmd": "cron_list"}, _finish_schedules
        else:  # REMOVE_SCHEDULE
            func, unique = args
            request = {"cmd": "cron_remove", "func": json_text(func), "unique": json_text(unique)}
            finish, targets = _finish_remove_schedule, [routing.shard_for(func, shards)]
        self.ask_shards(conn, request, finish, targets)

    def ask_shards(
        self,
        conn: Conn,
        request: dict[str, Any],
        finish: Finish,
        shards: list[int] | None = None,
    ) -> None:
        """Send `request` (orjson) to `shards` (default: every shard) and reply to `conn` with
        ``finish(parts)`` once each has answered (`shardgear.shard_admin.answer`)."""
        front = self.front
        targets = list(range(front.shards)) if shards is None else shards
        gid = front.gathers.start(conn, len(targets), finish, front.clock())
        body = orjson.dumps(request)
        for s in targets:
            front.send_shard(s, messages.pack(messages.OP_ADMIN, conn.id, body, extra=gid))

    def status_unique(self, conn: Conn, unique: bytes) -> None:
        """GET_STATUS_UNIQUE: the first shard that knows `unique` answers (each knows only its
        own functions' jobs: `shardgear.shard_admin.status_unique`)."""

        def finish(parts: list[Any]) -> bytes:
            for part in parts:
                if part:
                    return response(STATUS_RES_UNIQUE, unique, *(str(x).encode() for x in part))
            return response(STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")

        self.ask_shards(conn, {"cmd": "status_unique", "unique": json_text(unique)}, finish)

    def answer_relay(self, shard: int, conn_id: int, gid: int, body: bytes) -> None:
        """Shard 0 relays a request that needs every front (only ``workers`` so far)."""
        self.front.send_shard(
            shard, messages.pack(messages.OP_RELAY_REPLY, conn_id, self.worker_lines(), extra=gid)
        )

    def worker_lines(self) -> bytes:
        """This front's ``workers`` lines (without the closing ``.``)."""
        rows = []
        for conn in self.front.conns.values():
            rows.append((conn.fd, conn.ip.encode(), conn.client_id, list(conn.rr)))
        return admin.format_workers(rows)[:-2]  # without the closing ".\n"


def _finish_status(parts: list[Any]) -> bytes:
    return admin.format_status(sorted(tuple((json_bytes(r[0]), *r[1:])) for p in parts for r in p))


def _finish_priority_status(parts: list[Any]) -> bytes:
    return admin.format_priority_status(
        sorted(tuple((json_bytes(r[0]), *r[1:])) for p in parts for r in p)
    )


def _finish_show_jobs(parts: list[Any]) -> bytes:
    return admin.format_show_jobs(tuple((json_bytes(r[0]), *r[1:])) for p in parts for r in p)


def _finish_show_unique_jobs(parts: list[Any]) -> bytes:
    return admin.format_show_unique_jobs(json_bytes(u) for p in parts for u in p)


def _finish_workers(parts: list[Any]) -> bytes:
    return b"".join(parts) + b".\n"


def _finish_cancel(parts: list[Any]) -> bytes:
    return admin.OK_REPLY if parts and parts[0] else admin.ERR_UNKNOWN_JOB


def _ok(parts: list[Any]) -> bytes:
    return admin.OK_REPLY


def _finish_drop(parts: list[Any]) -> bytes:
    if "ok" in parts:
        return admin.OK_REPLY
    if "busy" in parts:
        return admin.ERR_FUNCTION_BUSY
    return admin.ERR_FUNCTION_NOT_FOUND


# ------------------------------------------------------------------ retries, dead set, schedules


def _failure(parts: list[Any]) -> bytes | None:
    """The ERR reply of the first shard whose database failed, or None."""
    for p in parts:
        if isinstance(p, dict) and "error" in p:
            return admin.error_reply(b"QUEUE_ERROR", str(p["error"]))
    return None


def _finish_show_functions(parts: list[Any]) -> bytes:
    return admin.format_show_functions(
        sorted(tuple((json_bytes(r[0]), *r[1:])) for p in parts for r in p)
    )


def _finish_show_retries(parts: list[Any]) -> bytes:
    rows = sorted(
        (json_bytes(f), json_bytes(h), json_bytes(u), n, st, nxt, last, why, json_bytes(err))
        for p in parts
        for h, f, u, n, st, nxt, last, why, err in p
    )
    return admin.format_show_retries(
        (h, f, u, n, st, nxt, last, why, err) for f, h, u, n, st, nxt, last, why, err in rows
    )


def _dead_row(d: dict[str, Any]) -> admin.DeadRow:
    return (
        int(d["id"]),
        json_bytes(d["function"]),
        json_bytes(d["unique"]),
        int(d["attempts"]),
        float(d["first_failed"]),
        float(d["last_failed"]),
        str(d["reason"]),
        int(d["size"]),
        json_bytes(d["error"]),
    )


def _finish_dead_jobs(parts: list[Any], limit: int) -> bytes:
    error = _failure(parts)
    if error is not None:
        return error
    rows = sorted((_dead_row(d) for p in parts for d in p), reverse=True)
    return admin.format_dead_jobs(rows[:limit])


def _finish_dead_job(parts: list[Any]) -> bytes:
    for d in parts:
        if isinstance(d, dict) and "id" in d:
            fields = [
                (b"id", b"%d" % d["id"]),
                (b"function", json_bytes(d["function"])),
                (b"unique", json_bytes(d["unique"])),
                (b"priority", (b"high", b"normal", b"low")[int(d["priority"]) % 3]),
                (b"attempts", b"%d" % d["attempts"]),
                (b"first_failed", b"%d" % d["first_failed"]),
                (b"last_failed", b"%d" % d["last_failed"]),
                (b"reason", str(d["reason"]).encode()),
                (b"error", json_bytes(d["error"])),
                (b"handle", json_bytes(d["handle"])),
                (b"size", b"%d" % d["size"]),
                (b"data", json_bytes(d["data"])),
            ]
            return admin.format_dead_job(fields)
    return _failure(parts) or admin.ERR_UNKNOWN_JOB


def _finish_dead_functions(parts: list[Any]) -> bytes:
    error = _failure(parts)
    if error is not None:
        return error
    rows = sorted((json_bytes(f), n, d) for p in parts for f, n, d in p)
    return admin.format_dead_functions(rows)


def _finish_replay(parts: list[Any]) -> bytes:
    error = _failure(parts)
    if error is not None:
        return error
    done = sum(p[0] for p in parts if p)
    refused = sum(p[1] for p in parts if p)
    return admin.format_counts(done, refused)


def _finish_replay_one(parts: list[Any]) -> bytes:
    if not any(p and (p[0] or p[1]) for p in parts if isinstance(p, list)):
        return _failure(parts) or admin.ERR_UNKNOWN_JOB
    return _finish_replay(parts)


def _finish_delete(parts: list[Any]) -> bytes:
    error = _failure(parts)
    if error is not None:
        return error
    return admin.format_counts(sum(p for p in parts if isinstance(p, int)))


def _finish_delete_one(parts: list[Any]) -> bytes:
    if not any(isinstance(p, int) and p for p in parts):
        return _failure(parts) or admin.ERR_UNKNOWN_JOB
    return _finish_delete(parts)


def _finish_schedules(parts: list[Any]) -> bytes:
    rows = sorted(
        (
            json_bytes(d["function"]),
            json_bytes(d["unique"]),
            str(d["expression"]),
            float(d["next_run"]),
            float(d["last_run"]),
            json_bytes(d["handle"]),
        )
        for p in parts
        for d in p
    )
    return admin.format_schedules(rows)


def _finish_remove_schedule(parts: list[Any]) -> bytes:
    if parts and parts[0] is True:
        return admin.OK_REPLY
    return _failure(parts) or admin.ERR_UNKNOWN_SCHEDULE
