"""Fixtures for the client and worker library's tests: every test runs against shardgear
(``shardgear.testing.Server``, through its pytest fixtures) and against gearmand 1.1.20."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from shardgear.testing import Server as ShardgearServer
from shardgear.worker import Worker
from tests.conftest import Server
from tests.interop.tools import missing

TARGETS = ["shardgear", "gearmand"]


def require_gearmand() -> None:
    if shutil.which("gearmand") is None and shutil.which("/usr/sbin/gearmand") is None:
        missing("gearmand (gearman-job-server) is not installed")


@dataclass
class Target:
    """A server the test talks to, and how to start more of the same kind."""

    kind: str
    address: str
    start: Callable[..., Any]  # start(port=0) -> an object with .address, .port, kill, stop


@pytest.fixture(scope="session")
def gearmand_server() -> Iterator[Server]:
    require_gearmand()
    srv = Server(target="gearmand").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=TARGETS)
def target(
    request: pytest.FixtureRequest, make_shardgear_server: Callable[..., ShardgearServer]
) -> Iterator[Target]:
    """The module's shared server of each kind, and a factory of dedicated ones."""
    started: list[Server] = []
    if request.param == "shardgear":
        shared = request.getfixturevalue("shardgear_server")
        yield Target("shardgear", shared.address, make_shardgear_server)
        return

    def start_gearmand(port: int = 0) -> Server:
        srv = Server(target="gearmand", port=port).start()
        started.append(srv)
        return srv

    shared = request.getfixturevalue("gearmand_server")
    try:
        yield Target("gearmand", shared.address, start_gearmand)
    finally:
        for srv in started:
            srv.stop(check=False)


@pytest.fixture
def fname() -> str:
    """A function name no other test uses."""
    return f"lib-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def run_worker() -> Iterator[Callable[..., Worker]]:
    """Start ``Worker`` objects in threads (``run_worker(worker)``); stopped at teardown."""
    running: list[tuple[Worker, threading.Thread]] = []

    def start(worker: Worker) -> Worker:
        thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    yield start
    for worker, thread in running:
        worker.stop(timeout=5)
        thread.join(15)
        assert not thread.is_alive(), "a worker did not stop"
