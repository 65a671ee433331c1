"""Channel: fragmentation, reassembly, overflow and restarts over a small ring."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardgear.shm.channel import FLAG_CONT, FLAG_MORE, Receiver, Sender
from shardgear.shm.layout import ring_bytes
from shardgear.shm.ring import Ring


def make_channel(capacity: int = 256) -> tuple[bytearray, Ring, Sender, Receiver]:
    buf = bytearray(ring_bytes(capacity))
    Ring.initialize(buf)
    ring = Ring(buf)
    return buf, ring, Sender(ring), Receiver(ring)


def message(i: int, n: int) -> bytes:
    return (i.to_bytes(4, "little") * (n // 4 + 1))[:n]


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.sampled_from([64, 128, 256, 1024]),
    sizes=st.lists(st.integers(0, 2000), max_size=40),
    schedule=st.lists(st.sampled_from(["send", "flush", "receive", "receive1"]), max_size=200),
)
def test_interleaved_send_flush_receive(
    capacity: int, sizes: list[int], schedule: list[str]
) -> None:
    """Every message arrives once, intact and in order, whatever the interleaving."""
    _, ring, sender, receiver = make_channel(capacity)
    messages = [message(i, n) for i, n in enumerate(sizes)]
    to_send = list(messages)
    received: list[bytes] = []
    for step in schedule:
        if step == "send" and to_send:
            sender.send(to_send.pop(0))
        elif step == "flush":
            sender.flush()
        elif step == "receive":
            received += receiver.receive()
        else:
            received += receiver.receive(limit=1)
    for m in to_send:
        sender.send(m)
    for _ in range(100_000):
        sender.flush()
        received += receiver.receive()
        if not sender.queued and ring.is_empty():
            break
    assert sender.pending == 0
    assert sender.queued == 0
    assert receiver.partial == 0
    assert received == messages
    assert receiver.dropped == 0


def test_fast_path_puts_directly_and_flush_reports_writes() -> None:
    _, ring, sender, receiver = make_channel(256)
    assert not sender.flush()
    sender.send(b"hello")
    assert ring.used == 16
    assert sender.pending == 0
    assert sender.flush()
    assert not sender.flush()
    [got] = receiver.receive()
    assert got == b"hello"


def test_overflow_then_drain() -> None:
    _, ring, sender, receiver = make_channel(256)  # max_record 64
    messages = [message(i, 40) for i in range(20)]  # 48 bytes a record: 5 fit
    for m in messages:
        sender.send(m)
    assert ring.used == 5 * 48
    assert sender.pending == 15 * 40
    assert ring.producer_waiting  # the ring was full with a backlog
    assert sender.flush()  # the five written by send()
    assert not sender.flush()  # nothing more fits
    got = receiver.receive(limit=2)
    assert got == messages[:2]
    assert receiver.producer_wants_wake()
    assert not receiver.producer_wants_wake()
    assert not ring.producer_waiting
    assert sender.flush()  # two more fit now
    assert sender.pending == 13 * 40
    got += receiver.receive()
    while sender.pending:
        assert sender.flush()
        got += receiver.receive()
    got += receiver.receive()
    assert got == messages


def test_order_kept_behind_the_overflow() -> None:
    """A small message sent while others wait must not overtake them."""
    _, ring, sender, receiver = make_channel(128)
    for _ in range(4):
        sender.send(bytes(32))  # the ring (128) holds three records of 40
    sender.send(b"small")
    assert sender.pending == 32 + 5
    assert ring.used == 120
    received = receiver.receive()
    sender.flush()
    received += receiver.receive()
    assert received == [bytes(32)] * 4 + [b"small"]


def test_big_message_fragments() -> None:
    _, ring, sender, receiver = make_channel(256)  # max_record 64
    big = os.urandom(64 * 4 + 10)
    sender.send(big)  # three records of 72 fit in 256 bytes
    assert sender.pending == 64 + 10
    records = ring.get_many()
    assert [f for f, _ in records] == [FLAG_MORE, FLAG_MORE | FLAG_CONT, FLAG_MORE | FLAG_CONT]
    assert sender.flush()
    records += ring.get_many()
    assert [f for f, _ in records[3:]] == [FLAG_MORE | FLAG_CONT, FLAG_CONT]
    assert b"".join(p for _, p in records) == big
    assert receiver.partial == 0


def test_exact_multiple_of_max_record() -> None:
    _, _, sender, receiver = make_channel(1024)  # max_record 256
    big = os.urandom(256 * 3)
    sender.send(big)
    sender.send(b"")
    sender.send(bytes(256))
    out: list[bytes] = []
    for _ in range(10):
        sender.flush()
        out += receiver.receive()
    assert out == [big, b"", bytes(256)]


def test_bytearray_is_copied_when_queued() -> None:
    _, _, sender, receiver = make_channel(64)  # max_record 16
    data = bytearray(b"x" * 100)
    sender.send(data)
    data[:] = b"y" * 100
    out: list[bytes] = []
    for _ in range(20):
        sender.flush()
        out += receiver.receive()
    assert out == [b"x" * 100]


def test_send_many() -> None:
    _, ring, sender, receiver = make_channel(256)
    small = [message(i, 10) for i in range(8)]
    sender.send_many(small)  # 8 x 24 = 192 bytes: all fit
    assert sender.pending == 0
    batch = [message(100, 10), message(101, 500), message(102, 3), *small]
    sender.send_many(batch)
    assert sender.flush()
    out = receiver.receive()
    while sender.queued or not ring.is_empty():
        sender.flush()
        out += receiver.receive()
    assert out == small + batch


def test_reset_drops_half_message() -> None:
    _, _, sender, receiver = make_channel(256)  # max_record 64
    sender.send(bytes(1000))
    assert receiver.receive() == []
    assert receiver.partial > 0
    receiver.reset()
    assert receiver.partial == 0
    assert receiver.dropped == 1
    # The rest of that message is an orphan tail: skipped, then the next message arrives.
    sender.send(b"next")
    out: list[bytes] = []
    for _ in range(50):
        sender.flush()
        out += receiver.receive()
    assert out == [b"next"]
    assert receiver.dropped == 1
    receiver.reset()
    assert receiver.dropped == 1


def test_producer_restart_mid_message() -> None:
    """A new producer's first record ends the half message of its dead predecessor."""
    buf, _, sender, receiver = make_channel(256)
    sender.send(bytes(1000))  # only part of it gets in; the producer then "dies"
    assert receiver.receive() == []
    assert receiver.partial
    new_sender = Sender(Ring(buf))
    new_sender.send(b"after restart")
    out: list[bytes] = []
    for _ in range(10):
        new_sender.flush()
        out += receiver.receive()
    assert out == [b"after restart"]
    assert receiver.dropped == 1
    assert receiver.partial == 0


