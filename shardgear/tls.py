"""TLS for a front's listeners: the server context, non-blocking handshakes, peer identities.

What a front does with it
-------------------------
* `server_context(config)` builds one `ssl.SSLContext` from the settings (``--tls-cert``,
  ``--tls-key``, ``--tls-ca``, ``--tls-client-cert``) with the ssl module's secure defaults
  (`ssl.create_default_context` for client authentication: certificate and host checks of the
  library, no compression, no SSLv2/3) and TLS 1.2 as the oldest version (RFC 8996 deprecates 1.0
  and 1.1). With a CA, client certificates are required and verified unless ``--tls-client-cert``
  says ``optional`` (verified when sent) or ``none`` (never asked for).
* `Handshakes` drives the handshakes of a front's accepted TLS sockets inside its epoll loop:
  ``do_handshake`` is called on each readiness event and never blocks; a socket that has not
  finished within ``--tls-handshake-timeout`` seconds is closed; a failed handshake is logged at
  WARNING with the peer and OpenSSL's reason (`tls_error_reason`).
* A finished handshake gives a `TLSStream`: the TLS socket behind the interface the front's plain
  read/write path already uses (``recv``, ``send``, ``sendmsg`` raising `BlockingIOError` when
  the socket would block), so a TLS connection runs the same code as a plain one and a plain one
  pays nothing for TLS.
* `peer_names(cert)` is the identity a verified client certificate proves: its subject's common
  names and its subjectAltName entries (DNS names, e-mail addresses, URIs, IP addresses), as
  `shardgear.access` matches them.

Nothing here imports the front; the front calls in with three hooks (a TLS listener's accept, a
handshake's readiness event, the expiry of handshakes).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Any, Final

from shardgear.config import CLIENT_CERT_MODES
from shardgear.log_limit import LogLimiter

log = logging.getLogger("shardgear.tls")

_VERIFY_MODES: Final = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
#: The largest TLS record's plaintext (RFC 8446 5.1, RFC 5246 6.2.1).
MAX_RECORD: Final = 16384
#: The most a joined write hands to OpenSSL at once (a slow reader's backlog is never copied whole).
SEND_JOIN_LIMIT: Final = 1024 * 1024
_EPOLLIN: Final = select.EPOLLIN
_EPOLLOUT: Final = select.EPOLLOUT


class TLSConfigError(ValueError):
    """Settings that cannot make a TLS context; the text says which and why."""


def client_cert_mode(mode: str, ca: str) -> str:
    """The effective client-certificate mode: `mode` if given, else ``required`` with a CA file
    and ``none`` without. Raises TLSConfigError for a mode that needs a CA and has none."""
    if not mode:
        return "required" if ca else "none"
    if mode not in CLIENT_CERT_MODES:
        raise TLSConfigError(
            f"tls-client-cert must be one of {', '.join(CLIENT_CERT_MODES)}, got {mode!r}"
        )
    if mode != "none" and not ca:
        raise TLSConfigError(f"tls-client-cert {mode} needs tls-ca (the CA that signs clients)")
    return mode


def tls_summary(config: Any) -> str:
    """How the start-up line describes TLS: "" (none), " (TLS)", or " and TLS on ADDR:PORT"."""
    if not config.tls_cert:
        return ""
    mode = client_cert_mode(config.tls_client_cert, config.tls_ca)
    if not config.tls_port:
        return f" (TLS, client certificates {mode})"
    where = config.tls_listen or "*"
    return f" and TLS on {where}:{config.tls_port} (client certificates {mode})"


def server_context(cert: str, key: str, ca: str = "", client_cert: str = "") -> ssl.SSLContext:
    """An `ssl.SSLContext` for a TLS listener.

    `cert` and `key` are PEM files (the key may be inside `cert`: pass `key` empty); `ca` a PEM
    bundle of the CAs that sign client certificates (a file, or a directory prepared with
    ``c_rehash``). Raises TLSConfigError with the file and OpenSSL's reason when a file cannot be
    loaded or the key does not match the certificate.
    """
    if not cert:
        raise TLSConfigError("TLS needs tls-cert (the server's certificate chain, PEM)")
    mode = client_cert_mode(client_cert, ca)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    try:
        ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load tls-cert {cert!r} / tls-key {key or cert!r}: {_reason(exc)}"
        ) from None
    if ca:
        try:
            if os.path.isdir(ca):
                ctx.load_verify_locations(capath=ca)
            else:
                ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(f"cannot load tls-ca {ca!r}: {_reason(exc)}") from None
    ctx.verify_mode = _VERIFY_MODES[mode]
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return tls_error_reason(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def tls_error_reason(exc: BaseException) -> str:
    """A short text for a TLS failure: OpenSSL's verify message or reason when there is one."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError):
        return exc.strerror or (errno.errorcode.get(exc.errno or 0) or str(exc))
    return str(exc)


