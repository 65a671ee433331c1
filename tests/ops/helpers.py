"""Helpers of the operations tests: children of a server, waiting for log lines."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from tests.conftest import Server
from tests.gearclient import wait_for


def children(pid: int) -> list[int]:
    """The pids of the direct children of process `pid`."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return sorted(int(x) for x in text.split())


def child_roles(pid: int) -> dict[int, str]:
    """{child pid: "front0" | "shard1" | ...} of a shardgear supervisor."""
    roles = {}
    for child in children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"shardgear.child" in argv:
            i = argv.index(b"shardgear.child")
            roles[child] = argv[i + 1].decode() + argv[i + 2].decode()
    return roles


def wait_for_log(srv: Server, text: str, timeout: float = 10.0, count: int = 1) -> str:
    """Wait until the server's stderr has `text` at least `count` times; return the log."""

    def seen() -> str:
        log = srv.stderr_text(limit=1_000_000)
        return log if log.count(text) >= count else ""

    return str(wait_for(seen, timeout=timeout, what=f"{text!r} in the log"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class NotifySocket:
    """A fake systemd notify socket (NOTIFY_SOCKET): a datagram socket the test reads.

    `messages` is every datagram as (monotonic time, {KEY: VALUE}) in arrival order, collected by
    `poll` (the test calls it; nothing runs in the background)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path}

    def poll(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        """The messages so far that set `key` (to `value`, if given)."""
        return [
            (t, m)
            for t, m in self.poll()
            if key in m and (value is None or m[key] == value)
        ]

    def wait_for(self, key: str, value: str | None = None, count: int = 1, timeout: float = 15.0):
        """Wait until `count` messages set `key` (to `value`); return them."""
        return wait_for(
            lambda: (found := self.having(key, value)) and len(found) >= count and found,
            timeout=timeout,
            pause=0.02,
            what=f"{count} x {key}={value or '*'} on the notify socket",
        )

    def close(self) -> None:
        self.sock.close()
