"""Byte layouts of everything shardgear keeps in shared memory: rings, boards, control blocks.

Theory of operation
===================

Rings
-----
A ring is a single-producer single-consumer byte queue over one writable buffer (a POSIX
shared-memory mapping in production, a ``bytearray`` in tests). Everything either side needs lives
in the buffer, so a producer or a consumer that is killed and restarted attaches again and carries
on from the published counters. No lock is ever shared between processes.

``head`` and ``tail`` are free-running u64 byte counters: the producer only ever writes ``tail``,
the consumer only ever writes ``head``, and ``tail - head`` is the number of bytes in use, so a full
ring and an empty ring are never confused. A counter maps to the data area as
``counter % capacity``. At a million 64-byte messages a second a u64 counter wraps after about
8000 years, so wrap of the counters themselves is not handled.

Each record is an 8-byte header, ``u32 length | u32 flags`` (read and written as one little-endian
u64: ``length | flags << 32``), then ``length`` payload bytes, padded to a multiple of 8. A record
never straddles the end of the data area: when it does not fit before the end, the producer writes a
*wrap marker* (a record header whose length is ``WRAP_LENGTH``) and the record starts again at data
offset 0; the bytes from the marker to the end count as used until the consumer passes them. Since
every record is 8-aligned and the capacity is a multiple of 8, a marker always fits. A record's
payload is at most ``max_record`` (a quarter of the capacity) bytes, so one put never needs more
than about half of an empty ring, wrap included.

Publish order (producer): write the payload, write the record header, then store ``tail``. The
consumer reads ``tail``, then the records before it, then stores ``head``. CPython has no atomics or
fences: this relies on the platform not reordering stores with stores nor loads with loads (x86-64's
TSO), and on aligned 8-byte loads and stores not tearing (true of ``memoryview.cast('Q')`` item
access on x86-64 and aarch64). On weakly ordered CPUs trust only what was published before the last
doorbell (an eventfd or semaphore: system calls, which synchronise memory).

Doorbell flags (each on its own cache line, so that the hot counters are not disturbed):

* ``producer_waiting``: the producer found the ring full (and queued the rest in its overflow). It
  sets the flag, then re-checks for room before it waits. A consumer that frees space and sees the
  flag clears it and rings the producer's doorbell.
* ``consumer_sleeping``: the consumer is about to block on its doorbell. It sets the flag, re-checks
  that the ring is empty, then blocks; it clears the flag when it wakes. A producer may skip ringing
  while the flag is 0. This is a store-then-load pattern that x86 may reorder, so a consumer must
  always block with a timeout (1-10 ms) as a safety net against a lost wake-up.

Ring header (all fields little-endian u64; the buffer starts here; the data area follows it)

    offset  size  field              written by
    0       8     magic              creator (``RING_MAGIC``, b"SGRING01"), once
    8       8     version            creator (``RING_VERSION``), once
    16      8     capacity           creator: data area bytes, a multiple of 8, >= MIN_CAPACITY
    24      8     max_record         creator: largest payload of a record (capacity // 4, 8-aligned)
    32      32    reserved           zero
    64      8     head               consumer only: free-running count of bytes consumed
    72      56    (padding)          - (head alone on its cache line)
    128     8     tail               producer only: free-running count of bytes published
    136     56    (padding)          - (tail alone on its cache line)
    192     8     producer_waiting   producer sets to 1; consumer clears to 0 when it rings
    200     56    (padding)
    256     8     consumer_sleeping  consumer only (1 = about to block or blocked on its doorbell)
    264     56    (padding)
    320     cap   data area          producer writes records; consumer reads them

Ring record (at data offset ``counter % capacity``, 8-aligned)

    offset  size  field              written by
    0       4     length             producer: payload bytes, or WRAP_LENGTH for a wrap marker
    4       4     flags              producer: opaque to the ring (the channel uses FLAG_MORE/CONT)
    8       len   payload            producer, then zero to 7 bytes of padding

Board
-----
Each shard publishes the number of runnable queued jobs per (board slot, priority) so that fronts
can choose between functions of different shards on GRAB_JOB without a ring hop (see
ARCHITECTURE.md, "the board"). Only the shard writes its board; fronts only read it. The counters
are u32 and are written one at a time through ``memoryview.cast('I')``, so a reader sees each
counter either before or after an update, never torn.

    offset  size  field              written by
    0       8     magic              creator (``BOARD_MAGIC``, b"SGBOARD1"), once
    8       8     version            creator (``BOARD_VERSION``), once
    16      8     slots              creator: routing.BOARD_SLOTS
    24      8     priorities         creator: routing.PRIORITIES
    32      32    reserved           zero
    64      4*N   counters           shard only: u32, N = slots * priorities; the counter of
                                     (slot, priority) is at index ``slot * priorities + priority``
                                     (HIGH = 0, NORMAL = 1, LOW = 2), see ``board_index``

Control blocks
--------------
One ``CONTROL_BYTES`` block per child process slot (a cache line each), in an array owned by the
supervisor. The child writes its own block; the supervisor reads it (and zeroes it before it spawns
a child into the slot). There is no header: the supervisor both creates the segment and indexes it.

    offset  size  field              written by
    0       8     heartbeat          child: a tick it increments at least once per loop iteration
    8       8     pid                child: its pid, written first thing after attaching
    16      8     state              child: one of the CHILD_* constants
    24      8     running_jobs       child: jobs it has in progress (shards); 0 (fronts)
    32      8     run_id             supervisor: its run's random id, written before the spawn (a
                                     shard whose job log has this id recovers a dead predecessor's
                                     jobs; any other id means an earlier run: durable jobs only)
    40      8     settings           child: the settings generation it has applied (see below)
    48      8     progress           child: a counter a shard advances while it starts (its job
                                     log being read and recovered), so the supervisor can tell a
                                     long start from a hung one (EXTEND_TIMEOUT_USEC)
    56      8     reserved           zero

Settings
--------
One segment, created and written only by the supervisor, read by every child: the running
``Config`` as JSON (``Config.to_json_dict``), republished on each reload (SIGHUP). A seqlock keeps a
reader from using a half-written copy: the supervisor makes ``generation`` odd, writes ``length``
and the JSON, then makes it even again; a reader reads ``generation`` (retrying while odd), the
JSON, then ``generation`` again, and retries if it moved. After a publish the supervisor rings
every child's doorbell; a child that finds a new generation applies it and stores the generation
in its control block's ``settings`` field (``shardgear.live_config``).

    offset  size  field              written by
    0       8     magic              creator (``SETTINGS_MAGIC``, b"SGSETNG1"), once
    8       8     version            creator (``SETTINGS_VERSION``), once
    16      8     capacity           creator: bytes of the data area
    24      8     generation         supervisor: even = stable, odd = being written
    32      8     length             supervisor: bytes of JSON in the data area
    40      24    reserved           zero
    64      cap   data               supervisor: the JSON

Stats
-----
One segment, created by the supervisor, for what operators watch (STATUS=, Prometheus metrics):
a header, one counter block per child slot (control-block order), then one function table per
shard. A child writes only its own block and table; the supervisor only reads them (and, before it
spawns a child into a slot, adds the old block to its running totals and zeroes it, so totals never
go back). Counters are u64 plain stores through ``memoryview.cast('Q')`` (aligned, never torn), the
only cost a front or shard pays on its loop: a front counts as things happen (accept, close,
protocol close, pause); a shard stores its gauges and store numbers once a second.

Stats header (little-endian u64)

    offset  size  field              written by
    0       8     magic              creator (``STATS_MAGIC``, b"SGSTATS1"), once
    8       8     version            creator (``STATS_VERSION``), once
    16      8     children           creator: blocks that follow
    24      8     shards             creator: function tables after the blocks
    32      8     table_bytes        creator: bytes of each function table (0: metrics are off)
    40      24    reserved           zero

Counter block of a child (``STATS_BLOCK_BYTES``, u64 each; index = offset / 8)

    index   field                    written by
    0       accepted                 front: connections accepted
    1       closed                   front: connections closed (open = accepted - closed)
    2       protocol_closes          front: connections closed for a protocol error or output cap
    3       pauses                   front: times it stopped reading sockets (rings full)
    4       queued                   shard: jobs queued (epoch jobs included), once a second
    5       running                  shard: jobs running, once a second
    6       store_commits            shard: writes of a turn's records to its job log
    7       store_bytes              shard: bytes those writes added
    8       store_commit_ns          shard: nanoseconds spent in them
    9       store_failures           shard: writes that failed
    10      log_bytes                shard: bytes in its job log file (a gauge)
    11      log_snapshots            shard: snapshots (compactions) of its job log
    12-15   reserved
    16-31   store_commit_buckets     shard: writes by duration, one counter per
                                     ``STORE_COMMIT_BOUNDS`` bucket (not cumulative), +Inf last
    32-47   store_batch_buckets      shard: writes by bytes, per ``STORE_BATCH_BOUNDS``
    48-63   reserved

Function table of a shard (``table_bytes``, only with metrics on), a seqlock like the settings:

    offset  size  field              written by
    0       8     generation         shard: odd while it writes, even when the table is whole
    8       8     length             shard: bytes of JSON that follow
    16      8     published_ns       shard: CLOCK_REALTIME of the publish
    24      40    reserved
    64      len   data               shard: ``stats.FunctionStats.table`` as JSON, at most once
                                     a second

"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final, TypeAlias

from shardgear import routing
from shardgear.shm.errors import ShmError

if TYPE_CHECKING:
    import mmap

#: A writable buffer a ring, a board or control blocks can live in.
Buffer: TypeAlias = "bytearray | memoryview | mmap.mmap"

# --------------------------------------------------------------------------------------------------
# Ring

RING_MAGIC: Final = int.from_bytes(b"SGRING01", "little")
RING_VERSION: Final = 1
RING_HEADER_BYTES: Final = 320
MIN_CAPACITY: Final = 64

#: The static part of the ring header: magic, version, capacity, max_record.
RING_HEADER: Final = struct.Struct("<QQQQ")
#: One record header: length, flags.
RECORD_HEADER: Final = struct.Struct("<II")
RECORD_HEADER_BYTES: Final = 8

# Indexes of the header's u64 fields in ``buf.cast('Q')``.
RING_MAGIC_Q: Final = 0
RING_VERSION_Q: Final = 1
RING_CAPACITY_Q: Final = 2
RING_MAX_RECORD_Q: Final = 3
RING_HEAD_Q: Final = 64 // 8
RING_TAIL_Q: Final = 128 // 8
RING_PRODUCER_WAITING_Q: Final = 192 // 8
RING_CONSUMER_SLEEPING_Q: Final = 256 // 8

#: Record length value that marks "skip to the start of the data area".
WRAP_LENGTH: Final = 0xFFFFFFFF


def ring_bytes(capacity: int) -> int:
    """Return the buffer size that holds a ring with a data area of `capacity` bytes."""
    if capacity < MIN_CAPACITY or capacity % 8:
        raise ValueError(f"ring capacity must be a multiple of 8 >= {MIN_CAPACITY}: {capacity}")
    return RING_HEADER_BYTES + capacity


def ring_capacity(buffer_bytes: int) -> int:
    """Return the data area size of a ring over a buffer of `buffer_bytes` bytes."""
    return (buffer_bytes - RING_HEADER_BYTES) & ~7


def max_record_for(capacity: int) -> int:
    """Return the largest payload of one record in a ring of `capacity` bytes."""
    return (capacity // 4) & ~7


# --------------------------------------------------------------------------------------------------
# Board

BOARD_MAGIC: Final = int.from_bytes(b"SGBOARD1", "little")
BOARD_VERSION: Final = 1
BOARD_HEADER: Final = struct.Struct("<QQQQ")  # magic, version, slots, priorities
BOARD_HEADER_BYTES: Final = 64
BOARD_COUNTERS: Final = routing.BOARD_SLOTS * routing.PRIORITIES
BOARD_BYTES: Final = BOARD_HEADER_BYTES + 4 * BOARD_COUNTERS


def board_index(slot: int, priority: int) -> int:
    """Return the index in `board_view(...)` of the counter of (`slot`, `priority`)."""
    return slot * routing.PRIORITIES + priority


class Board:
    """A shard's board of u32 runnable-job counters in a shared buffer (see the module doc)."""

    __slots__ = ("counters",)

    counters: memoryview
    """The ``BOARD_COUNTERS`` u32 counters, a ``memoryview`` cast to ``'I'``."""

    @staticmethod
    def initialize(buf: Buffer) -> None:
        """Write the header and zero every counter (called once, by the creator)."""
        mv = memoryview(buf).cast("B")
        if len(mv) < BOARD_BYTES:
            raise ShmError(f"board buffer too small: {len(mv)} < {BOARD_BYTES}")
        mv[:BOARD_BYTES] = bytes(BOARD_BYTES)
        BOARD_HEADER.pack_into(
            mv, 0, BOARD_MAGIC, BOARD_VERSION, routing.BOARD_SLOTS, routing.PRIORITIES
        )

    def __init__(self, buf: Buffer) -> None:
        """Attach to an initialized board; raise ShmError if the header does not match."""
        mv = memoryview(buf).cast("B")
        if len(mv) < BOARD_BYTES:
            raise ShmError(f"board buffer too small: {len(mv)} < {BOARD_BYTES}")
        header = BOARD_HEADER.unpack_from(mv, 0)
        expected = (BOARD_MAGIC, BOARD_VERSION, routing.BOARD_SLOTS, routing.PRIORITIES)
        if header != expected:
            raise ShmError(f"not a board of this version: header {header}, expected {expected}")
        self.counters = mv[BOARD_HEADER_BYTES:BOARD_BYTES].cast("I")

    def release(self) -> None:
        """Release the view of the counters (so that the mapping can be closed)."""
        self.counters.release()


