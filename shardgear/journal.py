"""A shard's journal: its job records in shared memory, so that its successor recovers them.

Theory of operation
-------------------
The supervisor creates one journal segment per shard (`Instance.journal`, ``--journal-size``) and
writes its header (`Journal.initialize`); only the shard writes it afterwards, and only the shard's
successor reads it. Shared memory outlives the process, so a shard killed with SIGKILL leaves a
journal that is exactly as complete as its last *publish*. The byte layout is documented field by
field in `shardgear.shm.layout` ("Shard journal").

The scheduler calls the hooks (`new`, `attach`, `detach`, `assign`, `requeue`, `done`, `flags`)
after each change of a job's state. Records are appended to the active half of the segment, but a
reader sees them only once the shard stores the half's new end (`commit`), so a record written
when the shard died is never read. The shard loop publishes at two points of each turn:

* `commit` before the turn's messages go into the rings: a JOB_CREATED never reaches a client before
  the job is in the journal.
* `commit_deferred` after they are in the rings. ASSIGN and DONE records wait for it: the journal
  must not say that a worker holds a job before its JOB_ASSIGN is on its way (the new shard would
  wait for a result that never comes), nor that a job is gone before the WORK_COMPLETE for its
  client is on its way (the client would wait forever). A REQUEUE of a job whose ASSIGN still waits
  cancels that ASSIGN, so no record is ever published out of order for the same job. If the shard
  dies between the two points, a job just handed out is recovered as queued (it may run twice) and
  a job just finished as running (it runs again if its worker leaves): a job that was running at
  the moment of a kill may run twice, and no other.

When the active half has no room, the journal *compacts*: it writes a snapshot of the live jobs
(from the scheduler, `bind`) into the other half, publishes its end, then switches halves by
storing ``generation + 1``: one aligned 8-byte store, so a reader sees the old log or the complete
snapshot. The snapshot describes the scheduler's state minus the deferred records not yet written:
a job whose ASSIGN waits is written as queued (at the head of its queue). A compaction in the
middle of a turn (the half filled up) counts waiting DONE records as written. The shard compacts
at the end of a turn once the half is three quarters full, so that mid-turn compactions are rare.
A job whose records do not fit even in an empty half is not journaled (logged): it is lost if the
shard dies, and records about it later are ignored by recovery.

`read` returns the active half's records in order. A record with a bad CRC, an unknown kind or an
impossible length is skipped and logged: the reader moves on to the next 8-aligned position whose
record checks out, so one bad record never stops recovery and never crashes the shard.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeAlias

from shardgear.jobs import RUNNING, Job
from shardgear.shm import layout
from shardgear.shm.errors import ShmError
from shardgear.shm.layout import (
    JF_BACKGROUND,
    JF_STORED,
    JOURNAL_HEADER_BYTES,
    JOURNAL_NEW,
    JOURNAL_RECORD,
    JR_ASSIGN,
    JR_ATTACH,
    JR_COUNTER,
    JR_DETACH,
    JR_DONE,
    JR_FLAGS,
    JR_KINDS,
    JR_NEW,
    JR_REQUEUE,
)

if TYPE_CHECKING:
    from shardgear.shm.layout import Buffer

__all__ = ["Journal", "JournalError", "NewRecord", "Record", "SnapshotSource"]

_U32: Final = struct.Struct("<I")
_REC_TAIL: Final = struct.Struct("<III")  # length, kind, reserved: bytes 4..16 of a record
_PAIR_TAIL: Final = struct.Struct("<IIIQQ")  # length, kind, reserved, n, arg
_PAIR_BYTES: Final = 32
_NEW_FIXED: Final = JOURNAL_RECORD.size + JOURNAL_NEW.size
_NEW_BODY: Final = JOURNAL_NEW.size
#: Bytes 4.. of a JR_NEW record up to its strings: length, kind, reserved, then JOURNAL_NEW.
_NEW_HEAD: Final = struct.Struct("<III" + JOURNAL_NEW.format.lstrip("<"))
_MAX_U32: Final = 0xFFFFFFFF
_MAX_U64: Final = (1 << 64) - 1
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1


class JournalError(ShmError):
    """The buffer does not hold a journal of this version."""


@dataclass(slots=True)
class NewRecord:
    """A JR_NEW record: everything needed to re-create the job."""

    n: int
    client: int
    when: int
    retries: int
    priority: int
    flags: int
    func: bytes
    unique: bytes
    reducer: bytes
    data: bytes


#: One record read back: a `NewRecord`, or ``(kind, n, arg)`` for every other kind (JR_COUNTER's
#: value is in ``n``; JR_DONE's ``arg`` is 0).
Record: TypeAlias = "NewRecord | tuple[int, int, int]"

#: What a snapshot needs from the scheduler: the next handle number, and every live job, queued
#: ones in queue order (per function and priority) first.
SnapshotSource: TypeAlias = "Callable[[], tuple[int, Iterable[Job]]]"


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _job_flags(job: Job) -> int:
    return (JF_BACKGROUND if job.background else 0) | (JF_STORED if job.stored else 0)


class Journal:
    """One shard's journal over a shared buffer (see the module docstring)."""

    @staticmethod
    def initialize(buf: Buffer) -> None:
        """Write a fresh header (generation 0: nothing journaled yet). Called by the creator."""
        mv = memoryview(buf).cast("B")
        size = len(mv)
        if size < layout.JOURNAL_MIN_BYTES:
            raise JournalError(f"journal buffer too small: {size} < {layout.JOURNAL_MIN_BYTES}")
        mv[:JOURNAL_HEADER_BYTES] = bytes(JOURNAL_HEADER_BYTES)
        layout.JOURNAL_HEADER.pack_into(
            mv,
            0,
            layout.JOURNAL_MAGIC,
            layout.JOURNAL_VERSION,
            size,
            layout.journal_half_bytes(size),
        )
        mv.release()

    def __init__(self, buf: Buffer, *, log: Callable[[str], None] | None = None) -> None:
        """Attach to an initialized journal; JournalError if the header does not match."""
        mv = memoryview(buf).cast("B")
        size = len(mv)
        if size < layout.JOURNAL_MIN_BYTES:
            raise JournalError(f"journal buffer too small: {size}")
        magic, version, seg, half = layout.JOURNAL_HEADER.unpack_from(mv, 0)
        if magic != layout.JOURNAL_MAGIC or version != layout.JOURNAL_VERSION:
            raise JournalError(f"not a journal of version {layout.JOURNAL_VERSION}")
        if seg != size or half != layout.journal_half_bytes(size):
            raise JournalError(f"journal header sizes {seg}, {half} do not match {size} bytes")
        self._mv = mv
        self._q = mv[:JOURNAL_HEADER_BYTES].cast("Q")
        self._log = log
        self.half_bytes: int = half
        """Capacity of each half (the largest snapshot, and the largest record, that fits)."""
        self._compact_at = half - (half >> 2)  # compact at the end of a turn past this
        gen = self._q[layout.JOURNAL_GENERATION_Q]
        self._half = gen & 1
        self._base = JOURNAL_HEADER_BYTES + self._half * half
        end = self._q[layout.JOURNAL_END_Q + self._half]
        self._off: int = min(end, half) & ~7  # unpublished write position in the active half
        self._deferred: dict[int, tuple[int, int]] = {}  # n -> (JR_ASSIGN or JR_DONE, arg)
        self._source: SnapshotSource | None = None
        self._in_snapshot = False
        self._attempted = 0  # bytes asked for since the last snapshot
        self._snapshot_bytes = 0  # size of the last snapshot
        self._dropped = 0  # records not journaled since the last warning
        self.compactions = 0
        """Snapshots written by this process."""
        self.skipped = 0
        """Records `read` skipped as corrupt."""

    # ------------------------------------------------------------------ state

    @property
    def generation(self) -> int:
        """0 while nothing was ever journaled (a fresh segment: the shard cold-starts)."""
        return int(self._q[layout.JOURNAL_GENERATION_Q])

    @property
    def fresh(self) -> bool:
        return self.generation == 0

    @property
    def used(self) -> int:
        """Bytes written in the active half (published or not)."""
        return self._off

    def close(self) -> None:
        """Release the views of the buffer."""
        self._q.release()
        self._mv.release()

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    # ------------------------------------------------------------------ reading

    def read(self) -> list[Record]:
        """Every valid record of the active half up to its published end, in order."""
        gen = self.generation
        if gen == 0:
            return []
        half = gen & 1
        end = int(self._q[layout.JOURNAL_END_Q + half])
        if end > self.half_bytes:
            self._say(f"journal end {end} is past its half ({self.half_bytes}); reading that much")
            end = self.half_bytes
        return self._parse(JOURNAL_HEADER_BYTES + half * self.half_bytes, end)

    def _parse(self, base: int, end: int) -> list[Record]:
        mv = self._mv
        out: list[Record] = []
        off = 0
        bad_at = -1  # start of the current run of skipped bytes
        runs: list[tuple[int, int]] = []
        while off + 16 <= end:
            rec = self._record_at(mv, base, off, end)
            if rec is None:
                if bad_at < 0:
                    bad_at = off
                off += 8
                continue
            if bad_at >= 0:
                runs.append((bad_at, off))
                bad_at = -1
            record, size = rec
            out.append(record)
            off += size
        if bad_at >= 0:
            runs.append((bad_at, end))
        if runs:
            self.skipped += len(runs)
            where = ", ".join(f"{a}..{b}" for a, b in runs[:5])
            self._say(
                f"journal: skipped {len(runs)} corrupt or half-written region(s) of the log "
                f"(bytes {where}{', ...' if len(runs) > 5 else ''}); their jobs are not recovered"
            )
        return out

    @staticmethod
    def _record_at(mv: memoryview, base: int, off: int, end: int) -> tuple[Record, int] | None:
        """The valid record at `off` and its padded size, or None."""
        crc, length, kind, _res = JOURNAL_RECORD.unpack_from(mv, base + off)
        if kind not in JR_KINDS or length > end - off - 16:
            return None
        start = base + off
        body = start + 16
        size = _pad(16 + length)
        if kind == JR_NEW:
            if length < JOURNAL_NEW.size:
                return None
            n, client, when, retries, prio, flags, _r, lf, lu, lr, ld = JOURNAL_NEW.unpack_from(
                mv, body
            )
            if JOURNAL_NEW.size + lf + lu + lr + ld != length or prio > 2:
                return None
            # the CRC covers everything but the payload (see shm/layout.py)
            if zlib.crc32(mv[start + 4 : start + 16 + length - ld]) != crc:
                return None
            p = body + JOURNAL_NEW.size
            func = bytes(mv[p : p + lf])
            p += lf
            unique = bytes(mv[p : p + lu])
            p += lu
            reducer = bytes(mv[p : p + lr])
            p += lr
            data = bytes(mv[p : p + ld])
            record: Record = NewRecord(
                n, client, when, retries, prio, flags, func, unique, reducer, data
            )
            return record, size
        if length != 16 or zlib.crc32(mv[start + 4 : start + 32]) != crc:
            return None
        n, arg = layout.JOURNAL_PAIR.unpack_from(mv, body)
        return (kind, n, arg), size

    # ------------------------------------------------------------------ writing (hot path)

    def bind(self, source: SnapshotSource) -> None:
        """Tell the journal where snapshots come from (the scheduler)."""
        self._source = source

    def new(self, job: Job, client: int) -> None:
        """A new job was created (`client`: its foreground submitter, or 0)."""
        func, unique, reducer, data = job.func, job.unique, job.reducer, job.data
        lf, lu, lr, ld = len(func), len(unique), len(reducer), len(data)
        length = _NEW_BODY + lf + lu + lr + ld
        size = (length + 23) & ~7  # 16-byte header, padded to 8
        off = self._off
        if off + size > self.half_bytes and not self._make_room(size):
            return
        when = job.when
        if when and not _INT64_MIN <= when <= _INT64_MAX:
            when = 0
        retries = job.retries
        head = _NEW_HEAD.pack(
            length,
            JR_NEW,
            0,
            job.n,
            client,
            when,
            retries if retries <= _MAX_U32 else _MAX_U32,
            job.priority,
            (JF_BACKGROUND if job.background else 0) | (JF_STORED if job.stored else 0),
            0,
            lf,
            lu,
            lr,
            ld,
        )
        mv = self._mv
        at = self._base + off
        small = head + func + unique + reducer
        p = at + 4 + len(small)
        mv[at + 4 : p] = small
        mv[p : p + ld] = data
        # The CRC guards the record's structure, not its payload: checksumming a 64 KiB payload
        # cost more than the rest of the job (a record is published only once it is complete).
        _U32.pack_into(mv, at, zlib.crc32(small))
        self._off = off + size
        self._attempted += size

    def _pair(self, kind: int, n: int, arg: int) -> None:
        off = self._off
        if off + _PAIR_BYTES > self.half_bytes and not self._make_room(_PAIR_BYTES):
            return
        tail = _PAIR_TAIL.pack(16, kind, 0, n, arg)
        at = self._base + off
        self._mv[at : at + _PAIR_BYTES] = _U32.pack(zlib.crc32(tail)) + tail
        self._off = off + _PAIR_BYTES
        self._attempted += _PAIR_BYTES

    def attach(self, job: Job, conn: int) -> None:
        """Client `conn` attached to `job` (a foreground submission coalesced onto it)."""
        self._pair(JR_ATTACH, job.n, conn)

    def detach(self, job: Job, conn: int) -> None:
        """Client `conn` left `job` (once per attachment)."""
        self._pair(JR_DETACH, job.n, conn)

    def flags(self, job: Job) -> None:
        """`job` became background and/or stored."""
        self._pair(JR_FLAGS, job.n, _job_flags(job))

    def requeue(self, job: Job) -> None:
        """`job` went back to its queue (its worker left or timed out)."""
        d = self._deferred
        if d and d.get(job.n, (0, 0))[0] == JR_ASSIGN:
            del d[job.n]  # never published: the journal still has it queued
        self._pair(JR_REQUEUE, job.n, job.retries & _MAX_U64)

    def assign(self, job: Job, conn: int) -> None:
        """Worker `conn` took `job`; written by `commit_deferred`."""
        self._deferred[job.n] = (JR_ASSIGN, conn)

    def done(self, job: Job) -> None:
        """`job` is gone; written by `commit_deferred`."""
        self._deferred[job.n] = (JR_DONE, 0)

    def commit(self) -> None:
        """Publish every record written so far (not the deferred ones)."""
        self._q[layout.JOURNAL_END_Q + self._half] = self._off

    def commit_deferred(self) -> None:
        """Write and publish the deferred ASSIGN and DONE records; compact if the half is three
        quarters full. Call once the turn's messages are in the rings."""
        d = self._deferred
        if d:
            self._deferred = {}
            compactions = self.compactions
            cap = self.half_bytes - _PAIR_BYTES
            mv = self._mv
            pack = _PAIR_TAIL.pack
            for n, (kind, arg) in d.items():
                off = self._off
                if off > cap:
                    self._pair(kind, n, arg)  # makes room (or drops the record)
                    if self.compactions != compactions:
                        break  # the snapshot holds the current state, these records included
                    continue
                tail = pack(16, kind, 0, n, arg)
                at = self._base + off
                mv[at : at + _PAIR_BYTES] = _U32.pack(zlib.crc32(tail)) + tail
                self._off = off + _PAIR_BYTES
            self._attempted += _PAIR_BYTES * len(d)
        if (
            self._off > self._compact_at
            and self._off - self._snapshot_bytes >= self.half_bytes >> 2
            and self._source is not None
        ):
            # Compact only after a quarter of a half has been written since the last snapshot:
            # with live jobs filling most of a half, compacting every turn copied them all over
            # and over (a 64 KiB-payload load ran 3.6 times slower).
            self.snapshot()
        else:
            self._q[layout.JOURNAL_END_Q + self._half] = self._off

    # ------------------------------------------------------------------ compaction

    def _make_room(self, size: int) -> bool:
        """The active half cannot take `size` more bytes: compact if that can help. False if the
        record must be dropped; True if a compaction wrote it (the snapshot is taken after the
        change the record describes, so it is included)."""
        self._attempted += size
        if (
            self._source is not None
            and not self._in_snapshot
            and size <= self.half_bytes
            and self._attempted - self._snapshot_bytes >= self.half_bytes >> 2
        ):
            self.snapshot(pending=True)
            return False  # the snapshot holds the change: nothing more to write
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 10000 == 0:
            self._say(
                f"journal full: {self._dropped} record(s) not journaled (a job's records must "
                f"fit in {self.half_bytes} bytes); those jobs are lost if this shard dies"
            )
        return False

    def snapshot(self, *, pending: bool = False) -> None:
        """Write the live jobs into the other half and switch to it.

        With `pending`, deferred ASSIGN records not written yet stay deferred and their jobs are
        written as queued; otherwise every deferred record counts as written."""
        assert self._source is not None
        self._in_snapshot = True
        try:
            self._snapshot(pending)
        finally:
            self._in_snapshot = False

    def _snapshot(self, pending: bool) -> None:
        assert self._source is not None
        next_n, jobs = self._source()
        d = self._deferred if pending else {}
        if not pending:
            self._deferred = {}
        half = 1 - self._half
        base = JOURNAL_HEADER_BYTES + half * self.half_bytes
        cap = self.half_bytes
        self._half, self._base, self._off = half, base, 0  # write there (unpublished)
        self._pair_at(JR_COUNTER, next_n & _MAX_U64, 0)
        skipped = 0
        held: list[Job] = []  # jobs whose ASSIGN is deferred: queued, at the head of their queue
        rest: list[Job] = []
        for job in jobs:
            if d and job.state == RUNNING and d.get(job.n, (0, 0))[0] == JR_ASSIGN:
                held.append(job)
            else:
                rest.append(job)
        for job in held + rest:
            running = job.state == RUNNING and job.worker is not None and job not in held
            clients = job.clients
            need = _pad(_NEW_FIXED + len(job.func) + len(job.unique) + len(job.reducer))
            need += _pad(len(job.data)) + 8
            need += _PAIR_BYTES * (max(0, len(clients) - 1) + (1 if running else 0))
            if self._off + need > cap:
                skipped += 1
                continue
            self.new(job, clients[0] if clients else 0)
            for c in clients[1:]:
                self._pair(JR_ATTACH, job.n, c)
            if running:
                assert job.worker is not None
                self._pair(JR_ASSIGN, job.n, job.worker.conn)
        q = self._q
        q[layout.JOURNAL_END_Q + half] = self._off
        q[layout.JOURNAL_GENERATION_Q] = q[layout.JOURNAL_GENERATION_Q] + 1  # the switch
        self._snapshot_bytes = self._attempted = self._off
        self.compactions += 1
        if skipped:
            self._say(
                f"journal snapshot: {skipped} job(s) do not fit in {cap} bytes and are not "
                "journaled (lost if this shard dies); raise --journal-size"
            )

    def _pair_at(self, kind: int, n: int, arg: int) -> None:
        """A record that always fits (the first of a snapshot)."""
        tail = _PAIR_TAIL.pack(16, kind, 0, n, arg)
        at = self._base + self._off
        self._mv[at : at + _PAIR_BYTES] = _U32.pack(zlib.crc32(tail)) + tail
        self._off += _PAIR_BYTES
