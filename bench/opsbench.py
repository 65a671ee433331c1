"""Operations benchmarks: start and stop times, and what a Prometheus scrape costs under load.

    python -m bench.opsbench startstop [--rounds N]           shardgear and gearmand, idle
    python -m bench.opsbench scrape [--rounds N] [-n JOBS]    full load with and without scrapes

``startstop``: from exec to the first answered ``version`` on a fresh connection (start), and
from SIGTERM to the exit of the server (stop), for an idle server (shardgear 2x2 with its store,
gearmand --threads 2). Medians of the rounds.

``scrape``: the default shardgear-bench load (4 clients x 100 in flight, 16 workers, 64 B,
foreground) against shardgear 2x2 in four configurations, alternating round by round: metrics off;
``--metrics`` on, never scraped; scraped every second; scraped back to back (a scraper thread in a
loop). Reports jobs/s, the server's cores, scrapes done, scrape latency p50/p99 and the
supervisor's CPU per scrape (its CPU time over the run divided by the scrapes).

Loopback only; every run is bounded by its job count; servers are stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

GEARMAND = "/usr/sbin/gearmand"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"version\n")
            return s.recv(100).startswith(b"OK")
    except OSError:
        return False


def _shardgear(port: int, state: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shardgear", "--listen", "127.0.0.1", "--port", str(port),
            "--fronts", "2", "--shards", "2", "--state-dir", state, *extra]  # fmt: skip


def _gearmand(port: int) -> list[str]:
    return [GEARMAND, "--listen", "127.0.0.1", "--port", str(port), "--threads", "2",
            "--log-file", "none"]  # fmt: skip


def _start(
    cmd: list[str], port: int, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], float]:
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    while not _answers(port):
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            _kill(proc)
            raise RuntimeError(f"server did not start: {' '.join(cmd)}")
        time.sleep(0.002)
    return proc, time.monotonic() - t0


def _stop(proc: subprocess.Popen[bytes]) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        _kill(proc)
    return time.monotonic() - t0


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def startstop(rounds: int) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    gearmand = os.access(GEARMAND, os.X_OK)
    for _ in range(rounds):
        for name in ("shardgear", "gearmand") if gearmand else ("shardgear",):
            port = _free_port()
            with tempfile.TemporaryDirectory() as state:
                cmd = _shardgear(port, state) if name == "shardgear" else _gearmand(port)
                proc, start = _start(cmd, port)
                time.sleep(0.3)  # idle
                stop = _stop(proc)
            r = results.setdefault(name, {"start_s": [], "stop_s": []})
            r["start_s"].append(start)
            r["stop_s"].append(stop)
    return {
        name: {k: round(statistics.median(v), 3) for k, v in r.items()} | {"rounds": rounds}
        for name, r in results.items()
    }


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape_loop(url: str, interval: float, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                r.read()
            out.append(time.monotonic() - t0)
        except OSError:
            pass
        if interval:
            stop.wait(max(0.0, interval - (time.monotonic() - t0)))


def _one_scrape_run(mode: str, jobs: int) -> dict[str, Any]:
    port = _free_port()
    mport = _free_port()
    extra = [] if mode == "off" else ["--metrics", f"127.0.0.1:{mport}"]
    with tempfile.TemporaryDirectory() as state:
        proc, _ = _start(_shardgear(port, state, *extra), port)
        try:
            latencies: list[float] = []
            stop = threading.Event()
            scraper = None
            if mode in ("every-1s", "back-to-back"):
                interval = 1.0 if mode == "every-1s" else 0.0
                url = f"http://127.0.0.1:{mport}/metrics"
                scraper = threading.Thread(
                    target=_scrape_loop, args=(url, interval, stop, latencies), daemon=True
                )
            cpu0 = _cpu_seconds(proc.pid)
            if scraper is not None:
                scraper.start()
            load = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", f"127.0.0.1:{port}", "-n", str(jobs),
                 "--json", "--no-progress", "--server-pids", str(proc.pid)],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            stop.set()
            if scraper is not None:
                scraper.join(15)
            cpu = _cpu_seconds(proc.pid) - cpu0
        finally:
            _stop(proc)
    result = json.loads(load.stdout)
    run = result["runs"][0] if "runs" in result else result
    lat = sorted(latencies)
    return {
        "jobs_per_s": run["jobs_per_s"],
        "server_cores": run.get("server", {}).get("cpu_cores"),
        "scrapes": len(lat),
        "scrape_p50_ms": round(lat[len(lat) // 2] * 1000, 2) if lat else None,
        "scrape_p99_ms": round(lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000, 2)
        if lat
        else None,
        "supervisor_cpu_s": round(cpu, 3),
    }


def scrape(rounds: int, jobs: int) -> dict[str, Any]:
    modes = ("off", "on-unscraped", "every-1s", "back-to-back")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode in modes:
            runs[mode].append(_one_scrape_run(mode, jobs))
    table = {}
    for mode, rs in runs.items():
        row: dict[str, Any] = {"rounds": len(rs)}
        for key in rs[0]:
            values = [r[key] for r in rs if r[key] is not None]
            row[key] = round(statistics.median(values), 3) if values else None
        scrapes = sum(r["scrapes"] for r in rs)
        if scrapes:
            row["supervisor_ms_per_scrape"] = round(
                1000 * sum(r["supervisor_cpu_s"] for r in rs) / scrapes, 2
            )
        table[mode] = row
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.opsbench", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("startstop", "scrape"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", "--jobs", type=int, default=100_000)
    a = p.parse_args(argv)
    result = startstop(a.rounds) if a.what == "startstop" else scrape(a.rounds, a.jobs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