def test_consumer_restart_mid_message() -> None:
    """A new consumer that starts inside a message skips its tail and resumes after it."""
    buf, _, sender, receiver = make_channel(256)
    sender.send(bytes(1000))
    sender.send(b"whole")
    assert receiver.receive(limit=2) == []  # the consumer then "dies"
    new_receiver = Receiver(Ring(buf))
    out: list[bytes] = []
    for _ in range(50):
        sender.flush()
        out += new_receiver.receive()
    assert out == [b"whole"]
    assert new_receiver.dropped == 1


def test_orphan_tail_then_cut_again() -> None:
    """Skipping an orphan tail that its producer never finished, then a fresh message."""
    buf = bytearray(ring_bytes(1024))
    Ring.initialize(buf)
    ring = Ring(buf)
    assert ring.put(b"b" * 8, FLAG_CONT | FLAG_MORE)
    assert ring.put(b"fresh", 0)
    assert ring.put(b"c" * 8, FLAG_CONT)  # another orphan, a last fragment
    assert ring.put(b"d" * 8, FLAG_MORE)
    assert ring.put(b"e" * 8, FLAG_CONT)
    receiver = Receiver(ring)
    assert receiver.receive() == [b"fresh", b"d" * 8 + b"e" * 8]
    assert receiver.dropped == 2


