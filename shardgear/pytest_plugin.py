"""pytest fixtures that start a real shardgear server (see :mod:`shardgear.testing`).

Registered through the ``pytest11`` entry point, so installing shardgear is enough::

    def test_reverse(shardgear_server):
        with Client(shardgear_server.address) as client:
            ...

    def test_failover(make_shardgear_server):
        a, b = make_shardgear_server(), make_shardgear_server("--job-retries", "1")
        ...

* ``shardgear_server``: one server for the whole session (per pytest-xdist worker); tests keep
  apart by using function names of their own.
* ``make_shardgear_server(*args, **kwargs)``: a factory of servers for one test, with the
  arguments of :class:`shardgear.testing.Server`; every server it started is stopped at the end
  of the test.

A server that fails to start fails the test with its log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardgear.testing import Server


@pytest.fixture(scope="session")
def shardgear_server() -> Iterator[Server]:
    """A shardgear server (1 front x 1 shard, free loopback port) shared by the session."""
    with Server() as server:
        yield server


@pytest.fixture
def make_shardgear_server() -> Iterator[Callable[..., Server]]:
    """Factory: ``make_shardgear_server(*flags, **Server_kwargs)`` starts a server for this
    test; all of them are stopped when the test ends."""
    started: list[Server] = []

    def make(*args: str, **kwargs: Any) -> Server:
        server = Server(*args, **kwargs)
        started.append(server)
        return server.start()

    yield make
    for server in reversed(started):
        server.stop()
