"""Stopping the server: the admin `shutdown` commands (removed from gearmand in 1.1.15, kept by
shardgear) and SIGTERM. Each test has its own server instance."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.gearclient import WORK_COMPLETE, grab_job, submit, wait_for, worker


def refuses_connections(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0) as s:
            s.settimeout(1.0)
            s.sendall(b"version\n")
            return s.recv(64) == b""
    except OSError:
        return True


@pytest.mark.shardgear_only
def test_shutdown_stops_the_server(start_server, connect):
    srv = start_server()
    assert connect(srv.address).admin("shutdown") == "OK\r\n"
    assert srv.wait(10) == 0
    assert srv.shm_leftovers() == []


@pytest.mark.shardgear_only
def test_shutdown_graceful_lets_a_running_job_finish(start_server, connect, func_name):
    srv = start_server()
    client, w, adm = connect(srv.address), connect(srv.address), connect(srv.address)
    h = submit(client, func_name, b"work")
    worker(w, func_name)
    assert grab_job(w)[0] == h
    assert adm.admin("shutdown graceful") == "OK\r\n"
    wait_for(lambda: refuses_connections(srv.address), timeout=5, what="listener closed")
    time.sleep(0.3)
    assert srv.proc.poll() is None, "exited while a job was running"
    w.send(WORK_COMPLETE, h, b"finished")
    assert client.expect(WORK_COMPLETE) == [h, b"finished"]
    assert srv.wait(10) == 0
    assert srv.shm_leftovers() == []


@pytest.mark.shardgear_only
def test_shutdown_graceful_with_nothing_running_exits_at_once(start_server, connect, func_name):
    srv = start_server()
    client = connect(srv.address)
    submit(client, func_name, b"queued, not running", bg=True)
    assert connect(srv.address).admin("shutdown graceful") == "OK\r\n"
    assert srv.wait(10) == 0


def test_sigterm_stops_the_server_and_cleans_up(start_server, connect, func_name):
    srv = start_server()
    client = connect(srv.address)
    submit(client, func_name, b"x", bg=True)
    worker(connect(srv.address), func_name)
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) is not None
    assert srv.shm_leftovers() == []
