"""The sans-IO core of :mod:`shardgear.client` and :mod:`shardgear.worker`.

One :class:`Connection` is one Gearman connection as a client or a worker sees it: requests go in
as method calls and come out of :meth:`Connection.data_to_send` as bytes; bytes from the server
go in through :meth:`Connection.receive`, which updates the requests and jobs they answer and
returns what changed. No socket, no clock, no threads: the synchronous and the asyncio drivers
both run this one state machine and differ only in how they wait.

Theory of operation
-------------------
* **Replies in order.** gearmand and shardgear answer a connection's requests in the order they
  were sent, so the requests that expect a direct reply (SUBMIT_* -> JOB_CREATED, GET_STATUS ->
  STATUS_RES, GET_STATUS_UNIQUE -> STATUS_RES_UNIQUE, ECHO_REQ -> ECHO_RES, OPTION_REQ ->
  OPTION_RES, GRAB_JOB* -> JOB_ASSIGN* or NO_JOB) wait in one FIFO, and each reply answers its
  head. An ERROR answers the head too (spec section 6: QUEUE_ERROR, ARGUMENT_TOO_LARGE,
  UNKNOWN_OPTION, INVALID_COMMAND), except the ERRORs a server sends for a worker's WORK_*
  packet (JOB_NOT_FOUND, and ARGUMENT_TOO_LARGE about the handle size): those answer no request,
  may come after replies to later requests (shardgear relays them from a shard), and are returned
  as :class:`ServerError` values instead.
* **Job packets by handle.** WORK_DATA, WORK_WARNING, WORK_STATUS, WORK_COMPLETE, WORK_FAIL and
  WORK_EXCEPTION go to the job with their handle; one that names no job here (a job whose waiter
  gave up: Gearman has no way to detach but closing the connection) is dropped.
* **Coalescing on one connection.** Both servers send every WORK_* packet once per attached
  submission, so two foreground submissions with the same function and unique on one connection
  would receive everything twice (and the python-gearman forks then raise ``KeyError``). A second
  such submission is therefore not sent: it follows the first and receives what the first
  receives from then on, as the server would have attached it. (Should a server still hand one
  handle to two submissions, the copies are counted and each packet is delivered once.)
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from shardgear.proto.errors import ProtocolError
from shardgear.proto.packets import PacketType, request, split_args
from shardgear.proto.responses import DEFAULT_MAX_RESPONSE_SIZE, ResponseParser

T = PacketType
NOOP: Final = int(T.NOOP)
JOB_CREATED: Final = int(T.JOB_CREATED)
NO_JOB: Final = int(T.NO_JOB)
JOB_ASSIGN: Final = int(T.JOB_ASSIGN)
JOB_ASSIGN_UNIQ: Final = int(T.JOB_ASSIGN_UNIQ)
JOB_ASSIGN_ALL: Final = int(T.JOB_ASSIGN_ALL)
WORK_STATUS: Final = int(T.WORK_STATUS)
WORK_COMPLETE: Final = int(T.WORK_COMPLETE)
WORK_FAIL: Final = int(T.WORK_FAIL)
WORK_EXCEPTION: Final = int(T.WORK_EXCEPTION)
WORK_DATA: Final = int(T.WORK_DATA)
WORK_WARNING: Final = int(T.WORK_WARNING)
ERROR: Final = int(T.ERROR)
STATUS_RES: Final = int(T.STATUS_RES)
STATUS_RES_UNIQUE: Final = int(T.STATUS_RES_UNIQUE)
ECHO_RES: Final = int(T.ECHO_RES)
OPTION_RES: Final = int(T.OPTION_RES)

_WORK_TYPES: Final = frozenset(
    {WORK_DATA, WORK_WARNING, WORK_STATUS, WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION}
)
_GRAB_REPLIES: Final = frozenset({NO_JOB, JOB_ASSIGN, JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL})
_HANDLE_SIZE_TEXT: Final = b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE"

MAX_UNIQUE_SIZE: Final = 64
"""Longest unique a server accepts (spec section 6); longer ones get ARGUMENT_TOO_LARGE."""


# -- errors ----------------------------------------------------------------------------------------


class GearmanError(Exception):
    """Base class of every error the client and the worker raise."""


class ServerError(GearmanError):
    """The server answered with an ERROR packet.

    Attributes:
        code: gearmand's error name without the ``GEARMAN_`` prefix, e.g. ``"QUEUE_ERROR"``,
            ``"ARGUMENT_TOO_LARGE"``, ``"INVALID_COMMAND"``, ``"UNKNOWN_OPTION"``,
            ``"JOB_NOT_FOUND"`` (reference, section 6).
        text: the server's text, e.g. ``"Job queue is full"``.
    """

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}" if text else code)
        self.code = code
        self.text = text


class JobError(GearmanError):
    """A foreground job ended without WORK_COMPLETE.

    Attributes:
        handle: the job handle the server gave it.
        function: the function name.
    """

    def __init__(self, message: str, handle: str, function: str) -> None:
        super().__init__(message)
        self.handle = handle
        self.function = function


class JobFailed(JobError):
    """The worker sent WORK_FAIL (or the server failed the job: retries exhausted, ``cancel job``,
    or a WORK_EXCEPTION to a connection without the ``exceptions`` option)."""


class JobException(JobError):
    """The worker sent WORK_EXCEPTION (needs the ``exceptions`` option, on by default).

    Attributes:
        data: the exception payload the worker sent (raw bytes).
    """

    def __init__(self, message: str, handle: str, function: str, data: bytes) -> None:
        super().__init__(message, handle, function)
        self.data = data


class ConnectionLost(GearmanError, ConnectionError):
    """The connection to the server closed while a request or a job on it was unanswered.

    A foreground job whose JOB_CREATED had arrived may still run on the server; a submission
    whose reply had not arrived may or may not have been queued.
    """


class NoServerAvailable(GearmanError, ConnectionError):
    """No server could be reached. ``errors`` maps each address tried to the reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        detail = "; ".join(f"{a}: {e}" for a, e in errors.items()) or "no servers configured"
        super().__init__(f"no Gearman server available ({detail})")
        self.errors = errors


