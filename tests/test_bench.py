"""shardgear-bench: small bounded runs against a real gearmand, and its pure helpers.

Nothing here asserts on speed: the machines are shared and noisy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.config import Load, parse_priority, parse_range, parse_target
from bench.plan import make_plans
from bench.runner import latency_summary
from bench.servers import Server, parse_spec, start

REPO = Path(__file__).resolve().parent.parent
GEARMAND = os.environ.get("GEARMAND") or shutil.which("gearmand") or "/usr/sbin/gearmand"
HAVE_GEARMAND = os.access(GEARMAND, os.X_OK)
needs_gearmand = pytest.mark.skipif(
    not HAVE_GEARMAND and not os.environ.get("CI"),
    reason="gearmand is not installed (apt-get install gearman-job-server)",
)
LATENCY_KEYS = {"count", "p50", "p90", "p99", "p99.9", "max", "mean"}


def bench(*args: str, timeout: float = 90) -> tuple[int, Any, str]:
    """Run ``python -m bench.loadgen ARGS --json``; return (exit code, parsed JSON, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", *args, "--json", "--no-progress"],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.stdout, f"no output (exit {proc.returncode}): {stderr}"
    return proc.returncode, orjson.loads(proc.stdout), stderr


@pytest.fixture(scope="module")
def gearmand() -> Iterator[Server]:
    server = start(parse_spec("gearmand"), gearmand=GEARMAND)
    try:
        yield server
    finally:
        server.stop()


def check_summary(r: dict[str, Any], jobs: int) -> None:
    assert r["outcome"] == "complete", r["error_samples"]
    assert r["errors"] == 0, r["error_samples"]
    assert r["jobs_requested"] == jobs
    assert r["jobs_done"] == jobs
    assert r["submitted"] == jobs
    assert r["outstanding"] == 0
    assert r["jobs_per_s"] > 0
    assert set(r["latency_ms"]) == LATENCY_KEYS
    lat = r["latency_ms"]
    assert 0 <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    assert r["loadgen"]["cpu_s"] >= 0


@needs_gearmand
def test_foreground_run(gearmand: Server) -> None:
    host, port = gearmand.target
    pids = ",".join(map(str, gearmand.pids))
    code, r, err = bench(f"{host}:{port}", "-n", "2000", "--server-pids", pids)
    assert code == 0, err
    check_summary(r, 2000)
    assert r["fg_done"] == 2000
    assert r["latency_ms"]["count"] == 2000
    assert r["executed_by_workers"] == 2000
    assert r["server"]["pids"][0] == gearmand.pids[0]
    assert r["server"]["cpu_s"] >= 0
    assert r["server"]["peak_pss_kb"] > 0


@needs_gearmand
def test_mixed_coalescing_run(gearmand: Server) -> None:
    host, port = gearmand.target
    code, r, err = bench(
        f"{host}:{port}", "-n", "2000", "-m", "mixed", "-u", "coalesce", "--coalesce-share",
        "0.3", "-p", "high=1,normal=2,low=1", "-g", "uniq", "-s", "16-300", "-P", "1",
    )  # fmt: skip
    assert code == 0, err
    check_summary(r, 2000)
    assert r["fg_done"] + r["bg_acked"] == 2000
    # every distinct background job was executed by a worker before the run ended
    assert r["bg_executed"] == r["bg_distinct"] <= r["bg_acked"]
    assert r["stale_jobs"] == 0
    assert "latency_fg_ms" in r
    assert "latency_bg_ms" in r


@needs_gearmand
def test_memory_mode_drains_a_running_server(gearmand: Server) -> None:
    host, port = gearmand.target
    pids = ",".join(map(str, gearmand.pids))
    code, r, err = bench(f"{host}:{port}", "--memory", "2000", "--server-pids", pids)
    assert code == 0, err
    (row,) = r["results"]
    assert row["jobs_queued"] == 2000
    assert row["drained"] == 2000
    assert row["bytes_per_job_pss"] is not None


@needs_gearmand
def test_compare_starts_and_stops_servers() -> None:
    code, r, err = bench(
        "--compare", "gearmand", "gearmand:1", "--rounds", "1", "-n", "2000",
        "--gearmand", GEARMAND,
    )  # fmt: skip
    assert code == 0, err
    assert [row["server"] for row in r["table"]] == ["gearmand", "gearmand-t1"]
    assert r["table"][0]["ratio"] == 1.0
    for rnd in r["rounds"]:
        check_summary(rnd, 2000)
    started = [int(line.split("pids [")[1].split("]")[0]) for line in err.splitlines()
               if " pids [" in line]  # fmt: skip
    assert len(started) == 2
    for pid in started:
        assert not os.path.exists(f"/proc/{pid}")


def test_latency_summary_nearest_rank() -> None:
    hist = Counter({v: 1 for v in range(1, 1001)})  # 1..1000 µs
    s = latency_summary(hist)
    assert s["count"] == 1000
    assert (s["p50"], s["p90"], s["p99"], s["p99.9"], s["max"]) == (0.5, 0.9, 0.99, 0.999, 1.0)
    assert latency_summary(Counter()) == {"count": 0}


def test_plans_split_jobs_and_connections() -> None:
    load = Load(
        targets=(("127.0.0.1", 1), ("127.0.0.1", 2)), clients=3, workers=5, jobs=10, procs=2
    )
    plans = make_plans(load)
    assert sum(q for p in plans for *_, q in p.clients) == 10
    assert sorted(i for p in plans for i, *_ in p.clients) == [0, 1, 2]
    assert sorted(i for p in plans for i, *_ in p.workers) == [0, 1, 2, 3, 4]
    ports = Counter(port for p in plans for _, _, port in p.workers)
    assert ports == {1: 3, 2: 2}


def test_parsers() -> None:
    assert parse_range("64") == (64, 64)
    assert parse_range("16-1024") == (16, 1024)
    assert parse_priority("normal") == (0.0, 1.0, 0.0)
    assert parse_priority("high=1,low=3") == (1.0, 0.0, 3.0)
    assert parse_target("10.0.0.1:4730") == ("10.0.0.1", 4730)
    assert parse_target("4731") == ("127.0.0.1", 4731)
    assert parse_spec("shardgear:2x3").fronts == 2
    assert parse_spec("127.0.0.1:4730@12,13").pids == (12, 13)
    with pytest.raises(ValueError):
        Load(targets=(("h", 1),), payload=(8, 8))
    with pytest.raises(ValueError):
        Load(targets=(("h", 1),), jobs=10, duration=1.0)
