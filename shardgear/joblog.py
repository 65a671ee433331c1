"""A shard's job log: every change of its jobs' state, appended to a file of its own.

Theory of operation
-------------------
One file per shard, ``jobs.<port>.shard<i>.log`` in the state directory (``--store log``, the
default), or in ``/dev/shm`` under the server's run name (``--store none``). Only that shard
writes it. It serves two readers:

* the shard's successor after a crash (same supervisor run): it recovers every job, foreground
  ones with their clients and running ones with their workers (ARCHITECTURE.md, "Shard crash");
* the next run of the server (a new supervisor): it recovers the durable background jobs.
  The file header's ``run_id`` tells the two apart.

So this one log does what the shared-memory journal and the sqlite store did before: a job's
state is written once, in one append per loop turn, and a background job costs no more than a
foreground one (sqlite cost about a quarter of background throughput, and a 64 KiB payload was
written twice).

The scheduler calls the hooks (`new`, `attach`, `detach`, `flags`, `requeue`, `assign`, `done`)
after each change. Records collect in memory and reach the file at two points of the shard's loop
turn, as the journal's did:

* `commit`, before the turn's messages go into the rings: a JOB_CREATED never reaches a client
  before its job is in the file (and, with ``--store-sync full``, on the disk). A commit that
  fails (disk full, EFBIG, EIO) truncates the file back to where it was and returns the handles of
  the durable jobs of the batch: the shard answers those submissions ``ERROR QUEUE_ERROR`` instead
  of JOB_CREATED. The log is then *stale* (what is in memory is no longer all in the file) and
  rewrites itself whole (a snapshot) at a later commit, at most once a second, until that works.
* `end_turn`, once the turn's messages are all in the rings. ASSIGN and DONE records wait for it:
  the log must not say that a worker holds a job before its JOB_ASSIGN is on its way, nor that a
  job is gone before the WORK_COMPLETE for its clients is. They are written by the next `commit`
  (the shard loop turns again at once while any are waiting). A REQUEUE of a job whose ASSIGN is
  still held back cancels that ASSIGN. If the shard dies in between, a job just handed out is
  recovered as queued and one just finished as running: a job running at the moment of a kill may
  run twice, and no other.

*Compaction.* The file only grows; once the bytes appended since the last snapshot exceed both
`compact_min` and the size of that snapshot, `end_turn` writes a snapshot of the live jobs (from
the scheduler, `bind`) to a new file and renames it over the old one, which is atomic: a reader
sees the old log or the whole snapshot. So the file stays under about twice the live jobs' size
plus `compact_min`, and each byte appended is rewritten at most about once. Files replaced within
seconds are never written back to the disk: the page cache drops them. Every start begins with a
snapshot, so a successor reads a clean log.

*Reading.* `read_log` parses the whole file. A record with a bad CRC, an unknown kind or an
impossible length is skipped (the reader moves on to the next 8-aligned position whose record
checks out) and counted, so a torn tail or a damaged block never stops recovery.

File layout
-----------
A 64-byte header, then records at 8-aligned offsets. Little-endian throughout.

    header
    0   8   magic          b"SGJLOG01"
    8   4   version        LOG_VERSION
    12  4   shard_index    the shard that writes the file
    16  4   shard_count    the number of shards when it was written
    20  4   reserved       0
    24  8   run_id         the supervisor run that wrote it (a random u64 per run)
    32  8   created        unix time of the snapshot that began the file, seconds
    40  24  reserved       0

    record
    0   4   crc            zlib.crc32 of bytes 4 .. 16 + length, less a NEW record's payload
    4   4   length         body bytes
    8   4   kind           one of the JR_* constants
    12  4   reserved       0
    16  len body           by kind (below), then 0 to 7 bytes of padding

Record bodies (``n`` is the number of the job's handle, ``<prefix>:<n>``); every kind but JR_NEW
and JR_DELAY has a 16-byte body, two u64:

    JR_COUNTER   next_n, 0          the shard's next handle number (first record of a snapshot)
    JR_NEW       n, client u64, when i64, retries u32, priority u8, flags u8, reserved u16,
                 func_len, unique_len, reducer_len, data_len u32 each; then the four strings
    JR_ATTACH    n, conn            one more foreground client attached (a coalesced submit)
    JR_DETACH    n, conn            that client left (every attachment of that conn)
    JR_ASSIGN    n, conn            the worker conn now holds the job
    JR_REQUEUE   n, retries         back at the tail of its queue, held by nobody
    JR_DONE      n, 0               the job is gone (completed, failed, cancelled, dropped)
    JR_FLAGS     n, flags           flags |= (a background submission coalesced onto the job)
    JR_DELAY     n u64, next_at f64, first_failed f64, last_failed f64, failures u32, reason u32,
                 error_len u32; then the error: the failed attempts of a job under a retry policy
                 (`jobs.RetryState`, `shardgear.retries`), times in epoch seconds, reason a
                 jobs.OUT_* code, error the last WORK_EXCEPTION data (at most 4 KiB). With
                 next_at > 0 the job waits (FUTURE), held by nobody, until then and goes to the
                 tail of its queue; 0 (snapshots of queued or running jobs) only says how it failed

JR_NEW flags: bit 0 background, bit 1 stored (durable: recovered by the next run).
"""

