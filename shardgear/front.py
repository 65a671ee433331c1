"""A front process: accepts connections, parses Gearman, and forwards work to the owning shards.

Theory of operation
-------------------
One epoll loop per front. Each turn of the loop:

1. reads every socket that is ready and parses complete events (`proto.Parser`);
2. handles what needs no shard at once (ECHO_REQ, OPTION_REQ, SET_CLIENT_ID, most admin
   commands, NO_JOB when the boards show no work), and appends everything else to the ring of the
   shard that owns it (by function name or by job handle, `routing`);
3. drains the rings from every shard and delivers what they say to the connections;
4. writes every connection's output once, flushes the rings and rings each shard's doorbell at most
   once.

House rules:

1. A reply goes out in the order of the request that asked for it. A connection keeps a FIFO of
   `Pending` entries, one per request that expects a reply; a shard's reply carries the request's
   sequence number and fills its entry, and output leaves only from the head of the FIFO. Anything
   else for the connection (WORK_* relays, NOOP) queues behind the entries already pending, so a
   client never sees WORK_COMPLETE before the JOB_CREATED of the same job.
2. The front keeps only per-connection state. Everything about jobs lives in the shards.
3. Nothing blocks: a full ring keeps its overflow in memory and the front stops reading sockets
   until the overflow drains; a connection that leaves too much output unread is closed.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final
from zlib import crc32

import orjson

from shardgear import (
    front_large,
    front_lease,
    front_submit,
    front_workers,
    grab,
    logs,
    messages,
    routing,
)
from shardgear.admin_commands import AdminCommands
from shardgear.config import Config
from shardgear.connection import CLOSED, DRAINING, E_DATA, E_SEQ, E_SHARD, Conn, Pending
from shardgear.front_recovery import ShardRestarts
from shardgear.front_security import FrontSecurity
from shardgear.gather import Gathers
from shardgear.instance import Instance
from shardgear.live_config import SettingsReader
from shardgear.log_limit import LogLimiter
from shardgear.memory import Trimmer
from shardgear.messages import HEADER
from shardgear.proto import errors
from shardgear.proto.packets import (
    MAX_PACKET_TYPE,
    NO_JOB_PACKET,
    NOOP_PACKET,
    SUBMIT_TYPES,
    WORK_TYPES,
    PacketType,
    error_packet,
    response,
)
from shardgear.proto.parser import (
    ADMIN_LINE_TYPE,
    LARGE_PACKET_TYPE,
    RESPONSE_MAGIC_TYPE,
    Frame,
    Parser,
)
from shardgear.replies import Replies
from shardgear.shm import layout
from shardgear.shm.channel import Receiver, Sender
from shardgear.shm.doorbell import announce_sleep, awake, fence
from shardgear.shm.ring import Ring
from shardgear.shm.segment import Segment
from shardgear.sockets import address_text, listeners
from shardgear.stats import ChildStats
from shardgear.unread import PartialCap

if TYPE_CHECKING:  # ssl is imported only when TLS is configured (front_security.py)
    import ssl

    from shardgear.tls import TLSStream

log = logging.getLogger("shardgear.front")

_SPENT_PARSER: Final = Parser()  # a closed connection's, so that its buffers can go

_NO_JOB_MESSAGE_SIZE: Final = messages.HEADER_SIZE + len(NO_JOB_PACKET)

# Plain ints for the hot paths (an IntEnum member costs a ~70 ns attribute lookup each time).
_SUBMIT_JOB: Final = int(PacketType.SUBMIT_JOB)
_WORK_COMPLETE: Final = int(PacketType.WORK_COMPLETE)
_WORK_FAIL: Final = int(PacketType.WORK_FAIL)
_WORK_EXCEPTION: Final = int(PacketType.WORK_EXCEPTION)
_INLINE_RESULTS: Final = frozenset({_WORK_COMPLETE, _WORK_EXCEPTION})
_WORK_STATUS: Final = int(PacketType.WORK_STATUS)
_OP_PACKET: Final = messages.OP_PACKET
_OP_REPLY: Final = messages.OP_REPLY
_OP_SEND: Final = messages.OP_SEND
_OP_LEASE: Final = messages.OP_LEASE
_pack_header = HEADER.pack
# What dispatch() does inline, by packet type (LARGE_PACKET_TYPE: a large body in pieces; index
# -1: response magic)
_K_OTHER, _K_SUBMIT, _K_WORK = range(3)
_KIND: Final = [_K_OTHER] * (MAX_PACKET_TYPE + 3)
for _t in (7, 18, 21, 32, 33, 34, 37, 38):  # SUBMIT_JOB* but EPOCH (checked by on_submit)
    _KIND[_t] = _K_SUBMIT
for _t in (13, 25, 28, 29):  # WORK_COMPLETE, _EXCEPTION, _DATA, _WARNING (not FAIL, STATUS)
    _KIND[_t] = _K_WORK

P = PacketType
GRAB_TYPES = frozenset({P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL})
REJECTED = frozenset(
    {5, 6, 8, 10, 11, 17, 19, 20, 24, 27, 31, 40, 42}
)  # response-type or unimplemented commands
READ_SIZE = 64 * 1024  # 256 KiB recv buffers cost 5x more (glibc serves them with mmap)
PAUSE_HIGH_WATER = 8 * 1024 * 1024  # bytes waiting for a ring before sockets stop being read
JOIN_LIMIT = 16 * 1024  # output up to this size is joined and sent with send(), not sendmsg()
QUICKACK_ABOVE = 64 * 1024  # a partial packet this big is being received: ACK every segment
TRIM_ABOVE = 1024 * 1024  # a connection closed with this much buffered counts for a heap trim
TRIM_STEP = 32 * 1024 * 1024  # trim each time this much of a large message went into the rings
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLL_ERRS = select.EPOLLERR | select.EPOLLHUP


class Front(Replies):
    """One front process. `run()` serves until SIGTERM."""

    def __init__(
        self, config: Config, index: int, instance: Instance, doorbells: list[int]
    ) -> None:
        super().__init__(config.output_limit, config.shards, config.total_output_limit)
        self.config = config
        self.index = index
        self.instance = instance
        self.shards = config.shards
        # doorbells: fronts' first, then shards'
        self.my_bell = doorbells[index]
        self.shard_bells = doorbells[config.fronts :]
        self.segments: list[Segment] = []
        self.senders: list[Sender] = []
        self.receivers: list[Receiver] = []
        self.boards: list[memoryview] = []
        for s in range(self.shards):
            out_seg = self._attach(instance.to_shard(index, s))
            in_seg = self._attach(instance.to_front(s, index))
            self.senders.append(Sender(Ring(out_seg.buf)))
            self.receivers.append(Receiver(Ring(in_seg.buf), messages.LARGE_MARKER))
            board_seg = self._attach(instance.board(s))
            self.boards.append(layout.board_view(board_seg.buf))
        self.settings = SettingsReader(self._attach(instance.settings).buf)
        self.stats = ChildStats(self._attach(instance.stats).buf, instance.front_slot(index))
        self.conns: dict[int, Conn] = {}  # by fd
        self.by_id: dict[int, Conn] = {}
        self.next_conn = (index << messages.FRONT_SHIFT) | ((os.getpid() & 0xFFFFFF) << 32)
        self.gathers = Gathers(self.owe, self.release)
        self.admin = AdminCommands(self)
        self.restarts = ShardRestarts(self)
        # the number of HELLOs seen from each shard, kept in every reply slot it is asked for
        self.shard_epochs = self.restarts.epochs
        self.outbox: list[list[bytes]] = [[] for _ in range(self.shards)]  # this loop turn's
        # our own SO_REUSEPORT socket, or the ones systemd passed (socket activation)
        self.listeners: list[socket.socket] = listeners(config.listen, config.port, config.backlog)
        self.epoll = select.epoll()
        self.security = FrontSecurity(self, config)
        self.grab_lease = config.grab_lease  # GRABs may be leasable (front_lease.py)
        self.running = True
        self.accepting = True
        self.paused = False
        self.control: memoryview | None = None
        self.packet_handlers: dict[int, Callable[[Conn, int, bytes], None]] = {}
        for t in SUBMIT_TYPES:
            self.packet_handlers[t] = self.on_submit
        for t in GRAB_TYPES:
            self.packet_handlers[t] = self.on_grab
        for t in WORK_TYPES:
            self.packet_handlers[t] = self.on_work
        self.packet_handlers.update(
            {
                P.CAN_DO: partial(front_workers.can_do, self),
                P.CAN_DO_TIMEOUT: partial(front_workers.can_do, self),
                P.CANT_DO: partial(front_workers.cant_do, self),
                P.RESET_ABILITIES: partial(front_workers.reset_abilities, self),
                P.PRE_SLEEP: partial(front_workers.pre_sleep, self),
                P.GET_STATUS: self.on_get_status,
                P.GET_STATUS_UNIQUE: self.on_get_status_unique,
                P.ECHO_REQ: self.on_echo,
                P.SET_CLIENT_ID: self.on_set_client_id,
                P.OPTION_REQ: self.on_option,
                RESPONSE_MAGIC_TYPE: self.on_response_magic,
            }
        )
        self.packet_handlers[P.SUBMIT_JOB_SCHED] = self.on_submit  # cron.py, on the shard
        for rejected in REJECTED:
            self.packet_handlers[rejected] = self.on_rejected
        # by type: 0 is an admin line, 1..42 the packet types, 43 a large packet in pieces, 44
        # (also index -1) response magic
        assert {t for t, k in enumerate(_KIND) if k == _K_SUBMIT} == SUBMIT_TYPES - {
            P.SUBMIT_JOB_EPOCH
        }
        assert {t for t, k in enumerate(_KIND) if k == _K_WORK} == WORK_TYPES - {
            P.WORK_FAIL,
            P.WORK_STATUS,
        }
        self.handler_table: list[Callable[[Conn, int, Any], None]] = [
            self.packet_handlers.get(t, self.on_unknown) for t in range(MAX_PACKET_TYPE + 3)
        ]
        self.handler_table[ADMIN_LINE_TYPE] = self.on_admin_line
        self.handler_table[LARGE_PACKET_TYPE] = partial(front_large.on_large, self)
        self.handler_table[RESPONSE_MAGIC_TYPE] = self.on_response_magic
        self.accept_log = LogLimiter(log)
        self.partial = PartialCap(config.total_input_limit)
        self.trimmer = Trimmer()
        self.pending_trimmed = 0  # the rings' overflow at the last trim (flush_shards)

    @staticmethod
    def clock() -> float:
        """Monotonic seconds (gather deadlines)."""
        return time.monotonic()

    def _attach(self, name: str) -> Segment:
        seg = Segment.attach(name)
        self.segments.append(seg)
        return seg

    # ------------------------------------------------------------------ loop

    def run(self, control: memoryview | None = None) -> None:
        """Bind, announce ourselves to every shard, and serve until stopped."""
        self.control = control
        listening = {sock.fileno(): sock for sock in self.listeners}
        for fd in listening:
            self.epoll.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)
        self.epoll.register(self.my_bell, EPOLLIN)
        self.security.start()
        for s in range(self.shards):
            self.send_shard(s, messages.pack(messages.OP_HELLO, 0, arg=self.index))
        self.flush_shards()
        bell = self.my_bell
        conns = self.conns
        in_rings = [r.ring for r in self.receivers]
        main_tls = self.security.main_context  # TLS on --port itself, else None
        handshaking = self.security.handshaking  # fd -> handshake; always empty without TLS
        tick = 0
        if control is not None:
            control[layout.CTRL_PID] = os.getpid()
            control[layout.CTRL_STATE] = layout.CHILD_READY
        while self.running:
            timeout = 1.0
            deadline = self.gathers.next_deadline()
            if deadline is not None:
                timeout = max(0.0, min(deadline - time.monotonic(), timeout))
            if handshaking:  # TLS handshakes in progress: wake up for their deadline
                deadline = self.security.next_deadline()
                if deadline is not None:
                    timeout = max(0.0, min(deadline - time.monotonic(), timeout))
            if not announce_sleep(in_rings):
                timeout = 0.0  # a shard wrote meanwhile: drain it, do not block
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                events = []
            awake(in_rings)
            for fd, ev in events:
                if fd == bell:
                    try:
                        os.eventfd_read(bell)
                    except BlockingIOError:
                        pass
                elif fd in listening:
                    self.accept(listening[fd], main_tls)
                else:
                    conn = conns.get(fd)
                    if conn is None:
                        self.security.event(fd)  # a TLS listener or handshake
                        continue
                    if ev & EPOLLOUT:
                        self.write(conn)
                    if ev & (EPOLLIN | EPOLL_ERRS) and not self.paused:
                        self.read(conn)
            self.drain_shards()
            if self.gathers:
                self.gathers.expire(time.monotonic())
            if handshaking:
                self.security.expire(time.monotonic())
            # Requests into the rings before replies onto sockets: a worker that has the reply
            # to its GRAB knows its WORK_COMPLETE before it is in shared memory, which outlives
            # this process.
            self.flush_shards()
            if self.writers:
                writers, self.writers = self.writers, set()
                for conn in writers:
                    self.write(conn)
            if self.closing:
                self.settle(time.monotonic())
            if self.owed_total > self.unread.limit:
                self.track_owing(self.conns.values())
            if self.unread:
                self.unread.enforce(self.close)
            if self.partial:
                self.partial.enforce(self.close)
            if self.trimmer.due:
                self.trimmer.maybe_trim()
            if any(self.outbox):  # a write that failed closed a connection: tell shards now
                self.flush_shards()
            tick += 1
            if control is not None:
                control[layout.CTRL_HEARTBEAT] = tick
                if self.settings.changed():  # a reload (live_config)
                    self.apply_settings(control)
            if not self.accepting and self.listeners:
                self.stop_accepting()
        self.shutdown()

    def apply_settings(self, control: memoryview) -> None:
        """Apply a reloaded config: log level, output limits; packet size and the exceptions
        option for new connections."""
        got = self.settings.read()
        if got is not None:
            generation, self.config = got
            logs.set_level(self.config.log_level)
            self.output_limit = self.config.output_limit
            self.grab_lease = self.config.grab_lease
            self.unread.limit = self.config.total_output_limit
            self.partial.limit = self.config.total_input_limit
            self.security.apply_access(self.config.access)
            control[layout.CTRL_SETTINGS] = generation

    def install_signals(self, early: list[int]) -> None:
        """Take over SIGTERM (stop) and SIGUSR1 (stop accepting), applying any that came early."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)
        for sig in early:
            (self._on_sigterm if sig == signal.SIGTERM else self._on_sigusr1)(sig, None)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.running = False
        os.eventfd_write(self.my_bell, 1)  # out of epoll now, not at its timeout

    def _on_sigusr1(self, signum: int, frame: object) -> None:
        self.accepting = False  # graceful shutdown: stop accepting, keep serving
        os.eventfd_write(self.my_bell, 1)

    def stop_accepting(self) -> None:
        for sock in self.listeners:
            # connections already queued on the listener are served, not reset
            self.accept(sock, self.security.main_context)
            self.epoll.unregister(sock.fileno())
            sock.close()
        self.listeners = []
        self.security.stop_accepting()

    def shutdown(self) -> None:
        for conn in list(self.conns.values()):
            if conn.out:
                try:
                    conn.sock.setblocking(True)
                    conn.sock.settimeout(0.5)
                    conn.sock.sendall(b"".join(conn.out))
                except OSError:
                    pass
            self.close(conn)
        self.flush_shards()
        for sock in self.listeners:
            sock.close()
        self.security.shutdown()
        for seg in self.segments:
            seg.close()

    # ----------------------------------------------------------- connections

    def accept(self, listener: socket.socket, tls: ssl.SSLContext | None) -> None:
        """Accept what is queued on `listener`; with `tls`, each starts a TLS handshake."""
        for _ in range(256):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.accept_log.error("accept", "cannot accept a connection: %s", exc)
                return
            ip = address_text(addr)
            if not self.security.admit(ip):  # connection limits
                sock.close()
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                self.security.start_tls(tls, sock, ip)
            else:
                self.add_conn(sock, ip)

    def add_conn(
        self,
        sock: socket.socket | TLSStream,
        ip: str,
        names: tuple[str, ...] = (),
        registered: bool = False,
    ) -> None:
        """Serve an accepted socket (a TLS one once its handshake is done: `registered` with
        epoll already) from peer address `ip`, with certificate `names`."""
        self.next_conn += 1
        conn = Conn(
            self.next_conn,
            sock,
            Parser(max_packet_size=self.config.max_packet_size, large_pieces=True),
            self.config.exceptions,
            ip,
        )
        conn.names = names
        conn.rights = self.security.rights_for(ip, names)
        self.conns[conn.fd] = conn
        self.by_id[conn.id] = conn
        if registered:
            self.epoll.modify(conn.fd, EPOLLIN)
        else:
            self.epoll.register(conn.fd, EPOLLIN)
        self.stats.block[layout.ST_ACCEPTED] += 1

    def close(self, conn: Conn) -> None:
        """Forget a connection and tell every shard that may hold state for it. Idempotent.

        The connection is known by its object: its fd number may already belong to a newer
        connection by the time a late reply, gather or failed write closes it again."""
        if conn.closed:
            return
        conn.closed = True
        self.stats.block[layout.ST_CLOSED] += 1
        conn.closing = CLOSED
        if self.closing:
            self.closing.pop(conn, None)
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        self.by_id.pop(conn.id, None)
        self.writers.discard(conn)
        try:
            self.epoll.unregister(conn.fd)
        except OSError:
            pass
        conn.sock.close()
        # Let its buffers go now (a late reply or gather may keep the object a while).
        dropped = conn.out_bytes + conn.parser.buffered
        conn.out.clear()
        conn.out_bytes = 0
        self.forget_owed(conn)
        conn.parser = _SPENT_PARSER
        if dropped > TRIM_ABOVE:
            self.trimmer.freed(dropped)
        self.security.release(conn)
        mask = conn.shards_used
        s = 0
        while mask:
            if mask & 1:
                self.send_shard(s, HEADER.pack(messages.OP_DISCONNECT, 0, 0, conn.id))
            mask >>= 1
            s += 1

    def read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset: nothing can reach the peer any more
            self.close(conn)
            return
        if not data:  # FIN: answer what was asked, then close (shardgear.replies, "Closing")
            self.end_of_input(conn, time.monotonic())
            if conn.closing == DRAINING:
                self.epoll.modify(conn.fd, EPOLLOUT if conn.want_write else 0)
            return
        if conn.closing:  # input after a protocol error is dropped
            return
        try:
            frames = conn.parser.feed_frames(data)
        except errors.ProtocolError as exc:
            # Handle what was framed before the bad bytes (as gearmand does), then refuse.
            self.dispatch(conn, getattr(exc, "events", ()))  # type: ignore[arg-type]
            error = None
            if isinstance(exc, errors.PacketTooLarge):
                error = error_packet(b"ARGUMENT_TOO_LARGE", str(exc).encode())
            self.refuse(conn, str(exc), error, time.monotonic())
            return
        self.dispatch(conn, frames)
        if not frames and conn.parser.buffered > QUICKACK_ABOVE and not conn.closed:
            # In the middle of a large packet. A client with a small SO_SNDBUF (libgearman:
            # 32 KiB) has one segment in flight, which the kernel would ACK only after its
            # delayed-ACK timer (~40 ms a segment: 16 MiB took 11 s instead of 0.3 s).
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            self.partial.note(conn)

    def dispatch(self, conn: Conn, frames: list[Frame]) -> None:
        """Handle the frames of one read. The data path (SUBMIT_JOB*, WORK_*) is inlined here,
        as the handlers would do it: it is most of what a front does."""
        handlers = self.handler_table
        nshards = self.shards
        pack = _pack_header
        for ptype, body in frames:
            kind = _KIND[ptype]
            if kind == _K_SUBMIT:  # as on_submit
                end = body.find(b"\0")
                if end >= 0 and conn.rights is None:  # else on_submit checks the access rules
                    shard = 0 if nshards == 1 else crc32(body[:end]) % nshards
                    conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
                    conn.pending.append([seq, shard, ptype, self.shard_epochs[shard], None])
                    conn.shards_used |= 1 << shard
                    self.outbox[shard].append(pack(_OP_PACKET, ptype, seq, conn.id) + body)
                    continue
            elif kind == _K_WORK:  # as on_work
                end = body.find(b"\0")
                _, sep, number = (body if end < 0 else body[:end]).rpartition(b":")
                if sep and number.isdigit() and len(number) <= 19:
                    n = int(number)
                    if n >= 1:
                        shard = (n - 1) % nshards
                        conn.shards_used |= 1 << shard
                        self.outbox[shard].append(pack(_OP_PACKET, ptype, 0, conn.id) + body)
                        if ptype in _INLINE_RESULTS:
                            self.restarts.results.remember(shard, conn.id, ptype, body)
                        continue
            handlers[ptype](conn, ptype, body)
            if conn.closing:  # closed, or refusing input after a protocol error
                return

    def write(self, conn: Conn) -> None:
        """Send what the connection has waiting; watch for EPOLLOUT if the socket is full."""
        out = conn.out
        self.writers.discard(conn)
        if not out or conn.closed:
            return
        try:
            data: bytes | memoryview | None
            if len(out) == 1:
                data = out[0]
                sent = conn.sock.send(data)
            elif conn.out_bytes <= JOIN_LIMIT:
                # a few small packets: one join is cheaper than sendmsg's iovec and the
                # bookkeeping below
                data = b"".join(out)
                out.clear()
                out.append(data)
                sent = conn.sock.send(data)
            else:
                # scatter-gather: a slow reader's backlog is never joined or copied as a whole
                data = None
                sent = conn.sock.sendmsg(out[:512])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(conn)
            return
        conn.out_bytes -= sent
        conn.sent += sent
        if sent >= TRIM_ABOVE:  # a large message is leaving: its pieces are let go
            self.trimmer.freed(sent)
        if data is not None and sent == len(data):  # all of a single buffer
            out.clear()
        elif data is not None:  # out is [data]
            if sent:
                out[0] = memoryview(data)[sent:]
        else:
            done = 0
            for chunk in out:
                n = len(chunk)
                if sent < n:
                    if sent:
                        out[done] = memoryview(chunk)[sent:]
                    break
                sent -= n
                done += 1
            del out[:done]
        if not out:
            if conn.want_write:
                conn.want_write = False
                self.epoll.modify(conn.fd, conn.rmask)
        elif not conn.want_write:
            conn.want_write = True
            self.unread.note(conn)
            self.epoll.modify(conn.fd, conn.rmask | EPOLLOUT)

    # ------------------------------------------------------------ the rings

    def send_shard(self, shard: int, message: bytes) -> None:
        self.outbox[shard].append(message)

    def flush_shards(self) -> None:
        """Move this turn's messages into the rings (one publish per ring) and ring doorbells."""
        pending = 0
        outbox = self.outbox
        wrote = 0  # bit mask of the rings written this call
        for s, sender in enumerate(self.senders):
            box = outbox[s]
            if box:
                outbox[s] = []
                sender.send_many(box)
            if sender.flush():
                wrote |= 1 << s
            pending += sender.pending
        if wrote:
            # Ring only a shard that announced sleep (shm/doorbell.py); a busy one will see the
            # records before it blocks.
            fence()
            for s, sender in enumerate(self.senders):
                if wrote >> s & 1 and sender.ring.consumer_sleeping:
                    os.eventfd_write(self.shard_bells[s], 1)
        if pending < self.pending_trimmed - TRIM_STEP:
            # A large message is moving into a ring: give its pieces' pages back as it goes, or
            # the front would keep all of it resident while the shard receives it.
            self.trimmer.freed(self.pending_trimmed - pending)
            self.trimmer.maybe_trim(0.0)
            self.pending_trimmed = pending
        elif pending > self.pending_trimmed:
            self.pending_trimmed = pending
        paused = pending > PAUSE_HIGH_WATER
        if paused != self.paused:
            self.paused = paused
            if paused:
                self.stats.block[layout.ST_PAUSES] += 1
            log.debug("reading from sockets %s", "paused" if paused else "resumed")

    def drain_shards(self) -> None:
        by_id = self.by_id
        unpack = HEADER.unpack_from
        limit = self.output_limit
        writers = self.writers
        receivers = self.receivers
        for s, receiver in enumerate(receivers):
            msgs = receiver.receive()
            if not msgs:
                continue
            for m in msgs:
                op, arg, extra, conn_id = unpack(m)
                if op == _OP_REPLY:
                    conn = by_id.get(conn_id)
                    if conn is None:
                        continue
                    if (
                        len(m) == _NO_JOB_MESSAGE_SIZE
                        and m[16:] == NO_JOB_PACKET
                        and grab.regrab(self, conn, s, extra)
                    ):
                        continue
                    pending = conn.pending
                    if pending:
                        head = pending[0]
                        if head[E_SEQ] == extra and head[E_SHARD] == s:
                            # the usual case: a shard answers a connection's requests in order
                            pending.popleft()
                            data = m[16:]
                            conn.out.append(data)
                            conn.out_bytes += len(data)
                            if conn.out_bytes > limit and self.overflowed(conn):
                                continue
                            if not conn.want_write:
                                writers.add(conn)
                            if pending and pending[0][E_DATA] is not None:
                                self.release(conn)
                            continue
                    self.fill(conn, s, extra, m[16:])
                elif op == _OP_LEASE:
                    front_lease.arrived(self, s, arg, conn_id, m)
                elif op == _OP_SEND:
                    conn = by_id.get(conn_id)
                    if conn is not None:
                        if conn.pending:
                            entry: Pending = [-1, -1, 0, 0, None]
                            conn.pending.append(entry)
                            self.owe(conn, entry, m[16:])
                        else:
                            data = m[16:]
                            conn.out.append(data)
                            conn.out_bytes += len(data)
                            if conn.out_bytes > limit and self.overflowed(conn):
                                pass
                            elif not conn.want_write:
                                writers.add(conn)
                else:
                    self.control_message(s, op, extra, conn_id, m)
        # A shard that found its ring full waits for room (also after a fragment alone): the
        # head stores of the receives above, then a fence, then its flag (shm/doorbell.py).
        fence()
        for s, receiver in enumerate(receivers):
            if receiver.producer_wants_wake():
                os.eventfd_write(self.shard_bells[s], 1)

    def control_message(self, s: int, op: int, extra: int, conn_id: int, m: bytes) -> None:
        """A message from shard `s` off the data path (anything but OP_REPLY and OP_SEND)."""
        if op == messages.OP_LARGE:
            front_large.from_shard(self, s, self.receivers[s].take_large())
            return
        conn = self.by_id.get(conn_id)
        if op == messages.OP_WAKE:
            if conn is not None and conn.sleeping and not conn.noop_sent:
                conn.noop_sent = True
                self.reply(conn, NOOP_PACKET)
        elif op == messages.OP_EXCEPTION:
            if conn is not None:
                self.relay_exception(conn, m[16:])
        elif op == messages.OP_RECALL:
            front_lease.recalled(self, s, conn_id, m[16:])
        elif op == messages.OP_CLOSE:  # the shard found a protocol error gearmand closes for
            if conn is not None:
                for entry in conn.pending:  # no reply will come for the refused request
                    if entry[E_SHARD] == s and entry[E_DATA] is None:
                        self.owe(conn, entry, b"")
                self.release(conn)
                self.refuse(conn, "request refused by the shard", None, time.monotonic())
        elif op == messages.OP_ADMIN_REPLY:
            self.gathers.part(extra, orjson.loads(m[16:]))
        elif op == messages.OP_RELAY:
            self.admin.answer_relay(s, conn_id, extra, m[16:])
        elif op == messages.OP_RELAY_REPLY:
            self.gathers.part(extra, m[16:])
        elif op == messages.OP_HELLO:
            self.restarts.shard_started(s)
        elif op == messages.OP_PONG:
            self.restarts.fail_lost_requests(s, extra)

    def relay_exception(self, conn: Conn, body: bytes) -> None:
        if conn.exceptions:
            self.reply(conn, response(P.WORK_EXCEPTION, body))
        else:
            # gearmand sends "HANDLE\0" here (a stray NUL); the handle alone is the correct form.
            self.reply(conn, response(P.WORK_FAIL, body.split(b"\0", 1)[0]))

    # ------------------------------------------------------ binary requests

    def forward(self, conn: Conn, shard: int, ptype: int, body: bytes, seq: int = 0) -> None:
        conn.shards_used |= 1 << shard
        self.outbox[shard].append(_pack_header(_OP_PACKET, ptype, seq, conn.id) + body)
        if ptype == _WORK_FAIL:
            self.restarts.results.remember(shard, conn.id, ptype, body)

    def forward_for_reply(self, conn: Conn, shard: int, ptype: int, body: bytes) -> None:
        """forward + expect, in one call."""
        conn.seq = seq = (conn.seq + 1) & 0xFFFFFFFF
        conn.pending.append([seq, shard, ptype, self.shard_epochs[shard], None])
        conn.shards_used |= 1 << shard
        self.outbox[shard].append(_pack_header(_OP_PACKET, ptype, seq, conn.id) + body)

    def count_close(self) -> None:
        """A connection was refused or closed as too slow (the metrics' protocol closes)."""
        self.stats.block[layout.ST_PROTOCOL_CLOSES] += 1

    def protocol_close(self, conn: Conn, why: str) -> None:
        """A malformed field gearmand closes the connection for (no ERROR packet)."""
        self.refuse(conn, why, None, time.monotonic())

    def shut_write(self, conn: Conn) -> None:
        """Send FIN after the last reply and drop input until the peer closes (LINGERING)."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.rmask = EPOLLIN
        self.epoll.modify(conn.fd, EPOLLIN)

    def on_submit(self, conn: Conn, ptype: int, body: bytes) -> None:
        if front_submit.check(self, conn, ptype, body, True) == front_submit.FORWARD:
            end = body.find(b"\0")
            self.forward_for_reply(conn, routing.shard_for(body[:end], self.shards), ptype, body)

    def on_grab(self, conn: Conn, ptype: int, body: bytes) -> None:
        conn.sleeping = False
        conn.noop_sent = False
        if conn.lease is not None and front_lease.use(self, conn, ptype):
            return  # answered from the worker's lease, or sent to its shard
        if conn.lease_wait and front_lease.waited(self, conn, ptype):
            return
        best = grab.pick(conn, 0)
        if best < 0:
            self.reply(conn, NO_JOB_PACKET)
            return
        func, shard = grab.rotate(conn, best)
        if self.grab_lease and front_lease.one_shard(self, conn) == shard:
            front_lease.send_leasable(self, conn, ptype, shard)
        else:
            grab.send(self, conn, ptype, shard, ptype, func)

    def on_work(self, conn: Conn, ptype: int, body: bytes) -> None:
        end = body.find(b"\0")
        handle = body if end < 0 else body[:end]
        if ptype == _WORK_FAIL and len(handle) >= 64:
            self.reply(conn, error_packet(*errors.ERR_HANDLE_TOO_LARGE))
            return
        if ptype == _WORK_STATUS:
            parts = body.split(b"\0", 2)
            if len(parts) == 3 and len(parts[2]) > 11:
                self.protocol_close(conn, "WORK_STATUS denominator too long")
                return
        shard = routing.shard_for_handle(handle, self.shards)
        if shard is None:
            self.reply(conn, error_packet(*errors.not_found_error(ptype)))
            return
        self.forward(conn, shard, ptype, body)

    def on_get_status(self, conn: Conn, ptype: int, body: bytes) -> None:
        if len(body) >= 64:
            self.protocol_close(conn, "GET_STATUS handle too long")
            return
        shard = routing.shard_for_handle(body, self.shards)
        if shard is None:
            self.reply(conn, response(P.STATUS_RES, body, b"0", b"0", b"0", b"0"))
            return
        if conn.rights is not None and self.security.status_restricted:
            self.security.get_status(conn, body, shard)
            return
        self.forward_for_reply(conn, shard, ptype, body)

    def on_get_status_unique(self, conn: Conn, ptype: int, body: bytes) -> None:
        if len(body) >= 65:
            self.protocol_close(conn, "GET_STATUS_UNIQUE unique too long")
            return
        if conn.rights is not None and self.security.status_restricted:
            self.security.get_status_unique(conn, body)
        else:
            self.admin.status_unique(conn, body)

    def on_echo(self, conn: Conn, ptype: int, body: bytes) -> None:
        self.reply(conn, response(P.ECHO_RES, body))

    def on_set_client_id(self, conn: Conn, ptype: int, body: bytes) -> None:
        conn.client_id = body[:127] or b"-"

    def on_option(self, conn: Conn, ptype: int, body: bytes) -> None:
        if body.lower() == b"exceptions":
            conn.exceptions = True
            self.reply(conn, response(P.OPTION_RES, body))
        else:
            self.reply(conn, error_packet(*errors.ERR_UNKNOWN_OPTION))

    def on_response_magic(self, conn: Conn, ptype: int, body: bytes) -> None:
        self.reply(conn, error_packet(*errors.ERR_MAGIC_REQ_EXPECTED))

    def on_rejected(self, conn: Conn, ptype: int, body: bytes) -> None:
        self.reply(conn, error_packet(*errors.ERR_COMMAND_NOT_EXPECTED))

    def on_unknown(self, conn: Conn, ptype: int, body: bytes) -> None:
        self.reply(conn, error_packet(*errors.ERR_COMMAND_NOT_EXPECTED))

    def on_admin_line(self, conn: Conn, ptype: int, tokens: list[bytes]) -> None:
        self.admin.run(conn, tokens)
