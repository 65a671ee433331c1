"""Listening sockets: every front binds the same port itself with SO_REUSEPORT."""

from __future__ import annotations

import socket


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


def peer_ip(sock: socket.socket) -> str:
    """Return the peer's IP address as text, IPv4-mapped IPv6 addresses shown as IPv4."""
    try:
        ip = str(sock.getpeername()[0])
    except OSError:
        return "-"
    return ip[7:] if ip.startswith("::ffff:") else ip