from __future__ import annotations

import errno
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from shardgear.jobs import FUTURE, RUNNING, Job

__all__ = [
    "JF_BACKGROUND",
    "JF_STORED",
    "LOG_VERSION",
    "DelayRecord",
    "JobLog",
    "LogContents",
    "NewRecord",
    "Record",
    "SnapshotSource",
    "read_log",
]

LOG_MAGIC: Final = b"SGJLOG01"
LOG_VERSION: Final = 1
HEADER: Final = struct.Struct("<8sIIII QQ 24x")
HEADER_BYTES: Final = 64

JR_COUNTER: Final = 1
JR_NEW: Final = 2
JR_ATTACH: Final = 3
JR_DETACH: Final = 4
JR_ASSIGN: Final = 5
JR_REQUEUE: Final = 6
JR_DONE: Final = 7
JR_FLAGS: Final = 8
JR_DELAY: Final = 9
JR_KINDS: Final = frozenset(range(JR_COUNTER, JR_DELAY + 1))

JF_BACKGROUND: Final = 1
JF_STORED: Final = 2

COMPACT_MIN: Final = 128 * 1024 * 1024
"""Bytes appended since the last snapshot before a compaction is considered (see the docstring)."""
RETRY_INTERVAL: Final = 1.0
"""Seconds between attempts to rewrite a stale log."""

_RECORD: Final = struct.Struct("<IIII")  # crc, length, kind, reserved
_NEW: Final = struct.Struct("<QQqIBBHIIII")
_NEW_HEAD: Final = struct.Struct("<III" + _NEW.format.lstrip("<"))  # bytes 4.. up to the strings
_PAIR: Final = struct.Struct("<QQ")
_PAIR_TAIL: Final = struct.Struct("<IIIQQ")  # bytes 4..32 of a pair record
_PAIR_BYTES: Final = 32
_DELAY: Final = struct.Struct("<QdddIII")  # n, next_at, first, last, failures, reason, error_len
_DELAY_HEAD: Final = struct.Struct("<III" + _DELAY.format.lstrip("<"))
ERROR_LIMIT: Final = 4096  # bytes of a JR_DELAY record's error
_U32: Final = struct.Struct("<I")
_NEW_FIXED: Final = 16 + _NEW.size
_BIG: Final = 4096  # payloads at least this big are written from the job, not copied first
_MAX_U32: Final = 0xFFFFFFFF
_MAX_U64: Final = (1 << 64) - 1
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_IOV_MAX: Final = 1024
_ZEROS: Final = bytes(8)


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


@dataclass(slots=True)
class DelayRecord:
    """A JR_DELAY record: a job's failed attempts (`jobs.RetryState`) and its next attempt."""

    n: int
    next_at: float
    first_failed: float
    last_failed: float
    failures: int
    reason: int
    error: bytes


Record: TypeAlias = "NewRecord | DelayRecord | tuple[int, int, int]"
"""One record read back: a `NewRecord`, a `DelayRecord`, or ``(kind, n, arg)`` for every other
kind (JR_COUNTER's value is in ``n``)."""

