"""The job core, rule by rule (spec: gearman-protocol.md §1.2, §2, §5, §6; gearmand 2.0)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from shardgear import routing, shard_admin
from shardgear.invariants import check_invariants
from shardgear.limits import MAX_JOB_BYTES, FunctionLimits
from shardgear.messages import OP_CLOSE, OP_EXCEPTION, OP_SEND, OP_WAKE, REVOKE_ABILITY
from shardgear.scheduler import Job, Scheduler
from tests.effects import take_effects

# packet types
CAN_DO, CANT_DO, RESET_ABILITIES, PRE_SLEEP = 1, 2, 3, 4
SUBMIT_JOB, JOB_CREATED, GRAB_JOB, NO_JOB, JOB_ASSIGN = 7, 8, 9, 10, 11
WORK_STATUS, WORK_COMPLETE, WORK_FAIL, GET_STATUS = 12, 13, 14, 15
SUBMIT_JOB_BG, ERROR, STATUS_RES, SUBMIT_JOB_HIGH = 18, 19, 20, 21
CAN_DO_TIMEOUT, WORK_EXCEPTION, WORK_DATA, WORK_WARNING = 23, 25, 28, 29
GRAB_JOB_UNIQ, JOB_ASSIGN_UNIQ, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW = 30, 31, 32, 33
SUBMIT_JOB_LOW_BG, SUBMIT_JOB_EPOCH, SUBMIT_REDUCE_JOB = 34, 36, 37
SUBMIT_REDUCE_JOB_BACKGROUND, GRAB_JOB_ALL, JOB_ASSIGN_ALL = 38, 39, 40
GET_STATUS_UNIQUE, STATUS_RES_UNIQUE = 41, 42

C1, C2, C3 = 0x11, 0x12, 0x13  # client connections (front 0)
W1, W2, W3 = 0x21, 0x22, 0x23  # worker connections


def parse(packet: bytes) -> tuple[int, bytes]:
    """Split one response packet into (type, body), checking the framing."""
    magic, ptype, size = struct.unpack("!4sII", packet[:12])
    assert magic == b"\0RES"
    assert len(packet) == 12 + size
    return ptype, packet[12:]


class Rig:
    """A scheduler plus helpers that speak packets and read back effects."""

    def __init__(self, **kw: object) -> None:
        kw.setdefault("shard_index", 0)
        kw.setdefault("shard_count", 1)
        kw.setdefault("handle_prefix", b"H:t")
        self.s = Scheduler(**kw)  # type: ignore[arg-type]
        self.now = 1000.0

    def send(self, conn: int, ptype: int, *args: bytes) -> list[tuple[int, int, bytes]]:
        self.s.handle_packet(conn, ptype, b"\0".join(args), self.now)
        return self.drain()

    def drain(self) -> list[tuple[int, int, bytes]]:
        out = take_effects(self.s)
        check_invariants(self.s)
        return out

    def packets(self, effects: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
        """OP_SEND effects as (conn, type, body)."""
        res = []
        for op, conn, body in effects:
            assert op == OP_SEND, (op, conn, body)
            res.append((conn, *parse(body)))
        return res

    def one(self, conn: int, ptype: int, *args: bytes) -> tuple[int, bytes]:
        """Send a request that has exactly one reply packet, to `conn`."""
        [(c, t, b)] = self.packets(self.send(conn, ptype, *args))
        assert c == conn
        return t, b

    def submit(
        self, conn: int, func: bytes, unique: bytes = b"", data: bytes = b"", ptype: int = 7
    ) -> bytes:
        t, handle = self.one(conn, ptype, func, unique, data)
        assert t == JOB_CREATED, (t, handle)
        return handle

    def grab(self, conn: int, ptype: int = GRAB_JOB, prefer: bytes = b"") -> list[bytes] | None:
        t, body = self.one(conn, ptype, prefer)
        if t == NO_JOB:
            return None
        assert t in (JOB_ASSIGN, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL)
        n = {JOB_ASSIGN: 3, JOB_ASSIGN_UNIQ: 4, JOB_ASSIGN_ALL: 5}[t]
        return [t.to_bytes(1, "big"), *body.split(b"\0", n - 1)]

    def grab_handle(self, conn: int, prefer: bytes = b"") -> bytes | None:
        got = self.grab(conn, GRAB_JOB, prefer)
        return None if got is None else got[1]

    def grab_data(self, conn: int) -> bytes | None:
        got = self.grab(conn)
        return None if got is None else got[3]


def error_of(rig: Rig, effects: list[tuple[int, int, bytes]]) -> tuple[bytes, bytes]:
    [(_, t, body)] = rig.packets(effects)
    assert t == ERROR
    code, text = body.split(b"\0", 1)
    return code, text


@pytest.fixture
def rig() -> Iterator[Rig]:
    yield Rig()


# ---------------------------------------------------------------- handles and routing


def test_submit_answers_job_created_with_prefix_and_counter(rig: Rig) -> None:
    assert rig.submit(C1, b"f") == b"H:t:1"
    assert rig.submit(C1, b"f") == b"H:t:2"


def test_handles_route_back_to_the_issuing_shard() -> None:
    r = Rig(shard_index=2, shard_count=5)
    handles = [r.submit(C1, b"f") for _ in range(4)]
    assert handles == [b"H:t:3", b"H:t:8", b"H:t:13", b"H:t:18"]
    assert all(routing.shard_for_handle(h, 5) == 2 for h in handles)


def test_handle_prefix_that_could_reach_64_bytes_is_refused() -> None:
    with pytest.raises(ValueError):
        Scheduler(shard_index=0, shard_count=1, handle_prefix=b"x" * 43)
    Scheduler(shard_index=0, shard_count=1, handle_prefix=b"x" * 42)


# ---------------------------------------------------------------- queues and priority


def test_fifo_within_one_priority(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    for d in (b"a", b"b", b"c"):
        rig.submit(C1, b"f", b"", d)
    assert [rig.grab_data(W1) for _ in range(4)] == [b"a", b"b", b"c", None]


def test_priority_first_across_all_of_a_workers_functions(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f1")
    rig.send(W1, CAN_DO, b"f2")
    rig.submit(C1, b"f1", b"", b"low", SUBMIT_JOB_LOW)
    rig.submit(C1, b"f1", b"", b"normal", SUBMIT_JOB)
    rig.submit(C1, b"f2", b"", b"high", SUBMIT_JOB_HIGH_BG)
    assert [rig.grab_data(W1) for _ in range(3)] == [b"high", b"normal", b"low"]


def test_round_robin_between_functions_within_a_priority(rig: Rig) -> None:
    for f in (b"a", b"b", b"c"):
        rig.send(W1, CAN_DO, f)
        for i in range(2):
            rig.submit(C1, f, b"", f + b"%d" % i)
    got = [rig.grab_data(W1) for _ in range(6)]
    assert got == [b"a0", b"b0", b"c0", b"a1", b"b1", b"c1"]


def test_preferred_function_is_taken_when_it_has_the_best_priority(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"a")
    rig.send(W1, CAN_DO, b"b")
    rig.submit(C1, b"a", b"", b"a0")
    rig.submit(C1, b"b", b"", b"b0")
    got = rig.grab(W1, GRAB_JOB, b"b")
    assert got is not None and got[3] == b"b0"


def test_preferred_function_at_a_lower_priority_is_passed_over(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"a")
    rig.send(W1, CAN_DO, b"b")
    rig.submit(C1, b"a", b"", b"a-high", SUBMIT_JOB_HIGH)
    rig.submit(C1, b"b", b"", b"b-normal")
    got = rig.grab(W1, GRAB_JOB, b"b")
    assert got is not None and got[3] == b"a-high"
    # a preference the worker has not registered here is ignored
    got = rig.grab(W1, GRAB_JOB, b"zzz")
    assert got is not None and got[3] == b"b-normal"


def test_grab_without_work_or_registration_answers_no_job(rig: Rig) -> None:
    assert rig.grab(W1) is None
    rig.send(W1, CAN_DO, b"f")
    assert rig.grab(W1) is None
    rig.submit(C1, b"other")
    assert rig.grab(W1) is None


def test_assign_packet_formats(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h1 = rig.submit(C1, b"f", b"u1", b"d\x001")
    h2 = rig.submit(C1, b"f", b"u2", b"d2")
    t, body = rig.one(C1, SUBMIT_REDUCE_JOB, b"f", b"u3", b"red", b"", b"d3")
    assert t == JOB_CREATED
    h3 = body
    h4 = rig.submit(C1, b"f", b"u4", b"d4")
    assert rig.grab(W1, GRAB_JOB) == [bytes([JOB_ASSIGN]), h1, b"f", b"d\x001"]
    assert rig.grab(W1, GRAB_JOB_UNIQ) == [bytes([JOB_ASSIGN_UNIQ]), h2, b"f", b"u2", b"d2"]
    assert rig.grab(W1, GRAB_JOB_ALL) == [bytes([JOB_ASSIGN_ALL]), h3, b"f", b"u3", b"red", b"d3"]
    # GRAB_JOB_ALL of a job without a reducer answers JOB_ASSIGN_UNIQ
    assert rig.grab(W1, GRAB_JOB_ALL) == [bytes([JOB_ASSIGN_UNIQ]), h4, b"f", b"u4", b"d4"]


def test_a_worker_may_hold_many_jobs(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.submit(C1, b"f")
    rig.submit(C1, b"f")
    assert rig.grab(W1) is not None and rig.grab(W1) is not None
    assert rig.s.running_count() == 2


def test_functions_are_created_on_first_use_and_never_collected(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"w")
    rig.submit(C1, b"s")
    shard_admin.create_function(rig.s, b"c")
    rig.send(W1, CANT_DO, b"w")
    rig.s.disconnect(C1, rig.now)
    rig.drain()
    assert sorted(r[0] for r in shard_admin.status(rig.s)) == [b"c", b"s", b"w"]


# ---------------------------------------------------------------- coalescing


def test_same_unique_coalesces_onto_the_existing_handle(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"u", b"one")
    assert rig.submit(C2, b"f", b"u", b"two") == h
    assert rig.submit(C1, b"g", b"u", b"one") != h  # another function: another job
    assert rig.s.job_count() == 2


def test_empty_unique_never_coalesces(rig: Rig) -> None:
    assert rig.submit(C1, b"f", b"", b"x") != rig.submit(C1, b"f", b"", b"x")


def test_dash_unique_coalesces_on_identical_payload(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"-", b"payload")
    assert rig.submit(C2, b"f", b"-", b"payload") == h
    assert rig.submit(C2, b"f", b"-", b"other") != h
    # with empty data `-` never coalesces
    assert rig.submit(C1, b"f", b"-", b"") != rig.submit(C1, b"f", b"-", b"")


def test_64_byte_unique_coalesces_and_65_is_too_large(rig: Rig) -> None:
    u64 = b"u" * 64
    h = rig.submit(C1, b"f", u64)
    assert rig.submit(C2, b"f", u64) == h  # gearmand keeps 63 bytes and never coalesces
    assert rig.submit(C2, b"f", u64[:63]) != h
    code, text = error_of(rig, rig.send(C1, SUBMIT_JOB, b"f", b"u" * 65, b"x"))
    assert (code, text) == (b"ARGUMENT_TOO_LARGE", b"Unique value too large")


def test_reduce_submission_checks_the_unique_length_not_the_reducer(rig: Rig) -> None:
    t, _ = rig.one(C1, SUBMIT_REDUCE_JOB, b"f", b"u", b"r" * 100, b"", b"d")
    assert t == JOB_CREATED
    effects = rig.send(C1, SUBMIT_REDUCE_JOB_BACKGROUND, b"f", b"u" * 65, b"r", b"", b"d")
    assert error_of(rig, effects) == (b"ARGUMENT_TOO_LARGE", b"Unique value too large")


def test_coalescing_lasts_while_the_job_runs_and_ends_with_it(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u")
    assert rig.grab_handle(W1) == h
    assert rig.submit(C2, b"f", b"u") == h  # running: still coalesces
    rig.send(W1, WORK_COMPLETE, h, b"r")
    assert rig.submit(C2, b"f", b"u") != h


def test_coalesced_submission_discards_payload_priority_and_skips_maxqueue(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u", b"first", SUBMIT_JOB_LOW)
    shard_admin.maxqueue(rig.s, b"f", (1, 1, 1))
    assert rig.submit(C2, b"f", b"u", b"second", SUBMIT_JOB_HIGH) == h
    assert shard_admin.priority_status(rig.s) == [(b"f", 0, 0, 1, 1)]
    assert rig.grab(W1) == [bytes([JOB_ASSIGN]), h, b"f", b"first"]


def test_foreground_joiner_gets_later_work_packets_only(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u")
    rig.grab(W1)
    rig.send(W1, WORK_DATA, h, b"early")
    assert rig.submit(C2, b"f", b"u") == h
    effects = rig.send(W1, WORK_COMPLETE, h, b"done")
    pkts = rig.packets(effects)
    assert pkts == [(C1, WORK_COMPLETE, h + b"\0done"), (C2, WORK_COMPLETE, h + b"\0done")]


def test_background_coalesced_onto_foreground_survives_foreground_disconnect(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"u", b"data")
    assert rig.submit(C2, b"f", b"u", b"ignored", SUBMIT_JOB_BG) == h
    rig.s.disconnect(C1, rig.now)
    assert rig.drain() == []
    assert shard_admin.show_jobs(rig.s) == [(h, 0, 0, 0)]
    rig.send(W1, CAN_DO, b"f")
    assert rig.grab_handle(W1) == h  # gearmand would have lost it (gotcha §2.2 a)


# ---------------------------------------------------------------- disconnects


def test_client_disconnect_removes_its_queued_foreground_job(rig: Rig) -> None:
    board = [0] * (routing.BOARD_SLOTS * 3)
    r = Rig(board=board)
    h = r.submit(C1, b"f", b"u")
    r.submit(C2, b"f", b"v")
    r.s.disconnect(C1, r.now)
    assert r.drain() == []
    assert shard_admin.status(r.s) == [(b"f", 1, 0, 0)]  # gearmand keeps counting it until a GRAB
    assert board[routing.board_slot(b"f") * 3 + 1] == 1
    r.send(W1, CAN_DO, b"f")
    assert r.grab_handle(W1) != h
    assert r.submit(C2, b"f", b"u") != h  # its unique is free again


def test_job_shared_by_two_clients_stays_until_both_leave(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"u")
    rig.submit(C2, b"f", b"u")
    rig.s.disconnect(C1, rig.now)
    assert rig.s.job_count() == 1
    rig.s.disconnect(C2, rig.now)
    assert rig.s.job_count() == 0
    assert shard_admin.status_unique(rig.s, b"u") is None
    assert h not in [r[0] for r in shard_admin.show_jobs(rig.s)]


def test_client_disconnect_lets_a_running_job_finish_unheard(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.s.disconnect(C1, rig.now)
    assert shard_admin.show_jobs(rig.s) == [(h, 0, 1, 0)]  # ignored
    assert rig.send(W1, WORK_DATA, h, b"x") == []
    assert rig.send(W1, WORK_COMPLETE, h, b"x") == []
    assert rig.s.job_count() == 0


def test_abandoned_running_job_is_dropped_if_requeued(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.submit(C1, b"f")
    rig.grab(W1)
    rig.s.disconnect(C1, rig.now)
    rig.s.disconnect(W1, rig.now)
    assert rig.drain() == []
    assert rig.s.job_count() == 0


def test_worker_disconnect_requeues_at_the_tail_and_resets_status(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W2, CAN_DO, b"f")
    h1 = rig.submit(C1, b"f", b"", b"1")
    h2 = rig.submit(C1, b"f", b"", b"2")
    assert rig.grab_handle(W1) == h1
    rig.send(W1, WORK_STATUS, h1, b"3", b"7")
    rig.send(W2, PRE_SLEEP)
    rig.s.disconnect(W1, rig.now)
    assert rig.drain() == []  # W2 already had work available at PRE_SLEEP: woken then
    assert rig.one(C1, GET_STATUS, h1) == (STATUS_RES, h1 + b"\x001\x000\x000\x000")
    assert [rig.grab_handle(W2), rig.grab_handle(W2)] == [h2, h1]
    assert dict((h, r) for h, r, _, _ in shard_admin.show_jobs(rig.s)) == {h1: 1, h2: 0}


def test_requeue_wakes_sleeping_workers_and_tells_clients_nothing(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W2, CAN_DO, b"f")
    rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W2, PRE_SLEEP)
    rig.s.disconnect(W1, rig.now)
    assert rig.drain() == [(OP_WAKE, W2, b"")]


def test_drop_front_disconnects_every_connection_of_that_front(rig: Rig) -> None:
    f1c, f1w = (1 << 56) | 5, (1 << 56) | 6
    rig.send(f1w, CAN_DO, b"f")
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(f1c, b"f", b"u")
    kept = rig.submit(C1, b"f", b"v")
    assert rig.grab_handle(f1w) == h
    rig.s.drop_front(1, rig.now)
    rig.drain()
    assert shard_admin.status(rig.s) == [(b"f", 1, 0, 1)]
    assert rig.grab_handle(W1) == kept


# ---------------------------------------------------------------- retries


def test_retry_limit_drops_the_job_with_work_fail() -> None:
    logs: list[str] = []
    r = Rig(job_retries=2, log=logs.append)
    r.send(W1, CAN_DO, b"f")
    h = r.submit(C1, b"f", b"u", b"", SUBMIT_JOB)
    r.submit(C2, b"f", b"u")
    r.grab(W1)
    r.s.disconnect(W1, r.now)  # retry 1: requeued
    r.drain()
    assert shard_admin.show_jobs(r.s) == [(h, 1, 0, 0)]
    r.send(W2, CAN_DO, b"f")
    r.grab(W2)
    r.s.disconnect(W2, r.now)  # retry 2 == job_retries: dropped
    assert r.packets(r.drain()) == [(C1, WORK_FAIL, h), (C2, WORK_FAIL, h)]
    assert r.s.job_count() == 0
    assert any(m.startswith("Dropped job due to max retry count") for m in logs)


def test_job_retries_zero_means_unlimited(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    for _ in range(300):
        assert rig.grab_handle(W1) == h
        rig.s.disconnect(W1, rig.now)
        rig.send(W1, CAN_DO, b"f")
    assert shard_admin.show_jobs(rig.s) == [(h, 300, 0, 0)]


def test_work_fail_and_exception_are_not_retried(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, WORK_FAIL, h)
    assert rig.s.job_count() == 0


# ---------------------------------------------------------------- abilities


def test_cant_do_stops_new_assignments_but_the_held_job_completes(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"a")
    rig.send(W1, CAN_DO, b"b")
    ha = rig.submit(C1, b"a")
    hb = rig.submit(C1, b"b")
    rig.submit(C2, b"a", b"", b"next")
    assert rig.grab_handle(W1) == ha
    rig.send(W1, CANT_DO, b"a")
    assert shard_admin.status(rig.s) == [(b"a", 2, 1, 0), (b"b", 1, 0, 1)]  # still held
    assert rig.grab_handle(W1) == hb  # no more "a" for W1
    assert rig.grab_handle(W1) is None
    effects = rig.send(W1, WORK_COMPLETE, ha, b"done")
    assert rig.packets(effects) == [(C1, WORK_COMPLETE, ha + b"\0done")]  # reaches its client
    assert shard_admin.status(rig.s) == [(b"a", 1, 0, 0), (b"b", 1, 1, 1)]


def test_cant_do_then_disconnect_requeues_the_held_job(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"a")
    h = rig.submit(C1, b"a")
    assert rig.grab_handle(W1) == h
    rig.send(W1, CANT_DO, b"a")
    assert rig.s.running_count() == 1
    rig.s.disconnect(W1, rig.now)
    rig.drain()
    assert shard_admin.show_jobs(rig.s) == [(h, 1, 0, 0)]  # queued again, retried once
    rig.send(W2, CAN_DO, b"a")
    assert rig.grab_handle(W2) == h


def test_a_revoked_ability_takes_back_the_held_job(rig: Rig) -> None:
    """The front's REVOKE_ABILITY (access rules reloaded): CANT_DO, and the held job is requeued,
    so the worker's late result is refused; its other function is untouched."""
    rig.send(W1, CAN_DO, b"a")
    rig.send(W1, CAN_DO, b"b")
    h = rig.submit(C1, b"a")
    assert rig.grab_handle(W1) == h
    rig.send(W1, REVOKE_ABILITY, b"a")
    assert shard_admin.show_jobs(rig.s) == [(h, 1, 0, 0)]  # queued again, retried once
    assert error_of(rig, rig.send(W1, WORK_COMPLETE, h, b"late"))[0] == b"JOB_NOT_FOUND"
    hb = rig.submit(C1, b"b")
    assert rig.grab_handle(W1) == hb  # still registered for "b"
    rig.send(W2, CAN_DO, b"a")
    assert rig.grab_handle(W2) == h