def board_view(buf: Buffer) -> memoryview:
    """Return the u32 counters (``memoryview`` cast ``'I'``) of the initialized board in `buf`."""
    return Board(buf).counters


# --------------------------------------------------------------------------------------------------
# Control blocks

CONTROL_BYTES: Final = 64
#: heartbeat, pid, state, running_jobs, run_id, settings, progress
CONTROL: Final = struct.Struct("<QQQQQQQ")

# Indexes in ``control_view(...)``.
CTRL_HEARTBEAT: Final = 0
CTRL_PID: Final = 1
CTRL_STATE: Final = 2
CTRL_RUNNING_JOBS: Final = 3
CTRL_RUN_ID: Final = 4
CTRL_SETTINGS: Final = 5
CTRL_PROGRESS: Final = 6

# Values of the state field.
CHILD_EMPTY: Final = 0  # no child in this slot (or the supervisor has just zeroed it)
CHILD_STARTING: Final = 1  # attached, setting up
CHILD_READY: Final = 2  # serving
CHILD_STOPPING: Final = 3  # draining after a stop request
CHILD_STOPPED: Final = 4  # exited cleanly


def control_bytes(children: int) -> int:
    """Return the buffer size that holds the control blocks of `children` child slots."""
    return CONTROL_BYTES * children


