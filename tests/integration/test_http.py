"""The HTTP process (--http): gearmand's HTTP protocol with curl, side by side with gearmand's own
plugin where Debian's gearmand has it, and the JSON API."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gearclient import Conn, parse_status, wait_for
from tests.integration.http_helpers import Gearmand, Workers, api, curl, start_http_server

pytestmark = pytest.mark.shardgear_only

HANDLE = re.compile(r"^H:[^:]+:\d+$")


def reverse(job: Any) -> None:
    job.sendWorkComplete(bytes(job.binary_arguments)[::-1])


def fail(job: Any) -> None:
    job.sendWorkFail()


def chunks(job: Any) -> None:
    job.sendWorkData(b"first ")
    job.sendWorkStatus(1, 2)
    job.sendWorkComplete(b"last")


def echo_unique(job: Any) -> None:
    job.sendWorkComplete(bytes(job.binary_unique or b"") + b"|" + bytes(job.binary_arguments))


def ran(job: Any) -> None:
    job.sendWorkComplete(b"ran " + bytes(job.binary_name))


HANDLERS = {"rev": reverse, "fail": fail, "uniq": echo_unique, "q?x=1": ran, "re%76": ran}

# (curl arguments after the URL's path is appended, function) -> compared on both servers
CASES: list[tuple[str, list[str]]] = [
    ("rev", ["-d", "hello"]),
    ("rev", ["-X", "PUT", "-d", "put body"]),
    ("rev", ["-X", "GET"]),
    ("rev", ["-H", "X-Gearman-Priority: high", "-d", "urgent"]),
    ("rev", ["-H", "X-Gearman-Priority: low", "-d", "later"]),
    ("rev", ["-H", "X-Gearman-Background: true", "-d", "bg"]),
    ("fail", ["-d", "x"]),
    ("uniq", ["-H", "X-Gearman-Unique: my-unique", "-d", "payload"]),
    ("uniq", ["-d", "default unique"]),
    ("", ["-X", "POST", "-d", "no function"]),
    ("q?x=1", ["-d", "the query names the function"]),
    ("re%76", ["-d", "escapes are kept"]),
    ("rev", ["-I"]),  # HEAD
]


def run_cases(http: str) -> list[tuple[int, str | None, bool, bytes]]:
    results = []
    for func, args in CASES:
        status, headers, body = curl(*args, f"http://{http}/{func}")
        handle = headers.get("x-gearman-job-handle")
        results.append(
            (status, headers.get("x-gearman-command"), bool(handle and HANDLE.match(handle)), body)
        )
    return results


@pytest.fixture
def shardgear_http(start_server) -> Iterator[tuple[Any, str, Workers]]:
    srv, http = start_http_server(start_server)
    workers = Workers(srv.address)
    for name, handler in HANDLERS.items():
        workers.add(name, handler)
    yield srv, http, workers
    workers.stop()


@pytest.mark.skipif(not Gearmand.has_http(), reason="this gearmand has no HTTP protocol plugin")
def test_curl_gets_what_gearmands_http_plugin_answers(shardgear_http) -> None:
    _srv, http, _workers = shardgear_http
    gearmand = Gearmand().start()
    theirs = Workers(gearmand.address)
    try:
        for name, handler in HANDLERS.items():
            theirs.add(name, handler)
        ours_results = run_cases(http)
        their_results = run_cases(gearmand.http)
    finally:
        theirs.stop()
        gearmand.stop()
    for (func, args), ours, their in zip(CASES, ours_results, their_results, strict=True):
        if func == "fail":
            # gearmand 1.1.20 cuts the number off the handle of a WORK_FAIL answer ("H:host:")
            ours, their = ours[:2] + ours[3:], their[:2] + their[3:]
        assert ours == their, (func, args)
    # and the answers are what gearmand's protocol promises
    assert ours_results[0] == (200, "WORK_COMPLETE", True, b"olleh")
    assert ours_results[5] == (200, "JOB_CREATED", True, b"")
    assert ours_results[6][:2] == (200, "WORK_FAIL")
    assert ours_results[7][3] == b"my-unique|payload"
    assert ours_results[8][3] == b"-|default unique"
    assert ours_results[9][0] == 404
    assert ours_results[10][3] == b"ran q?x=1"
    assert ours_results[11][3] == b"ran re%76"
    assert ours_results[12] == (200, None, True, b"")


def test_the_answer_waits_for_the_end_of_a_job_that_sends_data_first(shardgear_http) -> None:
    # gearmand 1.1.20 answers with the first WORK_* packet instead: WORK_STATUS as the command,
    # and WORK_DATA as a broken response (README, "Where shardgear differs")
    _srv, http, workers = shardgear_http
    workers.add("chunks", chunks)
    status, headers, body = curl("-d", "x", f"http://{http}/chunks")
    assert (status, headers["x-gearman-command"], body) == (200, "WORK_COMPLETE", b"last")


def test_a_foreground_request_waits_for_its_worker(start_server) -> None:
    srv, http = start_http_server(start_server)
    func = f"late-{time.monotonic_ns()}"
    import threading

    got: list[tuple[int, dict[str, str], bytes]] = []
    t = threading.Thread(target=lambda: got.append(curl("-d", "abc", f"http://{http}/{func}")))
    t.start()
    admin = Conn(srv.address)
    try:
        wait_for(
            lambda: parse_status(admin.admin("status")).get(func, [0])[0] == 1,
            timeout=10,
            what="the HTTP job to be queued",
        )
        assert not got  # still waiting: nobody does the work yet
        workers = Workers(srv.address)
        workers.add(func, reverse)
        t.join(20)
        workers.stop()
    finally:
        admin.close()
    [(status, headers, body)] = got
    assert (status, headers["x-gearman-command"], body) == (200, "WORK_COMPLETE", b"cba")


def test_a_request_whose_client_leaves_gives_up_its_job(start_server) -> None:
    srv, http = start_http_server(start_server)
    func = f"nobody-{time.monotonic_ns()}"
    status, _h, _b = curl("--max-time", "2", "-d", "x", f"http://{http}/{func}", timeout=2)
    assert status == 0  # curl gave up
    with Conn(srv.address) as admin:
        wait_for(
            lambda: parse_status(admin.admin("status")).get(func, [0])[0] == 0,
            timeout=10,
            what="the abandoned job to leave the queue",
        )


def test_the_json_api(start_server) -> None:
    srv, http = start_http_server(start_server)
    func = f"api-{time.monotonic_ns()}"
    status, info = api(http, "")
    assert status == 200 and info["server"] == "shardgear"
    with Conn(srv.address) as client, Conn(srv.address) as w:
        w.send(1, func)  # CAN_DO
        client.send(18, func, "u-1", "data")  # SUBMIT_JOB_BG
        handle = client.expect(8)[0].decode()  # JOB_CREATED

        def row() -> dict[str, Any] | None:
            fs = {f["name"]: f for f in api(http, "/functions")[1]["functions"]}
            return fs.get(func)

        f = wait_for(row, what="the function in the API")
        assert f["queued"] == {"high": 0, "normal": 1, "low": 0} and f["workers"] == 1
        workers = api(http, "/workers")[1]["workers"]
        assert any(func in w["functions"] for w in workers)
        assert api(http, f"/jobs/{handle}") == (
            200,
            {"handle": handle, "known": True, "running": False, "numerator": 0, "denominator": 0},
        )
        status, by_unique = api(http, "/jobs?unique=u-1")
        assert status == 200 and by_unique["known"] and not by_unique["running"]
        assert api(http, "/jobs/H:nowhere:1")[1]["known"] is False
        # what the protocol cannot carry is the request's fault (400), not a lost link (502)
        for path in ("/jobs?unique=%00", "/jobs?unique=" + "u" * 65, "/jobs/" + "H" * 5000):
            status, answer = api(http, path)
            assert status == 400 and "without NUL" in answer["error"], path
        assert api(http, "/jobs?unique=" + "u" * 64)[1]["known"] is False  # the longest unique
    # schedules
    body = {"function": func, "unique": "nightly", "expression": "0 4 * * *", "data": "x"}
    status, made = api(http, "/schedules", "POST", body)
    assert status == 201 and made["handle"].startswith("H:")
    status, bad = api(http, "/schedules", "POST", dict(body, expression="99 * * * *"))
    assert status == 400 and "Bad minute" in bad["error"]
    [sched] = [s for s in api(http, "/schedules")[1]["schedules"] if s["function"] == func]
    assert (sched["unique"], sched["expression"], sched["last_run"]) == ("nightly", "0 4 * * *", 0)
    assert sched["next_run"] > time.time()
    assert api(http, f"/schedules?function={func}&unique=nightly", "DELETE") == (
        200,
        {"removed": True},
    )
    assert api(http, f"/schedules?function={func}&unique=nightly", "DELETE")[0] == 404
    # the dead set is empty, and unknown ids are 404
    assert api(http, "/dead") == (200, {"jobs": []})
    assert api(http, "/dead/12345")[0] == 404
    assert api(http, "/dead/12345/replay", "POST")[0] == 404
    huge = "9" * 25  # past 64 bits: no such job (it used to kill the fronts it reached)
    for path, method in ((f"/dead/{huge}", "GET"), (f"/dead/{huge}", "DELETE")):
        assert api(http, path, method)[0] == 404
    assert api(http, f"/dead/{huge}/replay", "POST")[0] == 404
    assert api(http, "/nothing")[0] == 404


def test_mutations_from_another_web_origin_are_refused(start_server) -> None:
    _srv, http = start_http_server(start_server)
    evil = {"Origin": "http://evil.example"}
    status, body = api(http, "/dead/replay?all=1", "POST", headers=evil)
    assert status == 403 and "cross-origin" in body["error"]
    same = {"Origin": f"http://{http}"}
    assert api(http, "/dead/replay?all=1", "POST", headers=same) == (
        200,
        {"replayed": 0, "refused": 0},
    )
    assert api(http, "/dead/delete?all=1", "POST") == (200, {"deleted": 0})
