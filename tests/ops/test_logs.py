"""Logs on a real server: the journal format (a syslog priority per line, no timestamp or pid of
our own, a traceback as one record), lifecycle lines shown at the default level, and
rate-limited WARNINGs for connections closed on protocol errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Server, free_port
from tests.gearclient import Conn, wait_for
from tests.ops.helpers import child_roles, wait_for_log

pytestmark = pytest.mark.shardgear_only
JOURNAL_LINE = re.compile(r"^<[0-7]>(supervisor|front\d+|shard\d+): \S")


class DefaultLevelServer(Server):
    """A server at the default log level (conftest passes --log-level info)."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--log-level")
        del cmd[i : i + 2]
        return cmd


def stopped_log(srv: Server) -> str:
    """Stop the server (SIGTERM) and return its whole log (conftest's stop removes it)."""
    srv.signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    return srv.stderr_text(limit=1_000_000)


def bad_magic(address: str) -> None:
    with Conn(address) as c:
        c.send_raw(b"\0BAD" + b"\0" * 8)
        assert c.is_closed()


def test_journal_format_has_priorities_and_no_timestamps(start_server):
    srv = start_server("--log-format", "journal")
    # fronts serve as soon as they listen; the supervisor logs "ready" once it has seen them all,
    # which on a busy machine can come after a short test would have stopped the server
    wait_for_log(srv, " ready on ")
    bad_magic(srv.address)
    wait_for_log(srv, "bad packet magic")
    lines = stopped_log(srv).splitlines()
    assert lines and all(JOURNAL_LINE.match(line) for line in lines), lines
    closed = "closing connection from 127.0.0.1: bad packet magic"
    assert any(line.startswith("<4>front") and closed in line for line in lines)
    ready = [line for line in lines if " ready on " in line]
    assert len(ready) == 1 and ready[0].startswith("<5>supervisor: shardgear")
    assert not any(re.search(r"\d\d:\d\d:\d\d", line) for line in lines)


def test_lifecycle_lines_show_at_the_default_level():
    srv = DefaultLevelServer().start()
    try:
        wait_for_log(srv, " ready on ")  # see test_journal_format_has_priorities_and_no_timestamps
        shard = next(pid for pid, role in child_roles(srv.pid).items() if role == "shard1")
        os.kill(shard, signal.SIGKILL)
        wait_for_log(srv, "restarted shard 1")
        log = stopped_log(srv)
    finally:
        srv.stop()
    for text in ("NOTICE shardgear", "ready on", "NOTICE restarted shard 1", "NOTICE stopping"):
        assert text in log
    assert "NOTICE stopped" in log
    assert " INFO " not in log  # info stays hidden by default


def test_a_flood_of_protocol_errors_is_logged_as_warnings_at_a_bounded_rate(start_server):
    srv = start_server("--fronts", "1", "--max-packet-size", "1K")
    with Conn(srv.address) as c:  # an oversized packet: WARNING with the peer and the reason
        c.send_raw(b"\0REQ" + (7).to_bytes(4, "big") + (4096).to_bytes(4, "big"))
        assert c.is_closed()
    wait_for_log(srv, "WARNING closing connection from 127.0.0.1:")
    for _ in range(100):
        bad_magic(srv.address)
    time.sleep(0.5)
    log = srv.stderr_text()
    warnings = [line for line in log.splitlines() if "WARNING closing connection from" in line]
    assert 1 < len(warnings) <= 20  # log_limit.LogLimiter: 5 per kind and 10 s
    assert "packet of 4096 bytes" in log or "4096" in warnings[0]


def test_a_crashed_child_traceback_is_one_journal_record(tmp_path):
    """A child whose profile cannot be written crashes as it stops: its traceback, through
    the journal format, must stay on one line (journald splits records at newlines)."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    port = free_port()
    state = tempfile.mkdtemp(prefix="shardgear-state.")
    err_path = tmp_path / "stderr"
    with open(err_path, "wb") as err:
        st = os.fstat(err.fileno())
        env = {
            **os.environ,
            "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",  # log-format auto picks the journal
            "SHARDGEAR_PROFILE": str(not_a_dir),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardgear", "--listen", "127.0.0.1", "--port", str(port),
             "--fronts", "1", "--shards", "1", "--state-dir", state],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
            env=env, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: _answers(port), timeout=15, what="the server to answer")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    lines = err_path.read_text().splitlines()
    crashed = [line for line in lines if "crashed" in line]
    assert len(crashed) == 2, lines  # the front and the shard
    for line in crashed:
        assert line.startswith("<2>")
        assert "\\nTraceback (most recent call last):\\n" in line
        assert "NotADirectoryError" in line
    assert all(JOURNAL_LINE.match(line) for line in lines), lines
    assert not list(Path("/dev/shm").glob(f"shardgear.{port}.*"))


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"version\n")
            return s.recv(100).startswith(b"OK")
    except OSError:
        return False
