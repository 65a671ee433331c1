"""shardgear.testing.Server and its pytest fixtures (shardgear.pytest_plugin)."""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from shardgear.client import Client
from shardgear.testing import Server, ServerError, free_port
from tests.conftest import REPO
from tests.gearclient import Conn

pytestmark = pytest.mark.timeout(90)


def test_context_manager_starts_and_stops_cleanly(tmp_path: Path) -> None:
    with Server() as server:
        assert server.running and server.address == f"127.0.0.1:{server.port}"
        with Conn(server.address) as c:
            assert c.admin("getpid") == f"OK {server.pid}\n"
            assert "\t" not in c.admin("status")  # a fresh server: no functions
        state_dir = server.state_dir
        assert os.path.isdir(state_dir)
        assert glob.glob(f"/dev/shm/shardgear.{server.port}.*")
    assert not server.running
    assert not os.path.exists(state_dir) and not os.path.exists(server.log_path)
    assert not glob.glob(f"/dev/shm/shardgear.{server.port}.*")
    server.stop()  # stopping again is harmless


def test_one_front_one_shard_by_default() -> None:
    with Server() as server:
        assert "--fronts 1 --shards 1" in " ".join(server.command())


def test_kill_then_stop_leaves_nothing(tmp_path: Path) -> None:
    server = Server().start()
    port, pid = server.port, server.pid
    server.kill()
    assert not server.running
    assert glob.glob(f"/dev/shm/shardgear.{port}.{pid}.*")  # a SIGKILL leaves segments...
    server.stop()
    assert not glob.glob(f"/dev/shm/shardgear.{port}.{pid}.*")  # ...that stop() removes


def test_restart_on_the_same_port_keeps_background_jobs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    with Server(state_dir=state) as first:
        port = first.port
        with Client(first.address) as client:
            handle = client.submit_background("kept", b"x").handle
    with Server(port=port, state_dir=state) as second, Client(second.address) as client:
        assert client.get_status(handle).known
    assert state.is_dir()  # a state directory the caller gave is left alone


def test_a_server_that_cannot_start_reports_its_log() -> None:
    with pytest.raises(ServerError, match="exited with status 2"):
        Server("--no-such-flag").start()


def test_a_taken_port_is_reported() -> None:
    with Server() as server, pytest.raises(ServerError, match="taken"):
        # SO_REUSEPORT lets a second shardgear bind the same port; the getpid check sees it
        Server(port=server.port, startup_timeout=5).start()


def test_free_port_is_bindable() -> None:
    assert 0 < free_port() < 65536


def test_fixtures(shardgear_server: Server, make_shardgear_server) -> None:
    assert shardgear_server.running
    extra = make_shardgear_server("--job-retries", "2", fronts=2)
    assert extra.running and extra.port != shardgear_server.port
    assert "--job-retries 2" in " ".join(extra.command())


def test_entry_point_names_the_plugin() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = meta["project"]["entry-points"]["pytest11"]["shardgear"]
    module = importlib.import_module(target)
    assert {"shardgear_server", "make_shardgear_server"} <= set(vars(module))


def test_a_users_test_suite_gets_the_fixtures(tmp_path: Path) -> None:
    """What a project that installs shardgear writes: no conftest, just the fixture."""
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(
            """
            from shardgear.client import Client

            def test_echo(shardgear_server):
                with Client(shardgear_server.address) as client:
                    assert client.echo(b"hi") == b"hi"

            def test_factory(make_shardgear_server):
                assert make_shardgear_server().running
            """
        )
    )
    installed = any(
        ep.name == "shardgear" and ep.value == "shardgear.pytest_plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    plugin = [] if installed else ["-p", "shardgear.pytest_plugin"]  # an older install
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, "test_user.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=80,
    )
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    assert b"2 passed" in r.stdout
