"""Helpers of the operations tests: children of a server, waiting for log lines."""

from __future__ import annotations

import os
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
