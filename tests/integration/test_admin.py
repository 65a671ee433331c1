"""The text admin protocol (gearman-protocol.md §3)."""

from __future__ import annotations

import re

import pytest

from tests.gearclient import (
    ECHO_REQ,
    ECHO_RES,
    JOB_CREATED,
    NO_JOB,
    SUBMIT_JOB_BG,
    WORK_COMPLETE,
    WORK_FAIL,
    grab,
    grab_job,
    parse_status,
    parse_workers,
    status_of,
    submit,
    wait_for,
    worker,
)

LEVELS = {"FATAL", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"}


def lines(reply: str) -> list[str]:
    assert reply.endswith(".\n"), reply
    return reply.splitlines()[:-1]


def test_status_counts_total_running_workers(server, connect, func_name):
    client, w, adm = connect(), connect(), connect()
    submit(client, func_name, b"1")
    submit(client, func_name, b"2", bg=True)
    submit(client, func_name, b"3", prio="low", bg=True)
    assert parse_status(adm.admin("status"))[func_name.decode()] == [3, 0, 0]
    worker(w, func_name)
    grab_job(w)
    assert parse_status(adm.admin("status"))[func_name.decode()] == [3, 1, 1]
    line = [x for x in lines(adm.admin("status")) if x.startswith(func_name.decode() + "\t")]
    assert line == [f"{func_name.decode()}\t3\t1\t1"]


def test_prioritystatus_counts_queued_jobs_per_priority(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    submit(client, func_name, b"h", prio="high", bg=True)
    submit(client, func_name, b"h", prio="high", bg=True)
    submit(client, func_name, b"n", bg=True)
    submit(client, func_name, b"l", prio="low", bg=True)
    assert parse_status(adm.admin("prioritystatus"))[func_name.decode()] == [2, 1, 1, 0]
    worker(w, func_name)
    grab_job(w)  # a running job is not queued
    assert parse_status(adm.admin("prioritystatus"))[func_name.decode()] == [1, 1, 1, 1]


def test_status_keeps_functions_after_their_jobs_and_workers_are_gone(server, connect, func_name):
    client, w = connect(), connect()
    h = submit(client, func_name, b"x")
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_COMPLETE, h, b"")
    client.expect(WORK_COMPLETE)
    w.close()
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, 0], what="0 0 0 row")


def test_workers_lists_every_connection_on_every_front(connect, make_name):
    adm = connect()
    funcs = [make_name("wk") for _ in range(10)]
    for f in funcs:
        worker(connect(), f)

    def all_listed():
        rows = parse_workers(adm.admin("workers"))
        listed = {f for row in rows for f in row[3]}
        return all(f.decode() in listed for f in funcs) and rows

    rows = wait_for(all_listed, what="all 10 workers listed")
    for row in rows:
        fd, ip, _cid, _funcs = row
        assert fd.isdigit()
        assert ip == "127.0.0.1"
    mine = [row for row in rows if set(row[3]) & {f.decode() for f in funcs}]
    assert len(mine) == 10
    assert all(len(row[3]) == 1 for row in mine)


def test_workers_lists_connections_without_functions(connect):
    adm = connect()
    rows = parse_workers(adm.admin("workers"))
    assert any(r[3] == [] for r in rows)  # at least the admin connection itself


def test_version(connect):
    assert re.fullmatch(r"OK \S+\n", connect().admin("version"))


def test_getpid_is_the_servers_pid(server, connect):
    assert connect().admin("getpid") == f"OK {server.pid}\n"


def test_verbose(connect):
    reply = connect().admin("verbose")
    assert reply.startswith("OK ") and reply.endswith("\n")
    assert reply.split()[1] in LEVELS


def test_commands_are_case_insensitive_and_accept_crlf(connect):
    adm = connect()
    assert adm.admin("VERSION").startswith("OK ")
    assert adm.admin("Version\r").startswith("OK ")
    assert lines(adm.admin("STATUS")) is not None


def test_unknown_command(connect):
    adm = connect()
    assert adm.admin("bogus") == "ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert adm.admin("") == "ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    assert adm.admin("version").startswith("OK ")  # the connection stays usable


