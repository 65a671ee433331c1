"""GET_STATUS, GET_STATUS_UNIQUE, ECHO_REQ and SET_CLIENT_ID."""

from __future__ import annotations

from tests.gearclient import (
    ECHO_REQ,
    ECHO_RES,
    GET_STATUS,
    GET_STATUS_UNIQUE,
    SET_CLIENT_ID,
    STATUS_RES,
    STATUS_RES_UNIQUE,
    WORK_COMPLETE,
    WORK_STATUS,
    grab_job,
    parse_workers,
    submit,
    wait_for,
    worker,
)


def status(conn, handle):
    conn.send(GET_STATUS, handle)
    return conn.expect(STATUS_RES)


def status_unique(conn, unique):
    conn.send(GET_STATUS_UNIQUE, unique)
    return conn.expect(STATUS_RES_UNIQUE)


def test_get_status_through_a_jobs_life(connect, func_name):
    client, w, observer = connect(), connect(), connect()
    h = submit(client, func_name, b"x")
    assert status(observer, h) == [h, b"1", b"0", b"0", b"0"]
    worker(w, func_name)
    grab_job(w)
    assert status(observer, h) == [h, b"1", b"1", b"0", b"0"]
    w.send(WORK_STATUS, h, b"7", b"9")
    assert client.expect(WORK_STATUS) == [h, b"7", b"9"]
    assert status(observer, h) == [h, b"1", b"1", b"7", b"9"]
    w.send(WORK_COMPLETE, h, b"r")
    client.expect(WORK_COMPLETE)
    assert status(observer, h) == [h, b"0", b"0", b"0", b"0"]


def test_get_status_of_background_job(connect, func_name):
    client = connect()
    h = submit(client, func_name, b"x", bg=True)
    assert status(client, h) == [h, b"1", b"0", b"0", b"0"]


def test_get_status_of_unknown_handle(connect):
    c = connect()
    assert status(c, b"H:nowhere:424242") == [b"H:nowhere:424242", b"0", b"0", b"0", b"0"]
    assert status(c, b"garbage") == [b"garbage", b"0", b"0", b"0", b"0"]


def test_get_status_unique_echoes_the_unique(connect, func_name):
    client, w = connect(), connect()
    h = submit(client, func_name, b"x", unique=b"status-u")
    assert status_unique(client, b"status-u") == [b"status-u", b"1", b"0", b"0", b"0", b"1"]
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_STATUS, h, b"3", b"4")
    client.expect(WORK_STATUS)
    assert status_unique(client, b"status-u") == [b"status-u", b"1", b"1", b"3", b"4", b"1"]
    w.send(WORK_COMPLETE, h, b"")
    client.expect(WORK_COMPLETE)
    assert status_unique(client, b"status-u") == [b"status-u", b"0", b"0", b"0", b"0", b"0"]


def test_get_status_unique_of_background_job_has_no_clients(connect, func_name):
    client = connect()
    submit(client, func_name, b"x", unique=b"bg-status-u", bg=True)
    assert status_unique(client, b"bg-status-u") == [b"bg-status-u", b"1", b"0", b"0", b"0", b"0"]


def test_get_status_unique_of_unknown(connect):
    c = connect()
    assert status_unique(c, b"nope-nothing") == [b"nope-nothing", b"0", b"0", b"0", b"0", b"0"]


def test_get_status_unique_finds_the_job_across_functions(connect, make_name):
    client = connect()
    for shard in (0, 1):
        func = make_name(shard=shard)
        unique = f"cross-{func.decode()}".encode()
        submit(client, func, b"x", unique=unique, bg=True)
        assert status_unique(client, unique)[1] == b"1"


def test_echo(connect):
    c = connect()
    for payload in (b"", b"hello", b"with\0nul\0bytes", bytes(range(256)) * 40):
        c.send(ECHO_REQ, payload)
        assert c.expect(ECHO_RES) == [payload]


def test_set_client_id_shows_in_workers(connect, func_name):
    c, adm = connect(), connect()
    cid = b"my-client-" + func_name[-8:]
    c.send(SET_CLIENT_ID, cid)
    worker(c, func_name)

    def row():
        return [r for r in parse_workers(adm.admin("workers")) if r[2] == cid.decode()]

    rows = wait_for(row, what="client id in workers")
    assert rows[0][1] == "127.0.0.1"
    assert rows[0][3] == [func_name.decode()]


def test_default_client_id_is_dash(connect, func_name):
    c, adm = connect(), connect()
    worker(c, func_name)

    def row():
        return [r for r in parse_workers(adm.admin("workers")) if func_name.decode() in r[3]]

    assert wait_for(row, what="worker row")[0][2] == "-"
