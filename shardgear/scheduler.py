"""The pure job core of one shard: functions, queues, uniques, jobs, workers, timers.

Theory of operation
-------------------
A shard owns the functions whose names hash to it (`routing.shard_for`). Fronts forward each request
as ``(conn, ptype, body)``; `Scheduler.handle_packet` applies it and appends its *effects* to
`Scheduler.out` as complete front<->shard messages (`shardgear.messages`: the 16-byte header, then
the body), ready for the ring of the front that owns the connection (byte 15 of a message is that
front's index): OP_SEND or OP_REPLY with one complete Gearman response packet, OP_WAKE for a
sleeping worker that has work, OP_EXCEPTION with ``HANDLE\\0DATA`` for a client (the front picks
WORK_EXCEPTION or WORK_FAIL by the client's option), OP_CLOSE for a protocol error gearmand closes
the connection for. Building the messages here, rather than effect tuples for the shard to
translate, saves an object and a copy per message. The shard loop swaps `out` for a new list after
each batch, so effects are only ever appended through `_send`, `_close` and `_emit`.

No sockets, no clock (time comes in as ``now``, seconds), no randomness, no logging except through
the optional ``log`` callable. Nothing a peer sends raises: a malformed body gets an ERROR packet,
missing fields read as empty, or the packet is ignored.

House rules
-----------
1. A job is in exactly one place: a function deque (QUEUED), the epoch heap (FUTURE), a worker's
   ``jobs`` (RUNNING), a worker's ``lease`` (LEASED: its next job, held by its front; see
   `shardgear.lease`), or nowhere (GONE). Deques may hold tombstones (GONE jobs removed without a
   pop); ``Function.ready`` and the board count live entries only, and a deque is compacted when
   tombstones outnumber live jobs.
2. ``board[slot * 3 + prio]`` always equals the runnable QUEUED jobs of the functions in that slot:
   every change of ``Function.ready`` updates it in the same place (`_enqueue`, `_take`,
   `_unqueue`).
3. A worker sits in ``Function.sleepers`` of each of its functions exactly while it is sleeping and
   has not been woken since its last PRE_SLEEP.
4. Timer heaps are lazy: stale entries are skipped when they surface.

gearmand 2.0 semantics, and where shardgear deliberately differs (spec: gearman-protocol.md)
--------------------------------------------------------------------------------------------
* A 64-byte unique coalesces on all 64 bytes (gearmand keeps 63, so it never coalesces, §2.2 b).
* SUBMIT_REDUCE_JOB* checks the *unique* length (gearmand checks the reducer, §6).
* A background submission coalesced onto a foreground job marks it background: the job still runs
  when every foreground client has left (gearmand drops it, gotcha §2.2 a), and it is stored.
* A queued job whose foreground clients have all left (and is not background) is removed at once
  and never counted in ``status`` (gearmand leaves it queued and counted until a GRAB reaches it).
  A running one runs on, its result discarded; if it is requeued it is dropped silently.
* A cancelled job leaves the unique index at once, so a new submission makes a new job; if it is
  still running its worker carries on and its WORK_* packets are accepted (and go to nobody).
* ``drop function`` with queued jobs fails them (WORK_FAIL to their clients, removed from the
  store) instead of leaking them (§2.11).
* STATUS_RES_UNIQUE's CLIENT_COUNT is the real number of attached clients (gearmand: always 0).
* CAN_DO_TIMEOUT: the per-connection timer follows the latest assignment; an assignment of a
  function without a timeout clears it, and so does the end (or requeue) of the timed job, so no
  stale timer ever fires (#301). PRE_SLEEP deletes the timer whether or not it answers with a
  wake-up.
* An epoch job joins the tail of its queue when it becomes due (gearmand leaves it at its submission
  position and skips it until then).
* ``job_retries`` N > 0 means N attempts in total; 0 means unlimited (gearmand <= 2.0).
* CANT_DO and RESET_ABILITIES stop new assignments only: a job the worker holds stays its job, so
  its WORK_* packets are accepted and reach the clients; it is requeued only when the worker
  disconnects or its CAN_DO_TIMEOUT expires (gearmand requeues it at once, and then answers the
  worker's WORK_COMPLETE with JOB_NOT_FOUND and runs the job again).
* The board is zeroed when the scheduler is created; `shardgear.recovery.recover` refills it from a
  dead shard's journal (ARCHITECTURE.md, "Shard crash").
* A background job the job log could not write is refused by the shard with ERROR QUEUE_ERROR
  "Persistent store failed: could not save the job" (gearmand's text is the bare error name).
* As in gearmand: a connection that joins the same job twice in the foreground is attached twice
  and gets every WORK_* packet twice; GET_STATUS_UNIQUE answered here covers this shard only (with
  several shards the front gathers `status_unique` from each).

Neighbours: the record classes live in `shardgear.jobs`; admin commands and the status readers in
`shardgear.shard_admin`; the lease of a worker's next job in `shardgear.lease`; the timer heaps in
`shardgear.timers`; rebuilding after a crash in `shardgear.recovery`; the invariants, checked in
full for tests, in `shardgear.invariants`. Those modules change state only through this class's
lifecycle methods (`_insert`, `_enqueue`, `_requeue`, `_drop`, `_forget`...), which keep the house
rules.
"""

from __future__ import annotations

