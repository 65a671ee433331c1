"""Messages of any size over one ``Ring``: fragmentation, reassembly and an overflow queue.

A message that fits in one record (``len <= ring.max_record``) is one record with flags 0. A bigger
one is split into ``max_record``-sized fragments: every fragment but the last carries ``FLAG_MORE``
and every fragment but the first carries ``FLAG_CONT``. The ring has a single producer, so the
fragments of one message are contiguous in it.

The two flags make restarts safe without coordination:

* a fragment without ``FLAG_CONT`` while a message is half reassembled means its producer died
  and a new one started: the receiver drops the half message;
* a fragment with ``FLAG_CONT`` while no message is in progress means the receiver's predecessor
  consumed the start of the message: the receiver drops fragments until the last one.

Either way ``Receiver.dropped`` counts the message. ``Receiver.reset()`` drops a half message
explicitly (for a peer that announced its restart).

Large messages are never joined on either side unless the caller wants them whole:
``Sender.send_parts`` sends a message given as several buffers (a header and a payload, say)
without concatenating them, keeping references until the ring has taken each piece; and a
``Receiver`` given a ``large_marker`` hands out a fragmented message as its list of fragments
(``take_large``), leaving the marker in its place in the list of messages so that the order
holds. A payload of P bytes then costs its sender and its receiver P each, and no transient 2P.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Final

from shardgear.shm.doorbell import fence
from shardgear.shm.ring import Ring

FLAG_MORE: Final = 1
"""Record flag: more fragments of this message follow."""
FLAG_CONT: Final = 2
"""Record flag: this record continues a message begun in an earlier record."""

Piece = bytes | bytearray | memoryview
"""A buffer of a message sent or received in parts."""


class _Chain:
    """A message waiting in a Sender's overflow as parts (never joined), each sent in pieces of
    at most max_record bytes; a part is dropped once the ring has all of it."""

    __slots__ = ("offset", "parts", "started")

    def __init__(self, parts: deque[Piece]) -> None:
        self.parts = parts
        self.offset = 0  # bytes of parts[0] already in the ring
        self.started = False  # its first record is in the ring


def head_bytes(parts: Sequence[Piece], n: int) -> bytes:
    """The first `n` bytes (or all, if fewer) of a message given as `parts`."""
    out = b""
    for part in parts:
        out += bytes(part[: n - len(out)])
        if len(out) >= n:
            break
    return out


class Sender:
    """Messages of any size over one Ring: fragments big ones, keeps an overflow deque when full.

    ``send`` never blocks. Messages the ring cannot take yet wait, in order, in an overflow queue
    that ``flush`` moves into the ring as space frees; a caller watches ``pending`` to stop reading
    its sockets above a high-water mark. When the ring is full the sender sets the ring's
    ``producer_waiting`` flag, so that the consumer rings this side's doorbell once it has made
    room (see ``Receiver.producer_wants_wake``); the caller then calls ``flush`` again.

    A queued message is kept by reference when it is ``bytes`` and copied otherwise, so the caller
    may reuse a ``bytearray`` after ``send`` returns.
    """

    __slots__ = ("_max_record", "_offset", "_overflow", "_pending", "_ring", "_wrote")

    def __init__(self, ring: Ring) -> None:
        """Send through `ring`, of which this object must be the only producer."""
        self._ring = ring
        self._max_record = ring.max_record
        self._overflow: deque[bytes | _Chain] = deque()
        self._offset = 0  # bytes of overflow[0] already in the ring
        self._pending = 0  # bytes in the overflow not yet in the ring
        self._wrote = False

    @property
    def ring(self) -> Ring:
        """The ring this sender writes."""
        return self._ring

    @property
    def pending(self) -> int:
        """Bytes waiting in the overflow queue (not yet in the ring)."""
        return self._pending

    @property
    def queued(self) -> int:
        """Messages (or remainders of one) waiting in the overflow queue.

        Not 0 while ``pending`` may be: an empty message waits too.
        """
        return len(self._overflow)

    def send(self, message: bytes | bytearray | memoryview) -> None:
        """Send one message: into the ring now if it has room, else into the overflow queue."""
        if not self._overflow:
            try:
                if self._ring.put(message):
                    self._wrote = True
                    return
            except ValueError:
                pass  # bigger than one record: fragmented below
        if type(message) is not bytes:
            message = bytes(message)
        was_empty = not self._overflow
        self._overflow.append(message)
        self._pending += len(message)
        if was_empty:
            self._drain()

    def send_many(self, messages: list[bytes]) -> None:
        """Send several messages in order, publishing the ring's tail once for those that fit."""
        if not self._overflow:
            max_record = self._max_record
            count = 0
            for message in messages:
                if len(message) > max_record:
                    break
                count += 1
            done = self._ring.put_many(messages[:count] if count < len(messages) else messages)
            if done:
                self._wrote = True
            messages = messages[done:]
        for message in messages:
            self.send(message)

    def send_parts(self, parts: Sequence[Piece]) -> None:
        """Send one message made of `parts` in order, without joining them.

        The parts are kept by reference until the ring has taken them (each part is dropped as
        soon as it is all in), so the caller must not change them. A message bigger than a record
        is fragmented at the parts' boundaries and every ``max_record`` bytes within a part; its
        first part should hold the whole message header (a receiver may read it from the first
        fragment alone).
        """
        total = 0
        kept: deque[Piece] = deque()
        for part in parts:
            if len(part):
                kept.append(part)
                total += len(part)
        if total <= self._max_record:
            self.send(b"".join(kept))
            return
        was_empty = not self._overflow
        self._overflow.append(_Chain(kept))
        self._pending += total
        if was_empty:
            self._drain()

    def flush(self) -> bool:
        """Move as much of the overflow into the ring as fits.

        Return True if anything was written to the ring since the previous ``flush()`` (by
        ``send`` or by this call): the caller then rings the consumer's doorbell.
        """
        if self._overflow:
            self._drain()
        wrote = self._wrote
        self._wrote = False
        return wrote

    def _put(self, payload: Piece, flags: int) -> bool:
        """Put one record; when the ring is full, ask for a doorbell and look once more."""
        ring = self._ring
        if ring.put(payload, flags):
            return True
        # Set the flag, fence, then re-check: space freed before the consumer saw the flag would
        # otherwise never be announced (shm/doorbell.py).
        ring.producer_waiting = True
        fence()
        return ring.put(payload, flags)

    def _drain(self) -> None:
        put = self._put
        max_record = self._max_record
        overflow = self._overflow
        while overflow:
            message = overflow[0]
            if isinstance(message, _Chain):
                if not self._drain_chain(message):
                    return
                overflow.popleft()
                continue
            n = len(message)
            off = self._offset
            if n <= max_record:
                if not put(message, 0):
                    return
                self._pending -= n
                self._wrote = True
            else:
                view = memoryview(message)
                while off < n:
                    end = off + max_record
                    if end < n:
                        flags = FLAG_MORE | FLAG_CONT if off else FLAG_MORE
                    else:
                        end = n
                        flags = FLAG_CONT
                    if not put(view[off:end], flags):
                        self._offset = off
                        return
                    self._pending -= end - off
                    self._wrote = True
                    off = end
                self._offset = 0
            overflow.popleft()

    def _drain_chain(self, chain: _Chain) -> bool:
        """Put what fits of a message sent in parts; True once all of it is in the ring."""
        put = self._put
        max_record = self._max_record
        parts = chain.parts
        while parts:
            part = parts[0]
            off = chain.offset
            n = len(part)
            end = min(off + max_record, n)
            last = end == n and len(parts) == 1
            flags = (FLAG_CONT if chain.started else 0) | (0 if last else FLAG_MORE)
            piece = part if off == 0 and end == n else memoryview(part)[off:end]
            if not put(piece, flags):
                return False
            chain.started = True
            self._pending -= end - off
            self._wrote = True
            if end == n:
                parts.popleft()
                chain.offset = 0
            else:
                chain.offset = end
        return True


