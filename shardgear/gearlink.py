"""A small blocking Gearman client over loopback, for the HTTP process (`shardgear.http_api`).

The HTTP process is a client of its own server: it submits jobs and asks for their status with
binary packets (encoded by `shardgear.proto.packets`) and runs admin text commands, each over a
connection of its own to one of the server's fronts. Nothing here is on the server's hot path;
every call has a deadline and raises `LinkError` (with the reason) instead of hanging.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable
from typing import Final

from shardgear.proto.packets import HEADER, RES_MAGIC, PacketType, request

__all__ = ["GearmanLink", "LinkError", "Result", "target_address"]

P = PacketType
ADMIN_TIMEOUT: Final = 10.0
READ_SIZE: Final = 65536
_RESULT_TYPES: Final = frozenset({P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION})


class LinkError(Exception):
    """The server could not be reached or answered something unexpected."""


def target_address(listen: str, port: int) -> tuple[str, int]:
    """Where the HTTP process reaches the Gearman port: loopback when the server listens on every
    interface, else the address it listens on."""
    host = listen.strip().strip("[]")
    if host in ("", "0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


class Result:
    """How a submitted job ended: the last packet type (`command`, a gearmand name such as
    ``WORK_COMPLETE``) and its data; `handle` from JOB_CREATED."""

    __slots__ = ("command", "data", "handle")

    def __init__(self, handle: bytes, command: str, data: bytes) -> None:
        self.handle = handle
        self.command = command
        self.data = data


class GearmanLink:
    """One connection to the server. Use it from one thread; close it when done."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        try:
            self.sock = socket.create_connection(address, timeout=timeout)
        except OSError as exc:
            where = f"{address[0]}:{address[1]}"
            raise LinkError(f"cannot reach the Gearman port {where}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> GearmanLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def _fill(self, deadline: float | None, abandon: Callable[[], bool] | None) -> None:
        """Read more bytes; raise LinkError at the deadline, on EOF, or when `abandon()`."""
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                raise LinkError("the server did not answer in time")
            ready, _, _ = select.select([self.sock], [], [], wait)
            if ready:
                break
            if abandon is not None and abandon():
                raise LinkError("abandoned")
        try:
            chunk = self.sock.recv(READ_SIZE)
        except OSError as exc:
            raise LinkError(f"connection to the server failed: {exc}") from exc
        if not chunk:
            raise LinkError("the server closed the connection")
        self._buf += chunk

    def read_packet(
        self, deadline: float | None = None, abandon: Callable[[], bool] | None = None
    ) -> tuple[int, bytes]:
        """The next response packet as (type, body)."""
        while len(self._buf) < 12:
            self._fill(deadline, abandon)
        magic, ptype, size = HEADER.unpack_from(self._buf, 0)
        if magic != RES_MAGIC:
            raise LinkError(f"bad magic {magic!r} from the server")
        while len(self._buf) < 12 + size:
            self._fill(deadline, abandon)
        body = self._buf[12 : 12 + size]
        self._buf = self._buf[12 + size :]
        return ptype, body

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self._buf:
            self._fill(deadline, None)
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    # ------------------------------------------------------------------ requests

    def send(self, ptype: int, *args: bytes) -> None:
        try:
            self.sock.sendall(request(ptype, *args))
        except OSError as exc:
            raise LinkError(f"cannot send to the server: {exc}") from exc

    def submit(self, ptype: int, func: bytes, unique: bytes, data: bytes) -> bytes:
        """Send a SUBMIT_JOB* and return the handle of its JOB_CREATED. Raises LinkError with
        the server's ERROR text."""
        self.send(ptype, func, unique, data)
        return self._created(time.monotonic() + ADMIN_TIMEOUT)

    def _created(self, deadline: float) -> bytes:
        t, body = self.read_packet(deadline)
        if t == P.JOB_CREATED:
            return body
        if t == P.ERROR:
            code, _, text = body.partition(b"\0")
            raise LinkError(f"{code.decode(errors='replace')}: {text.decode(errors='replace')}")
        raise LinkError(f"unexpected packet {t} instead of JOB_CREATED")

    def wait_result(self, handle: bytes, abandon: Callable[[], bool] | None = None) -> Result:
        """Wait (with no deadline, like gearmand's HTTP plugin) for the packet that ends the
        job: WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION. `abandon()` is asked every second and
        gives up (LinkError) when true: the HTTP client went away."""
        while True:
            t, body = self.read_packet(None, abandon)
            if t in _RESULT_TYPES:
                h, _, data = body.partition(b"\0")
                return Result(h or handle, P(t).name, data if t != P.WORK_FAIL else b"")

    def schedule(self, func: bytes, unique: bytes, fields: list[bytes], data: bytes) -> bytes:
        """SUBMIT_JOB_SCHED; return the schedule's handle."""
        self.send(P.SUBMIT_JOB_SCHED, func, unique, *fields, data)
        return self._created(time.monotonic() + ADMIN_TIMEOUT)

    def status(self, handle: bytes) -> tuple[bool, bool, int, int]:
        """GET_STATUS: (known, running, numerator, denominator)."""
        self.send(P.GET_STATUS, handle)
        t, body = self.read_packet(time.monotonic() + ADMIN_TIMEOUT)
        parts = body.split(b"\0")
        if t != P.STATUS_RES or len(parts) != 5:
            raise LinkError(f"unexpected answer to GET_STATUS: {t}")
        return parts[1] == b"1", parts[2] == b"1", int(parts[3] or 0), int(parts[4] or 0)

    def status_unique(self, unique: bytes) -> tuple[bool, bool, int, int, int]:
        """GET_STATUS_UNIQUE: (known, running, numerator, denominator, waiting clients)."""
        self.send(P.GET_STATUS_UNIQUE, unique)
        t, body = self.read_packet(time.monotonic() + ADMIN_TIMEOUT)
        parts = body.split(b"\0")
        if t != P.STATUS_RES_UNIQUE or len(parts) != 6:
            raise LinkError(f"unexpected answer to GET_STATUS_UNIQUE: {t}")
        n = [int(x or 0) for x in parts[3:]]
        return parts[1] == b"1", parts[2] == b"1", n[0], n[1], n[2]

    def echo(self, data: bytes) -> bytes:
        self.send(P.ECHO_REQ, data)
        t, body = self.read_packet(time.monotonic() + ADMIN_TIMEOUT)
        if t != P.ECHO_RES:
            raise LinkError(f"unexpected answer to ECHO_REQ: {t}")
        return body

    def admin(self, line: bytes, *, listing: bool) -> list[bytes]:
        """Run an admin text command. A `listing` command answers lines up to ``.``: return
        them (without the newlines); any other answers one line: return it alone. Raises
        LinkError with the text of an ``ERR`` answer."""
        try:
            self.sock.sendall(line + b"\n")
        except OSError as exc:
            raise LinkError(f"cannot send to the server: {exc}") from exc
        deadline = time.monotonic() + ADMIN_TIMEOUT
        first = self._line(deadline).rstrip(b"\r\n")
        if first.startswith(b"ERR ") and first.count(b" ") >= 1 and b"\t" not in first:
            raise LinkError(first[4:].decode(errors="replace"))
        if not listing:
            return [first]
        lines: list[bytes] = []
        line = first
        while line != b".":
            lines.append(line)
            line = self._line(deadline).rstrip(b"\r\n")
        return lines
