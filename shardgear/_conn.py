"""The I/O halves of a connection to a server, one per API: :class:`SyncLink` (a non-blocking
socket driven by the calling threads) and :class:`AsyncLink` (an asyncio protocol). Both wrap a
sans-IO :class:`~shardgear._protocol.Connection` and do nothing Gearman-specific themselves.

Sockets are non-blocking with TCP_NODELAY (requests are small and answered one by one) and
SO_KEEPALIVE (a server that vanished without a FIN is noticed by the kernel eventually); every
wait is a ``poll`` with the caller's remaining time, so a socket's own timeout is never shared
between a thread that sends and one that reads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable

from shardgear._protocol import (
    BadResponse,
    Change,
    Connection,
    ConnectionLost,
    GearmanError,
    Pending,
    Timeout,
)
from shardgear._servers import Address

READ_SIZE = 256 * 1024


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value), None for no deadline.

    Raises:
        Timeout: the deadline has passed.
    """
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("timed out")
    return left


def deadline_of(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``timeout`` seconds from now (None: no deadline).

    Raises:
        ValueError: a negative timeout.
    """
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    return time.monotonic() + timeout


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY (requests are small and answered one by one) and SO_KEEPALIVE."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def _poll(sock: socket.socket, events: int, timeout: float | None) -> bool:
    fd = sock.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "the connection was closed")
    poller = select.poll()
    poller.register(fd, events)
    ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(poller.poll(ms))


class SyncLink:
    """A connection used by threads: one socket, one sans-IO Connection, one send lock.

    The owner's lock (``state``) guards the Connection; ``send_lock`` keeps bytes in the order
    the Connection produced them, whoever sends them. ``reading`` is True while one thread reads
    for everyone (the others wait on the owner's condition).
    """

    def __init__(self, address: Address, sock: socket.socket, conn: Connection) -> None:
        self.address = address
        self.sock = sock
        self.conn = conn
        self.send_lock = threading.Lock()
        self.reading = False

    @classmethod
    def open(cls, address: Address, timeout: float | None, max_packet_size: int) -> SyncLink:
        """Connect to ``address`` within ``timeout`` seconds.

        Raises:
            OSError: the connection failed (refused, unreachable, timed out ...).
        """
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
        try:
            tune(sock)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return cls(address, sock, Connection(str(address), max_packet_size))

    def flush(self, state: threading.Condition | threading.RLock, deadline: float | None) -> None:
        """Send what the Connection has queued, in order.

        Raises:
            OSError: the send failed (the connection is broken).
            Timeout: the server did not take the bytes in time.
        """
        with self.send_lock:
            with state:
                data = self.conn.data_to_send()
            if data:
                self.send_all(data, deadline)

    def send_all(self, data: bytes, deadline: float | None) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                _poll(self.sock, select.POLLOUT, remaining(deadline))
                continue
            view = view[sent:]

    def read(self, timeout: float | None) -> bytes | None:
        """Wait up to ``timeout`` seconds for bytes; None if none came, ``b""`` at EOF.

        Raises:
            OSError: the connection broke.
        """
        if not _poll(self.sock, select.POLLIN, timeout):
            return None
        try:
            return self.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None

    def dropped(self) -> bool:
        """Whether the server closed this idle connection (EOF or an error is waiting)."""
        try:
            if not _poll(self.sock, select.POLLIN, 0):
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def lost_error(address: Address, exc: BaseException | None) -> ConnectionLost:
    """The ConnectionLost for a connection to ``address`` that ended with ``exc`` (None: EOF)."""
    if exc is None:
        return ConnectionLost(f"{address} closed the connection")
    if isinstance(exc, GearmanError):
        return ConnectionLost(f"{address}: {exc}")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or repr(exc)
    return ConnectionLost(f"connection to {address} lost: {reason}")


class AsyncLink(asyncio.Protocol):
    """A connection on an asyncio event loop: the protocol feeds the sans-IO Connection and
    hands what changed to ``on_change`` (the owner wakes its waiters there).

    ``on_lost`` runs once when the connection ends, after the Connection has failed everything
    that waited on it.
    """

    def __init__(
        self,
        address: Address,
        max_packet_size: int,
        on_change: Callable[[AsyncLink, list[Change]], None],
        on_lost: Callable[[AsyncLink], None],
    ) -> None:
        self.address = address
        self.conn = Connection(str(address), max_packet_size)
        self.transport: asyncio.Transport | None = None
        self._on_change = on_change
        self._on_lost = on_lost
        self._can_write = asyncio.Event()
        self._can_write.set()

    @classmethod
    async def open(
        cls,
        address: Address,
        timeout: float | None,
        max_packet_size: int,
        on_change: Callable[[AsyncLink, list[Change]], None],
        on_lost: Callable[[AsyncLink], None],
    ) -> AsyncLink:
        """Connect within ``timeout`` seconds.

        Raises:
            OSError: the connection failed; TimeoutError when it took too long.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, link = await loop.create_connection(
                lambda: cls(address, max_packet_size, on_change, on_lost),
                address.host,
                address.port,
            )
        return link

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            changed = self.conn.receive(data)
        except BadResponse as exc:
            changed = self.conn.close(lost_error(self.address, exc))
            if self.transport is not None:
                self.transport.abort()
        if changed:
            self._on_change(self, changed)

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        changed = self.conn.close(lost_error(self.address, exc))
        self._can_write.set()
        if changed:
            self._on_change(self, changed)
        self._on_lost(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- for the owner -----------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.conn.closed is None and self.transport is not None

    def flush(self) -> None:
        """Write what the Connection has queued (never blocks; see :meth:`drain`)."""
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def dropped(self) -> bool:
        """Whether the server closed this idle connection though the loop has not seen it yet
        (a peek at the socket, as :meth:`SyncLink.dropped`)."""
        if self.transport is None:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as peek:
                if not _poll(peek, select.POLLIN, 0):
                    return False
                return peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        if not self._can_write.is_set():
            await self._can_write.wait()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def wait_for(pending: Pending, deadline: float | None) -> None:
    """Wait until ``pending`` changes (see :func:`wake`) or the deadline passes.

    Raises:
        Timeout: the deadline passed first.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    if pending.wakers is None:
        pending.wakers = []
    pending.wakers.append(wake)
    try:
        async with asyncio.timeout_at(_loop_deadline(loop, deadline)):
            await future
    except TimeoutError:
        raise Timeout("timed out") from None
    finally:
        pending.wakers.remove(wake)


def wake(changed: list[Change]) -> None:
    """Run the wakers of every request or job in ``changed``."""
    for item in changed:
        if isinstance(item, Pending) and item.wakers:
            for waker in list(item.wakers):
                waker()


def _loop_deadline(loop: asyncio.AbstractEventLoop, deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return loop.time() + (deadline - time.monotonic())


def is_refused(exc: OSError) -> bool:
    """Whether a failed connect says nothing listens there (so another server is safe to try)."""
    return exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