@pytest.mark.slow
def test_64_mib_through_1_mib_ring_interleaved() -> None:
    _, ring, sender, receiver = make_channel(1 << 20)
    rng = random.Random(1)
    big = rng.randbytes(64 << 20)
    sender.send(b"before")
    sender.send(big)
    sender.send(b"after")
    assert sender.pending > 60 << 20
    out: list[bytes] = []
    rounds = 0
    while sender.queued or not ring.is_empty():
        sender.flush()
        out += receiver.receive()
        rounds += 1
        assert rounds < 10_000
    assert len(out) == 3
    assert out[0] == b"before"
    assert out[1] == big
    assert out[2] == b"after"


# -- messages in parts (send_parts) and fragmented messages kept whole (large_marker) ----------

MARKER = b"<large>"


def receive_all(ring: Ring, sender: Sender, receiver: Receiver) -> list[bytes]:
    """Drain the channel: every message, a large one as the join of what take_large gives."""
    out: list[bytes] = []
    for _ in range(100_000):
        for m in receiver.receive():
            out.append(b"".join(receiver.take_large()) if m is MARKER else m)
        if not sender.flush() and ring.is_empty():
            break
    return out


def test_send_parts_fragments_without_joining() -> None:
    _, ring, sender, _unused = make_channel(512)  # max_record 128
    head, body = b"H" * 16, bytearray(os.urandom(600))
    sender.send_parts([head, b"", body])
    assert sender.pending == 616 - 16 - 3 * 128  # what did not fit waits in the overflow
    body[-1] ^= 0xFF  # kept by reference: the caller must not change it; here, we can see it
    records = ring.get_many()
    while sender.flush():
        records += ring.get_many()
    assert [len(p) for _, p in records] == [16, 128, 128, 128, 128, 88]
    more, cont = FLAG_MORE, FLAG_CONT
    assert [f for f, _ in records] == [more, *[more | cont] * 4, cont]
    assert b"".join(p for _, p in records) == head + bytes(body)
    assert sender.pending == 0 and sender.queued == 0


def test_send_parts_small_is_one_record() -> None:
    _, ring, sender, _ = make_channel(1024)
    sender.send_parts([b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert ring.get_many() == [(0, b"abcdef")]


def test_large_marker_keeps_order_and_fragments() -> None:
    _, ring, sender, receiver = make_channel(1024)
    receiver = Receiver(ring, MARKER)
    big = os.urandom(1000)
    sender.send(b"first")
    sender.send_parts([big[:16], big[16:]])
    sender.send(b"last")
    got: list[bytes] = []
    fragments: list[list[bytes]] = []
    for _ in range(20):
        for m in receiver.receive():
            got.append(m)
            if m is MARKER:
                fragments.append(receiver.take_large())
        sender.flush()
    assert got == [b"first", MARKER, b"last"]
    assert fragments[0][0] == big[:16]  # the first part is its own first fragment
    assert b"".join(fragments[0]) == big


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.sampled_from([128, 256, 1024]),
    messages=st.lists(
        st.tuples(st.booleans(), st.lists(st.integers(0, 700), min_size=1, max_size=5)),
        max_size=20,
    ),
)
def test_parts_and_whole_messages_interleaved(
    capacity: int, messages: list[tuple[bool, list[int]]]
) -> None:
    _, ring, sender, _ = make_channel(capacity)
    receiver = Receiver(ring, MARKER)
    sent: list[bytes] = []
    got: list[bytes] = []
    for i, (in_parts, sizes) in enumerate(messages):
        parts = [message(i * 8 + j, n) for j, n in enumerate(sizes)]
        sent.append(b"".join(parts))
        if in_parts:
            sender.send_parts(parts)
        else:
            sender.send(sent[-1])
        got += receive_all(ring, sender, receiver) if i % 3 == 2 else []
    got += receive_all(ring, sender, receiver)
    assert got == sent
    assert sender.pending == 0
