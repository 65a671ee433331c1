"""Unique-ID coalescing (gearman-protocol.md §2.2)."""

from __future__ import annotations

import pytest

from tests.gearclient import (
    GET_STATUS_UNIQUE,
    NO_JOB,
    STATUS_RES_UNIQUE,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_STATUS,
    grab,
    grab_job,
    submit,
    worker,
)


def test_same_unique_same_function_gets_the_same_handle(connect, func_name):
    a, b, w = connect(), connect(), connect()
    h1 = submit(a, func_name, b"first", unique=b"u")
    h2 = submit(b, func_name, b"second", unique=b"u")
    assert h1 == h2
    worker(w, func_name)
    assert grab_job(w) == [h1, func_name, b"first"]  # the joiner's payload is discarded
    assert grab(w) == (NO_JOB, [])
    w.send(WORK_COMPLETE, h1, b"r")
    assert a.expect(WORK_COMPLETE) == [h1, b"r"]
    assert b.expect(WORK_COMPLETE) == [h1, b"r"]


def test_joiner_receives_only_later_work_packets(connect, func_name):
    a, b, w = connect(), connect(), connect()
    h = submit(a, func_name, b"d", unique=b"late")
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_DATA, h, b"before")
    assert a.expect(WORK_DATA) == [h, b"before"]
    assert submit(b, func_name, b"d", unique=b"late") == h  # coalesces onto a running job
    w.send(WORK_STATUS, h, b"1", b"2")
    w.send(WORK_COMPLETE, h, b"after")
    assert b.expect(WORK_STATUS) == [h, b"1", b"2"]
    assert b.expect(WORK_COMPLETE) == [h, b"after"]
    assert a.expect(WORK_STATUS) == [h, b"1", b"2"]
    assert a.expect(WORK_COMPLETE) == [h, b"after"]


def test_same_unique_different_function_does_not_coalesce(connect, make_name):
    c = connect()
    f1, f2 = make_name(), make_name()
    assert submit(c, f1, b"d", unique=b"same") != submit(c, f2, b"d", unique=b"same")


def test_empty_unique_never_coalesces(connect, func_name):
    c = connect()
    assert submit(c, func_name, b"d") != submit(c, func_name, b"d")


def test_dash_unique_coalesces_on_identical_payload(connect, func_name):
    c, w = connect(), connect()
    h1 = submit(c, func_name, b"payload", unique=b"-")
    assert submit(c, func_name, b"payload", unique=b"-") == h1
    h3 = submit(c, func_name, b"other", unique=b"-")
    assert h3 != h1
    worker(w, func_name)
    assert grab_job(w) == [h1, func_name, b"payload"]
    assert grab_job(w) == [h3, func_name, b"other"]
    assert grab(w) == (NO_JOB, [])


def test_dash_unique_with_empty_payload_does_not_coalesce(connect, func_name):
    c = connect()
    assert submit(c, func_name, b"", unique=b"-") != submit(c, func_name, b"", unique=b"-")


@pytest.mark.parametrize("second_bg", [False, True], ids=["then-fg", "then-bg"])
def test_background_submission_coalesces_onto_queued_job(connect, func_name, second_bg):
    a, b = connect(), connect()
    h = submit(a, func_name, b"d", unique=b"bgu", bg=True)
    assert submit(b, func_name, b"d", unique=b"bgu", bg=second_bg) == h


def test_background_joiner_gets_no_packets(connect, func_name):
    a, b, w = connect(), connect(), connect()
    h = submit(a, func_name, b"d", unique=b"mixed")
    assert submit(b, func_name, b"d", unique=b"mixed", bg=True) == h
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_COMPLETE, h, b"r")
    assert a.expect(WORK_COMPLETE) == [h, b"r"]
    b.recv_nothing()


def test_joiner_priority_is_discarded(connect, func_name):
    c, w = connect(), connect()
    submit(c, func_name, b"normal-1", bg=True)
    h = submit(c, func_name, b"coalesced", unique=b"pr", prio="low", bg=True)
    assert submit(c, func_name, b"x", unique=b"pr", prio="high", bg=True) == h
    worker(w, func_name)
    assert grab_job(w)[2] == b"normal-1"
    assert grab_job(w)[2] == b"coalesced"


def test_unique_is_free_again_after_the_job_completes(connect, func_name):
    c, w = connect(), connect()
    h1 = submit(c, func_name, b"d", unique=b"again")
    worker(w, func_name)
    grab_job(w)
    w.send(WORK_COMPLETE, h1, b"r")
    c.expect(WORK_COMPLETE)
    assert submit(c, func_name, b"d", unique=b"again") != h1


def test_client_count_of_coalesced_job(connect, func_name):
    """STATUS_RES_UNIQUE's last field counts the attached foreground clients."""
    a, b, c, q = connect(), connect(), connect(), connect()
    h = submit(a, func_name, b"d", unique=b"counted")
    assert submit(b, func_name, b"d", unique=b"counted") == h
    assert submit(c, func_name, b"d", unique=b"counted", bg=True) == h
    q.send(GET_STATUS_UNIQUE, b"counted")
    assert q.expect(STATUS_RES_UNIQUE) == [b"counted", b"1", b"0", b"0", b"0", b"2"]


@pytest.mark.shardgear_only
def test_unique_of_exactly_64_bytes_coalesces(connect, func_name):
    """gearmand stores only 63 bytes, so a 64-byte unique never coalesces there (a bug)."""
    c = connect()
    unique = b"u" * 64
    assert submit(c, func_name, b"d", unique=unique) == submit(c, func_name, b"d", unique=unique)


def test_unique_of_64_bytes_is_accepted(connect, func_name):
    c, w = connect(), connect()
    h = submit(c, func_name, b"d", unique=b"v" * 64, bg=True)
    worker(w, func_name)
    assert grab_job(w)[0] == h
