"""The sans-IO connection (shardgear/_protocol.py): requests out, bytes in, what changed."""

from __future__ import annotations

import pytest

from shardgear._protocol import (
    NOOP_EVENT,
    Assignment,
    BadResponse,
    Connection,
    ConnectionLost,
    JobException,
    JobFailed,
    JobState,
    ServerError,
    WorkComplete,
    WorkData,
    WorkStatus,
    WorkWarning,
    assignment_of,
    reply_body,
    status_of,
    unique_status_of,
)
from shardgear.proto.packets import PacketType, request, response

T = PacketType


def fg(conn: Connection, func: bytes = b"f", unique: bytes = b"", data: bytes = b"x") -> JobState:
    key = None if not unique else ((func, unique, data) if unique == b"-" else (func, unique))
    job = JobState(func, key, False, conn.server)
    conn.submit(job, T.SUBMIT_JOB, func, unique, data)
    return job


def test_submit_sends_the_packet_and_job_created_answers_it() -> None:
    conn = Connection("s:1")
    job = fg(conn, b"rev", b"", b"abc")
    assert conn.data_to_send() == request(T.SUBMIT_JOB, b"rev", b"", b"abc")
    assert conn.data_to_send() == b""
    assert conn.receive(response(T.JOB_CREATED, b"H:1")) == [job]
    assert job.created and job.handle == b"H:1" and not job.done


def test_work_packets_stream_then_complete() -> None:
    conn = Connection("s:1")
    job = fg(conn)
    conn.receive(response(T.JOB_CREATED, b"H:1"))
    wire = (
        response(T.WORK_DATA, b"H:1", b"a\0b")
        + response(T.WORK_WARNING, b"H:1", b"careful")
        + response(T.WORK_STATUS, b"H:1", b"3", b"10")
        + response(T.WORK_COMPLETE, b"H:1", b"done")
    )
    assert conn.receive(wire) == [job] * 4
    assert list(job.events) == [
        WorkData(b"a\0b"),
        WorkWarning(b"careful"),
        WorkStatus(3, 10),
        WorkComplete(b"done"),
    ]
    assert job.done and job.result == b"done" and (job.numerator, job.denominator) == (3, 10)
    assert not conn.busy


def test_work_fail_with_gearmand_trailing_nul() -> None:
    conn = Connection("s:1")
    job = fg(conn)
    conn.receive(response(T.JOB_CREATED, b"H:7"))
    conn.receive(response(T.WORK_FAIL, b"H:7", b""))  # gearmand 1.1: "H:7\0"
    assert isinstance(job.error, JobFailed) and job.error.handle == "H:7"


def test_work_exception_carries_its_data() -> None:
    conn = Connection("s:1")
    job = fg(conn)
    conn.receive(response(T.JOB_CREATED, b"H:1") + response(T.WORK_EXCEPTION, b"H:1", b"boom"))
    assert isinstance(job.error, JobException) and job.error.data == b"boom"


def test_replies_answer_requests_in_order() -> None:
    conn = Connection("s:1")
    echo = conn.request(T.ECHO_REQ, b"hi", expect=frozenset({int(T.ECHO_RES)}))
    job = fg(conn)
    status = conn.request(T.GET_STATUS, b"H:9", expect=frozenset({int(T.STATUS_RES)}))
    uniq = conn.request(T.GET_STATUS_UNIQUE, b"u", expect=frozenset({int(T.STATUS_RES_UNIQUE)}))
    conn.receive(
        response(T.ECHO_RES, b"hi")
        + response(T.JOB_CREATED, b"H:1")
        + response(T.STATUS_RES, b"H:9", b"1", b"0", b"2", b"4")
        + response(T.STATUS_RES_UNIQUE, b"u", b"1", b"1", b"0", b"0", b"3")
    )
    assert reply_body(echo) == b"hi" and job.handle == b"H:1"
    assert status_of(status).known and status_of(status).numerator == 2
    u = unique_status_of(uniq)
    assert (u.unique, u.running, u.clients) == ("u", True, 3)


def test_error_answers_the_head_request() -> None:
    conn = Connection("s:1")
    job = fg(conn)
    second = fg(conn, b"g")
    conn.receive(response(T.ERROR, b"QUEUE_ERROR", b"Job queue is full"))
    assert isinstance(job.error, ServerError)
    assert (job.error.code, job.error.text) == ("QUEUE_ERROR", "Job queue is full")
    assert not second.done
    conn.receive(response(T.JOB_CREATED, b"H:2"))
    assert second.handle == b"H:2"


def test_job_not_found_answers_no_request() -> None:
    """An ERROR about a WORK_* packet may arrive after replies to later requests (shardgear
    relays it from a shard): it must not fail the GRAB waiting at the head."""
    conn = Connection("s:1")
    grab = conn.grab(T.GRAB_JOB_UNIQ)
    changed = conn.receive(
        response(T.ERROR, b"JOB_NOT_FOUND", b"Job given in work result not found")
    )
    assert len(changed) == 1 and isinstance(changed[0], ServerError)
    assert not grab.done
    conn.receive(response(T.NO_JOB))
    assert grab.done and assignment_of(grab) is None


