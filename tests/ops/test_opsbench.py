"""bench/opsbench: one bounded round of each measurement runs and reports (nothing here asserts
on speed: the machines are shared and noisy)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.shardgear_only, pytest.mark.slow]


def run(*args: str) -> dict[str, dict[str, float]]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.opsbench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, dict[str, float]] = json.loads(proc.stdout)
    return result


def test_startstop_reports_start_and_stop_times() -> None:
    result = run("startstop", "--rounds", "1")
    assert result["shardgear"]["rounds"] == 1
    assert 0 < result["shardgear"]["start_s"] < 30 and 0 < result["shardgear"]["stop_s"] < 30


def test_scrape_reports_every_configuration() -> None:
    result = run("scrape", "--rounds", "1", "-n", "3000")
    assert set(result) == {"off", "on-unscraped", "every-1s", "back-to-back"}
    assert result["off"]["scrapes"] == 0
    assert result["back-to-back"]["scrapes"] > 0
    assert result["back-to-back"]["supervisor_ms_per_scrape"] > 0
    assert all(r["jobs_per_s"] > 0 for r in result.values())
