"""shardgear.worker against real servers (shardgear and gearmand 1.1.20)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from shardgear.client import AsyncClient, Client, JobException, JobFailed, WorkData
from shardgear.worker import AsyncWorker, Worker, WorkerJob, WorkException, WorkFail
from tests.conftest import REPO
from tests.gearclient import Conn as RawConn
from tests.gearclient import parse_status, parse_workers, wait_for
from tests.library.conftest import Target

pytestmark = pytest.mark.timeout(90)
TIMEOUT = 20.0


def status(address: str, func: str) -> list[int]:
    """[total, running, workers] of ``func`` in the server's ``status``."""
    with RawConn(address) as c:
        return parse_status(c.admin("status")).get(func, [0, 0, 0])


def worker_count(address: str, func: str) -> int:
    with RawConn(address) as c:
        return sum(func in funcs for _, _, _, funcs in parse_workers(c.admin("workers")))


def test_functions_results_and_failures(target: Target, fname: str, run_worker) -> None:
    w = Worker(target.address, client_id="lib-test")

    @w.function(fname)
    def main(job: WorkerJob) -> Any:
        assert job.function == fname and job.server == target.address
        if job.data == b"str":
            return "text é"
        if job.data == b"none":
            return None
        if job.data == b"fail":
            raise WorkFail()
        if job.data == b"exc":
            raise WorkException(b"payload\0bytes")
        if job.data == b"bug":
            raise ValueError("bad input")
        job.send_data(b"chunk")
        job.send_warning("w")
        job.send_status(1, 3)
        return job.unique.encode() + job.data

    @w.function(timeout=30)
    def echo_unique(job: WorkerJob) -> bytes:  # name from the function: "echo_unique"
        return job.unique.encode()

    assert set(w.functions) == {fname, "echo_unique"}
    run_worker(w)
    with Client(target.address) as client:
        assert client.run(fname, "str", timeout=TIMEOUT) == "text é".encode()
        assert client.run(fname, "none", timeout=TIMEOUT) == b""
        with pytest.raises(JobFailed):
            client.run(fname, "fail", timeout=TIMEOUT)
        with pytest.raises(JobException) as info:
            client.run(fname, "exc", timeout=TIMEOUT)
        assert info.value.data == b"payload\0bytes"
        with pytest.raises(JobException, match="ValueError: bad input"):
            client.run(fname, "bug", timeout=TIMEOUT)
        job = client.submit(fname, b"!", unique="u1" + fname)
        events = list(job.events(timeout=TIMEOUT))
        assert events[0] == WorkData(b"chunk") and job.result(0) == b"u1" + fname.encode() + b"!"
        assert job.status == (1, 3)
        assert client.run("echo_unique", unique="uu" + fname, timeout=TIMEOUT) == (
            b"uu" + fname.encode()
        )


def test_sleeping_worker_is_woken_for_later_jobs(target: Target, fname: str, run_worker) -> None:
    """After NO_JOB the worker sends PRE_SLEEP and waits for NOOP: jobs submitted long after
    it went to sleep still reach it (nothing polls)."""
    w = Worker(target.address)
    w.add_function(fname, lambda job: job.data * 2)
    run_worker(w)
    wait_for(lambda: worker_count(target.address, fname) == 1, timeout=TIMEOUT)
    with Client(target.address) as client:
        for i in range(3):
            threading.Event().wait(0.3)
            assert client.run(fname, b"%d" % i, timeout=TIMEOUT) == b"%d%d" % (i, i)


def test_concurrency_limit(target: Target, fname: str, run_worker) -> None:
    release = threading.Event()
    running: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()

    def slow(job: WorkerJob) -> bytes:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        release.wait(TIMEOUT)
        with lock:
            running.pop()
        return job.data

    w = Worker(target.address, concurrency=3)
    w.add_function(fname, slow)
    run_worker(w)
    with Client(target.address) as client:
        jobs = [client.submit(fname, b"%d" % i) for i in range(5)]
        wait_for(lambda: peak[0] == 3, timeout=TIMEOUT)
        assert status(target.address, fname)[:2] == [5, 3]  # the other two wait on the server
        release.set()
        assert [j.result(TIMEOUT) for j in jobs] == [b"%d" % i for i in range(5)]
    assert peak[0] == 3