SnapshotSource: TypeAlias = "Callable[[], tuple[int, Iterable[Job]]]"
"""What a snapshot needs from the scheduler: the next handle number, and every live job, queued
ones in queue order (per function and priority) first."""


@dataclass(slots=True)
class LogContents:
    """What `read_log` found in a file."""

    run_id: int
    """The run that wrote it (0: no file, or no readable header)."""
    shard_index: int
    shard_count: int
    records: list[Record]
    skipped: int
    """Corrupt or torn regions skipped."""


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _job_flags(job: Job) -> int:
    return (JF_BACKGROUND if job.background else 0) | (JF_STORED if job.stored else 0)


# ---------------------------------------------------------------------------------- reading


def read_log(path: str) -> LogContents:
    """Read every valid record of the log at `path` (none if there is no file).

    Raises OSError only if the file exists and cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return LogContents(0, 0, 0, [], 0)
    if len(data) < HEADER_BYTES:
        return LogContents(0, 0, 0, [], 1 if data else 0)
    magic, version, index, count, _r, run_id, _created = HEADER.unpack_from(data, 0)
    if magic != LOG_MAGIC or version != LOG_VERSION:
        return LogContents(0, 0, 0, [], 1)
    records, skipped = parse_records(data, HEADER_BYTES)
    return LogContents(run_id, index, count, records, skipped)


def parse_records(data: bytes, start: int) -> tuple[list[Record], int]:
    """The valid records of ``data[start:]``, in order, and the number of bad regions skipped."""
    mv = memoryview(data)
    end = len(data)
    out: list[Record] = []
    off = start
    skipped = 0
    in_bad = False
    while off + 16 <= end:
        rec = _record_at(mv, off, end)
        if rec is None:
            if not in_bad:
                skipped += 1
                in_bad = True
            off += 8
            continue
        in_bad = False
        record, size = rec
        out.append(record)
        off += size
    if off < end and not in_bad:
        skipped += 1  # a torn tail shorter than a record header
    return out, skipped


def _record_at(mv: memoryview, start: int, end: int) -> tuple[Record, int] | None:
    """The valid record at `start` and its padded size, or None."""
    crc, length, kind, _res = _RECORD.unpack_from(mv, start)
    if kind not in JR_KINDS or length > end - start - 16:
        return None
    body = start + 16
    size = _pad(16 + length)
    if kind == JR_NEW:
        if length < _NEW.size:
            return None
        n, client, when, retries, prio, flags, _r, lf, lu, lr, ld = _NEW.unpack_from(mv, body)
        if _NEW.size + lf + lu + lr + ld != length or prio > 2:
            return None
        if zlib.crc32(mv[start + 4 : start + 16 + length - ld]) != crc:
            return None
        p = body + _NEW.size
        func = bytes(mv[p : p + lf])
        p += lf
        unique = bytes(mv[p : p + lu])
        p += lu
        reducer = bytes(mv[p : p + lr])
        p += lr
        data = bytes(mv[p : p + ld])
        return NewRecord(n, client, when, retries, prio, flags, func, unique, reducer, data), size
    if kind == JR_DELAY:
        if length < _DELAY.size or zlib.crc32(mv[start + 4 : start + 16 + length]) != crc:
            return None
        n, at, first, last, failures, reason, le = _DELAY.unpack_from(mv, body)
        if _DELAY.size + le != length:
            return None
        error = bytes(mv[body + _DELAY.size : body + length])
        return DelayRecord(n, at, first, last, failures, reason, error), size
    if length != 16 or zlib.crc32(mv[start + 4 : start + 32]) != crc:
        return None
    n, arg = _PAIR.unpack_from(mv, body)
    return (kind, n, arg), size


# ---------------------------------------------------------------------------------- writing


def encode_new(job: Job, client: int, out: list[bytes | memoryview]) -> int:
    """Append the pieces of `job`'s JR_NEW record to `out`; return their total size."""
    return encode_new_record(
        job.n,
        client,
        job.when,
        job.retries,
        job.priority,
        _job_flags(job),
        job.func,
        job.unique,
        job.reducer,
        job.data,
        out,
    )