class Timeout(GearmanError, TimeoutError):
    """A call did not finish within its ``timeout`` (seconds)."""


class BadResponse(GearmanError):
    """The server sent something the protocol does not allow here (the connection is closed)."""


# -- values ----------------------------------------------------------------------------------------


class Priority(enum.Enum):
    """A job's priority; the server runs HIGH before NORMAL before LOW."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


SUBMIT_TYPES: Final[dict[tuple[Priority, bool], int]] = {
    (Priority.HIGH, False): int(T.SUBMIT_JOB_HIGH),
    (Priority.NORMAL, False): int(T.SUBMIT_JOB),
    (Priority.LOW, False): int(T.SUBMIT_JOB_LOW),
    (Priority.HIGH, True): int(T.SUBMIT_JOB_HIGH_BG),
    (Priority.NORMAL, True): int(T.SUBMIT_JOB_BG),
    (Priority.LOW, True): int(T.SUBMIT_JOB_LOW_BG),
}
"""Packet type of a plain submission by (priority, background)."""


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A STATUS_RES: what the server knows about a job handle (all zero when it knows nothing).

    ``numerator`` / ``denominator`` are the last WORK_STATUS the worker sent (0 / 0 if none).
    """

    handle: str
    known: bool
    running: bool
    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class UniqueStatus:
    """A STATUS_RES_UNIQUE: a job looked up by its unique (across all functions, first match).

    ``clients`` is the number of foreground clients waiting (gearmand's source always says 0;
    Debian's 1.1.20 and shardgear count them).
    """

    unique: str
    known: bool
    running: bool
    numerator: int
    denominator: int
    clients: int


@dataclass(frozen=True, slots=True)
class WorkData:
    """A WORK_DATA packet: a piece of a job's output, sent before its end."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WorkWarning:
    """A WORK_WARNING packet."""

    data: bytes


@dataclass(frozen=True, slots=True)
class WorkStatus:
    """A WORK_STATUS packet: progress as numerator / denominator."""

    numerator: int
    denominator: int


@dataclass(frozen=True, slots=True)
class WorkComplete:
    """WORK_COMPLETE: the job's result, always the last event of a job that succeeded."""

    data: bytes


