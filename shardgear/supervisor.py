"""The supervisor: creates the shared objects, starts fronts and shards, restarts them, stops them.

Theory of operation
-------------------
1. Sweep: remove shared-memory segments that a dead supervisor on the same port left behind.
2. Create every segment (rings, boards, control block) with O_CREX and one eventfd doorbell per
   child. Only the supervisor creates or unlinks; children attach by name and inherit doorbells.
   Make the job logs in the state directory fit this run's shard count (`shardgear.reshard`).
3. Spawn S shards (``python -m shardgear.child``); each recovers its stored jobs from its job log
   (a restarted shard recovers all of its predecessor's jobs instead: ARCHITECTURE.md, "Shard
   crash"), then sets its control-block state to READY. Only then spawn the F fronts, so that no
   connection is served before the jobs are back. When every child is READY, log "ready" and
   tell systemd.
4. Loop: signal handlers only queue the signal (``signal.set_wakeup_fd``); the loop dispatches
   ``handle_<sig>``, reaps children with ``waitpid(WNOHANG)`` and restarts the dead ones. A child
   that exits with EXIT_BOOT_ERROR, or dies five times within a minute, halts the server.
5. Stop: SIGTERM, SIGINT or SIGUSR1 (admin ``shutdown graceful``) start a graceful stop: fronts
   stop accepting, shards stop handing out jobs (GRAB gets NO_JOB), and the supervisor waits until
   no job is running or ``--graceful-timeout`` passes. A second SIGTERM/SIGINT, or SIGQUIT (admin
   ``shutdown``), stops at once. Either way every child gets SIGTERM (SIGKILL after 5 s), shards
   write their job logs, and every shared object is unlinked. Queued background jobs stay in the
   job logs for the next start.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from contextlib import ExitStack

import orjson

from shardgear import __version__, build_info
from shardgear.child import EXIT_BOOT_ERROR
from shardgear.config import Config
from shardgear.instance import Instance, prefix_for_port
from shardgear.reshard import prepare_job_logs
from shardgear.shm import layout
from shardgear.shm.ring import Ring
from shardgear.shm.segment import Segment, pid_alive, sweep_stale
from shardgear.systemd import sd_notify

log = logging.getLogger("shardgear.supervisor")

STOP_TIMEOUT = 5.0
RESTART_WINDOW = 60.0
RESTART_LIMIT = 5


class HaltServer(Exception):
    """A child cannot run; restarting it would loop forever."""


class Child:
    """One front or shard slot and the process currently filling it."""

    def __init__(self, role: str, index: int, slot: int) -> None:
        self.role = role
        self.index = index
        self.slot = slot
        self.proc: subprocess.Popen[bytes] | None = None
        self.deaths: deque[float] = deque(maxlen=RESTART_LIMIT)
        self.drain_sent = 0  # pid of the process that got SIGUSR1 for a graceful stop

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}"


class Supervisor:
    """Owns every shared object and child process of one server instance."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = Instance(config.port, os.getpid(), config.fronts, config.shards)
        self.stack = ExitStack()
        self.segments: list[Segment] = []
        self.doorbells: list[int] = []
        self.children: list[Child] = []
        self.signals: deque[int] = deque()
        self.stopping = False
        self.graceful_deadline: float | None = None
        self.ready = False
        self.fronts_spawned = False
        self.control_seg: Segment | None = None
        # Tells a shard whether its job log was written in this run (its predecessor died) or
        # an earlier one: random, since a pid may come back after a reboot.
        self.run_id = int.from_bytes(os.urandom(8), "little") or 1

    # ----------------------------------------------------------------- setup

    def create_shared(self) -> None:
        removed = sweep_stale(prefix_for_port(self.config.port), pid_alive)
        if removed:
            log.warning("removed %d stale shared-memory segments of a dead server", len(removed))
        inst = self.instance
        n_children = self.config.fronts + self.config.shards + (1 if self.config.http else 0)
        self.control_seg = self._create(inst.control, layout.control_bytes(n_children))
        ring_bytes = layout.ring_bytes(self.config.ring_size)
        for s in range(self.config.shards):
            board = self._create(inst.board(s), layout.BOARD_BYTES)
            layout.Board.initialize(board.buf)
            for f in range(self.config.fronts):
                for name in (inst.to_shard(f, s), inst.to_front(s, f)):
                    Ring.initialize(self._create(name, ring_bytes).buf)
        if self.config.store == "none":
            for s in range(self.config.shards):  # the shards' job logs in /dev/shm
                path = self.config.job_log_path(s, self.instance.supervisor_pid)
                self.stack.callback(_unlink_quietly, path + ".new")
                self.stack.callback(_unlink_quietly, path)
        for _ in range(n_children):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.doorbells.append(fd)
            self.stack.callback(os.close, fd)

    def _create(self, name: str, size: int) -> Segment:
        seg = Segment.create(name, size)
        self.segments.append(seg)
        self.stack.callback(seg.unlink)
        self.stack.callback(seg.close)
        return seg

    # -------------------------------------------------------------- children

    def spawn(self, child: Child) -> None:
        assert self.control_seg is not None
        block = layout.control_view(self.control_seg.buf, child.slot)
        for i in range(len(block)):
            block[i] = 0
        block[layout.CTRL_RUN_ID] = self.run_id
        block.release()
        cmd = [
            sys.executable,
            "-m",
            "shardgear.child",
            child.role,
            str(child.index),
            str(self.instance.supervisor_pid),
            ",".join(map(str, self.doorbells)),
            orjson.dumps(self.config.to_json_dict()).decode(),
        ]
        child.proc = subprocess.Popen(cmd, pass_fds=self.doorbells, stdin=subprocess.DEVNULL)
        log.info("started %s as pid %d", child.name, child.proc.pid)

    def reap(self) -> None:
        for child in self.children:
            proc = child.proc
            if proc is None or proc.poll() is None:
                continue
            status = proc.returncode
            child.proc = None
            if self.stopping:
                continue
            if status < 0:
                sig = signal.Signals(-status).name
                level = logging.ERROR if status == -signal.SIGKILL else logging.WARNING
                log.log(
                    level,
                    "%s (pid %d) was killed by %s%s",
                    child.name,
                    proc.pid,
                    sig,
                    " (out of memory?)" if status == -signal.SIGKILL else "",
                )
            else:
                log.error("%s (pid %d) exited with status %d", child.name, proc.pid, status)
            if status == EXIT_BOOT_ERROR:
                raise HaltServer(f"{child.name} could not start")
            now = time.monotonic()
            child.deaths.append(now)
            if len(child.deaths) == RESTART_LIMIT and now - child.deaths[0] < RESTART_WINDOW:
                raise HaltServer(f"{child.name} died {RESTART_LIMIT} times within a minute")
            self.spawn(child)

    def check_ready(self) -> None:
        assert self.control_seg is not None
        for child in self.children:
            block = layout.control_view(self.control_seg.buf, child.slot)
            state = block[layout.CTRL_STATE]
            block.release()
            if state != layout.CHILD_READY:
                return
        self.ready = True
        where = self.config.listen or "*"
        log.warning(
            "shardgear %s (%s) ready on %s:%d with %d fronts and %d shards (pid %d)",
            __version__,
            build_info.describe(),
            where,
            self.config.port,
            self.config.fronts,
            self.config.shards,
            os.getpid(),
        )
        sd_notify(f"READY=1\nSTATUS=serving on port {self.config.port}\nMAINPID={os.getpid()}")

    def running_jobs(self) -> int:
        assert self.control_seg is not None
        total = 0
        for child in self.children:
            if child.role == "shard":
                block = layout.control_view(self.control_seg.buf, child.slot)
                total += block[layout.CTRL_RUNNING_JOBS]
                block.release()
        return total

    def signal_children(self, sig: int, role: str | None = None) -> None:
        for child in self.children:
            if child.proc is not None and (role is None or child.role == role):
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def stop_children(self) -> None:
        self.stopping = True
        sd_notify("STOPPING=1")
        self.signal_children(signal.SIGTERM, "front")
        self._wait_children("front", STOP_TIMEOUT)
        self.signal_children(signal.SIGTERM)
        self._wait_children(None, STOP_TIMEOUT)
        self.signal_children(signal.SIGKILL)
        self._wait_children(None, STOP_TIMEOUT)

    def _wait_children(self, role: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None or (role is not None and child.role != role):
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue
            if (
                self.signals
                and self.signals[-1] in (signal.SIGINT, signal.SIGTERM)
                and len(self.signals) > 1
            ):
                return  # a second stop signal: no more waiting

    # ------------------------------------------------------------------ loop

    def run(self) -> int:
        rfd, wfd = socket.socketpair()
        rfd.setblocking(False)
        wfd.setblocking(False)
        for sig in (
            signal.SIGTERM,
            signal.SIGINT,
            signal.SIGQUIT,
            signal.SIGUSR1,
            signal.SIGHUP,
            signal.SIGCHLD,
        ):
            signal.signal(sig, self._queue_signal)
        signal.set_wakeup_fd(wfd.fileno(), warn_on_full_buffer=False)
        status = 0
        with self.stack:
            try:
                self.create_shared()
                if self.config.store != "none":
                    prepare_job_logs(self.config, log)
                self.children = [
                    Child("shard", s, self.instance.shard_slot(s))
                    for s in range(self.config.shards)
                ]
                for child in self.children:
                    self.spawn(child)
                self.loop(rfd)
            except HaltServer as exc:
                log.critical("halting: %s", exc)
                status = 1
            except Exception:
                log.critical("supervisor failed", exc_info=True)
                status = 1
            finally:
                self.stop_children()
                signal.set_wakeup_fd(-1)
        rfd.close()
        wfd.close()
        log.info("stopped")
        return status

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # no logging, no reaping here (gunicorn b650332c)

    def loop(self, wakeup: socket.socket) -> None:
        while True:
            select.select([wakeup], [], [], 0.2)
            try:
                while wakeup.recv(4096):
                    pass
            except BlockingIOError:
                pass
            while self.signals:
                sig = self.signals.popleft()
                if sig == signal.SIGQUIT or (
                    sig in (signal.SIGTERM, signal.SIGINT) and self.graceful_deadline is not None
                ):
                    log.warning("stopping now (%s)", signal.Signals(sig).name)
                    return
                if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                    self.start_graceful_stop(signal.Signals(sig).name)
            self.reap()
            if not self.fronts_spawned and self.shards_ready():
                self.spawn_fronts()
            if not self.ready and self.fronts_spawned:
                self.check_ready()
            if self.graceful_deadline is not None:
                if not self.fronts_spawned:
                    return
                self.tell_children_to_drain()
                running = self.running_jobs()
                if running == 0 or time.monotonic() >= self.graceful_deadline:
                    if running:
                        log.warning("stopping with %d jobs still running", running)
                    time.sleep(0.2)  # let the last results reach their clients
                    return

    def start_graceful_stop(self, why: str) -> None:
        if self.graceful_deadline is not None:
            return
        log.warning(
            "stopping (%s): no new connections or jobs; waiting up to %g s for running jobs",
            why,
            self.config.graceful_timeout,
        )
        self.graceful_deadline = time.monotonic() + self.config.graceful_timeout
        sd_notify("STOPPING=1")
        self.tell_children_to_drain()

    def tell_children_to_drain(self) -> None:
        """SIGUSR1 every child that serves and has not had it (a child still starting gets it once
        it is READY: before it has installed its handlers the signal could kill it)."""
        assert self.control_seg is not None
        for child in self.children:
            if child.proc is None or child.drain_sent == child.proc.pid:
                continue
            block = layout.control_view(self.control_seg.buf, child.slot)
            state = block[layout.CTRL_STATE]
            block.release()
            if state == layout.CHILD_READY:
                child.drain_sent = child.proc.pid
                try:
                    child.proc.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    def shards_ready(self) -> bool:
        assert self.control_seg is not None
        for child in self.children:
            if child.role == "shard":
                block = layout.control_view(self.control_seg.buf, child.slot)
                state = block[layout.CTRL_STATE]
                block.release()
                if state != layout.CHILD_READY:
                    return False
        return True

    def spawn_fronts(self) -> None:
        self.fronts_spawned = True
        fronts = [Child("front", f, self.instance.front_slot(f)) for f in range(self.config.fronts)]
        if self.config.http:  # the HTTP API (http_server.py) is a client of the fronts
            fronts.append(Child("http", 0, self.instance.http_slot))
        self.children += fronts
        for child in fronts:
            self.spawn(child)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def run(config: Config) -> int:
    """Run a server until it is stopped; return the process exit status."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s shardgear[{os.getpid()}] supervisor %(levelname)s %(message)s",
    )
    return Supervisor(config).run()