def control_view(buf: Buffer, index: int) -> memoryview:
    """Return the control block of child slot `index` in `buf` as a ``memoryview`` cast ``'Q'``."""
    mv = memoryview(buf).cast("B")
    start = index * CONTROL_BYTES
    if index < 0 or start + CONTROL_BYTES > len(mv):
        raise IndexError(f"control block {index} is outside a buffer of {len(mv)} bytes")
    return mv[start : start + CONTROL_BYTES].cast("Q")


# --------------------------------------------------------------------------------------------------
# Settings

SETTINGS_MAGIC: Final = int.from_bytes(b"SGSETNG1", "little")
SETTINGS_VERSION: Final = 1
SETTINGS_HEADER_BYTES: Final = 64
#: magic, version, capacity, generation, length
SETTINGS_HEADER: Final = struct.Struct("<QQQQQ")
SETTINGS_GENERATION_Q: Final = 3
SETTINGS_LENGTH_Q: Final = 4


def settings_bytes(capacity: int) -> int:
    """Return the segment size that holds settings of up to `capacity` bytes of JSON."""
    return SETTINGS_HEADER_BYTES + capacity


# --------------------------------------------------------------------------------------------------
# Stats

STATS_MAGIC: Final = int.from_bytes(b"SGSTATS1", "little")
STATS_VERSION: Final = 1
STATS_HEADER_BYTES: Final = 64
#: magic, version, children, shards, table_bytes
STATS_HEADER: Final = struct.Struct("<QQQQQ")
STATS_BLOCK_BYTES: Final = 512
STATS_TABLE_HEADER_BYTES: Final = 64

