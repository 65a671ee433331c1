"""Record classes of the job core: jobs, functions, workers, and the job log's hooks.

These are plain slotted records with no behaviour; `shardgear.scheduler.Scheduler` owns and mutates
them. Everything here is read-only for anyone else (the job log, admin code, tests).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from shardgear.retries import RetryPolicy

# Job.state
QUEUED: Final = 0  # in its function's deque at job.priority, runnable
FUTURE: Final = 1  # an epoch job whose time has not come: in the scheduler's epoch heap
RUNNING: Final = 2  # held by job.worker
GONE: Final = 3  # finished, cancelled while queued, abandoned or dropped; no longer in any index
LEASED: Final = 4  # taken from its queue as job.worker's next job, its front holds it (lease.py)

# Job.ukind: which unique index of its function holds the job
UK_NONE: Final = 0  # empty unique, `-` with empty data, or removed from the index
UK_UNIQUE: Final = 1  # Function.uniques[job.unique]
UK_PAYLOAD: Final = 2  # Function.payloads[job.data] (unique `-`: coalesce on identical payload)


# How an attempt failed (bits of `RetryPolicy.on`); names are the config file's words.
OUT_FAIL: Final = 1  # WORK_FAIL
OUT_EXCEPTION: Final = 2  # WORK_EXCEPTION
OUT_LOST: Final = 4  # the worker left (disconnect, CANT_DO, RESET_ABILITIES, its front died)
OUT_TIMEOUT: Final = 8  # the CAN_DO_TIMEOUT of the assignment expired
OUTCOME_NAMES: Final[dict[int, str]] = {
    OUT_FAIL: "fail",
    OUT_EXCEPTION: "exception",
    OUT_LOST: "lost",
    OUT_TIMEOUT: "timeout",
}

NO_CLIENTS: Final[tuple[int, ...]] = ()
"""`Job.clients` of a job nobody waits for: one shared empty tuple instead of an empty list per
job (56 bytes each, a tenth of a queued background job's memory)."""


def add_client(job: Job, conn: int) -> None:
    """Attach foreground client `conn` to `job`."""
    clients = job.clients
    if isinstance(clients, list):
        clients.append(conn)
    else:
        job.clients = [conn]


class Job:
    """One job. `clients` lists the attached foreground client connections, one entry per
    attached submission (a connection that submitted the same unique twice is listed twice and
    gets every WORK_* packet twice, as in gearmand)."""

    __slots__ = (
        "background",
        "cancelled",
        "clients",
        "data",
        "den",
        "fn",
        "handle",
        "mark",
        "n",
        "num",
        "priority",
        "reducer",
        "retries",
        "retry",
        "state",
        "stored",
        "ukind",
        "unique",
        "when",
        "worker",
    )

    def __init__(
        self,
        handle: bytes,
        fn: Function,
        unique: bytes,
        data: bytes,
        priority: int,
        when: int,
        reducer: bytes,
        background: bool,
    ) -> None:
        self.handle = handle
        self.n = 0  # the handle's number (handle = prefix + b":%d" % n), set by the scheduler
        self.fn = fn
        self.unique = unique
        self.data = data
        self.priority = priority  # 0 HIGH, 1 NORMAL, 2 LOW
        self.when = when  # epoch seconds; 0 = run at once
        self.reducer = reducer
        self.background = background  # a background submission owns it: runs with no client
        self.clients: list[int] | tuple[int, ...] = NO_CLIENTS  # a list once anyone attaches
        self.worker: Worker | None = None
        self.retries = 0  # requeues after a lost worker or a timeout (--job-retries counts them)
        self.retry: RetryState | None = None  # set once an attempt failed under a retry policy
        self.num = 0
        self.den = 0
        self.stored = False  # durable: a background job the next run recovers from the log
        self.cancelled = False
        self.state = GONE
        self.ukind = UK_NONE
        self.mark = 0.0  # metrics only (stats.FunctionStats): when it was queued or assigned

    @property
    def func(self) -> bytes:
        """The function name, for stores and introspection (not a slot: 8 bytes less per job)."""
        return self.fn.name

    @property
    def ignored(self) -> bool:
        """True if nobody wants the result: cancelled, or every foreground client left and no
        background submission owns it (gearmand's `ignore_job`)."""
        return self.cancelled or (not self.background and not self.clients)

    def __repr__(self) -> str:
        return f"Job({self.handle!r}, {self.func!r}, state={self.state})"


class RetryState:
    """The failed attempts of a job under a retry policy (`Job.retry`; None until an attempt
    failed or a foreground attempt's packets were held back).

    `failures` counts failed attempts; `first_failed`/`last_failed` are epoch seconds; `reason` is
    the last failure's OUT_* code and `error` its WORK_EXCEPTION data (empty for the others, at
    most `shardgear.retries.ERROR_LIMIT` bytes). `next_at` is when a job waiting for its next
    attempt (state FUTURE) becomes runnable, 0 otherwise. `held` keeps the WORK_DATA, WORK_WARNING
    and WORK_STATUS packets of the running attempt from foreground clients until it is known to be
    the last (`held_bytes` their size); `final` marks an attempt that will not be retried because
    its held packets outgrew `shardgear.retries.HELD_LIMIT` and went to the clients.
    """

    __slots__ = (
        "error",
        "failures",
        "final",
        "first_failed",
        "held",
        "held_bytes",
        "last_failed",
        "next_at",
        "reason",
    )

    def __init__(
        self,
        failures: int = 0,
        first_failed: float = 0.0,
        last_failed: float = 0.0,
        reason: int = 0,
        error: bytes = b"",
        next_at: float = 0.0,
    ) -> None:
        self.failures = failures
        self.first_failed = first_failed
        self.last_failed = last_failed
        self.reason = reason
        self.error = error
        self.next_at = next_at
        self.held: list[bytes] | None = None
        self.held_bytes = 0
        self.final = False

    def __repr__(self) -> str:
        return f"RetryState(failures={self.failures}, next_at={self.next_at})"


class Function:
    """A function registered or submitted on this shard: three FIFO queues and its counters."""

    __slots__ = (
        "bidx",
        "dead",
        "future",
        "leased",
        "maxq",
        "name",
        "nready",
        "payloads",
        "qbytes",
        "queues",
        "ready",
        "retry",
        "running",
        "sleepers",
        "uniques",
        "workers",
    )

    def __init__(self, name: bytes, bidx: int) -> None:
        self.name = name
        # The deques may hold tombstones (jobs no longer QUEUED); `ready` counts the live ones.
        self.queues: tuple[deque[Job], deque[Job], deque[Job]] = (deque(), deque(), deque())
        self.ready = [0, 0, 0]  # runnable queued jobs per priority
        self.nready = 0  # sum(ready)
        self.future = [0, 0, 0]  # epoch jobs not yet due, per priority
        self.leased = [0, 0, 0]  # LEASED jobs per priority (counted as queued, not runnable)
        self.running = 0
        self.dead = 0  # tombstones in the deques
        self.workers: dict[int, Worker] = {}  # conn -> worker registered for this function
        self.sleepers: dict[Worker, None] = {}  # registered workers asleep and not yet woken
        self.maxq = [0, 0, 0]  # maxqueue limits per priority; 0 = unlimited
        self.bidx = bidx  # board index of the HIGH counter of this function's slot
        self.uniques: dict[bytes, Job] = {}
        self.payloads: dict[bytes, Job] = {}
        # the retry policy of the config file's tables for this function (None: gearmand's rules)
        self.retry: RetryPolicy | None = None
        # payload + reducer bytes of its jobs (queued, future, running): max-queued-bytes
        self.qbytes = 0

    @property
    def total(self) -> int:
        """Queued (runnable, leased or future) plus running jobs: the `status` TOTAL."""
        f = self.future
        n = self.leased
        return self.nready + f[0] + f[1] + f[2] + n[0] + n[1] + n[2] + self.running

    def __repr__(self) -> str:
        return f"Function({self.name!r})"


def best_ready(funcs: dict[Function, int]) -> tuple[Function | None, int]:
    """The function a GRAB gets a job of, among a worker's `funcs` in their round-robin order:
    the first with the best priority that has a runnable job (gearmand 2.0), and that priority
    (0 high, 1 normal, 2 low); (None, 3) if none has one."""
    best = 3
    chosen: Function | None = None
    for f in funcs:
        if not f.nready:
            continue
        r = f.ready
        p = 0 if r[0] else (1 if r[1] else 2)
        if p < best:
            best = p
            chosen = f
            if p == 0:
                break
    return chosen, best


class Worker:
    """A connection that registered functions on this shard (or holds jobs of them)."""

    __slots__ = (
        "alive",
        "conn",
        "funcs",
        "jobs",
        "lease",
        "lease_type",
        "recalled",
        "recovered",
        "sleeping",
        "timer_at",
        "timer_entry_at",
        "timer_job",
        "timer_seq",
        "woken",
    )

    def __init__(self, conn: int) -> None:
        self.conn = conn
        # Registered functions in round-robin order -> CAN_DO_TIMEOUT in ms (0 = none).
        self.funcs: dict[Function, int] = {}
        self.jobs: dict[Job, None] = {}  # jobs this connection holds
        self.lease: Job | None = None  # its LEASED next job, held by its front (lease.py)
        self.lease_type = 0  # the GRAB type the lease's JOB_ASSIGN* packet was built for
        self.recalled = False  # OP_RECALL sent for the lease
        self.sleeping = False  # sent PRE_SLEEP and no GRAB since
        self.woken = False  # had its wake-up for this sleep
        self.timer_at: float | None = None  # CAN_DO_TIMEOUT deadline of timer_job
        self.timer_job: Job | None = None
        self.timer_seq = 0  # seq of this worker's live timer-heap entry; 0 = none
        self.timer_entry_at = 0.0  # the time of that entry (<= timer_at when both are set)
        self.alive = True
        # Re-created from a dead shard's journal: holds jobs, but its front has not re-sent its
        # registrations yet (recovery.recover, recovery.front_synced).
        self.recovered = False

    def __repr__(self) -> str:
        return f"Worker({self.conn:#x})"


class JobMetrics(Protocol):
    """Optional metrics hook (`shardgear.stats.FunctionStats`), called synchronously from the
    scheduler: a new job (not a coalesced submission), an assignment, a result (`ptype`
    WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION), a requeue, and a drop (retry limit or
    ``drop function``). It may use `Job.mark`, which nothing else reads."""

    def submitted(self, job: Job, now: float) -> None: ...

    def assigned(self, job: Job, now: float) -> None: ...

    def ended(self, job: Job, ptype: int, now: float) -> None: ...

    def requeued(self, job: Job) -> None: ...

    def dropped(self, job: Job) -> None: ...


class JobLogHooks(Protocol):
    """The job log (`shardgear.joblog.JobLog`), called synchronously from the scheduler after
    each change of a job's state; it never refuses anything (a write that fails later is the
    shard's to handle). A job with ``stored`` set is durable: the next run recovers it."""

    def new(self, job: Job, client: int) -> None: ...

    def attach(self, job: Job, conn: int) -> None: ...

    def detach(self, job: Job, conn: int) -> None: ...

    def flags(self, job: Job) -> None: ...

    def assign(self, job: Job, conn: int) -> None: ...

    def requeue(self, job: Job) -> None: ...

    def delay(self, job: Job, at: float) -> None:
        """`job` failed an attempt under a retry policy: it now waits (state FUTURE) until `at`,
        epoch seconds, with `job.retry` as it is (failures, first and last failure time, reason,
        error). Recovery after a crash, and a durable job's recovery by the next run, re-create
        it waiting until `at` with the same failures. Snapshots record `job.retry` of every job
        that has one, with `at` 0 unless it is waiting."""
        ...

    def done(self, job: Job) -> None: ...


class DeadLetters(Protocol):
    """Where a background job goes that exhausted its retry policy (`shardgear.deadset`)."""

    def add(self, job: Job, now: float) -> None:
        """Keep `job` (function, unique, payload, priority, `job.retry`) in the dead set. Called
        before the job's DONE record; the dead set's commit precedes the job log's, so a crash
        between them keeps the job twice, never zero times."""
        ...
