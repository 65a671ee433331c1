"""The generator process: one epoll loop driving many Gearman client and worker connections.

Theory of operation
1. The parent (``runner``) spawns ``procs`` of these. Each gets a :class:`Plan` (its share of
   the client and worker connections and of the job count), the :class:`~bench.config.Load`,
   and a shared array of u64 counters: one slot of ``NFIELDS`` per process, written only by
   that process, plus a control area written only by the parent (go / stop submitting / exit).
2. Setup: connect everything; workers send CAN_DO for each function and an ECHO_REQ, and wait
   for the ECHO_RES so the server has registered them before any job is submitted. Then set
   READY and wait for GO.
3. Clients keep ``inflight`` submissions outstanding per connection. A foreground submission
   is outstanding until its WORK_COMPLETE; a background one until its JOB_CREATED. JOB_CREATED
   answers come back in submission order on a connection, so a FIFO of submit times maps each
   to its handle; a handle maps to the submit time(s) of the foreground jobs waiting on it
   (several when coalesced).
4. Every payload starts with ``PREFIX``: submit time (CLOCK_MONOTONIC ns, one clock for all
   processes on the machine), the run id, and a background flag. Workers use it to time
   background jobs (submit -> worker's WORK_COMPLETE) and to ignore jobs left over from an
   earlier run.
5. Background jobs are throttled by a soft global backlog cap: clients read every process's
   "distinct background jobs created" and "background jobs executed" counters.
6. Workers do one job at a time: GRAB -> JOB_ASSIGN -> (work time) -> WORK_COMPLETE + GRAB in
   one write, sent at once; NO_JOB -> PRE_SLEEP; NOOP -> GRAB. They never poll.
7. Client writes are batched: each loop iteration appends packets to per-connection lists and
   sends each connection's batch with one ``send``.
8. Latencies (µs) go into ``array('q')`` buffers flushed into ``Counter`` histograms (exact at
   1 µs), which the parent merges.

The file is long on purpose: the client and worker hot paths share the loop's state and stay in
one class, with no calls across modules per packet. Wire constants are in ``wire``, the split of
the load in ``plan``.
"""

from __future__ import annotations

import heapq
import os
import random
import resource
import select
import socket
import ssl
import time
import traceback
from array import array
from collections import Counter, deque
from typing import Any

from bench.config import GRABS, PAYLOAD_PREFIX, Load
from bench.plan import PATTERN, Plan, build_pattern
from bench.wire import (
    ASSIGN_FIELDS,
    C_EXIT,
    C_GO,
    C_GO_NS,
    C_STOP_SUBMIT,
    CAN_DO,
    ECHO_REQ,
    ECHO_RES,
    ERROR,
    F_ACKED,
    F_BG_ACKED,
    F_BG_DISTINCT,
    F_BG_EXEC,
    F_COALESCED,
    F_ERRORS,
    F_EXEC_ALL,
    F_FAILED,
    F_FG_DONE,
    F_IDLE,
    F_READY,
    F_SUBMITTED,
    HDR,
    JOB_CREATED,
    NFIELDS,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    PREFIX,
    REQ,
    RES,
    SET_CLIENT_ID,
    WORK_COMPLETE,
    WORK_DATA,
    WORK_EXCEPTION,
    WORK_FAIL,
    WORK_STATUS,
    WORK_WARNING,
    func_names,
    packet,
)
from shardgear.tls import TLSStream

RECV_SIZE = 1 << 16  # below malloc's mmap threshold: a 256 KiB recv costs 5x more
LAT_FLUSH = 1 << 18
IDLE_POLL = 0.02
BLOCKED_POLL = 0.001


