"""Two servers, one killed with SIGKILL: the client moves jobs to the other, the worker keeps
serving the other and comes back to the first when it restarts (shardgear and gearmand)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from shardgear._servers import ServerPool, parse_servers
from shardgear.client import AsyncClient, Client, ConnectionLost
from shardgear.worker import AsyncWorker, Worker, WorkerJob
from tests.gearclient import Conn as RawConn
from tests.gearclient import parse_workers, wait_for
from tests.library.conftest import Target

pytestmark = pytest.mark.timeout(120)
TIMEOUT = 20.0


def kill(server: Any) -> None:
    """SIGKILL a server started by either fixture."""
    if hasattr(server, "kill"):
        server.kill()
    else:
        server.signal(signal.SIGKILL)
        server.wait(10)


def registered(address: str, func: str) -> bool:
    with RawConn(address) as c:
        return any(func in funcs for _, _, _, funcs in parse_workers(c.admin("workers")))


def uniques_of(servers: list[str], index: int, count: int, prefix: str) -> list[str]:
    """``count`` uniques whose first server on the ring is ``servers[index]``."""
    pool = ServerPool(parse_servers(servers))
    out = []
    for i in range(10_000):
        unique = f"{prefix}-{i}"
        if pool.ring_order(unique.encode())[0] == index:
            out.append(unique)
            if len(out) == count:
                return out
    raise AssertionError("no such uniques")


def served_by(job: WorkerJob) -> bytes:
    return f"{job.server}|{job.data.decode()}".encode()


def test_client_and_worker_fail_over(target: Target, fname: str, run_worker) -> None:
    a, b = target.start(), target.start()
    servers = [a.address, b.address]
    w = Worker(servers, concurrency=2, backoff=(0.05, 0.2))
    w.add_function(fname, served_by)
    run_worker(w)
    wait_for(lambda: registered(a.address, fname) and registered(b.address, fname), TIMEOUT)
    on_a, on_b = uniques_of(servers, 0, 5, fname), uniques_of(servers, 1, 5, fname)

    with Client(servers, backoff=(0.2, 1.0)) as client:
        # a unique goes to its server on the ring (so coalescing works across servers)
        for unique, server in [*((u, a) for u in on_a), *((u, b) for u in on_b)]:
            job = client.submit(fname, unique, unique=unique)
            assert job.server == server.address
            assert job.result(TIMEOUT) == f"{server.address}|{unique}".encode()
        stranded = client.submit(fname + "-nobody", unique=on_a[0])  # queued on a, no worker
        assert stranded.server == a.address

        kill(a)

        with pytest.raises(ConnectionLost):
            stranded.result(TIMEOUT)  # its server died: the client is told, not left waiting
        for unique in [*on_a, *on_b]:  # a's uniques now go to b
            job = client.submit(fname, unique, unique=unique)
            assert job.server == b.address
            assert job.result(TIMEOUT) == f"{b.address}|{unique}".encode()
        for i in range(4):  # and so do jobs without a unique
            assert client.run(fname, str(i), timeout=TIMEOUT) == f"{b.address}|{i}".encode()

    again = target.start(port=a.port)  # the worker reconnects with backoff
    wait_for(lambda: registered(again.address, fname), TIMEOUT)
    with Client(servers) as client:
        job = client.submit(fname, "back", unique=on_a[1])
        assert job.server == a.address
        assert job.result(TIMEOUT) == f"{a.address}|back".encode()


def test_async_client_and_worker_fail_over(target: Target, fname: str) -> None:
    a, b = target.start(), target.start()
    servers = [a.address, b.address]
    on_a = uniques_of(servers, 0, 10, fname)

    async def main() -> None:
        w = AsyncWorker(servers, concurrency=10, backoff=(0.05, 0.2))

        @w.function(fname)
        async def work(job: WorkerJob) -> bytes:
            return served_by(job)

        task = asyncio.create_task(w.run(handle_signals=False))
        async with AsyncClient(servers, backoff=(0.2, 1.0)) as client:
            results = await asyncio.gather(*(client.run(fname, u, unique=u) for u in on_a))
            assert results == [f"{a.address}|{u}".encode() for u in on_a]
            kill(a)
            results = await asyncio.gather(
                *(client.run(fname, u, unique=u, timeout=TIMEOUT) for u in on_a)
            )
            assert results == [f"{b.address}|{u}".encode() for u in on_a]
        w.stop()
        await asyncio.wait_for(task, TIMEOUT)

    asyncio.run(asyncio.wait_for(main(), 90))
