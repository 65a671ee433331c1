"""Micro-benchmark of the persistent job store (shardgear.store.SqliteStore).

Prints microseconds per job for add + commit in batches of 1, 16 and 256 jobs, and for remove +
commit in the same batch sizes, with ``synchronous=NORMAL`` and ``FULL`` (WAL mode in both). A batch
is what one event-loop iteration of a shard writes. With ``--procs N`` it also runs N writer
processes on one file at once (as N shards do): mean µs/job per process and the aggregate rate
of jobs added and removed per second over all processes.

    python -m bench.store_micro [--dir DIR] [--jobs 4096] [--size 100] [--seconds 5] [--procs 4]

DIR must be on the disk whose cost you want to know (the default is a temporary directory under
``$TMPDIR``; tmpfs makes FULL look as cheap as NORMAL).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from typing import Any

from shardgear.jobs import Function, Job
from shardgear.store import SqliteStore

BATCHES = (1, 16, 256)
MODES = ("normal", "full")


def make_jobs(n: int, size: int, tag: str) -> list[Job]:
    """`n` background jobs of `size` data bytes with distinct handles and uniques."""
    fn = Function(b"bench_fn", 0)
    payload = os.urandom(size)
    return [
        Job(b"H:%s:%d" % (tag.encode(), i), fn, b"u%d" % i, payload, 1, 0, b"", True)
        for i in range(n)
    ]


def run_batches(
    store: SqliteStore, jobs: list[Job], batch: int, seconds: float
) -> tuple[float, float, int]:
    """Add then remove `jobs` in batches of `batch`, one commit per batch (bounded by time).
    Returns (add s/job, remove s/job, jobs done)."""
    limit = time.perf_counter() + seconds
    done: list[Job] = []
    t0 = time.perf_counter()
    for i in range(0, len(jobs), batch):
        chunk = jobs[i : i + batch]
        for j in chunk:
            store.add(j)
        if store.commit():
            raise SystemExit(f"commit failed: {store.error}")
        done += chunk
        if time.perf_counter() > limit:
            break
    t1 = time.perf_counter()
    for i in range(0, len(done), batch):
        for j in done[i : i + batch]:
            store.remove(j)
        if store.commit():
            raise SystemExit(f"commit failed: {store.error}")
    t2 = time.perf_counter()
    n = max(len(done), 1)
    return (t1 - t0) / n, (t2 - t1) / n, len(done)


def _proc(
    path: str,
    mode: str,
    idx: int,
    n: int,
    batch: int,
    size: int,
    seconds: float,
    start: Any,
    results: Any,
) -> None:
    store = SqliteStore(path, synchronous=mode)
    jobs = make_jobs(n, size, f"p{idx}")
    start.wait()
    t = time.perf_counter()
    add, rem, done = run_batches(store, jobs, batch, seconds)
    results.put((add, rem, done, time.perf_counter() - t))
    store.close()


def _line(mode: object, batch: object, add: object, rem: object, last: object) -> str:
    return f"{mode!s:<12} {batch!s:>5} {add!s:>11} {rem!s:>14} {last!s:>11}"


def main() -> None:
    """Run the measurements and print a table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", default=None, help="directory for the database (default: temp)")
    parser.add_argument("--jobs", type=int, default=4096, help="jobs per measurement")
    parser.add_argument("--size", type=int, default=100, help="data bytes per job")
    parser.add_argument("--seconds", type=float, default=5.0, help="time bound per measurement")
    parser.add_argument("--procs", type=int, default=0, help="also run N concurrent writers")
    args = parser.parse_args()

    base = args.dir or tempfile.mkdtemp(prefix="store_micro.")
    try:
        print(f"sqlite in WAL mode under {base}; {args.size}-byte jobs; µs per job")
        print(
            f"{'synchronous':<12} {'batch':>5} {'add+commit':>11} {'remove+commit':>14} {'jobs':>6}"
        )
        for mode in MODES:
            for batch in BATCHES:
                path = os.path.join(base, f"{mode}-{batch}", "jobs.sqlite3")
                store = SqliteStore(path, synchronous=mode)
                if store.failed:
                    raise SystemExit(store.error)
                # warm up: create the pages the measurement will reuse
                run_batches(store, make_jobs(256, args.size, "w"), 256, args.seconds)
                jobs = make_jobs(args.jobs, args.size, "m")
                add, rem, n = run_batches(store, jobs, batch, args.seconds)
                store.close()
                print(_line(mode.upper(), batch, f"{add * 1e6:.1f}", f"{rem * 1e6:.1f}", n))
        if args.procs > 0:
            ctx = multiprocessing.get_context("spawn")
            print(f"\n{args.procs} writer processes on one file at once: mean µs/job per process")
            print(_line("synchronous", "batch", "add+commit", "remove+commit", "jobs/s, all"))
            for mode in MODES:
                for batch in BATCHES:
                    path = os.path.join(base, f"procs-{mode}-{batch}", "jobs.sqlite3")
                    SqliteStore(path, synchronous=mode).close()
                    start = ctx.Barrier(args.procs)
                    results = ctx.Queue()
                    procs = [
                        ctx.Process(
                            target=_proc,
                            args=(
                                path,
                                mode,
                                i,
                                args.jobs,
                                batch,
                                args.size,
                                args.seconds,
                                start,
                                results,
                            ),
                        )
                        for i in range(args.procs)
                    ]
                    for p in procs:
                        p.start()
                    got = [results.get(timeout=args.seconds * 4 + 60) for _ in procs]
                    for p in procs:
                        p.join(60)
                    add = sum(r[0] for r in got) / len(got)
                    rem = sum(r[1] for r in got) / len(got)
                    rate = sum(r[2] for r in got) / max(r[3] for r in got)
                    print(
                        _line(
                            mode.upper(), batch, f"{add * 1e6:.1f}", f"{rem * 1e6:.1f}", int(rate)
                        )
                    )
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