def test_cant_do_keeps_the_can_do_timeout_of_the_held_job(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"a", b"2000")
    h = rig.submit(C1, b"a")
    assert rig.grab_handle(W1) == h
    rig.send(W1, CANT_DO, b"a")
    deadline = rig.s.next_deadline()
    assert deadline == rig.now + 2.0
    rig.s.tick(deadline)
    rig.drain()
    assert shard_admin.show_jobs(rig.s) == [(h, 1, 0, 0)]  # the timeout requeued it
    assert rig.send(W1, WORK_COMPLETE, h, b"late") != []  # no longer W1's: JOB_NOT_FOUND


def test_reset_abilities_unregisters_everything_but_held_jobs_complete(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"a")
    rig.send(W1, CAN_DO, b"b")
    ha = rig.submit(C1, b"a")
    hb = rig.submit(C1, b"b")
    rig.submit(C1, b"a", b"", b"queued")
    rig.grab(W1)
    rig.grab(W1)
    rig.send(W1, RESET_ABILITIES)
    assert shard_admin.status(rig.s) == [(b"a", 2, 1, 0), (b"b", 1, 1, 0)]
    assert rig.grab(W1) is None
    for h in (ha, hb):
        assert rig.packets(rig.send(W1, WORK_COMPLETE, h, b"ok")) == [
            (C1, WORK_COMPLETE, h + b"\0ok")
        ]
    assert rig.s.running_count() == 0
    assert W1 not in rig.s._workers  # nothing registered, nothing held: forgotten


