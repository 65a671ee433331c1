"""Segments over real POSIX shared memory, boards, control blocks, and a two-process stress test."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from shardgear import routing
from shardgear.shm import (
    BOARD_BYTES,
    CONTROL_BYTES,
    Board,
    Receiver,
    Ring,
    Segment,
    Sender,
    ShmError,
    board_index,
    board_view,
    control_bytes,
    control_view,
    list_segments,
    pid_alive,
    ring_bytes,
    sweep_stale,
    unlink_quietly,
)
from shardgear.shm.layout import CHILD_READY, CTRL_HEARTBEAT, CTRL_PID, CTRL_STATE

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs Linux /dev/shm")

NameFactory = Callable[[str], str]


@pytest.fixture
def shm_name() -> Iterator[NameFactory]:
    """Make unique segment names; unlink every one of them at teardown, pass or fail."""
    made: list[str] = []
    base = f"/shardgear-test.{os.getpid()}.{uuid.uuid4().hex[:12]}"

    def make(what: str) -> str:
        name = f"{base}.{what}"
        made.append(name)
        return name

    yield make
    for name in made:
        unlink_quietly(name)


def test_create_attach_write_read(shm_name: NameFactory) -> None:
    name = shm_name("a")
    with Segment.create(name, 4096) as created:
        assert created.name == name
        assert created.size == 4096
        assert created.buf[:16] == bytes(16)
        created.buf[100:105] = b"hello"
        with Segment.attach(name) as attached:
            assert attached.size == 4096  # attaching never resizes
            assert bytes(attached.buf[100:105]) == b"hello"
            attached.buf[0:3] = b"abc"
        assert bytes(created.buf[0:3]) == b"abc"
        assert "4096 bytes" in repr(created)
    assert created.closed
    assert "closed" in repr(created)
    created.close()  # idempotent
    assert name in list_segments(name)
    created.unlink()
    created.unlink()  # and quiet the second time
    assert list_segments(name) == []


def test_create_existing_and_attach_missing(shm_name: NameFactory) -> None:
    name = shm_name("b")
    with Segment.create(name, 64):
        with pytest.raises(ShmError, match="already exists") as info:
            Segment.create(name, 64)
        assert info.value.name == name
    unlink_quietly(name)
    with pytest.raises(ShmError, match="no such segment") as info:
        Segment.attach(name)
    assert info.value.name == name
    with pytest.raises(ValueError, match="positive"):
        Segment.create(name, 0)


def test_close_with_exported_views(shm_name: NameFactory) -> None:
    name = shm_name("c")
    seg = Segment.create(name, ring_bytes(1024))
    Ring.initialize(seg.buf)
    ring = Ring(seg.buf, name)
    board_seg = Segment.create(shm_name("board"), BOARD_BYTES)
    Board.initialize(board_seg.buf)
    counters = board_view(board_seg.buf)
    seg.close()  # the ring still holds views: no error, unmapped when they go
    board_seg.close()
    assert ring.put(b"still mapped")
    assert ring.get() == (0, b"still mapped")
    ring.release()
    counters[0] = 1
    counters.release()


def test_ring_over_two_mappings(shm_name: NameFactory) -> None:
    name = shm_name("r")
    with Segment.create(name, ring_bytes(4096)) as seg:
        Ring.initialize(seg.buf)
        with Segment.attach(name) as other:
            producer = Sender(Ring(seg.buf, name))
            consumer = Receiver(Ring(other.buf, name))
            for i in range(1000):
                producer.send(i.to_bytes(4, "little") * (i % 50))
            out: list[bytes] = []
            for _ in range(1000):
                producer.flush()
                out += consumer.receive()
                if len(out) == 1000:
                    break
            assert out == [i.to_bytes(4, "little") * (i % 50) for i in range(1000)]
            producer.ring.release()
            consumer.ring.release()


def test_board(shm_name: NameFactory) -> None:
    name = shm_name("board")
    with Segment.create(name, BOARD_BYTES) as seg:
        with pytest.raises(ShmError, match="not a board"):
            Board(seg.buf)
        Board.initialize(seg.buf)
        counters = board_view(seg.buf)
        assert counters.format == "I"
        assert len(counters) == routing.BOARD_SLOTS * routing.PRIORITIES
        slot = routing.board_slot(b"reverse")
        counters[board_index(slot, 1)] = 7
        with Segment.attach(name) as reader:
            board = Board(reader.buf)
            assert board.counters[slot * 3 + 1] == 7
            assert sum(board.counters) == 7
            board.release()
        counters.release()
    with pytest.raises(ShmError, match="too small"):
        Board(bytearray(100))
    with pytest.raises(ShmError, match="too small"):
        Board.initialize(bytearray(100))


def test_control_blocks(shm_name: NameFactory) -> None:
    name = shm_name("control")
    with Segment.create(name, control_bytes(4)) as seg:
        block = control_view(seg.buf, 2)
        assert len(block) == CONTROL_BYTES // 8
        block[CTRL_PID] = os.getpid()
        block[CTRL_STATE] = CHILD_READY
        block[CTRL_HEARTBEAT] += 1
        assert struct.unpack_from("<QQQQ", seg.buf, 2 * CONTROL_BYTES) == (
            1,
            os.getpid(),
            CHILD_READY,
            0,
        )
        block.release()
        with pytest.raises(IndexError):
            control_view(seg.buf, 4)
        with pytest.raises(IndexError):
            control_view(seg.buf, -1)


# --------------------------------------------------------------------------------------- cleanup


def test_sweep_stale_removes_only_dead_pids_of_the_prefix() -> None:
    tag = uuid.uuid4().hex[:10]
    prefix = f"/shardgear-test{tag}.7003."
    me = os.getpid()
    dead = 999_999_999  # above any pid_max
    live = [f"{prefix}{me}.ring.0.1", f"{prefix}{me}.board.0"]
    stale = [f"{prefix}{dead}.ring.0.1", f"{prefix}{dead}.board.0"]
    other_port = [f"/shardgear-test{tag}.7004.{dead}.ring.0.1"]
    odd = [f"{prefix}notapid.ring", f"{prefix}{dead}"]
    everything = live + stale + other_port + odd
    try:
        for name in everything:
            Segment.create(name, 64).close()
        assert set(list_segments(prefix)) == set(live + stale + odd)
        seen: list[int] = []

        def alive(pid: int) -> bool:
            seen.append(pid)
            return pid_alive(pid)

        removed = sweep_stale(prefix, alive)
        assert sorted(removed) == sorted(stale)
        assert sorted(seen) == sorted({me, dead})  # asked once per pid
        assert set(list_segments(prefix)) == set(live + odd)
        assert list_segments(f"/shardgear-test{tag}.7004.") == other_port
        # Without the leading slash too.
        assert sweep_stale(prefix.lstrip("/"), lambda pid: False) == sorted(live)
    finally:
        for name in everything:
            unlink_quietly(name)


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # init: EPERM as a normal user, which counts as alive
    assert not pid_alive(0)
    assert not pid_alive(-5)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_list_segments_without_dev_shm(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardgear.shm import segment

    monkeypatch.setattr(segment, "SHM_DIR", "/nonexistent-shm-dir")
    assert list_segments("/shardgear.") == []


# ---------------------------------------------------------------------------- two processes

SMALL_COUNT = 100_000
BIG_SIZE = 64 << 20
BIG_SEED = 20240611
DEADLINE_S = 90.0


def small_message(i: int) -> bytes:
    return i.to_bytes(4, "little") * (i % 33)


def big_message() -> bytes:
    return random.Random(BIG_SEED).randbytes(BIG_SIZE)


def consumer_main(name: str, results: multiprocessing.Queue[str]) -> None:
    """Child process: receive SMALL_COUNT small messages, one big one, then b"end"."""
    deadline = time.monotonic() + DEADLINE_S
    seg = Segment.attach(name)
    ring = Ring(seg.buf, name)
    receiver = Receiver(ring)
    expected_big = hashlib.sha256(big_message()).hexdigest()
    count = 0
    verdict = "timeout"
    while time.monotonic() < deadline:
        messages = receiver.receive(limit=4096)
        if not messages:
            time.sleep(0.0002)
            continue
        for m in messages:
            if count < SMALL_COUNT:
                if m != small_message(count):
                    verdict = f"message {count} differs"
                    break
            elif count == SMALL_COUNT:
                if len(m) != BIG_SIZE or hashlib.sha256(m).hexdigest() != expected_big:
                    verdict = f"big message differs (length {len(m)})"
                    break
            elif m == b"end":
                verdict = "ok"
                break
            else:
                verdict = f"unexpected message {count}"
                break
            count += 1
        else:
            continue
        break
    results.put(f"{verdict} after {count} messages, dropped {receiver.dropped}")
    ring.release()
    seg.close()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_two_processes_100k_messages_and_64_mib(shm_name: NameFactory) -> None:
    name = shm_name("stress")
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[str] = ctx.Queue()
    big = big_message()
    with Segment.create(name, ring_bytes(1 << 20)) as seg:
        Ring.initialize(seg.buf)
        ring = Ring(seg.buf, name)
        sender = Sender(ring)
        child = ctx.Process(target=consumer_main, args=(name, results))
        child.start()
        try:
            deadline = time.monotonic() + DEADLINE_S

            def wait_below(high_water: int) -> None:
                while sender.flush() or sender.pending > high_water:
                    assert time.monotonic() < deadline, "producer timed out"
                    assert child.is_alive() or not sender.pending, "consumer died"
                    if sender.pending > high_water:
                        time.sleep(0.0002)

            for i in range(SMALL_COUNT):
                sender.send(small_message(i))
                if i % 512 == 511:
                    wait_below(256 << 10)
            sender.send(big)
            sender.send(b"end")
            wait_below(0)
            while sender.queued:
                assert time.monotonic() < deadline
                sender.flush()
                time.sleep(0.0002)
            verdict = results.get(timeout=DEADLINE_S)
            child.join(timeout=10)
            assert verdict.startswith("ok"), verdict
            assert child.exitcode == 0
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            ring.release()
