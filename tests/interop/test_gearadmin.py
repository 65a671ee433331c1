"""gearadmin (gearman-tools 1.1.20) against the server: its output must parse as usual."""

from __future__ import annotations

import uuid

import pytest

from tests.gearclient import (
    CAN_DO,
    WORK_FAIL,
    Conn,
    grab,
    parse_status,
    parse_workers,
    submit,
    wait_for,
    worker,
)
from tests.interop import tools

pytestmark = pytest.mark.interop


@pytest.fixture(autouse=True)
def _need_gearadmin() -> None:
    tools.require_tools("gearadmin")


def fresh() -> str:
    return f"adm-{uuid.uuid4().hex[:12]}"


def admin_out(address: str, *options: str) -> str:
    r = tools.gearadmin(address, *options)
    assert r.returncode == 0, r
    return r.stdout.decode()


def test_status(server):
    func = fresh()
    with Conn(server.address) as c, worker(Conn(server.address), func) as w:
        submit(c, func, b"1", bg=True)
        submit(c, func, b"2", bg=True)
        grab(w)
        out = admin_out(server.address, "--status")
        assert out.endswith(".\n")
        assert parse_status(out)[func] == [2, 1, 1]


def test_priority_status(server):
    func = fresh()
    with Conn(server.address) as c:
        submit(c, func, b"h", prio="high", bg=True)
        submit(c, func, b"l", prio="low", bg=True)
        submit(c, func, b"l", prio="low", bg=True)
        assert parse_status(admin_out(server.address, "--priority-status"))[func] == [1, 0, 2, 0]


def test_workers(server):
    func = fresh()
    with Conn(server.address) as w:
        w.send(22, b"adm-worker-id")  # SET_CLIENT_ID
        w.send(CAN_DO, func)

        def mine():
            rows = parse_workers(admin_out(server.address, "--workers"))
            return [r for r in rows if func in r[3]]

        rows = wait_for(mine, what="worker row")
        assert rows[0][2] == "adm-worker-id"
        assert rows[0][1] == "127.0.0.1"


def test_show_jobs_and_unique_jobs(server):
    func = fresh()
    unique = "u-" + func
    with Conn(server.address) as c:
        h = submit(c, func, b"x", unique=unique, bg=True)
        jobs = admin_out(server.address, "--show-jobs")
        assert any(line.split("\t")[0] == h.decode() for line in jobs.splitlines())
        assert unique in admin_out(server.address, "--show-unique-jobs").splitlines()


def test_server_version_getpid_verbose(server):
    assert admin_out(server.address, "--server-version").strip()
    assert admin_out(server.address, "--getpid").strip() == str(server.pid)
    assert admin_out(server.address, "--server-verbose").strip() in {
        "FATAL",
        "ALERT",
        "CRITICAL",
        "ERROR",
        "WARNING",
        "NOTICE",
        "INFO",
        "DEBUG",
    }


def test_create_and_drop_function(server):
    func = fresh()
    assert admin_out(server.address, f"--create-function={func}").strip() == "OK"
    assert parse_status(admin_out(server.address, "--status"))[func] == [0, 0, 0]
    assert admin_out(server.address, f"--drop-function={func}").strip() == "OK"
    assert func not in parse_status(admin_out(server.address, "--status"))


def test_cancel_job(server):
    func = fresh()
    with Conn(server.address) as c:
        h = submit(c, func, b"x")
        assert admin_out(server.address, f"--cancel-job={h.decode()}").strip() == "OK"
        assert c.expect(WORK_FAIL) == [h]


def test_cancel_unknown_job_reports_the_error(server):
    r = tools.gearadmin(server.address, "--cancel-job=H:nowhere:1")
    assert b"UNKNOWN_JOB" in r.stderr + r.stdout