def test_can_do_twice_is_one_registration_with_the_new_timeout(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"5000")
    rig.send(W1, CAN_DO, b"f")
    assert shard_admin.status(rig.s) == [(b"f", 0, 0, 1)]
    rig.submit(C1, b"f")
    rig.grab(W1)
    assert rig.s.next_deadline() is None  # CAN_DO reset the timeout to none


# ---------------------------------------------------------------- CAN_DO_TIMEOUT


def test_can_do_timeout_requeues_after_at_least_one_second(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"10")
    h = rig.submit(C1, b"f")
    assert rig.grab_handle(W1) == h
    assert rig.s.next_deadline() == rig.now + 1.0  # 10 ms is raised to 1000 ms
    rig.s.tick(rig.now + 0.999)
    assert rig.s.running_count() == 1
    rig.s.tick(rig.now + 1.0)
    assert rig.drain() == []  # clients are not told
    assert shard_admin.show_jobs(rig.s) == [(h, 1, 0, 0)] and rig.s.running_count() == 0
    rig.now += 2
    code, text = error_of(rig, rig.send(W1, WORK_COMPLETE, h, b"late"))
    assert (code, text) == (b"JOB_NOT_FOUND", b"Job given in work result not found")


def test_can_do_timeout_in_ms_above_one_second(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"2500")
    rig.submit(C1, b"f")
    rig.grab(W1)
    assert rig.s.next_deadline() == rig.now + 2.5


