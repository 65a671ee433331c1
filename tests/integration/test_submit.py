"""Submitting jobs and handing them to workers: every priority, foreground and background,
and the three assignment packets (JOB_ASSIGN, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL)."""

from __future__ import annotations

import re

import pytest

from tests.gearclient import (
    GRAB_JOB,
    GRAB_JOB_ALL,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN,
    JOB_ASSIGN_ALL,
    JOB_ASSIGN_UNIQ,
    JOB_CREATED,
    NO_JOB,
    SUBMIT_REDUCE_JOB,
    SUBMIT_REDUCE_JOB_BACKGROUND,
    WORK_COMPLETE,
    grab,
    submit,
    worker,
)

PRIORITIES = ["high", "normal", "low"]


@pytest.mark.parametrize("bg", [False, True], ids=["fg", "bg"])
@pytest.mark.parametrize("prio", PRIORITIES)
def test_submit_grab_complete(connect, func_name, prio, bg):
    client, w = connect(), connect()
    handle = submit(client, func_name, b"payload", prio=prio, bg=bg)
    assert re.fullmatch(rb"[^:\0]+(:[^:\0]*)*:\d+", handle), handle
    assert len(handle) < 64

    worker(w, func_name)
    assert grab(w) == (JOB_ASSIGN, [handle, func_name, b"payload"])
    w.send(WORK_COMPLETE, handle, b"result")
    if bg:
        client.recv_nothing()
    else:
        assert client.expect(WORK_COMPLETE) == [handle, b"result"]
    assert grab(w) == (NO_JOB, [])


def test_handles_are_distinct(connect, func_name):
    client = connect()
    handles = [submit(client, func_name, str(i), bg=True) for i in range(20)]
    assert len(set(handles)) == 20


def test_grab_with_no_abilities_answers_no_job(connect, func_name):
    client, w = connect(), connect()
    submit(client, func_name, b"x", bg=True)
    assert grab(w) == (NO_JOB, [])


def test_payload_may_contain_nul_bytes(connect, func_name):
    client, w = connect(), connect()
    data = b"\0a\0\0b\0"
    handle = submit(client, func_name, data)
    worker(w, func_name)
    assert grab(w) == (JOB_ASSIGN, [handle, func_name, data])
    w.send(WORK_COMPLETE, handle, b"\0r\0")
    assert client.expect(WORK_COMPLETE) == [handle, b"\0r\0"]


def test_empty_payload(connect, func_name):
    client, w = connect(), connect()
    handle = submit(client, func_name, b"")
    worker(w, func_name)
    assert grab(w) == (JOB_ASSIGN, [handle, func_name, b""])
    w.send(WORK_COMPLETE, handle, b"")
    assert client.expect(WORK_COMPLETE) == [handle, b""]


def test_grab_job_uniq_carries_the_unique(connect, func_name):
    client, w = connect(), connect()
    handle = submit(client, func_name, b"d", unique=b"my-unique", bg=True)
    worker(w, func_name)
    assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [handle, func_name, b"my-unique", b"d"])


def test_grab_job_uniq_with_empty_unique(connect, func_name):
    client, w = connect(), connect()
    handle = submit(client, func_name, b"d", bg=True)
    worker(w, func_name)
    assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [handle, func_name, b"", b"d"])


def test_grab_job_all_without_reducer_answers_job_assign_uniq(connect, func_name):
    client, w = connect(), connect()
    handle = submit(client, func_name, b"d", unique=b"u1", bg=True)
    worker(w, func_name)
    assert grab(w, GRAB_JOB_ALL) == (JOB_ASSIGN_UNIQ, [handle, func_name, b"u1", b"d"])


@pytest.mark.parametrize(
    "ptype", [SUBMIT_REDUCE_JOB, SUBMIT_REDUCE_JOB_BACKGROUND], ids=["fg", "bg"]
)
def test_reduce_job_passes_reducer_through_job_assign_all(connect, func_name, ptype):
    client, w = connect(), connect()
    # FUNC \0 UNIQ \0 REDUCER \0 AGGREGATE \0 DATA: four NUL-terminated fields before DATA.
    client.send(ptype, func_name, b"ru", b"my-reducer", b"", b"reduce\0data")
    (handle,) = client.expect(JOB_CREATED)
    worker(w, func_name)
    assert grab(w, GRAB_JOB_ALL) == (
        JOB_ASSIGN_ALL,
        [handle, func_name, b"ru", b"my-reducer", b"reduce\0data"],
    )
    w.send(WORK_COMPLETE, handle, b"reduced")
    if ptype == SUBMIT_REDUCE_JOB:
        assert client.expect(WORK_COMPLETE) == [handle, b"reduced"]
    else:
        client.recv_nothing()


def test_reduce_job_grabbed_with_grab_job_uniq(connect, func_name):
    client, w = connect(), connect()
    client.send(SUBMIT_REDUCE_JOB, func_name, b"ru2", b"my-reducer", b"", b"data")
    (handle,) = client.expect(JOB_CREATED)
    worker(w, func_name)
    assert grab(w, GRAB_JOB_UNIQ) == (JOB_ASSIGN_UNIQ, [handle, func_name, b"ru2", b"data"])


def test_reduce_job_grabbed_with_plain_grab_job(connect, func_name):
    client, w = connect(), connect()
    client.send(SUBMIT_REDUCE_JOB, func_name, b"", b"my-reducer", b"", b"data")
    (handle,) = client.expect(JOB_CREATED)
    worker(w, func_name)
    assert grab(w, GRAB_JOB) == (JOB_ASSIGN, [handle, func_name, b"data"])


def test_one_connection_is_client_and_worker(connect, func_name):
    c = connect()
    handle = submit(c, func_name, b"self")
    worker(c, func_name)
    assert grab(c) == (JOB_ASSIGN, [handle, func_name, b"self"])
    c.send(WORK_COMPLETE, handle, b"done")
    assert c.expect(WORK_COMPLETE) == [handle, b"done"]


def test_a_worker_may_hold_several_jobs(connect, func_name):
    client, w = connect(), connect()
    h1 = submit(client, func_name, b"1")
    h2 = submit(client, func_name, b"2")
    worker(w, func_name)
    assert grab(w)[1][0] == h1
    assert grab(w)[1][0] == h2
    w.send(WORK_COMPLETE, h2, b"two")
    w.send(WORK_COMPLETE, h1, b"one")
    assert client.expect(WORK_COMPLETE) == [h2, b"two"]
    assert client.expect(WORK_COMPLETE) == [h1, b"one"]


def test_function_names_are_exact_bytes(connect, func_name):
    """CAN_DO's whole payload is the name: `f\\0` is a different function from `f`."""
    client, w = connect(), connect()
    submit(client, func_name, b"x", bg=True)
    worker(w, func_name + b"\0")
    assert grab(w) == (NO_JOB, [])
    worker(w, func_name.upper())
    assert grab(w) == (NO_JOB, [])