import heapq
import random
import struct
from collections.abc import Callable, Iterable, MutableSequence
from itertools import islice
from typing import Final, cast

from . import abilities, attempts, lease, retries, routing, shard_admin, timers
from .jobs import (
    FUTURE,
    GONE,
    LEASED,
    NO_CLIENTS,
    OUT_LOST,
    QUEUED,
    RUNNING,
    UK_NONE,
    UK_PAYLOAD,
    UK_UNIQUE,
    DeadLetters,
    Function,
    Job,
    JobLogHooks,
    JobMetrics,
    Worker,
    add_client,
    best_ready,
)
from .lease import assign_parts
from .limits import ERR_JOB_TOO_LARGE, ERR_QUEUED_BYTES, FunctionLimits
from .messages import (
    GRAB_LEASED,
    HEADER,
    LEASABLE,
    LEASE_RETURN,
    OP_CLOSE,
    OP_EXCEPTION,
    OP_REPLY,
    OP_SEND,
    OP_WAKE,
    REVOKE_ABILITY,
    front_of,
)
from .proto.numbers import atou32, strtoll
from .proto.packets import RES_MAGIC, PacketType, error_packet, response
from .proto.parser import LARGE_BODY
from .shm.channel import Piece, head_bytes

__all__ = ["ERR_STORE", "Job", "JobLogHooks", "Scheduler"]

# Gearman packet types as plain ints (an IntEnum member lookup costs ~74 ns on the hot path).
CAN_DO: Final = int(PacketType.CAN_DO)
CANT_DO: Final = int(PacketType.CANT_DO)
RESET_ABILITIES: Final = int(PacketType.RESET_ABILITIES)
PRE_SLEEP: Final = int(PacketType.PRE_SLEEP)
SUBMIT_JOB: Final = int(PacketType.SUBMIT_JOB)
JOB_CREATED: Final = int(PacketType.JOB_CREATED)
GRAB_JOB: Final = int(PacketType.GRAB_JOB)
JOB_ASSIGN: Final = int(PacketType.JOB_ASSIGN)
NO_JOB: Final = int(PacketType.NO_JOB)
WORK_STATUS: Final = int(PacketType.WORK_STATUS)
WORK_COMPLETE: Final = int(PacketType.WORK_COMPLETE)
WORK_FAIL: Final = int(PacketType.WORK_FAIL)
GET_STATUS: Final = int(PacketType.GET_STATUS)
ECHO_REQ: Final = int(PacketType.ECHO_REQ)
ECHO_RES: Final = int(PacketType.ECHO_RES)
SUBMIT_JOB_BG: Final = int(PacketType.SUBMIT_JOB_BG)
ERROR: Final = int(PacketType.ERROR)
STATUS_RES: Final = int(PacketType.STATUS_RES)
SUBMIT_JOB_HIGH: Final = int(PacketType.SUBMIT_JOB_HIGH)
SET_CLIENT_ID: Final = int(PacketType.SET_CLIENT_ID)
CAN_DO_TIMEOUT: Final = int(PacketType.CAN_DO_TIMEOUT)
WORK_EXCEPTION: Final = int(PacketType.WORK_EXCEPTION)
OPTION_REQ: Final = int(PacketType.OPTION_REQ)
WORK_DATA: Final = int(PacketType.WORK_DATA)
WORK_WARNING: Final = int(PacketType.WORK_WARNING)
GRAB_JOB_UNIQ: Final = int(PacketType.GRAB_JOB_UNIQ)
SUBMIT_JOB_HIGH_BG: Final = int(PacketType.SUBMIT_JOB_HIGH_BG)
SUBMIT_JOB_LOW: Final = int(PacketType.SUBMIT_JOB_LOW)
SUBMIT_JOB_LOW_BG: Final = int(PacketType.SUBMIT_JOB_LOW_BG)
SUBMIT_JOB_EPOCH: Final = int(PacketType.SUBMIT_JOB_EPOCH)
SUBMIT_REDUCE_JOB: Final = int(PacketType.SUBMIT_REDUCE_JOB)
SUBMIT_REDUCE_JOB_BACKGROUND: Final = int(PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)
GRAB_JOB_ALL: Final = int(PacketType.GRAB_JOB_ALL)
GET_STATUS_UNIQUE: Final = int(PacketType.GET_STATUS_UNIQUE)
STATUS_RES_UNIQUE: Final = int(PacketType.STATUS_RES_UNIQUE)
MAX_PACKET_TYPE: Final = max(PacketType)

HIGH: Final = 0
NORMAL: Final = 1
LOW: Final = 2

MAX_UNIQUE: Final = 64  # longer uniques are refused
HANDLE_SIZE: Final = 64  # handles are shorter than this
_COMPACT_MIN: Final = 256  # compact a function's deques past this many tombstones
_NO_CONN: Final = 0  # the "connection" of the server's own submissions (no front has conn 0)

_II = struct.Struct("!II")
_header = HEADER.pack
_RES: Final = RES_MAGIC
_pack = _II.pack
_res = response
_error = error_packet


