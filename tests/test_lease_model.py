"""The lease's crossings, forced: a real `Scheduler` and the real front side (`front_lease`,
`grab`, and the reply FIFO of `Replies`) joined by two FIFO "rings", driven by workers and a
client in random interleavings. Every job must be handed out once at a time, completed exactly
once, and none may be left behind while every worker sleeps (a lost wake-up)."""

from __future__ import annotations

import random
import struct
from collections import deque
from typing import Any

import pytest

from shardgear import build_info, front_lease, grab, routing
from shardgear.connection import E_DATA, Conn
from shardgear.invariants import check_invariants
from shardgear.messages import (
    HEADER,
    LEASABLE,
    OP_LEASE,
    OP_PACKET,
    OP_RECALL,
    OP_REPLY,
    OP_SEND,
    OP_WAKE,
)
from shardgear.proto.packets import NO_JOB_PACKET, NOOP_PACKET
from shardgear.proto.parser import Parser
from shardgear.replies import Replies
from shardgear.scheduler import Scheduler

CAN_DO, CANT_DO, PRE_SLEEP, WORK_COMPLETE = 1, 2, 4, 13
GRAB_JOB, NO_JOB, NOOP, GRAB_JOB_UNIQ = 9, 10, 6, 30
JOB_ASSIGN, JOB_ASSIGN_UNIQ = 11, 31
SUBMITS = (18, 32, 34)  # SUBMIT_JOB_BG, _HIGH_BG, _LOW_BG
FUNCS = (b"fa", b"fb")


class _Sock:
    def fileno(self) -> int:
        return -1


class ModelFront(Replies):
    """The parts of `Front` a worker's GRAB cycle goes through, with one shard."""

    def __init__(self, board: list[int]) -> None:
        super().__init__(1 << 30, 1, 1 << 31)
        self.shards = 1
        self.grab_lease = True
        self.by_id: dict[int, Conn] = {}
        self.outbox: list[list[bytes]] = [[]]
        self.board = board

    def close(self, conn: Conn) -> None:
        raise AssertionError("no connection closes here")

    def forward(self, conn: Conn, ptype: int, body: bytes) -> None:
        conn.shards_used |= 1
        self.outbox[0].append(HEADER.pack(OP_PACKET, ptype, 0, conn.id) + body)

    # as Front.on_* does
    def can_do(self, conn: Conn, func: bytes) -> None:
        base = routing.board_slot(func) * 3
        conn.rr.append(func)
        conn.grab_order.append((func, self.board, base, 0))  # type: ignore[arg-type]
        conn.abilities[func] = (0, base, None)
        self.forward(conn, CAN_DO, func)

    def cant_do(self, conn: Conn, func: bytes) -> None:
        if conn.lease is not None and conn.lease_func == func:
            front_lease.give_back(self, conn)  # type: ignore[arg-type]
        if conn.abilities.pop(func, None) is not None:
            i = conn.rr.index(func)
            del conn.rr[i]
            del conn.grab_order[i]
        self.forward(conn, CANT_DO, func)

    def on_grab(self, conn: Conn, ptype: int) -> None:
        f: Any = self
        conn.sleeping = False
        conn.noop_sent = False
        if conn.lease is not None and front_lease.use(f, conn, ptype):
            return
        if conn.lease_wait and front_lease.waited(f, conn, ptype):
            return
        best = grab.pick(conn, 0)
        if best < 0:
            self.reply(conn, NO_JOB_PACKET)
            return
        grab.rotate(conn, best)
        assert front_lease.one_shard(f, conn) == 0
        front_lease.send_leasable(f, conn, ptype, 0)

    def pre_sleep(self, conn: Conn) -> None:
        conn.sleeping = True
        conn.noop_sent = False
        if conn.lease is not None:
            front_lease.give_back(self, conn)  # type: ignore[arg-type]
        self.forward(conn, PRE_SLEEP, b"")

    def from_shard(self, m: bytes) -> None:
        f: Any = self
        op, arg, extra, conn_id = HEADER.unpack_from(m)
        conn = self.by_id[conn_id]
        if op == OP_REPLY:
            self.fill(conn, 0, extra, m[16:])
        elif op == OP_SEND:
            self.reply(conn, m[16:])
        elif op == OP_WAKE:
            if conn.sleeping and not conn.noop_sent:
                conn.noop_sent = True
                self.reply(conn, NOOP_PACKET)
        elif op == OP_LEASE:
            front_lease.arrived(f, 0, arg, conn_id, m)
        elif op == OP_RECALL:
            front_lease.recalled(f, 0, conn_id, m[16:])
        else:
            raise AssertionError(op)


class ModelWorker:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.state = "idle"  # idle (will GRAB), waiting, running, sleeping
        self.job: bytes | None = None