class Conn:
    __slots__ = ("dead", "fd", "name", "out", "rbuf", "sock", "wbuf")

    def __init__(self, sock: socket.socket, name: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.name = name
        self.out: list[bytes] = []
        self.rbuf = b""
        self.wbuf = b""
        self.dead = False


class ClientConn(Conn):
    __slots__ = (
        "fgmap",
        "index",
        "inflight",
        "pend",
        "pi",
        "quota",
        "recent",
        "recent_bg",
        "seq",
        "tag",
    )

    def __init__(self, sock: socket.socket, name: str, index: int, quota: int) -> None:
        super().__init__(sock, name)
        self.index = index
        self.quota = quota  # -1: unlimited (duration mode)
        self.inflight = 0
        self.pend: deque[int] = deque()  # submit_ns * 2 + is_bg, awaiting JOB_CREATED
        self.fgmap: dict[bytes, Any] = {}  # handle -> submit_ns or [submit_ns, ...]
        self.recent: deque[bytes] = deque(maxlen=64)  # recent uniques, for coalescing
        self.recent_bg: dict[bytes, None] = {}
        self.seq = 0
        self.pi = index * 7919 % PATTERN
        self.tag = b""


class WorkerConn(Conn):
    __slots__ = ("index", "sleeping")

    def __init__(self, sock: socket.socket, name: str, index: int) -> None:
        super().__init__(sock, name)
        self.index = index
        self.sleeping = False


class Driver:
    """One generator process's connections, counters and loop."""

    def __init__(self, load: Load, plan: Plan, shared: memoryview, nprocs: int) -> None:
        self.load = load
        self.plan = plan
        self.shared = shared
        self.slot = plan.index * NFIELDS
        self.ctrl = nprocs * NFIELDS
        self.nprocs = nprocs
        self.funcs = func_names(load)
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.clients: list[ClientConn] = []
        self.workers: list[WorkerConn] = []
        self.patterns: dict[int, list[tuple[Any, ...]]] = {}
        self.pad = b"x" * load.payload[1]
        self.result = b"r" * load.result_size
        self.grab = packet(GRABS[load.grab])
        self.pre_sleep = packet(PRE_SLEEP)
        self.timers: list[tuple[int, int, WorkerConn, bytes]] = []
        self.timer_seq = 0
        self.work_rng = random.Random(load.seed + 77 + plan.index)
        # counters
        self.submitted = self.acked = self.fg_done = self.bg_acked = 0
        self.bg_distinct = self.bg_exec = self.exec_all = self.errors = 0
        self.coalesced = self.stale = self.stray = self.lost = 0
        self.bg_pending = 0  # background submissions awaiting JOB_CREATED
        self.quota_left = 0
        self.stopping = False
        self.last_ns = 0
        self.error_samples: list[str] = []
        self.lat_fg = array("q")
        self.lat_bg = array("q")
        self.lat_ack = array("q")
        self.hist_fg: Counter[int] = Counter()
        self.hist_bg: Counter[int] = Counter()
        self.hist_ack: Counter[int] = Counter()

    # ---------------------------------------------------------------- setup
    def connect(self) -> None:
        timeout = self.load.connect_timeout
        for index, host, port, quota in self.plan.clients:
            sock = self._open(host, port, timeout, self.load)
            c = ClientConn(sock, f"client{index}@{host}:{port}", index, quota)
            c.tag = b"u%d.%d.%d." % (self.load.run_id, index, os.getpid())
            self.patterns[index] = build_pattern(self.load, index, self.funcs)
            if quota > 0:
                self.quota_left += quota
            self.clients.append(c)
            self._register(c)
        for index, host, port in self.plan.workers:
            sock = self._open(host, port, timeout, self.load)
            w = WorkerConn(sock, f"worker{index}@{host}:{port}", index)
            hello = [packet(SET_CLIENT_ID, b"shardgear-bench-%d" % index)]
            hello += [packet(CAN_DO, f) for f in self.funcs]
            hello.append(packet(ECHO_REQ, b"ready"))
            sock.sendall(b"".join(hello))
            self._await_echo(sock, timeout)
            self.workers.append(w)
            self._register(w)
        for c in self.conns.values():
            c.sock.setblocking(False)

    @staticmethod
    def _open(host: str, port: int, timeout: float, load: Load) -> Any:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not load.tls_ca:
            return sock
        # TLS: the handshake blocks here (setup); then a TLSStream gives the loop a socket's
        # non-blocking interface (BlockingIOError where ssl says "want read/write").
        ctx = ssl.create_default_context(cafile=load.tls_ca)
        ctx.load_cert_chain(load.tls_cert, load.tls_key)
        return TLSStream(ctx.wrap_socket(sock, server_hostname=host), ())

    @staticmethod
    def _await_echo(sock: socket.socket, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection during worker setup")
            buf += chunk
            pos = 0
            while len(buf) - pos >= 12:
                magic, ptype, size = HDR.unpack_from(buf, pos)
                if magic != RES:
                    raise ConnectionError(f"not a Gearman response: {buf[pos : pos + 12]!r}")
                if len(buf) - pos < 12 + size:
                    break
                if ptype == ECHO_RES:
                    return
                if ptype == ERROR:
                    raise ConnectionError(
                        f"ERROR during setup: {buf[pos + 12 : pos + 12 + size]!r}"
                    )
                pos += 12 + size
            buf = buf[pos:]
        raise TimeoutError("no ECHO_RES during worker setup")

    def _register(self, c: Conn) -> None:
        self.conns[c.fd] = c
        self.ep.register(c.fd, select.EPOLLIN)

    # ---------------------------------------------------------------- errors
    def note_error(self, msg: str, n: int = 1) -> None:
        self.errors += n
        if len(self.error_samples) < 10:
            self.error_samples.append(msg)

    def conn_lost(self, c: Conn, why: str) -> None:
        if c.dead:
            return
        c.dead = True
        n = 1
        if isinstance(c, ClientConn):
            n = max(1, c.inflight)
            self.bg_pending -= sum(e & 1 for e in c.pend)
            c.inflight = 0
            c.pend.clear()
            c.fgmap.clear()
            if c.quota > 0:
                self.quota_left -= c.quota
                self.lost += c.quota
                c.quota = 0
        self.note_error(f"{c.name}: connection lost: {why}", n)
        try:
            self.ep.unregister(c.fd)
        except (OSError, ValueError):
            pass
        c.sock.close()

    # ---------------------------------------------------------------- reading
    def read_client(self, c: ClientConn, now: int) -> None:
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self.conn_lost(c, str(e))
            return
        if not data:
            self.conn_lost(c, "closed by server")
            return
        if c.rbuf:
            data = c.rbuf + data
        n = len(data)
        pos = 0
        unpack = HDR.unpack_from
        fgmap = c.fgmap
        pend = c.pend
        lat_fg = self.lat_fg
        done = 0
        while n - pos >= 12:
            magic, ptype, size = unpack(data, pos)
            end = pos + 12 + size
            if end > n:
                break
            if ptype == WORK_COMPLETE:
                body = data[pos + 12 : end]
                i = body.find(b"\0")
                v = fgmap.pop(body[:i] if i >= 0 else body, None)
                if v is None:
                    self.stray += 1
                elif type(v) is int:
                    lat_fg.append((now - v) // 1000)
                    done += 1
                else:
                    for ts in v:
                        lat_fg.append((now - ts) // 1000)
                    done += len(v)
            elif ptype == JOB_CREATED:
                h = data[pos + 12 : end]
                e = pend.popleft()
                self.acked += 1
                if e & 1:
                    self.created_bg(c, h, now, e >> 1)
                else:
                    v = fgmap.get(h)
                    if v is None:
                        fgmap[h] = e >> 1
                    else:
                        self.coalesced += 1
                        fgmap[h] = [*v, e >> 1] if type(v) is list else [v, e >> 1]
            elif magic != RES:
                self.conn_lost(c, f"not a Gearman response: {data[pos : pos + 12]!r}")
                return
            else:
                self.client_other(c, ptype, data[pos + 12 : end])
            pos = end
        c.rbuf = data[pos:] if pos < n else b""
        if done:
            self.fg_done += done
            c.inflight -= done
            self.last_ns = now
        if len(lat_fg) >= LAT_FLUSH:
            self.hist_fg.update(lat_fg)
            del lat_fg[:]

    def created_bg(self, c: ClientConn, h: bytes, now: int, ts: int) -> None:
        self.bg_acked += 1
        self.bg_pending -= 1
        c.inflight -= 1
        self.last_ns = now
        self.lat_ack.append((now - ts) // 1000)
        if self.load.unique == "coalesce":
            if h in c.fgmap or h in c.recent_bg:
                self.coalesced += 1
                return
            c.recent_bg[h] = None
            if len(c.recent_bg) > 256:
                del c.recent_bg[next(iter(c.recent_bg))]
        self.bg_distinct += 1

    def client_other(self, c: ClientConn, ptype: int, body: bytes) -> None:
        if ptype in (WORK_FAIL, WORK_EXCEPTION):
            h = body.split(b"\0", 1)[0]
            v = c.fgmap.pop(h, None)
            if v is not None:
                k = 1 if type(v) is int else len(v)
                c.inflight -= k
                self.note_error(
                    f"{c.name}: {'WORK_FAIL' if ptype == WORK_FAIL else 'WORK_EXCEPTION'} {h!r}", k
                )
        elif ptype == ERROR:
            # an ERROR answers the oldest submission still waiting for JOB_CREATED
            if c.pend:
                e = c.pend.popleft()
                c.inflight -= 1
                if e & 1:
                    self.bg_pending -= 1
            self.note_error(f"{c.name}: ERROR {body!r}")
        elif ptype in (WORK_STATUS, WORK_DATA, WORK_WARNING, NOOP):
            pass
        else:
            self.note_error(f"{c.name}: unexpected packet type {ptype}")

    def read_worker(self, w: WorkerConn, now: int) -> None:
        try:
            data = w.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self.conn_lost(w, str(e))
            return
        if not data:
            self.conn_lost(w, "closed by server")
            return
        if w.rbuf:
            data = w.rbuf + data
        n = len(data)
        pos = 0
        while n - pos >= 12:
            magic, ptype, size = HDR.unpack_from(data, pos)
            end = pos + 12 + size
            if end > n:
                break
            if magic != RES:
                self.conn_lost(w, f"not a Gearman response: {data[pos : pos + 12]!r}")
                return
            if ptype in ASSIGN_FIELDS:
                self.assigned(w, ptype, data[pos + 12 : end], now)
            elif ptype == NO_JOB:
                w.out.append(self.pre_sleep)
                w.sleeping = True
            elif ptype == NOOP:
                if w.sleeping:
                    w.sleeping = False
                    w.out.append(self.grab)
            elif ptype == ERROR:
                self.note_error(f"{w.name}: ERROR {data[pos + 12 : end]!r}")
            else:
                self.note_error(f"{w.name}: unexpected packet type {ptype}")
            pos = end
        w.rbuf = data[pos:] if pos < n else b""
        if w.out:
            # a worker's reply goes out at once: it is one packet per job anyway, and waiting for
            # the end of the loop iteration would only add to the worker's turnaround
            self.flush(w)

    def assigned(self, w: WorkerConn, ptype: int, body: bytes, now: int) -> None:
        parts = body.split(b"\0", ASSIGN_FIELDS[ptype])
        h = parts[0]
        payload = parts[-1]
        self.exec_all += 1
        if len(payload) >= PAYLOAD_PREFIX:
            ts, run, flags = PREFIX.unpack_from(payload)
            if run == self.load.run_id:
                if flags & 1:
                    self.bg_exec += 1
                    self.last_ns = now
                    self.lat_bg.append((now - ts) // 1000)
            else:
                self.stale += 1
        else:
            self.stale += 1
        lo, hi = self.load.work_time_ms
        if hi > 0:
            ms = lo if lo == hi else self.work_rng.uniform(lo, hi)
            self.timer_seq += 1
            heapq.heappush(self.timers, (now + int(ms * 1e6), self.timer_seq, w, h))
        else:
            w.out.append(
                HDR.pack(REQ, WORK_COMPLETE, len(h) + 1 + len(self.result))
                + h
                + b"\0"
                + self.result
                + self.grab
            )

    def fire_timers(self, now: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, w, h = heapq.heappop(timers)
            if not w.dead:
                w.out.append(packet(WORK_COMPLETE, h, self.result) + self.grab)
                self.flush(w)

    # ---------------------------------------------------------------- submitting
    def bg_room(self) -> int:
        cap = self.load.backlog_cap
        if not self.load.has_bg or cap <= 0:
            return 1 << 62
        sh = self.shared
        backlog = 0
        for p in range(self.nprocs):
            b = p * NFIELDS
            backlog += sh[b + F_BG_DISTINCT] - sh[b + F_BG_EXEC]
        return cap - backlog - self.bg_pending

    def refill(self, c: ClientConn, now: int, room: int) -> tuple[int, bool]:
        """Top up `c` to `inflight` outstanding submissions. Returns (bg room left, blocked)."""
        want = self.load.inflight - c.inflight
        if c.quota >= 0:
            want = min(want, c.quota)
        if want <= 0 or c.dead:
            return room, False
        pattern = self.patterns[c.index]
        pi = c.pi
        pad = self.pad
        unique = self.load.unique
        run = self.load.run_id
        pfx_fg = PREFIX.pack(now, run, 0)
        pfx_bg = PREFIX.pack(now, run, 1)
        out = c.out
        pend = c.pend
        e_fg = now * 2
        blocked = False
        sent = 0
        nbg = 0
        for _ in range(want):
            ptype, func, bg, size, co = pattern[pi]
            if bg:
                if room <= 0:
                    blocked = True
                    break
                room -= 1
                nbg += 1
            pi = pi + 1 if pi + 1 < PATTERN else 0
            if unique == "none":
                uniq = b""
            elif co and c.recent:
                uniq = c.recent[-1]
            else:
                c.seq += 1
                uniq = c.tag + b"%d" % c.seq
                c.recent.append(uniq)
            out.append(
                HDR.pack(REQ, ptype, len(func) + len(uniq) + 2 + size)
                + func
                + b"\0"
                + uniq
                + b"\0"
                + (pfx_bg if bg else pfx_fg)
                + pad[: size - PAYLOAD_PREFIX]
            )
            pend.append(e_fg + 1 if bg else e_fg)
            sent += 1
        c.pi = pi
        c.inflight += sent
        self.submitted += sent
        self.bg_pending += nbg
        if c.quota >= 0:
            c.quota -= sent
            self.quota_left -= sent
        return room, blocked

    # ---------------------------------------------------------------- writing
    def flush(self, c: Conn) -> None:
        out = c.out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if c.wbuf:
            c.wbuf += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.conn_lost(c, str(e))
            return
        if sent < len(data):
            c.wbuf = data[sent:]
            self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def write_ready(self, c: Conn) -> None:
        try:
            sent = c.sock.send(c.wbuf)
        except BlockingIOError:
            return
        except OSError as e:
            self.conn_lost(c, str(e))
            return
        c.wbuf = c.wbuf[sent:]
        if not c.wbuf:
            self.ep.modify(c.fd, select.EPOLLIN)

    # ---------------------------------------------------------------- loop
    def publish(self, idle: bool) -> None:
        sh = self.shared
        b = self.slot
        sh[b + F_SUBMITTED] = self.submitted
        sh[b + F_ACKED] = self.acked
        sh[b + F_FG_DONE] = self.fg_done
        sh[b + F_BG_ACKED] = self.bg_acked
        sh[b + F_BG_DISTINCT] = self.bg_distinct
        sh[b + F_BG_EXEC] = self.bg_exec
        sh[b + F_EXEC_ALL] = self.exec_all
        sh[b + F_ERRORS] = self.errors
        sh[b + F_COALESCED] = self.coalesced
        sh[b + F_IDLE] = 1 if idle else 0

    def run(self) -> None:
        load = self.load
        sh = self.shared
        ctrl = self.ctrl
        go_ns = sh[ctrl + C_GO_NS] or time.monotonic_ns()
        stop_ns = go_ns + int(load.duration * 1e9) if load.duration is not None else 0
        hard_ns = go_ns + int((load.max_time + load.drain_timeout + 30) * 1e9)
        ppid = os.getppid()
        unlimited = load.jobs is None
        conns = self.conns
        poll = self.ep.poll
        clients = self.clients
        now = time.monotonic_ns()
        for w in self.workers:
            w.out.append(self.grab)
            self.flush(w)
        has_bg = load.has_bg
        timeout = 0.0
        next_check = now + 1_000_000_000
        while True:
            now = time.monotonic_ns()
            if not self.stopping and ((stop_ns and now >= stop_ns) or sh[ctrl + C_STOP_SUBMIT]):
                self.stopping = True
            blocked = False
            if not self.stopping:
                room = self.bg_room() if has_bg else 1 << 62
                for c in clients:
                    room, b = self.refill(c, now, room)
                    blocked = blocked or b
            for c in clients:
                if c.out and not c.dead:
                    self.flush(c)
            idle = all(c.inflight == 0 for c in clients) and (
                self.stopping or (not unlimited and self.quota_left <= 0)
            )
            self.publish(idle)
            if sh[ctrl + C_EXIT]:
                break
            if now >= next_check:
                next_check = now + 1_000_000_000
                if os.getppid() != ppid or now > hard_ns:
                    break
            timeout = BLOCKED_POLL if blocked else IDLE_POLL
            if self.timers:
                timeout = min(timeout, max(0.0, (self.timers[0][0] - now) / 1e9))
            for fd, ev in poll(timeout):
                c = conns.get(fd)
                if c is None or c.dead:
                    continue
                if ev & select.EPOLLOUT:
                    self.write_ready(c)
                if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    t = time.monotonic_ns()
                    if type(c) is ClientConn:
                        self.read_client(c, t)
                    else:
                        self.read_worker(c, t)  # type: ignore[arg-type]
            if self.timers:
                self.fire_timers(time.monotonic_ns())

    def results(self, cpu_s: float, wall_s: float) -> dict[str, Any]:
        for lat, hist in (
            (self.lat_fg, self.hist_fg),
            (self.lat_bg, self.hist_bg),
            (self.lat_ack, self.hist_ack),
        ):
            hist.update(lat)
            del lat[:]
        return {
            "index": self.plan.index,
            "submitted": self.submitted,
            "acked": self.acked,
            "fg_done": self.fg_done,
            "bg_acked": self.bg_acked,
            "bg_distinct": self.bg_distinct,
            "bg_executed": self.bg_exec,
            "executed_all": self.exec_all,
            "stale": self.stale,
            "stray": self.stray,
            "coalesced": self.coalesced,
            "errors": self.errors,
            "lost": self.lost,
            "outstanding": sum(c.inflight for c in self.clients),
            "error_samples": self.error_samples,
            "last_ns": self.last_ns,
            "cpu_s": cpu_s,
            "wall_s": wall_s,
            "hist_fg": dict(self.hist_fg),
            "hist_bg": dict(self.hist_bg),
            "hist_ack": dict(self.hist_ack),
        }

    def close(self) -> None:
        for c in self.conns.values():
            if not c.dead:
                c.sock.close()
        self.ep.close()


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def process_main(load: Load, plan: Plan, raw: Any, nprocs: int, pipe: Any) -> None:
    """Entry point of a spawned generator process. Sends ("result", dict) or ("error", text)."""
    shared = memoryview(raw).cast("B").cast("Q")
    d: Driver | None = None
    try:
        d = Driver(load, plan, shared, nprocs)
        d.connect()
        shared[plan.index * NFIELDS + F_READY] = 1
        ctrl = nprocs * NFIELDS
        deadline = time.monotonic() + load.connect_timeout + 120
        while not shared[ctrl + C_GO]:
            if shared[ctrl + C_EXIT] or time.monotonic() > deadline:
                pipe.send(("error", "never told to start"))
                return
            time.sleep(0.0005)
        cpu0 = cpu_seconds()
        t0 = time.monotonic()
        d.run()
        pipe.send(("result", d.results(cpu_seconds() - cpu0, time.monotonic() - t0)))
    except OSError as e:  # connect / setup failures: no traceback needed
        shared[plan.index * NFIELDS + F_FAILED] = 1
        pipe.send(("error", f"generator process {plan.index}: {e!r}"))
    except Exception:
        shared[plan.index * NFIELDS + F_FAILED] = 1
        pipe.send(("error", f"generator process {plan.index}: {traceback.format_exc()}"))
    finally:
        if d is not None:
            d.close()
        pipe.close()
