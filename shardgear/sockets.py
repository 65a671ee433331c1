"""Listening sockets: every front binds the same port itself with SO_REUSEPORT, or serves the
sockets systemd passed to the supervisor (socket activation), which hands them on."""

from __future__ import annotations

import os
import socket
from typing import Any, Final

#: Environment variable through which the supervisor gives its fronts the inherited sockets
#: (comma-separated file descriptors, passed with pass_fds).
LISTEN_FDS_ENV: Final = "SHARDGEAR_LISTEN_FDS"


def listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """The front's listening sockets: the inherited ones (socket activation; then nothing is
    bound here, several ports or addresses are fine), else one bound on (host, port)."""
    inherited = os.environ.get(LISTEN_FDS_ENV, "")
    if inherited:
        socks = []
        for text in inherited.split(","):
            sock = socket.socket(fileno=int(text))
            sock.setblocking(False)
            socks.append(sock)
        return socks
    return [bind_listener(host, port, backlog)]


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """Return a non-blocking listening socket on (host, port) with SO_REUSEPORT set.

    An empty `host` listens on every interface: IPv6 and IPv4 on one dual-stack socket where the
    host has IPv6, IPv4 only otherwise (gearmand listens on both families too).
    """
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = _bind(family, host, port, backlog)
    else:
        try:
            sock = _bind(socket.AF_INET6, "::", port, backlog, dual_stack=True)
        except OSError:
            sock = _bind(socket.AF_INET, "0.0.0.0", port, backlog)
    return sock


def _bind(
    family: socket.AddressFamily, host: str, port: int, backlog: int, dual_stack: bool = False
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def address_text(addr: Any) -> str:
    """The IP address of an accepted socket's address (`socket.accept`'s second value) as text,
    IPv4-mapped IPv6 shown as IPv4; "-" for an address with no IP (a Unix socket passed by
    socket activation)."""
    if not isinstance(addr, tuple) or not addr:
        return "-"
    ip = str(addr[0])
    return ip[7:] if ip.startswith("::ffff:") else ip
