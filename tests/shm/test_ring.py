"""Ring: a hypothesis state machine against a deque model, plus edge cases."""

from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shardgear.shm import ShmError
from shardgear.shm.layout import (
    MIN_CAPACITY,
    RING_HEAD_Q,
    RING_HEADER_BYTES,
    RING_TAIL_Q,
    max_record_for,
    ring_bytes,
)
from shardgear.shm.ring import Ring


def make_ring(capacity: int, start: int = 0) -> tuple[bytearray, Ring]:
    """A fresh ring whose counters both start at `start` (a multiple of 8)."""
    buf = bytearray(ring_bytes(capacity))
    Ring.initialize(buf)
    if start:
        struct.pack_into("<Q", buf, RING_HEAD_Q * 8, start)
        struct.pack_into("<Q", buf, RING_TAIL_Q * 8, start)
    return buf, Ring(buf)


def record_bytes(n: int) -> int:
    return 8 + ((n + 7) & ~7)


class RingMachine(RuleBasedStateMachine):
    """Compare a Ring with a deque of (flags, payload, bytes it occupies)."""

    def __init__(self) -> None:
        super().__init__()
        # (flags, payload, bytes skipped by a wrap before it, bytes of the record itself)
        self.model: deque[tuple[int, bytes, int, int]] = deque()
        self.counter = 0

    @initialize(
        capacity=st.integers(MIN_CAPACITY // 8, 4096 // 8).map(lambda c: c * 8),
        start_records=st.integers(0, 1000),
    )
    def setup(self, capacity: int, start_records: int) -> None:
        # Start the free-running counters at an arbitrary 8-aligned place in the data area.
        self.start = start_records * 8
        self.buf, self.producer = make_ring(capacity, self.start)
        self.consumer = self.producer
        self.capacity = capacity
        self.max_record = max_record_for(capacity)
        self.tail = self.start  # the model's own tail counter
        assert self.producer.capacity == capacity
        assert self.producer.max_record == self.max_record

    def payload(self, n: int) -> bytes:
        self.counter += 1
        return bytes((self.counter + i) & 0xFF for i in range(n))

    def expected_cost(self, n: int) -> tuple[int, int]:
        """(wrap skip, record bytes) of the next put of `n` bytes."""
        need = record_bytes(n)
        end = self.capacity - self.tail % self.capacity
        return (end if need > end else 0), need

    def used(self) -> int:
        return sum(skip + need for _, _, skip, need in self.model)

    @rule(data=st.data(), flags=st.sampled_from([0, 1, 2, 3, 0xFFFFFFFF]))
    def put(self, data: st.DataObject, flags: int) -> None:
        n = data.draw(
            st.one_of(
                st.integers(0, self.max_record),
                st.sampled_from([0, 1, 7, 8, 9, self.max_record - 1, self.max_record]),
            )
        )
        payload = self.payload(n)
        skip, need = self.expected_cost(n)
        fits = self.used() + skip + need <= self.capacity
        assert self.producer.put(payload, flags) is fits
        if fits:
            self.model.append((flags, payload, skip, need))
            self.tail += skip + need

    @rule(data=st.data(), count=st.integers(0, 20))
    def put_many(self, data: st.DataObject, count: int) -> None:
        sizes = data.draw(st.lists(st.integers(0, self.max_record), min_size=count, max_size=count))
        payloads = [self.payload(n) for n in sizes]
        expected = 0
        used = self.used()
        tail = self.tail
        for n in sizes:
            need = record_bytes(n)
            end = self.capacity - tail % self.capacity
            skip = end if need > end else 0
            if used + skip + need > self.capacity:
                break
            used += skip + need
            tail += skip + need
            self.model.append((0, payloads[expected], skip, need))
            expected += 1
        self.tail = tail
        assert self.producer.put_many(payloads) == expected

    @rule()
    def get(self) -> None:
        got = self.consumer.get()
        if not self.model:
            assert got is None
        else:
            flags, payload, _, _ = self.model.popleft()
            assert got == (flags, payload)

    @rule(limit=st.integers(0, 30))
    def get_many(self, limit: int) -> None:
        got = self.consumer.get_many(limit)
        expected = [(f, p) for f, p, _, _ in list(self.model)[:limit]]
        for _ in expected:
            self.model.popleft()
        assert got == expected

    @rule(limit=st.integers(0, 30))
    def get_payloads(self, limit: int) -> None:
        got = self.consumer.get_payloads(limit)
        expected = []
        for flags, payload, _, _ in list(self.model)[:limit]:
            if flags:
                break
            expected.append(payload)
        for _ in expected:
            self.model.popleft()
        assert got == expected
        stopped = len(expected) < limit and bool(self.model)
        assert self.consumer.flagged_next is stopped
        if stopped:
            # The consumer passed the wrap marker before it saw the flags.
            flags, payload, _, need = self.model[0]
            self.model[0] = (flags, payload, 0, need)

    @rule()
    def too_big(self) -> None:
        with pytest.raises(ValueError, match="max_record"):
            self.producer.put(bytes(self.max_record + 1))

    @rule()
    def restart_producer(self) -> None:
        self.producer = Ring(self.buf)

    @rule()
    def restart_consumer(self) -> None:
        self.consumer = Ring(self.buf)

    @precondition(lambda self: not self.model)
    @rule()
    def empty_ring_takes_a_max_record(self) -> None:
        payload = self.payload(self.max_record)
        skip, need = self.expected_cost(self.max_record)
        assert self.producer.put(payload, 5)
        self.model.append((5, payload, skip, need))
        self.tail += skip + need

    @invariant()
    def counters_agree(self) -> None:
        if not hasattr(self, "producer"):
            return
        assert self.producer.used == self.used() == self.consumer.used
        assert 0 <= self.used() <= self.capacity
        assert self.consumer.is_empty() is (not self.model)


RingMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRingMachine = RingMachine.TestCase


# ------------------------------------------------------------------------------------------ edges


def test_fill_to_exactly_full_and_drain() -> None:
    _, ring = make_ring(256)
    # 256 bytes = 16 records of 8 payload bytes (16 bytes each).
    for i in range(16):
        assert ring.put(bytes([i]) * 8)
    assert ring.used == 256
    assert not ring.put(b"")
    assert ring.get_many() == [(0, bytes([i]) * 8) for i in range(16)]
    assert ring.is_empty()
    assert ring.get() is None
    assert ring.get_many() == []


def test_wrap_marker_counts_as_used() -> None:
    _, ring = make_ring(256)  # max_record 64, a 64-byte payload takes 72
    for _ in range(3):
        assert ring.put(b"a" * 64)  # tail = 216
    assert ring.get_many() == [(0, b"a" * 64)] * 3
    # 40 bytes left before the end: a 64-byte record wraps and costs 40 + 72.
    assert ring.put(b"b" * 64, 7)
    assert ring.used == 40 + 72
    assert ring.get() == (7, b"b" * 64)
    assert ring.used == 0


def test_zero_length_payloads() -> None:
    _, ring = make_ring(64)
    for flags in range(8):
        assert ring.put(b"", flags)
    assert not ring.put(b"")
    assert ring.get_many(3) == [(0, b""), (1, b""), (2, b"")]
    assert ring.get_many() == [(f, b"") for f in range(3, 8)]


def test_payload_types() -> None:
    _, ring = make_ring(1024)
    source = bytearray(b"0123456789")
    assert ring.put(source)
    assert ring.put(memoryview(source)[2:5])
    assert ring.put_many([b"x", bytearray(b"y"), memoryview(b"zz")]) == 3
    source[0] = 0x41
    assert ring.get_many() == [
        (0, b"0123456789"),
        (0, b"234"),
        (0, b"x"),
        (0, b"y"),
        (0, b"zz"),
    ]


def test_bad_flags_and_sizes() -> None:
    _, ring = make_ring(256)
    with pytest.raises(ValueError, match="u32"):
        ring.put(b"x", 1 << 32)
    with pytest.raises(ValueError, match="u32"):
        ring.put(b"x", -1)
    with pytest.raises(ValueError, match="max_record"):
        ring.put_many([b"a", bytes(65), b"c"])
    # The record before the bad one was published.
    assert ring.get_many() == [(0, b"a")]


def test_put_many_stops_when_full() -> None:
    _, ring = make_ring(128)
    assert ring.put_many([bytes(24)] * 10) == 4  # 32 bytes each
    assert ring.put_many([b"x"]) == 0
    assert len(ring.get_many()) == 4


def test_flags_properties() -> None:
    buf, ring = make_ring(256)
    assert not ring.producer_waiting
    assert not ring.consumer_sleeping
    ring.producer_waiting = True
    other = Ring(buf)
    assert other.producer_waiting
    assert not other.consumer_sleeping
    other.consumer_sleeping = True
    assert ring.consumer_sleeping
    ring.producer_waiting = False
    assert not other.producer_waiting
    assert "capacity=256" in repr(ring)


def test_attach_validation() -> None:
    buf = bytearray(ring_bytes(256))
    with pytest.raises(ShmError, match="magic"):
        Ring(buf)
    Ring.initialize(buf)
    Ring(buf)
    bad = bytearray(buf)
    bad[8] = 99
    with pytest.raises(ShmError, match="version"):
        Ring(bad)
    with pytest.raises(ShmError, match="geometry"):
        Ring(buf[: len(buf) - 8])
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, RING_TAIL_Q * 8, 512)
    with pytest.raises(ShmError, match="counters"):
        Ring(bad)
    with pytest.raises(ShmError, match="read-only"):
        Ring(bytes(buf))  # type: ignore[arg-type]
    with pytest.raises(ShmError, match="too small"):
        Ring(bytearray(RING_HEADER_BYTES + 8))
    with pytest.raises(ShmError, match="too small"):
        Ring.initialize(bytearray(RING_HEADER_BYTES + 8))
    with pytest.raises(ValueError, match="multiple of 8"):
        ring_bytes(100)