def test_can_do_timeout_requeues_a_slow_job(target: Target, fname: str, run_worker) -> None:
    """CAN_DO_TIMEOUT (1 s): the server takes the job back from the slow worker and another
    worker completes it; the slow worker's late result is refused (JOB_NOT_FOUND, logged)."""
    release = threading.Event()
    slow = Worker(target.address)
    slow.add_function(fname, lambda job: release.wait(TIMEOUT) and b"late", timeout=1.0)
    run_worker(slow)
    with Client(target.address) as client:
        job = client.submit(fname, b"x")
        wait_for(lambda: status(target.address, fname)[1] == 1, timeout=TIMEOUT)
        fast = Worker(target.address)
        fast.add_function(fname, lambda job: b"rescued")
        run_worker(fast)
        assert job.result(TIMEOUT) == b"rescued"
    release.set()


@pytest.mark.parametrize("concurrency", [1, 2])
def test_graceful_stop_finishes_held_jobs_and_takes_no_more(
    target: Target, fname: str, concurrency: int
) -> None:
    started, release = threading.Event(), threading.Event()

    def hold(job: WorkerJob) -> bytes:
        started.set()
        release.wait(TIMEOUT)
        return b"finished " + job.data

    w = Worker(target.address, concurrency=concurrency)
    w.add_function(fname, hold)
    w.add_function(fname + "-other", lambda job: b"")
    thread = threading.Thread(target=w.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        with Client(target.address) as client:
            held = client.submit(fname, b"A")
            assert started.wait(TIMEOUT)
            w.stop(timeout=TIMEOUT)
            # no more registrations for what it does not hold: the other function goes at once
            wait_for(lambda: worker_count(target.address, fname + "-other") == 0, TIMEOUT)
            queued = client.submit_background(fname, b"B")
            release.set()
            assert held.result(TIMEOUT) == b"finished A"  # kept (gearmand requeues on CANT_DO)
            thread.join(TIMEOUT)
            assert not thread.is_alive()
            st = client.get_status(queued)
            assert (st.known, st.running) == (True, False)  # never taken
            wait_for(lambda: worker_count(target.address, fname) == 0, TIMEOUT)
    finally:
        release.set()
        w.stop(timeout=1)
        thread.join(TIMEOUT)


def test_stop_timeout_gives_up_on_held_jobs(target: Target, fname: str) -> None:
    """(With concurrency 1 the job runs on run()'s own thread, so the timeout can only take
    effect once it returns; with a pool run() returns and the job's thread carries on.)"""
    release = threading.Event()
    w = Worker(target.address, concurrency=2)

    @w.function(fname)
    def stuck(job: WorkerJob) -> bytes:
        release.wait(TIMEOUT)
        return b""

    thread = threading.Thread(target=w.run, kwargs={"handle_signals": False})
    thread.start()
    try:
        with Client(target.address) as client:
            job = client.submit_background(fname)
            wait_for(lambda: client.get_status(job).running, timeout=TIMEOUT)
            w.stop(timeout=0.3, wait=True)  # returns once run() returned
            assert not thread.is_alive()
            wait_for(lambda: not client.get_status(job).running, timeout=TIMEOUT)  # requeued
            assert client.get_status(job).known
    finally:
        release.set()
        thread.join(TIMEOUT)


def test_worker_reconnects_after_a_restart(target: Target, fname: str, run_worker) -> None:
    first = target.start()
    port = first.port
    w = Worker(first.address, backoff=(0.05, 0.2))
    w.add_function(fname, lambda job: b"served " + job.data)
    run_worker(w)
    with Client(first.address) as client:
        assert client.run(fname, b"1", timeout=TIMEOUT) == b"served 1"
    first.stop()
    second = target.start(port=port)
    wait_for(lambda: worker_count(second.address, fname) == 1, timeout=TIMEOUT)
    with Client(second.address) as client:
        assert client.run(fname, b"2", timeout=TIMEOUT) == b"served 2"


def test_add_and_remove_functions_while_running(target: Target, fname: str, run_worker) -> None:
    w = Worker(target.address)
    w.add_function(fname, lambda job: b"a")
    run_worker(w)
    w.add_function(fname + "-late", lambda job: b"b")
    with Client(target.address) as client:
        assert client.run(fname + "-late", timeout=TIMEOUT) == b"b"
        w.remove_function(fname)
        wait_for(lambda: worker_count(target.address, fname) == 0, timeout=TIMEOUT)
        assert client.run(fname + "-late", timeout=TIMEOUT) == b"b"


def test_run_needs_a_function() -> None:
    with pytest.raises(RuntimeError, match="register a function"):
        Worker("127.0.0.1:1").run(handle_signals=False)
    with pytest.raises(ValueError):
        Worker("127.0.0.1:1", concurrency=0)
    with pytest.raises(ValueError):
        Worker("127.0.0.1:1", grab="some")


# -- asyncio ------------------------------------------------------------------------------------


def test_async_worker_pool_of_50_concurrent_jobs(target: Target, fname: str) -> None:
    """50 jobs, each of which finishes only once all 50 run at the same time."""

    async def main() -> None:
        w = AsyncWorker(target.address, concurrency=50)
        running = 0
        peak = 0
        all_in = asyncio.Event()

        @w.function(fname)
        async def rendezvous(job: WorkerJob) -> bytes:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            if running == 50:
                all_in.set()
            await asyncio.wait_for(all_in.wait(), TIMEOUT)
            running -= 1
            return job.data + b"!"

        task = asyncio.create_task(w.run(handle_signals=False))
        async with AsyncClient(target.address) as client:
            data = [b"%d" % i for i in range(50)]
            results = await asyncio.gather(*(client.run(fname, d, timeout=TIMEOUT) for d in data))
        assert results == [d + b"!" for d in data] and peak == 50
        w.stop()
        await asyncio.wait_for(task, TIMEOUT)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_worker_plain_functions_and_failures(target: Target, fname: str) -> None:
    async def main() -> None:
        w = AsyncWorker(target.address, concurrency=4)

        @w.function(fname)
        def threaded(job: WorkerJob) -> bytes:  # runs on a thread; send_data is thread-safe
            job.send_data(b"from a thread")
            if job.data == b"fail":
                raise WorkFail()
            return job.data.upper()

        @w.function(fname + "-exc")
        async def broken(job: WorkerJob) -> bytes:
            raise RuntimeError("async bug")

        task = asyncio.create_task(w.run(handle_signals=False))
        async with AsyncClient(target.address) as client:
            job = await client.submit(fname, b"abc")
            first = await anext(job.events(timeout=TIMEOUT))
            assert first == WorkData(b"from a thread")
            assert await job.result() == b"ABC"
            with pytest.raises(JobFailed):
                await client.run(fname, b"fail", timeout=TIMEOUT)
            with pytest.raises(JobException, match="RuntimeError: async bug"):
                await client.run(fname + "-exc", timeout=TIMEOUT)
        w.stop()
        await asyncio.wait_for(task, TIMEOUT)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_graceful_stop(target: Target, fname: str) -> None:
    # concurrency=1: with a free slot, a GRAB sent before stop() may still be answered with the
    # job submitted after it (the server sees the two connections in either order), and the
    # worker then rightly runs it; this test is about what a stopping worker does not take.
    async def main() -> None:
        w = AsyncWorker(target.address, concurrency=1)
        started, release = asyncio.Event(), asyncio.Event()

        @w.function(fname)
        async def hold(job: WorkerJob) -> bytes:
            started.set()
            await release.wait()
            return b"done"

        task = asyncio.create_task(w.run(handle_signals=False))
        async with AsyncClient(target.address) as client:
            job = await client.submit(fname)
            await asyncio.wait_for(started.wait(), TIMEOUT)
            w.stop(timeout=TIMEOUT)
            queued = await client.submit_background(fname)
            release.set()
            assert await job.result(TIMEOUT) == b"done"
            await asyncio.wait_for(task, TIMEOUT)
            st = await client.get_status(queued)
            assert (st.known, st.running) == (True, False)

    asyncio.run(asyncio.wait_for(main(), 60))


WORKER_SCRIPT = """
import sys, time
from shardgear.worker import Worker

worker = Worker(sys.argv[1])

@worker.function(sys.argv[2])
def slow(job):
    print("started", flush=True)
    time.sleep(1.0)
    return b"done"

print("ready", flush=True)
worker.run()
print("stopped", flush=True)
"""


def test_sigterm_stops_a_worker_process_gracefully(target: Target, fname: str, tmp_path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, str(script), target.address, fname], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        with Client(target.address) as client:
            job = client.submit(fname)
            assert proc.stdout.readline() == b"started\n"
            proc.send_signal(signal.SIGTERM)
            assert job.result(TIMEOUT) == b"done"  # the held job finishes
        assert proc.wait(TIMEOUT) == 0
        assert proc.stdout.read() == b"stopped\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