def test_can_do_timeout_follows_the_latest_assignment(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"2000")
    h1 = rig.submit(C1, b"f")
    h2 = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.now += 1
    rig.grab(W1)  # replaces the timer: now only h2 is timed, until now + 2
    rig.s.tick(rig.now + 1.5)
    assert rig.s.running_count() == 2
    assert rig.s.next_deadline() == rig.now + 2
    rig.s.tick(rig.now + 2)
    assert dict((h, r) for h, r, _, _ in shard_admin.show_jobs(rig.s)) == {h1: 0, h2: 1}
    assert rig.s.next_deadline() is None


def test_can_do_timeout_zero_means_no_timer(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"0")
    rig.send(W1, CAN_DO_TIMEOUT, b"g", b"-5")
    rig.submit(C1, b"f")
    rig.submit(C1, b"g")
    rig.grab(W1)
    rig.grab(W1)
    assert rig.s.next_deadline() is None


def test_finished_job_leaves_no_timer_behind(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"1000")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, WORK_COMPLETE, h, b"")
    assert rig.s.next_deadline() is None


def test_pre_sleep_deletes_the_timer(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"1000")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, PRE_SLEEP)
    assert rig.s.next_deadline() is None
    rig.s.tick(rig.now + 10)
    assert rig.s.running_count() == 1
    rig.send(W1, WORK_COMPLETE, h, b"")
    assert rig.s.job_count() == 0


def test_oversized_can_do_timeout_closes_the_connection(rig: Rig) -> None:
    assert rig.send(W1, CAN_DO_TIMEOUT, b"f", b"1" * 21) == [(OP_CLOSE, W1, b"")]
    assert rig.send(W1, CAN_DO_TIMEOUT, b"f", b"99999999999999999999") == [(OP_CLOSE, W1, b"")]


# ---------------------------------------------------------------- sleeping and waking


