"""A small blocking raw-protocol Gearman client for the integration tests.

Self-contained on purpose (socket + struct only): it must not share code with the server's
``shardgear.proto``, so that a bug there cannot hide itself by being present on both ends.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterable

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")

# Packet numbers (gearman-protocol.md §1.2).
CAN_DO = 1
CANT_DO = 2
RESET_ABILITIES = 3
PRE_SLEEP = 4
UNUSED_5 = 5
NOOP = 6
SUBMIT_JOB = 7
JOB_CREATED = 8
GRAB_JOB = 9
NO_JOB = 10
JOB_ASSIGN = 11
WORK_STATUS = 12
WORK_COMPLETE = 13
WORK_FAIL = 14
GET_STATUS = 15
ECHO_REQ = 16
ECHO_RES = 17
SUBMIT_JOB_BG = 18
ERROR = 19
STATUS_RES = 20
SUBMIT_JOB_HIGH = 21
SET_CLIENT_ID = 22
CAN_DO_TIMEOUT = 23
ALL_YOURS = 24
WORK_EXCEPTION = 25
OPTION_REQ = 26
OPTION_RES = 27
WORK_DATA = 28
WORK_WARNING = 29
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_HIGH_BG = 32
SUBMIT_JOB_LOW = 33
SUBMIT_JOB_LOW_BG = 34
SUBMIT_JOB_SCHED = 35
SUBMIT_JOB_EPOCH = 36
SUBMIT_REDUCE_JOB = 37
SUBMIT_REDUCE_JOB_BACKGROUND = 38
GRAB_JOB_ALL = 39
JOB_ASSIGN_ALL = 40
GET_STATUS_UNIQUE = 41
STATUS_RES_UNIQUE = 42

NAMES = {v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)}

# Number of arguments of each packet as it arrives from the server; the last is the remainder.
RES_ARGC = {
    NOOP: 0,
    JOB_CREATED: 1,
    NO_JOB: 0,
    JOB_ASSIGN: 3,
    WORK_STATUS: 3,
    WORK_COMPLETE: 2,
    WORK_FAIL: 1,
    ECHO_RES: 1,
    ERROR: 2,
    STATUS_RES: 5,
    WORK_EXCEPTION: 2,
    OPTION_RES: 1,
    WORK_DATA: 2,
    WORK_WARNING: 2,
    JOB_ASSIGN_UNIQ: 4,
    JOB_ASSIGN_ALL: 5,
    STATUS_RES_UNIQUE: 6,
}

SUBMIT_TYPES = {
    ("high", False): SUBMIT_JOB_HIGH,
    ("normal", False): SUBMIT_JOB,
    ("low", False): SUBMIT_JOB_LOW,
    ("high", True): SUBMIT_JOB_HIGH_BG,
    ("normal", True): SUBMIT_JOB_BG,
    ("low", True): SUBMIT_JOB_LOW_BG,
}

LIST_ADMIN_COMMANDS = ("status", "prioritystatus", "workers", "show")


def name(ptype: int) -> str:
    return NAMES.get(ptype, str(ptype))


def as_bytes(x: bytes | str | int) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, int):
        return str(x).encode()
    return x.encode()


def packet(ptype: int, *args: bytes | str | int, magic: bytes = REQ) -> bytes:
    body = b"\0".join(as_bytes(a) for a in args)
    return HEADER.pack(magic, ptype, len(body)) + body


def split_args(ptype: int, body: bytes) -> list[bytes]:
    argc = RES_ARGC.get(ptype, 1)
    if argc == 0:
        return [body] if body else []
    return body.split(b"\0", argc - 1)


class ConnectionClosed(Exception):
    pass


class Conn:
    """One blocking TCP connection to the server."""

    def __init__(
        self, address: str, timeout: float = 5.0, tls: ssl.SSLContext | None = None
    ) -> None:
        host, _, port = address.rpartition(":")
        self.address = address
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname="localhost")
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.buf = bytearray()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, ptype: int, *args: bytes | str | int) -> None:
        self.sock.sendall(packet(ptype, *args))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving -------------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing received from {self.address} in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError(f"nothing received from {self.address} in time") from None
        except ConnectionResetError as e:
            raise ConnectionClosed(str(e)) from None
        if not chunk:
            raise ConnectionClosed(f"{self.address} closed the connection")
        self.buf += chunk

    def recv(self, timeout: float = 5.0) -> tuple[int, list[bytes]]:
        """Return the next binary packet as (type, args)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < HEADER.size:
            self._fill(deadline)
        magic, ptype, size = HEADER.unpack_from(self.buf)
        if magic != RES:
            raise AssertionError(f"bad response magic {bytes(self.buf[:16])!r}")
        while len(self.buf) < HEADER.size + size:
            self._fill(deadline)
        body = bytes(self.buf[HEADER.size : HEADER.size + size])
        del self.buf[: HEADER.size + size]
        return ptype, split_args(ptype, body)

    def expect(self, ptype: int, timeout: float = 5.0) -> list[bytes]:
        """Receive one packet and assert its type; return its args."""
        got, args = self.recv(timeout)
        assert got == ptype, f"expected {name(ptype)}, got {name(got)} {args!r}"
        return args

    def recv_nothing(self, within: float = 0.3) -> None:
        """Assert that no byte arrives within `within` seconds."""
        if self.buf:
            raise AssertionError(f"unexpected data already buffered: {bytes(self.buf[:64])!r}")
        self.sock.settimeout(within)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected data: {chunk[:64]!r}")

    def is_closed(self, timeout: float = 5.0) -> bool:
        """Wait up to `timeout` for the server to close the connection; discard anything sent."""
        deadline = time.monotonic() + timeout
        self.buf.clear()
        while True:
            try:
                self._fill(deadline)
            except ConnectionClosed:
                return True
            except TimeoutError:
                return False
            self.buf.clear()

    def readline(self, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            self._fill(deadline)
        i = self.buf.index(b"\n") + 1
        line = bytes(self.buf[:i])
        del self.buf[:i]
        return line

    def admin(self, line: str, timeout: float = 5.0) -> str:
        """Send a text admin command; return the reply (list replies include the final `.\\n`)."""
        self.sock.sendall(line.encode() + b"\n")
        deadline = time.monotonic() + timeout
        first = self.readline(timeout).decode()
        words = line.split()
        is_list = bool(words) and words[0].lower() in LIST_ADMIN_COMMANDS
        if not is_list or first.startswith("ERR"):
            return first
        out = [first]
        while out[-1] != ".\n":
            out.append(self.readline(max(0.01, deadline - time.monotonic())).decode())
        return "".join(out)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers -------------------------------------------------------------------------------------


def submit(
    conn: Conn,
    func: bytes | str,
    data: bytes | str = b"",
    unique: bytes | str = b"",
    prio: str = "normal",
    bg: bool = False,
) -> bytes:
    """Submit a job and return its handle."""
    conn.send(SUBMIT_TYPES[(prio, bg)], func, unique, data)
    return conn.expect(JOB_CREATED)[0]


def submit_epoch(
    conn: Conn, func: bytes | str, when: int, data: bytes | str = b"", unique: bytes | str = b""
) -> bytes:
    conn.send(SUBMIT_JOB_EPOCH, func, unique, when, data)
    return conn.expect(JOB_CREATED)[0]


def worker(conn: Conn, *funcs: bytes | str) -> Conn:
    """Register `funcs` (CAN_DO each, in order) on `conn` and return it."""
    for f in funcs:
        conn.send(CAN_DO, f)
    return conn


def grab(conn: Conn, kind: int = GRAB_JOB, timeout: float = 5.0) -> tuple[int, list[bytes]]:
    """Send a GRAB_JOB* and return the answer (skipping NOOPs)."""
    conn.send(kind)
    deadline = time.monotonic() + timeout
    while True:
        ptype, args = conn.recv(max(0.01, deadline - time.monotonic()))
        if ptype != NOOP:
            return ptype, args


def grab_job(conn: Conn, timeout: float = 5.0) -> list[bytes]:
    """GRAB_JOB and assert a JOB_ASSIGN: returns [handle, func, data]."""
    ptype, args = grab(conn, GRAB_JOB, timeout)
    assert ptype == JOB_ASSIGN, f"expected JOB_ASSIGN, got {name(ptype)} {args!r}"
    return args


def grab_until_job(
    conn: Conn, kind: int = GRAB_JOB, timeout: float = 5.0, pause: float = 0.02
) -> tuple[int, list[bytes]]:
    """GRAB repeatedly (bounded by `timeout`) until the server assigns a job."""
    deadline = time.monotonic() + timeout
    while True:
        ptype, args = grab(conn, kind, timeout)
        if ptype != NO_JOB:
            return ptype, args
        if time.monotonic() > deadline:
            raise TimeoutError("no job assigned in time")
        time.sleep(pause)


def wait_for(predicate, timeout: float = 5.0, pause: float = 0.05, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value, bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)


def parse_status(text: str) -> dict[str, list[int]]:
    """Parse a `status`/`prioritystatus` reply into {function: [numbers...]}."""
    out: dict[str, list[int]] = {}
    for line in text.splitlines():
        if line == ".":
            break
        fields = line.split("\t")
        out[fields[0]] = [int(x) for x in fields[1:]]
    return out


def parse_workers(text: str) -> list[tuple[str, str, str, list[str]]]:
    """Parse a `workers` reply into [(fd, ip, client_id, [functions])]."""
    rows = []
    for line in text.splitlines():
        if line == ".":
            break
        head, _, funcs = line.partition(" :")
        fd, ip, cid = head.split(" ", 2)
        rows.append((fd, ip, cid, funcs.split()))
    return rows


def status_of(address: str, func: bytes | str, command: str = "status") -> list[int] | None:
    with Conn(address) as c:
        return parse_status(c.admin(command)).get(as_bytes(func).decode())


def drain(conns: Iterable[Conn]) -> None:
    for c in conns:
        c.close()