def test_maxqueue_all_priorities(connect, func_name):
    client, adm = connect(), connect()
    submit(client, func_name, b"1", bg=True)
    assert adm.admin(f"maxqueue {func_name.decode()} 2") == "OK\r\n"
    submit(client, func_name, b"2", prio="low", bg=True)
    for ptype in (SUBMIT_JOB_BG, 32, 34):  # normal, high, low background
        client.send(ptype, func_name, b"", b"x")
        assert client.expect(19) == [b"QUEUE_ERROR", b"Job queue is full"]


def test_maxqueue_without_limit_resets(connect, func_name):
    client, adm = connect(), connect()
    submit(client, func_name, b"1", bg=True)
    assert adm.admin(f"maxqueue {func_name.decode()} 1") == "OK\r\n"
    client.send(SUBMIT_JOB_BG, func_name, b"", b"x")
    assert client.expect(19)[0] == b"QUEUE_ERROR"
    assert adm.admin(f"maxqueue {func_name.decode()}") == "OK\r\n"
    submit(client, func_name, b"2", bg=True)


def test_maxqueue_per_priority(connect, func_name):
    """`maxqueue F H N L`: the limit of the new job's priority against the function's total."""
    client, adm = connect(), connect()
    submit(client, func_name, b"1", prio="high", bg=True)
    assert adm.admin(f"maxqueue {func_name.decode()} 0 0 2") == "OK\r\n"
    submit(client, func_name, b"2", prio="low", bg=True)  # total 1 < 2
    client.send(34, func_name, b"", b"3")  # SUBMIT_JOB_LOW_BG: total 2 >= 2
    assert client.expect(19) == [b"QUEUE_ERROR", b"Job queue is full"]
    submit(client, func_name, b"4", prio="high", bg=True)  # HIGH limit 0: unlimited
    submit(client, func_name, b"5", bg=True)  # NORMAL limit 0: unlimited


def test_maxqueue_two_numbers_leave_low_unlimited(connect, func_name):
    client, adm = connect(), connect()
    submit(client, func_name, b"1", bg=True)
    assert adm.admin(f"maxqueue {func_name.decode()} 1 1") == "OK\r\n"
    client.send(SUBMIT_JOB_BG, func_name, b"", b"2")
    assert client.expect(19)[0] == b"QUEUE_ERROR"
    submit(client, func_name, b"3", prio="low", bg=True)