class Receiver:
    """The consuming end of a channel: complete messages, reassembled from fragments."""

    __slots__ = ("_large", "_marker", "_parts", "_ring", "_skipping", "dropped")

    dropped: int
    """Messages dropped because they were cut by a restart (see the module docstring)."""

    def __init__(self, ring: Ring, large_marker: bytes | None = None) -> None:
        """Receive from `ring`, of which this object must be the only consumer.

        With a `large_marker`, a message that came in fragments is not joined: ``receive``
        returns the marker in its place and ``take_large`` its fragments (the first holds the
        start of the message). The caller must take each one as it meets its marker.
        """
        self._ring = ring
        self._parts: list[bytes] = []
        self._skipping = False
        self._marker = large_marker
        self._large: deque[list[bytes]] = deque()
        self.dropped = 0

    @property
    def ring(self) -> Ring:
        """The ring this receiver reads."""
        return self._ring

    def receive(self, limit: int = 1 << 30) -> list[bytes]:
        """Return the complete messages available, oldest first, reading at most `limit` records.

        A message that fits in one record is returned as the ``bytes`` object the ring copied it
        into (one copy); a fragmented one costs one more copy, to join its fragments.
        """
        ring = self._ring
        if not self._parts and not self._skipping:
            out = ring.get_payloads(limit)
            if not ring.flagged_next:
                return out
            limit -= len(out)
        else:
            out = []
        append = out.append
        for flags, payload in ring.get_many(limit):
            if not flags and not self._parts and not self._skipping:
                append(payload)
            else:
                self._fragment(flags, payload, out)
        return out

    def _fragment(self, flags: int, payload: bytes, out: list[bytes]) -> None:
        parts = self._parts
        if flags & FLAG_CONT:
            if parts:
                parts.append(payload)
            elif not self._skipping:
                # The start of this message was consumed by a receiver before us.
                self._skipping = True
                self.dropped += 1
            if flags & FLAG_MORE:
                return
            self._skipping = False
            if parts:
                if self._marker is not None:
                    self._large.append(parts)
                    self._parts = []
                    out.append(self._marker)
                else:
                    out.append(b"".join(parts))
                    parts.clear()
            return
        # Not a continuation: a new message starts here.
        if parts or self._skipping:
            # The previous message was cut short: its producer died and a new one started.
            if parts:
                self.dropped += 1
            parts.clear()
            self._skipping = False
        if flags & FLAG_MORE:
            parts.append(payload)
        else:
            out.append(payload)

    def take_large(self) -> list[bytes]:
        """The fragments of the oldest message whose marker ``receive`` returned."""
        return self._large.popleft()

    def producer_wants_wake(self) -> bool:
        """Return True, once, if the producer is waiting for room: the caller rings its doorbell.

        Call it after ``receive`` has freed space, and after a `shardgear.shm.doorbell.fence`
        (the head stores before it, then this load). It clears the ring's ``producer_waiting``.
        """
        ring = self._ring
        if ring.producer_waiting:
            ring.producer_waiting = False
            return True
        return False

    @property
    def partial(self) -> int:
        """Bytes of a message received in part (0 when between messages)."""
        return sum(map(len, self._parts))

    def reset(self) -> None:
        """Drop a half-reassembled message (its producer died and restarted)."""
        if self._parts:
            self.dropped += 1
            # Any rest of it still to come is skipped without being counted again.
            self._skipping = True
        self._parts.clear()


__all__ = ["FLAG_CONT", "FLAG_MORE", "Piece", "Receiver", "Sender", "head_bytes"]
