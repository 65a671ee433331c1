"""CAN_DO / CANT_DO / RESET_ABILITIES / CAN_DO_TIMEOUT, and what happens to a job whose worker
goes away (gearman-protocol.md §2.5-2.7)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import IS_GEARMAND
from tests.gearclient import (
    CAN_DO,
    CAN_DO_TIMEOUT,
    CANT_DO,
    ERROR,
    JOB_ASSIGN,
    NO_JOB,
    RESET_ABILITIES,
    SET_CLIENT_ID,
    WORK_COMPLETE,
    WORK_FAIL,
    Conn,
    grab,
    grab_job,
    grab_until_job,
    parse_workers,
    status_of,
    submit,
    wait_for,
    worker,
)


def test_can_do_then_cant_do(connect, func_name):
    client, w = connect(), connect()
    submit(client, func_name, b"x", bg=True)
    w.send(CAN_DO, func_name)
    w.send(CANT_DO, func_name)
    assert grab(w) == (NO_JOB, [])
    w.send(CAN_DO, func_name)
    assert grab(w)[0] == JOB_ASSIGN


def test_reset_abilities(connect, make_name):
    fa, fb = make_name(), make_name()
    client, w = connect(), connect()
    submit(client, fa, b"x", bg=True)
    submit(client, fb, b"y", bg=True)
    worker(w, fa, fb)
    w.send(RESET_ABILITIES)
    assert grab(w) == (NO_JOB, [])


def test_status_counts_registered_workers(server, connect, func_name):
    w1, w2 = connect(), connect()
    worker(w1, func_name)
    worker(w2, func_name)
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, 2], what="2 workers")
    w2.send(CANT_DO, func_name)
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, 1], what="1 worker")
    w1.close()
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, 0], what="0 workers")


def test_duplicate_can_do_counts_one_worker(server, connect, func_name):
    """A connection that sends CAN_DO twice is one worker in `status` (gearmand counts two
    registrations; shardgear deduplicates on purpose, see README)."""
    w = connect()
    worker(w, func_name, func_name)
    want = 2 if IS_GEARMAND else 1
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, want], what="registrations")
    w.send(CANT_DO, func_name)  # removes every registration of the function
    wait_for(lambda: status_of(server.address, func_name) == [0, 0, 0], what="0 registrations")


def test_job_held_by_a_worker_that_disconnects_goes_to_another(connect, func_name):
    client, first, second = connect(), connect(), connect()
    h = submit(client, func_name, b"payload")
    worker(first, func_name)
    assert grab_job(first) == [h, func_name, b"payload"]
    first.close()
    worker(second, func_name)
    ptype, args = grab_until_job(second)
    assert (ptype, args) == (JOB_ASSIGN, [h, func_name, b"payload"])
    client.recv_nothing(0.2)  # the client is not told about the requeue
    second.send(WORK_COMPLETE, h, b"done by second")
    assert client.expect(WORK_COMPLETE) == [h, b"done by second"]


@pytest.mark.shardgear_only  # gearmand requeues at once and refuses the result (JOB_NOT_FOUND)
@pytest.mark.parametrize("how", ["cant_do", "reset_abilities"])
def test_cant_do_while_holding_a_job_stops_new_work_only(connect, make_name, how):
    """A worker about to exit gracefully says CANT_DO (or RESET_ABILITIES), then finishes the job
    it holds: the result reaches the client and the job does not run again."""
    func = make_name()
    client, first, second = connect(), connect(), connect()
    h = submit(client, func, b"payload")
    h2 = submit(client, func, b"next")
    worker(first, func)
    assert grab_job(first) == [h, func, b"payload"]
    if how == "cant_do":
        first.send(CANT_DO, func)
    else:
        first.send(RESET_ABILITIES)
    assert grab(first) == (NO_JOB, [])  # no new work for it
    worker(second, func)
    # only the queued job; h stays first's. h2 was leased to first with h (--grab-lease), and
    # first's front gives it back at the CANT_DO: second's GRAB may reach the shard (through
    # another front) before that, get NO_JOB, and is woken when h2 is back, as a worker is.
    assert grab_until_job(second)[1] == [h2, func, b"next"]
    assert grab(second) == (NO_JOB, [])
    first.send(WORK_COMPLETE, h, b"done by first")
    assert client.expect(WORK_COMPLETE) == [h, b"done by first"]
    second.send(WORK_COMPLETE, h2, b"done by second")
    assert client.expect(WORK_COMPLETE) == [h2, b"done by second"]
    first.recv_nothing(0.2)  # no JOB_NOT_FOUND
    wait_for(lambda: status_of(client.address, func) == [0, 0, 1], what="one worker, no job")


@pytest.mark.shardgear_only
def test_cant_do_then_disconnect_requeues_the_held_job(connect, make_name):
    func = make_name()
    client, first, second = connect(), connect(), connect()
    h = submit(client, func, b"payload")
    worker(first, func)
    assert grab_job(first)[0] == h
    first.send(CANT_DO, func)
    worker(second, func)
    assert grab(second) == (NO_JOB, [])
    first.close()
    assert grab_until_job(second)[1] == [h, func, b"payload"]
    second.send(WORK_COMPLETE, h, b"r")
    assert client.expect(WORK_COMPLETE) == [h, b"r"]


@pytest.mark.shardgear_only
def test_cant_do_then_can_do_timeout_expiry_requeues_the_held_job(connect, make_name):
    func = make_name()
    client, slow, fast = connect(), connect(), connect()
    slow.send(CAN_DO_TIMEOUT, func, b"1000")
    h = submit(client, func, b"x")
    assert grab_job(slow)[0] == h
    slow.send(CANT_DO, func)
    worker(fast, func)
    assert grab_until_job(fast, timeout=10, pause=0.1)[1][0] == h
    slow.send(WORK_COMPLETE, h, b"too late")
    assert slow.expect(ERROR) == [b"JOB_NOT_FOUND", b"Job given in work result not found"]
    fast.send(WORK_COMPLETE, h, b"in time")
    assert client.expect(WORK_COMPLETE) == [h, b"in time"]


def test_requeued_job_goes_to_the_tail_of_its_priority(connect, func_name):
    client, first, second = connect(), connect(), connect()
    h1 = submit(client, func_name, b"1")
    h2 = submit(client, func_name, b"2")
    worker(first, func_name)
    assert grab_job(first)[0] == h1
    first.close()
    worker(second, func_name)
    wait_for(lambda: status_of(second.address, func_name) == [2, 0, 1], what="requeue")
    assert grab_job(second)[0] == h2
    assert grab_job(second)[0] == h1


def test_job_retries_drop_sends_work_fail(start_server, connect, func_name):
    srv = start_server("--job-retries", "2")
    client = connect(srv.address)
    h = submit(client, func_name, b"doomed")
    for _attempt in range(2):
        w = worker(connect(srv.address), func_name)
        assert grab_until_job(w)[1][0] == h
        w.close()
    assert client.expect(WORK_FAIL)[0] in (h, h + b"\0")
    last = worker(connect(srv.address), func_name)
    assert grab(last) == (NO_JOB, [])


def test_without_job_retries_requeues_indefinitely(connect, func_name):
    client = connect()
    h = submit(client, func_name, b"x")
    for _attempt in range(4):
        w = worker(connect(), func_name)
        assert grab_until_job(w)[1][0] == h
        w.close()
    client.recv_nothing(0.2)


def test_can_do_timeout_expiry_requeues_to_another_worker(connect, func_name):
    client, slow, fast = connect(), connect(), connect()
    slow.send(CAN_DO_TIMEOUT, func_name, b"1000")
    h = submit(client, func_name, b"x")
    assert grab_job(slow)[0] == h
    worker(fast, func_name)
    _, args = grab_until_job(fast, timeout=10, pause=0.1)
    assert args[0] == h
    client.recv_nothing(0.1)
    slow.send(WORK_COMPLETE, h, b"too late")
    assert slow.expect(ERROR) == [b"JOB_NOT_FOUND", b"Job given in work result not found"]
    fast.send(WORK_COMPLETE, h, b"in time")
    assert client.expect(WORK_COMPLETE) == [h, b"in time"]


def test_can_do_timeout_below_one_second_is_raised_to_one_second(connect, func_name):
    client, slow, fast = connect(), connect(), connect()
    slow.send(CAN_DO_TIMEOUT, func_name, b"100")
    h = submit(client, func_name, b"x")
    assert grab_job(slow)[0] == h
    worker(fast, func_name)
    time.sleep(0.5)  # a lower bound only: the server cannot requeue before 1 s
    assert grab(fast) == (NO_JOB, [])
    assert grab_until_job(fast, timeout=10, pause=0.1)[1][0] == h


def test_can_do_timeout_worker_that_completes_in_time(connect, func_name):
    client, w = connect(), connect()
    w.send(CAN_DO_TIMEOUT, func_name, b"5000")
    h = submit(client, func_name, b"x")
    assert grab_job(w)[0] == h
    w.send(WORK_COMPLETE, h, b"ok")
    assert client.expect(WORK_COMPLETE) == [h, b"ok"]


def test_work_result_from_a_connection_that_does_not_hold_the_job(connect, func_name):
    client, w, stranger = connect(), connect(), connect()
    h = submit(client, func_name, b"x")
    worker(w, func_name)
    grab_job(w)
    stranger.send(WORK_COMPLETE, h, b"not mine")
    assert stranger.expect(ERROR) == [b"JOB_NOT_FOUND", b"Job given in work result not found"]
    w.send(WORK_COMPLETE, h, b"mine")
    assert client.expect(WORK_COMPLETE) == [h, b"mine"]


def wait_gone(address: str, client_id: bytes) -> None:
    def gone() -> bool:
        with Conn(address) as adm:
            return all(
                cid != client_id.decode() for _, _, cid, _ in parse_workers(adm.admin("workers"))
            )

    wait_for(gone, what="client connection to disappear from `workers`")


def test_foreground_client_disconnect_drops_its_queued_job(server, connect, func_name):
    client = connect()
    cid = b"leaver-" + func_name
    client.send(SET_CLIENT_ID, cid)
    submit(client, func_name, b"never run")
    client.close()
    wait_gone(server.address, cid)
    time.sleep(0.2)
    w = worker(connect(), func_name)
    assert grab(w) == (NO_JOB, [])


def test_foreground_disconnect_keeps_job_of_a_remaining_client(server, connect, func_name):
    leaver, stayer, w = connect(), connect(), connect()
    cid = b"leaver-" + func_name
    leaver.send(SET_CLIENT_ID, cid)
    h = submit(leaver, func_name, b"d", unique=b"kept")
    assert submit(stayer, func_name, b"d", unique=b"kept") == h
    leaver.close()
    wait_gone(server.address, cid)
    worker(w, func_name)
    assert grab_job(w)[0] == h
    w.send(WORK_COMPLETE, h, b"r")
    assert stayer.expect(WORK_COMPLETE) == [h, b"r"]


def test_background_job_survives_its_submitter(server, connect, func_name):
    client = connect()
    h = submit(client, func_name, b"d", bg=True)
    client.close()
    time.sleep(0.2)
    w = worker(connect(), func_name)
    assert grab_job(w)[0] == h
