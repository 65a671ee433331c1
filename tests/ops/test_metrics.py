"""Prometheus metrics on a real server: a known workload, scraped and parsed with
prometheus_client's parser, agrees with the admin `status` and `prioritystatus`; counters
survive a restarted shard; `promtool check metrics` accepts the scrape; every metric the
Grafana dashboard queries exists."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Server, free_port
from tests.gearclient import (
    CAN_DO,
    ERROR,
    JOB_ASSIGN,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    WORK_EXCEPTION,
    WORK_FAIL,
    Conn,
    grab,
    parse_status,
    submit,
    wait_for,
    worker,
)
from tests.ops.helpers import child_roles, wait_for_log

pytestmark = pytest.mark.shardgear_only
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape_text(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


def scrape(port: int) -> Samples:
    """Every sample, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(scrape_text(port)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name` over the samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lv), v in samples.items() if n == name and want <= set(lv))


@pytest.fixture
def metrics_server(start_server) -> Callable[..., tuple[Server, int]]:
    def start(*args: str) -> tuple[Server, int]:
        for _ in range(3):
            port = free_port()
            try:
                return start_server("--metrics", f"127.0.0.1:{port}", *args), port
            except RuntimeError as exc:  # the port was taken meanwhile
                if "cannot serve metrics" not in str(exc):
                    raise
        raise AssertionError("no free port for metrics")

    return start


def test_a_known_workload_matches_status(metrics_server, connect, make_name):
    srv, mport = metrics_server("--job-retries", "2")
    f1, f2 = make_name("m", shard=0), make_name("m", shard=1)
    n1, n2 = f1.decode(), f2.decode()
    client = connect(srv.address)
    for i in range(2):
        submit(client, f1, b"h%d" % i, prio="high", bg=True)
    for i in range(6):
        submit(client, f1, b"n%d" % i, bg=True)
    for i in range(3):
        submit(client, f2, b"l%d" % i, prio="low", bg=True)
    w = worker(connect(srv.address), f1)
    handles = []
    for _ in range(4):
        ptype, args = grab(w)
        assert ptype == JOB_ASSIGN
        handles.append(args[0])
    w.send(WORK_COMPLETE, handles[0], b"done")  # high
    w.send(WORK_FAIL, handles[1])  # high
    w.send(WORK_EXCEPTION, handles[2], b"oops")  # normal
    adm = connect(srv.address)

    def settled() -> Samples | None:
        samples = scrape(mport)
        status = parse_status(adm.admin("status"))
        prio = parse_status(adm.admin("prioritystatus"))
        if value(samples, "shardgear_jobs_completed_total", function=n1, priority="high") != 1:
            return None
        for name in (n1, n2):
            _total, running, workers = status[name]
            if value(samples, "shardgear_jobs_running", function=name) != running:
                return None
            if value(samples, "shardgear_workers", function=name) != workers:
                return None
            for p, label in enumerate(("high", "normal", "low")):
                queued = value(samples, "shardgear_jobs_queued", function=name, priority=label)
                if queued != prio[name][p]:
                    return None
        return samples

    s = wait_for(settled, timeout=10, what="the scrape to agree with status")
    assert parse_status(adm.admin("status"))[n1] == [5, 1, 1]
    assert value(s, "shardgear_jobs_submitted_total", function=n1, priority="high") == 2
    assert value(s, "shardgear_jobs_submitted_total", function=n1, priority="normal") == 6
    assert value(s, "shardgear_jobs_submitted_total", function=n2, priority="low") == 3
    assert value(s, "shardgear_jobs_failed_total", function=n1, priority="high") == 1
    assert value(s, "shardgear_jobs_exception_total", function=n1, priority="normal") == 1
    wait = "shardgear_job_queue_wait_seconds_count"
    assert value(s, wait, function=n1, priority="high") == 2
    assert value(s, wait, function=n1, priority="normal") == 2
    run = "shardgear_job_run_seconds_count"
    assert value(s, run, function=n1, priority="high") == 2
    assert value(s, run, function=n1, priority="normal") == 1
    bucket = "shardgear_job_run_seconds_bucket"
    assert value(s, bucket, function=n1, priority="high", le="+Inf") == 2
    # the worker leaves with a running job: requeued. f2's three jobs are held and lost twice:
    # requeued once, then dropped by --job-retries 2.
    w.close()
    for _ in range(2):
        w2 = worker(connect(srv.address), f2)
        for _ in range(3):
            assert grab(w2)[0] == JOB_ASSIGN
        w2.close()
        wait_for(lambda: parse_status(adm.admin("status")).get(n2, [0, 1, 1])[1:] == [0, 0])

    def after() -> Samples | None:
        samples = scrape(mport)
        if value(samples, "shardgear_jobs_requeued_total", function=n1, priority="normal") != 1:
            return None
        if value(samples, "shardgear_jobs_requeued_total", function=n2, priority="low") != 3:
            return None
        if value(samples, "shardgear_jobs_dropped_total", function=n2, priority="low") != 3:
            return None
        return samples

    s = wait_for(after, timeout=10, what="requeued and dropped in the scrape")
    assert adm.admin(f"drop function {n2}") == "OK\r\n"  # no job, no worker left
    status = parse_status(adm.admin("status"))
    assert value(s, "shardgear_jobs_running", function=n1) == status[n1][1] == 0
    assert value(s, "shardgear_workers", function=n1) == status[n1][2] == 0
    assert total(s, "shardgear_store_commits_total") > 0
    assert total(s, "shardgear_store_batch_bytes_sum") > 0  # 11 stored jobs' records
    assert total(s, "shardgear_job_log_bytes") > 0
    assert total(s, "shardgear_ring_capacity_bytes") > 0
    assert value(s, "shardgear_build_info", version=__import__("shardgear").__version__) == 1
    assert value(s, "process_resident_memory_bytes") > 0  # the supervisor's own
    for role, index in (("front", "0"), ("front", "1"), ("shard", "0"), ("shard", "1")):
        assert value(s, "shardgear_process_resident_memory_bytes", role=role, index=index) > 0


def test_connections_and_protocol_closes(metrics_server, connect):
    srv, mport = metrics_server()
    open_conns = [connect(srv.address) for _ in range(5)]
    for c in open_conns:
        c.admin("version")  # accepted by now
    wait_for(lambda: total(scrape(mport), "shardgear_connections") == 5)
    accepted = total(scrape(mport), "shardgear_connections_accepted_total")
    assert accepted >= 5
    with Conn(srv.address) as bad:
        bad.send_raw(b"\0BAD" + b"\0" * 8)
        assert bad.is_closed()
    wait_for(lambda: total(scrape(mport), "shardgear_protocol_closes_total") == 1)
    s = scrape(mport)
    assert total(s, "shardgear_connections_accepted_total") == accepted + 1
    assert total(s, "shardgear_connections") == 5


def test_counters_survive_a_restarted_shard(metrics_server, connect, make_name):
    srv, mport = metrics_server()
    f = make_name("m", shard=1)
    client = connect(srv.address)
    for i in range(4):
        submit(client, f, b"%d" % i, bg=True)
    key = {"function": f.decode(), "priority": "normal"}
    wait_for(lambda: value(scrape(mport), "shardgear_jobs_submitted_total", **key) == 4)
    shard = next(pid for pid, role in child_roles(srv.pid).items() if role == "shard1")
    os.kill(shard, signal.SIGKILL)
    wait_for_log(srv, "restarted shard 1")
    submit(client, f, b"after", bg=True)

    def both() -> bool:
        s = scrape(mport)
        return (
            value(s, "shardgear_jobs_submitted_total", **key) == 5
            and value(s, "shardgear_jobs_queued", **key) == 5
            and value(s, "shardgear_child_restarts_total", role="shard", index="1") == 1
        )

    wait_for(both, timeout=10, what="totals carried over the restart")


def test_promtool_accepts_the_scrape(metrics_server, connect, func_name):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    srv, mport = metrics_server()
    with Conn(srv.address) as c:
        submit(c, func_name, b"x", bg=True)
    wait_for(lambda: func_name.decode() in scrape_text(mport))
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=scrape_text(mport),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_metric_of_the_grafana_dashboard_exists(metrics_server, connect, func_name):
    srv, mport = metrics_server()
    with Conn(srv.address) as c:  # so that per-function series exist
        submit(c, func_name, b"x", bg=True)
    wait_for(lambda: func_name.decode() in scrape_text(mport))
    names = {name for name, _labels in scrape(mport)}
    dashboard = json.loads((REPO / "contrib/grafana/shardgear-dashboard.json").read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queried.update(re.findall(r"\b((?:shardgear|process)_[a-z_]+)\b", target["expr"]))
    assert len(queried) > 20
    missing = sorted(queried - names)
    assert not missing, missing


def test_the_listener_is_composable_and_off_by_default(metrics_server, start_server):
    _srv, mport = metrics_server()
    with pytest.raises(urllib.error.HTTPError) as info:
        scrape_text(mport, "/nothing")
    assert info.value.code == 404
    assert "/metrics" in info.value.read().decode()
    # without --metrics there is no listener and no function tables
    plain = start_server()
    assert "--metrics" not in " ".join(plain.command())
    assert not any(
        line.startswith("metrics on") for line in plain.stderr_text().splitlines()
    )


def test_a_metrics_address_in_use_is_refused_at_start(tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        srv = Server(("--metrics", f"127.0.0.1:{port}"))
        with pytest.raises(RuntimeError, match=r"cannot serve metrics on 127\.0\.0\.1"):
            srv.start()
    finally:
        taken.close()



def test_requests_the_access_rules_refuse_are_counted(metrics_server, connect, tmp_path):
    """Issue 8: a denied request is answered, logged and counted, by kind."""
    config = tmp_path / "shardgear.toml"
    config.write_text('[access.functions."locked-*"]\nsubmit = ["10.9.9.9"]\nwork = ["10.9.9.9"]\n')
    srv, mport = metrics_server("--config", str(config))
    client = connect(srv.address)
    for _ in range(2):
        client.send(SUBMIT_JOB_BG, b"locked-a", b"", b"x")
        assert client.expect(ERROR)[0] == b"PERMISSION_DENIED"
    w = connect(srv.address)
    w.send(CAN_DO, b"locked-a")
    assert w.expect(ERROR)[0] == b"PERMISSION_DENIED"
    assert submit(client, b"open-a", b"x", bg=True)  # a function no rule restricts

    def counted() -> Samples | None:
        s = scrape(mport)
        name = "shardgear_access_denied_total"
        if total(s, name, action="submit") == 2 and total(s, name, action="work") == 1:
            return s
        return None

    s = wait_for(counted, timeout=10, what="the denials in the scrape")
    assert total(s, "shardgear_access_denied_total", action="admin") == 0
