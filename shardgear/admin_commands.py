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
  ``verbose`` and ``shutdown [graceful]`` are answered here.

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

if TYPE_CHECKING:
    from shardgear.front import Front

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
