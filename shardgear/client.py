"""A Gearman client: submit jobs to shardgear, gearmand or any Gearman server, and get results.

Two APIs over one sans-IO protocol core (:mod:`shardgear._protocol`): :class:`Client` for
threads (thread-safe; the calling threads do the I/O, no background thread) and
:class:`AsyncClient` for asyncio. Both take the same arguments and behave the same::

    from shardgear.client import Client

    with Client(["127.0.0.1:4730", "10.0.0.2:4730"]) as client:
        print(client.run("reverse", b"hello", timeout=10))        # b'olleh'
        job = client.submit("resize", b"...", unique="img-42", priority="high")
        for event in job.events(timeout=60):                     # WorkData, WorkStatus, ...
            print(event)
        handle = client.submit_background("mail", b"to=alice").handle
        print(client.get_status(handle))

Data is ``bytes`` (``str`` arguments are encoded as UTF-8); results are ``bytes``.

Servers and failover
--------------------
Each server gets one connection, opened on first use and kept. A job with a unique goes to the
server libgearman picks for that unique (a ketama ring, so coalescing works across servers); a
job without one goes to the servers in turn; the module :mod:`shardgear._servers` documents the
ring. A server that refuses or drops connections is skipped for a backoff delay and its jobs go
to the next server. Only a submission that cannot have reached a server is moved: once the
request was sent, a lost connection raises :class:`ConnectionLost` (the server may have queued
the job), and a foreground job whose connection is lost raises it from ``result()``.

Errors
------
Everything raised is a :class:`GearmanError`: :class:`ServerError` carries gearmand's ERROR code
and text (``QUEUE_ERROR`` "Job queue is full", ``ARGUMENT_TOO_LARGE`` "Unique value too large",
``INVALID_COMMAND`` "Command not expected" for a packet the server does not implement, ...);
:class:`JobFailed` and :class:`JobException` end a foreground job; :class:`Timeout` (also a
``TimeoutError``), :class:`ConnectionLost` and :class:`NoServerAvailable` (also
``ConnectionError``) are about the connection. Invalid arguments raise ``ValueError`` or
``TypeError`` before anything is sent.

Timeouts are seconds (floats). A request's ``timeout=None`` means the client's ``timeout``
(default 30 s); ``result()`` and ``events()`` wait for as long as the job runs unless given one.
A timeout stops the wait, not the job: Gearman cannot detach a client from a job except by
closing the connection.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Final

from shardgear._conn import (
    AsyncLink,
    SyncLink,
    deadline_of,
    lost_error,
    remaining,
    wait_for,
    wake,
)
from shardgear._protocol import (
    ECHO_RES,
    OPTION_RES,
    STATUS_RES,
    STATUS_RES_UNIQUE,
    SUBMIT_TYPES,
    BadResponse,
    Change,
    Connection,
    ConnectionLost,
    GearmanError,
    JobError,
    JobEvent,
    JobException,
    JobFailed,
    JobState,
    JobStatus,
    NoServerAvailable,
    Pending,
    Priority,
    ServerError,
    Timeout,
    UniqueStatus,
    WorkComplete,
    WorkData,
    WorkStatus,
    WorkWarning,
    reply_body,
    status_of,
    to_bytes,
    to_field,
    unique_status_of,
)
from shardgear._servers import Address, Backoff, ServerPool, ServerSpec, parse_servers
from shardgear.proto.packets import PacketType
from shardgear.proto.responses import DEFAULT_MAX_RESPONSE_SIZE

__all__ = [
    "AsyncClient",
    "AsyncJob",
    "Client",
    "ConnectionLost",
    "GearmanError",
    "Job",
    "JobError",
    "JobEvent",
    "JobException",
    "JobFailed",
    "JobStatus",
    "NoServerAvailable",
    "Priority",
    "ServerError",
    "Timeout",
    "UniqueStatus",
    "WorkComplete",
    "WorkData",
    "WorkStatus",
    "WorkWarning",
]

T = PacketType
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
_OPTION_REPLY: Final = frozenset({OPTION_RES})

_Question = tuple[frozenset[int], Callable[[Pending], bool]]
"""A request asked of servers in turn: the reply type, and whether an answer ends the search."""
_known: Final[_Question] = (frozenset({STATUS_RES}), lambda p: status_of(p).known)
_known_unique: Final[_Question] = (
    frozenset({STATUS_RES_UNIQUE}),
    lambda p: unique_status_of(p).known,
)
_echoed: Final[_Question] = (frozenset({ECHO_RES}), lambda p: True)

Data = bytes | bytearray | memoryview | str
"""A payload: bytes-like, or ``str`` (sent as UTF-8)."""


@dataclass(frozen=True, slots=True)
class _Submission:
    ptype: int
    args: tuple[bytes, ...]
    function: bytes
    unique: bytes
    key: tuple[bytes, ...] | None
    background: bool


class _ClientBase:
    """What the two clients share: settings, argument checks, the server pool."""

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] = "127.0.0.1:4730",
        *,
        client_id: str | bytes | None = None,
        exceptions: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.servers: list[Address] = parse_servers(servers)
        self.client_id = None if client_id is None else to_field(client_id, "client_id")
        self.exceptions = exceptions
        self.timeout = _check_timeout(timeout, "timeout")
        self.connect_timeout = _check_timeout(connect_timeout, "connect_timeout")
        if max_packet_size <= 0:
            raise ValueError(f"max_packet_size must be positive, got {max_packet_size}")
        self.max_packet_size = max_packet_size
        self._pool = ServerPool(self.servers, Backoff(*backoff))

    def _setup(self, conn: Connection) -> None:
        """The first packets on a new connection: OPTION_REQ exceptions, SET_CLIENT_ID."""
        if self.exceptions:
            conn.request(T.OPTION_REQ, b"exceptions", expect=_OPTION_REPLY)
        if self.client_id is not None:
            conn.send(T.SET_CLIENT_ID, self.client_id)

    def _deadline(self, timeout: float | None) -> float | None:
        return deadline_of(self.timeout if timeout is None else timeout)

    def _connect_timeout(self, deadline: float | None) -> float | None:
        left = remaining(deadline)
        if left is None:
            return self.connect_timeout
        return left if self.connect_timeout is None else min(left, self.connect_timeout)

    def _index_of(self, server: ServerSpec) -> int:
        address = parse_servers([server])[0]
        try:
            return self.servers.index(address)
        except ValueError:
            raise ValueError(f"{address} is not one of this client's servers") from None

    @staticmethod
    def _prepare(
        function: str | bytes,
        data: Data,
        unique: str | bytes | None,
        priority: Priority | str,
        background: bool,
        when: float | datetime | None = None,
        schedule: str | None = None,
        reducer: str | bytes | None = None,
    ) -> _Submission:
        fn = to_field(function, "function")
        if not fn:
            raise ValueError("the function name must not be empty")
        payload = to_bytes(data, "data")
        uq = b"" if unique is None else to_field(unique, "unique")
        prio = priority if isinstance(priority, Priority) else Priority(priority)
        given = (("when", when), ("schedule", schedule), ("reducer", reducer))
        special = [name for name, value in given if value is not None]
        if len(special) > 1:
            raise ValueError(f"{' and '.join(special)} cannot be combined")
        if special and prio is not Priority.NORMAL:
            raise ValueError(f"{special[0]} jobs have no priority (the server runs them NORMAL)")
        args: tuple[bytes, ...]
        ptype: int
        if reducer is not None:
            ptype = T.SUBMIT_REDUCE_JOB_BACKGROUND if background else T.SUBMIT_REDUCE_JOB
            args = (fn, uq, to_field(reducer, "reducer"), b"", payload)
        elif when is not None:
            stamp = when.timestamp() if isinstance(when, datetime) else float(when)
            ptype, args = T.SUBMIT_JOB_EPOCH, (fn, uq, b"%d" % math.ceil(stamp), payload)
        elif schedule is not None:
            fields = schedule.split()
            if len(fields) != 5:
                raise ValueError(
                    f"schedule needs the 5 crontab fields (minute hour day-of-month month "
                    f"day-of-week), got {schedule!r}"
                )
            ptype, args = (
                T.SUBMIT_JOB_SCHED,
                (fn, uq, *(to_field(f, "schedule") for f in fields), payload),
            )
        else:
            ptype, args = SUBMIT_TYPES[(prio, background)], (fn, uq, payload)
        key: tuple[bytes, ...] | None = None
        if uq and not background:
            key = (fn, uq, payload) if uq == b"-" else (fn, uq)
        return _Submission(int(ptype), args, fn, uq, key, background)


def _check_timeout(value: float | None, name: str) -> float | None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, got {value}")
    return value


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _is_created(state: JobState) -> bool:
    return state.created or state.done


def _is_done(pending: Pending) -> bool:
    return pending.done


def _not_background(state: JobState) -> None:
    if state.background:
        raise GearmanError("a background job has no result; use get_status()")


# -- the synchronous client ------------------------------------------------------------------------


class Client(_ClientBase):
    """A thread-safe Gearman client. Use it from any number of threads; close it when done.

    Args:
        servers: one server or a list (``"host"``, ``"host:port"``, ``"[v6]:port"``,
            ``(host, port)``, or a comma-separated string); the port defaults to 4730.
        client_id: sent as SET_CLIENT_ID (shown by the server's ``workers`` command).
        exceptions: send OPTION_REQ ``exceptions`` on each connection, so that a worker's
            WORK_EXCEPTION reaches :meth:`Job.result` as :class:`JobException` with its data
            (otherwise the server turns it into WORK_FAIL: :class:`JobFailed`).
        timeout: default seconds for a request's reply (JOB_CREATED, STATUS_RES, ECHO_RES);
            None waits forever.
        connect_timeout: seconds for a TCP connection to a server.
        max_packet_size: the largest packet accepted from a server, in bytes.
        backoff: (first, most) seconds a failed server is skipped; the delay doubles per
            failure in a row, with jitter.

    Raises:
        ValueError: a bad server address or setting.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] = "127.0.0.1:4730",
        *,
        client_id: str | bytes | None = None,
        exceptions: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        super().__init__(
            servers,
            client_id=client_id,
            exceptions=exceptions,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_packet_size=max_packet_size,
            backoff=backoff,
        )
        self._cv = threading.Condition()
        self._links: list[SyncLink | None] = [None] * len(self.servers)
        self._connecting = [threading.Lock() for _ in self.servers]
        self._closed = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; jobs still waiting raise :class:`ConnectionLost`."""
        with self._cv:
            self._closed = True
            links = [link for link in self._links if link is not None]
            for link in links:
                self._lost(link, ConnectionLost("the client was closed"))

    # -- submitting --------------------------------------------------------------------------------

    def submit(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a foreground job and return once the server has created it.

        Args:
            function: the function name.
            data: the job's payload.
            unique: the job's unique id: a second submission with the same function and unique
                joins the job while it exists (``"-"``: the same function and payload). None or
                ``""``: never coalesces.
            priority: ``Priority.HIGH``/``NORMAL``/``LOW`` or ``"high"``/``"normal"``/``"low"``.
            reducer: submit SUBMIT_REDUCE_JOB with this reducer function (priority NORMAL).
            timeout: seconds to wait for JOB_CREATED (None: the client's ``timeout``).

        Returns:
            The :class:`Job`; wait for its end with :meth:`Job.result` or :meth:`Job.events`.

        Raises:
            ServerError: the server refused the job (e.g. QUEUE_ERROR, ARGUMENT_TOO_LARGE).
            ConnectionLost: the connection closed after the request was sent.
            NoServerAvailable: no server could be reached.
            Timeout: no JOB_CREATED in time.
        """
        sub = self._prepare(function, data, unique, priority, False, reducer=reducer)
        return self._submit(sub, self._deadline(timeout))

    def run(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Submit a foreground job and wait for its result.

        Args:
            function, data, unique, priority, reducer: as :meth:`submit`.
            timeout: seconds for the whole call, submission included (None: no limit on the
                wait for the result; the client's ``timeout`` still bounds JOB_CREATED).

        Returns:
            The WORK_COMPLETE payload.

        Raises:
            JobFailed, JobException: the job ended without WORK_COMPLETE.
            ServerError, ConnectionLost, NoServerAvailable, Timeout: as :meth:`submit`.
        """
        deadline = deadline_of(timeout)
        sub = self._prepare(function, data, unique, priority, False, reducer=reducer)
        job = self._submit(sub, self._deadline(None) if deadline is None else deadline)
        return job._result(deadline)

    def submit_background(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        when: float | datetime | None = None,
        schedule: str | None = None,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> Job:
        """Submit a background job and return once the server has queued it.

        Args:
            function, data, unique, priority, reducer: as :meth:`submit`.
            when: run it at this time (Unix seconds or a ``datetime``) with SUBMIT_JOB_EPOCH.
            schedule: a crontab line's five time fields (``"*/5 * * * *"``), sent as
                SUBMIT_JOB_SCHED, for servers that implement it (gearmand 1.1 and shardgear
                today answer ``ServerError`` INVALID_COMMAND "Command not expected").
            timeout: seconds to wait for JOB_CREATED (None: the client's ``timeout``).

        Returns:
            The :class:`Job` (``handle``, ``server``); it is already ``done``.

        Raises:
            As :meth:`submit`.
        """
        sub = self._prepare(function, data, unique, priority, True, when, schedule, reducer)
        return self._submit(sub, self._deadline(timeout))

    def _submit(self, sub: _Submission, deadline: float | None) -> Job:
        errors: dict[str, str] = {}
        for index in self._pool.candidates(sub.unique, time.monotonic()):
            address = self.servers[index]
            try:
                link = self._link(index, deadline)
            except Timeout:
                raise
            except OSError as exc:
                self._pool.failed(index, time.monotonic())
                errors[str(address)] = _reason(exc)
                continue
            state = JobState(sub.function, sub.key, sub.background, str(address))
            try:
                with link.send_lock:
                    with self._cv:
                        if link.conn.closed is not None:
                            raise link.conn.closed
                        link.conn.submit(state, sub.ptype, *sub.args)
                        data = link.conn.data_to_send()
                    if data:
                        link.send_all(data, deadline)
            except Timeout:
                with self._cv:
                    self._lost(link, Timeout(f"sending to {address} timed out"))
                raise
            except OSError as exc:  # ConnectionLost too
                # the server could not have read the request: safe to try the next one
                with self._cv:
                    self._lost(link, exc)
                self._pool.failed(index, time.monotonic())
                errors[str(address)] = _reason(exc)
                continue
            self._wait(link, partial(_is_created, state), deadline)
            if state.error is not None:
                raise state.error
            return Job(self, link, state)
        raise NoServerAvailable(errors)

    # -- status, echo ------------------------------------------------------------------------------

    def get_status(
        self,
        job: Job | str | bytes,
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """GET_STATUS: ask the server that created a job what it knows about it.

        Args:
            job: a :class:`Job`, or a handle (then ``server`` names the server; without it each
                server is asked in turn and the first that knows the handle answers).
            server: the server that gave the handle.
            timeout: seconds for the whole call (None: the client's ``timeout``).

        Returns:
            The :class:`JobStatus` (``known`` is False once a job has ended: servers keep no
            history).

        Raises:
            ConnectionLost, NoServerAvailable, Timeout: as :meth:`submit`.
        """
        deadline = self._deadline(timeout)
        if isinstance(job, Job):
            handle, indexes = job._state.handle, [self._index_of(job.server)]
        else:
            handle = to_field(job, "handle")
            indexes = list(range(len(self.servers))) if server is None else [self._index_of(server)]
        answers = self._ask(indexes, _known, deadline, T.GET_STATUS, handle)
        statuses = [status_of(p) for p in answers]
        return next((s for s in statuses if s.known), statuses[0])

    def get_status_unique(
        self, unique: str | bytes, *, timeout: float | None = None
    ) -> UniqueStatus:
        """GET_STATUS_UNIQUE: look a job up by its unique, on the server its unique maps to
        (then, if that one does not know it or is down, on the next ones in ring order).

        Raises:
            ConnectionLost, NoServerAvailable, Timeout: as :meth:`submit`.
        """
        uq = to_field(unique, "unique")
        deadline = self._deadline(timeout)
        order = self._pool.ring_order(uq) if uq else list(range(len(self.servers)))
        answers = self._ask(order, _known_unique, deadline, T.GET_STATUS_UNIQUE, uq)
        statuses = [unique_status_of(p) for p in answers]
        return next((s for s in statuses if s.known), statuses[0])

    def echo(
        self, data: Data = b"", *, server: ServerSpec | None = None, timeout: float | None = None
    ) -> bytes:
        """ECHO_REQ: round-trip ``data`` through a server (the first reachable one by default).

        Raises:
            ConnectionLost, NoServerAvailable, Timeout: as :meth:`submit`.
        """
        deadline = self._deadline(timeout)
        indexes = list(range(len(self.servers))) if server is None else [self._index_of(server)]
        answers = self._ask(indexes, _echoed, deadline, T.ECHO_REQ, to_bytes(data, "data"))
        return reply_body(answers[0])

    def _ask(
        self,
        indexes: list[int],
        asked: _Question,
        deadline: float | None,
        ptype: int,
        *args: bytes,
    ) -> list[Pending]:
        """Send one request to each server in turn until an answer satisfies the question;
        skip servers that cannot be reached. Returns the answers, the satisfying one last."""
        answers: list[Pending] = []
        errors: dict[str, str] = {}
        expect, enough = asked
        for index in indexes:
            address = self.servers[index]
            try:
                link = self._link(index, deadline)
                with link.send_lock:
                    with self._cv:
                        if link.conn.closed is not None:
                            raise link.conn.closed
                        pending = link.conn.request(ptype, *args, expect=expect)
                        data = link.conn.data_to_send()
                    link.send_all(data, deadline)
            except Timeout:
                raise
            except OSError as exc:
                if not isinstance(exc, GearmanError):
                    self._pool.failed(index, time.monotonic())
                errors[str(address)] = _reason(exc)
                continue
            self._wait(link, partial(_is_done, pending), deadline)
            if pending.error is not None:
                if isinstance(pending.error, ServerError):
                    raise pending.error
                errors[str(address)] = str(pending.error)
                continue
            answers.append(pending)
            if enough(pending):
                break
        if not answers:
            raise NoServerAvailable(errors)
        return answers

    # -- connections -------------------------------------------------------------------------------

    def _link(self, index: int, deadline: float | None) -> SyncLink:
        """The live connection to server ``index``, connected now if needed.

        Raises:
            OSError: the connection failed.
        """
        with self._cv:
            if self._closed:
                raise ConnectionLost("the client is closed")
            link = self._links[index]
            if link is not None:
                if link.conn.busy or not link.dropped():
                    return link
                self._lost(link, None)
        with self._connecting[index]:
            with self._cv:
                link = self._links[index]
                if link is not None:
                    return link
            link = SyncLink.open(
                self.servers[index], self._connect_timeout(deadline), self.max_packet_size
            )
            self._pool.succeeded(index)
            with self._cv:
                if self._closed:
                    link.close()
                    raise ConnectionLost("the client is closed")
                self._setup(link.conn)
                self._links[index] = link
            return link

    def _lost(self, link: SyncLink, exc: BaseException | None) -> None:
        """Forget a broken connection and fail what waited on it. Call with ``_cv`` held."""
        error = exc if isinstance(exc, ConnectionLost) else lost_error(link.address, exc)
        link.conn.close(error)
        index = self.servers.index(link.address)
        if self._links[index] is link:
            self._links[index] = None
        try:
            link.sock.shutdown(2)  # wakes a thread polling it
        except OSError:
            pass
        link.close()
        self._cv.notify_all()

    def _wait(self, link: SyncLink, done: Callable[[], bool], deadline: float | None) -> None:
        """Wait until ``done()``: one waiting thread reads the connection for all of them.

        Raises:
            Timeout: the deadline passed first.
        """
        cv = self._cv
        with cv:
            while not done():
                left = remaining(deadline)
                if link.conn.closed is not None:
                    return
                if link.reading:
                    cv.wait(left)
                    continue
                link.reading = True
                cv.release()
                data: bytes | None = None
                error: BaseException | None = None
                try:
                    data = link.read(left)
                except OSError as exc:
                    error = exc
                finally:
                    cv.acquire()
                    link.reading = False
                    cv.notify_all()
                if error is not None or data == b"":
                    self._lost(link, error)
                elif data:
                    try:
                        link.conn.receive(data)
                    except BadResponse as exc:
                        self._lost(link, exc)


class Job:
    """A submitted job, as :meth:`Client.submit` and :meth:`Client.submit_background` return it.

    Attributes (read-only): ``handle`` (str), ``function`` (str), ``server`` (``host:port`` of
    the server that created it), ``background``, ``done`` (it ended, or is a background job),
    ``status`` (the last WORK_STATUS as ``(numerator, denominator)``).
    """

    __slots__ = ("_client", "_link", "_state")

    def __init__(self, client: Client, link: SyncLink, state: JobState) -> None:
        self._client = client
        self._link = link
        self._state = state

    def __repr__(self) -> str:
        return f"<Job {self.handle} {self.function} on {self.server}{' done' * self.done}>"

    @property
    def handle(self) -> str:
        return self._state.handle.decode("utf-8", "replace")

    @property
    def function(self) -> str:
        return self._state.function.decode("utf-8", "replace")

    @property
    def server(self) -> str:
        return self._state.server

    @property
    def background(self) -> bool:
        return self._state.background

    @property
    def done(self) -> bool:
        return self._state.done

    @property
    def status(self) -> tuple[int, int]:
        return self._state.numerator, self._state.denominator

    def result(self, timeout: float | None = None) -> bytes:
        """Wait for the job's end and return its WORK_COMPLETE payload.

        Args:
            timeout: seconds to wait (None: as long as the job runs).

        Raises:
            JobFailed: WORK_FAIL. JobException: WORK_EXCEPTION (its ``data``).
            ConnectionLost: the server's connection closed first. Timeout: still running.
            GearmanError: a background job (it has no result).
        """
        return self._result(deadline_of(timeout))

    def _result(self, deadline: float | None) -> bytes:
        state = self._state
        _not_background(state)
        self._client._wait(self._link, lambda: state.done, deadline)
        if state.error is not None:
            raise state.error
        assert state.result is not None
        return state.result

    def events(self, timeout: float | None = None) -> Iterator[JobEvent]:
        """Iterate over the job's WORK_DATA, WORK_WARNING and WORK_STATUS packets as they
        arrive, ending with its :class:`WorkComplete` (each event is yielded once).

        Args:
            timeout: seconds to wait for each next event (None: no limit).

        Raises:
            As :meth:`result`, once the events before the end are yielded.
        """
        state = self._state
        _not_background(state)
        while True:
            if not state.events and not state.done:
                self._client._wait(
                    self._link, lambda: bool(state.events) or state.done, deadline_of(timeout)
                )
            while state.events:
                event = state.events.popleft()
                yield event
                if isinstance(event, WorkComplete):
                    return
            if state.done:
                if state.error is not None:
                    raise state.error
                return


# -- the asyncio client ----------------------------------------------------------------------------


class AsyncClient(_ClientBase):
    """The asyncio Gearman client: :class:`Client`'s API with coroutines, for one event loop.

    Takes the same arguments as :class:`Client`; use ``async with`` or ``await close()``.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] = "127.0.0.1:4730",
        *,
        client_id: str | bytes | None = None,
        exceptions: bool = True,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        super().__init__(
            servers,
            client_id=client_id,
            exceptions=exceptions,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_packet_size=max_packet_size,
            backoff=backoff,
        )
        self._links: list[AsyncLink | None] = [None] * len(self.servers)
        self._connecting = [asyncio.Lock() for _ in self.servers]
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every connection; jobs still waiting raise :class:`ConnectionLost`."""
        self._closed = True
        for link in self._links:
            if link is not None:
                wake(link.conn.close(ConnectionLost("the client was closed")))
                link.close()
        self._links = [None] * len(self.servers)
        await asyncio.sleep(0)  # let the transports close

    async def submit(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> AsyncJob:
        """As :meth:`Client.submit`; returns an :class:`AsyncJob`."""
        sub = self._prepare(function, data, unique, priority, False, reducer=reducer)
        return await self._submit(sub, self._deadline(timeout))

    async def run(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """As :meth:`Client.run`."""
        deadline = deadline_of(timeout)
        sub = self._prepare(function, data, unique, priority, False, reducer=reducer)
        job = await self._submit(sub, self._deadline(None) if deadline is None else deadline)
        return await job._result(deadline)

    async def submit_background(
        self,
        function: str | bytes,
        data: Data = b"",
        *,
        unique: str | bytes | None = None,
        priority: Priority | str = Priority.NORMAL,
        when: float | datetime | None = None,
        schedule: str | None = None,
        reducer: str | bytes | None = None,
        timeout: float | None = None,
    ) -> AsyncJob:
        """As :meth:`Client.submit_background`."""
        sub = self._prepare(function, data, unique, priority, True, when, schedule, reducer)
        return await self._submit(sub, self._deadline(timeout))

    async def _submit(self, sub: _Submission, deadline: float | None) -> AsyncJob:
        errors: dict[str, str] = {}
        for index in self._pool.candidates(sub.unique, time.monotonic()):
            address = self.servers[index]
            try:
                link = await self._link(index, deadline)
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, Timeout):
                    raise
                self._pool.failed(index, time.monotonic())
                errors[str(address)] = _reason(exc)
                continue
            if not link.alive:
                errors[str(address)] = "connection lost"
                continue
            state = JobState(sub.function, sub.key, sub.background, str(address))
            link.conn.submit(state, sub.ptype, *sub.args)
            link.flush()
            await link.drain()
            while not (state.created or state.done):
                await wait_for(state, deadline)
            if state.error is not None:
                raise state.error
            return AsyncJob(state)
        raise NoServerAvailable(errors)

    async def get_status(
        self,
        job: AsyncJob | str | bytes,
        *,
        server: ServerSpec | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """As :meth:`Client.get_status`."""
        deadline = self._deadline(timeout)
        if isinstance(job, AsyncJob):
            handle, indexes = job._state.handle, [self._index_of(job.server)]
        else:
            handle = to_field(job, "handle")
            indexes = list(range(len(self.servers))) if server is None else [self._index_of(server)]
        answers = await self._ask(indexes, _known, deadline, T.GET_STATUS, handle)
        statuses = [status_of(p) for p in answers]
        return next((s for s in statuses if s.known), statuses[0])

    async def get_status_unique(
        self, unique: str | bytes, *, timeout: float | None = None
    ) -> UniqueStatus:
        """As :meth:`Client.get_status_unique`."""
        uq = to_field(unique, "unique")
        deadline = self._deadline(timeout)
        order = self._pool.ring_order(uq) if uq else list(range(len(self.servers)))
        answers = await self._ask(order, _known_unique, deadline, T.GET_STATUS_UNIQUE, uq)
        statuses = [unique_status_of(p) for p in answers]
        return next((s for s in statuses if s.known), statuses[0])

    async def echo(
        self, data: Data = b"", *, server: ServerSpec | None = None, timeout: float | None = None
    ) -> bytes:
        """As :meth:`Client.echo`."""
        deadline = self._deadline(timeout)
        indexes = list(range(len(self.servers))) if server is None else [self._index_of(server)]
        answers = await self._ask(indexes, _echoed, deadline, T.ECHO_REQ, to_bytes(data, "data"))
        return reply_body(answers[0])

    async def _ask(
        self,
        indexes: list[int],
        asked: _Question,
        deadline: float | None,
        ptype: int,
        *args: bytes,
    ) -> list[Pending]:
        answers: list[Pending] = []
        errors: dict[str, str] = {}
        expect, enough = asked
        for index in indexes:
            address = self.servers[index]
            try:
                link = await self._link(index, deadline)
            except (OSError, TimeoutError) as exc:
                if isinstance(exc, Timeout):
                    raise
                self._pool.failed(index, time.monotonic())
                errors[str(address)] = _reason(exc)
                continue
            pending = link.conn.request(ptype, *args, expect=expect)
            link.flush()
            while not pending.done:
                await wait_for(pending, deadline)
            if pending.error is not None:
                if isinstance(pending.error, ServerError):
                    raise pending.error
                errors[str(address)] = str(pending.error)
                continue
            answers.append(pending)
            if enough(pending):
                break
        if not answers:
            raise NoServerAvailable(errors)
        return answers

    async def _link(self, index: int, deadline: float | None) -> AsyncLink:
        if self._closed:
            raise ConnectionLost("the client is closed")
        link = self._links[index]
        if link is not None and link.alive:
            if link.conn.busy or not link.dropped():
                return link
            wake(link.conn.close(lost_error(link.address, None)))
            link.close()
            self._links[index] = None
        async with self._connecting[index]:
            link = self._links[index]
            if link is not None and link.alive:
                return link
            try:
                link = await AsyncLink.open(
                    self.servers[index],
                    self._connect_timeout(deadline),
                    self.max_packet_size,
                    self._on_change,
                    self._on_lost,
                )
            except TimeoutError as exc:
                if isinstance(exc, Timeout):
                    raise
                raise TimeoutError(f"connecting to {self.servers[index]} timed out") from None
            self._pool.succeeded(index)
            if self._closed:
                link.close()
                raise ConnectionLost("the client is closed")
            self._setup(link.conn)
            self._links[index] = link
            return link

    def _on_change(self, link: AsyncLink, changed: list[Change]) -> None:
        wake(changed)

    def _on_lost(self, link: AsyncLink) -> None:
        index = self.servers.index(link.address)
        if self._links[index] is link:
            self._links[index] = None


class AsyncJob:
    """A job submitted with :class:`AsyncClient`: :class:`Job`'s attributes, awaitable waits."""

    __slots__ = ("_state",)

    def __init__(self, state: JobState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<AsyncJob {self.handle} {self.function} on {self.server}{' done' * self.done}>"

    @property
    def handle(self) -> str:
        return self._state.handle.decode("utf-8", "replace")

    @property
    def function(self) -> str:
        return self._state.function.decode("utf-8", "replace")

    @property
    def server(self) -> str:
        return self._state.server

    @property
    def background(self) -> bool:
        return self._state.background

    @property
    def done(self) -> bool:
        return self._state.done

    @property
    def status(self) -> tuple[int, int]:
        return self._state.numerator, self._state.denominator

    async def result(self, timeout: float | None = None) -> bytes:
        """As :meth:`Job.result`."""
        return await self._result(deadline_of(timeout))

    async def _result(self, deadline: float | None) -> bytes:
        state = self._state
        _not_background(state)
        while not state.done:
            await wait_for(state, deadline)
        if state.error is not None:
            raise state.error
        assert state.result is not None
        return state.result

    async def events(self, timeout: float | None = None) -> AsyncIterator[JobEvent]:
        """As :meth:`Job.events`, as an async iterator."""
        state = self._state
        _not_background(state)
        while True:
            if not state.events and not state.done:
                deadline = deadline_of(timeout)
                while not state.events and not state.done:
                    await wait_for(state, deadline)
            while state.events:
                event = state.events.popleft()
                yield event
                if isinstance(event, WorkComplete):
                    return
            if state.done:
                if state.error is not None:
                    raise state.error
                return