_NO_JOB: Final = _res(NO_JOB)
_JOB_CREATED_TYPE: Final = struct.pack("!I", JOB_CREATED)
_ERR_UNIQUE: Final = _error(b"ARGUMENT_TOO_LARGE", b"Unique value too large")
_ERR_QUEUE_FULL: Final = _error(b"QUEUE_ERROR", b"Job queue is full")
ERR_STORE: Final = _error(b"QUEUE_ERROR", b"Persistent store failed: could not save the job")
_ERR_NOT_EXPECTED: Final = _error(b"INVALID_COMMAND", b"Command not expected")
_ERR_NO_JOB_DATA: Final = _error(b"JOB_NOT_FOUND", b"Job does not exist on server")
_ERR_NO_JOB_RESULT: Final = _error(b"JOB_NOT_FOUND", b"Job given in work result not found")
_ERR_NO_JOB_EXC: Final = _error(
    b"JOB_NOT_FOUND", b"An exception was received for a job that does not exist"
)
_ERR_HANDLE_SIZE: Final = _error(
    b"ARGUMENT_TOO_LARGE",
    b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
)

# GRAB_JOB* as plain or LEASABLE OP_PACKET args (lease.py)
_GRABS: Final = frozenset(
    t | flag for t in (GRAB_JOB, GRAB_JOB_UNIQ, GRAB_JOB_ALL) for flag in (0, LEASABLE)
)

# submit packet type -> (priority, background)
_SUBMITS: Final[dict[int, tuple[int, bool]]] = {
    SUBMIT_JOB: (NORMAL, False),
    SUBMIT_JOB_BG: (NORMAL, True),
    SUBMIT_JOB_HIGH: (HIGH, False),
    SUBMIT_JOB_HIGH_BG: (HIGH, True),
    SUBMIT_JOB_LOW: (LOW, False),
    SUBMIT_JOB_LOW_BG: (LOW, True),
}