def test_maxqueue_counts_running_jobs(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    submit(client, func_name, b"1", bg=True)
    worker(w, func_name)
    grab_job(w)
    assert adm.admin(f"maxqueue {func_name.decode()} 1") == "OK\r\n"
    client.send(SUBMIT_JOB_BG, func_name, b"", b"2")
    assert client.expect(19)[0] == b"QUEUE_ERROR"


def test_maxqueue_does_not_stop_coalescing(connect, func_name):
    client, adm = connect(), connect()
    h = submit(client, func_name, b"1", unique=b"mq", bg=True)
    assert adm.admin(f"maxqueue {func_name.decode()} 1") == "OK\r\n"
    assert submit(client, func_name, b"1", unique=b"mq", bg=True) == h


def test_maxqueue_of_unknown_function_is_ok(connect, func_name):
    assert connect().admin(f"maxqueue {func_name.decode()} 5") == "OK\r\n"


def test_maxqueue_without_function(connect):
    assert connect().admin("maxqueue") == (
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue\r\n"
    )


def test_show_jobs(connect, func_name):
    client, adm = connect(), connect()
    hf = submit(client, func_name, b"fg")
    hb = submit(client, func_name, b"bg", bg=True)
    rows = {r.split("\t")[0]: r.split("\t")[1:] for r in lines(adm.admin("show jobs"))}
    for h in (hf, hb):
        fields = rows[h.decode()]
        assert len(fields) == 3
        assert all(x.isdigit() for x in fields)
        assert fields[:2] == ["0", "0"]  # retries, ignore_job


def test_show_jobs_forgets_finished_jobs(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    h = submit(client, func_name, b"x")
    worker(w, func_name)
    grab_job(w)
    assert h.decode() in adm.admin("show jobs")
    w.send(WORK_COMPLETE, h, b"")
    client.expect(WORK_COMPLETE)
    assert h.decode() + "\t" not in adm.admin("show jobs")


def test_show_unique_jobs(start_server, connect, func_name):
    srv = start_server()
    client, adm = connect(srv.address), connect(srv.address)
    submit(client, func_name, b"a", unique=b"u-one", bg=True)
    submit(client, func_name, b"b", unique=b"u-two")
    submit(client, func_name, b"c", bg=True)  # no unique: an empty line
    assert sorted(lines(adm.admin("show unique jobs"))) == ["", "u-one", "u-two"]


def test_show_unknown_argument(connect):
    adm = connect()
    assert adm.admin("show foo") == "ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert adm.admin("show jobs x") == "ERR UNKNOWN_SHOW_ARGUMENTS\r\n"


def test_cancel_queued_job(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    h = submit(client, func_name, b"x")
    assert adm.admin(f"cancel job {h.decode()}") == "OK\r\n"
    assert client.expect(WORK_FAIL) == [h]
    worker(w, func_name)
    assert grab(w) == (NO_JOB, [])


def test_cancel_queued_background_job(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    h = submit(client, func_name, b"x", bg=True)
    assert adm.admin(f"cancel job {h.decode()}") == "OK\r\n"
    worker(w, func_name)
    assert grab(w) == (NO_JOB, [])
    assert h.decode() + "\t" not in adm.admin("show jobs")


def test_cancel_running_job_fails_its_client(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    h = submit(client, func_name, b"x")
    worker(w, func_name)
    grab_job(w)
    assert adm.admin(f"cancel job {h.decode()}") == "OK\r\n"
    assert client.expect(WORK_FAIL) == [h]


def test_cancel_unknown_job(connect):
    assert connect().admin("cancel job H:nowhere:31337") == "ERR UNKNOWN_JOB\r\n"


@pytest.mark.parametrize("line", ["cancel foo x", "cancel job a b"])
def test_cancel_malformed(connect, line):
    assert connect().admin(line) == "ERR UNKNOWN_ERROR\r\n"


def test_create_function(server, connect, func_name):
    adm = connect()
    assert adm.admin(f"create function {func_name.decode()}\r") == "OK\r\n"
    assert parse_status(adm.admin("status"))[func_name.decode()] == [0, 0, 0]


def test_create_function_without_name(connect):
    assert connect().admin("create function") == (
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    )


def test_drop_idle_function(connect, func_name):
    adm = connect()
    adm.admin(f"create function {func_name.decode()}\r")
    assert adm.admin(f"drop function {func_name.decode()}") == "OK\r\n"
    assert func_name.decode() not in parse_status(adm.admin("status"))


def test_drop_function_with_a_worker_is_refused(connect, func_name):
    w, adm = connect(), connect()
    worker(w, func_name)
    w.send(ECHO_REQ, b"sync")
    w.expect(ECHO_RES)
    wait_for(lambda: func_name.decode() in parse_status(adm.admin("status")), what="function")
    assert adm.admin(f"drop function {func_name.decode()}") == (
        "ERR there are still connected workers or executing clients\r\n"
    )
    assert func_name.decode() in parse_status(adm.admin("status"))


def test_drop_function_with_a_running_job_is_refused(connect, func_name):
    client, w, adm = connect(), connect(), connect()
    submit(client, func_name, b"x")
    worker(w, func_name)
    grab_job(w)
    assert adm.admin(f"drop function {func_name.decode()}").startswith(
        "ERR there are still connected workers"
    )


def test_drop_missing_function(connect, func_name):
    assert connect().admin(f"drop function {func_name.decode()}") == "ERR function not found\r\n"


def test_drop_function_without_name(connect):
    assert connect().admin("drop function") == (
        "ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"
    )


def test_binary_and_text_mixed_on_one_connection(connect, func_name):
    c = connect()
    c.send(ECHO_REQ, b"one")
    assert c.expect(ECHO_RES) == [b"one"]
    assert c.admin("version").startswith("OK ")
    c.send(SUBMIT_JOB_BG, func_name, b"", b"x")
    (h,) = c.expect(JOB_CREATED)
    assert parse_status(c.admin("status"))[func_name.decode()] == [1, 0, 0]
    assert h.decode() in c.admin("show jobs")
    c.send(ECHO_REQ, b"two")
    assert c.expect(ECHO_RES) == [b"two"]


def test_text_line_and_binary_packet_in_one_write(connect):
    c = connect()
    from tests.gearclient import packet

    c.send_raw(b"version\n" + packet(ECHO_REQ, b"after") + b"verbose\n")
    assert c.readline().startswith(b"OK ")
    assert c.expect(ECHO_RES) == [b"after"]
    assert c.readline().startswith(b"OK ")
