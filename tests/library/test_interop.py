"""The library with other projects' Gearman clients and workers, on shardgear and gearmand:
the `gearman` CLI (libgearman), Perl Gearman::Client / Gearman::Worker, PyPI `gear`, and PHP's
gearman extension (libgearman)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from shardgear.client import Client, JobFailed, WorkComplete, WorkData, WorkStatus
from shardgear.worker import Worker, WorkerJob
from tests.gearclient import wait_for
from tests.interop import tools
from tests.library.conftest import Target

pytestmark = [
    pytest.mark.interop,
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
]
TIMEOUT = 20.0
OTHERS = ["cli", "perl", "gear", "php"]


@pytest.fixture
def procs() -> Iterator[tools.Procs]:
    p = tools.Procs()
    yield p
    p.stop_all()


def other_worker(kind: str, procs: tools.Procs, address: str, func: str, count: int) -> Callable:
    """Start another project's worker that reverses payloads; returns a function that waits
    for it to finish its jobs."""
    if kind == "cli":
        tools.require_tools("gearman")
        p = tools.cli_worker(procs, address, func, "rev", count=count)
        return lambda: p.wait(TIMEOUT) == 0
    if kind == "perl":
        tools.require_perl()
        p = tools.perl_worker(procs, address, func, "rev", count=count)
        return lambda: p.wait(TIMEOUT) == 0
    if kind == "php":
        tools.require_php()
        p = tools.php_worker(procs, address, func, "rev", count=count)
        return lambda: p.wait(TIMEOUT) == 0
    gw = tools.GearWorker(address, func, lambda b: b[::-1], count=count)
    gw.start()

    def done() -> bool:
        gw.join(TIMEOUT)
        gw.stop()
        return len(gw.handled) == count

    return done


@pytest.mark.parametrize("kind", OTHERS)
def test_our_client_with_their_worker(target: Target, fname: str, procs, kind: str) -> None:
    finished = other_worker(kind, procs, target.address, fname, count=3)
    with Client(target.address) as client:
        assert client.run(fname, b"hello", timeout=TIMEOUT) == b"olleh"
        job = client.submit(fname, "abc", unique="u-" + fname, priority="high")
        assert job.result(TIMEOUT) == b"cba"
        done = client.submit_background(fname, b"bg")
        wait_for(lambda: not client.get_status(done).known, timeout=TIMEOUT)
    assert finished()


def their_client(kind: str, address: str, func: str, data: str, mode: str = "fg") -> bytes:
    """Run another project's client once; return its output (a result, or a handle for bg)."""
    if kind == "cli":
        tools.require_tools("gearman")
        flags = {"fg": (), "high": ("-I",), "bg": ("-b",)}[mode]
        return tools.cli_client(address, func, data, *flags)
    if kind == "perl":
        tools.require_perl()
        r = tools.perl_client(address, func, data, mode)
        assert r.returncode == 0, r
        return r.stdout
    if kind == "php":
        tools.require_php()
        r = tools.php_client(address, func, data, mode)
        assert r.returncode == 0, r
        return r.stdout
    client = tools.gear_client(address)
    try:
        job = tools.gear_run(client, func, data.encode(), background=mode == "bg")
        return job.handle if mode == "bg" else b"".join(job.data)
    finally:
        client.shutdown()


@pytest.fixture
def our_worker(target: Target, fname: str, run_worker) -> list[WorkerJob]:
    seen: list[WorkerJob] = []
    w = Worker(target.address, concurrency=2)

    @w.function(fname)
    def reverse(job: WorkerJob) -> bytes:
        seen.append(job)
        return job.data[::-1]

    run_worker(w)
    return seen


@pytest.mark.parametrize("kind", OTHERS)
def test_their_client_with_our_worker(
    target: Target, fname: str, our_worker: list[WorkerJob], kind: str
) -> None:
    assert their_client(kind, target.address, fname, "hello") == b"olleh"
    high = "high" if kind != "gear" else "fg"
    assert their_client(kind, target.address, fname, "second", high) == b"dnoces"
    handle = their_client(kind, target.address, fname, "background", "bg")
    assert kind == "cli" or handle.strip()  # (gearman -b prints nothing)
    wait_for(lambda: len(our_worker) == 3, timeout=TIMEOUT)
    assert [j.data for j in our_worker] == [b"hello", b"second", b"background"]


def test_php_worker_progress_reaches_our_client(target: Target, fname: str, procs) -> None:
    tools.require_php()
    p = tools.php_worker(procs, target.address, fname, "progress", count=1)
    with Client(target.address) as client:
        events = list(client.submit(fname, b"xyz").events(timeout=TIMEOUT))
    assert events == [WorkStatus(1, 2), WorkData(b"chunk"), WorkComplete(b"zyx")]
    assert p.wait(TIMEOUT) == 0


def test_perl_worker_failure_reaches_our_client(target: Target, fname: str, procs) -> None:
    tools.require_perl()
    tools.perl_worker(procs, target.address, fname, "fail", count=1)
    with Client(target.address) as client, pytest.raises(JobFailed):
        client.run(fname, b"x", timeout=TIMEOUT)


def test_our_worker_status_reaches_a_gear_client(target: Target, fname: str, run_worker) -> None:
    w = Worker(target.address)

    @w.function(fname)
    def progress(job: WorkerJob) -> bytes:
        job.send_status(2, 5)
        job.send_data(b"part")
        return b"end"

    run_worker(w)
    client = tools.gear_client(target.address)
    try:
        job = tools.gear_run(client, fname, b"x")
    finally:
        client.shutdown()
    assert job.data == [b"part", b"end"]
    assert (job.numerator, job.denominator) == (b"2", b"5")
