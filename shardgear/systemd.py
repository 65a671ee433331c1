"""The two things a service needs from systemd: readiness notification and nothing else (yet)."""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. ``"READY=1"``) to systemd's notify socket, if there is one.

    Returns True if a message was sent. Does nothing outside systemd (no NOTIFY_SOCKET).
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