def test_pre_sleep_with_work_available_wakes_at_once(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.submit(C1, b"f")
    assert rig.send(W1, PRE_SLEEP) == [(OP_WAKE, W1, b"")]
    rig.submit(C1, b"f")
    assert rig.drain() == []  # already woken this sleep


def test_a_sleeper_is_woken_once_per_sleep(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W1, PRE_SLEEP)
    assert rig.drain() == []
    assert (OP_WAKE, W1, b"") in rig.send(C1, SUBMIT_JOB, b"f", b"", b"")
    assert (OP_WAKE, W1, b"") not in rig.send(C1, SUBMIT_JOB, b"f", b"", b"")
    assert rig.send(W1, PRE_SLEEP) == [(OP_WAKE, W1, b"")]  # work is there: woken at once
    rig.grab(W1)
    rig.grab(W1)
    assert rig.send(W1, PRE_SLEEP) == []  # a new sleep: the next job wakes it again
    assert (OP_WAKE, W1, b"") in rig.send(C1, SUBMIT_JOB, b"f", b"", b"")


def test_wake_effects_in_order(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W1, PRE_SLEEP)
    effects = rig.send(C1, SUBMIT_JOB, b"f", b"", b"x")
    assert [e[0] for e in effects] == [OP_SEND, OP_WAKE]
    assert rig.send(C1, SUBMIT_JOB, b"f", b"", b"y")[1:] == []


def test_grab_clears_sleeping(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W1, PRE_SLEEP)
    assert rig.grab(W1) is None
    effects = rig.send(C1, SUBMIT_JOB, b"f", b"", b"")
    assert (OP_WAKE, W1, b"") not in effects  # awake: it gets no wake-up


def test_workers_that_never_sent_pre_sleep_are_never_woken(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    assert [e[0] for e in rig.send(C1, SUBMIT_JOB, b"f", b"", b"")] == [OP_SEND]


def test_only_sleepers_registered_for_the_function_are_woken(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W2, CAN_DO, b"g")
    rig.send(W1, PRE_SLEEP)
    rig.send(W2, PRE_SLEEP)
    effects = rig.send(C1, SUBMIT_JOB, b"g", b"", b"")
    assert [(op, c) for op, c, _ in effects if op == OP_WAKE] == [(OP_WAKE, W2)]


def test_all_sleepers_are_woken_by_default(rig: Rig) -> None:
    for w in (W1, W2, W3):
        rig.send(w, CAN_DO, b"f")
        rig.send(w, PRE_SLEEP)
    effects = rig.send(C1, SUBMIT_JOB, b"f", b"", b"")
    assert sorted(c for op, c, _ in effects if op == OP_WAKE) == [W1, W2, W3]


def test_worker_wakeup_limits_and_rotates_wakes() -> None:
    r = Rig(worker_wakeup=1)
    for w in (W1, W2, W3):
        r.send(w, CAN_DO, b"f")
        r.send(w, PRE_SLEEP)
    woken = []
    for _ in range(3):
        effects = r.send(C1, SUBMIT_JOB_BG, b"f", b"", b"")
        woken += [c for op, c, _ in effects if op == OP_WAKE]
    assert woken == [W1, W2, W3]


def test_a_sleeper_that_registers_a_new_function_is_woken_for_it(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W1, PRE_SLEEP)
    rig.send(W1, CAN_DO, b"g")
    assert (OP_WAKE, W1, b"") in rig.send(C1, SUBMIT_JOB, b"g", b"", b"")


# ---------------------------------------------------------------- epoch jobs


def test_epoch_job_is_held_until_due_then_runs_and_wakes(rig: Rig) -> None:
    board = [0] * (routing.BOARD_SLOTS * 3)
    r = Rig(board=board)
    slot = routing.board_slot(b"f") * 3
    r.send(W1, CAN_DO, b"f")
    r.send(W1, PRE_SLEEP)
    when = int(r.now) + 60
    t, h = r.one(C1, SUBMIT_JOB_EPOCH, b"f", b"u", b"%d" % when, b"later")
    assert t == JOB_CREATED
    assert shard_admin.status(r.s) == [(b"f", 1, 0, 1)]  # counted in TOTAL
    assert shard_admin.priority_status(r.s) == [(b"f", 0, 1, 0, 1)]
    assert [row[0] for row in shard_admin.show_jobs(r.s)] == [h]
    assert board[slot + 1] == 0  # not runnable: not on the board
    assert r.grab(W1) is None
    assert r.s.next_deadline() == when
    r.send(W1, PRE_SLEEP)
    r.s.tick(when - 0.5)
    assert r.drain() == []
    r.s.tick(when)
    assert r.drain() == [(OP_WAKE, W1, b"")]
    assert board[slot + 1] == 1
    r.now = when
    assert r.grab(W1) == [bytes([JOB_ASSIGN]), h, b"f", b"later"]
    assert r.s.next_deadline() is None


def test_epoch_in_the_past_or_not_a_number_runs_at_once(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.one(C1, SUBMIT_JOB_EPOCH, b"f", b"", b"%d" % (rig.now - 5), b"past")
    rig.one(C1, SUBMIT_JOB_EPOCH, b"f", b"", b"soon", b"nan")
    assert [rig.grab_data(W1), rig.grab_data(W1)] == [b"past", b"nan"]


def test_epoch_overflow_closes_the_connection(rig: Rig) -> None:
    effects = rig.send(C1, SUBMIT_JOB_EPOCH, b"f", b"", b"9" * 30, b"x")
    assert effects == [(OP_CLOSE, C1, b"")]


def test_handle_packet_leaves_due_timers_to_tick(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.one(C1, SUBMIT_JOB_EPOCH, b"f", b"", b"%d" % (rig.now + 5), b"e")
    rig.now += 5
    assert rig.grab(W1) is None
    assert rig.s.next_deadline() == rig.now
    rig.s.tick(rig.now)
    assert rig.grab_data(W1) == b"e"


def test_the_first_packet_to_the_requester_is_the_reply() -> None:
    r = Rig(job_retries=1)
    r.send(W1, CAN_DO_TIMEOUT, b"f", b"1000")
    h = r.submit(C1, b"f", b"u")
    r.grab(W1)
    r.now += 5  # the timer is due but not fired: the submit's reply still comes first
    effects = r.send(C1, SUBMIT_JOB, b"f", b"u", b"")
    assert r.packets(effects) == [(C1, JOB_CREATED, h)]
    r.s.tick(r.now)  # retry limit reached: both submissions are failed
    assert r.packets(r.drain()) == [(C1, WORK_FAIL, h), (C1, WORK_FAIL, h)]


def test_coalesced_epoch_submission_discards_its_epoch(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"u")
    t, h2 = rig.one(C2, SUBMIT_JOB_EPOCH, b"f", b"u", b"%d" % (rig.now + 100), b"x")
    assert (t, h2) == (JOB_CREATED, h)
    assert rig.s.next_deadline() is None


# ---------------------------------------------------------------- maxqueue


def test_maxqueue_rejects_new_jobs_when_total_reaches_the_limit(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    shard_admin.maxqueue(rig.s, b"f", (0, 2, 1))
    rig.submit(C1, b"f")
    rig.grab(W1)  # running jobs count too
    rig.submit(C1, b"f")
    effects = rig.send(C1, SUBMIT_JOB, b"f", b"", b"")
    assert error_of(rig, effects) == (b"QUEUE_ERROR", b"Job queue is full")
    effects = rig.send(C1, SUBMIT_JOB_LOW, b"f", b"", b"")
    assert error_of(rig, effects) == (b"QUEUE_ERROR", b"Job queue is full")
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB_HIGH)  # 0 = unlimited
    shard_admin.maxqueue(rig.s, b"f", (-1, 0, 0))
    rig.submit(C1, b"f")


def test_max_queued_bytes_takes_one_job_of_any_size_into_an_empty_function() -> None:
    """limits.py: past max-queued-bytes a submission is refused, but a function holding no
    payload takes one job of any size, so every packet gearmand accepts can be a job."""
    r = Rig(limits=FunctionLimits(max_queued_bytes=100))
    big = r.submit(C1, b"f", b"", b"x" * 500)
    effects = r.send(C1, SUBMIT_JOB, b"f", b"", b"y")
    assert error_of(r, effects)[0] == b"QUEUE_ERROR"
    r.send(W1, CAN_DO, b"f")
    assert r.grab_handle(W1) == big
    r.send(W1, WORK_COMPLETE, big, b"")
    r.submit(C1, b"f", b"", b"z" * 500)  # empty again


def test_max_queued_bytes_counts_a_reducer_as_payload() -> None:
    """A reducer is held with the job as its payload is: without counting it, SUBMIT_REDUCE_JOB
    with an empty payload and a large reducer would queue past max-queued-bytes."""
    r = Rig(limits=FunctionLimits(max_queued_bytes=100))
    r.send(C1, SUBMIT_REDUCE_JOB, b"f", b"", b"r" * 60, b"", b"")
    effects = r.send(C1, SUBMIT_REDUCE_JOB, b"f", b"", b"r" * 41, b"", b"")
    assert error_of(r, effects)[0] == b"QUEUE_ERROR"
    r.send(C1, SUBMIT_REDUCE_JOB, b"f", b"", b"r" * 40, b"", b"")  # 60 + 40: fits
    assert shard_admin.status(r.s) == [(b"f", 2, 0, 0)]


def test_a_job_whose_assign_would_pass_the_u32_packet_size_is_refused() -> None:
    """limits.MAX_JOB_BYTES: name + unique + reducer + payload within a handle's length of 4 GiB
    would make a JOB_ASSIGN_ALL (and a job log record) whose size a u32 cannot say. The limit
    is a parameter so that the rule is tested here without a 4 GiB payload."""
    assert MAX_JOB_BYTES == 0xFFFFFFFF - 1024
    r = Rig(limits=FunctionLimits(max_job_bytes=1000))
    r.submit(C1, b"func", b"u", b"d" * 995)  # 4 + 1 + 995 = 1000: fits
    effects = r.send(C1, SUBMIT_JOB, b"func", b"v", b"d" * 996)
    assert error_of(r, effects) == (
        b"ARGUMENT_TOO_LARGE",
        b"Job too large: its JOB_ASSIGN would pass the 4 GiB packet size",
    )
    effects = r.send(C1, SUBMIT_REDUCE_JOB, b"func", b"", b"reducer", b"", b"d" * 990)
    assert error_of(r, effects)[0] == b"ARGUMENT_TOO_LARGE"
    assert shard_admin.status(r.s) == [(b"func", 1, 0, 0)]


def test_maxqueue_of_an_unknown_function_does_nothing(rig: Rig) -> None:
    shard_admin.maxqueue(rig.s, b"nope", (1, 1, 1))
    assert shard_admin.status(rig.s) == []


# ---------------------------------------------------------------- work results


def test_work_data_warning_and_status_are_relayed_unchanged(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    assert rig.packets(rig.send(W1, WORK_DATA, h, b"a\0b")) == [(C1, WORK_DATA, h + b"\0a\0b")]
    assert rig.packets(rig.send(W1, WORK_WARNING, h, b"w")) == [(C1, WORK_WARNING, h + b"\0w")]
    assert rig.packets(rig.send(W1, WORK_STATUS, h, b"1", b"4")) == [
        (C1, WORK_STATUS, h + b"\x001\x004")
    ]
    assert rig.one(C2, GET_STATUS, h) == (STATUS_RES, h + b"\x001\x001\x001\x004")


def test_work_status_numbers_use_atoi_into_uint32(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, WORK_STATUS, h, b"12abc", b"-1")
    assert rig.one(C2, GET_STATUS, h) == (STATUS_RES, h + b"\x001\x001\x0012\x004294967295")
    assert rig.send(W1, WORK_STATUS, h, b"1", b"123456789012") == [(OP_CLOSE, W1, b"")]


def test_work_complete_relays_and_ends_the_job(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u")
    rig.grab(W1)
    assert rig.packets(rig.send(W1, WORK_COMPLETE, h, b"res")) == [
        (C1, WORK_COMPLETE, h + b"\0res")
    ]
    assert rig.one(C1, GET_STATUS, h) == (STATUS_RES, h + b"\x000\x000\x000\x000")
    assert rig.s.job_count() == rig.s.running_count() == 0


def test_work_fail_relays_and_ends_the_job(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    assert rig.packets(rig.send(W1, WORK_FAIL, h)) == [(C1, WORK_FAIL, h)]
    assert rig.s.job_count() == 0


def test_work_exception_goes_to_clients_as_an_exception_op(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u")
    rig.submit(C2, b"f", b"u")
    rig.grab(W1)
    effects = rig.send(W1, WORK_EXCEPTION, h, b"boom")
    assert effects == [(OP_EXCEPTION, C1, h + b"\0boom"), (OP_EXCEPTION, C2, h + b"\0boom")]
    assert rig.s.job_count() == 0


def test_results_for_jobs_not_held_get_job_not_found(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W2, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    data = (b"JOB_NOT_FOUND", b"Job does not exist on server")
    result = (b"JOB_NOT_FOUND", b"Job given in work result not found")
    exc = (b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist")
    for handle in (h, b"H:t:99"):  # held by another worker; unknown
        assert error_of(rig, rig.send(W2, WORK_DATA, handle, b"x")) == data
        assert error_of(rig, rig.send(W2, WORK_WARNING, handle, b"x")) == data
        assert error_of(rig, rig.send(W2, WORK_STATUS, handle, b"1", b"2")) == result
        assert error_of(rig, rig.send(W2, WORK_COMPLETE, handle, b"x")) == result
        assert error_of(rig, rig.send(W2, WORK_FAIL, handle)) == result
        assert error_of(rig, rig.send(W2, WORK_EXCEPTION, handle, b"x")) == exc
    assert rig.s.running_count() == 1


def test_work_fail_with_a_64_byte_handle_is_too_large(rig: Rig) -> None:
    code, text = error_of(rig, rig.send(W1, WORK_FAIL, b"H" * 64))
    assert code == b"ARGUMENT_TOO_LARGE"
    assert text == b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf"


def test_get_status_of_queued_and_unknown_jobs(rig: Rig) -> None:
    h = rig.submit(C1, b"f")
    assert rig.one(C2, GET_STATUS, h) == (STATUS_RES, h + b"\x001\x000\x000\x000")
    assert rig.one(C2, GET_STATUS, b"nope") == (STATUS_RES, b"nope\x000\x000\x000\x000")
    assert rig.send(C2, GET_STATUS, b"h" * 64) == [(OP_CLOSE, C2, b"")]


def test_get_status_unique(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.submit(C1, b"f", b"u")
    rig.submit(C2, b"f", b"u")
    rig.grab(W1)
    # gearmand's CLIENT_COUNT is always 0
    assert shard_admin.status_unique(rig.s, b"u") == (1, 1, 0, 0, 2)
    assert shard_admin.status_unique(rig.s, b"v") is None
    assert shard_admin.status_unique(rig.s, b"") is None
    assert rig.one(C1, GET_STATUS_UNIQUE, b"u") == (
        STATUS_RES_UNIQUE,
        b"u\x001\x001\x000\x000\x002",
    )
    assert rig.one(C1, GET_STATUS_UNIQUE, b"v") == (
        STATUS_RES_UNIQUE,
        b"v\x000\x000\x000\x000\x000",
    )


# ---------------------------------------------------------------- admin


def test_status_and_priority_status_rows(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    rig.send(W2, CAN_DO, b"f")
    shard_admin.create_function(rig.s, b"empty")
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB_HIGH)
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB_HIGH_BG)
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB_LOW_BG)
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB)
    rig.grab(W1)  # one HIGH now runs
    assert shard_admin.status(rig.s) == [(b"f", 4, 1, 2), (b"empty", 0, 0, 0)]
    assert shard_admin.priority_status(rig.s) == [(b"f", 1, 1, 1, 2), (b"empty", 0, 0, 0, 0)]
    assert rig.s.running_count() == 1 and rig.s.job_count() == 4


def test_show_jobs_and_show_unique_jobs(rig: Rig) -> None:
    rig.submit(C1, b"f", b"u1")
    rig.submit(C1, b"f", b"", b"", SUBMIT_JOB_BG)
    assert sorted(shard_admin.show_unique_jobs(rig.s)) == [b"", b"u1"]
    assert [row[1:] for row in shard_admin.show_jobs(rig.s)] == [(0, 0, 0), (0, 0, 0)]
    assert {j.handle for j in rig.s.jobs()} == {row[0] for row in shard_admin.show_jobs(rig.s)}


def test_cancel_a_queued_job(rig: Rig) -> None:
    h = rig.submit(C1, b"f", b"u")
    rig.submit(C2, b"f", b"u")
    assert shard_admin.cancel_job(rig.s, h)
    assert rig.packets(rig.drain()) == [(C1, WORK_FAIL, h), (C2, WORK_FAIL, h)]
    assert rig.s.job_count() == 0 and shard_admin.status(rig.s) == [(b"f", 0, 0, 0)]
    assert not shard_admin.cancel_job(rig.s, h)
    assert rig.submit(C1, b"f", b"u") != h


def test_cancel_a_running_job_lets_the_worker_finish_quietly(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f", b"u")
    rig.grab(W1)
    assert shard_admin.cancel_job(rig.s, h)
    assert rig.packets(rig.drain()) == [(C1, WORK_FAIL, h)]
    assert shard_admin.show_jobs(rig.s) == [(h, 0, 1, 0)]
    assert rig.submit(C2, b"f", b"u") != h  # a cancelled job no longer coalesces
    assert rig.send(W1, WORK_DATA, h, b"x") == []
    assert rig.send(W1, WORK_COMPLETE, h, b"x") == []
    assert rig.s.job_count() == 1


def test_cancel_an_epoch_job(rig: Rig) -> None:
    _, h = rig.one(C1, SUBMIT_JOB_EPOCH, b"f", b"", b"%d" % (rig.now + 9), b"x")
    assert shard_admin.cancel_job(rig.s, h)
    assert shard_admin.status(rig.s) == [(b"f", 0, 0, 0)]
    assert rig.s.next_deadline() is None


def test_drop_function(rig: Rig) -> None:
    assert shard_admin.drop_function(rig.s, b"nope") == "missing"
    rig.send(W1, CAN_DO, b"Busy")
    assert (
        shard_admin.drop_function(rig.s, b"busy") == "busy"
    )  # case-insensitive, workers registered
    rig.send(W1, CANT_DO, b"Busy")
    rig.submit(C1, b"Busy")
    # a queued job is never destroyed: refused (gearmand would delete it)
    assert shard_admin.drop_function(rig.s, b"BUSY") == "busy"
    assert rig.packets(rig.drain()) == [] and rig.s.job_count() == 1
    rig.s.disconnect(C1, rig.now)  # its only client leaves: the foreground job goes
    assert rig.s.job_count() == 0
    assert shard_admin.drop_function(rig.s, b"BUSY") == "ok"
    assert shard_admin.status(rig.s) == []


def test_drop_function_is_refused_while_jobs_run(rig: Rig) -> None:
    rig.send(W1, CAN_DO, b"f")
    h = rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, CANT_DO, b"f")
    # CANT_DO stops new assignments only (issue 7): W1 still runs its job, and a job is never
    # destroyed (drop function refuses while the function has one)
    rig.send(W2, CAN_DO, b"f")
    rig.send(W2, RESET_ABILITIES)
    assert shard_admin.drop_function(rig.s, b"f") == "busy"
    assert rig.s.job_count() == 1
    rig.send(W1, WORK_COMPLETE, h, b"")
    assert rig.s.job_count() == 0
    assert shard_admin.drop_function(rig.s, b"f") == "ok"


# ---------------------------------------------------------------- board


def test_board_counts_runnable_queued_jobs_per_slot_and_priority() -> None:
    board = [7] * (routing.BOARD_SLOTS * 3)
    r = Rig(board=board)
    assert set(board) == {0}  # zeroed at start
    slot = routing.board_slot(b"f") * 3
    r.send(W1, CAN_DO, b"f")
    r.submit(C1, b"f", b"", b"", SUBMIT_JOB_HIGH)
    r.submit(C1, b"f", b"", b"", SUBMIT_JOB_LOW_BG)
    h = r.submit(C1, b"f", b"", b"")
    assert board[slot : slot + 3] == [1, 1, 1]
    r.grab(W1)
    assert board[slot : slot + 3] == [0, 1, 1]
    shard_admin.cancel_job(r.s, h)
    assert board[slot : slot + 3] == [0, 0, 1]
    r.s.disconnect(W1, r.now)  # HIGH job requeued
    assert board[slot : slot + 3] == [1, 0, 1]
    assert sum(board) == 2


def test_board_can_be_a_memoryview() -> None:
    buf = bytearray(routing.BOARD_SLOTS * 3 * 4)
    mv = memoryview(buf).cast("I")
    r = Rig(board=mv)
    r.submit(C1, b"f")
    assert mv[routing.board_slot(b"f") * 3 + 1] == 1


# ---------------------------------------------------------------- persistence


class FakeLog:
    """Records the job log hooks the scheduler calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, bool]] = []  # (hook, handle, stored)

    def _note(self, hook: str, job: Job) -> None:
        self.calls.append((hook, job.handle, job.stored))

    def new(self, job: Job, client: int) -> None:
        self._note("new", job)

    def attach(self, job: Job, conn: int) -> None:
        self._note("attach", job)

    def detach(self, job: Job, conn: int) -> None:
        self._note("detach", job)

    def flags(self, job: Job) -> None:
        self._note("flags", job)

    def assign(self, job: Job, conn: int) -> None:
        self._note("assign", job)

    def requeue(self, job: Job) -> None:
        self._note("requeue", job)

    def done(self, job: Job) -> None:
        self._note("done", job)


def logged_rig() -> tuple[Rig, FakeLog]:
    r = Rig(durable=True)
    joblog = FakeLog()
    r.s._joblog = joblog
    return r, joblog


def test_only_background_jobs_are_stored_and_done_when_finished() -> None:
    r, joblog = logged_rig()
    r.send(W1, CAN_DO, b"f")
    hb = r.submit(C1, b"f", b"b", b"", SUBMIT_JOB_BG)
    hf = r.submit(C1, b"f", b"f")
    assert joblog.calls == [("new", hb, True), ("new", hf, False)]
    assert sorted(shard_admin.show_jobs(r.s)) == sorted([(hb, 0, 0, 1), (hf, 0, 0, 0)])
    r.grab(W1)
    r.s.disconnect(W1, r.now)  # a requeue keeps it stored
    r.send(W1, CAN_DO, b"f")
    assert r.grab_handle(W1) == hf  # hb was requeued behind hf
    assert r.grab_handle(W1) == hb
    r.send(W1, WORK_COMPLETE, hf, b"")
    r.send(W1, WORK_COMPLETE, hb, b"")
    assert [c for c in joblog.calls if c[0] == "done"] == [("done", hf, False), ("done", hb, False)]
    assert ("requeue", hb, True) in joblog.calls


def test_background_coalesced_onto_a_foreground_job_stores_it_once() -> None:
    r, joblog = logged_rig()
    h = r.submit(C1, b"f", b"u")
    assert r.submit(C2, b"f", b"u", b"", SUBMIT_JOB_BG) == h
    assert r.submit(C2, b"f", b"u", b"", SUBMIT_JOB_BG) == h
    assert joblog.calls == [("new", h, False), ("flags", h, True)]
    shard_admin.cancel_job(r.s, h)
    assert joblog.calls[-1] == ("done", h, False)


def test_nothing_is_stored_without_a_durable_log() -> None:
    r = Rig()
    h = r.submit(C1, b"f", b"", b"", SUBMIT_JOB_BG)
    assert shard_admin.show_jobs(r.s) == [(h, 0, 0, 0)]


def test_response_and_unknown_packet_types(rig: Rig) -> None:
    for t in (5, 6, 8, 10, 11, 17, 19, 20, 24, 27, 31, 35, 40, 42):
        code, text = error_of(rig, rig.send(W1, t, b"x"))
        assert (code, text) == (b"INVALID_COMMAND", b"Command not expected")
    for t in (0, 43, 1000):
        assert rig.send(W1, t, b"x") == [(OP_CLOSE, W1, b"")]


def test_short_bodies_read_missing_fields_as_empty(rig: Rig) -> None:
    t, h = rig.one(C1, SUBMIT_JOB, b"f")
    assert t == JOB_CREATED
    rig.send(W1, CAN_DO_TIMEOUT, b"f")
    assert rig.grab(W1) == [bytes([JOB_ASSIGN]), h, b"f", b""]
    rig.send(W1, WORK_STATUS, h)
    rig.send(W1, PRE_SLEEP)
    rig.send(C1, SUBMIT_REDUCE_JOB, b"f")
    rig.send(C1, SUBMIT_JOB_EPOCH, b"f")
    assert rig.s.job_count() == 3


def test_assignment_without_a_timeout_clears_the_timer(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"3000")
    rig.send(W1, CAN_DO, b"g")
    rig.submit(C1, b"f")
    rig.submit(C1, b"g")
    rig.grab(W1)
    assert rig.s.next_deadline() == rig.now + 3
    rig.grab(W1)  # g has no timeout: the latest assignment is untimed
    assert rig.s.next_deadline() is None
    rig.s.tick(rig.now + 10)
    assert rig.s.running_count() == 2


def test_a_shorter_timeout_after_a_longer_one_fires_first(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"slow", b"9000")
    rig.send(W1, CAN_DO_TIMEOUT, b"fast", b"1000")
    rig.submit(C1, b"slow")
    hf = rig.submit(C1, b"fast")
    rig.grab(W1, GRAB_JOB, b"slow")
    rig.grab(W1)
    assert rig.s.next_deadline() == rig.now + 1
    rig.s.tick(rig.now + 1)
    assert [(h, r) for h, r, _, _ in shard_admin.show_jobs(rig.s) if r] == [(hf, 1)]
    rig.s.tick(rig.now + 20)  # the stale 9 s entry does nothing
    assert rig.s.running_count() == 1 and rig.s.next_deadline() is None


def test_timer_deleted_by_pre_sleep_never_fires(rig: Rig) -> None:
    rig.send(W1, CAN_DO_TIMEOUT, b"f", b"1000")
    rig.submit(C1, b"f")
    rig.grab(W1)
    rig.send(W1, PRE_SLEEP)
    rig.s.tick(rig.now + 5)  # without next_deadline() having cleaned the heap first
    assert rig.s.running_count() == 1


def test_status_unique_of_a_dash_job(rig: Rig) -> None:
    rig.submit(C1, b"f", b"-", b"payload")
    assert shard_admin.status_unique(rig.s, b"-") == (1, 0, 0, 0, 1)


def test_get_status_unique_of_64_bytes_closes(rig: Rig) -> None:
    assert rig.send(C1, GET_STATUS_UNIQUE, b"u" * 64) == [(OP_CLOSE, C1, b"")]


def test_packets_the_front_answers_are_logged_not_answered() -> None:
    logs: list[str] = []
    r = Rig(log=logs.append)
    assert r.send(C1, 22, b"id") == [] and r.send(C1, 26, b"exceptions") == []
    assert len(logs) == 2
    assert r.one(C1, 16, b"e\0cho") == (17, b"e\0cho")