JobEvent = WorkData | WorkWarning | WorkStatus | WorkComplete
"""What a foreground job's event stream yields."""


def to_bytes(value: bytes | bytearray | memoryview | str, what: str) -> bytes:
    """Bytes as they are; ``str`` encoded as UTF-8. Raises TypeError for anything else."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{what} must be bytes or str, not {type(value).__name__}")


def to_field(value: bytes | str, what: str) -> bytes:
    """A NUL-terminated field (function, unique, reducer): bytes without NUL."""
    raw = to_bytes(value, what)
    if b"\0" in raw:
        raise ValueError(f"{what} must not contain NUL bytes: {raw!r}")
    return raw


def _int(raw: bytes) -> int:
    """A decimal field as gearmand's atoi reads it (garbage is 0)."""
    try:
        return int(raw)
    except ValueError:
        return 0


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


# -- requests and jobs -----------------------------------------------------------------------------


class Pending:
    """A request waiting for its direct reply.

    ``value`` is set when the reply arrives (its meaning depends on the request), ``error`` if an
    ERROR or a lost connection answered it instead; ``done`` becomes True either way.
    ``wakers`` is the asyncio driver's: the connection returns this object from
    :meth:`Connection.receive` when it changes, and the driver calls each of them.
    """

    __slots__ = ("done", "error", "expect", "value", "wakers")

    def __init__(self, expect: frozenset[int]) -> None:
        self.expect = expect
        self.done = False
        self.value: object = None
        self.error: GearmanError | None = None
        self.wakers: list[Callable[[], None]] | None = None

    def answer(self, ptype: int, body: bytes) -> None:
        self.value = (ptype, body)
        self.done = True

    def fail(self, error: GearmanError) -> None:
        if not self.done:
            self.error = error
            self.done = True


class JobState(Pending):
    """A submitted job: its JOB_CREATED, then (foreground) its WORK_* packets until the end.

    ``handle`` is set by JOB_CREATED, after which ``created`` is True. A background job is
    ``done`` at JOB_CREATED. A foreground job gathers ``events`` (appended in arrival order, for
    the driver's iterators) and ends with ``result`` (WORK_COMPLETE) or ``error``.
    """

    __slots__ = (
        "background",
        "copies",
        "created",
        "denominator",
        "events",
        "followers",
        "function",
        "handle",
        "key",
        "numerator",
        "result",
        "seen",
        "server",
    )

    def __init__(
        self, function: bytes, key: tuple[bytes, ...] | None, background: bool, server: str
    ) -> None:
        super().__init__(frozenset({JOB_CREATED}))
        self.function = function
        self.key = key  # (function, unique[, data]) of a foreground job that may coalesce
        self.background = background
        self.server = server
        self.handle = b""
        self.created = False
        self.result: bytes | None = None
        self.events: collections.deque[JobEvent] = collections.deque()
        self.numerator = 0
        self.denominator = 0
        self.followers: list[JobState] = []
        self.copies = 1  # submissions of this connection the server attached to the handle
        self.seen = 0  # copies of the current packet received so far

    def answer(self, ptype: int, body: bytes) -> None:
        self.handle = body
        self.created = True
        if self.background:
            self.done = True

    def push(self, event: JobEvent) -> None:
        if isinstance(event, WorkStatus):
            self.numerator = event.numerator
            self.denominator = event.denominator
        elif isinstance(event, WorkComplete):
            self.result = event.data
            self.done = True
        self.events.append(event)

    def job_error(self, ptype: int, data: bytes) -> JobError:
        handle = _text(self.handle)
        function = _text(self.function)
        if ptype == WORK_EXCEPTION:
            return JobException(
                f"job {handle} ({function}) raised: {_text(data)}", handle, function, data
            )
        return JobFailed(f"job {handle} ({function}) failed", handle, function)


class Assignment:
    """A job a GRAB_JOB* got: JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL split into fields
    (``unique`` and ``reducer`` are ``b""`` where the packet has none)."""

    __slots__ = ("data", "function", "handle", "reducer", "unique")

    def __init__(self, ptype: int, body: bytes) -> None:
        args = split_args(ptype, body)
        self.handle = args[0]
        self.function = args[1]
        self.unique = args[2] if ptype != JOB_ASSIGN else b""
        self.reducer = args[3] if ptype == JOB_ASSIGN_ALL else b""
        self.data = args[-1]


