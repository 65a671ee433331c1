"""shardgear's Python client and worker against PyPI ``gear`` on the same load.

Both libraries run the same load in this one process, in alternating rounds, against the same
server (gearmand 1.1.20 by default, so that the server is not what limits the rate): ``--workers``
worker threads, each with its own worker object (one connection, one job at a time, payload
returned reversed), and ``--clients`` client threads, each with its own client object, keeping
``--inflight`` foreground jobs outstanding (a submission waits for JOB_CREATED in both
libraries, as gear's ``submitJob`` does). gear's client is used as its docs say: a ``Client``
subclass whose ``handleWorkComplete`` marks the job done (an Event, no polling).

Reported per library: jobs/s (median of the rounds) and this process's CPU per job (both
libraries' clients and workers share it, so CPU per job is what the library costs), and the
ratios shardgear / gear. Every round is bounded by ``--round-timeout``.

    python -m bench.client_lib --jobs 4000 --rounds 5
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shardgear.client import Client
from shardgear.testing import Server, free_port
from shardgear.worker import Worker


class Load:
    def __init__(self, args: argparse.Namespace, address: str) -> None:
        self.address = address
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self.jobs = args.jobs
        self.clients = args.clients
        self.workers = args.workers
        self.inflight = args.inflight
        self.payload = b"x" * args.payload
        self.timeout = args.round_timeout


# -- shardgear -------------------------------------------------------------------------------------


def round_shardgear(load: Load, func: str) -> float:
    workers = []
    threads = []
    for _ in range(load.workers):
        w = Worker(load.address)
        w.add_function(func, lambda job: job.data[::-1])
        t = threading.Thread(target=w.run, kwargs={"handle_signals": False}, daemon=True)
        t.start()
        workers.append(w)
        threads.append(t)
    clients = [Client(load.address) for _ in range(load.clients)]
    clients[0].echo(b"")  # connected

    def client_thread(client: Client, count: int) -> None:
        outstanding: collections.deque[Any] = collections.deque()
        for _ in range(count):
            outstanding.append(client.submit(func, load.payload))
            if len(outstanding) >= load.inflight:
                outstanding.popleft().result(load.timeout)
        while outstanding:
            outstanding.popleft().result(load.timeout)

    try:
        return _timed(load, clients, client_thread)
    finally:
        for c in clients:
            c.close()
        for w in workers:
            w.stop(timeout=1)
        for t in threads:
            t.join(10)


# -- gear ------------------------------------------------------------------------------------------


def round_gear_nodelay(load: Load, func: str) -> float:
    """gear with TCP_NODELAY set on its sockets (it sets none: a worker's WORK_COMPLETE and
    next GRAB_JOB then wait on Nagle and delayed ACKs, ~40 ms a job), to compare the
    libraries' own costs rather than gear's socket setup."""
    import gear

    original = gear.Connection.connect

    def connect(self: Any) -> None:
        original(self)
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    gear.Connection.connect = connect
    try:
        return round_gear(load, func)
    finally:
        gear.Connection.connect = original


def round_gear(load: Load, func: str) -> float:
    import gear

    class DoneJob(gear.Job):  # type: ignore[misc]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.finished = threading.Event()

    class EventClient(gear.Client):  # type: ignore[misc]
        def handleWorkComplete(self, packet: Any) -> Any:
            job = super().handleWorkComplete(packet)
            job.finished.set()
            return job

        def handleWorkFail(self, packet: Any) -> Any:
            job = super().handleWorkFail(packet)
            job.finished.set()
            return job

    stop = threading.Event()
    workers = []
    threads = []
    for i in range(load.workers):
        w = gear.Worker(f"bench-worker-{i}")
        w.addServer(load.host, load.port)
        w.waitForServer()
        w.registerFunction(func)

        def work(w: Any = w) -> None:
            while not stop.is_set():
                try:
                    job = w.getJob()
                except gear.InterruptedError:
                    return
                job.sendWorkComplete(job.arguments[::-1])

        t = threading.Thread(target=work, daemon=True)
        t.start()
        workers.append(w)
        threads.append(t)
    clients = []
    for i in range(load.clients):
        c = EventClient(f"bench-client-{i}")
        c.addServer(load.host, load.port)
        c.waitForServer()
        clients.append(c)

    def client_thread(client: Any, count: int) -> None:
        outstanding: collections.deque[Any] = collections.deque()
        for _ in range(count):
            job = DoneJob(func.encode(), load.payload)
            client.submitJob(job, timeout=load.timeout)
            outstanding.append(job)
            if len(outstanding) >= load.inflight:
                _gear_wait(outstanding.popleft(), load.timeout)
        while outstanding:
            _gear_wait(outstanding.popleft(), load.timeout)

    try:
        return _timed(load, clients, client_thread)
    finally:
        stop.set()
        for c in clients:
            c.shutdown()
        for w in workers:
            w.stopWaitingForJobs()
        for t in threads:
            t.join(10)
        for w in workers:
            w.shutdown()


def _gear_wait(job: Any, timeout: float) -> None:
    if not job.finished.wait(timeout):
        raise TimeoutError("gear job did not complete")
    if job.failure:
        raise RuntimeError("gear job failed")


# -- the rounds ------------------------------------------------------------------------------------


def _timed(load: Load, clients: list[Any], body: Callable[[Any, int], None]) -> float:
    share = [
        load.jobs // load.clients + (i < load.jobs % load.clients) for i in range(len(clients))
    ]
    errors: list[BaseException] = []

    def run(client: Any, count: int) -> None:
        try:
            body(client, count)
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=run, args=(c, n)) for c, n in zip(clients, share, strict=True)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(load.timeout)
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError("a round did not finish in time")
    return elapsed


def start_server(kind: str) -> tuple[str, Callable[[], None]]:
    if kind == "shardgear":
        server = Server(log_level="warning").start()
        return server.address, server.stop
    exe = shutil.which("gearmand") or "/usr/sbin/gearmand"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-L", "127.0.0.1", "-p", str(port), "-t", "2", "-l", "none"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            Client(f"127.0.0.1:{port}", timeout=1).echo(b"")
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    return f"127.0.0.1:{port}", stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", choices=["gearmand", "shardgear"], default="gearmand")
    p.add_argument("-n", "--jobs", type=int, default=4000, help="jobs per round")
    p.add_argument("-c", "--clients", type=int, default=4, help="client threads")
    p.add_argument("-w", "--workers", type=int, default=4, help="worker threads")
    p.add_argument("-i", "--inflight", type=int, default=8, help="jobs outstanding per client")
    p.add_argument("-s", "--payload", type=int, default=64, help="payload bytes")
    p.add_argument("-r", "--rounds", type=int, default=5, help="rounds per library")
    p.add_argument("--round-timeout", type=float, default=60.0)
    p.add_argument("--json", action="store_true", help="print the raw rounds as JSON")
    p.add_argument(
        "--plain-gear-jobs",
        type=int,
        default=200,
        help="jobs per round of gear as shipped (no TCP_NODELAY: about 90 jobs/s whatever the "
        "load, so fewer jobs); 0 leaves it out",
    )
    args = p.parse_args(argv)
    address, stop = start_server(args.server)
    libraries: dict[str, Callable[[Load, str], float]] = {"shardgear": round_shardgear}
    libraries["gear+nodelay"] = round_gear_nodelay
    if args.plain_gear_jobs:
        libraries["gear"] = round_gear
    jobs = {name: args.jobs for name in libraries}
    jobs["gear"] = min(args.jobs, args.plain_gear_jobs)
    rates: dict[str, list[float]] = {name: [] for name in libraries}
    cpus: dict[str, list[float]] = {name: [] for name in libraries}
    try:
        for r in range(args.rounds):
            names = list(libraries)
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                load = Load(args, address)
                load.jobs = n = jobs[name]
                cpu = time.process_time()
                elapsed = libraries[name](load, f"bench-{name}-{r}")
                cpu = time.process_time() - cpu
                rates[name].append(n / elapsed)
                cpus[name].append(cpu / n * 1e6)
                print(
                    f"round {r + 1} {name:12} {n / elapsed:8.0f} jobs/s"
                    f" {cpu / n * 1e6:6.0f} us CPU/job",
                    file=sys.stderr,
                )
    finally:
        stop()
    med = {n: statistics.median(v) for n, v in rates.items()}
    med_cpu = {n: statistics.median(v) for n, v in cpus.items()}
    if args.json:
        print(json.dumps({"args": vars(args), "rates": rates, "cpu_us_per_job": cpus}))
    print(
        f"server {args.server}; {args.clients} clients x {args.inflight} in flight, "
        f"{args.workers} workers, {args.payload} B, {args.jobs} jobs x {args.rounds} rounds"
    )
    print("| library | jobs/s (median) | process CPU us/job (median) | shardgear against it |")
    print("|---|---|---|---|")
    for name in libraries:
        ratio = ""
        if name != "shardgear":
            ratio = (
                f"**{med['shardgear'] / med[name]:.2f}x** the rate, "
                f"{med_cpu['shardgear'] / med_cpu[name]:.2f}x the CPU per job"
            )
        print(f"| {name} | {med[name]:,.0f} | {med_cpu[name]:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