ST_ACCEPTED: Final = 0
ST_CLOSED: Final = 1
ST_PROTOCOL_CLOSES: Final = 2
ST_PAUSES: Final = 3
ST_QUEUED: Final = 4
ST_RUNNING: Final = 5
ST_STORE_COMMITS: Final = 6
ST_STORE_BYTES: Final = 7
ST_STORE_COMMIT_NS: Final = 8
ST_STORE_FAILURES: Final = 9
ST_LOG_BYTES: Final = 10
ST_LOG_SNAPSHOTS: Final = 11
ST_DENIED_SUBMIT: Final = 12  # requests refused by the access rules (front_security.py)
ST_DENIED_WORK: Final = 13
ST_DENIED_STATUS: Final = 14
ST_DENIED_ADMIN: Final = 15
ST_STORE_COMMIT_BUCKETS: Final = 16
ST_STORE_BATCH_BUCKETS: Final = 32
#: Upper bounds (seconds) of the store commit-time buckets; a last bucket holds the rest (+Inf).
STORE_COMMIT_BOUNDS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)
#: Upper bounds (bytes) of the store batch-size buckets; a last bucket holds the rest (+Inf).
STORE_BATCH_BOUNDS: Final = (
    64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
#: Counters that are gauges (a new process starts them afresh; they are not carried over).
ST_GAUGES: Final = frozenset({ST_QUEUED, ST_RUNNING, ST_LOG_BYTES})

#: Function table header: generation, length, published_ns.
STATS_TABLE_HEADER: Final = struct.Struct("<QQQ")


def stats_bytes(children: int, shards: int, table_bytes: int) -> int:
    """Return the size of a stats segment."""
    return STATS_HEADER_BYTES + children * STATS_BLOCK_BYTES + shards * table_bytes


def stats_block_offset(slot: int) -> int:
    """Offset of child slot `slot`'s counter block."""
    return STATS_HEADER_BYTES + slot * STATS_BLOCK_BYTES


def stats_table_offset(children: int, shard: int, table_bytes: int) -> int:
    """Offset of shard `shard`'s function table."""
    return STATS_HEADER_BYTES + children * STATS_BLOCK_BYTES + shard * table_bytes


