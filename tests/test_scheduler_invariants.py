"""Whatever peers send, in whatever order, the job core never raises and its invariants hold:
board counters equal the queues, every queued job is in its function's queue once, no job is held
by a gone worker, the unique and client indexes agree with the jobs, exactly the background jobs
are stored (durable)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardgear import routing, shard_admin
from shardgear.invariants import check_invariants
from shardgear.messages import OP_CLOSE, OP_EXCEPTION, OP_SEND, OP_WAKE
from shardgear.scheduler import Scheduler
from tests.effects import take_effects

FRONT_OF = [0, 0, 0, 0, 0, 1, 1]  # connection slot -> front; slots are reused with a new id
FUNCS = [b"a", b"b", b"c", b"A"]
UNIQUES = [b"", b"-", b"u1", b"u2", b"u" * 64]
DATA = [b"", b"x", b"y", b"x\0y"]
SUBMITS = [7, 18, 21, 32, 33, 34]
GRABS = [9, 30, 39]


CONN_STEPS = ("submit", "epoch", "reduce", "can_do", "cant_do", "packet", "grab", "work", "raw")
conn = st.integers(0, len(FRONT_OF) - 1)
func = st.sampled_from(FUNCS)
ops = st.one_of(
    st.tuples(
        st.just("submit"),
        conn,
        st.sampled_from(SUBMITS),
        func,
        st.sampled_from(UNIQUES),
        st.sampled_from(DATA),
    ),
    st.tuples(st.just("epoch"), conn, func, st.sampled_from(UNIQUES), st.integers(-5, 5)),
    st.tuples(
        st.just("reduce"),
        conn,
        st.sampled_from([37, 38]),
        func,
        st.sampled_from(UNIQUES),
        st.sampled_from([b"", b"r"]),
    ),
    st.tuples(st.just("can_do"), conn, func, st.sampled_from([None, 0, 500, 1500, -1])),
    st.tuples(st.just("cant_do"), conn, func),
    st.tuples(st.just("packet"), conn, st.sampled_from([3, 4])),  # RESET_ABILITIES, PRE_SLEEP
    st.tuples(st.just("grab"), conn, st.sampled_from(GRABS), st.sampled_from([b"", *FUNCS])),
    st.tuples(
        st.just("work"),
        conn,
        st.sampled_from([12, 13, 14, 25, 28, 29, 15, 41]),
        st.integers(0, 12),
        st.sampled_from(DATA),
    ),
    st.tuples(st.just("disconnect"), conn),
    st.tuples(st.just("drop_front"), st.sampled_from([0, 1])),
    st.tuples(st.just("tick"), st.floats(0, 3)),
    st.tuples(st.just("cancel"), st.integers(0, 12)),
    st.tuples(st.just("drop_function"), func),
    st.tuples(st.just("maxqueue"), func, st.integers(-1, 3)),
    st.tuples(st.just("raw"), conn, st.integers(0, 50), st.binary(max_size=24)),
)


def check_effects(out: list[tuple[int, int, bytes]], live: set[int]) -> None:
    for op, c, body in out:
        assert c in live, "an effect for a connection that is gone"
        if op == OP_SEND:
            magic, _, size = struct.unpack("!4sII", body[:12])
            assert magic == b"\0RES" and len(body) == 12 + size
        elif op == OP_EXCEPTION:
            assert b"\0" in body
        else:
            assert op in (OP_WAKE, OP_CLOSE) and body == b""


def run(steps: list[tuple[Any, ...]], retries: int, wakeup: int) -> None:
    board = [0] * (routing.BOARD_SLOTS * 3)
    s = Scheduler(
        shard_index=1,
        shard_count=2,
        handle_prefix=b"H:x",
        job_retries=retries,
        worker_wakeup=wakeup,
        board=board,
        durable=True,
        log=lambda m: None,
    )
    now = 100.0
    handles = [b"H:x:%d" % (2 + 2 * i) for i in range(12)] + [b"junk"]
    gen = [0] * len(FRONT_OF)

    def cid(slot: int) -> int:
        return FRONT_OF[slot] << 56 | gen[slot] << 8 | slot

    for step in steps:
        kind = step[0]
        if kind in CONN_STEPS:
            step = (kind, cid(step[1]), *step[2:])
        live = {cid(i) for i in range(len(FRONT_OF))}
        if kind == "submit":
            _, c, t, f, u, d = step
            s.handle_packet(c, t, b"\0".join((f, u, d)), now)
        elif kind == "epoch":
            _, c, f, u, dt = step
            s.handle_packet(c, 36, b"\0".join((f, u, b"%d" % int(now + dt), b"e")), now)
        elif kind == "reduce":
            _, c, t, f, u, r = step
            s.handle_packet(c, t, b"\0".join((f, u, r, b"", b"d")), now)
        elif kind == "can_do":
            _, c, f, timeout = step
            if timeout is None:
                s.handle_packet(c, 1, f, now)
            else:
                s.handle_packet(c, 23, f + b"\0%d" % timeout, now)
        elif kind == "cant_do":
            s.handle_packet(step[1], 2, step[2], now)
        elif kind == "packet":
            s.handle_packet(step[1], step[2], b"", now)
        elif kind == "grab":
            s.handle_packet(step[1], step[2], step[3], now)
        elif kind == "work":
            _, c, t, i, d = step
            h = handles[i]
            body = h if t in (14, 15, 41) else (h + b"\0" + d if t != 12 else h + b"\x001\x002")
            s.handle_packet(c, t, body, now)
        elif kind == "disconnect":
            s.disconnect(cid(step[1]), now)
            gen[step[1]] += 1
        elif kind == "drop_front":
            s.drop_front(step[1], now)
            for i, f in enumerate(FRONT_OF):
                if f == step[1]:
                    gen[i] += 1
        elif kind == "tick":
            now += step[1]
            s.tick(now)
        elif kind == "cancel":
            shard_admin.cancel_job(s, handles[step[1]])
        elif kind == "drop_function":
            assert shard_admin.drop_function(s, step[1]) in ("ok", "busy", "missing")
        elif kind == "maxqueue":
            shard_admin.maxqueue(s, step[1], (step[2], step[2], step[2]))
        elif kind == "raw":
            s.handle_packet(step[1], step[2], step[3], now)
        out = take_effects(s)
        check_effects(out, live)
        live = {cid(i) for i in range(len(FRONT_OF))}
        for job in s.jobs():
            assert job.worker is None or job.worker.conn in live, "held by a gone worker"
            assert set(job.clients) <= live
        check_invariants(s)
        for job in s.jobs():
            assert job.stored == (job.background and not job.cancelled), job
        assert s.job_count() == len(list(s.jobs()))
        assert s.running_count() == sum(r[2] for r in shard_admin.status(s))
        assert sum(r[1] for r in shard_admin.status(s)) == s.job_count()
        deadline = s.next_deadline()
        assert deadline is None or deadline > now - 1e9
    # drain everything: every job must be reachable by some worker or a timer
    for i in range(len(FRONT_OF)):
        s.disconnect(cid(i), now)
    check_invariants(s)
    assert s.running_count() == 0
    assert all(j.background and not j.clients for j in s.jobs())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(ops, max_size=60),
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([0, 1, 2]),
)
def test_random_traffic_keeps_every_invariant(
    steps: list[tuple[Any, ...]], retries: int, wakeup: int
) -> None:
    run(steps, retries, wakeup)


def test_a_long_deterministic_mix_keeps_every_invariant() -> None:
    """A fixed long run that exercises tombstone compaction (many abandoned queued jobs)."""
    steps: list[tuple[Any, ...]] = []
    for i in range(400):
        steps.append(("submit", 1, 7, b"a", b"", b"x"))
        if i % 3 == 0:
            steps.append(("submit", 2, 18, b"a", b"", b"y"))
    steps.append(("disconnect", 1))
    steps += [("can_do", 3, b"a", 1500), ("grab", 3, 9, b"")] * 5
    steps.append(("tick", 2.0))
    steps += [("grab", 3, 30, b"a")] * 200
    run(steps, 0, 0)