def encode_new_record(
    n: int,
    client: int,
    when: int,
    retries: int,
    priority: int,
    flags: int,
    func: bytes,
    unique: bytes,
    reducer: bytes,
    data: bytes,
    out: list[bytes | memoryview],
) -> int:
    """Append the pieces of one JR_NEW record to `out` (a big payload as its own piece, not
    copied); return their total size."""
    lf, lu, lr, ld = len(func), len(unique), len(reducer), len(data)
    length = _NEW.size + lf + lu + lr + ld
    if when and not _INT64_MIN <= when <= _INT64_MAX:
        when = 0
    small = (
        _NEW_HEAD.pack(
            length,
            JR_NEW,
            0,
            n,
            client,
            when,
            retries if retries <= _MAX_U32 else _MAX_U32,
            priority,
            flags,
            0,
            lf,
            lu,
            lr,
            ld,
        )
        + func
        + unique
        + reducer
    )
    # The CRC guards the record's structure, not its payload: checksumming a 64 KiB payload
    # cost more than the rest of the job.
    crc = _U32.pack(zlib.crc32(small))
    pad = -(16 + length) & 7
    if ld >= _BIG:
        out.append(crc + small)
        out.append(data)
        if pad:
            out.append(_ZEROS[:pad])
    else:
        out.append(crc + small + data + _ZEROS[:pad])
    return 16 + length + pad


def encode_pair(kind: int, n: int, arg: int) -> bytes:
    """One complete 32-byte record of a kind other than JR_NEW."""
    tail = _PAIR_TAIL.pack(16, kind, 0, n & _MAX_U64, arg & _MAX_U64)
    return _U32.pack(zlib.crc32(tail)) + tail


def encode_delay(
    n: int,
    next_at: float,
    first_failed: float,
    last_failed: float,
    failures: int,
    reason: int,
    error: bytes,
) -> bytes:
    """One complete JR_DELAY record (the error cut to `ERROR_LIMIT` bytes)."""
    error = error[:ERROR_LIMIT]
    length = _DELAY.size + len(error)
    tail = (
        _DELAY_HEAD.pack(
            length,
            JR_DELAY,
            0,
            n & _MAX_U64,
            next_at,
            first_failed,
            last_failed,
            min(failures, _MAX_U32),
            reason & _MAX_U32,
            len(error),
        )
        + error
    )
    return _U32.pack(zlib.crc32(tail)) + tail + _ZEROS[: -(16 + length) & 7]


def encode_job_delay(job: Job, at: float) -> bytes:
    """`job`'s JR_DELAY record (`job.retry` must be set), waiting until `at` (0: not waiting)."""
    st = job.retry
    assert st is not None
    return encode_delay(
        job.n, at, st.first_failed, st.last_failed, st.failures, st.reason, st.error
    )


def encode_header(shard_index: int, shard_count: int, run_id: int) -> bytes:
    """The 64-byte file header."""
    return HEADER.pack(
        LOG_MAGIC, LOG_VERSION, shard_index, shard_count, 0, run_id, int(time.time())
    )


def write_all(fd: int, chunks: list[bytes | memoryview]) -> None:
    """Write every chunk to `fd` in order (writev, as many calls as it takes); raise OSError."""
    i = 0
    n = len(chunks)
    while i < n:
        batch = chunks[i : i + _IOV_MAX]
        want = 0
        for c in batch:
            want += len(c)
        done = os.writev(fd, batch)
        if done == want:
            i += len(batch)
            continue
        if done <= 0:
            raise OSError(errno.EIO, "the log file took no bytes")
        # a short write: skip what went out and go on from the middle of a chunk
        for c in batch:
            size = len(c)
            if done >= size:
                done -= size
                i += 1
            else:
                chunks[i] = memoryview(c)[done:]
                break