NOOP_EVENT: Final = "NOOP"
"""What :meth:`Connection.receive` returns for a NOOP (a sleeping worker is woken)."""

Change = Pending | ServerError | str
"""What :meth:`Connection.receive` returns: a request or job that changed, a
:class:`ServerError` that answers no request (a rejected WORK_* packet), or :data:`NOOP_EVENT`."""


class Connection:
    """One connection's protocol state, for a client, a worker, or both.

    Args:
        server: the server's address as text, recorded on jobs (``host:port``).
        max_packet_size: the largest packet accepted from the server, in bytes.
    """

    __slots__ = ("_by_handle", "_by_key", "_out", "_parser", "_waiting", "closed", "server")

    def __init__(self, server: str, max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE) -> None:
        self.server = server
        self._parser = ResponseParser(max_packet_size)
        self._out: list[bytes] = []
        self._waiting: collections.deque[Pending] = collections.deque()
        self._by_handle: dict[bytes, JobState] = {}
        self._by_key: dict[tuple[bytes, ...], JobState] = {}
        self.closed: GearmanError | None = None

    # -- sending -----------------------------------------------------------------------------------

    def send(self, ptype: int, *args: bytes) -> None:
        """Queue a packet that gets no reply (CAN_DO, PRE_SLEEP, WORK_*, SET_CLIENT_ID ...)."""
        self._out.append(request(ptype, *args))

    def request(self, ptype: int, *args: bytes, expect: frozenset[int]) -> Pending:
        """Queue a packet whose reply (one of the types in ``expect``) answers the Pending."""
        pending = Pending(expect)
        self._out.append(request(ptype, *args))
        self._waiting.append(pending)
        return pending

    def grab(self, ptype: int) -> Pending:
        """Queue a GRAB_JOB*; its Pending's value becomes an :class:`Assignment` or None."""
        return self.request(ptype, expect=_GRAB_REPLIES)

    def submit(self, job: JobState, ptype: int, *args: bytes) -> None:
        """Queue a SUBMIT_* packet for ``job`` (or, when a foreground job with the same key is
        still waiting here, make ``job`` follow it without sending anything)."""
        key = job.key
        if key is not None:
            leader = self._by_key.get(key)
            if leader is not None and not leader.done:
                leader.followers.append(job)
                if leader.created:
                    job.handle = leader.handle
                    job.created = True
                return
            self._by_key[key] = job
        self._out.append(request(ptype, *args))
        self._waiting.append(job)

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, in order (``b""`` if nothing)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def busy(self) -> bool:
        """Whether a request or a foreground job still waits for the server here."""
        return bool(self._waiting or self._by_handle)

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Change]:
        """Take bytes from the server; return what changed, in order.

        Raises:
            BadResponse: the server broke the framing or sent a reply nothing asked for. The
                connection must be closed (call :meth:`close` with the error).
        """
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            raise BadResponse(f"{self.server}: {exc.message}") from None
        changed: list[Change] = []
        for ptype, body in frames:
            if ptype in _WORK_TYPES:
                self._work(ptype, body, changed)
            elif ptype == NOOP:
                changed.append(NOOP_EVENT)
            elif ptype == ERROR:
                self._error(body, changed)
            else:
                self._reply(ptype, body, changed)
        return changed

    def _reply(self, ptype: int, body: bytes, changed: list[Change]) -> None:
        if not self._waiting or ptype not in self._waiting[0].expect:
            name = T(ptype).name
            raise BadResponse(f"{self.server} sent {name}, which answers no request of ours")
        pending = self._waiting.popleft()
        if isinstance(pending, JobState):
            self._created(pending, body, changed)
        else:
            pending.answer(ptype, body)
            changed.append(pending)

    def _created(self, job: JobState, handle: bytes, changed: list[Change]) -> None:
        job.answer(JOB_CREATED, handle)
        changed.append(job)
        for follower in job.followers:
            follower.answer(JOB_CREATED, handle)
            changed.append(follower)
        if job.background:
            return
        earlier = self._by_handle.get(handle)
        if earlier is None:
            self._by_handle[handle] = job
        else:  # the server attached this connection twice after all: count the copies
            earlier.copies += 1
            earlier.followers += [job, *job.followers]
            job.followers = []

    def _error(self, body: bytes, changed: list[Change]) -> None:
        code, _, text = body.partition(b"\0")
        error = ServerError(_text(code), _text(text.rstrip(b"\0")))
        if code == b"JOB_NOT_FOUND" or text.startswith(_HANDLE_SIZE_TEXT) or not self._waiting:
            changed.append(error)  # about a WORK_* packet, or unsolicited
            return
        pending = self._waiting.popleft()
        self._fail(pending, error, changed)

    def _fail(self, pending: Pending, error: GearmanError, changed: list[Change]) -> None:
        pending.fail(error)
        changed.append(pending)
        if isinstance(pending, JobState):
            if pending.key is not None and self._by_key.get(pending.key) is pending:
                del self._by_key[pending.key]
            for follower in pending.followers:
                follower.fail(error)
                changed.append(follower)

    def _work(self, ptype: int, body: bytes, changed: list[Change]) -> None:
        handle, _, rest = body.partition(b"\0")
        job = self._by_handle.get(handle)
        if job is None:
            return
        if job.copies > 1:  # deliver the first copy of each packet, count the others
            job.seen += 1
            first = job.seen == 1
            if job.seen >= job.copies:
                job.seen = 0
            if not first:
                return
        event: JobEvent | None
        if ptype == WORK_DATA:
            event = WorkData(rest)
        elif ptype == WORK_WARNING:
            event = WorkWarning(rest)
        elif ptype == WORK_STATUS:
            num, _, den = rest.partition(b"\0")
            event = WorkStatus(_int(num), _int(den))
        elif ptype == WORK_COMPLETE:
            event = WorkComplete(rest)
        else:
            event = None
        for target in (job, *job.followers):
            if event is None:
                target.fail(target.job_error(ptype, rest))
            else:
                target.push(event)
            changed.append(target)
        if job.done:
            del self._by_handle[handle]
            if job.key is not None and self._by_key.get(job.key) is job:
                del self._by_key[job.key]

    # -- the end -----------------------------------------------------------------------------------

    def close(self, error: GearmanError) -> list[Change]:
        """The connection is gone: fail every request and foreground job still waiting here.

        Returns what changed. Later calls return nothing; ``closed`` keeps the first error.
        """
        if self.closed is not None:
            return []
        self.closed = error
        changed: list[Change] = []
        while self._waiting:
            self._fail(self._waiting.popleft(), error, changed)
        for job in self._by_handle.values():
            self._fail(job, error, changed)
        self._by_handle.clear()
        self._by_key.clear()
        self._out.clear()
        return changed


