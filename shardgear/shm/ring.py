"""A single-producer single-consumer byte ring over any writable buffer.

The layout and the memory-ordering assumptions are in ``shardgear.shm.layout``. This is the hot
path, so the code trades a little repetition for speed: every counter goes through one
``memoryview.cast('Q')`` view of the whole buffer, payloads are copied with slice assignment, each
side caches its own counter and the other side's, and re-reads the other side's only when the ring
looks full (producer) or empty (consumer). ``put_many``/``get_many`` publish their counter once per
batch.

One ``Ring`` object may be used by the producer, by the consumer, or (in one process, in tests) by
both: the two sides keep separate caches.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from shardgear.shm.errors import ShmError
from shardgear.shm.layout import (
    MIN_CAPACITY,
    RING_CONSUMER_SLEEPING_Q,
    RING_HEAD_Q,
    RING_HEADER,
    RING_HEADER_BYTES,
    RING_MAGIC,
    RING_PRODUCER_WAITING_Q,
    RING_TAIL_Q,
    RING_VERSION,
    WRAP_LENGTH,
    Buffer,
    max_record_for,
    ring_capacity,
)

# The hot paths index the header's 'Q' view with literals (a global lookup per access costs more
# than the access): 8 is head, 16 is tail; 0xFFFFFFFF is WRAP_LENGTH. Checked here.
_HEAD: Final = 8
_TAIL: Final = 16
if (_HEAD, _TAIL, WRAP_LENGTH) != (RING_HEAD_Q, RING_TAIL_Q, 0xFFFFFFFF):  # pragma: no cover
    raise ImportError("shardgear.shm.ring is out of date with shardgear.shm.layout")


def _bytes_view(buf: Buffer, name: str) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        raise ShmError("ring buffer is read-only", name)
    if mv.format != "B":
        mv = mv.cast("B")
    return mv


class Ring:
    """Single-producer single-consumer byte ring over any writable buffer.

    The buffer is a ``bytearray``, an ``mmap`` or a ``memoryview`` (of a shared-memory segment).
    ``put`` never blocks: it returns False when there is no room. Payloads are bytes-like objects
    of format ``'B'`` (``bytes``, ``bytearray``, a byte ``memoryview``) of at most ``max_record``
    bytes; each comes back from ``get`` as ``bytes`` together with the ``flags`` it was put with.
    """

    __slots__ = (
        "_data",
        "_dq",
        "_head",
        "_head_seen",
        "_q",
        "_tail",
        "_tail_seen",
        "capacity",
        "flagged_next",
        "max_record",
        "name",
    )

    capacity: int
    """Bytes in the data area (a multiple of 8)."""
    max_record: int
    """Largest payload one record can hold: a quarter of the capacity."""
    name: str
    """Name used in errors (the segment name, or ``""``)."""
    flagged_next: bool
    """Set by ``get_payloads``: it stopped before a record with non-zero flags."""

    @staticmethod
    def initialize(buf: Buffer) -> None:
        """Write magic, version, capacity and max_record and zero the counters and flags.

        Called once, by the creator, before anyone attaches. The capacity is the rest of the
        buffer after the header, rounded down to a multiple of 8 (see ``layout.ring_bytes``).
        """
        mv = _bytes_view(buf, "")
        capacity = ring_capacity(len(mv))
        if capacity < MIN_CAPACITY:
            raise ShmError(f"ring buffer too small: {len(mv)} bytes")
        mv[:RING_HEADER_BYTES] = bytes(RING_HEADER_BYTES)
        RING_HEADER.pack_into(mv, 0, RING_MAGIC, RING_VERSION, capacity, max_record_for(capacity))

    def __init__(self, buf: Buffer, name: str = "") -> None:
        """Attach to an initialized ring; raise ShmError if its header is not valid.

        The new object continues from the published ``head`` and ``tail``, so a restarted
        producer or consumer picks up where its predecessor left off.
        """
        self.name = name
        self.flagged_next = False
        mv = _bytes_view(buf, name)
        if len(mv) < RING_HEADER_BYTES + MIN_CAPACITY:
            raise ShmError(f"ring buffer too small: {len(mv)} bytes", name)
        magic, version, capacity, max_record = RING_HEADER.unpack_from(mv, 0)
        if magic != RING_MAGIC:
            raise ShmError(f"not a ring: bad magic {magic:#x}", name)
        if version != RING_VERSION:
            raise ShmError(f"ring version {version}, expected {RING_VERSION}", name)
        if (
            capacity < MIN_CAPACITY
            or capacity % 8
            or RING_HEADER_BYTES + capacity > len(mv)
            or max_record != max_record_for(capacity)
        ):
            raise ShmError(
                f"bad ring geometry: capacity {capacity}, max_record {max_record}, "
                f"buffer {len(mv)} bytes",
                name,
            )
        self.capacity = capacity
        self.max_record = max_record
        whole = mv[: RING_HEADER_BYTES + capacity]
        self._q = whole.cast("Q")
        self._data = whole[RING_HEADER_BYTES:]
        self._dq = self._data.cast("Q")  # record header words: index = data offset >> 3
        # The other side may be running: head, then tail, then head again gives two checks that
        # hold however the counters move meanwhile.
        head = self._q[_HEAD]
        tail = self._q[_TAIL]
        head_after = self._q[_HEAD]
        if tail < head or tail - head_after > capacity or head % 8 or tail % 8:
            raise ShmError(f"bad ring counters: head {head}, tail {tail}", name)
        head = head_after
        self._head = self._head_seen = head
        self._tail = self._tail_seen = tail

    def release(self) -> None:
        """Release this object's views of the buffer (so that the mapping can be closed)."""
        self._dq.release()
        self._q.release()
        self._data.release()

    # ---------------------------------------------------------------------------------- producer

    def put(self, payload: bytes | bytearray | memoryview, flags: int = 0) -> bool:
        """Append one record; return False (and change nothing) if there is no room.

        Raise ValueError if ``len(payload) > max_record`` or `flags` is not a u32.
        """
        n = len(payload)
        if n > self.max_record:
            raise ValueError(f"record of {n} bytes exceeds max_record {self.max_record}")
        if flags and not 0 <= flags <= 0xFFFFFFFF:
            raise ValueError(f"record flags must be a u32: {flags}")
        need = (n + 15) & ~7
        tail = self._tail
        cap = self.capacity
        pos = tail % cap
        if pos + need > cap:
            # Wrap: the marker and the bytes after it count as used until the consumer passes them.
            need += cap - pos
            if tail + need - self._head_seen > cap:
                self._head_seen = self._q[8]  # head
                if tail + need - self._head_seen > cap:
                    return False
            self._dq[pos >> 3] = 0xFFFFFFFF  # WRAP_LENGTH
            pos = 0
        elif tail + need - self._head_seen > cap:
            self._head_seen = self._q[8]  # head
            if tail + need - self._head_seen > cap:
                return False
        if n:
            self._data[pos + 8 : pos + 8 + n] = payload
        self._dq[pos >> 3] = n | flags << 32
        self._tail = tail = tail + need
        self._q[16] = tail  # publish: tail
        return True

    def put_many(self, payloads: Iterable[bytes | bytearray | memoryview]) -> int:
        """Append as many of `payloads` (flags 0) as fit, in order; return how many.

        ``tail`` is published once, after the last record. Raise ValueError (having published
        the ones before it) if a payload exceeds ``max_record``.
        """
        cap = self.capacity
        max_record = self.max_record
        q = self._q
        dq = self._dq
        data = self._data
        tail = self._tail
        head_seen = self._head_seen
        count = 0
        try:
            for payload in payloads:
                n = len(payload)
                if n > max_record:
                    raise ValueError(f"record of {n} bytes exceeds max_record {max_record}")
                need = (n + 15) & ~7
                pos = tail % cap
                if pos + need > cap:
                    if tail + need + cap - pos - head_seen > cap:
                        head_seen = q[8]  # head
                        if tail + need + cap - pos - head_seen > cap:
                            break
                    dq[pos >> 3] = 0xFFFFFFFF  # WRAP_LENGTH
                    tail += cap - pos
                    pos = 0
                elif tail + need - head_seen > cap:
                    head_seen = q[8]  # head
                    if tail + need - head_seen > cap:
                        break
                if n:
                    data[pos + 8 : pos + 8 + n] = payload
                dq[pos >> 3] = n
                tail += need
                count += 1
        finally:
            self._head_seen = head_seen
            if tail != self._tail:
                self._tail = tail
                q[16] = tail  # publish: tail
        return count

    # ---------------------------------------------------------------------------------- consumer

    def get(self) -> tuple[int, bytes] | None:
        """Remove and return the oldest record as ``(flags, payload)``, or None if empty."""
        head = self._head
        if head == self._tail_seen:
            self._tail_seen = self._q[16]  # tail
            if head == self._tail_seen:
                return None
        pos = head % self.capacity
        word = self._dq[pos >> 3]
        n = word & 0xFFFFFFFF
        if n > self.max_record:
            if n != 0xFFFFFFFF:  # WRAP_LENGTH
                raise ShmError(f"corrupt ring: record of {n} bytes at {head}", self.name)
            head += self.capacity - pos
            pos = 0
            word = self._dq[0]
            n = word & 0xFFFFFFFF
            if n > self.max_record:
                raise ShmError(f"corrupt ring: record of {n} bytes at {head}", self.name)
        payload = self._data[pos + 8 : pos + 8 + n].tobytes()
        self._head = head = head + ((n + 15) & ~7)
        self._q[8] = head  # release the space: head
        return word >> 32, payload

    def get_many(self, limit: int = 1 << 30) -> list[tuple[int, bytes]]:
        """Remove and return up to `limit` records as ``(flags, payload)``, oldest first.

        ``head`` is published once, after the last record.
        """
        out: list[tuple[int, bytes]] = []
        head = self._head
        q = self._q
        tail = self._tail_seen
        if head == tail:
            tail = self._tail_seen = q[16]  # tail
            if head == tail:
                return out
        cap = self.capacity
        max_record = self.max_record
        data = self._data
        dq = self._dq
        append = out.append
        start = head
        try:
            while limit > 0:
                if head == tail:
                    tail = self._tail_seen = q[16]  # tail
                    if head == tail:
                        break
                pos = head % cap
                word = dq[pos >> 3]
                n = word & 0xFFFFFFFF
                if n > max_record:
                    if n != 0xFFFFFFFF:  # WRAP_LENGTH
                        raise ShmError(f"corrupt ring: record of {n} bytes at {head}", self.name)
                    head += cap - pos
                    pos = 0
                    word = dq[0]
                    n = word & 0xFFFFFFFF
                    if n > max_record:
                        raise ShmError(f"corrupt ring: record of {n} bytes at {head}", self.name)
                append((word >> 32, data[pos + 8 : pos + 8 + n].tobytes()))
                head += (n + 15) & ~7
                limit -= 1
        finally:
            if head != start:
                self._head = head
                q[8] = head  # release the space: head
        return out

    def get_payloads(self, limit: int = 1 << 30) -> list[bytes]:
        """Remove and return the payloads of up to `limit` records whose flags are 0.

        Stop before the first record with non-zero flags, which stays in the ring, and say so in
        ``flagged_next``. The fast path of a consumer whose records are mostly unflagged: no
        ``(flags, payload)`` tuples. ``head`` is published once, after the last record.
        """
        out: list[bytes] = []
        self.flagged_next = False
        head = self._head
        q = self._q
        tail = self._tail_seen
        if head == tail:
            tail = self._tail_seen = q[16]  # tail
            if head == tail:
                return out
        cap = self.capacity
        max_record = self.max_record
        data = self._data
        dq = self._dq
        append = out.append
        start = head
        try:
            while limit > 0:
                if head == tail:
                    tail = self._tail_seen = q[16]  # tail
                    if head == tail:
                        break
                pos = head % cap
                word = dq[pos >> 3]  # flags 0 <=> the whole word is the length
                if word > max_record:
                    if word == 0xFFFFFFFF:  # WRAP_LENGTH, flags 0
                        head += cap - pos
                        pos = 0
                        word = dq[0]
                    if word > max_record:
                        if word & 0xFFFFFFFF > max_record:
                            raise ShmError(f"corrupt ring: record at {head}", self.name)
                        self.flagged_next = True
                        break
                append(data[pos + 8 : pos + 8 + word].tobytes())
                head += (word + 15) & ~7
                limit -= 1
        finally:
            if head != start:
                self._head = head
                q[8] = head  # release the space: head
        return out

    # ---------------------------------------------------------------------------------- state

    def is_empty(self) -> bool:
        """Return True if the consumer has read everything published (re-reads both counters)."""
        q = self._q
        return bool(q[_HEAD] == q[_TAIL])

    @property
    def used(self) -> int:
        """Bytes between head and tail (records, padding and wrap skips), as published."""
        q = self._q
        return int(q[_TAIL] - q[_HEAD])

    @property
    def producer_waiting(self) -> bool:
        """The producer found the ring full and wants a doorbell when space frees."""
        return bool(self._q[RING_PRODUCER_WAITING_Q])

    @producer_waiting.setter
    def producer_waiting(self, value: bool) -> None:
        self._q[RING_PRODUCER_WAITING_Q] = 1 if value else 0

    @property
    def consumer_sleeping(self) -> bool:
        """The consumer is about to block on its doorbell (producers may skip ringing while 0)."""
        return bool(self._q[RING_CONSUMER_SLEEPING_Q])

    @consumer_sleeping.setter
    def consumer_sleeping(self, value: bool) -> None:
        self._q[RING_CONSUMER_SLEEPING_Q] = 1 if value else 0

    def __repr__(self) -> str:
        q = self._q
        return (
            f"<Ring {self.name or 'anonymous'} capacity={self.capacity} "
            f"head={q[_HEAD]} tail={q[_TAIL]}>"
        )


__all__ = ["Ring"]
