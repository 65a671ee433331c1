"""The sans-IO core of a worker: its functions, its capacity, and the grab/sleep cycle of each of
its connections. :class:`~shardgear.worker.Worker` (threads) and
:class:`~shardgear.worker.AsyncWorker` (asyncio) drive the same :class:`WorkerCore`.

Theory of operation
-------------------
A worker keeps one connection per server (a *slot*) and at most ``concurrency`` jobs at once,
across all of them. Each slot cycles through gearmand's protocol (reference, section 2.4):

* ``AWAKE``: may GRAB when the worker has capacity (a job it holds or a GRAB it has outstanding
  counts against ``concurrency``); a GRAB moves it to ``GRABBING``.
* ``GRABBING``: one GRAB_JOB_UNIQ (or GRAB_JOB_ALL) is outstanding. JOB_ASSIGN* hands a job to
  the driver and the slot is ``AWAKE`` again (it grabs the next one at once if it has
  capacity); NO_JOB sends PRE_SLEEP and the slot is ``SLEEPING``.
* ``SLEEPING``: nothing is sent until the server's NOOP, which makes it ``AWAKE``. PRE_SLEEP is
  answered with NOOP at once when work is already queued, so no job is missed and nothing polls.
* ``CLOSED``: no connection (the driver reconnects with backoff and calls :meth:`attach`).

A NOOP while ``GRABBING`` changes nothing: the GRAB's own answer decides. A slot at full
capacity stays ``AWAKE`` (or ``SLEEPING``) without grabbing until a job ends.

Stopping (:meth:`WorkerCore.stop`): no more GRABs; CANT_DO for every function a slot holds no job
of, and for the others once their last job there has ended, so gearmand (which requeues a held
job on CANT_DO) and shardgear (which lets it finish) both keep the results. The driver
disconnects when :attr:`WorkerCore.idle` says nothing is held or outstanding.

CAN_DO_TIMEOUT: both servers keep one timer per *connection*, for the job assigned last, and
PRE_SLEEP clears it. So with ``concurrency`` > 1, a slot's earlier jobs may outlive their timeout
unnoticed: run single-job workers where exact per-job timeouts matter.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Final

from shardgear._protocol import (
    NOOP_EVENT,
    Assignment,
    Change,
    Connection,
    Pending,
    ServerError,
    assignment_of,
)
from shardgear.proto.packets import PacketType

log = logging.getLogger("shardgear.worker")

T = PacketType
GRAB_TYPES: Final = {"uniq": int(T.GRAB_JOB_UNIQ), "all": int(T.GRAB_JOB_ALL)}


class SlotState(enum.Enum):
    CLOSED = "closed"
    AWAKE = "awake"
    GRABBING = "grabbing"
    SLEEPING = "sleeping"


class Slot:
    """One connection of a worker (to one server) and what it holds."""

    __slots__ = (
        "conn",
        "failures",
        "grab",
        "held",
        "index",
        "pending_cant_do",
        "retry_at",
        "server",
        "state",
    )

    def __init__(self, index: int, server: str) -> None:
        self.index = index
        self.server = server
        self.failures = 0  # connection attempts failed in a row (for the driver's backoff)
        self.retry_at = 0.0  # when the driver may try to connect again (time.monotonic())
        self.conn: Connection | None = None
        self.state = SlotState.CLOSED
        self.grab: Pending | None = None  # the outstanding GRAB
        self.held: dict[bytes, bytes] = {}  # handle -> function of the jobs this slot holds
        self.pending_cant_do: set[bytes] = set()  # CANT_DO once no held job has the function


def timeout_ms(seconds: float) -> bytes:
    """CAN_DO_TIMEOUT's field: whole milliseconds (servers raise anything below 1000 to 1000)."""
    return b"%d" % max(1, round(seconds * 1000))


