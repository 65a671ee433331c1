"""--http and --metrics on one ADDR:PORT: the HTTP process owns the listener and forwards /metrics
to the supervisor; the dashboard's throughput comes from the counters the metrics show; the HTTP
process acknowledges a reload like every child."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.gearclient import Conn, submit, wait_for
from tests.integration.http_helpers import Workers, api, curl, wait_http
from tests.ops.helpers import wait_for_log

pytestmark = pytest.mark.shardgear_only


def complete(job: Any) -> None:
    job.sendWorkComplete(b"ok")


def test_metrics_and_the_api_share_one_listener(start_server, tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    config = tmp_path / "shardgear.toml"
    config.write_text(f'http = "{http}"\nmetrics = "{http}"\nlog-level = "notice"\n')
    srv = start_server("--config", str(config))
    wait_http(http)
    func = f"shared-{time.monotonic_ns()}"
    workers = Workers(srv.address)
    try:
        workers.add(func, complete)
        with Conn(srv.address) as client:
            for n in range(5):
                submit(client, func, f"job {n}", bg=True)

        def counted() -> dict[str, Any] | None:
            fs = {f["name"]: f for f in api(http, "/functions")[1]["functions"]}
            f = fs.get(func)
            return f if f is not None and f["done"] == 5 and f["throughput"] else None

        # the dashboard's numbers: the shards' counters (published once a second, sampled
        # every two seconds), the same that /metrics shows on the same port
        row = wait_for(counted, timeout=20, pause=0.3, what="5 results in the API")
        assert max(row["throughput"]) > 0
        status, headers, body = curl(f"http://{http}/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        text = body.decode()
        assert f'shardgear_jobs_completed_total{{function="{func}",priority="normal"}} 5.0' in text
        assert 'shardgear_child_restarts_total{index="0",role="http"} 0.0' in text
        # compression is negotiated with the supervisor's exposition, through the forward
        status, headers, _ = curl("-H", "Accept-Encoding: gzip", f"http://{http}/metrics")
        assert status == 200 and headers.get("content-encoding") == "gzip"
        # gearmand's HTTP protocol on the same port
        status, headers, body = curl("-d", "x", f"http://{http}/{func}")
        assert (status, headers["x-gearman-command"], body) == (200, "WORK_COMPLETE", b"ok")
    finally:
        workers.stop()
    # a reload reaches the HTTP process too: no "not applied by http 0" after RELOAD_TIMEOUT
    config.write_text(f'http = "{http}"\nmetrics = "{http}"\nlog-level = "info"\n')
    srv.signal(signal.SIGHUP)
    log = wait_for_log(srv, "reloaded")
    assert "not applied by" not in log