def status_of(pending: Pending) -> JobStatus:
    """The :class:`JobStatus` of an answered GET_STATUS."""
    assert isinstance(pending.value, tuple)
    args = split_args(STATUS_RES, pending.value[1])
    return JobStatus(
        _text(args[0]), _int(args[1]) != 0, _int(args[2]) != 0, _int(args[3]), _int(args[4])
    )


def unique_status_of(pending: Pending) -> UniqueStatus:
    """The :class:`UniqueStatus` of an answered GET_STATUS_UNIQUE."""
    assert isinstance(pending.value, tuple)
    args = split_args(STATUS_RES_UNIQUE, pending.value[1])
    return UniqueStatus(
        _text(args[0]),
        _int(args[1]) != 0,
        _int(args[2]) != 0,
        _int(args[3]),
        _int(args[4]),
        _int(args[5]),
    )


def reply_body(pending: Pending) -> bytes:
    """The body of an answered request's reply."""
    assert isinstance(pending.value, tuple)
    body = pending.value[1]
    assert isinstance(body, bytes)
    return body


def assignment_of(pending: Pending) -> Assignment | None:
    """The job an answered GRAB_JOB* got, or None for NO_JOB."""
    assert isinstance(pending.value, tuple)
    ptype, body = pending.value
    return None if ptype == NO_JOB else Assignment(ptype, body)
