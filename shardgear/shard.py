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

Crash recovery (ARCHITECTURE.md, "Shard crash"): every change of a job's state goes into the
shard's journal (`shardgear.journal`), a shared-memory segment that outlives the process. At
start a shard whose journal has been written before recovers its predecessor's jobs from it
(`recover`); only a cold start (a fresh journal) replays the store. Each turn publishes the
journal twice: before the turn's messages go into the rings (so no JOB_CREATED precedes its job's
record) and, for job assignments and ends, after (so the journal never claims a JOB_ASSIGN or a
WORK_COMPLETE was sent that is not on its way).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import struct
import time
from collections import deque

import orjson

from shardgear import messages, recovery, routing, shard_admin
from shardgear.config import Config
from shardgear.instance import Instance
from shardgear.jobs import Job
from shardgear.journal import Journal, JournalError
from shardgear.messages import HEADER
from shardgear.proto.packets import NO_JOB_PACKET, PacketType, error_packet
from shardgear.scheduler import Scheduler
from shardgear.shm import layout
from shardgear.shm.channel import Receiver, Sender
from shardgear.shm.ring import Ring
from shardgear.shm.segment import Segment
from shardgear.store import SqliteStore, StoreError

log = logging.getLogger("shardgear.shard")

P = PacketType
REPLY_TYPES = frozenset(
    {
        P.SUBMIT_JOB,
        P.SUBMIT_JOB_BG,
        P.SUBMIT_JOB_HIGH,
        P.SUBMIT_JOB_HIGH_BG,
        P.SUBMIT_JOB_LOW,
        P.SUBMIT_JOB_LOW_BG,
        P.SUBMIT_JOB_EPOCH,
        P.SUBMIT_REDUCE_JOB,
        P.SUBMIT_REDUCE_JOB_BACKGROUND,
        P.GRAB_JOB,
        P.GRAB_JOB_UNIQ,
        P.GRAB_JOB_ALL,
        P.GET_STATUS,
    }
)
GRAB_TYPES = frozenset({P.GRAB_JOB, P.GRAB_JOB_UNIQ, P.GRAB_JOB_ALL})
RESULT_TYPES = frozenset({P.WORK_COMPLETE, P.WORK_FAIL, P.WORK_EXCEPTION})
_JOB_CREATED = struct.pack("!I", P.JOB_CREATED)
OP_SEND = messages.OP_SEND
OP_REPLY = messages.OP_REPLY


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
            self.receivers.append(Receiver(Ring(in_seg.buf)))
            self.senders.append(Sender(Ring(out_seg.buf)))
        board_seg = self._attach(instance.board(index))
        self.board = layout.board_view(board_seg.buf)
        for i in range(len(self.board)):
            self.board[i] = 0  # a restarted shard starts from an empty queue
        journal_seg = self._attach(instance.journal(index))
        try:
            self.journal = Journal(journal_seg.buf, log=log.error)
        except JournalError as exc:
            log.error("journal unreadable (%s): starting it afresh; jobs not stored are lost", exc)
            Journal.initialize(journal_seg.buf)
            self.journal = Journal(journal_seg.buf, log=log.error)
        self.store: SqliteStore | None = None
        if config.store == "sqlite":
            self.store = SqliteStore(
                config.store_path, synchronous=config.store_sync, log=log.error
            )
        self.scheduler = self._new_scheduler()
        self.running = True
        self.draining = False
        self.outbox: list[list[bytes]] = [[] for _ in range(self.fronts)]  # this loop turn's
        self.fronts_seen: set[int] = set()
        self.reply_seqs: dict[int, int] = {}  # index in scheduler.out -> seq of the request

    def _new_scheduler(self) -> Scheduler:
        config = self.config
        return Scheduler(
            shard_index=self.index,
            shard_count=config.shards,
            handle_prefix=config.job_handle_prefix.encode(),
            job_retries=config.job_retries,
            worker_wakeup=config.worker_wakeup,
            board=self.board,
            store=self.store,
            log=log.warning,
        )

    def _attach(self, name: str) -> Segment:
        seg = Segment.attach(name)
        self.segments.append(seg)
        return seg

    def start(self) -> None:
        """Take over the jobs of a dead predecessor from the journal, or (a cold start: the
        journal is fresh) replay the store; then journal everything from a snapshot on."""
        journal = self.journal
        if not journal.fresh:
            try:
                self.recover()
            except Exception:  # a bug must not become a crash loop: fall back to the store
                log.exception("journal recovery failed; replaying the store instead")
                self.scheduler = self._new_scheduler()
                self.replay()
        else:
            self.replay()
        recovery.start_journal(self.scheduler, journal)
        if self.store is not None:
            self.store.commit()

    def recover(self) -> int:
        """Re-create the jobs recorded in the journal of the shard that died; return how many."""
        records = self.journal.read()
        jobs = recovery.recover(self.scheduler, records, time.time())
        running = sum(1 for job in jobs if job.worker is not None)
        log.warning(
            "recovered %d jobs (%d of them running) from the journal of the shard that died",
            len(jobs),
            running,
        )
        if self.store is not None:
            self._adopt_rows(jobs)
        return len(jobs)

    def _adopt_rows(self, jobs: list[Job]) -> None:
        """Map the recovered stored jobs to their store rows (`SqliteStore.adopt`) by content, in
        submission order; re-create jobs from rows that no journaled job claims (a row committed
        just before the journal was published), as a store replay would."""
        store = self.store
        assert store is not None
        shards, index = self.config.shards, self.index
        try:
            rows = store.load(lambda func: routing.shard_for(func, shards) == index)
        except StoreError as exc:
            log.error("stored jobs not matched to the journal: %s", exc)
            return
        by_key: dict[tuple[bytes, bytes, int, bytes, int, bytes], deque[int]] = {}
        for row in rows:
            key = (row.func, row.unique, row.priority, row.data, row.when, row.reducer)
            by_key.setdefault(key, deque()).append(row.id)
        for job in sorted(jobs, key=_handle_number):
            if not job.stored:
                continue
            ids = by_key.get((job.func, job.unique, job.priority, job.data, job.when, job.reducer))
            if ids:
                store.adopt(job.handle, ids.popleft())
            else:
                job.stored = False  # its row is gone (the job ended as the shard died)
        now = time.time()
        sched = self.scheduler
        extra = 0
        for row in rows:
            ids = by_key[(row.func, row.unique, row.priority, row.data, row.when, row.reducer)]
            if ids and ids[0] == row.id:
                ids.popleft()
                handle = recovery.add_recovered(
                    sched, row.func, row.unique, row.data, row.priority, row.when, row.reducer, now
                )
                store.adopt(handle, row.id)
                extra += 1
        if extra:
            log.warning("replayed %d stored background jobs missing from the journal", extra)

    def replay(self) -> int:
        """Re-create the stored background jobs this shard owns; return how many."""
        store = self.store
        if store is None:
            return 0
        shards, index = self.config.shards, self.index
        try:
            rows = store.load(lambda func: routing.shard_for(func, shards) == index)
        except StoreError as exc:
            log.error("stored jobs not replayed: %s", exc)
            return 0
        now = time.time()
        sched = self.scheduler
        for row in rows:
            handle = recovery.add_recovered(
                sched, row.func, row.unique, row.data, row.priority, row.when, row.reducer, now
            )
            store.adopt(handle, row.id)  # a duplicate that coalesced is deleted here
        store.commit()
        if rows:
            log.warning("replayed %d stored background jobs", len(rows))
        return len(rows)

    def commit(self) -> None:
        """Make this turn's background jobs durable before any JOB_CREATED for them goes out.

        If the store fails, the jobs it could not keep are cancelled and their submitters get
        ERROR QUEUE_ERROR instead of JOB_CREATED.
        """
        assert self.store is not None
        lost = self.store.commit()
        if not lost:
            return
        sched = self.scheduler
        lost_set = set(lost)
        for handle in lost:
            shard_admin.cancel_job(sched, handle)
        error = error_packet(b"QUEUE_ERROR", b"Persistent store failed: could not save the job")
        out = sched.out
        for i, (op, conn, body) in enumerate(out):
            if op == OP_SEND and body[4:8] == _JOB_CREATED and body[12:] in lost_set:
                out[i] = (op, conn, error)
        log.error("%d background jobs refused: the store could not keep them", len(lost))

    def run(self, control: memoryview | None = None) -> None:
        """Recover (or replay the store), announce ourselves to every front and serve until
        stopped."""
        self.start()
        epoll = select.epoll()
        epoll.register(self.my_bell, select.EPOLLIN)
        for f in range(self.fronts):
            self.send(f, messages.pack(messages.OP_HELLO, 0, arg=self.index))
        self.flush()
        if control is not None:
            control[layout.CTRL_PID] = os.getpid()
            control[layout.CTRL_STATE] = layout.CHILD_READY
        sched = self.scheduler
        store = self.store
        journal = self.journal
        senders = self.senders
        bell = self.my_bell
        tick = 0
        while self.running:
            deadline = sched.next_deadline()
            timeout = 1.0
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.time()))
            try:
                if epoll.poll(timeout):
                    os.eventfd_read(bell)
            except (InterruptedError, BlockingIOError):
                pass
            now = time.time()
            for f, receiver in enumerate(self.receivers):
                msgs = receiver.receive()
                if receiver.producer_wants_wake():  # also after a fragment alone
                    os.eventfd_write(self.front_bells[f], 1)
                if msgs:
                    self.handle(f, msgs, now)
            deadline = sched.next_deadline()
            if deadline is not None and deadline <= now:
                sched.tick(now)
            if store is not None:
                self.commit()
            if sched.out:
                self.route()
            journal.commit()  # before any reply (JOB_CREATED) can reach a front
            if control is not None:
                # before the flush: once a worker has its JOB_ASSIGN, a graceful stop must
                # already see the job running (this process may be preempted right after)
                control[layout.CTRL_RUNNING_JOBS] = sched.running_count()
            self.flush()
            for sender in senders:
                if sender.queued:
                    break  # some messages are not in a ring yet: keep ASSIGN/DONE back
            else:
                journal.commit_deferred()
            tick += 1
            if control is not None:
                control[layout.CTRL_HEARTBEAT] = tick
        if store is not None:
            store.close()
        journal.commit()
        journal.close()
        for seg in self.segments:
            seg.close()

    def install_signals(self, early: list[int]) -> None:
        """Take over SIGTERM (stop) and SIGUSR1 (drain), applying any that came early."""
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGUSR1, self._on_sigusr1)
        for sig in early:
            (self._on_sigterm if sig == signal.SIGTERM else self._on_sigusr1)(sig, None)

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.running = False

    def _on_sigusr1(self, signum: int, frame: object) -> None:
        self.draining = True  # a graceful stop: running jobs finish, no new ones are handed out

    def handle(self, front: int, msgs: list[bytes], now: float) -> None:
        sched = self.scheduler
        for m in msgs:
            op, arg, extra, conn = HEADER.unpack_from(m)
            if op == messages.OP_PACKET:
                if self.draining and arg in GRAB_TYPES:
                    self.reply_seqs[len(sched.out)] = extra
                    sched.out.append((OP_SEND, conn, NO_JOB_PACKET))
                elif extra == messages.REPLAYED and arg in RESULT_TYPES:
                    # a result re-sent after our predecessor died: apply it if the job is still
                    # running here; an error ("not found": it was done) must not reach the worker
                    out = sched.out
                    start = len(out)
                    sched.handle_packet(conn, arg, m[16:], now)
                    out[start:] = [e for e in out[start:] if e[1] != conn]
                elif arg in REPLY_TYPES:
                    out = sched.out
                    start = len(out)
                    sched.handle_packet(conn, arg, m[16:], now)
                    self._mark_reply(start, conn, extra)
                else:
                    sched.handle_packet(conn, arg, m[16:], now)
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
                recovery.front_synced(sched, front, now)  # its workers' registrations have arrived
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

    def _mark_reply(self, start: int, conn: int, seq: int) -> None:
        """Mark the first packet sent to `conn` since `start` as the reply numbered `seq`."""
        out = self.scheduler.out
        for i in range(start, len(out)):
            op, c, _body = out[i]
            if c == conn and op == OP_SEND:
                self.reply_seqs[i] = seq
                return
        log.error("no reply produced for a request of connection %x", conn)

    def route(self) -> None:
        """Write the scheduler's effects to the rings of the fronts that own the connections."""
        out, self.scheduler.out = self.scheduler.out, []
        seqs, self.reply_seqs = self.reply_seqs, {}
        pack = HEADER.pack
        outbox = self.outbox
        fronts = self.fronts
        for i, (op, conn, body) in enumerate(out):
            front = conn >> messages.FRONT_SHIFT
            if front >= fronts:
                continue
            seq = seqs.get(i) if seqs else None
            if seq is None:
                outbox[front].append(pack(op, 0, 0, conn) + body)
            else:
                outbox[front].append(pack(OP_REPLY, 0, seq, conn) + body)

    def send(self, front: int, message: bytes) -> None:
        self.outbox[front].append(message)

    def flush(self) -> None:
        """Move this turn's messages into the rings (one publish per ring) and ring doorbells."""
        outbox = self.outbox
        for f, sender in enumerate(self.senders):
            box = outbox[f]
            if box:
                outbox[f] = []
                sender.send_many(box)
            if sender.flush():
                os.eventfd_write(self.front_bells[f], 1)

    def admin(self, conn: int, gid: int, body: bytes) -> None:
        """Answer an admin request from a front (orjson in, orjson out)."""
        request = orjson.loads(body)
        result = shard_admin.answer(self.scheduler, request, log.error)
        self.send(
            messages.front_of(conn),
            messages.pack(messages.OP_ADMIN_REPLY, conn, orjson.dumps(result), extra=gid),
        )


def _handle_number(job: Job) -> int:
    return job.n
