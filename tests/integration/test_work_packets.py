"""What a worker sends about a job is relayed to the job's foreground client(s)."""

from __future__ import annotations

from tests.gearclient import (
    ERROR,
    GET_STATUS,
    OPTION_REQ,
    OPTION_RES,
    STATUS_RES,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    grab_job,
    submit,
    worker,
)


def start_job(connect, func_name, data=b"d"):
    client, w = connect(), connect()
    handle = submit(client, func_name, data)
    worker(w, func_name)
    assert grab_job(w)[0] == handle
    return client, w, handle


def test_work_data_warning_status_then_complete(connect, func_name):
    client, w, h = start_job(connect, func_name)
    w.send(WORK_DATA, h, b"chunk\0one")
    w.send(WORK_WARNING, h, b"careful")
    w.send(WORK_STATUS, h, b"1", b"4")
    w.send(WORK_DATA, h, b"chunk two")
    w.send(WORK_COMPLETE, h, b"final")
    assert client.expect(WORK_DATA) == [h, b"chunk\0one"]
    assert client.expect(WORK_WARNING) == [h, b"careful"]
    assert client.expect(WORK_STATUS) == [h, b"1", b"4"]
    assert client.expect(WORK_DATA) == [h, b"chunk two"]
    assert client.expect(WORK_COMPLETE) == [h, b"final"]


def test_work_fail(connect, func_name):
    client, w, h = start_job(connect, func_name)
    w.send(WORK_FAIL, h)
    assert client.expect(WORK_FAIL) == [h]
    client.send(GET_STATUS, h)
    assert client.expect(STATUS_RES) == [h, b"0", b"0", b"0", b"0"]


def test_work_fail_is_not_retried(connect, func_name):
    client, w, h = start_job(connect, func_name)
    w.send(WORK_FAIL, h)
    client.expect(WORK_FAIL)
    other = worker(connect(), func_name)
    from tests.gearclient import NO_JOB, grab

    assert grab(other) == (NO_JOB, [])


def test_exceptions_option_is_acknowledged(connect):
    c = connect()
    c.send(OPTION_REQ, b"exceptions")
    assert c.expect(OPTION_RES) == [b"exceptions"]


def test_exceptions_option_is_case_insensitive(connect):
    c = connect()
    c.send(OPTION_REQ, b"Exceptions")
    got = c.expect(OPTION_RES)
    assert got[0].lower() == b"exceptions"


def test_unknown_option_is_an_error_and_connection_stays_open(connect):
    from tests.gearclient import ECHO_REQ, ECHO_RES

    c = connect()
    c.send(OPTION_REQ, b"no-such-option")
    assert c.expect(ERROR) == [b"UNKNOWN_OPTION", b"Server does not recognize given option"]
    c.send(ECHO_REQ, b"still here")
    assert c.expect(ECHO_RES) == [b"still here"]


def test_work_exception_to_client_with_exceptions_option(connect, func_name):
    client, w = connect(), connect()
    client.send(OPTION_REQ, b"exceptions")
    client.expect(OPTION_RES)
    h = submit(client, func_name, b"d")
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_EXCEPTION, h, b"it broke\0badly")
    assert client.expect(WORK_EXCEPTION) == [h, b"it broke\0badly"]
    client.send(GET_STATUS, h)
    assert client.expect(STATUS_RES) == [h, b"0", b"0", b"0", b"0"]


def test_work_exception_becomes_work_fail_for_other_clients(connect, func_name):
    client, w, h = start_job(connect, func_name)
    w.send(WORK_EXCEPTION, h, b"it broke")
    (payload,) = client.expect(WORK_FAIL)
    # gearmand sends `HANDLE\0` (a trailing NUL, gearman-protocol.md §2.8): accept either.
    assert payload in (h, h + b"\0")


def test_work_exception_fans_out_by_each_clients_option(connect, func_name):
    plain, fancy, w = connect(), connect(), connect()
    fancy.send(OPTION_REQ, b"exceptions")
    fancy.expect(OPTION_RES)
    h = submit(plain, func_name, b"d", unique=b"shared")
    assert submit(fancy, func_name, b"d", unique=b"shared") == h
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_EXCEPTION, h, b"boom")
    assert fancy.expect(WORK_EXCEPTION) == [h, b"boom"]
    assert plain.expect(WORK_FAIL)[0] in (h, h + b"\0")


def test_exceptions_server_flag_enables_option_for_everyone(start_server, connect, func_name):
    srv = start_server("--exceptions")
    client, w = connect(srv.address), connect(srv.address)
    h = submit(client, func_name, b"d")
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_EXCEPTION, h, b"boom")
    assert client.expect(WORK_EXCEPTION) == [h, b"boom"]


def test_background_job_sends_nothing_to_its_submitter(connect, func_name):
    client, w = connect(), connect()
    h = submit(client, func_name, b"d", bg=True)
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_DATA, h, b"x")
    w.send(WORK_STATUS, h, b"1", b"2")
    w.send(WORK_COMPLETE, h, b"r")
    client.recv_nothing()
