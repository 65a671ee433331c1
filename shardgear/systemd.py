"""What a service needs from systemd: the notify protocol and socket activation (``sd_notify(3)``,
``sd_listen_fds(3)``, ``sd_watchdog_enabled(3)``), without libsystemd.

Only the supervisor talks to systemd. It reads (and removes from its environment, so that no child
inherits them) NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID and LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from typing import Final

#: The first file descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START: Final = 3


def _pop_env(*names: str) -> list[str]:
    return [os.environ.pop(name, "") for name in names]


def listen_fds() -> list[int]:
    """The sockets systemd passed to this process (socket activation), [] if none.

    As ``sd_listen_fds(1)``: only if ``LISTEN_PID`` is our pid; marks them close-on-exec (the
    supervisor hands them to its fronts explicitly) and removes the variables from the
    environment.
    """
    count, pid, _names = _pop_env("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
    if not count.isdigit() or not pid.isdigit() or int(pid) != os.getpid():
        return []
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))
    for fd in fds:
        flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds


class Notifier:
    """The service side of the notify protocol. Every method does nothing (and returns False)
    outside systemd, that is without NOTIFY_SOCKET.

    `watchdog_interval` is None unless the unit has ``WatchdogSec=`` (WATCHDOG_USEC, for our pid):
    then `watchdog` must be called at least that often (half the timeout, as sd_watchdog_enabled
    recommends).
    """

    def __init__(self) -> None:
        address, usec, wpid = _pop_env("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not wpid or wpid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6
        self.stopping_sent = False
        self.sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        """Send one message of ``KEY=VALUE`` fields; True if it was sent."""
        if not self.address:
            return False
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """Ask for `seconds` more before the start (or stop) times out."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        """STOPPING=1, once however often it is called."""
        if self.stopping_sent:
            return False
        self.stopping_sent = True
        return self.notify("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