class WorkerCore:
    """The state every worker driver shares. Not thread-safe: the threaded driver holds a lock.

    Args:
        concurrency: most jobs held at once, across all servers (at least 1).
        grab: ``"uniq"`` (GRAB_JOB_UNIQ, the default) or ``"all"`` (GRAB_JOB_ALL, which also
            carries a reduce job's reducer).
        client_id: sent as SET_CLIENT_ID on each connection (None: not sent).
    """

    def __init__(self, concurrency: int, grab: str, client_id: bytes | None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if grab not in GRAB_TYPES:
            raise ValueError(f"grab must be 'uniq' or 'all', not {grab!r}")
        self.concurrency = concurrency
        self.grab_type = GRAB_TYPES[grab]
        self.client_id = client_id
        self.functions: dict[bytes, float | None] = {}  # name -> CAN_DO_TIMEOUT seconds
        self.slots: list[Slot] = []
        self.held = 0  # jobs held, all slots
        self.grabbing = 0  # GRABs outstanding, all slots
        self.stopping = False
        self._turn = 0  # round-robin start among slots for the next GRAB

    # -- functions ---------------------------------------------------------------------------------

    def add_function(self, name: bytes, timeout: float | None) -> None:
        """Register a function on every connection (CAN_DO, or CAN_DO_TIMEOUT in ms)."""
        self.functions[name] = timeout
        for slot in self._live():
            slot.pending_cant_do.discard(name)
            self._can_do(slot.conn, name, timeout)  # type: ignore[arg-type]
        self.pump()

    def remove_function(self, name: bytes) -> None:
        """Unregister a function (CANT_DO, deferred on a connection that holds one of its jobs)."""
        self.functions.pop(name, None)
        for slot in self._live():
            self._cant_do(slot, name)

    @staticmethod
    def _can_do(conn: Connection, name: bytes, timeout: float | None) -> None:
        if timeout:
            conn.send(T.CAN_DO_TIMEOUT, name, timeout_ms(timeout))
        else:
            conn.send(T.CAN_DO, name)

    def _cant_do(self, slot: Slot, name: bytes) -> None:
        assert slot.conn is not None
        if name in slot.held.values():
            slot.pending_cant_do.add(name)
        else:
            slot.conn.send(T.CANT_DO, name)

    # -- connections -------------------------------------------------------------------------------

    def add_slot(self, server: str) -> Slot:
        slot = Slot(len(self.slots), server)
        self.slots.append(slot)
        return slot

    def attach(self, slot: Slot, conn: Connection) -> None:
        """A connection of ``slot`` is up: register everything on it and start grabbing."""
        slot.conn = conn
        slot.held.clear()
        slot.pending_cant_do.clear()
        slot.grab = None
        if self.client_id is not None:
            conn.send(T.SET_CLIENT_ID, self.client_id)
        if self.stopping:
            slot.state = SlotState.SLEEPING
            return
        for name, timeout in self.functions.items():
            self._can_do(conn, name, timeout)
        slot.state = SlotState.AWAKE
        self.pump()

    def detach(self, slot: Slot) -> list[bytes]:
        """The connection of ``slot`` is gone; return the handles of the jobs it held (the
        server requeues them: their results can no longer be sent)."""
        lost = list(slot.held)
        self.held -= len(lost)
        if slot.grab is not None:
            self.grabbing -= 1
        slot.grab = None
        slot.held.clear()
        slot.pending_cant_do.clear()
        slot.conn = None
        slot.state = SlotState.CLOSED
        self.pump()
        return lost

    def _live(self) -> list[Slot]:
        return [s for s in self.slots if s.conn is not None and s.conn.closed is None]

    # -- the grab / sleep cycle --------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.concurrency - self.held - self.grabbing

    def pump(self) -> None:
        """Send a GRAB on awake slots while there is capacity (round-robin between slots)."""
        if self.stopping or not self.functions:
            return
        n = len(self.slots)
        for k in range(n):
            if self.capacity <= 0:
                return
            slot = self.slots[(self._turn + k) % n]
            if slot.state is SlotState.AWAKE and slot.conn is not None:
                slot.grab = slot.conn.grab(self.grab_type)
                slot.state = SlotState.GRABBING
                self.grabbing += 1
                self._turn = (slot.index + 1) % n

    def received(self, slot: Slot, changed: list[Change]) -> list[Assignment]:
        """Act on what a slot's connection received; return the jobs to run now."""
        jobs: list[Assignment] = []
        for item in changed:
            if item is NOOP_EVENT:
                if slot.state is SlotState.SLEEPING and not self.stopping:
                    slot.state = SlotState.AWAKE
            elif isinstance(item, ServerError):
                log.warning("%s rejected a work packet: %s", slot.server, item)
            elif item is slot.grab:
                job = self._grabbed(slot, item)
                if job is not None:
                    jobs.append(job)
        self.pump()
        return jobs

    def _grabbed(self, slot: Slot, grab: Pending) -> Assignment | None:
        slot.grab = None
        self.grabbing -= 1
        assert slot.conn is not None
        if grab.error is not None:
            log.warning("%s answered GRAB with %s", slot.server, grab.error)
            job = None
        else:
            job = assignment_of(grab)
        if job is None:
            if self.stopping:
                slot.state = SlotState.SLEEPING
            else:
                slot.conn.send(T.PRE_SLEEP)
                slot.state = SlotState.SLEEPING
            return None
        slot.held[job.handle] = job.function
        self.held += 1
        slot.state = SlotState.AWAKE
        return job

    def finish(self, slot: Slot, job: Assignment, ptype: int, *args: bytes) -> bool:
        """Send a job's end (WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION with ``args`` after the
        handle) and free its capacity. Returns False if the connection it came on is gone (the
        server has requeued the job; the result is dropped)."""
        if slot.conn is None or slot.held.pop(job.handle, None) is None:
            return False
        self.held -= 1
        slot.conn.send(ptype, job.handle, *args)
        if job.function in slot.pending_cant_do and job.function not in slot.held.values():
            slot.pending_cant_do.discard(job.function)
            slot.conn.send(T.CANT_DO, job.function)
        self.pump()
        return True

    def update(self, slot: Slot, job: Assignment, ptype: int, *args: bytes) -> bool:
        """Send WORK_DATA, WORK_WARNING or WORK_STATUS for a held job (False: connection gone)."""
        if slot.conn is None or job.handle not in slot.held:
            return False
        slot.conn.send(ptype, job.handle, *args)
        return True

    # -- stopping ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking jobs: no more GRABs, CANT_DO everything not held (the rest as it ends)."""
        if self.stopping:
            return
        self.stopping = True
        for slot in self._live():
            for name in self.functions:
                self._cant_do(slot, name)

    @property
    def idle(self) -> bool:
        """Stopping, and no job held and no GRAB outstanding anywhere."""
        return self.stopping and self.held == 0 and self.grabbing == 0


Sink = Callable[[int, tuple[bytes, ...]], None]
"""How a job sends a packet about itself: (packet type, arguments after the handle)."""
