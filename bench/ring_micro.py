"""Micro-benchmark of the shared-memory ring and channel (one process, no doorbells).

Prints nanoseconds per message for put + get of small messages, one at a time and batched, over a
``bytearray`` and over a real POSIX shared-memory segment. Loops are bounded in count and time.

    python -m bench.ring_micro [--size 64] [--count 200000] [--batch 64] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from shardgear.shm import Receiver, Ring, Segment, Sender, ring_bytes, unlink_quietly


def timed(label: str, count: int, seconds: float, step: Callable[[], int]) -> None:
    """Run `step` (which handles some messages and returns how many) until `count` or time."""
    done = 0
    start = time.perf_counter()
    limit = start + seconds
    while done < count and time.perf_counter() < limit:
        done += step()
    elapsed = time.perf_counter() - start
    print(f"{label:<44} {elapsed / max(done, 1) * 1e9:8.0f} ns/msg  ({done} msgs)")


def run(buf: bytearray | memoryview, where: str, args: argparse.Namespace) -> None:
    Ring.initialize(buf)
    ring = Ring(buf)
    payload = os.urandom(args.size)
    batch = [payload] * args.batch
    put, get = ring.put, ring.get

    def single() -> int:
        for _ in range(1000):
            put(payload)
            get()
        return 1000

    def batched() -> int:
        ring.put_many(batch)
        return len(ring.get_many())

    sender, receiver = Sender(ring), Receiver(ring)
    send, flush, receive = sender.send, sender.flush, receiver.receive

    def channel_single() -> int:
        for _ in range(1000):
            send(payload)
            flush()
            receive()
        return 1000

    def channel_batched() -> int:
        for message in batch:
            send(message)
        flush()
        return len(receive())

    def channel_send_many() -> int:
        sender.send_many(batch)
        flush()
        return len(receive())

    print(f"-- {where}, {args.size}-byte messages, capacity {ring.capacity}")
    timed("ring put + get", args.count, args.seconds, single)
    timed(f"ring put_many + get_many (x{args.batch})", args.count, args.seconds, batched)
    timed("channel send + flush + receive", args.count, args.seconds, channel_single)
    timed(
        f"channel send x{args.batch} + flush + receive", args.count, args.seconds, channel_batched
    )
    timed(f"channel send_many x{args.batch} + receive", args.count, args.seconds, channel_send_many)
    ring.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="message bytes (default 64)")
    parser.add_argument("--count", type=int, default=200_000, help="messages per case")
    parser.add_argument("--batch", type=int, default=64, help="messages per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit per case")
    parser.add_argument("--capacity", type=int, default=1 << 20, help="ring data bytes")
    args = parser.parse_args()

    run(bytearray(ring_bytes(args.capacity)), "bytearray", args)
    name = f"/shardgear-bench.{os.getpid()}.ring"
    try:
        with Segment.create(name, ring_bytes(args.capacity)) as seg:
            run(seg.buf, "POSIX shared memory", args)
    finally:
        unlink_quietly(name)


if __name__ == "__main__":
    main()
