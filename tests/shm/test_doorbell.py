"""Doorbell elision (shm/doorbell.py) never loses a wake-up.

Two processes play ping-pong through a pair of rings, each sleeping on its eventfd between
messages, so that every message has to wake a sleeping consumer. A producer rings only when the
consumer announced sleep. A lost wake-up shows as a consumer that waited out its (long) timeout
while a record was already in its ring: the test counts those and requires none. A control run in
which the consumer never announces sleep shows that the detector does catch a missing ring.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from multiprocessing import get_context
from typing import Any

from shardgear.shm.doorbell import announce_sleep, awake, fence
from shardgear.shm.layout import ring_bytes
from shardgear.shm.ring import Ring

ROUNDS = 5000
WAIT = 5.0  # a lost wake-up costs this much (the safety net), and is counted


def make_ring() -> mmap.mmap:
    buf = mmap.mmap(-1, ring_bytes(64 * 1024))
    Ring.initialize(buf)
    return buf


def send(ring: Ring, bell: int, payload: bytes) -> None:
    assert ring.put(payload)
    fence()
    if ring.consumer_sleeping:
        os.eventfd_write(bell, 1)


def receive(ring: Ring, bell: int, announce: bool, lost: list[int]) -> bytes:
    """Sleep until a record comes, as a shard or front does; count waits that timed out while a
    record was already there (lost wake-ups)."""
    while True:
        got = ring.get()
        if got is not None:
            return got[1]
        if announce and not announce_sleep([ring]):
            awake([ring])
            continue
        ready, _, _ = select.select([bell], [], [], WAIT if announce else 0.05)
        if ready:
            os.eventfd_read(bell)
        elif not ring.is_empty():
            lost.append(1)
        awake([ring])


def ponger(ping: Any, pong: Any, ping_bell: int, pong_bell: int, announce: bool, out: Any) -> None:
    rx, tx = Ring(ping), Ring(pong)
    lost: list[int] = []
    for _ in range(ROUNDS if announce else 20):
        send(tx, pong_bell, receive(rx, ping_bell, announce, lost))
    out.put(len(lost))


def play(announce: bool) -> tuple[int, int]:
    """Run the ping-pong; return the lost wake-ups seen by (the pinger, the ponger)."""
    ping, pong = make_ring(), make_ring()
    ping_bell, pong_bell = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
    ctx = get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=ponger, args=(ping, pong, ping_bell, pong_bell, announce, out))
    proc.start()
    try:
        tx, rx = Ring(ping), Ring(pong)
        lost: list[int] = []
        for i in range(ROUNDS if announce else 20):
            if not announce:
                time.sleep(0.01)  # let the ponger block first, so that only a ring wakes it
            send(tx, ping_bell, b"%d" % i)
            assert receive(rx, pong_bell, True, lost) == b"%d" % i
        theirs = out.get(timeout=60)
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
        os.close(ping_bell)
        os.close(pong_bell)
    return len(lost), theirs


def test_no_wake_up_is_lost_in_thousands_of_sleeps() -> None:
    assert play(announce=True) == (0, 0)


def test_the_detector_sees_a_consumer_that_never_announced_sleep() -> None:
    # The ponger blocks without setting consumer_sleeping: the pinger never rings it, so every
    # message it gets waited out a timeout while already in its ring.
    _mine, theirs = play(announce=False)
    assert theirs >= 19
