"""Doorbells: when a producer must ring its consumer's eventfd, and the fence that makes skipping it
safe (ipc-design.md, recommendations 3 and 4).

Ringing an eventfd costs a system call on each side and, when the consumer is asleep, a cross-CPU
wake-up (25-40 us on the VMs this was measured on). A consumer that is busy draining its rings does
not need it. So a consumer announces sleep in each of its input rings (`Ring.consumer_sleeping`)
before it blocks, and producers ring only a ring whose consumer announced it:

    consumer                                 producer
    store consumer_sleeping = 1 (each ring)  store tail (publish records)
    fence()                                  fence()
    load tail: data? then do not block       load consumer_sleeping: 1? then ring
    block in epoll; on waking, store 0

Both sides store, then load what the other side stores. x86-64 (TSO) may let a load pass an earlier
store of the same CPU, so without the fences each side could read the other's old value and the
consumer would sleep through published records: a lost wake-up. `fence` is a full memory barrier
(a LOCK-prefixed read-modify-write on x86-64); a consumer still blocks with a timeout as a last
safety net. The same pattern guards `Ring.producer_waiting` (a full ring) in the other direction.

CPython has no fence instruction, so `fence` takes and releases a lock that nobody else ever holds:
acquiring a free ``_thread.lock`` is an atomic compare-and-swap (glibc's semaphore or mutex fast
path), which on x86-64 is a full barrier. It costs about 0.1 us, a few times less than the
``eventfd_write`` it saves, and is paid once per loop turn, not per message.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

from shardgear.shm.ring import Ring

_FENCE_LOCK: Final = threading.Lock()


def fence() -> None:
    """A full memory barrier: no load after it is done before every store before it is visible."""
    lock = _FENCE_LOCK
    lock.acquire()
    lock.release()


def announce_sleep(rings: Sequence[Ring]) -> bool:
    """Set ``consumer_sleeping`` in each of a consumer's input rings, then look again.

    Return True if every ring is empty: the consumer may block (producers will ring it). If one
    has data, return False: the consumer must not block (it clears the flags with `awake`).
    """
    for ring in rings:
        ring.consumer_sleeping = True
    fence()
    return all(ring.is_empty() for ring in rings)


def awake(rings: Sequence[Ring]) -> None:
    """Clear ``consumer_sleeping`` in each ring: the consumer is draining; nobody need ring."""
    for ring in rings:
        ring.consumer_sleeping = False