class Scheduler:
    """The job core of one shard. See the module docstring."""

    def __init__(
        self,
        *,
        shard_index: int,
        shard_count: int,
        handle_prefix: bytes,
        job_retries: int = 0,
        worker_wakeup: int = 0,
        board: MutableSequence[int] | memoryview | None = None,
        durable: bool = False,
        log: Callable[[str], None] | None = None,
        on_new_function: Callable[[Function], None] | None = None,
        metrics: JobMetrics | None = None,
        dead_letters: DeadLetters | None = None,
        rng: random.Random | None = None,
        limits: FunctionLimits | None = None,
    ) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError("shard_index must be in [0, shard_count)")
        prefix = handle_prefix + b":"
        # the largest handle number must still give a handle shorter than HANDLE_SIZE
        if len(prefix) + 20 >= HANDLE_SIZE:
            raise ValueError("handle_prefix too long: handles must stay under 64 bytes")
        self.out: list[bytes] = []  # this batch's messages to fronts (see the module docstring)
        # The rest of a large packet in `out`, by the id() of its message there: the message
        # holds the headers, the tail the payload, sent after it without being joined to it
        # (Shard.flush; shm.channel.Sender.send_parts). Emptied by whoever empties `out`.
        self.tails: dict[int, tuple[bytes, list[Piece]]] = {}
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.job_retries = job_retries
        self.worker_wakeup = worker_wakeup
        self._prefix = prefix
        self._next_n = routing.handle_number(0, shard_index, shard_count)
        self._board: MutableSequence[int] | None = cast("MutableSequence[int] | None", board)
        if self._board is not None:
            for i in range(len(self._board)):
                self._board[i] = 0
        self._durable = durable  # background jobs are stored (recovered by the next run)
        self._joblog: JobLogHooks | None = None  # set by recovery.start_log
        self._dead = dead_letters  # where exhausted background jobs go (retries.py)
        self._rng = rng if rng is not None else random.Random(0)  # retry jitter
        self._recovered: dict[int, Worker] = {}  # recovered workers not re-registered yet
        self._log = log
        # hook: gives a function its configured settings (function_settings.py: maxqueue, the
        # retry policy) when created
        self._on_new_function = on_new_function
        self._metrics = metrics  # hook: per-function counters (stats.py), None = metrics off
        self._limits = limits or FunctionLimits()
        self._max_bytes = self._limits.max_queued_bytes
        self._max_job_bytes = self._limits.max_job_bytes
        self._functions: dict[bytes, Function] = {}
        self._jobs: dict[bytes, Job] = {}
        self._workers: dict[int, Worker] = {}
        self._clients: dict[int, dict[Job, None]] = {}  # client conn -> jobs it is attached to
        self._epochs: list[tuple[float, int, Job]] = []  # (when, seq, job) of FUTURE jobs
        self._timers: list[tuple[float, int, Worker]] = []  # (at, seq, worker): CAN_DO_TIMEOUT
        self._seq = 0
        self._running = 0
        self._leased = [0, 0, 0]  # LEASED jobs per priority (lease.py)
        self._nleased = 0  # their sum
        self.leasing = True  # offer leases (off once a graceful stop began)
        self._reply_conn = -1  # the connection whose request's reply is still to come
        self._reply_seq = 0  # that request's sequence number (see handle_packet)

    # ------------------------------------------------------------------ entry points

    def handle_packet(self, conn: int, ptype: int, body: bytes, now: float, seq: int = -1) -> None:
        """Apply one request from connection `conn`. Never raises for any input.

        `seq` (0 or more) is the sequence number of a request that has a reply (SUBMIT_*,
        GRAB_JOB*, GET_STATUS*): the first packet this call sends to `conn` is that reply, and goes
        out as an OP_REPLY message carrying `seq`, so that the front keeps replies in request
        order. Timers are not fired here: the caller runs `tick(now)` once `next_deadline()` is
        due. Returns False if a reply was due and none was produced (a bug to log).
        """
        if seq >= 0:
            self._reply_conn = conn
            self._reply_seq = seq
        # An if-chain, most frequent first: compiled, these are direct calls (a dict of bound
        # methods went through Python's calling convention, boxing every argument).
        if ptype in (WORK_COMPLETE, WORK_EXCEPTION):
            self._work_end(conn, ptype, body, now)
        elif ptype in _GRABS:
            self._grab(conn, ptype, body, now)
        elif ptype == GRAB_LEASED:
            lease.grabbed(self, conn, body, now)
        elif ptype in _SUBMITS:
            self._submit(conn, ptype, body, now)
        elif ptype == PRE_SLEEP:
            abilities.pre_sleep(self, conn, ptype, body, now)
        elif ptype in (WORK_DATA, WORK_WARNING):
            self._work_data(conn, ptype, body, now)
        elif ptype == WORK_STATUS:
            self._work_status(conn, ptype, body, now)
        elif ptype == WORK_FAIL:
            self._work_fail(conn, ptype, body, now)
        elif ptype in (CAN_DO, CAN_DO_TIMEOUT):
            abilities.can_do(self, conn, ptype, body, now)
        elif ptype == CANT_DO:
            abilities.cant_do(self, conn, ptype, body, now)
        elif ptype == RESET_ABILITIES:
            abilities.reset_abilities(self, conn, ptype, body, now)
        elif ptype == SUBMIT_JOB_EPOCH:
            self._submit_epoch(conn, ptype, body, now)
        elif ptype in (SUBMIT_REDUCE_JOB, SUBMIT_REDUCE_JOB_BACKGROUND):
            self._submit_reduce(conn, ptype, body, now)
        elif ptype == GET_STATUS:
            self._get_status(conn, ptype, body, now)
        elif ptype == GET_STATUS_UNIQUE:
            self._get_status_unique(conn, ptype, body, now)
        elif ptype == ECHO_REQ:
            self._echo(conn, ptype, body, now)
        elif ptype in (SET_CLIENT_ID, OPTION_REQ):
            self._front_only(conn, ptype, body, now)
        elif ptype == REVOKE_ABILITY:
            abilities.revoke_ability(self, conn, ptype, body, now)
        elif ptype == LEASE_RETURN:
            lease.returned(self, conn, body)
        elif 0 < ptype <= MAX_PACKET_TYPE:
            self._send(conn, _ERR_NOT_EXPECTED)
        else:
            self._close(conn)
        if self._reply_conn >= 0:
            self._reply_conn = -1
            if seq >= 0 and self._log is not None:
                self._log(f"no reply produced for packet type {ptype} of connection {conn:#x}")

    # ------------------------------------------------------------------ effects

    def _send(self, conn: int, packet: bytes) -> None:
        """Send one complete Gearman packet to `conn` (as the reply, if it is the one due)."""
        if conn == self._reply_conn:
            self._reply_conn = -1
            self.out.append(_header(OP_REPLY, 0, self._reply_seq, conn) + packet)
        else:
            self.out.append(_header(OP_SEND, 0, 0, conn) + packet)

    def _send_tail(self, conn: int, packet: bytes, tail: list[Piece]) -> None:
        """`_send` a packet whose last bytes are `tail` (a large payload), without joining."""
        self._send(conn, packet)
        m = self.out[-1]
        self.tails[id(m)] = (m, tail)

    def _close(self, conn: int) -> None:
        """Have the front close `conn` (a protocol error gearmand closes for)."""
        self.out.append(_header(OP_CLOSE, 0, 0, conn))

    def _emit(self, op: int, conn: int, body: bytes) -> None:
        """Any other effect: OP_WAKE (empty body), OP_EXCEPTION (``HANDLE\\0DATA``)."""
        self.out.append(_header(op, 0, 0, conn) + body)

    def disconnect(self, conn: int, now: float) -> None:
        """Connection `conn` is gone: requeue what it held, drop its registrations, detach it
        from the jobs it submitted."""
        w = self._workers.pop(conn, None)
        if w is not None:
            if w.recovered:
                w.recovered = False
                del self._recovered[conn]
            w.alive = False
            w.timer_at = None
            w.timer_job = None
            for f in w.funcs:
                del f.workers[conn]
                f.sleepers.pop(w, None)
            w.funcs.clear()
            if w.lease is not None:
                lease.release(self, w)  # at the head of its queue: never ran, not a retry
            for job in list(w.jobs):
                self._requeue(job, now)
        jobs = self._clients.pop(conn, None)
        if jobs is not None:
            jr = self._joblog
            for job in jobs:
                job.clients = [c for c in job.clients if c != conn]
                if jr is not None:
                    jr.detach(job, conn)
                if not job.clients and not job.background and job.state != RUNNING:
                    self._abandon(job)

    def drop_front(self, front: int, now: float) -> None:
        """Every connection of front `front` is gone (the front crashed or restarted)."""
        conns = {c for c in self._workers if front_of(c) == front}
        conns.update(c for c in self._clients if front_of(c) == front)
        for c in sorted(conns):
            self.disconnect(c, now)

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has something to do, or None (`shardgear.timers`)."""
        return timers.next_deadline(self)

    def tick(self, now: float) -> None:
        """Fire every epoch job and CAN_DO_TIMEOUT due at `now` (`shardgear.timers`)."""
        timers.tick(self, now)

    # ------------------------------------------------------------------ read access

    def running_count(self) -> int:
        """Jobs held by workers now."""
        return self._running

    def leased_count(self) -> int:
        """Jobs leased to workers' fronts now (`shardgear.lease`): they may start any moment."""
        return self._nleased

    def job_count(self) -> int:
        """Jobs known (queued, future or running)."""
        return len(self._jobs)

    def jobs(self) -> Iterable[Job]:
        """Every job known, in no particular order (read-only)."""
        return self._jobs.values()

    def job(self, handle: bytes) -> Job | None:
        """The job with `handle`, or None."""
        return self._jobs.get(handle)

    def functions(self) -> Iterable[Function]:
        """Every function known, in creation order (read-only)."""
        return self._functions.values()

    def function(self, name: bytes) -> Function | None:
        """The function named `name`, or None."""
        return self._functions.get(name)

    # ------------------------------------------------------------------ submissions

    def _submit(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        parts = body.split(b"\0", 2)
        while len(parts) < 3:
            parts.append(b"")
        prio, bg = _SUBMITS[ptype]
        self._add(conn, parts[0], parts[1], parts[2], prio, bg, 0, b"", now)

    def _submit_epoch(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        parts = body.split(b"\0", 3)
        while len(parts) < 4:
            parts.append(b"")
        when = strtoll(parts[2])
        if when is None:
            self._close(conn)
            return
        self._add(conn, parts[0], parts[1], parts[3], NORMAL, True, when, b"", now)

    def _submit_reduce(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        parts = body.split(b"\0", 4)
        while len(parts) < 5:
            parts.append(b"")
        bg = ptype == SUBMIT_REDUCE_JOB_BACKGROUND
        self._add(conn, parts[0], parts[1], parts[4], NORMAL, bg, 0, parts[2], now)

    def _add(
        self,
        conn: int,
        name: bytes,
        unique: bytes,
        data: bytes,
        prio: int,
        bg: bool,
        when: int,
        reducer: bytes,
        now: float,
    ) -> None:
        if len(unique) > MAX_UNIQUE:
            self._send(conn, _ERR_UNIQUE)
            return
        f = self._functions.get(name)
        if f is None:
            refused = self.refuse_function(name)
            if refused is not None:
                self._send(conn, refused)
                return
            f = self._function(name)
        job = self._lookup(f, unique, data) if unique else None
        if job is not None:  # coalesce
            if bg:
                if not job.background:
                    job.background = True
                    job.stored = self._durable
                    if self._joblog is not None:
                        self._joblog.flags(job)
            else:
                add_client(job, conn)
                self._attach(conn, job)
                if self._joblog is not None:
                    self._joblog.attach(job, conn)
            handle = job.handle
            self._send(conn, _RES + _pack(JOB_CREATED, len(handle)) + handle)
            return
        limit = f.maxq[prio]
        if limit > 0 and f.total >= limit:
            self._send(conn, _ERR_QUEUE_FULL)
            return
        if self._max_bytes and f.qbytes and f.qbytes + len(data) + len(reducer) > self._max_bytes:
            self._send(conn, ERR_QUEUED_BYTES)
            return
        if len(data) + len(name) + len(unique) + len(reducer) > self._max_job_bytes:
            self._send(conn, ERR_JOB_TOO_LARGE)
            return
        n = self._next_n
        handle = self._prefix + b"%d" % n
        job = Job(handle, f, unique, data, prio, when, reducer, bg)
        job.n = n
        if bg:
            job.stored = self._durable
        else:
            add_client(job, conn)
            self._attach(conn, job)
        self._next_n = n + self.shard_count
        self._send(conn, _RES + _pack(JOB_CREATED, len(handle)) + handle)
        self._insert(job, when, now)
        if self._joblog is not None:
            self._joblog.new(job, 0 if bg else conn)
        if self._metrics is not None:
            self._metrics.submitted(job, now)

    def _attach(self, conn: int, job: Job) -> None:
        d = self._clients.get(conn)
        if d is None:
            self._clients[conn] = {job: None}
        else:
            d[job] = None

    def _lookup(self, f: Function, unique: bytes, data: bytes) -> Job | None:
        if unique == b"-":
            return f.payloads.get(data) if data else None
        return f.uniques.get(unique) if unique else None

    def _insert(self, job: Job, when: float, now: float) -> None:
        """Index a new job and queue it (or hold it until `when`)."""
        self._jobs[job.handle] = job
        job.fn.qbytes += len(job.data) + len(job.reducer)
        unique = job.unique
        if unique == b"-":
            if job.data:
                job.fn.payloads[job.data] = job
                job.ukind = UK_PAYLOAD
        elif unique:
            job.fn.uniques[unique] = job
            job.ukind = UK_UNIQUE
        if when > now:
            job.state = FUTURE
            job.fn.future[job.priority] += 1
            self._seq += 1
            heapq.heappush(self._epochs, (float(when), self._seq, job))
        else:
            self._enqueue(job)

    def submit_background(
        self, func: bytes, unique: bytes, data: bytes, priority: int, now: float
    ) -> bytes | None:
        """Submit a background job on the server's own behalf (a cron run, a dead-set replay), as
        SUBMIT_JOB_BG would; return its handle (a coalesced job's, if the unique matches one), or
        None if it was refused (maxqueue, a unique longer than 64 bytes). Like any background job
        it may still be refused by the job log's commit (the shard cancels it then)."""
        out = self.out
        start = len(out)
        self._add(_NO_CONN, func, unique, data, priority, True, 0, b"", now)
        for k in range(start, len(out)):
            m = out[k]
            if HEADER.unpack_from(m)[3] == _NO_CONN:  # its reply (header, then the packet)
                del out[k]
                return m[28:] if m[20:24] == _JOB_CREATED_TYPE else None
        return None

    def _new_handle(self) -> bytes:
        n = self._next_n
        self._next_n = n + self.shard_count
        return self._prefix + b"%d" % n

    def refuse_function(self, name: bytes) -> bytes | None:
        """`FunctionLimits.refuse_function` for a new function `name`; a shard at its share of
        ``--max-functions`` first forgets the functions with no job and no worker (as ``drop
        function`` would), so that names a client made up once do not fill it for good."""
        limits = self._limits
        if limits.max_functions and len(self._functions) >= limits.max_functions:
            shard_admin.forget_idle_functions(self)
        return limits.refuse_function(name, len(self._functions))

    def _function(self, name: bytes) -> Function:
        f = self._functions.get(name)
        if f is None:
            f = Function(name, routing.board_slot(name) * routing.PRIORITIES)
            self._functions[name] = f
            if self._on_new_function is not None:
                self._on_new_function(f)
        return f

    # ------------------------------------------------------------------ queues

    def _enqueue(self, job: Job, head: bool = False) -> None:
        """Put a job in its queue, at the tail (at the `head` for a lease given back, which was
        taken from there: FIFO order holds), and wake sleepers."""
        f = job.fn
        p = job.priority
        job.state = QUEUED
        if head:
            f.queues[p].appendleft(job)
        else:
            f.queues[p].append(job)
        f.ready[p] += 1
        f.nready += 1
        b = self._board
        if b is not None:
            b[f.bidx + p] += 1
        if f.sleepers:
            self._wake(f)
        if self._nleased and p < 2 and (self._leased[2] or (p == 0 and self._leased[1])):
            lease.outranked(self, f, p)  # a lease of a worse job must not run before this one

    def _unqueue(self, job: Job) -> None:
        """Take a QUEUED job out of its queue without a pop (it becomes a tombstone)."""
        f = job.fn
        p = job.priority
        job.state = GONE
        f.ready[p] -= 1
        f.nready -= 1
        b = self._board
        if b is not None:
            b[f.bidx + p] -= 1
        f.dead += 1
        if f.dead > _COMPACT_MIN and f.dead > f.nready:
            for q in f.queues:
                live = [j for j in q if j.state == QUEUED]
                q.clear()
                q.extend(live)
            f.dead = 0

    def _take(self, f: Function, p: int) -> Job:
        """Pop the head job of `f` at priority `p` (which has one)."""
        q = f.queues[p]
        job = q.popleft()
        while job.state != QUEUED:
            f.dead -= 1
            job = q.popleft()
        f.ready[p] -= 1
        f.nready -= 1
        b = self._board
        if b is not None:
            b[f.bidx + p] -= 1
        return job

    def _wake(self, f: Function) -> None:
        """Wake sleepers of `f` that have had no wake-up this sleep (at most worker_wakeup)."""
        sl = f.sleepers
        k = self.worker_wakeup
        woken = list(sl) if k <= 0 or k >= len(sl) else list(islice(sl, k))
        for w in woken:
            w.woken = True
            for g in w.funcs:
                g.sleepers.pop(w, None)
            self._emit(OP_WAKE, w.conn, b"")

    # ------------------------------------------------------------------ workers

    def _maybe_forget_worker(self, w: Worker) -> None:
        if not w.funcs and not w.jobs and w.lease is None:
            if w.recovered:
                w.recovered = False
                del self._recovered[w.conn]
            w.alive = False
            w.timer_at = None
            w.timer_job = None
            del self._workers[w.conn]

    def _grab(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        w = self._workers.get(conn)
        leasable = ptype > LEASABLE
        if leasable:
            ptype -= LEASABLE
        if w is None:
            self._send(conn, _NO_JOB)
            return
        funcs = w.funcs
        if w.sleeping:
            w.sleeping = False
            if not w.woken:
                for g in funcs:
                    g.sleepers.pop(w, None)
            w.woken = False
        if w.lease is not None and lease.answer(self, w, ptype, leasable, now):
            return  # it crossed the worker's lease, which its front dropped (lease.py)
        chosen, best = best_ready(funcs)
        if chosen is None:
            self._send(conn, _NO_JOB)
            if self._nleased:
                lease.starved(self, w)
            return
        if body and body != chosen.name:
            pf = self._functions.get(body)
            if pf is not None and pf.ready[best] and pf in funcs:
                chosen = pf
        timeout = funcs[chosen]
        if len(funcs) > 1:
            del funcs[chosen]
            funcs[chosen] = timeout
        job = self._take(chosen, best)
        self._assign(w, job, timeout, now)
        self.send_assign(conn, ptype, job)
        if leasable and (chosen.nready or len(funcs) > 1):
            lease.offer(self, w, ptype)

    def send_assign(self, conn: int, ptype: int, job: Job) -> None:
        """Send `conn` the JOB_ASSIGN* of `job` for a GRAB of type `ptype`; a large payload goes
        as the message's tail (`_send_tail`), never copied into one packet."""
        parts = assign_parts(ptype, job)
        if len(job.data) >= LARGE_BODY:  # JOB_ASSIGN, _UNIQ and _ALL alike
            self._send_tail(conn, b"".join(parts[:-1]), [job.data])
        else:
            self._send(conn, b"".join(parts))

    def _assign(self, w: Worker, job: Job, timeout: int, now: float) -> None:
        """`w` now runs `job` (out of any queue): log it, count it, start its CAN_DO_TIMEOUT
        (`timeout` ms, 0 = none)."""
        job.state = RUNNING
        job.worker = w
        w.jobs[job] = None
        job.fn.running += 1
        self._running += 1
        if self._joblog is not None:
            self._joblog.assign(job, w.conn)
        if self._metrics is not None:
            self._metrics.assigned(job, now)
        if timeout > 0:
            at = now + (timeout if timeout > 1000 else 1000) / 1000.0
            w.timer_at = at
            w.timer_job = job
            if w.timer_seq == 0 or at < w.timer_entry_at:
                self._push_timer(w, at)
        elif w.timer_at is not None:
            w.timer_at = None
            w.timer_job = None

    def _push_timer(self, w: Worker, at: float) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, w))
        w.timer_seq = self._seq
        w.timer_entry_at = at

    # ------------------------------------------------------------------ work results

    def _held(self, conn: int, handle: bytes) -> Job | None:
        job = self._jobs.get(handle)
        if job is None or job.worker is None or job.worker.conn != conn or job.state != RUNNING:
            return None  # a LEASED job has its worker too, but the worker has not got it yet
        return job

    def _relay(self, job: Job, packet: bytes) -> None:
        for c in job.clients:
            self._send(c, packet)

    def _work_data(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        i = body.find(b"\0")
        job = self._held(conn, body if i < 0 else body[:i])
        if job is None:
            self._send(conn, _ERR_NO_JOB_DATA)
        elif job.clients:
            if job.retry is not None or job.fn.retry is not None:  # retries.hold may keep it
                attempts.relay(self, job, retries.hold(job, _RES + _pack(ptype, len(body)) + body))
            else:
                self._relay(job, _RES + _pack(ptype, len(body)) + body)

    def _work_status(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        parts = body.split(b"\0", 2)
        while len(parts) < 3:
            parts.append(b"")
        if len(parts[2]) > 11:
            self._close(conn)
            return
        job = self._held(conn, parts[0])
        if job is None:
            self._send(conn, _ERR_NO_JOB_RESULT)
            return
        job.num = atou32(parts[1])
        job.den = atou32(parts[2])
        if job.clients:
            if job.retry is not None or job.fn.retry is not None:  # retries.hold may keep it
                attempts.relay(self, job, retries.hold(job, _RES + _pack(ptype, len(body)) + body))
            else:
                self._relay(job, _RES + _pack(ptype, len(body)) + body)

    def _work_end(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        """WORK_COMPLETE and WORK_EXCEPTION: relay, then finish the job."""
        i = body.find(b"\0")
        handle = body if i < 0 else body[:i]
        job = self._held(conn, handle)
        if job is None:
            err = _ERR_NO_JOB_RESULT if ptype == WORK_COMPLETE else _ERR_NO_JOB_EXC
            self._send(conn, err)
            return
        if (job.retry is not None or job.fn.retry is not None) and attempts.ended(
            self, job, ptype, body[i + 1 :] if i >= 0 else b"", now
        ):
            return  # it waits for its next attempt
        if job.clients:
            if ptype == WORK_COMPLETE:
                self._relay(job, _RES + _pack(ptype, len(body)) + body)
            else:
                exc = body if i >= 0 else body + b"\0"
                for c in job.clients:
                    self._emit(OP_EXCEPTION, c, exc)
        if self._metrics is not None:
            self._metrics.ended(job, ptype, now)
        self._finish(job)

    def large_result(self, conn: int, ptype: int, body: list[Piece], now: float) -> bool:
        """WORK_COMPLETE, WORK_DATA or WORK_WARNING with a large body in pieces: relay the pieces
        to the clients without joining them (as `_work_end` and `_work_data` would relay the body
        whole). Return False, having done nothing, for anything else (another type, a job not
        held, one with retries): the caller joins the body and calls `handle_packet`."""
        if ptype != WORK_COMPLETE and ptype != WORK_DATA and ptype != WORK_WARNING:
            return False
        head = head_bytes(body, HANDLE_SIZE + 1)
        i = head.find(b"\0")
        job = self._held(conn, head[:i]) if i >= 0 else None
        if job is None or job.retry is not None or job.fn.retry is not None:
            return False
        if job.clients:
            packet = _RES + _pack(ptype, sum(map(len, body)))
            for c in job.clients:
                self._send_tail(c, packet, body)
        if ptype == WORK_COMPLETE:
            if self._metrics is not None:
                self._metrics.ended(job, ptype, now)
            self._finish(job)
        return True

    def _work_fail(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        if len(body) >= HANDLE_SIZE:
            self._send(conn, _ERR_HANDLE_SIZE)
            return
        job = self._held(conn, body)
        if job is None:
            self._send(conn, _ERR_NO_JOB_RESULT)
            return
        if (job.retry is not None or job.fn.retry is not None) and attempts.ended(
            self, job, WORK_FAIL, b"", now
        ):
            return  # it waits for its next attempt
        if job.clients:
            self._relay(job, _RES + _pack(WORK_FAIL, len(body)) + body)
        if self._metrics is not None:
            self._metrics.ended(job, WORK_FAIL, now)
        self._finish(job)

    # ------------------------------------------------------------------ status requests

    def _get_status(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        if len(body) >= HANDLE_SIZE:
            self._close(conn)
            return
        job = self._jobs.get(body)
        if job is None:
            pkt = _res(STATUS_RES, body, b"0", b"0", b"0", b"0")
        else:
            running = b"1" if job.state == RUNNING else b"0"
            pkt = _res(STATUS_RES, body, b"1", running, b"%d" % job.num, b"%d" % job.den)
        self._send(conn, pkt)

    def _get_status_unique(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        """This shard's answer only; with several shards the front gathers `status_unique`."""
        if len(body) >= MAX_UNIQUE:
            self._close(conn)
            return
        st = shard_admin.status_unique(self, body) or (0, 0, 0, 0, 0)
        pkt = _res(STATUS_RES_UNIQUE, body, *(b"%d" % x for x in st))
        self._send(conn, pkt)

    def _echo(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        self._send(conn, _RES + _pack(ECHO_RES, len(body)) + body)

    def _front_only(self, conn: int, ptype: int, body: bytes, now: float) -> None:
        if self._log is not None:
            self._log(f"packet type {ptype} reached a shard; the front answers it")

    # ------------------------------------------------------------------ job lifecycle

    def _requeue(self, job: Job, now: float, outcome: int = OUT_LOST) -> None:
        """A held job's worker left (`outcome` OUT_LOST) or timed out (OUT_TIMEOUT): the job goes
        back to its queue, waits for its next attempt under its function's retry policy
        (`attempts.lost`), or is dropped (the retry limit, or a policy's last attempt)."""
        self._release(job)
        if job.ignored:
            self._forget(job)
            return
        if job.fn.retry is not None and attempts.lost(self, job, outcome, now):
            return
        job.retries += 1
        if 0 < self.job_retries <= job.retries:
            if self._log is not None:
                self._log(f"Dropped job due to max retry count: {job.handle.decode('latin-1')}")
            if job.fn.retry is not None:
                attempts.last_failure(self, job, outcome, now)
            self._drop(job)
            return
        job.num = 0
        job.den = 0
        self._enqueue(job)
        if self._joblog is not None:
            self._joblog.requeue(job)
        if self._metrics is not None:
            self._metrics.requeued(job)

    def _release(self, job: Job) -> None:
        """Take a held job from its worker (it stays RUNNING until the caller moves it)."""
        w = job.worker
        assert w is not None
        del w.jobs[job]
        job.worker = None
        job.fn.running -= 1
        self._running -= 1
        if w.timer_job is job:
            w.timer_at = None
            w.timer_job = None

    def _finish(self, job: Job) -> None:
        """A held job completed, failed or raised."""
        w = job.worker
        assert w is not None
        self._release(job)
        if not w.funcs and not w.jobs:  # a recovered worker that has not registered again
            self._maybe_forget_worker(w)
        if job.stored:
            self._unstore(job)
        self._forget(job)

    def _drop(self, job: Job) -> None:
        """Fail a job that is not running: WORK_FAIL to its clients, unstore, forget."""
        if self._metrics is not None:
            self._metrics.dropped(job)
        self._fail_clients(job)
        if job.stored:
            self._unstore(job)
        if job.state == QUEUED:
            self._unqueue(job)
        elif job.state == FUTURE:
            job.fn.future[job.priority] -= 1
        self._forget(job)

    def _fail_clients(self, job: Job) -> None:
        if job.clients:
            h = job.handle
            self._relay(job, _RES + _pack(WORK_FAIL, len(h)) + h)
            self._detach_all(job)

    def _abandon(self, job: Job) -> None:
        """The last foreground client of a job that is not running left."""
        if job.state == LEASED:
            lease.recall(self, job)  # its front may have handed it out: ask, do not take
            return
        if job.state == QUEUED:
            self._unqueue(job)
        elif job.state == FUTURE:
            job.fn.future[job.priority] -= 1
        self._forget(job)

    def _unstore(self, job: Job) -> None:
        job.stored = False  # its DONE record (`_forget`) takes it out of the log

    def _unindex(self, job: Job) -> None:
        k = job.ukind
        if k == UK_UNIQUE:
            if job.fn.uniques.get(job.unique) is job:
                del job.fn.uniques[job.unique]
        elif k == UK_PAYLOAD and job.fn.payloads.get(job.data) is job:
            del job.fn.payloads[job.data]
        job.ukind = UK_NONE

    def _detach_all(self, job: Job) -> None:
        cl = self._clients
        for c in job.clients:
            d = cl.get(c)
            if d is not None:
                d.pop(job, None)
                if not d:
                    del cl[c]
        job.clients = NO_CLIENTS

    def _forget(self, job: Job) -> None:
        """Remove a job that is in no queue and held by no worker from every index."""
        job.state = GONE
        if self._jobs.pop(job.handle, None) is not None:
            job.fn.qbytes -= len(job.data) + len(job.reducer)
        if job.ukind:
            self._unindex(job)
        if job.clients:
            self._detach_all(job)
        if self._joblog is not None:
            self._joblog.done(job)
