"""A Gearman worker: run Python functions as jobs from shardgear, gearmand or any Gearman server.

Two drivers over one sans-IO core (:mod:`shardgear._worker_core`): :class:`Worker` runs plain
functions on threads, :class:`AsyncWorker` runs coroutine functions (and plain ones, on threads)
on an asyncio loop::

    from shardgear.worker import Worker

    worker = Worker(["127.0.0.1:4730"], concurrency=4)

    @worker.function("reverse")
    def reverse(job):
        job.send_status(1, 2)          # WORK_STATUS
        return job.data[::-1]          # WORK_COMPLETE

    worker.run()                       # until SIGTERM / Ctrl-C / worker.stop()

A function gets a :class:`WorkerJob` and returns the result (``bytes``, ``str`` sent as UTF-8, or
None for an empty one). Raising :class:`WorkFail` sends WORK_FAIL; raising :class:`WorkException`
sends WORK_EXCEPTION with its payload; any other exception is logged and sent as WORK_EXCEPTION
with ``"TypeName: message"`` (clients without the ``exceptions`` option get WORK_FAIL instead).

How it talks to servers: one connection per server, GRAB_JOB_UNIQ (or GRAB_JOB_ALL), PRE_SLEEP
after NO_JOB and nothing until the server's NOOP (no polling); at most ``concurrency`` jobs at
once across all servers; a lost connection is retried with exponential backoff and jitter, and
its functions are registered again. A job whose connection is lost is requeued by the server:
its result is dropped with a warning. ``stop()`` is graceful: CANT_DO, finish the jobs held,
disconnect (see :mod:`shardgear._worker_core` for why CANT_DO waits for held jobs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import inspect
import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from shardgear._conn import AsyncLink, SyncLink, deadline_of, lost_error, tune
from shardgear._protocol import (
    Assignment,
    BadResponse,
    Change,
    Connection,
    GearmanError,
    Timeout,
    to_bytes,
    to_field,
)
from shardgear._servers import Address, Backoff, ServerSpec, parse_servers
from shardgear._worker_core import Slot, WorkerCore
from shardgear.proto.packets import PacketType
from shardgear.proto.responses import DEFAULT_MAX_RESPONSE_SIZE

__all__ = [
    "AsyncWorker",
    "GearmanError",
    "WorkException",
    "WorkFail",
    "Worker",
    "WorkerJob",
]

log = logging.getLogger("shardgear.worker")
T = PacketType
F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SEND_TIMEOUT: Final = 30.0


class WorkFail(Exception):
    """Raise it in a job function to end the job with WORK_FAIL (no payload)."""


class WorkException(Exception):
    """Raise it in a job function to end the job with WORK_EXCEPTION carrying ``data``."""

    def __init__(self, data: bytes | str = b"") -> None:
        self.data = to_bytes(data, "data")
        super().__init__(self.data.decode("utf-8", "replace"))


class WorkerJob:
    """A job handed to a function.

    Attributes:
        handle: the job handle (str).
        function: the function name (str).
        unique: the job's unique id ("" if it has none).
        reducer: the reducer of a reduce job (only with ``grab="all"``; else "").
        data: the payload (bytes).
        server: ``host:port`` of the server it came from.
    """

    __slots__ = (
        "_assignment",
        "_sink",
        "data",
        "function",
        "handle",
        "reducer",
        "server",
        "unique",
    )

    def __init__(self, assignment: Assignment, server: str, sink: Callable[..., None]) -> None:
        self._assignment = assignment
        self._sink = sink
        self.handle = assignment.handle.decode("utf-8", "replace")
        self.function = assignment.function.decode("utf-8", "replace")
        self.unique = assignment.unique.decode("utf-8", "replace")
        self.reducer = assignment.reducer.decode("utf-8", "replace")
        self.data = assignment.data
        self.server = server

    def __repr__(self) -> str:
        return f"<WorkerJob {self.handle} {self.function} from {self.server}>"

    def send_data(self, data: bytes | str) -> None:
        """Send WORK_DATA: a piece of output that clients receive before the result."""
        self._sink(T.WORK_DATA, to_bytes(data, "data"))

    def send_warning(self, data: bytes | str) -> None:
        """Send WORK_WARNING."""
        self._sink(T.WORK_WARNING, to_bytes(data, "data"))

    def send_status(self, numerator: int, denominator: int) -> None:
        """Send WORK_STATUS (progress; GET_STATUS reports the last one). Non-negative ints."""
        if numerator < 0 or denominator < 0:
            raise ValueError("WORK_STATUS numbers must not be negative")
        self._sink(T.WORK_STATUS, b"%d" % numerator, b"%d" % denominator)


def outcome(result: object) -> tuple[int, tuple[bytes, ...]]:
    """The packet that ends a job whose function returned ``result``."""
    if result is None:
        return T.WORK_COMPLETE, (b"",)
    if isinstance(result, bytes | bytearray | memoryview | str):
        return T.WORK_COMPLETE, (to_bytes(result, "result"),)
    raise TypeError(f"a job function must return bytes, str or None, not {type(result).__name__}")


def failure(job: WorkerJob, exc: BaseException) -> tuple[int, tuple[bytes, ...]]:
    """The packet that ends a job whose function raised ``exc`` (logged unless deliberate)."""
    if isinstance(exc, WorkFail):
        return T.WORK_FAIL, ()
    if isinstance(exc, WorkException):
        return T.WORK_EXCEPTION, (exc.data,)
    log.warning("job %s (%s) raised", job.handle, job.function, exc_info=exc)
    return T.WORK_EXCEPTION, (f"{type(exc).__name__}: {exc}".encode(),)


class _WorkerBase:
    """What the two workers share: settings and function registration."""

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec],
        *,
        concurrency: int,
        client_id: str | bytes | None,
        grab: str,
        connect_timeout: float | None,
        send_timeout: float | None,
        max_packet_size: int,
        backoff: tuple[float, float],
    ) -> None:
        self.servers: list[Address] = parse_servers(servers)
        cid = None if client_id is None else to_field(client_id, "client_id")
        self._core = WorkerCore(concurrency, grab, cid)
        for address in self.servers:
            self._core.add_slot(str(address))
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.max_packet_size = max_packet_size
        self._backoff = Backoff(*backoff)
        self._functions: dict[bytes, Callable[[WorkerJob], Any]] = {}

    def function(
        self, name: str | None = None, *, timeout: float | None = None
    ) -> Callable[[F], F]:
        """Decorator: register the decorated function under ``name`` (default: its __name__).

        Args:
            name: the Gearman function name.
            timeout: seconds the server lets a job run before it requeues it (CAN_DO_TIMEOUT;
                servers round up to whole seconds, at least 1). None: no limit.
        """

        def register(fn: F) -> F:
            self.add_function(name or fn.__name__, fn, timeout=timeout)
            return fn

        return register

    def add_function(
        self, name: str | bytes, fn: Callable[[WorkerJob], Any], *, timeout: float | None = None
    ) -> None:
        """Register ``fn`` for function ``name`` (see :meth:`function`). Re-registering replaces.

        Raises:
            ValueError: an empty name, a name with NUL, or a negative timeout.
        """
        key = to_field(name, "function name")
        if not key:
            raise ValueError("the function name must not be empty")
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
        with self._locked():
            self._functions[key] = fn
            self._core.add_function(key, timeout)
        self._flush_all()

    def remove_function(self, name: str | bytes) -> None:
        """Stop taking jobs of ``name`` (CANT_DO; jobs already held still finish)."""
        key = to_field(name, "function name")
        with self._locked():
            self._functions.pop(key, None)
            self._core.remove_function(key)
        self._flush_all()

    @property
    def functions(self) -> list[str]:
        """The registered function names."""
        return [name.decode("utf-8", "replace") for name in self._functions]

    def _locked(self) -> Any:
        raise NotImplementedError

    def _flush_all(self) -> None:
        raise NotImplementedError


# -- the threaded worker ---------------------------------------------------------------------------


class Worker(_WorkerBase):
    """A worker that runs plain functions; :meth:`run` blocks the calling thread.

    Args:
        servers: one server or a list, as for :class:`~shardgear.client.Client`.
        concurrency: most jobs at once, across all servers. 1 runs each job on the thread that
            called :meth:`run`; more run them on a thread pool of that size.
        client_id: sent as SET_CLIENT_ID (the server's ``workers`` command shows it).
        grab: ``"uniq"`` (GRAB_JOB_UNIQ) or ``"all"`` (GRAB_JOB_ALL: also reducers).
        connect_timeout: seconds for each TCP connection attempt.
        send_timeout: seconds a server may take to accept what the worker sends before the
            connection is treated as broken.
        max_packet_size: the largest packet accepted from a server, in bytes.
        backoff: (first, most) seconds between reconnection attempts to a server; the delay
            doubles per failure in a row, with jitter.

    Raises:
        ValueError: a bad server address or setting.
    """

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] = "127.0.0.1:4730",
        *,
        concurrency: int = 1,
        client_id: str | bytes | None = None,
        grab: str = "uniq",
        connect_timeout: float | None = 10.0,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        backoff: tuple[float, float] = (0.1, 30.0),
    ) -> None:
        self._lock = threading.RLock()
        super().__init__(
            servers,
            concurrency=concurrency,
            client_id=client_id,
            grab=grab,
            connect_timeout=connect_timeout,
            send_timeout=send_timeout,
            max_packet_size=max_packet_size,
            backoff=backoff,
        )
        self._links: list[SyncLink | None] = [None] * len(self.servers)
        self._wake: tuple[socket.socket, socket.socket] | None = None  # while run() runs
        self._connecting: dict[int, _Connecting] = {}  # slot index -> connect in progress
        self._signals = 0  # SIGTERM / SIGINT received during run()
        self._stop_deadline: float | None = None
        self._stop_now = False
        self._running = False
        self._stopped = threading.Event()
        self._stopped.set()

    def _locked(self) -> Any:
        return self._lock

    # -- control -----------------------------------------------------------------------------------

    def stop(self, timeout: float | None = 30.0, *, wait: bool = False) -> None:
        """Stop gracefully: take no new job, finish the jobs held (for up to ``timeout``
        seconds; then disconnect anyway and the server requeues them), close the connections.

        Safe from any thread or a job function (:meth:`run` handles SIGTERM and SIGINT itself).
        With ``wait=True`` (not from a job function), return only once :meth:`run` has
        returned.

        With ``concurrency=1`` a job runs on :meth:`run`'s own thread, so the timeout takes
        effect when that job returns; with a pool, :meth:`run` returns at the timeout and the
        job's thread carries on (Python cannot stop a thread), its result dropped.
        """
        with self._lock:
            if self._stop_deadline is None:
                self._stop_deadline = deadline_of(timeout) or float("inf")
                self._core.stop()
        self._flush_all()
        self._poke()
        if wait:
            self._stopped.wait()

    def _poke(self) -> None:
        """Wake the loop in :meth:`run` (a byte on its socketpair)."""
        wake = self._wake
        if wake is None:
            return
        try:
            wake[1].send(b"\0")
        except OSError:
            pass  # full (a wake-up is already pending) or closed (run() has returned)

    def run(self, *, handle_signals: bool = True) -> None:
        """Serve jobs until :meth:`stop` (or, with ``handle_signals`` in the main thread, a
        SIGTERM or SIGINT: the first stops gracefully, a second at once; with ``concurrency=1``
        once the job that is running returns).

        Raises:
            RuntimeError: the worker is already running, or has no function registered.
        """
        with self._lock:
            if self._running:
                raise RuntimeError("this worker is already running")
            if not self._functions:
                raise RuntimeError("register a function before running the worker")
            self._running = True
            self._stopped.clear()
            self._signals = 0
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
        restore = self._install_signals() if handle_signals else {}
        pool = (
            concurrent.futures.ThreadPoolExecutor(self.concurrency, "shardgear-worker")
            if self.concurrency > 1
            else None
        )
        try:
            self._loop(pool)
        finally:
            for sig, old in restore.items():
                signal.signal(sig, old)
            with self._lock:
                for slot in self._core.slots:
                    self._close(slot, None, quiet=True)
                self._stop_deadline = None
                self._stop_now = False
                self._core.stopping = False
                self._running = False
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            wake, self._wake = self._wake, None
            if wake is not None:
                for end in wake:
                    end.close()
            self._stopped.set()

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: object) -> None:
            # only a flag and a wake-up: the interrupted code may hold the worker's locks
            self._signals += 1
            self._poke()

        return {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    # -- the loop ----------------------------------------------------------------------------------

    def _loop(self, pool: concurrent.futures.ThreadPoolExecutor | None) -> None:
        selector = selectors.DefaultSelector()
        assert self._wake is not None
        selector.register(self._wake[0], selectors.EVENT_READ, None)
        try:
            while True:
                now = time.monotonic()
                with self._lock:
                    if self._core.idle or self._stop_now:
                        return
                    if self._stop_deadline is not None and now >= self._stop_deadline:
                        log.warning("stop timeout: %d jobs still running", self._core.held)
                        return
                    stopping = self._core.stopping
                for slot in self._core.slots:
                    pending = self._connecting.get(slot.index)
                    if pending is not None and now >= pending.deadline:
                        self._connect_failed(slot, pending, selector, TimeoutError("timed out"))
                    elif (
                        pending is None
                        and self._links[slot.index] is None
                        and not stopping
                        and now >= slot.retry_at
                    ):
                        self._connect(slot, selector)
                for key, _ in selector.select(self._next_wait(stopping)):
                    if key.data is None:
                        self._drain_wakeups()
                    elif isinstance(key.data, _Connecting):
                        self._connected(key.data, selector)
                    else:
                        self._readable(key.data, selector, pool)
        finally:
            for pending in self._connecting.values():
                if pending.sock is not None:
                    pending.sock.close()
            self._connecting.clear()
            selector.close()

    def _next_wait(self, stopping: bool) -> float | None:
        now = time.monotonic()
        if stopping:
            if self._stop_deadline is None or self._stop_deadline == float("inf"):
                return None
            return max(0.0, self._stop_deadline - now)
        waits = [
            max(0.0, slot.retry_at - now)
            for slot in self._core.slots
            if self._links[slot.index] is None and slot.index not in self._connecting
        ]
        waits += [max(0.0, pending.deadline - now) for pending in self._connecting.values()]
        return min(waits) if waits else None

    def _drain_wakeups(self) -> None:
        assert self._wake is not None
        try:
            while self._wake[0].recv(4096):
                pass
        except OSError:
            pass
        if self._signals == 1 and self._stop_deadline is None:
            log.info("signal received: stopping gracefully")
            self.stop()
        elif self._signals > 1 and not self._stop_now:
            log.info("second signal: stopping now")
            self._stop_now = True

    def _connect(self, slot: Slot, selector: selectors.BaseSelector) -> None:
        """Start a non-blocking connect, so that a server that does not answer holds up
        nothing else (the loop finishes it in :meth:`_connected`)."""
        address = self.servers[slot.index]
        timeout = self.connect_timeout if self.connect_timeout is not None else float("inf")
        pending = _Connecting(slot, None, time.monotonic() + timeout)
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                address.host, address.port, type=socket.SOCK_STREAM
            )[0]
            pending.sock = sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except OSError as exc:
            self._connect_failed(slot, pending, selector, exc)
            return
        self._connecting[slot.index] = pending
        selector.register(sock, selectors.EVENT_WRITE, pending)

    def _connect_failed(
        self,
        slot: Slot,
        pending: _Connecting,
        selector: selectors.BaseSelector,
        exc: OSError,
    ) -> None:
        if self._connecting.pop(slot.index, None) is not None and pending.sock is not None:
            selector.unregister(pending.sock)
        if pending.sock is not None:
            pending.sock.close()
        slot.failures += 1
        slot.retry_at = time.monotonic() + self._backoff.delay(slot.failures)
        level = logging.WARNING if slot.failures == 1 else logging.DEBUG
        log.log(level, "cannot connect to %s: %s", slot.server, exc.strerror or exc)

    def _connected(self, pending: _Connecting, selector: selectors.BaseSelector) -> None:
        slot, sock = pending.slot, pending.sock
        assert sock is not None
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(slot, pending, selector, OSError(err, os.strerror(err)))
            return
        del self._connecting[slot.index]
        selector.unregister(sock)
        address = self.servers[slot.index]
        tune(sock)
        link = SyncLink(address, sock, Connection(str(address), self.max_packet_size))
        if slot.failures:
            log.warning("connected to %s again", address)
        slot.failures = 0
        with self._lock:
            self._links[slot.index] = link
            self._core.attach(slot, link.conn)
        selector.register(sock, selectors.EVENT_READ, slot)
        self._flush(slot)

    def _readable(
        self,
        slot: Slot,
        selector: selectors.BaseSelector,
        pool: concurrent.futures.ThreadPoolExecutor | None,
    ) -> None:
        link = self._links[slot.index]
        if link is None:
            return
        error: BaseException | None = None
        try:
            data = link.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data, error = b"", exc
        if not data:
            selector.unregister(link.sock)
            with self._lock:
                self._close(slot, error)
            return
        with self._lock:
            try:
                jobs = self._core.received(slot, link.conn.receive(data))
            except BadResponse as exc:
                selector.unregister(link.sock)
                self._close(slot, exc)
                return
        self._flush_all()
        for assignment in jobs:
            job = WorkerJob(assignment, slot.server, self._sink(slot, assignment))
            if pool is None:
                self._execute(slot, assignment, job)
            else:
                pool.submit(self._execute, slot, assignment, job)

    def _close(self, slot: Slot, error: BaseException | None, quiet: bool = False) -> None:
        """Drop a slot's connection (call with the lock held)."""
        link = self._links[slot.index]
        if link is None:
            return
        self._links[slot.index] = None
        link.conn.close(lost_error(link.address, error))
        link.close()
        lost = self._core.detach(slot)
        slot.retry_at = time.monotonic() + self._backoff.delay(1)
        if not quiet:
            log.warning("lost the connection to %s (%s)", link.address, error or "closed")
        if lost:
            log.warning(
                "%d job(s) from %s were running: the server requeues them", len(lost), link.address
            )

    # -- jobs --------------------------------------------------------------------------------------

    def _sink(self, slot: Slot, assignment: Assignment) -> Callable[..., None]:
        def send(ptype: int, *args: bytes) -> None:
            with self._lock:
                sent = self._core.update(slot, assignment, ptype, *args)
            if sent:
                self._flush(slot)

        return send

    def _execute(self, slot: Slot, assignment: Assignment, job: WorkerJob) -> None:
        fn = self._functions.get(assignment.function)
        try:
            if fn is None:
                raise WorkFail()
            ptype, args = outcome(fn(job))
        except Exception as exc:
            ptype, args = failure(job, exc)
        with self._lock:
            sent = self._core.finish(slot, assignment, ptype, *args)
            idle = self._core.idle
        if not sent:
            log.warning("result of job %s dropped: its connection was lost", job.handle)
        self._flush_all()
        if idle:
            self._poke()

    # -- sending -----------------------------------------------------------------------------------

    def _flush(self, slot: Slot) -> None:
        link = self._links[slot.index]
        if link is None:
            return
        try:
            link.flush(self._lock, deadline_of(self.send_timeout))
        except (OSError, Timeout) as exc:
            with self._lock:
                if self._links[slot.index] is link:
                    try:
                        link.sock.shutdown(socket.SHUT_RDWR)  # the loop sees EOF and closes it
                    except OSError:
                        pass
            log.debug("send to %s failed: %s", link.address, exc)

    def _flush_all(self) -> None:
        for slot in self._core.slots:
            self._flush(slot)


class _Connecting:
    """A connection attempt of the threaded worker's loop."""

    __slots__ = ("deadline", "slot", "sock")

    def __init__(self, slot: Slot, sock: socket.socket | None, deadline: float) -> None:
        self.slot = slot
        self.sock = sock
        self.deadline = deadline


# -- the asyncio worker ----------------------------------------------------------------------------


class AsyncWorker(_WorkerBase):
    """A worker on an asyncio loop: ``async def`` functions run as tasks; plain functions run
    on a thread pool of ``concurrency`` threads. Arguments as :class:`Worker`."""

    def __init__(
        self,
        servers: ServerSpec | Iterable[ServerSpec] = "127.0.0.1:4730",
        *,
        concurrency: int = 1,
        client_id: str | bytes | None = None,
        grab: str = "uniq",
        connect_timeout: float | None = 10.0,
        send_timeout: float | None = DEFAULT_SEND_TIMEOUT,
        max_packet_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        backoff: tuple[float, float] = (0.1, 30.0),
    ) -> None:
        super().__init__(
            servers,
            concurrency=concurrency,
            client_id=client_id,
            grab=grab,
            connect_timeout=connect_timeout,
            send_timeout=send_timeout,
            max_packet_size=max_packet_size,
            backoff=backoff,
        )
        self._links: list[AsyncLink | None] = [None] * len(self.servers)
        self._lost_events: list[asyncio.Event | None] = [None] * len(self.servers)
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._stop_deadline: float | None = None
        self._stop_now = False
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def _locked(self) -> Any:
        return _NoLock()

    def _flush_all(self) -> None:
        for link in self._links:
            if link is not None:
                link.flush()

    # -- control -----------------------------------------------------------------------------------

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop gracefully, as :meth:`Worker.stop`; :meth:`run` returns when done. Call it on
        the worker's loop (or from another thread: it hands itself to the loop)."""
        loop = self._loop
        if loop is not None and not _on_loop(loop):
            loop.call_soon_threadsafe(self.stop, timeout)
            return
        if self._stop_deadline is None:
            self._stop_deadline = deadline_of(timeout) or float("inf")
            self._core.stop()
            self._flush_all()
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Serve jobs until :meth:`stop` (or SIGTERM / SIGINT with ``handle_signals``: the first
        stops gracefully, a second at once).

        Raises:
            RuntimeError: already running, or no function registered.
        """
        if self._loop is not None:
            raise RuntimeError("this worker is already running")
        if not self._functions:
            raise RuntimeError("register a function before running the worker")
        loop = self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        signals = self._install_signals(loop) if handle_signals else []
        servers = [asyncio.create_task(self._serve(slot)) for slot in self._core.slots]
        try:
            while not (self._core.idle or self._stop_now):
                self._changed.clear()
                timeout = None
                if self._stop_deadline is not None and self._stop_deadline != float("inf"):
                    timeout = self._stop_deadline - time.monotonic()
                    if timeout <= 0:
                        log.warning("stop timeout: %d jobs still running", self._core.held)
                        break
                try:
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                except TimeoutError:
                    continue
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for task in [*servers, *self._tasks]:
                task.cancel()
            await asyncio.gather(*servers, *self._tasks, return_exceptions=True)
            for slot in self._core.slots:
                self._drop(slot, None)
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
            self._loop = None
            self._stop_deadline = None
            self._stop_now = False
            self._core.stopping = False

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []

        def handle(signum: int) -> None:
            if self._stop_deadline is None:
                log.info("signal %d: stopping gracefully", signum)
                self.stop()
            else:
                log.info("signal %d: stopping now", signum)
                self._stop_now = True
                self._notify()

        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, handle, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):
                pass
        return installed

    # -- connections -------------------------------------------------------------------------------

    async def _serve(self, slot: Slot) -> None:
        """Keep a connection to one server: connect, serve, reconnect with backoff."""
        address = self.servers[slot.index]
        while not self._core.stopping:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    link = await AsyncLink.open(
                        address,
                        None,
                        self.max_packet_size,
                        self._on_change,
                        self._on_lost,
                    )
            except (OSError, TimeoutError) as exc:
                slot.failures += 1
                level = logging.WARNING if slot.failures == 1 else logging.DEBUG
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
                log.log(level, "cannot connect to %s: %s", address, reason)
                await asyncio.sleep(self._backoff.delay(slot.failures))
                continue
            if slot.failures:
                log.warning("connected to %s again", address)
            slot.failures = 0
            lost = asyncio.Event()
            self._lost_events[slot.index] = lost
            self._links[slot.index] = link
            self._core.attach(slot, link.conn)
            self._flush_all()
            await lost.wait()
            if not self._core.stopping:
                log.warning("lost the connection to %s", address)
                await asyncio.sleep(self._backoff.delay(1))

    def _slot_of(self, link: AsyncLink) -> Slot | None:
        for slot in self._core.slots:
            if self._links[slot.index] is link:
                return slot
        return None

    def _on_change(self, link: AsyncLink, changed: list[Change]) -> None:
        slot = self._slot_of(link)
        if slot is None:
            return
        jobs = self._core.received(slot, changed)
        self._flush_all()
        for assignment in jobs:
            task = asyncio.create_task(self._execute(slot, assignment))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_lost(self, link: AsyncLink) -> None:
        slot = self._slot_of(link)
        if slot is not None:
            self._drop(slot, None)

    def _drop(self, slot: Slot, error: BaseException | None) -> None:
        link = self._links[slot.index]
        if link is None:
            return
        self._links[slot.index] = None
        link.conn.close(lost_error(link.address, error))
        link.close()
        lost = self._core.detach(slot)
        if lost:
            log.warning(
                "%d job(s) from %s were running: the server requeues them", len(lost), link.address
            )
        self._flush_all()
        event = self._lost_events[slot.index]
        if event is not None:
            event.set()
        self._notify()

    # -- jobs --------------------------------------------------------------------------------------

    def _sink(self, slot: Slot, assignment: Assignment) -> Callable[..., None]:
        loop = self._loop
        assert loop is not None

        def send(ptype: int, *args: bytes) -> None:
            if not _on_loop(loop):
                loop.call_soon_threadsafe(send, ptype, *args)
                return
            if self._core.update(slot, assignment, ptype, *args):
                self._flush_all()

        return send

    async def _execute(self, slot: Slot, assignment: Assignment) -> None:
        job = WorkerJob(assignment, slot.server, self._sink(slot, assignment))
        fn = self._functions.get(assignment.function)
        try:
            if fn is None:
                raise WorkFail()
            if inspect.iscoroutinefunction(fn):
                result = await fn(job)
            else:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(
                        self.concurrency, "shardgear-worker"
                    )
                result = await asyncio.get_running_loop().run_in_executor(self._pool, fn, job)
                if inspect.isawaitable(result):
                    result = await _await(result)
            ptype, args = outcome(result)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ptype, args = failure(job, exc)
        if not self._core.finish(slot, assignment, ptype, *args):
            log.warning("result of job %s dropped: its connection was lost", job.handle)
        self._flush_all()
        self._notify()


async def _await(value: Awaitable[Any]) -> Any:
    return await value


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