class JobLog:
    """One shard's job log (see the module docstring). Use from the shard's loop only.

    Args:
        path: the log file.
        sync: fdatasync after each commit that holds a durable job's record (``--store-sync
            full``: a job survives a power loss), and fsync a snapshot before renaming it.
        log: where warnings go (a one-line message each).
        compact_min: see the module docstring.
    """

    def __init__(
        self,
        path: str,
        *,
        sync: bool = False,
        log: Callable[[str], None] | None = None,
        compact_min: int = COMPACT_MIN,
    ) -> None:
        self.path = path
        self.sync = sync
        self._log = log
        self.compact_min = compact_min
        self._fd = -1
        self._size = 0  # bytes in the file (as we wrote them)
        self._run_id = 0
        self._shard_index = 0
        self._shard_count = 1
        self._source: SnapshotSource | None = None
        self._chunks: list[bytes | memoryview] = []  # records of this turn, not written yet
        self._pending = 0  # their bytes
        self._durable: list[bytes] = []  # handles of durable jobs with a record in _chunks
        self._deferred: dict[int, tuple[int, int]] = {}  # n -> (JR_ASSIGN or JR_DONE, arg)
        self._since_snapshot = 0  # bytes appended since the last snapshot
        self._snapshot_bytes = 0
        self.stale = False
        """True while the file misses some of the state (a write failed); see `commit`."""
        self._next_retry = 0.0
        self.compactions = 0
        """Snapshots written by this object."""
        self.failures = 0
        """Writes that failed."""

    # ------------------------------------------------------------------ lifecycle

    def start(
        self, run_id: int, shard_index: int, shard_count: int, source: SnapshotSource
    ) -> bool:
        """Bind the snapshot source and begin a fresh file with a snapshot of the current jobs.

        Returns False (and stays stale, retrying at later commits) if the file cannot be
        written."""
        self._run_id = run_id
        self._shard_index = shard_index
        self._shard_count = shard_count
        self._source = source
        return self.snapshot()

    def close(self) -> None:
        """Write what waits (deferred records too) and close the file."""
        self._release_deferred()
        self.commit()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @property
    def pending(self) -> bool:
        """True if records wait to be written (the loop should turn again soon)."""
        return bool(self._chunks)

    @property
    def size(self) -> int:
        """Bytes in the file."""
        return self._size

    def _say(self, msg: str) -> None:
        if self._log is not None:
            self._log(msg)

    # ------------------------------------------------------------------ hooks (hot path)

    def bind(self, source: SnapshotSource) -> None:
        """Tell the log where snapshots come from (the scheduler)."""
        self._source = source

    def new(self, job: Job, client: int) -> None:
        """A new job was created (`client`: its foreground submitter, or 0)."""
        self._pending += encode_new(job, client, self._chunks)
        if job.stored:
            self._durable.append(job.handle)

    def _pair(self, kind: int, n: int, arg: int) -> None:
        self._chunks.append(encode_pair(kind, n, arg))
        self._pending += _PAIR_BYTES

    def attach(self, job: Job, conn: int) -> None:
        """Client `conn` attached to `job` (a foreground submission coalesced onto it)."""
        self._pair(JR_ATTACH, job.n, conn)

    def detach(self, job: Job, conn: int) -> None:
        """Client `conn` left `job` (once per attachment)."""
        self._pair(JR_DETACH, job.n, conn)

    def flags(self, job: Job) -> None:
        """`job` became background and/or stored."""
        self._pair(JR_FLAGS, job.n, _job_flags(job))
        if job.stored:
            self._durable.append(job.handle)

    def requeue(self, job: Job) -> None:
        """`job` went back to its queue (its worker left or timed out)."""
        d = self._deferred
        if d and d.get(job.n, (0, 0))[0] == JR_ASSIGN:
            del d[job.n]  # never written: the log still has it queued
        self._pair(JR_REQUEUE, job.n, job.retries)

    def delay(self, job: Job, at: float) -> None:
        """`job` failed an attempt and waits until `at` for its next; records `job.retry`."""
        if job.retry is None:
            return
        d = self._deferred
        if d and d.get(job.n, (0, 0))[0] == JR_ASSIGN:
            del d[job.n]  # never written: the log still has it queued
        record = encode_job_delay(job, at)
        self._chunks.append(record)
        self._pending += len(record)

    def assign(self, job: Job, conn: int) -> None:
        """Worker `conn` took `job`; held back until `end_turn`."""
        self._deferred[job.n] = (JR_ASSIGN, conn)

    def done(self, job: Job) -> None:
        """`job` is gone; held back until `end_turn`."""
        self._deferred[job.n] = (JR_DONE, 0)

    # ------------------------------------------------------------------ the loop's two points

    def commit(self) -> list[bytes]:
        """Write the records collected so far; return the handles of durable jobs whose
        records could not be written (their submitters must not get JOB_CREATED)."""
        if not self._chunks and not self.stale:
            return []
        if self.stale:
            return self._commit_stale()
        chunks, self._chunks = self._chunks, []
        size, self._pending = self._pending, 0
        durable, self._durable = self._durable, []
        try:
            if self._fd < 0:
                raise OSError(errno.EBADF, "the log file is not open")
            write_all(self._fd, chunks)
            if self.sync and durable:
                os.fdatasync(self._fd)
        except OSError as exc:
            self._failed(exc)
            return durable
        self._size += size
        self._since_snapshot += size
        return []

    def _commit_stale(self) -> list[bytes]:
        """A stale log: rewrite it whole if it is time to try; else drop this turn's records
        (the next snapshot holds their state) and refuse its durable jobs."""
        durable, self._durable = self._durable, []
        self._chunks = []
        self._pending = 0
        now = time.monotonic()
        if now >= self._next_retry and self._source is not None and self.snapshot():
            self._say(f"job log {self.path} is written again")
            return []
        return durable

    def _failed(self, exc: OSError) -> None:
        self.failures += 1
        self.stale = True
        self._next_retry = time.monotonic() + RETRY_INTERVAL
        self._deferred.clear()  # the snapshot that ends the staleness holds their state
        if self._fd >= 0:
            try:  # keep the file a clean sequence of records
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
        if self.failures == 1 or self.failures % 1000 == 0:
            self._say(
                f"job log {self.path}: write failed ({exc.strerror or exc}); background jobs "
                "are refused until it can be written again"
            )

    def end_turn(self, flushed: bool) -> None:
        """The turn's messages are all in the rings (`flushed`; False while a ring's overflow
        still holds some): release the held-back ASSIGN and DONE records for the next commit,
        and compact if it is time."""
        if not flushed or self.stale:
            return
        if (
            self._since_snapshot + self._pending > self.compact_min
            and self._since_snapshot + self._pending > self._snapshot_bytes
            and self._source is not None
        ):
            self.snapshot()
            return
        self._release_deferred()

    def _release_deferred(self) -> None:
        d = self._deferred
        if d:
            self._deferred = {}
            chunks = self._chunks
            for n, (kind, arg) in d.items():
                chunks.append(encode_pair(kind, n, arg))
            self._pending += _PAIR_BYTES * len(d)

    # ------------------------------------------------------------------ compaction

    def snapshot(self) -> bool:
        """Write the live jobs to a new file and rename it over the log; True if it worked.

        Call only where every message of the scheduler's state is in the rings (at the start, or
        at `end_turn`): running jobs are written as held and gone jobs not at all, so held-back
        and collected records are all superseded."""
        assert self._source is not None
        next_n, jobs = self._source()
        chunks: list[bytes | memoryview] = [
            encode_header(self._shard_index, self._shard_count, self._run_id),
            encode_pair(JR_COUNTER, next_n, 0),
        ]
        size = HEADER_BYTES + _PAIR_BYTES
        for job in jobs:
            clients = job.clients
            size += encode_new(job, clients[0] if clients else 0, chunks)
            for c in clients[1:]:
                chunks.append(encode_pair(JR_ATTACH, job.n, c))
                size += _PAIR_BYTES
            if job.retry is not None:
                record = encode_job_delay(job, job.retry.next_at if job.state == FUTURE else 0.0)
                chunks.append(record)
                size += len(record)
            if job.state == RUNNING and job.worker is not None:
                chunks.append(encode_pair(JR_ASSIGN, job.n, job.worker.conn))
                size += _PAIR_BYTES
        tmp = self.path + ".new"
        fd = -1
        try:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600)
            write_all(fd, chunks)
            if self.sync:
                os.fsync(fd)
            os.rename(tmp, self.path)
            if self.sync:
                _fsync_dir(os.path.dirname(self.path) or ".")
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._failed(exc)
            return False
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd  # the new file, positioned at its end
        self._size = size
        self._snapshot_bytes = size
        self._since_snapshot = 0
        self._chunks = []
        self._pending = 0
        self._durable = []
        self._deferred = {}
        self.stale = False
        self.compactions += 1
        return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
