"""A stop or reload signal that comes while the server is still starting (issue 7's breaker: in
the first 0.1 s a SIGHUP killed the supervisor and a SIGINT printed a traceback). The command
holds its signals from its first line (`shardgear.start`) until the supervisor's handlers are in
place; here the signal is raised, held, by the test's child before it execs the server, so it is
certain to arrive before the handlers exist. A held signal is then handled as at any other time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.conftest import REPO, free_port
from tests.gearclient import Conn
from tests.ops.helpers import alive, wait_for_log

pytestmark = pytest.mark.shardgear_only


def raised_early(sig: int):
    """A preexec_fn: block `sig` and raise it, so that the server starts with it pending."""

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
        os.kill(os.getpid(), sig)

    return preexec


def test_a_sighup_during_start_is_a_reload_not_a_kill(start_server) -> None:
    srv = start_server("--fronts", "1", "--shards", "1", preexec_fn=raised_early(signal.SIGHUP))
    wait_for_log(srv, "reload (SIGHUP)")
    with Conn(srv.address) as c:
        assert c.admin("version").startswith("OK")
    assert alive(srv.pid)
    assert "Traceback" not in srv.stderr_text()


def test_a_sigint_during_start_stops_gracefully_without_a_traceback() -> None:
    with tempfile.TemporaryDirectory(prefix="shardgear-state.") as state:
        cmd = [sys.executable, "-m", "shardgear", "--listen", "127.0.0.1"]
        cmd += ["--port", str(free_port()), "--fronts", "1", "--shards", "1"]
        cmd += ["--state-dir", state, "--graceful-timeout", "5"]
        done = subprocess.run(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            preexec_fn=raised_early(signal.SIGINT),
            start_new_session=True,
            timeout=60,
        )
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert "stopping (SIGINT)" in err and "stopped" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
