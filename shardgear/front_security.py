"""A front's security hooks: TLS listeners and handshakes, connection limits, access rules.

`Front` owns the sockets and the data path; this module owns every decision about *who* may
connect and do what, and the front calls in with one-line hooks:

* ``Front.accept`` asks `admit` for each accepted socket (connection limits, `shardgear.limits`)
  and hands a socket of a TLS listener to `start_tls` instead of making a connection of it;
* an epoll event on an fd that is no connection (a TLS listener of its own port, a handshake in
  progress) goes to `event`; finished handshakes become connections through ``Front.add_conn``;
* a connection's `Rights` (``Conn.rights``, None when no function is restricted, so the data path
  checks only that) decide SUBMIT_JOB* (`may_submit`), CAN_DO* (`may_work`) and GET_STATUS*
  (`status_restricted`, `may_read_status`); admin commands ask `admin_denial`;
* a reload of the rules (`apply_access`) recomputes every connection's rights at once, and a
  worker whose CAN_DO is no longer allowed loses that registration there and then.

Denials are answered as gearmand answers errors: an ERROR packet ``PERMISSION_DENIED`` with a text
that names the identity, the action and the function (an admin line: ``ERR PERMISSION_DENIED
...``); each is logged at WARNING (rate-limited: `shardgear.log_limit`) and counted in the
front's stats block (`shardgear_access_denied_total`).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import TYPE_CHECKING, Any, Final

from shardgear import front_workers
from shardgear.access import STATUS, SUBMIT, WORK, AccessPolicy, Identity, Rights
from shardgear.config import Config
from shardgear.limits import ConnectionLimits
from shardgear.log_limit import LogLimiter
from shardgear.messages import REVOKE_ABILITY, json_bytes, json_text
from shardgear.proto.packets import PacketType, error_packet, response
from shardgear.shm import layout
from shardgear.sockets import bind_listener

if TYPE_CHECKING:
    import ssl

    from shardgear import tls
    from shardgear.connection import Conn
    from shardgear.front import Front

log = logging.getLogger("shardgear.access")

DENIED_CODE: Final = b"PERMISSION_DENIED"
_ACTION_TEXT: Final = {
    SUBMIT: "submit jobs of",
    WORK: "work on",
    STATUS: "read the status of jobs of",
}


def admin_error(text: str) -> bytes:
    """An admin-protocol error line in gearmand's form: ``ERR CODE text+with+plus+signs``."""
    return b"ERR " + DENIED_CODE + b" " + text.replace(" ", "+").encode() + b"\r\n"


