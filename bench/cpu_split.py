"""CPU per job of each shardgear role (fronts, shards), to project scaling to more cores.

    python -m bench.cpu_split --layouts 1x1 2x2 --rounds 3 -- -n 100000 -m fg

For each fronts x shards layout: start shardgear, run the load generator (the arguments after
``--``) against it, and report jobs/s and the CPU microseconds per job spent in all fronts and in
all shards. On a host with more cores than this one, throughput is bounded by
``cores_available_to_role / (us_per_job_of_role / roles_processes)``: see BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import orjson

from bench import procstats, servers

REPO = Path(__file__).resolve().parent.parent


def role_of(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"shardgear.child" in argv:
        return argv[argv.index(b"shardgear.child") + 1].decode()
    return None


def role_ticks(root: int) -> dict[str, int]:
    totals: dict[str, int] = {"front": 0, "shard": 0}
    for pid in procstats.descendants([root]):
        role = role_of(pid)
        ticks = procstats.cpu_ticks(pid)
        if role in totals and ticks is not None:
            totals[role] += ticks
    return totals


def run_once(layout: str, load_args: list[str]) -> tuple[float, dict[str, float]]:
    spec = servers.parse_spec(f"shardgear:{layout}")
    server = servers.start(spec)
    try:
        assert server.proc is not None
        before = role_ticks(server.proc.pid)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                f"127.0.0.1:{server.port}",
                "--json",
                "--no-progress",
                *load_args,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            check=True,
        ).stdout
        after = role_ticks(server.proc.pid)
    finally:
        server.stop()
    summary = orjson.loads(out[out.index("{") :])
    jobs, rate = summary["jobs_done"], summary["jobs_per_s"]
    us = {role: (after[role] - before[role]) / procstats.TICK * 1e6 / jobs for role in before}
    return float(rate), us


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", nargs="+", default=["1x1", "1x2", "2x1", "2x2"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("load", nargs="*", help="load generator arguments (after --)")
    a = p.parse_args()
    load = a.load or ["-n", "100000"]
    results: dict[str, list[tuple[float, dict[str, float]]]] = {x: [] for x in a.layouts}
    for r in range(a.rounds):
        for layout in a.layouts:
            rate, us = run_once(layout, load)
            results[layout].append((rate, us))
            print(
                f"# round {r + 1} {layout}: {rate:,.0f} jobs/s, front {us['front']:.1f} us/job,"
                f" shard {us['shard']:.1f} us/job",
                file=sys.stderr,
            )
    print("layout  jobs/s (median)  front us/job  shard us/job  total us/job")
    for layout, runs in results.items():
        rate = statistics.median(x[0] for x in runs)
        front = statistics.median(x[1]["front"] for x in runs)
        shard = statistics.median(x[1]["shard"] for x in runs)
        print(f"{layout:6}  {rate:15,.0f}  {front:12.1f}  {shard:12.1f}  {front + shard:12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
