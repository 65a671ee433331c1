"""shardgear.client against real servers (shardgear and gearmand 1.1.20), with workers written
against the raw protocol (tests/gearclient.py) where the packets themselves matter."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shardgear.client import (
    AsyncClient,
    Client,
    ConnectionLost,
    JobException,
    JobFailed,
    NoServerAvailable,
    Priority,
    ServerError,
    Timeout,
    WorkComplete,
    WorkData,
    WorkStatus,
    WorkWarning,
)
from shardgear.testing import free_port
from shardgear.worker import Worker
from tests.gearclient import (
    GRAB_JOB_UNIQ,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    Conn,
    grab_until_job,
    wait_for,
    worker,
)
from tests.library.conftest import Target

pytestmark = pytest.mark.timeout(60)
TIMEOUT = 20.0


def raw_worker(address: str, func: str, *replies: tuple[int, tuple[bytes, ...]], jobs: int = 1):
    """A raw-protocol worker thread: takes ``jobs`` jobs and answers each with ``replies``
    (a reply argument ``b"$data"`` is the job's payload reversed). Returns (thread, seen)."""
    seen: list[list[bytes]] = []
    conn = worker(Conn(address), func)

    def run() -> None:
        try:
            for _ in range(jobs):
                _, args = grab_until_job(conn, GRAB_JOB_UNIQ, timeout=TIMEOUT)
                seen.append(args)
                for ptype, rargs in replies:
                    rargs = tuple(args[3][::-1] if a == b"$data" else a for a in rargs)
                    conn.send(ptype, args[0], *rargs)
        finally:
            time.sleep(0.2)
            conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen


COMPLETE_REVERSED = (WORK_COMPLETE, (b"$data",))


def test_run_returns_the_result(target: Target, fname: str) -> None:
    thread, seen = raw_worker(target.address, fname, COMPLETE_REVERSED)
    with Client(target.address) as client:
        assert client.run(fname, b"hello", timeout=TIMEOUT) == b"olleh"
    thread.join(TIMEOUT)
    assert seen[0][1:] == [fname.encode(), b"", b"hello"]


def test_events_stream_in_order(target: Target, fname: str) -> None:
    thread, _ = raw_worker(
        target.address,
        fname,
        (WORK_DATA, (b"part\0one",)),
        (WORK_WARNING, (b"careful",)),
        (WORK_STATUS, (b"1", b"2")),
        (WORK_COMPLETE, (b"end",)),
    )
    with Client(target.address) as client:
        job = client.submit(fname, "x", unique="u-" + fname)
        assert job.handle and job.function == fname and job.server == target.address
        events = list(job.events(timeout=TIMEOUT))
        assert events == [
            WorkData(b"part\0one"),
            WorkWarning(b"careful"),
            WorkStatus(1, 2),
            WorkComplete(b"end"),
        ]
        assert job.done and job.status == (1, 2) and job.result(0) == b"end"
    thread.join(TIMEOUT)


def test_exceptions_option_on_by_default(target: Target, fname: str) -> None:
    thread, _ = raw_worker(target.address, fname, (WORK_EXCEPTION, (b"it broke",)), jobs=2)
    with Client(target.address) as client:
        with pytest.raises(JobException) as info:
            client.run(fname, timeout=TIMEOUT)
        assert info.value.data == b"it broke"
    with Client(target.address, exceptions=False) as client, pytest.raises(JobFailed):
        client.run(fname, timeout=TIMEOUT)  # the server sends WORK_FAIL instead
    thread.join(TIMEOUT)


def test_work_fail(target: Target, fname: str) -> None:
    thread, _ = raw_worker(target.address, fname, (WORK_FAIL, ()))
    with Client(target.address) as client, pytest.raises(JobFailed) as info:
        client.submit(fname).result(TIMEOUT)
    assert info.value.function == fname and info.value.handle
    thread.join(TIMEOUT)


def test_background_status_and_status_unique(target: Target, fname: str) -> None:
    unique = "bg-" + uuid.uuid4().hex
    with Client(target.address) as client:
        job = client.submit_background(fname, b"data", unique=unique)
        assert job.background and job.done and job.handle
        status = client.get_status(job)
        assert (status.known, status.running) == (True, False)
        assert client.get_status(job.handle).known  # by handle alone: each server is asked
        by_unique = client.get_status_unique(unique)
        assert (by_unique.unique, by_unique.known, by_unique.running) == (unique, True, False)
        conn = worker(Conn(target.address), fname)
        _, args = grab_until_job(conn, GRAB_JOB_UNIQ, timeout=TIMEOUT)
        assert args[0].decode() == job.handle and args[2] == unique.encode()
        conn.send(WORK_STATUS, args[0], b"3", b"7")
        wait_for(lambda: client.get_status(job).numerator == 3, timeout=TIMEOUT)
        status = client.get_status(job)
        assert (status.running, status.numerator, status.denominator) == (True, 3, 7)
        conn.send(WORK_COMPLETE, args[0], b"")
        wait_for(lambda: not client.get_status(job).known, timeout=TIMEOUT)
        conn.close()
        with pytest.raises(Exception, match="background job has no result"):
            job.result()


def test_priorities_reach_the_worker_high_first(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        for prio in ("low", Priority.NORMAL, "high"):
            client.submit_background(fname, str(prio), priority=prio)
    conn = worker(Conn(target.address), fname)
    order = [grab_until_job(conn, GRAB_JOB_UNIQ, timeout=TIMEOUT)[1][3] for _ in range(3)]
    conn.close()
    assert order == [b"high", b"Priority.NORMAL", b"low"]


def test_epoch_job_in_the_past_runs_at_once(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        client.submit_background(fname, b"late", when=time.time() - 60)
    conn = worker(Conn(target.address), fname)
    assert grab_until_job(conn, GRAB_JOB_UNIQ, timeout=TIMEOUT)[1][3] == b"late"
    conn.close()


def test_cron_schedule_is_made_or_gets_the_servers_error(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        if target.kind == "shardgear":  # SUBMIT_JOB_SCHED makes a schedule (tests/*/test_cron.py)
            job = client.submit_background(fname, b"", schedule="0 3 1 1 *")
            assert job.handle
            with Conn(target.address) as admin:
                assert admin.admin(f"remove schedule {fname}") == "OK\r\n"
            return
        with pytest.raises(ServerError) as info:
            client.submit_background(fname, b"", schedule="*/5 * * * *")
    assert (info.value.code, info.value.text) == ("INVALID_COMMAND", "Command not expected")


def test_unique_too_large_gets_the_servers_error(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        with pytest.raises(ServerError) as info:
            client.submit(fname, unique="u" * 65)
        assert (info.value.code, info.value.text) == (
            "ARGUMENT_TOO_LARGE",
            "Unique value too large",
        )
        assert client.echo(b"still usable") == b"still usable"


def test_queue_full_gets_the_servers_error(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        client.submit_background(fname)  # the function exists from here
        with Conn(target.address) as admin:
            assert admin.admin(f"maxqueue {fname} 1").startswith("OK")
        with pytest.raises(ServerError) as info:
            client.submit_background(fname)
    assert (info.value.code, info.value.text) == ("QUEUE_ERROR", "Job queue is full")


def test_same_unique_twice_on_one_connection_gets_each_packet_once(
    target: Target, fname: str
) -> None:
    """python-gearman forks raise KeyError here; both servers send every packet once per
    submission, so the client sends the second submission only once."""
    thread, seen = raw_worker(target.address, fname, (WORK_DATA, (b"d",)), COMPLETE_REVERSED)
    with Client(target.address) as client:
        first = client.submit(fname, b"abc", unique="same-" + fname)
        second = client.submit(fname, b"other", unique="same-" + fname)
        assert first.handle == second.handle
        for job in (first, second):
            assert list(job.events(timeout=TIMEOUT)) == [WorkData(b"d"), WorkComplete(b"cba")]
    thread.join(TIMEOUT)
    assert len(seen) == 1


def test_two_clients_coalesce_on_the_server(target: Target, fname: str) -> None:
    with Client(target.address) as one, Client(target.address) as two:
        a = one.submit(fname, b"xyz", unique="co-" + fname)
        b = two.submit(fname, b"ignored", unique="co-" + fname)
        assert a.handle == b.handle
        # the worker starts only now: one already running could finish `a` before `b` arrives
        thread, seen = raw_worker(target.address, fname, COMPLETE_REVERSED)
        assert a.result(TIMEOUT) == b.result(TIMEOUT) == b"zyx"
    thread.join(TIMEOUT)
    assert len(seen) == 1


def test_reduce_job_reaches_a_grab_all_worker(target: Target, fname: str, run_worker) -> None:
    got: list[tuple[str, str]] = []
    w = Worker(target.address, grab="all")
    w.add_function(fname, lambda job: got.append((job.unique, job.reducer)) or job.data)
    run_worker(w)
    with Client(target.address) as client:
        assert client.run(fname, b"m", unique="r-" + fname, reducer="red", timeout=TIMEOUT) == b"m"
    assert got == [("r-" + fname, "red")]


def test_result_timeout(target: Target, fname: str) -> None:
    with Client(target.address) as client:
        job = client.submit(fname, b"nobody works on this")
        with pytest.raises(Timeout) as info:
            job.result(timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert client.get_status(job).known  # a timeout stops the wait, not the job
        with pytest.raises(Timeout):
            client.run(fname, timeout=0.2)


def test_one_client_shared_by_threads(target: Target, fname: str, run_worker) -> None:
    w = Worker(target.address, concurrency=4)
    w.add_function(fname, lambda job: job.data.upper())
    run_worker(w)
    errors: list[BaseException] = []
    with Client(target.address) as client:

        def use() -> None:
            try:
                for i in range(30):
                    data = f"{threading.get_ident()}-{i}".encode()
                    assert client.run(fname, data, timeout=TIMEOUT) == data.upper()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=use) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 2)
    assert not errors


def test_nothing_listens() -> None:
    port = free_port()
    with Client(f"127.0.0.1:{port}") as client, pytest.raises(NoServerAvailable) as info:
        client.submit("f")
    assert isinstance(info.value, ConnectionError) and f"127.0.0.1:{port}" in str(info.value)


def test_closed_client_fails_waiting_jobs(target: Target, fname: str) -> None:
    client = Client(target.address)
    job = client.submit(fname)
    client.close()
    with pytest.raises(ConnectionLost):
        job.result(timeout=5)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"function": ""}, ValueError),
        ({"function": "a\0b"}, ValueError),
        ({"function": "f", "unique": "a\0"}, ValueError),
        ({"function": "f", "data": 5}, TypeError),
        ({"function": "f", "priority": "urgent"}, ValueError),
        ({"function": "f", "timeout": -1}, ValueError),
    ],
)
def test_bad_arguments_are_refused_before_sending(kwargs: dict[str, Any], error: type) -> None:
    with Client(f"127.0.0.1:{free_port()}") as client, pytest.raises(error):
        client.submit(**kwargs)


def test_background_only_arguments() -> None:
    with Client("127.0.0.1:1") as client:
        with pytest.raises(ValueError, match="crontab"):
            client.submit_background("f", schedule="* * *")
        with pytest.raises(ValueError, match="cannot be combined"):
            client.submit_background("f", when=1, schedule="* * * * *")
        with pytest.raises(ValueError, match="no priority"):
            client.submit_background("f", when=1, priority="high")


# -- asyncio ------------------------------------------------------------------------------------


def arun(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), 45))