def test_corrupt_record_is_detected() -> None:
    buf, ring = make_ring(256, start=0)
    assert ring.put(b"abc")
    struct.pack_into("<I", buf, RING_HEADER_BYTES, 1000)
    with pytest.raises(ShmError, match="corrupt"):
        Ring(buf).get()
    with pytest.raises(ShmError, match="corrupt"):
        Ring(buf).get_many()
    with pytest.raises(ShmError, match="corrupt"):
        Ring(buf).get_payloads()
    # The same after a wrap marker.
    buf, ring = make_ring(256, start=256 - 16)
    assert ring.put(bytes(20))
    struct.pack_into("<I", buf, RING_HEADER_BYTES, 1000)
    for method in (Ring.get, Ring.get_many, Ring.get_payloads):
        with pytest.raises(ShmError, match="corrupt"):
            method(Ring(buf))


def test_attach_over_a_larger_buffer_and_other_formats() -> None:
    buf = bytearray(ring_bytes(256) + 5)
    Ring.initialize(buf)
    ring = Ring(memoryview(buf).cast("B"))
    assert ring.capacity == 256
    as_q = memoryview(bytearray(ring_bytes(512))).cast("Q")
    Ring.initialize(as_q)
    ring = Ring(as_q)
    assert ring.capacity == 512
    assert ring.put(b"hello")
    assert ring.get() == (0, b"hello")
    ring.release()


def test_many_laps() -> None:
    """Counters run many times around the data area."""
    _, ring = make_ring(512)
    size = 1
    for lap in range(2000):
        payloads = [bytes([lap & 0xFF]) * ((size + i) % 49) for i in range(3)]
        size += 7
        assert ring.put_many(payloads) == 3
        assert ring.get_many() == [(0, p) for p in payloads]
    assert ring.used == 0