def run(seed: int) -> None:
    rnd = random.Random(seed)
    board = [0] * (routing.BOARD_SLOTS * 3)
    sched = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:m", board=board)
    front = ModelFront(board)
    to_shard: deque[bytes] = deque()
    to_front: deque[bytes] = deque()
    workers = []
    for i in range(rnd.randint(1, 4)):
        conn = Conn(0x100 + i, _Sock(), Parser(), False, "")  # type: ignore[arg-type]
        front.by_id[conn.id] = conn
        for func in FUNCS[: rnd.randint(1, 2)]:
            front.can_do(conn, func)
        workers.append(ModelWorker(conn))
    jobs = rnd.randint(1, 25)
    submitted = 0
    held: dict[bytes, int] = {}  # handle -> worker conn running it
    done: set[bytes] = set()
    steps = [0]

    def flush() -> None:
        to_shard.extend(front.outbox[0])
        front.outbox[0] = []

    def shard_step() -> None:
        m = to_shard.popleft()
        op, arg, extra, conn = HEADER.unpack_from(m)
        assert op == OP_PACKET
        seq = extra if arg in (GRAB_JOB | LEASABLE, GRAB_JOB_UNIQ | LEASABLE) else -1
        sched.handle_packet(conn, arg, m[16:], 0.0, seq)
        if conn == 0:  # a client's JOB_CREATED: nobody reads it
            sched.out = [x for x in sched.out if HEADER.unpack_from(x)[3] != 0]
        to_front.extend(sched.out)
        sched.out = []
        steps[0] += 1
        if steps[0] % 64 == 0:
            check_invariants(sched)  # O(board): not every step

    def worker_step(w: ModelWorker) -> bool:
        conn = w.conn
        if conn.out:
            raw = bytes(conn.out.pop(0))
            conn.out_bytes -= len(raw)
            ptype, size = struct.unpack_from("!II", raw, 4)
            assert len(raw) == 12 + size
            if ptype in (JOB_ASSIGN, JOB_ASSIGN_UNIQ):
                assert w.state == "waiting", (w.state, raw)
                handle = raw[12:].split(b"\0", 1)[0]
                assert handle not in done and handle not in held, f"{handle!r} given twice"
                held[handle] = conn.id
                w.job, w.state = handle, "running"
            elif ptype == NO_JOB:
                assert w.state == "waiting"
                w.state = "sleeping"
                front.pre_sleep(conn)
            elif ptype == NOOP:
                if w.state == "sleeping":
                    w.state = "idle"
            else:
                raise AssertionError(ptype)
            return True
        if w.state == "idle":
            w.state = "waiting"
            front.on_grab(conn, rnd.choice((GRAB_JOB, GRAB_JOB, GRAB_JOB, GRAB_JOB_UNIQ)))
            return True
        if w.state == "running" and w.job is not None:
            if rnd.random() < 0.1 and conn.abilities:  # CANT_DO + CAN_DO crossing a lease
                func = rnd.choice(list(conn.abilities))
                front.cant_do(conn, func)
                front.can_do(conn, func)
            del held[w.job]
            done.add(w.job)
            front.forward(conn, WORK_COMPLETE, w.job)
            w.job, w.state = None, "idle"
            return True
        return False

    for _ in range(20000):
        flush()
        moves: list[Any] = []
        if to_shard:
            moves.append(shard_step)
        if to_front:
            moves.append(lambda: front.from_shard(to_front.popleft()))
        if submitted < jobs:
            moves.append("submit")
        for w in workers:
            if w.conn.out or w.state in ("idle", "running"):
                moves.append(w)
        if not moves:
            break
        move = rnd.choice(moves)
        if move == "submit":
            func = rnd.choice(FUNCS)
            ptype = rnd.choice(SUBMITS)
            to_shard.append(HEADER.pack(OP_PACKET, ptype, 0, 0) + func + b"\0\0x")
            submitted += 1
        elif isinstance(move, ModelWorker):
            worker_step(move)
        else:
            move()
    else:
        raise AssertionError("no quiescence")
    check_invariants(sched)
    runnable = sum(1 for f in FUNCS if any(f in w.conn.abilities for w in workers))
    expected = {j.handle for j in sched.jobs()}
    # every job of a function some worker can do was done; nothing is left leased or running
    assert sched.leased_count() == 0 and sched.running_count() == 0
    if runnable == len(FUNCS):
        assert not expected, f"left behind: {expected}"
    assert len(done) + len(expected) == jobs
    for w in workers:
        assert w.conn.lease is None and all(e[E_DATA] is not None for e in w.conn.pending)


@pytest.mark.skipif(
    build_info.compiled(), reason="Replies and front_lease are compiled: run on the pure build"
)
@pytest.mark.parametrize("block", range(4))
def test_random_interleavings_lose_nothing_and_give_nothing_twice(block: int) -> None:
    for seed in range(block * 100, block * 100 + 100):
        run(seed)
