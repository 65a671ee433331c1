"""The config file on a real server: per-function settings reach the shards, SIGHUP re-reads the
file without dropping a connection, a bad file is refused, and a SIGHUP to the whole process group
kills nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import Server
from tests.gearclient import ECHO_REQ, ECHO_RES, ERROR, JOB_CREATED, SUBMIT_JOB_BG, wait_for
from tests.ops.helpers import child_roles, wait_for_log

pytestmark = pytest.mark.shardgear_only


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shardgear.toml"
    path.write_text(text)
    return str(path)


def fill(conn, func: bytes, n: int) -> list[int]:
    """Submit n background jobs; return the answer types (JOB_CREATED or ERROR)."""
    answers = []
    for i in range(n):
        conn.send(SUBMIT_JOB_BG, func, b"", b"x%d" % i)
        answers.append(conn.recv()[0])
    return answers


def test_maxqueue_from_the_file_reaches_every_shard(start_server, connect, make_name, tmp_path):
    names = [make_name("lim", shard=0), make_name("lim", shard=1)]
    path = config(tmp_path, '[functions."lim-*"]\nmaxqueue = 2\n')
    srv = start_server("--config", path)
    client = connect(srv.address)
    for func in names:
        assert fill(client, func, 3) == [JOB_CREATED, JOB_CREATED, ERROR]
    other = make_name("free")
    assert fill(client, other, 3) == [JOB_CREATED] * 3


def test_sighup_applies_the_new_file_and_keeps_every_connection(
    start_server, connect, make_name, tmp_path
):
    func = make_name("lim")
    path = config(tmp_path, f'[functions."{func.decode()}"]\nmaxqueue = 1\n')
    srv = start_server("--config", path)
    client, adm = connect(srv.address), connect(srv.address)
    assert fill(client, func, 2) == [JOB_CREATED, ERROR]
    pids = child_roles(srv.pid)
    Path(path).write_text(f'[functions."{func.decode()}"]\nmaxqueue = 3\n')
    srv.signal(signal.SIGHUP)
    wait_for_log(srv, "reloaded")
    assert fill(client, func, 3) == [JOB_CREATED, JOB_CREATED, ERROR]
    client.send(ECHO_REQ, b"still here")
    assert client.expect(ECHO_RES) == [b"still here"]
    assert adm.admin("version").startswith("OK")
    assert child_roles(srv.pid) == pids
    # a table removed: the function is unlimited again
    Path(path).write_text("")
    srv.signal(signal.SIGHUP)
    wait_for_log(srv, "reloaded", count=2)
    assert fill(client, func, 3) == [JOB_CREATED] * 3


def test_a_bad_file_at_reload_is_refused_and_the_running_config_stays(
    start_server, connect, make_name, tmp_path
):
    func = make_name("lim")
    path = config(tmp_path, f'[functions."{func.decode()}"]\nmaxqueue = 1\n')
    srv = start_server("--config", path)
    Path(path).write_text(f'[functions."{func.decode()}"]\nmaxqueue = 9\nbogus = 1\n')
    srv.signal(signal.SIGHUP)
    log = wait_for_log(srv, "reload refused")
    assert f"{path}:3: " in log and "unknown function setting 'bogus'" in log
    client = connect(srv.address)
    assert fill(client, func, 2) == [JOB_CREATED, ERROR]


def test_a_reload_names_what_needs_a_restart(start_server, connect, tmp_path):
    path = config(tmp_path, "ring-size = '1M'\n")
    srv = start_server("--config", path)
    Path(path).write_text("ring-size = '2M'\n")
    srv.signal(signal.SIGHUP)
    log = wait_for_log(srv, "reloaded")
    assert "ring-size changed; that takes a restart" in log
    assert connect(srv.address).admin("version").startswith("OK")


class FileLevelServer(Server):
    """A server whose log level comes from its config file (conftest passes --log-level)."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--log-level")
        del cmd[i : i + 2]
        return cmd


def test_a_reload_changes_the_log_level_of_every_process(connect, tmp_path):
    path = config(tmp_path, "log-level = 'notice'\n")
    srv = FileLevelServer(("--config", path)).start()
    try:
        adm = connect(srv.address)
        assert adm.admin("verbose") == "OK NOTICE\n"
        Path(path).write_text("log-level = 'debug'\n")
        srv.signal(signal.SIGHUP)
        wait_for_log(srv, "reloaded")
        # every front answers with its own level: ask on fresh connections
        for _ in range(6):
            assert connect(srv.address).admin("verbose") == "OK DEBUG\n"
    finally:
        srv.stop()


def test_a_flag_still_overrides_the_file_after_a_reload(start_server, connect, tmp_path):
    path = config(tmp_path, "log-level = 'error'\n")
    srv = start_server("--config", path, "--log-level", "notice")
    Path(path).write_text("log-level = 'debug'\n")
    srv.signal(signal.SIGHUP)
    wait_for_log(srv, "reloaded")
    for _ in range(4):
        assert connect(srv.address).admin("verbose") == "OK NOTICE\n"


def test_sighup_to_the_whole_group_kills_nothing(start_server, connect):
    srv = start_server()
    pids = child_roles(srv.pid)
    assert len(pids) == 4
    for _ in range(6):
        os.killpg(srv.pid, signal.SIGHUP)  # the server is a session (and group) leader
        time.sleep(0.1)
    wait_for_log(srv, "(SIGHUP): no --config file", count=6)
    time.sleep(0.5)
    assert srv.proc is not None and srv.proc.poll() is None
    assert child_roles(srv.pid) == pids
    assert connect(srv.address).admin("version").startswith("OK")
    assert "killed by" not in srv.stderr_text()


def test_sighup_during_a_restart_of_a_child_kills_nothing(start_server, connect):
    srv = start_server()
    roles = child_roles(srv.pid)
    shard = next(pid for pid, role in roles.items() if role == "shard0")
    os.kill(shard, signal.SIGKILL)
    for _ in range(20):  # covers the new shard's start
        os.killpg(srv.pid, signal.SIGHUP)
        time.sleep(0.02)
    wait_for(lambda: len(child_roles(srv.pid)) == 4 and shard not in child_roles(srv.pid))
    time.sleep(0.5)
    log = srv.stderr_text()
    assert log.count("killed by") == 1, log  # the SIGKILL above, nothing else
    assert connect(srv.address).admin("version").startswith("OK")
