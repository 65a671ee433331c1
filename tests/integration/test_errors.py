"""Protocol errors (gearman-protocol.md §6): ERROR packets that keep the connection open, and the
malformed input that closes it."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import IS_GEARMAND
from tests.gearclient import (
    ECHO_REQ,
    ECHO_RES,
    ERROR,
    JOB_CREATED,
    RES,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_EPOCH,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    grab_job,
    packet,
    submit,
    worker,
)

COMMAND_NOT_EXPECTED = [b"INVALID_COMMAND", b"Command not expected"]


def assert_alive(conn):
    conn.send(ECHO_REQ, b"still open")
    assert conn.expect(ECHO_RES) == [b"still open"]


# Response-type packets and the unimplemented ones, sent to the server.
NOT_EXPECTED = {
    5: b"",
    6: b"",  # NOOP
    8: b"H:x:1",  # JOB_CREATED
    10: b"",  # NO_JOB
    11: b"H:x:1\0f\0d",  # JOB_ASSIGN
    17: b"echo",  # ECHO_RES
    19: b"CODE\0text",  # ERROR
    20: b"H:x:1\x001\x000\x000\x000",  # STATUS_RES
    24: b"",  # ALL_YOURS
    27: b"exceptions",  # OPTION_RES
    31: b"H:x:1\0f\0u\0d",  # JOB_ASSIGN_UNIQ
    **({35: b"f\0u\x001\x002\x003\x004\x005\0d"} if IS_GEARMAND else {}),  # SUBMIT_JOB_SCHED:
    # a cron schedule in shardgear (tests/integration/test_cron.py)
    40: b"H:x:1\0f\0u\0r\0d",  # JOB_ASSIGN_ALL
    42: b"u\x001\x000\x000\x000\x000",  # STATUS_RES_UNIQUE
}


@pytest.mark.parametrize("ptype", sorted(NOT_EXPECTED))
def test_response_type_packet_gets_invalid_command(connect, ptype):
    c = connect()
    body = NOT_EXPECTED[ptype]
    c.send_raw(struct.pack(">4sII", b"\0REQ", ptype, len(body)) + body)
    assert c.expect(ERROR) == COMMAND_NOT_EXPECTED
    assert_alive(c)


def test_response_magic_gets_invalid_magic_and_connection_stays_open(connect, func_name):
    c = connect()
    c.send_raw(packet(SUBMIT_JOB_BG, func_name, b"", b"x", magic=RES))
    assert c.expect(ERROR) == [b"INVALID_MAGIC", b"Request magic expected"]
    assert_alive(c)


@pytest.mark.parametrize("magic", [b"\0XYZ", b"\0req", b"\0\0\0\0"])
def test_bad_magic_closes_the_connection(connect, magic):
    c = connect()
    c.send_raw(struct.pack(">4sII", magic, ECHO_REQ, 1) + b"x")
    assert c.is_closed()


@pytest.mark.parametrize(
    "ptype",
    [
        0,
        43,
        1000,
        # gearmand 1.1.20 crashes (SIGSEGV, the whole server exits) on this one.
        pytest.param(0xFFFFFFFF, marks=pytest.mark.shardgear_only),
    ],
)
def test_unknown_type_closes_the_connection(connect, ptype):
    c = connect()
    c.send_raw(struct.pack(">4sII", b"\0REQ", ptype, 0))
    assert c.is_closed()


def test_other_connections_survive_a_closed_one(connect, func_name):
    bad, good = connect(), connect()
    bad.send_raw(struct.pack(">4sII", b"\0REQ", 43, 0))
    assert bad.is_closed()
    assert_alive(good)


HUGE = b"1" * 5000  # past Python's int() limit of 4300 digits


@pytest.mark.shardgear_only  # gearmand 2.0 closes (strtoll's overflow); 1.1.20 does not
def test_an_epoch_of_thousands_of_digits_closes_the_connection(connect, func_name):
    """A breaker crashed a front with it (Python's int() raised where C's strtoll overflows)."""
    bad, good = connect(), connect()
    bad.send(SUBMIT_JOB_EPOCH, func_name, b"", HUGE, b"x")
    assert bad.is_closed()
    assert_alive(good)


def test_numbers_of_thousands_of_digits_are_read_as_c_reads_them(connect, func_name):
    """atoi saturates: a breaker crashed a shard with a WORK_STATUS whose numerator had 5000
    digits, and a front with such a maxqueue."""
    huge = HUGE
    client, w = connect(), connect()
    handle = submit(client, func_name, b"job")
    worker(w, func_name)
    assert grab_job(w)[0] == handle
    w.send(WORK_STATUS, handle, huge, b"1")
    w.send(WORK_COMPLETE, handle, b"done")
    while True:
        ptype, args = client.recv()
        if ptype == WORK_COMPLETE:
            assert args == [handle, b"done"]
            break
        assert ptype == WORK_STATUS, ptype
    assert client.admin(f"maxqueue {func_name.decode()} 1 {huge.decode()}").strip() == "OK"
    assert_alive(client)
    assert_alive(w)


@pytest.mark.parametrize(
    ("ptype", "args", "text"),
    [
        (WORK_COMPLETE, [b"r"], b"Job given in work result not found"),
        (WORK_FAIL, [], b"Job given in work result not found"),
        (WORK_STATUS, [b"1", b"2"], b"Job given in work result not found"),
        (WORK_DATA, [b"d"], b"Job does not exist on server"),
        (WORK_WARNING, [b"w"], b"Job does not exist on server"),
        (WORK_EXCEPTION, [b"e"], b"An exception was received for a job that does not exist"),
    ],
)
def test_work_packet_for_unknown_handle(connect, ptype, args, text):
    c = connect()
    c.send(ptype, b"H:nowhere:987654", *args)
    assert c.expect(ERROR) == [b"JOB_NOT_FOUND", text]
    assert_alive(c)


def test_maxqueue_full_is_queue_error(connect, func_name):
    c, adm = connect(), connect()
    submit(c, func_name, b"1", bg=True)  # the function must exist for maxqueue to apply
    assert adm.admin(f"maxqueue {func_name.decode()} 2").startswith("OK")
    submit(c, func_name, b"2", bg=True)
    c.send(SUBMIT_JOB_BG, func_name, b"", b"3")
    assert c.expect(ERROR) == [b"QUEUE_ERROR", b"Job queue is full"]
    assert_alive(c)


def test_unique_longer_than_64_bytes_is_argument_too_large(connect, func_name):
    c = connect()
    c.send(SUBMIT_JOB, func_name, b"u" * 65, b"x")
    assert c.expect(ERROR) == [b"ARGUMENT_TOO_LARGE", b"Unique value too large"]
    assert_alive(c)
    c.send(SUBMIT_JOB, func_name, b"u" * 64, b"x")
    c.expect(JOB_CREATED)


def test_too_many_text_tokens_close_the_connection(connect):
    c = connect()
    c.send_raw(b"status a b c d e\n")
    assert c.is_closed()


@pytest.mark.shardgear_only
def test_packet_larger_than_max_packet_size_closes_the_connection(start_server, connect, func_name):
    srv = start_server("--max-packet-size", "65536")
    ok, big = connect(srv.address), connect(srv.address)
    h = submit(ok, func_name, b"x" * 60000, bg=True)
    assert h
    body = func_name + b"\0\0" + b"y" * 70000
    big.send_raw(struct.pack(">4sII", b"\0REQ", SUBMIT_JOB_BG, len(body)))
    try:
        big.send_raw(body)
    except OSError:
        pass
    assert big.is_closed()
    assert_alive(ok)


@pytest.mark.shardgear_only
def test_oversized_header_alone_closes_the_connection(start_server, connect):
    """The server must not wait for (or buffer) a body it will refuse."""
    srv = start_server("--max-packet-size", "65536")
    c = connect(srv.address)
    c.send_raw(struct.pack(">4sII", b"\0REQ", ECHO_REQ, 1 << 30))
    assert c.is_closed()
