"""Limits against abuse (README "Security"): connections in total and per peer, the number of
functions, the length of a function name, queued payload bytes per function; and `drop function`,
which never destroys a job."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests import gearclient as g
from tests.conftest import IS_GEARMAND, Server

pytestmark = pytest.mark.skipif(IS_GEARMAND, reason="shardgear's limits")


def served(address: str) -> bool:
    """True if a new connection gets an answer to `version`, False if it is closed unanswered."""
    try:
        with g.Conn(address) as c:
            return c.admin("version").startswith("OK ")
    except (g.ConnectionClosed, ConnectionResetError, BrokenPipeError):
        return False


@pytest.mark.parametrize("flag", ["--max-connections", "--max-connections-per-peer"])
def test_connections_past_the_limit_are_closed_with_a_log_line(
    start_server: Callable[..., Server], flag: str
) -> None:
    # one front: its share of the limit is all of it. The readiness check's connection is
    # closed by the time start() returns, but the front may not have seen it close yet.
    srv = start_server("--fronts", "1", flag, "3")
    held: list[g.Conn] = []
    try:
        g.wait_for(lambda: served(srv.address), what="the readiness probe's slot to be freed")
        for _ in range(3):
            c = g.Conn(srv.address)
            assert c.admin("version").startswith("OK ")
            held.append(c)
        assert not served(srv.address)
        setting = flag.removeprefix("--")
        assert "refusing a connection from 127.0.0.1" in srv.stderr_text()
        assert f"its share of {setting} 3" in srv.stderr_text()
        held.pop().close()
        g.wait_for(lambda: served(srv.address), what="a slot freed by a closed connection")
        # the held connections were never disturbed
        assert all(c.admin("version").startswith("OK ") for c in held)
    finally:
        for c in held:
            c.close()


def test_function_name_longer_than_the_limit(
    start_server: Callable[..., Server], func_name: bytes
) -> None:
    srv = start_server("--max-function-name", "40")
    long_name = func_name + b"-" + b"x" * 40
    with g.Conn(srv.address) as client, g.Conn(srv.address) as worker:
        client.send(g.SUBMIT_JOB, long_name, b"", b"data")
        code, text = client.expect(g.ERROR)
        assert code == b"ARGUMENT_TOO_LARGE" and b"max-function-name (40 bytes)" in text
        worker.send(g.CAN_DO, long_name)
        code, _text = worker.expect(g.ERROR)
        assert code == b"ARGUMENT_TOO_LARGE"
        # names within the limit work on the same connections
        short = func_name[:40]
        g.worker(worker, short)
        handle = g.submit(client, short, b"data")
        assert g.grab_job(worker)[0] == handle
        assert g.status_of(srv.address, long_name) is None


def test_number_of_functions(
    start_server: Callable[..., Server], make_name: Callable[..., bytes]
) -> None:
    srv = start_server("--shards", "1", "--max-functions", "3")
    names = [make_name() for _ in range(4)]
    with g.Conn(srv.address) as client:
        for name in names[:3]:
            g.submit(client, name, b"x", bg=True)
        client.send(g.SUBMIT_JOB_BG, names[3], b"", b"x")
        code, text = client.expect(g.ERROR)
        assert code == b"QUEUE_ERROR" and b"Too many functions" in text
        # the known ones still take jobs
        g.submit(client, names[0], b"y", bg=True)
    assert g.status_of(srv.address, names[0]) == [2, 0, 0]
    assert g.status_of(srv.address, names[3]) is None
    assert "refusing function" in srv.stderr_text()


def test_names_made_up_once_do_not_fill_the_functions_for_good(
    start_server: Callable[..., Server], make_name: Callable[..., bytes]
) -> None:
    """A client that registers made-up names and leaves must not keep every later function out
    (a breaker did it with 100,010 CAN_DOs): at the limit, a shard forgets the functions that
    have no worker and no job, and keeps those that do."""
    # one front: the squatter's DISCONNECT reaches the shard before the later requests
    srv = start_server("--fronts", "1", "--shards", "1", "--max-functions", "5")
    busy = make_name()
    with g.Conn(srv.address) as client:
        g.submit(client, busy, b"queued", bg=True)  # a function with a job: never forgotten
        with g.Conn(srv.address) as squatter:
            for i in range(10):  # 4 fit, the shard refuses the rest
                squatter.send(g.CAN_DO, b"junk%06d" % i)
            g.wait_for(lambda: g.status_of(srv.address, b"junk000000") == [0, 0, 1])
        g.wait_for(lambda: g.status_of(srv.address, b"junk000000") == [0, 0, 0])  # it left
        with g.Conn(srv.address) as worker:
            worker.send(g.CAN_DO, b"held")  # a function with a worker: never forgotten
            g.wait_for(lambda: g.status_of(srv.address, b"held") == [0, 0, 1])
            for _ in range(3):  # the squatter's names are idle: new functions get in
                g.submit(client, make_name(), b"x", bg=True)
            assert g.status_of(srv.address, busy) == [1, 0, 0]
            assert g.status_of(srv.address, b"held") == [0, 0, 1]
            client.send(g.SUBMIT_JOB_BG, make_name(), b"", b"x")  # the 6th is refused
            code, text = client.expect(g.ERROR)
            assert code == b"QUEUE_ERROR" and b"Too many functions" in text


def test_queued_bytes_per_function(start_server: Callable[..., Server], func_name: bytes) -> None:
    srv = start_server("--max-queued-bytes", "1000")
    with g.Conn(srv.address) as client, g.Conn(srv.address) as worker:
        first = g.submit(client, func_name, b"a" * 600, bg=True)
        client.send(g.SUBMIT_JOB_BG, func_name, b"", b"b" * 600)
        code, text = client.expect(g.ERROR)
        assert code == b"QUEUE_ERROR" and b"max-queued-bytes" in text
        g.submit(client, func_name, b"c" * 400, bg=True)  # 1000 bytes in all: still fits
        # a running job's payload still counts; a finished one frees its bytes
        g.worker(worker, func_name)
        h, _f, data = g.grab_job(worker)
        assert h == first and data == b"a" * 600
        client.send(g.SUBMIT_JOB_BG, func_name, b"", b"d" * 600)
        assert client.expect(g.ERROR)[0] == b"QUEUE_ERROR"
        worker.send(g.WORK_COMPLETE, first, b"")
        g.wait_for(
            lambda: g.status_of(srv.address, func_name) == [1, 0, 1], what="the job to finish"
        )
        g.submit(client, func_name, b"e" * 600, bg=True)


def test_drop_function_refuses_while_jobs_are_queued(
    connect: Callable[..., g.Conn], func_name: bytes
) -> None:
    client, adm = connect(), connect()
    handle = g.submit(client, func_name, b"keep me", bg=True)
    assert adm.admin(f"drop function {func_name.decode()}") == (
        "ERR there are still connected workers or executing clients\r\n"
    )
    worker = g.worker(connect(), func_name)
    assert g.grab_job(worker) == [handle, func_name, b"keep me"]
    worker.send(g.WORK_COMPLETE, handle, b"")
    worker.send(g.CANT_DO, func_name)
    g.wait_for(
        lambda: adm.admin(f"drop function {func_name.decode()}") == "OK\r\n",
        what="the drop to succeed once the function is empty",
    )


def test_drop_function_refuses_while_an_epoch_job_waits(
    connect: Callable[..., g.Conn], func_name: bytes
) -> None:
    client, adm = connect(), connect()
    g.submit_epoch(client, func_name, 4_000_000_000, b"later")
    assert adm.admin(f"drop function {func_name.decode()}").startswith(
        "ERR there are still connected workers"
    )
    assert g.status_of(adm.address, func_name) == [1, 0, 0]


def test_the_per_peer_limit_counts_each_address_apart(
    start_server: Callable[..., Server],
) -> None:
    """The per-peer limit counts per address: other addresses of 127.0.0.0/8 still get in."""
    srv = start_server("--fronts", "1", "--max-connections-per-peer", "1")
    g.wait_for(lambda: served(srv.address), what="the readiness probe's slot to be freed")
    with g.Conn(srv.address) as first:
        assert first.admin("version").startswith("OK ")
        assert not served(srv.address)
        other = socket.create_connection(
            (srv.host, srv.port), timeout=5, source_address=("127.0.0.2", 0)
        )
        try:
            other.sendall(b"version\r\n")
            assert other.recv(100).startswith(b"OK ")
        finally:
            other.close()


def test_unfinished_requests_of_all_connections_are_capped(
    start_server: Callable[..., Server], make_name: Callable[..., bytes]
) -> None:
    """Connections that each send most of a large packet and then nothing more must not make a
    front hold that much each (a breaker held 500 MiB of a front with six): past
    --max-total-input, the ones holding the most are closed, with a WARNING."""
    import struct
    import time

    mib = 1024 * 1024
    srv = start_server("--fronts", "1", "--max-packet-size", "64M", "--max-total-input", "100M")
    head = b"\0REQ" + struct.pack("!II", g.SUBMIT_JOB_BG, 60 * mib) + make_name() + b"\0\0"
    socks = []
    try:
        for _ in range(3):  # 3 x 40 MiB of unfinished 60 MiB requests: 120 MiB > 100 MiB
            s = socket.create_connection(_addr(srv.address))
            socks.append(s)
            try:
                s.sendall(head + b"x" * (40 * mib))
            except OSError:
                pass  # closed while sending: the cap at work
        deadline = time.monotonic() + 15
        while "max-total-input" not in srv.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "max-total-input" in srv.stderr_text()
        closed = sum(_closed_by_server(s) for s in socks)
        assert closed >= 1
        with g.Conn(srv.address) as c:  # the front still serves
            assert c.admin("version").startswith("OK")
    finally:
        for s in socks:
            s.close()


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(2.0)
    try:
        return s.recv(1) == b""
    except TimeoutError:  # still open: nothing to read
        return False
    except OSError:  # reset
        return True


def _addr(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)