def test_grab_answers() -> None:
    conn = Connection("s:1")
    grabs = [conn.grab(T.GRAB_JOB_ALL) for _ in range(3)]
    conn.receive(
        response(T.JOB_ASSIGN, b"H:1", b"f", b"d1")
        + response(T.JOB_ASSIGN_UNIQ, b"H:2", b"f", b"u", b"d\0 2")
        + response(T.JOB_ASSIGN_ALL, b"H:3", b"f", b"u3", b"red", b"d3")
    )
    jobs = [assignment_of(g) for g in grabs]
    assert all(isinstance(j, Assignment) for j in jobs)
    assert [(j.handle, j.unique, j.reducer, j.data) for j in jobs if j] == [
        (b"H:1", b"", b"", b"d1"),
        (b"H:2", b"u", b"", b"d\0 2"),
        (b"H:3", b"u3", b"red", b"d3"),
    ]


def test_noop_is_an_event() -> None:
    assert Connection("s:1").receive(response(T.NOOP)) == [NOOP_EVENT]


def test_packets_for_unknown_handles_are_dropped() -> None:
    assert Connection("s:1").receive(response(T.WORK_COMPLETE, b"H:x", b"r")) == []


@pytest.mark.parametrize(
    "wire",
    [response(T.JOB_CREATED, b"H:1"), response(T.NO_JOB), b"\0REQ" + bytes(8)],
    ids=["unasked-reply", "unasked-no-job", "bad-magic"],
)
def test_bad_responses(wire: bytes) -> None:
    with pytest.raises(BadResponse):
        Connection("s:1").receive(wire)


def test_same_unique_on_one_connection_is_sent_once_and_both_get_everything() -> None:
    conn = Connection("s:1")
    first = fg(conn, b"f", b"u1", b"a")
    second = fg(conn, b"f", b"u1", b"b")
    assert conn.data_to_send() == request(T.SUBMIT_JOB, b"f", b"u1", b"a")
    conn.receive(response(T.JOB_CREATED, b"H:1"))
    assert second.created and second.handle == b"H:1"
    third = fg(conn, b"f", b"u1", b"c")  # joins a created job: created at once
    assert third.created and conn.data_to_send() == b""
    conn.receive(response(T.WORK_DATA, b"H:1", b"p") + response(T.WORK_COMPLETE, b"H:1", b"r"))
    for job in (first, second, third):
        assert list(job.events) == [WorkData(b"p"), WorkComplete(b"r")]
    # once done, the same unique is a new submission
    fg(conn, b"f", b"u1")
    assert conn.data_to_send() != b""


def test_dash_unique_coalesces_by_payload() -> None:
    conn = Connection("s:1")
    fg(conn, b"f", b"-", b"same")
    fg(conn, b"f", b"-", b"other")
    fg(conn, b"f", b"-", b"same")
    assert conn.data_to_send().count(b"\0REQ") == 2


def test_duplicate_handle_copies_are_delivered_once() -> None:
    """Should a server attach one connection twice, it sends every packet twice."""
    conn = Connection("s:1")
    a = fg(conn, b"f", b"", b"1")
    b = fg(conn, b"f", b"", b"2")
    conn.receive(response(T.JOB_CREATED, b"H:1") + response(T.JOB_CREATED, b"H:1"))
    copies = response(T.WORK_DATA, b"H:1", b"p") * 2 + response(T.WORK_COMPLETE, b"H:1", b"r") * 2
    conn.receive(copies)
    for job in (a, b):
        assert list(job.events) == [WorkData(b"p"), WorkComplete(b"r")]


def test_close_fails_everything_waiting() -> None:
    conn = Connection("s:1")
    running = fg(conn)
    conn.receive(response(T.JOB_CREATED, b"H:1"))
    waiting = fg(conn, b"g")
    echo = conn.request(T.ECHO_REQ, b"", expect=frozenset({int(T.ECHO_RES)}))
    changed = conn.close(ConnectionLost("gone"))
    assert set(map(id, changed)) == {id(running), id(waiting), id(echo)}
    assert all(isinstance(p.error, ConnectionLost) for p in (running, waiting, echo))
    assert conn.close(ConnectionLost("again")) == []
    assert not conn.busy


def test_background_job_is_done_at_job_created() -> None:
    conn = Connection("s:1")
    job = JobState(b"f", None, True, "s:1")
    conn.submit(job, T.SUBMIT_JOB_BG, b"f", b"", b"")
    conn.receive(response(T.JOB_CREATED, b"H:5"))
    assert job.done and job.handle == b"H:5" and not conn.busy