def test_async_run_events_status(target: Target, fname: str) -> None:
    thread, _ = raw_worker(
        target.address,
        fname,
        (WORK_DATA, (b"p",)),
        (WORK_STATUS, (b"1", b"1")),
        COMPLETE_REVERSED,
        jobs=2,
    )

    async def main() -> None:
        async with AsyncClient(target.address) as client:
            assert await client.echo(b"e") == b"e"
            assert await client.run(fname, b"ab", timeout=TIMEOUT) == b"ba"
            job = await client.submit(fname, b"cd")
            events = [e async for e in job.events(timeout=TIMEOUT)]
            assert events == [WorkData(b"p"), WorkStatus(1, 1), WorkComplete(b"dc")]
            bg = await client.submit_background(fname + "-bg", b"", unique="u" + fname)
            assert (await client.get_status(bg)).known
            assert (await client.get_status_unique("u" + fname)).known
            if target.kind == "gearmand":  # shardgear makes a schedule (tests/*/test_cron.py)
                with pytest.raises(ServerError):
                    await client.submit_background(fname, schedule="* * * * *")

    arun(main)
    thread.join(TIMEOUT)


def test_async_many_in_flight_on_one_connection(target: Target, fname: str, run_worker) -> None:
    w = Worker(target.address, concurrency=4)
    w.add_function(fname, lambda job: job.data[::-1])
    run_worker(w)

    async def main() -> None:
        async with AsyncClient(target.address) as client:
            data = [b"job-%d" % i for i in range(200)]
            results = await asyncio.gather(*(client.run(fname, d, timeout=TIMEOUT) for d in data))
            assert results == [d[::-1] for d in data]
            job = await client.submit(fname + "-none")
            with pytest.raises(Timeout):
                await job.result(timeout=0.1)

    arun(main)


def test_async_nothing_listens() -> None:
    async def main() -> None:
        async with AsyncClient(f"127.0.0.1:{free_port()}") as client:
            with pytest.raises(NoServerAvailable):
                await client.run("f")

    arun(main)
