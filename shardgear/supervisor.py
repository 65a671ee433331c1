"""The supervisor: creates the shared objects, starts fronts and shards, restarts them, stops them.

Theory of operation
-------------------
1. Sweep: remove shared-memory segments that a dead supervisor on the same port left behind.
2. Create every segment (rings, boards, control block, settings, stats) with O_CREX and one
   eventfd doorbell per child. Only the supervisor creates or unlinks; children attach by name
   and inherit doorbells. Make the job logs in the state directory fit this run's shard count
   (`shardgear.reshard`). With socket activation (LISTEN_FDS) the inherited listening sockets are
   handed to every front, which then binds nothing itself.
3. Spawn S shards and F fronts together: forked at the first start, while the supervisor has no
   thread (the modules they run are imported once, here), and ``python -m shardgear.child``
   (exec) on a restart or when a thread exists (`Supervisor.can_fork`). Each shard recovers its
   stored jobs from its job log (a restarted shard recovers all of its predecessor's jobs instead:
   ARCHITECTURE.md, "Shard crash"), then sets its control-block state to READY; a front waits
   until every shard is READY before it listens, so no connection is served before the jobs are
   back. When every child is READY: log "ready" and send READY=1. While a long recovery runs,
   EXTEND_TIMEOUT_USEC keeps systemd's start timeout away as long as the shards' progress
   counters advance.
4. Loop: signal handlers only queue the signal (``signal.set_wakeup_fd``); the loop dispatches
   it, reaps children and restarts the dead ones (a child that exits with EXIT_BOOT_ERROR, or
   dies five times within a minute, halts the server), and watches the heartbeats in the control
   block: a serving child whose heartbeat has not moved for ``--heartbeat-timeout`` is killed
   (and so restarted); WATCHDOG=1 goes to systemd only while every child's heartbeat moves;
   STATUS= is refreshed every few seconds. SIGHUP reloads the config (live_config.py).
5. Stop: SIGTERM, SIGINT or SIGUSR1 (admin ``shutdown graceful``) start a graceful stop
   (STOPPING=1, once): fronts stop accepting, shards stop handing out jobs (GRAB gets NO_JOB),
   and the supervisor waits until no job is running or ``--graceful-timeout`` passes. A second
   SIGTERM/SIGINT, or SIGQUIT (admin ``shutdown``), stops at once. Either way every child gets
   SIGTERM (SIGKILL after 5 s), shards write their job logs, and every shared object is unlinked.
   Queued background jobs stay in the job logs for the next start. Children wake from epoll on a
   stop signal at once, so an idle server stops in a few milliseconds.

The supervisor never sleeps longer than `IDLE_TICK`; while something is about to change
(children starting, a reload being applied, a graceful stop) it looks every `BUSY_TICK`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING, Final, Protocol

import orjson

from shardgear import __version__, build_info, logs, stats
from shardgear import child as child_main
from shardgear.child import CONFIG_ENV, EXIT_BOOT_ERROR
from shardgear.config import Config
from shardgear.config_file import ConfigError, reload_changes
from shardgear.instance import Instance, prefix_for_port
from shardgear.live_config import SEGMENT_BYTES, SettingsWriter
from shardgear.reshard import prepare_job_logs
from shardgear.shm import layout
from shardgear.shm.ring import Ring
from shardgear.shm.segment import Segment, pid_alive, sweep_stale
from shardgear.sockets import LISTEN_FDS_ENV
from shardgear.systemd import Notifier, listen_fds

if TYPE_CHECKING:  # imported when --metrics is on (prometheus_client takes a while to load)
    from shardgear.httpd import HttpServer
    from shardgear.metrics import Process, RingUse

log = logging.getLogger("shardgear.supervisor")

STOP_TIMEOUT: Final = 5.0
EXIT_POLL: Final = 0.002  # seconds between looks at children that were told to exit
RESTART_WINDOW: Final = 60.0
RESTART_LIMIT: Final = 5
RELOAD_TIMEOUT: Final = 5.0
IDLE_TICK: Final = 0.5  # seconds between looks at the children when nothing is going on
BUSY_TICK: Final = 0.005  # ... while children start, a reload is applied or a stop drains
HEALTHY_WINDOW: Final = 3.0  # a serving child's heartbeat must have moved this recently
STATUS_INTERVAL: Final = 5.0  # STATUS= refresh
EXTEND_AFTER: Final = 2.0  # a start longer than this asks systemd for more time ...
EXTEND_INTERVAL: Final = 5.0  # ... every EXTEND_INTERVAL seconds ...
EXTEND_BY: Final = 15.0  # ... this much each time ...
START_PROGRESS_WINDOW: Final = 60.0  # ... while some shard's progress moved within this
#: SHARDGEAR_SPAWN=exec: start the children with exec at the first start too (no fork).
SPAWN_ENV: Final = "SHARDGEAR_SPAWN"
#: Signals held pending across a fork: the child installs its own handlers before they run.
FORK_BLOCKED: Final = frozenset(
    {
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGHUP,
        signal.SIGCHLD,
    }
)


class ChildProcess(Protocol):
    """What the supervisor uses of a child process: `subprocess.Popen`'s or `Forked`'s."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A child made by ``os.fork``, with the part of `subprocess.Popen`'s interface the
    supervisor uses (`returncode` is ``-signal`` for a child killed by a signal, as Popen's)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status if the child has exited (reaping it), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - reaped elsewhere
                self.returncode = 255
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal the child unless it has been reaped (its pid may be another process's now)."""
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class HaltServer(Exception):
    """A child cannot run; restarting it would loop forever."""


class Child:
    """One front or shard slot and the process currently filling it."""

    def __init__(self, role: str, index: int, slot: int) -> None:
        self.role = role
        self.index = index
        self.slot = slot
        self.proc: ChildProcess | None = None
        self.deaths: deque[float] = deque(maxlen=RESTART_LIMIT)
        self.restarts = 0
        self.drain_sent = 0  # pid of the process that got SIGUSR1 for a graceful stop
        self.beat = -1  # heartbeat + progress as last seen
        self.beat_at = 0.0  # monotonic time it last moved
        self.state = layout.CHILD_EMPTY

    @property
    def name(self) -> str:
        return f"{self.role} {self.index}"

    @property
    def label(self) -> str:
        return f"{self.role}{self.index}"


class Supervisor:
    """Owns every shared object and child process of one server instance."""

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.notifier = Notifier()
        self.inherited = listen_fds()  # socket activation
        if self.inherited:
            config = dataclasses.replace(config, port=_port_of(self.inherited[0]) or config.port)
        self.config = config
        self.load_config = reload
        self.instance = Instance(config.port, os.getpid(), config.fronts, config.shards)
        self.stack = ExitStack()
        self.segments: list[Segment] = []
        self.doorbells: list[int] = []
        self.children: list[Child] = []
        self.signals: deque[int] = deque()
        self.started_at = time.monotonic()
        self.stopping = False
        self.graceful_deadline: float | None = None
        self.jobs_ran_while_draining = False
        self.ready = False
        self.control_seg: Segment | None = None
        self.control: memoryview | None = None  # the control blocks as u64 words
        self.settings: SettingsWriter | None = None
        self.stats: stats.StatsReader | None = None
        self.rings: list[tuple[str, str, memoryview]] = []  # (from, to, header words)
        self.metrics_upstream = ""  # our metrics listener when the HTTP process shares its port
        self.reload_generation = 0  # the settings generation every child must acknowledge
        self.reload_deadline = 0.0
        self.next_watchdog = 0.0
        self.next_status = 0.0
        self.next_extend = self.started_at + EXTEND_AFTER
        # Tells a shard whether its job log was written in this run (its predecessor died) or
        # an earlier one: random, since a pid may come back after a reboot.
        self.run_id = int.from_bytes(os.urandom(8), "little") or 1

    # ----------------------------------------------------------------- setup

    def create_shared(self) -> None:
        removed = sweep_stale(prefix_for_port(self.config.port), pid_alive)
        if removed:
            log.warning("removed %d stale shared-memory segments of a dead server", len(removed))
        inst = self.instance
        config = self.config
        # a slot of the control block, the stats segment and the doorbells per child; the HTTP
        # process (--http) has the last one
        n_children = config.fronts + config.shards + (1 if config.http else 0)
        self.control_seg = self._create(inst.control, layout.control_bytes(n_children))
        self.control = self.control_seg.buf.cast("Q")
        self.stack.callback(self.control.release)
        settings_bytes = max(layout.settings_bytes(64 * 1024), fsize_cap(SEGMENT_BYTES))
        self.settings = SettingsWriter(self._create(inst.settings, settings_bytes).buf)
        self.stack.callback(self.settings.release)
        self.settings.publish(config)
        table_bytes = 0
        if config.function_stats:  # function tables; each segment must fit RLIMIT_FSIZE too
            room = fsize_cap(layout.stats_bytes(n_children, config.shards, stats.TABLE_BYTES))
            table_bytes = (room - layout.stats_bytes(n_children, 0, 0)) // config.shards & ~4095
        stats_seg = self._create(
            inst.stats, layout.stats_bytes(n_children, config.shards, table_bytes)
        )
        stats.initialize(stats_seg.buf, n_children, config.shards, table_bytes)
        self.stats = stats.StatsReader(stats_seg.buf)
        self.stack.callback(self.stats.release)
        ring_bytes = layout.ring_bytes(config.ring_size)
        for s in range(config.shards):
            board = self._create(inst.board(s), layout.BOARD_BYTES)
            layout.Board.initialize(board.buf)
            for f in range(config.fronts):
                for name, src, dst in (
                    (inst.to_shard(f, s), f"front{f}", f"shard{s}"),
                    (inst.to_front(s, f), f"shard{s}", f"front{f}"),
                ):
                    seg = self._create(name, ring_bytes)
                    Ring.initialize(seg.buf)
                    words = seg.buf[: layout.RING_HEADER_BYTES].cast("Q")
                    self.stack.callback(words.release)
                    self.rings.append((src, dst, words))
        if config.store == "none":
            for s in range(config.shards):  # the shards' job logs in /dev/shm
                path = config.job_log_path(s, self.instance.supervisor_pid)
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

    def word(self, child: Child, field: int) -> int:
        """A field of `child`'s control block."""
        assert self.control is not None
        return int(self.control[child.slot * layout.CONTROL_BYTES // 8 + field])

    # -------------------------------------------------------------- children

    def can_fork(self) -> bool:
        """Whether children may be forked now rather than exec'd: only while this process has a
        single thread (a fork copies locks that another thread may hold: logging's, malloc's,
        the metrics thread's), and not when SHARDGEAR_SPAWN=exec asks for exec."""
        return (
            hasattr(os, "fork")
            and threading.active_count() == 1
            and os.environ.get(SPAWN_ENV, "") != "exec"
        )

    def spawn_all(self) -> None:
        """Start every child together (a front waits for the shards itself): by fork when
        `can_fork` (the first start's fast path: no interpreter start and no imports per child),
        else by exec."""
        fork = self.can_fork()
        if fork:
            # Imported once here instead of once per child (the HTTP process imports its own
            # after the fork: it is optional and heavy).
            from shardgear import front, shard  # noqa: F401

            # No garbage whose finalizer could close a file descriptor number in a child, where
            # the number may belong to something else by then; frozen objects are not scanned by
            # the children's collections either (fewer pages copied).
            gc.collect()
            gc.freeze()
        try:
            for child in self.children:
                self.spawn(child, fork=fork)
        finally:
            if fork:
                gc.unfreeze()

    def spawn(self, child: Child, fork: bool = False) -> None:
        """Start the process of `child`'s slot: forked (`fork`, see `spawn_all`) or exec'd."""
        assert self.control is not None and self.stats is not None
        base = child.slot * layout.CONTROL_BYTES // 8
        for i in range(layout.CONTROL_BYTES // 8):
            self.control[base + i] = 0
        self.control[base + layout.CTRL_RUN_ID] = self.run_id
        self.stats.retire(child.slot, child.index if child.role == "shard" else -1)
        fds = list(self.doorbells)
        env: dict[str, str] = {}
        if child.role == "front" and self.inherited:
            fds += self.inherited
            env[LISTEN_FDS_ENV] = ",".join(map(str, self.inherited))
        elif child.role == "http" and self.metrics_upstream:
            from shardgear.httpd import METRICS_UPSTREAM_ENV

            env[METRICS_UPSTREAM_ENV] = self.metrics_upstream
        if fork:
            child.proc = self._fork(child, fds, env)
        else:
            child.proc = self._exec(child, fds, env)
        child.beat = -1
        child.beat_at = time.monotonic()
        child.state = layout.CHILD_EMPTY
        if child.restarts:
            log.log(logs.NOTICE, "restarted %s as pid %d", child.name, child.proc.pid)
        else:
            how = " (forked)" if fork else ""
            log.info("started %s as pid %d%s", child.name, child.proc.pid, how)

    def _fork(self, child: Child, fds: list[int], env: dict[str, str]) -> Forked:
        """Fork `child`'s process, which runs `shardgear.child.run_forked` and never returns."""
        for stream in (sys.stdout, sys.stderr):  # or the child would write it a second time
            stream.flush()
        # Stop signals stay pending in the child until its own handlers are in place (the
        # supervisor's would write to our wakeup socket); SIGHUP as in `_exec`.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        try:
            pid = os.fork()
            if pid == 0:
                try:  # never back into the supervisor's code from here
                    try:
                        self._forget_shared()
                        child_main.run_forked(
                            child.role,
                            child.index,
                            self.instance.supervisor_pid,
                            self.doorbells,
                            self.config,
                            fds,
                            env,
                            mask,
                        )
                    except BaseException:
                        log.critical("forked %s could not start", child.name, exc_info=True)
                finally:
                    os._exit(child_main.EXIT_CRASH)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return Forked(pid)

    def _forget_shared(self) -> None:
        """(In a forked child) unmap the supervisor's views of the segments: the child maps what
        it uses itself, by name, as an exec'd one does. Nothing is unlinked."""
        for _src, _dst, words in self.rings:
            words.release()
        for obj in (self.control, self.settings, self.stats):
            if obj is not None:
                obj.release()
        for seg in self.segments:
            seg.close()

    def _exec(self, child: Child, fds: list[int], env: dict[str, str]) -> ChildProcess:
        """Start `child`'s process as ``python -m shardgear.child`` with `fds` inherited."""
        import subprocess

        cmd = [
            sys.executable,
            "-m",
            "shardgear.child",
            child.role,
            str(child.index),
            str(self.instance.supervisor_pid),
            ",".join(map(str, self.doorbells)),
        ]
        # the config in the environment, not the command line: /proc/PID/cmdline (ps) is for
        # everyone, /proc/PID/environ for our user only (TLS key paths, the access rules)
        env = dict(env, **{CONFIG_ENV: orjson.dumps(self.config.to_json_dict()).decode()})
        # SIGHUP stays blocked (pending, not lost) across the spawn: the child inherits the mask
        # and unblocks it once it ignores SIGHUP, so a HUP to the whole group (systemctl kill)
        # cannot kill a child that is still starting.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            return subprocess.Popen(
                cmd,
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                env=dict(os.environ, **env),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def reap(self) -> None:
        for child in self.children:
            proc = child.proc
            status = None if proc is None else proc.poll()
            if proc is None or status is None:
                continue
            child.proc = None
            if self.stopping:
                continue
            if self.graceful_deadline is not None:
                # a stop signal to the whole process group (`timeout`, `kill -TERM -PGID`) also
                # stopped the children: restarting them would only delay the stop
                log.info("%s (pid %d) exited during the stop", child.name, proc.pid)
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
            child.restarts += 1
            self.spawn(child)

    def all_ready(self) -> bool:
        return all(
            c.proc is not None and self.word(c, layout.CTRL_STATE) == layout.CHILD_READY
            for c in self.children
        )

    def check_ready(self) -> None:
        if not self.all_ready():
            return
        self.ready = True
        where = self.config.listen or "*"
        if self.inherited:
            where = ", ".join(_name_of(fd) for fd in self.inherited) + " (socket activation)"
        else:
            where = f"{where}:{self.config.port}"
        log.log(
            logs.NOTICE,
            "shardgear %s (%s) ready on %s%s with %d fronts and %d shards (pid %d) in %.3f s",
            __version__,
            build_info.describe(),
            where,
            _tls_summary(self.config),
            self.config.fronts,
            self.config.shards,
            os.getpid(),
            time.monotonic() - self.started_at,
        )
        self.notifier.ready(self.status_line())
        self.next_status = time.monotonic() + STATUS_INTERVAL

    def running_jobs(self) -> int:
        return sum(
            self.word(c, layout.CTRL_RUNNING_JOBS) for c in self.children if c.role == "shard"
        )

    def status_line(self) -> str:
        """The one-line summary for STATUS=: connections, queued and running jobs."""
        assert self.stats is not None
        conns = queued = 0
        for c in self.children:
            live = self.stats.live(c.slot)
            if c.role == "front":
                conns += max(0, live[layout.ST_ACCEPTED] - live[layout.ST_CLOSED])
            else:
                queued += live[layout.ST_QUEUED]
        return f"{conns} connections, {queued} jobs queued, {self.running_jobs()} running"

    def signal_children(self, sig: int, role: str | None = None) -> None:
        for child in self.children:
            if child.proc is not None and (role is None or child.role == role):
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def stop_children(self) -> None:
        self.stopping = True
        self.notifier.stopping("stopping")
        self.signal_children(signal.SIGTERM, "front")
        self._wait_children("front", STOP_TIMEOUT)
        self.signal_children(signal.SIGTERM)
        self._wait_children(None, STOP_TIMEOUT)
        self.signal_children(signal.SIGKILL)
        self._wait_children(None, STOP_TIMEOUT)

    def _wait_children(self, role: str | None, timeout: float) -> None:
        """Wait up to `timeout` for the children (of `role`) to exit, looking every
        `EXIT_POLL` (Popen.wait's back-off grows to 50 ms, a visible part of a stop)."""
        deadline = time.monotonic() + timeout
        waiting = [
            c.proc
            for c in self.children
            if c.proc is not None and (role is None or c.role == role)
        ]
        while waiting and time.monotonic() < deadline:
            waiting = [p for p in waiting if p.poll() is None]
            if not waiting:
                return
            if (
                self.signals
                and self.signals[-1] in (signal.SIGINT, signal.SIGTERM)
                and len(self.signals) > 1
            ):
                return  # a second stop signal: no more waiting
            time.sleep(EXIT_POLL)

    # -------------------------------------------------------------- watching

    def watch(self, now: float) -> None:
        """Heartbeats (stalled children are killed), WATCHDOG=1, STATUS=, EXTEND_TIMEOUT_USEC."""
        timeout = self.config.heartbeat_timeout
        healthy = True
        progressing = False
        for child in self.children:
            if child.proc is None:
                continue
            state = self.word(child, layout.CTRL_STATE)
            beat = self.word(child, layout.CTRL_HEARTBEAT) + self.word(child, layout.CTRL_PROGRESS)
            if beat != child.beat or state != child.state:
                child.beat, child.beat_at, child.state = beat, now, state
            quiet = now - child.beat_at
            if state != layout.CHILD_READY:
                progressing |= quiet < START_PROGRESS_WINDOW
                healthy &= quiet < START_PROGRESS_WINDOW
                continue
            healthy &= quiet < HEALTHY_WINDOW
            if timeout and quiet > timeout and not self.stopping:
                log.error(
                    "%s (pid %d) stopped responding (no heartbeat for %.1f s): killing it",
                    child.name,
                    child.proc.pid,
                    quiet,
                )
                child.proc.kill()  # reaped and restarted like any other death
                child.beat_at = now
        notifier = self.notifier
        if not notifier.enabled:
            return
        interval = notifier.watchdog_interval
        if interval is not None and healthy and now >= self.next_watchdog:
            notifier.watchdog()
            self.next_watchdog = now + interval
        if self.ready and now >= self.next_status and self.graceful_deadline is None:
            notifier.status(self.status_line())
            self.next_status = now + STATUS_INTERVAL
        if not self.ready and now >= self.next_extend and progressing:
            loaded = sum(
                self.word(c, layout.CTRL_PROGRESS) for c in self.children if c.role == "shard"
            )
            notifier.extend_timeout(EXTEND_BY, f"starting: {loaded} stored jobs loaded")
            self.next_extend = now + EXTEND_INTERVAL

    def metrics_processes(self) -> list[Process]:
        from shardgear.metrics import Process

        return [
            Process(c.role, c.index, c.slot, c.proc.pid if c.proc else 0, c.restarts)
            for c in self.children
        ]

    def metrics_rings(self) -> list[RingUse]:
        from shardgear.metrics import RingUse

        out: list[RingUse] = []
        for src, dst, words in self.rings:
            used = int(words[layout.RING_TAIL_Q]) - int(words[layout.RING_HEAD_Q])
            out.append(RingUse(src, dst, max(0, used), int(words[layout.RING_CAPACITY_Q])))
        return out

    def bind_metrics(self) -> HttpServer:
        """Bind the --metrics listener, served by a thread of ours once `HttpServer.start` is
        called (after the children are forked; children do nothing with it). When --http names
        the same address, the HTTP process owns it and forwards /metrics to our listener on
        loopback (httpd.py)."""
        from shardgear import httpd, metrics

        assert self.stats is not None
        source = metrics.Source(self.stats, self.metrics_processes, self.metrics_rings)
        router = httpd.Router()
        router.mount("/metrics", metrics.make_app(metrics.make_registry(source)))
        shared = self.config.metrics == self.config.http
        address = "127.0.0.1:0" if shared else self.config.metrics
        try:
            server = httpd.HttpServer(address, router)
        except OSError as exc:
            raise HaltServer(f"cannot serve metrics on {address}: {exc}") from None
        self.stack.callback(server.stop)
        if shared:
            self.metrics_upstream = f"127.0.0.1:{server.port}"
            log.info(
                "metrics on http://%s/metrics (the HTTP process forwards them to %s)",
                self.config.metrics,
                self.metrics_upstream,
            )
        else:
            log.info("metrics on http://%s/metrics", self.config.metrics)
        return server

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
        # held since the command's first line (shardgear.start), or by whoever started us: any
        # that came meanwhile run the handlers now, and our children start with none held
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED)
        status = 0
        with self.stack:
            try:
                self.create_shared()
                if self.config.store != "none":
                    prepare_job_logs(self.config, log)
                metrics = self.bind_metrics() if self.config.metrics else None
                self.children = [
                    Child("shard", s, self.instance.shard_slot(s))
                    for s in range(self.config.shards)
                ] + [
                    Child("front", f, self.instance.front_slot(f))
                    for f in range(self.config.fronts)
                ]
                if self.config.http:  # the HTTP API (http_server.py), a client of the fronts
                    self.children.append(Child("http", 0, self.instance.http_slot))
                self.spawn_all()
                if metrics is not None:
                    metrics.start()  # the first thread: after the forks
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
        self.notifier.close()
        log.log(logs.NOTICE, "stopped")
        return status

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # no logging, no reaping here (gunicorn b650332c)

    def tick(self) -> float:
        """How long the loop may sleep now."""
        if not self.ready or self.reload_generation or self.graceful_deadline is not None:
            return BUSY_TICK
        return IDLE_TICK

    def loop(self, wakeup: socket.socket) -> None:
        while True:
            select.select([wakeup], [], [], self.tick())
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
                    log.log(logs.NOTICE, "stopping now (%s)", signal.Signals(sig).name)
                    return
                if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                    self.start_graceful_stop(signal.Signals(sig).name)
                elif sig == signal.SIGHUP and self.graceful_deadline is None:
                    self.reload()
            self.reap()
            now = time.monotonic()
            if not self.ready:
                self.check_ready()
            if self.reload_generation:
                self.check_reloaded()
            self.watch(now)
            if self.graceful_deadline is not None:
                self.tell_children_to_drain()
                running = self.running_jobs()
                self.jobs_ran_while_draining |= running > 0
                if running == 0 or now >= self.graceful_deadline:
                    if running:
                        log.warning("stopping with %d jobs still running", running)
                    if self.jobs_ran_while_draining:
                        time.sleep(0.2)  # let the last results reach their clients
                    return

    def reload(self) -> None:
        """SIGHUP: read the config file again and publish what can change without a restart.
        A bad file is refused (logged) and the running config stays."""
        if self.load_config is None or self.settings is None:
            log.log(logs.NOTICE, "reload (SIGHUP): no --config file; nothing to re-read")
            return
        log.log(logs.NOTICE, "reloading %s (SIGHUP)", self.config.config_file or "the config")
        try:
            new = self.load_config()
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return
        config, restart = reload_changes(self.config, new)
        if restart:
            log.warning("reload: %s changed; that takes a restart", ", ".join(restart))
        try:
            generation = self.settings.publish(config)
        except ValueError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return
        self.notifier.reloading()
        self.config = config
        logs.set_level(config.log_level)
        self.reload_generation = generation
        self.reload_deadline = time.monotonic() + RELOAD_TIMEOUT
        for fd in self.doorbells:
            os.eventfd_write(fd, 1)

    def check_reloaded(self) -> None:
        """Once every serving child has applied the reload (or RELOAD_TIMEOUT has passed), say
        so (and READY=1)."""
        behind = [
            child.name
            for child in self.children
            if child.proc is not None
            and self.word(child, layout.CTRL_STATE) == layout.CHILD_READY
            and self.word(child, layout.CTRL_SETTINGS) < self.reload_generation
        ]
        if behind and time.monotonic() < self.reload_deadline:
            return
        if behind:
            log.warning("reload: not applied by %s yet", ", ".join(behind))
        log.log(logs.NOTICE, "reloaded")
        self.reload_generation = 0
        if self.ready:
            self.notifier.ready(self.status_line())

    def start_graceful_stop(self, why: str) -> None:
        if self.graceful_deadline is not None:
            return
        log.log(
            logs.NOTICE,
            "stopping (%s): no new connections or jobs; waiting up to %g s for running jobs",
            why,
            self.config.graceful_timeout,
        )
        self.graceful_deadline = time.monotonic() + self.config.graceful_timeout
        self.notifier.stopping(f"stopping: waiting for {self.running_jobs()} running jobs")
        self.tell_children_to_drain()

    def tell_children_to_drain(self) -> None:
        """SIGUSR1 every child that serves and has not had it (a child still starting gets it once
        it is READY: before it has installed its handlers the signal could kill it)."""
        for child in self.children:
            if child.proc is None or child.drain_sent == child.proc.pid:
                continue
            if self.word(child, layout.CTRL_STATE) == layout.CHILD_READY:
                child.drain_sent = child.proc.pid
                try:
                    child.proc.send_signal(signal.SIGUSR1)
                except ProcessLookupError:
                    pass


def _port_of(fd: int) -> int:
    """The local TCP port of inherited socket `fd` (0 if it has none)."""
    sock = socket.socket(fileno=fd)
    try:
        address = sock.getsockname()
    finally:
        sock.detach()
    return int(address[1]) if isinstance(address, tuple) else 0


def _name_of(fd: int) -> str:
    sock = socket.socket(fileno=fd)
    try:
        address = sock.getsockname()
    finally:
        sock.detach()
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)


def _tls_summary(config: Config) -> str:
    """`tls.tls_summary`, without importing ssl when TLS is off."""
    if not config.tls_cert:
        return ""
    from shardgear.tls import tls_summary

    return tls_summary(config)


def fsize_cap(wanted: int) -> int:
    """`wanted`, or RLIMIT_FSIZE (which caps shared-memory segments too) if that is lower."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    return int(soft) & ~0xFFF


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


def run(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run a server until it is stopped; return the process exit status. `reload` returns the
    config anew (a SIGHUP calls it; it raises ConfigError for a bad file)."""
    logs.setup("supervisor", config.log_level, config.log_format)
    return Supervisor(config, reload).run()
