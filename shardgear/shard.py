"""A shard process: the I/O loop around the job core of the functions that hash to it.

Theory of operation
-------------------
The shard sleeps in epoll on its doorbell (an eventfd that fronts write after they put messages in
its rings) with a timeout set by the scheduler's next timer (epoch jobs, CAN_DO_TIMEOUT). Each turn
it drains every input ring, feeds the messages to `Scheduler`, fires due timers, then routes the
effects to the rings of the fronts that own the connections and rings each of those fronts'
doorbells once.

A request that expects exactly one reply (SUBMIT_JOB*, GRAB_JOB*, GET_STATUS) carries a sequence
number; the first packet the scheduler sends back to that connection while handling it is that
reply, and goes out as OP_REPLY with the same sequence number so the front can keep replies in
request order.

Recovery (ARCHITECTURE.md, "Shard crash" and "The job log"): every change of a job's state goes
into the shard's job log (`shardgear.joblog`), a file that outlives the process. At start a shard
reads it: if this run wrote it, the shard's predecessor died and every job is recovered; if an
earlier run did, its durable background jobs are. Each turn writes the log before the turn's
messages go into the rings (so no JOB_CREATED precedes its job's record), and job assignments and
ends only once the messages that announce them are in the rings (so the log never claims a
JOB_ASSIGN or a WORK_COMPLETE was sent that is not on its way).
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import struct
import time

import orjson

from shardgear import deadset, lease, logs, messages, recovery, routing, shard_admin
from shardgear.config import Config
from shardgear.cron import Crontab
from shardgear.cron import db_path as cron_db_path
from shardgear.deadset import DeadSet
from shardgear.function_settings import FunctionSettingsApplier
from shardgear.instance import Instance
from shardgear.joblog import JobLog, read_log
from shardgear.limits import FunctionLimits
from shardgear.live_config import SettingsReader
from shardgear.messages import HEADER, LEASABLE
from shardgear.proto.packets import NO_JOB_PACKET, SUBMIT_TYPES, PacketType
from shardgear.retries import RetryPolicy
from shardgear.scheduler import ERR_STORE, Scheduler
from shardgear.shm import layout
from shardgear.shm.channel import Piece, Receiver, Sender
from shardgear.shm.doorbell import announce_sleep, awake, fence
from shardgear.shm.ring import Ring
from shardgear.shm.segment import Segment
from shardgear.stats import ChildStats, FunctionStats

log = logging.getLogger("shardgear.shard")

P = PacketType
# GRAB_JOB*, plain and as a front flags them when the shard may lease the worker its next job
GRAB_TYPES: frozenset[int] = frozenset(
    int(t) | flag for t in (P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL) for flag in (0, LEASABLE)
)
REPLY_TYPES: frozenset[int] = GRAB_TYPES | SUBMIT_TYPES | {int(P.GET_STATUS)}
SUBMIT_JOB_SCHED = int(P.SUBMIT_JOB_SCHED)
RESULT_TYPES = frozenset({P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION})
_JOB_CREATED = struct.pack("!I", P.JOB_CREATED)
OP_REPLY = messages.OP_REPLY
PAUSE_HIGH_WATER = 8 * 1024 * 1024  # bytes waiting for the output rings before input stops


class Shard:
    """One shard process. `run()` serves until SIGTERM."""

    def __init__(
        self, config: Config, index: int, instance: Instance, doorbells: list[int]
    ) -> None:
        self.config = config
        self.index = index
        self.fronts = config.fronts
        self.my_bell = doorbells[config.fronts + index]
        self.front_bells = doorbells[: config.fronts]
        self.segments: list[Segment] = []
        self.senders: list[Sender] = []
        self.receivers: list[Receiver] = []
        for f in range(self.fronts):
            in_seg = self._attach(instance.to_shard(f, index))
            out_seg = self._attach(instance.to_front(index, f))
            self.receivers.append(Receiver(Ring(in_seg.buf), messages.LARGE_MARKER))
            self.senders.append(Sender(Ring(out_seg.buf)))
        board_seg = self._attach(instance.board(index))
        self.board = layout.board_view(board_seg.buf)
        for i in range(len(self.board)):
            self.board[i] = 0  # a restarted shard starts from an empty queue
        self.joblog = JobLog(
            config.job_log_path(index, instance.supervisor_pid),
            sync=config.store_sync == "full",
            log=log.error,
        )
        self.settings = SettingsReader(self._attach(instance.settings).buf)
        self.function_settings = FunctionSettingsApplier(config)
        # operators' numbers (stats.py); per-function counters only with --metrics or --http
        self.stats = ChildStats(
            self._attach(instance.stats).buf, instance.shard_slot(index), shard=index
        )
        self.function_stats = FunctionStats() if config.function_stats else None
        self.control: memoryview | None = None
        self.dead = DeadSet(
            deadset.db_path(config.state_dir, config.port),
            self._owns,
            self._retry_policy,
            synchronous=config.store_sync,
            log=log.error,
        )
        self.cron = Crontab(
            cron_db_path(config.state_dir, config.port),
            self._owns,
            synchronous=config.store_sync,
            log=log.error,
        )
        self.scheduler = self._new_scheduler()
        self.running = True
        self.draining = False
        self.paused = False  # see flush
        self.outbox: list[list[bytes]] = [[] for _ in range(self.fronts)]  # this loop turn's
        self.fronts_seen: set[int] = set()

    def _new_scheduler(self) -> Scheduler:
        config = self.config
        return Scheduler(
            shard_index=self.index,
            shard_count=config.shards,
            handle_prefix=config.job_handle_prefix.encode(),
            job_retries=config.job_retries,
            worker_wakeup=config.worker_wakeup,
            board=self.board,
            durable=self.config.store != "none",
            log=log.warning,
            on_new_function=self.function_settings.apply,
            metrics=self.function_stats,
            dead_letters=self.dead,
            rng=random.Random(),
            limits=FunctionLimits(
                config.max_functions,
                config.max_function_name,
                config.max_queued_bytes,
                config.shards,
            ),
        )

    def _owns(self, func: bytes) -> bool:
        return routing.shard_for(func, self.config.shards) == self.index

    def _retry_policy(self, func: bytes) -> RetryPolicy | None:
        """A function's retry policy in the running config (for the dead set's bounds)."""
        return self.config.function_settings(func).retry

    def _attach(self, name: str) -> Segment:
        seg = Segment.attach(name)
        self.segments.append(seg)
        return seg

    def start(self, run_id: int) -> None:
        """Recover the jobs in our job log (a dead predecessor's, all of them, if it was written
        in this run `run_id`; else an earlier run's durable background jobs), then begin a fresh
        log with a snapshot. A log that cannot be read or makes recovery fail starts us empty,
        with an error: a bug must not become a crash loop."""
        path = self.joblog.path
        try:
            contents = read_log(path)
            if contents is not None:
                self.progress(len(contents.records))
        except OSError as exc:
            log.error("job log %s unreadable (%s): starting without its jobs", path, exc)
            contents = None
        if contents is not None:
            if contents.skipped:
                log.error(
                    "job log %s: skipped %d corrupt or torn region(s); their jobs are not "
                    "recovered",
                    path,
                    contents.skipped,
                )
            same_run = contents.run_id == run_id
            try:
                if same_run:
                    jobs = recovery.recover(self.scheduler, contents.records, time.time())
                    log.warning(
                        "recovered %d jobs (%d of them running) from the log of the shard "
                        "that died",
                        len(jobs),
                        sum(1 for job in jobs if job.worker is not None),
                    )
                else:
                    jobs = recovery.recover_cold(self.scheduler, contents.records, time.time())
                    if jobs:
                        log.warning("recovered %d stored background jobs", len(jobs))
            except Exception:
                log.exception("recovery from job log %s failed: starting empty", path)
                self.scheduler = self._new_scheduler()
        if not recovery.start_log(
            self.scheduler, self.joblog, run_id, self.index, self.config.shards
        ):
            log.error("job log %s cannot be written: background jobs are refused", path)
        if self.cron.load(time.time()):
            log.info("%d schedules loaded", len(self.cron.schedules()))

    def progress(self, done: int) -> None:
        """Tell the supervisor that a long start moves on: it extends systemd's start timeout
        while this advances."""
        if self.control is not None:
            self.control[layout.CTRL_PROGRESS] += 1 + done

    def publish_stats(self, now: float) -> None:
        """Once a second: gauges, the job log's size, and the function table with --metrics or
        --http."""
        sched = self.scheduler
        running = sched.running_count()
        fs = self.function_stats
        self.stats.publish(
            now,
            sched.job_count() - running,
            running,
            self.joblog.size,
            self.joblog.compactions,
            fs.table(sched.functions()) if fs is not None else None,
        )

    def commit(self) -> None:
        """Write this turn's records to the job log before any reply for them leaves.

        Background jobs the log could not write are cancelled and their submitters get ERROR
        QUEUE_ERROR instead of JOB_CREATED.
        """
        joblog = self.joblog
        if joblog.pending:  # a write: count it (stats.py)
            size, failures, started = joblog.size, joblog.failures, time.perf_counter()
            lost = joblog.commit()
            if joblog.failures != failures:
                self.stats.commit_failed()
            else:
                self.stats.commit_done(joblog.size - size, time.perf_counter() - started)
        else:
            lost = joblog.commit()
        if not lost:
            return
        sched = self.scheduler
        lost_set = set(lost)
        self.dead.keep_replays_of(lost_set)
        self.cron.refused(lost_set)
        for handle in lost:
            shard_admin.cancel_job(sched, handle)
        out = sched.out
        for i, m in enumerate(out):  # header (16 bytes), then the packet
            if m[20:24] == _JOB_CREATED and m[28:] in lost_set:
                out[i] = m[:16] + ERR_STORE
        log.error("%d background jobs refused: the job log could not keep them", len(lost))

    def run(self, control: memoryview | None = None) -> None:
        """Recover from the job log, announce ourselves to every front and serve until
        stopped. `control` is our control block (its run id tells a crash from a new run)."""
        self.control = control
        self.start(int(control[layout.CTRL_RUN_ID]) if control is not None else 0)
        epoll = select.epoll()
        epoll.register(self.my_bell, select.EPOLLIN)
        for f in range(self.fronts):
            self.send(f, messages.pack(messages.OP_HELLO, 0, arg=self.index))
        self.flush()
        if control is not None:
            control[layout.CTRL_PID] = os.getpid()
            control[layout.CTRL_STATE] = layout.CHILD_READY
        sched = self.scheduler
        joblog = self.joblog
        senders = self.senders
        receivers = self.receivers
        in_rings = [r.ring for r in receivers]
        bell = self.my_bell
        stats = self.stats
        dead, cron = self.dead, self.cron
        tick = 0
        while self.running:
            timeout = 1.0
            if joblog.pending:
                timeout = 0.0  # held-back records wait for the next commit: turn again now
            else:
                deadline = sched.next_deadline()
                if deadline is not None:
                    timeout = min(timeout, max(0.0, deadline - time.time()))
                due = cron.next_deadline()
                if due is not None:
                    timeout = min(timeout, max(0.0, due - time.time()))
            if self.paused:
                pass  # input waits; a front rings us once it has made room in our output rings
            elif not announce_sleep(in_rings):
                timeout = 0.0  # a front wrote meanwhile: drain it, do not block
            try:
                if epoll.poll(timeout):
                    os.eventfd_read(bell)
            except (InterruptedError, BlockingIOError):
                pass
            awake(in_rings)
            now = time.time()
            for f, receiver in enumerate(receivers):
                if self.paused:
                    break  # our output to the fronts is backed up: take no new work
                msgs = receiver.receive()
                if msgs:
                    self.handle(f, msgs, now)
            fence()  # our head stores, then the fronts' producer_waiting flags
            for f, receiver in enumerate(receivers):
                if receiver.producer_wants_wake():  # also after a fragment alone
                    os.eventfd_write(self.front_bells[f], 1)
            deadline = sched.next_deadline()
            if deadline is not None and deadline <= now:
                sched.tick(now)
            if not self.draining:
                cron.run_due(sched, now)
            elif sched.leasing:
                lease.stop(sched)  # a graceful stop: no new leases, and the held ones back
            dead.commit(now)  # a dead job's row is durable before its DONE record
            self.commit()  # before any reply (JOB_CREATED) can reach a front
            cron.commit()  # a run's job is durable before its minute is marked done
            if sched.out:
                self.route()
            if control is not None:
                # before the flush: once a worker has its JOB_ASSIGN, a graceful stop must
                # already see the job running (this process may be preempted right after)
                control[layout.CTRL_RUNNING_JOBS] = sched.running_count() + sched.leased_count()
            self.flush()
            flushed = True
            for sender in senders:
                if sender.queued:
                    flushed = False  # some messages are not in a ring yet: keep ASSIGN/DONE back
                    break
            joblog.end_turn(flushed)
            tick += 1
            if control is not None:
                control[layout.CTRL_HEARTBEAT] = tick
                if self.settings.changed():  # a reload (live_config)
                    self.apply_settings(control)
            if now >= stats.next_publish:  # once a second (stats.py)
                self.publish_stats(now)
        joblog.close()
        dead.close()
        cron.close()
        for seg in self.segments:
            seg.close()

    def apply_settings(self, control: memoryview) -> None:
        """Apply a reloaded config: log level, job retries, wake-ups, per-function settings."""
        got = self.settings.read()
        if got is None:
            return
        generation, config = got
        self.config = config
        logs.set_level(config.log_level)
        sched = self.scheduler
        sched.job_retries = config.job_retries
        sched.worker_wakeup = config.worker_wakeup
        changed = self.function_settings.reload(config, sched.functions())
        if changed:
            log.info("reload: new settings for %d functions", changed)
        control[layout.CTRL_SETTINGS] = generation

    def install_signals(self, early: list[int]) -> None:
        """Take over SIGTERM (stop) and SIGUSR1 (drain), applying any that came early."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)
        for sig in early:
            (self._on_sigterm if sig == signal.SIGTERM else self._on_sigusr1)(sig, None)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.running = False
        os.eventfd_write(self.my_bell, 1)  # out of epoll now, not at its timeout

    def _on_sigusr1(self, signum: int, frame: object) -> None:
        self.draining = True  # a graceful stop: running jobs finish, no new ones are handed out

    def handle(self, front: int, msgs: list[bytes], now: float) -> None:
        sched = self.scheduler
        for m in msgs:
            op, arg, extra, conn = HEADER.unpack_from(m)
            if op == messages.OP_PACKET:
                self.packet(conn, arg, extra, m[16:], now)
            elif op == messages.OP_LARGE:
                self.large(front, self.receivers[front].take_large(), now)
            elif op == messages.OP_DISCONNECT:
                sched.disconnect(conn, now)
            elif op == messages.OP_HELLO:
                log.log(
                    logging.WARNING if arg in self.fronts_seen else logging.DEBUG,
                    "front %d started",
                    arg,
                )
                self.fronts_seen.add(arg)
                sched.drop_front(arg, now)
            elif op == messages.OP_ADMIN:
                self.admin(conn, extra, m[16:])
            elif op == messages.OP_PING:
                # its workers' registrations have arrived; the body lists its open connections
                recovery.front_synced(sched, front, recovery.live_connections(m[16:]), now)
                self.route()  # the PONG must follow every reply to what came before the PING
                self.send(front, messages.pack(messages.OP_PONG, conn, extra=extra))
            elif op == messages.OP_RELAY:
                for f in range(self.fronts):
                    self.send(f, messages.pack(messages.OP_RELAY, conn, m[16:], extra=extra))
            elif op == messages.OP_RELAY_REPLY:
                self.send(
                    messages.front_of(conn),
                    messages.pack(messages.OP_RELAY_REPLY, conn, m[16:], extra=extra),
                )
            else:
                log.error("unknown message op %d from front %d", op, front)

    def packet(self, conn: int, arg: int, extra: int, body: bytes, now: float) -> None:
        """A Gearman request (OP_PACKET) from connection `conn`."""
        sched = self.scheduler
        if arg in REPLY_TYPES:
            if self.draining and arg in GRAB_TYPES:
                sched.out.append(HEADER.pack(OP_REPLY, 0, extra, conn) + NO_JOB_PACKET)
            else:
                sched.handle_packet(conn, arg, body, now, extra)
        elif arg == SUBMIT_JOB_SCHED:  # cron.py: a schedule, kept by this shard
            cfg = self.config
            packet = self.cron.submit(
                body,
                now,
                sched._new_handle,
                cfg.max_function_name,
                -(-cfg.max_schedules // cfg.shards),  # this shard's share
            )
            sched.out.append(HEADER.pack(OP_REPLY, 0, extra, conn) + packet)
        elif extra == messages.REPLAYED and arg in RESULT_TYPES:
            # a result re-sent after our predecessor died: apply it if the job is still
            # running here; an error ("not found": it was done) must not reach the worker
            out = sched.out
            start = len(out)
            sched.handle_packet(conn, arg, body, now)
            out[start:] = [e for e in out[start:] if HEADER.unpack_from(e)[3] != conn]
        else:
            sched.handle_packet(conn, arg, body, now)

    def large(self, front: int, fragments: list[bytes], now: float) -> None:
        """A message from `front` that came in fragments: a large result is relayed as its
        fragments (`Scheduler.large_result`), never joined; anything else is joined once."""
        op, arg, extra, conn = HEADER.unpack_from(fragments[0])
        body: list[Piece] = [memoryview(fragments[0])[16:], *fragments[1:]]
        if (
            op == messages.OP_PACKET
            and extra != messages.REPLAYED
            and self.scheduler.large_result(conn, arg, body, now)
        ):
            return
        # Joined once, the fragments let go before the request is handled (a submission's split
        # makes one more copy): 2P at most, never 3P.
        whole = b"".join(body if op == messages.OP_PACKET else fragments)
        body.clear()
        fragments.clear()
        if op == messages.OP_PACKET:
            self.packet(conn, arg, extra, whole, now)
        else:
            self.handle(front, [whole], now)

    def route(self) -> None:
        """Move the scheduler's messages to the outboxes of the fronts that own their
        connections (a connection's front is the top byte of its id: byte 15 of a message)."""
        out, self.scheduler.out = self.scheduler.out, []
        outbox = self.outbox
        fronts = self.fronts
        for m in out:
            front = m[15]
            if front < fronts:
                outbox[front].append(m)

    def send(self, front: int, message: bytes) -> None:
        self.outbox[front].append(message)

    def flush(self) -> None:
        """Move this turn's messages into the rings (one publish per ring) and ring the doorbells
        of the fronts that announced sleep (shm/doorbell.py). Pause reading the input rings while
        more than PAUSE_HIGH_WATER bytes wait for room in the output rings (a front draining
        slowly, or dead until it restarts): what workers stream to slow clients then waits in the
        fronts (paused too) and the workers' sockets, not in this process's memory."""
        outbox = self.outbox
        wrote = 0  # bit mask of the rings written
        pending = 0
        tails = self.scheduler.tails
        for f, sender in enumerate(self.senders):
            box = outbox[f]
            if box:
                outbox[f] = []
                if tails:
                    self._send_with_tails(sender, box, tails)
                else:
                    sender.send_many(box)
            if sender.flush():
                wrote |= 1 << f
            pending += sender.pending
        if tails:
            tails.clear()  # (those of messages dropped on the way: none in the usual case)
        if wrote:
            fence()
            for f, sender in enumerate(self.senders):
                if wrote >> f & 1 and sender.ring.consumer_sleeping:
                    os.eventfd_write(self.front_bells[f], 1)
        paused = pending > PAUSE_HIGH_WATER
        if paused != self.paused:
            self.paused = paused
            log.debug("reading from fronts %s", "paused" if paused else "resumed")

    @staticmethod
    def _send_with_tails(
        sender: Sender, box: list[bytes], tails: dict[int, tuple[bytes, list[Piece]]]
    ) -> None:
        """send_many, but a message with a tail (`Scheduler.tails`) goes with its tail in parts."""
        start = 0
        for i, m in enumerate(box):
            tail = tails.pop(id(m), None)
            if tail is not None and tail[0] is m:
                sender.send_many(box[start:i])
                sender.send_parts([m, *tail[1]])
                start = i + 1
        sender.send_many(box[start:] if start else box)

    def admin(self, conn: int, gid: int, body: bytes) -> None:
        """Answer an admin request from a front (orjson in, orjson out)."""
        request = orjson.loads(body)
        cmd = str(request.get("cmd", ""))
        if cmd.startswith("dead_"):
            result = deadset.answer(self.dead, self.scheduler, request, time.time())
        elif cmd.startswith("cron_"):
            result = self.cron.answer(request)
        else:
            result = shard_admin.answer(self.scheduler, request, log.error)
        self.send(
            messages.front_of(conn),
            messages.pack(messages.OP_ADMIN_REPLY, conn, orjson.dumps(result), extra=gid),
        )