def peer_names(cert: dict[str, Any] | None) -> tuple[str, ...]:
    """The names a verified peer certificate (``SSLSocket.getpeercert()``) proves: subject common
    names first, then subjectAltName values (DNS, email, URI, IP Address), without repeats.

    An empty tuple for no certificate (``--tls-client-cert none``/``optional`` without one)."""
    if not cert:
        return ()
    names: list[str] = []
    for rdn in cert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName" and value not in names:
                names.append(str(value))
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI", "IP Address") and value not in names:
            names.append(str(value).strip())
    return tuple(names)


class TLSStream:
    """A connection's TLS socket with the non-blocking interface of a plain socket.

    ``recv``/``send``/``sendmsg`` raise `BlockingIOError` where the ssl module raises
    `ssl.SSLWantReadError`/`ssl.SSLWantWriteError`, so the front's read and write path handles a
    TLS connection unchanged. A write that would block must be retried with the same bytes
    first (OpenSSL's rule): the front keeps unsent output at the head of its queue and only
    appends behind it, and `sendmsg` joins from the head, so each retry starts with the same
    bytes and is never shorter.
    """

    __slots__ = ("names", "sock")

    def __init__(self, sock: ssl.SSLSocket, names: tuple[str, ...]) -> None:
        self.sock = sock
        self.names = names

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> Any:
        return self.sock.getpeername()

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes. SSL_read returns one record (16 KiB at most) a call: while the
        last record was a full one (the peer's write went on) or OpenSSL holds decrypted bytes
        that epoll cannot see, the next one is read in the same call."""
        sock = self.sock
        try:
            data = sock.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError(errno.EAGAIN, "TLS record incomplete") from None
        n = len(data)
        if n < size and (n >= MAX_RECORD or sock.pending()):
            parts = [data]
            got = n
            try:
                while got < size:
                    more = sock.recv(size - got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                    if len(more) < MAX_RECORD and not sock.pending():
                        break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass  # what was read is returned; the rest comes with the next event
            except OSError:
                pass  # a broken connection: the next read reports it
            data = b"".join(parts)
        return data

    def send(self, data: bytes | memoryview) -> int:
        try:
            return self.sock.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError(errno.EAGAIN, "TLS send would block") from None

    def sendmsg(self, buffers: Iterable[bytes | memoryview]) -> int:
        """Send the head of `buffers` joined (at most `SEND_JOIN_LIMIT` bytes past the first)."""
        parts: list[bytes | memoryview] = []
        total = 0
        for chunk in buffers:
            parts.append(chunk)
            total += len(chunk)
            if total >= SEND_JOIN_LIMIT:
                break
        return self.send(b"".join(parts))

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.sock.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        """Shut the TCP connection down (a FIN after the last reply, `Replies` LINGERING). No
        close_notify is sent: the ssl module's non-blocking ``unwrap`` could not promise it, and
        input after this point is only read to be dropped."""
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


class _Pending:
    __slots__ = ("deadline", "events", "ip", "sock")

    def __init__(self, sock: ssl.SSLSocket, ip: str, deadline: float) -> None:
        self.sock = sock
        self.ip = ip
        self.deadline = deadline
        self.events = _EPOLLIN


Ready = Callable[[TLSStream, str], None]
"""Called with a connection whose handshake finished, and its peer address (text)."""


class Handshakes:
    """The TLS handshakes in progress on one front.

    `start` wraps an accepted socket (already non-blocking and registered with `epoll` for
    EPOLLIN under its fd) and tries the handshake at once; `event` continues it when epoll reports
    the fd; `expire` closes those past their deadline. A finished handshake is handed to `ready`
    (the fd stays registered: the caller takes it over); a failed one is closed and logged.
    """

    def __init__(
        self,
        epoll: select.epoll,
        ready: Ready,
        timeout: float,
        forget: Callable[[str], None],
    ) -> None:
        self.epoll = epoll
        self.ready = ready
        self.timeout = timeout
        self.forget = forget  # frees the peer's connection-limit slot if it never becomes a Conn
        self.pending: dict[int, _Pending] = {}
        self.warn = LogLimiter(log)

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, fd: int) -> bool:
        return fd in self.pending

    def start(self, ctx: ssl.SSLContext, sock: socket.socket, ip: str, now: float) -> None:
        """Wrap `sock` (registered for EPOLLIN) and start its handshake."""
        fd = sock.fileno()
        try:
            tls = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self.warn.warning(
                "tls " + ip, "TLS handshake with %s failed: %s", ip, tls_error_reason(exc)
            )
            self._drop_fd(fd)
            sock.close()
            self.forget(ip)
            return
        self.pending[fd] = _Pending(tls, ip, now + self.timeout)
        self.event(fd)

    def event(self, fd: int) -> None:
        """Continue the handshake of `fd` (epoll said it is ready)."""
        p = self.pending.get(fd)
        if p is None:
            return
        try:
            p.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(fd, p, _EPOLLIN)
            return
        except ssl.SSLWantWriteError:
            self._watch(fd, p, _EPOLLOUT)
            return
        except (OSError, ValueError) as exc:
            self._fail(fd, p, tls_error_reason(exc))
            return
        del self.pending[fd]
        try:
            names = peer_names(p.sock.getpeercert())
        except (OSError, ValueError) as exc:
            self._fail(fd, p, tls_error_reason(exc), known=False)
            return
        if p.events != _EPOLLIN:
            self.epoll.modify(fd, _EPOLLIN)
        log.debug("TLS connection from %s: %s %s", p.ip, p.sock.version(), names or "(no cert)")
        self.ready(TLSStream(p.sock, names), p.ip)

    def expire(self, now: float) -> None:
        """Close handshakes past their deadline."""
        for fd, p in list(self.pending.items()):
            if p.deadline <= now:
                self._fail(fd, p, f"not finished within {self.timeout:g} s")

    def next_deadline(self) -> float | None:
        if not self.pending:
            return None
        return min(p.deadline for p in self.pending.values())

    def close_all(self) -> None:
        for fd, p in list(self.pending.items()):
            self._drop_fd(fd)
            p.sock.close()
            self.forget(p.ip)
        self.pending.clear()

    def _watch(self, fd: int, p: _Pending, events: int) -> None:
        if p.events != events:
            p.events = events
            self.epoll.modify(fd, events)

    def _fail(self, fd: int, p: _Pending, reason: str, known: bool = True) -> None:
        if known:
            self.pending.pop(fd, None)
        self.warn.warning("tls " + p.ip, "TLS handshake with %s failed: %s", p.ip, reason)
        self._drop_fd(fd)
        p.sock.close()
        self.forget(p.ip)

    def _drop_fd(self, fd: int) -> None:
        try:
            self.epoll.unregister(fd)
        except OSError:
            pass