class FrontSecurity:
    """TLS, limits and access rules of one front (see the module docstring)."""

    def __init__(self, front: Front, config: Config) -> None:
        self.front = front
        self.access = AccessPolicy(config.access)
        self.limits = ConnectionLimits(
            config.max_connections, config.max_connections_per_peer, config.fronts
        )
        self.warn = LogLimiter(log)
        #: the stats block's counter of each kind of denial (the metrics' access_denied_total)
        self.denial_counter = {
            SUBMIT: layout.ST_DENIED_SUBMIT,
            WORK: layout.ST_DENIED_WORK,
            STATUS: layout.ST_DENIED_STATUS,
            "admin": layout.ST_DENIED_ADMIN,
        }
        self.context: ssl.SSLContext | None = None
        #: the TLS context of the main listener (--listen/--port); None: plain text
        self.main_context: ssl.SSLContext | None = None
        #: TLS listeners of their own port (--tls-port), by fd
        self.listeners: dict[int, socket.socket] = {}
        self.handshakes: tls.Handshakes | None = None
        #: the handshakes in progress by fd (the same dict for the front's life; empty without TLS)
        self.handshaking: dict[int, Any] = {}
        if config.tls:
            from shardgear import tls  # ssl is imported only when TLS is configured

            self.context = tls.server_context(
                config.tls_cert, config.tls_key, config.tls_ca, config.tls_client_cert
            )
            self.handshakes = tls.Handshakes(
                front.epoll, self._tls_ready, config.tls_handshake_timeout, self.limits.release
            )
            self.handshaking = self.handshakes.pending
            if config.tls_port:
                sock = bind_listener(config.tls_listen, config.tls_port, config.backlog)
                self.listeners[sock.fileno()] = sock
            else:
                self.main_context = self.context

    # ------------------------------------------------------------------ listeners and handshakes

    def start(self) -> None:
        """Watch the TLS listeners (the front's loop starts)."""
        for fd in self.listeners:
            self.front.epoll.register(fd, select.EPOLLIN)

    def event(self, fd: int) -> None:
        """An epoll event on `fd`, which is no connection of the front's."""
        sock = self.listeners.get(fd)
        if sock is not None:
            self.front.accept(sock, self.context)
        elif self.handshakes is not None:
            self.handshakes.event(fd)

    def admit(self, ip: str) -> bool:
        """May a new connection from `ip` be accepted (connection limits)?"""
        return self.limits.admit(ip)

    def release(self, conn: Conn) -> None:
        """A connection closed."""
        self.limits.release(conn.ip)

    def start_tls(self, ctx: ssl.SSLContext, sock: socket.socket, ip: str) -> None:
        """Start the handshake of an accepted socket of a TLS listener."""
        assert self.handshakes is not None
        self.front.epoll.register(sock.fileno(), select.EPOLLIN)
        self.handshakes.start(ctx, sock, ip, time.monotonic())

    def _tls_ready(self, stream: tls.TLSStream, ip: str) -> None:
        self.front.add_conn(stream, ip, stream.names, registered=True)

    def next_deadline(self) -> float | None:
        """The earliest handshake deadline (monotonic seconds), or None."""
        h = self.handshakes
        return h.next_deadline() if h is not None and len(h) else None

    def expire(self, now: float) -> None:
        """Cut handshakes that took too long."""
        h = self.handshakes
        if h is not None and len(h):
            h.expire(now)

    def stop_accepting(self) -> None:
        """Close the TLS listeners (graceful stop), serving what is queued on them first."""
        for fd, sock in list(self.listeners.items()):
            self.front.accept(sock, self.context)
            try:
                self.front.epoll.unregister(fd)
            except OSError:
                pass
            sock.close()
        self.listeners.clear()

    def shutdown(self) -> None:
        self.stop_accepting()
        if self.handshakes is not None:
            self.handshakes.close_all()

    # ------------------------------------------------------------------ access rules

    def identity(self, conn: Conn) -> Identity:
        rights = conn.rights
        return rights.ident if rights is not None else Identity(conn.ip, conn.names)

    def rights_for(self, ip: str, names: tuple[str, ...]) -> Rights | None:
        """A new connection's `Rights` (None when no function is restricted)."""
        if not self.access.restricts:
            return None
        return self.access.rights(Identity(ip, names))

    def deny(self, conn: Conn, action: str, func: bytes) -> None:
        """Answer a denied request with ERROR PERMISSION_DENIED, log and count it."""
        self.front.reply(conn, self.denial(conn, action, func))

    def denial(self, conn: Conn, action: str, func: bytes) -> bytes:
        """The ERROR PERMISSION_DENIED packet for a denied request; logs and counts it."""
        ident = self.identity(conn)
        name = func.decode("utf-8", "replace")
        self.front.stats.block[self.denial_counter[action]] += 1
        self.warn.warning(
            f"denied {action} {ident}",
            "access denied: %s may not %s function %r",
            ident,
            _ACTION_TEXT[action],
            name,
        )
        text = f"{ident} may not {_ACTION_TEXT[action]} function {name}"
        return error_packet(DENIED_CODE, text.encode())

    def get_status(self, conn: Conn, handle: bytes, shard: int) -> None:
        """GET_STATUS under status rules: the shard says the job's function too, and the reply
        is STATUS_RES only if the connection may read that function's status."""
        rights = conn.rights
        assert rights is not None

        def finish(parts: list[Any]) -> bytes:
            row = parts[0] if parts else None
            if row is None:  # no such job: nothing to protect
                return response(PacketType.STATUS_RES, handle, b"0", b"0", b"0", b"0")
            func = json_bytes(row[0])
            if not rights.may_read_status(func):
                return self.denial(conn, STATUS, func)
            return response(PacketType.STATUS_RES, handle, *(b"%d" % x for x in row[1:]))

        request = {"cmd": "job_status", "handle": json_text(handle)}
        self.front.admin.ask_shards(conn, request, finish, [shard])

    def get_status_unique(self, conn: Conn, unique: bytes) -> None:
        """GET_STATUS_UNIQUE under status rules (as `get_status`, gathered from every shard)."""
        rights = conn.rights
        assert rights is not None

        def finish(parts: list[Any]) -> bytes:
            for part in parts:
                if part:
                    func = json_bytes(part[0])
                    if not rights.may_read_status(func):
                        return self.denial(conn, STATUS, func)
                    counts = (b"%d" % x for x in part[1:])
                    return response(PacketType.STATUS_RES_UNIQUE, unique, *counts)
            return response(PacketType.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0")

        request = {"cmd": "status_unique_function", "unique": json_text(unique)}
        self.front.admin.ask_shards(conn, request, finish)

    @property
    def status_restricted(self) -> bool:
        """True when GET_STATUS* needs the job's function to be checked."""
        return self.access.restricts_status

    def admin_denial(self, conn: Conn, command: str) -> bytes | None:
        """The ``ERR`` line refusing admin `command` to `conn`, or None if it may run it."""
        ident = self.identity(conn)
        if self.access.admin_allows(ident, command):
            return None
        self.front.stats.block[layout.ST_DENIED_ADMIN] += 1
        who = self.access.admin_rule(command)
        self.warn.warning(
            f"denied admin {ident}",
            "access denied: %s may not run admin command %r (allowed: %s)",
            ident,
            command,
            who,
        )
        return admin_error(f"{command} is allowed only to: {who}")

    def apply_access(self, settings: dict[str, Any]) -> None:
        """Switch to new access settings (a reload): every connection's rights are recomputed
        now, and a worker loses each registration (CAN_DO) the new rules deny it."""
        old = self.access
        self.access = policy = AccessPolicy(settings)
        if policy.settings == old.settings:
            return
        front = self.front
        for conn in list(front.conns.values()):
            if conn.closed:
                continue
            rights = conn.rights = self.rights_for(conn.ip, conn.names)
            if rights is None:
                continue
            for func in [f for f in conn.abilities if not rights.may_work(f)]:
                log.warning(
                    "access rules reloaded: %s may no longer work on %r; registration removed",
                    rights.ident,
                    func.decode("utf-8", "replace"),
                )
                front_workers.cant_do(front, conn, REVOKE_ABILITY, func)  # its held jobs too
        log.info("access rules reloaded on this front")
