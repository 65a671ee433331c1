"""Connection churn and fuzzing against the real server (2 fronts x 2 shards) while real clients
and workers run jobs (issue 7).

Fuzzing threads open connections that send, in any mix: gathered admin commands (status,
workers, show jobs...), random bytes, valid headers with random types and sizes (bodies cut
short or random), oversized sizes, text lines of random words, response-magic packets; and end
them by closing, by RST (SO_LINGER 0), by a half-close (then reading to EOF), or in the middle of
a packet. Meanwhile clients submit foreground and background jobs at every priority and workers
complete them.

It passes only if every acknowledged job completes (a foreground client gets its WORK_COMPLETE,
a background job is run by a worker), no front or shard was restarted (their pids are compared,
and the supervisor's log is checked), and the server's memory settles: after a third round of
the same churn the fronts' private memory has grown by less than 2 MiB, the whole server's by
less than 6 MiB (1200 connections a round).

Bounded: a fixed number of connections per round, every wait bounded, each round cut at
ROUND_SECONDS. The random seed is printed (set SHARDGEAR_FUZZ_SEED to replay one).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.gearclient import (
    CAN_DO,
    GRAB_JOB,
    JOB_ASSIGN,
    JOB_CREATED,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    SUBMIT_JOB,
    SUBMIT_JOB_BG,
    SUBMIT_JOB_HIGH,
    SUBMIT_JOB_HIGH_BG,
    SUBMIT_JOB_LOW,
    SUBMIT_JOB_LOW_BG,
    WORK_COMPLETE,
    Conn,
    packet,
    wait_for,
)
from tests.integration.test_lifecycle import VERSION_REPLY, assert_no_child_restarted, version_round
from tests.integration.test_restart import children

pytestmark = pytest.mark.shardgear_only

FUZZERS = 4
CONNECTIONS_PER_ROUND = 300  # per fuzzing thread
ROUND_SECONDS = 12.0
CLIENTS = 3
WORKERS = 3
GATHERED = [b"status\n", b"workers\n", b"prioritystatus\n", b"show jobs\n", b"show unique jobs\n"]
ADMIN_WORDS = [
    b"status", b"workers", b"prioritystatus", b"show", b"jobs", b"unique", b"version",
    b"getpid", b"verbose", b"maxqueue", b"create", b"function", b"drop", b"fuzz", b"-1",
    b"99999999999999999999", b"\t", b"", b"\xff\xfe", b"  ",
]  # never "shutdown" (it would stop the server) nor "cancel" (it could cancel a load job)
FG = (SUBMIT_JOB, SUBMIT_JOB_HIGH, SUBMIT_JOB_LOW)
BG = (SUBMIT_JOB_BG, SUBMIT_JOB_HIGH_BG, SUBMIT_JOB_LOW_BG)


def private_kib(pids: dict[str, int]) -> int:
    """Resident private memory (RssAnon) of the processes, KiB. Shared memory is left out: the
    rings and journals are touched page by page as their positions advance, up to their fixed
    sizes."""
    total = 0
    for pid in pids.values():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                total += int(line.split()[1])
    return total


class Load:
    """Clients and workers doing real jobs, strictly: any lost connection is a failure."""

    def __init__(self, address: str, funcs: list[bytes], timeout: float = 30.0) -> None:
        self.address = address
        self.funcs = funcs
        self.timeout = timeout
        self.lock = threading.Lock()
        self.acked_bg: set[bytes] = set()
        self.ran: set[bytes] = set()
        self.fg_done = 0
        self.stop = threading.Event()  # clients stop submitting
        self.clients_done = threading.Event()  # no client waits for a result any more
        self.errors: list[str] = []

    def client(self, i: int) -> None:
        rng = random.Random(i)
        n = 0
        step = "connect"
        try:
            c = Conn(self.address, timeout=30)
            while not self.stop.is_set():
                n += 1
                payload = b"c%d-%d" % (i, n)
                func = rng.choice(self.funcs)
                if rng.random() < 0.5:
                    step = f"JOB_CREATED of background {payload!r}"
                    c.send(rng.choice(BG), func, b"", payload)
                    assert c.expect(JOB_CREATED, timeout=self.timeout)
                    with self.lock:
                        self.acked_bg.add(payload)
                else:
                    step = f"JOB_CREATED of foreground {payload!r}"
                    c.send(rng.choice(FG), func, b"", payload)
                    handle = c.expect(JOB_CREATED, timeout=self.timeout)[0]
                    step = f"WORK_COMPLETE of {handle!r} {payload!r}"
                    assert c.expect(WORK_COMPLETE, timeout=self.timeout) == [handle, payload[::-1]]
                    with self.lock:
                        self.fg_done += 1
                time.sleep(0.002)
            c.close()
        except BaseException as exc:
            self.errors.append(f"client {i} waiting for {step}: {exc!r}; {self.diagnosis()}")

    def diagnosis(self) -> str:
        """What the server says of the load's functions and jobs (for a failure message)."""
        host, _, port = self.address.rpartition(":")
        out = []
        try:
            for command in (b"status\n", b"show jobs\n", b"workers\n"):
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(command)
                    s.shutdown(socket.SHUT_WR)
                    reply = b""
                    while chunk := s.recv(65536):
                        reply += chunk
                lines = reply.decode("latin-1").splitlines()
                names = [f.decode() for f in self.funcs]
                keep = [x for x in lines if any(n in x for n in names) or x.startswith("H:")]
                out.append(f"{command.strip().decode()}: {keep[:40]}")
        except Exception as exc:
            out.append(f"(diagnosis failed: {exc!r})")
        return "; ".join(out)

    def worker(self, i: int) -> None:
        try:
            w = Conn(self.address, timeout=30)
            for f in self.funcs:
                w.send(CAN_DO, f)
            while not self.clients_done.is_set() or not self.drained():
                w.send(GRAB_JOB)
                ptype, args = w.recv(timeout=30)
                while ptype == NOOP:
                    ptype, args = w.recv(timeout=30)
                if ptype == NO_JOB:
                    w.send(PRE_SLEEP)
                    try:
                        assert w.recv(timeout=0.2)[0] == NOOP
                    except TimeoutError:
                        pass
                    continue
                assert ptype == JOB_ASSIGN, (ptype, args)
                handle, _func, payload = args
                with self.lock:
                    self.ran.add(payload)
                w.send(WORK_COMPLETE, handle, payload[::-1])
            w.close()
        except BaseException as exc:
            self.errors.append(f"worker {i}: {exc!r}; {self.diagnosis()}")

    def drained(self) -> bool:
        with self.lock:
            return self.acked_bg <= self.ran


class Fuzzer:
    def __init__(self, host: str, port: int, rng: random.Random, deadline: float) -> None:
        self.host = host
        self.port = port
        self.rng = rng
        self.deadline = deadline
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        try:
            for _ in range(CONNECTIONS_PER_ROUND):
                if time.monotonic() > self.deadline:
                    break
                self.one()
                self.done += 1
        except BaseException as exc:
            self.errors.append(repr(exc))

    def payload(self) -> bytes:
        rng = self.rng
        parts = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(8)
            if kind == 0:
                parts.append(rng.choice(GATHERED))
            elif kind == 1:
                parts.append(rng.randbytes(rng.randint(1, 300)))
            elif kind == 2:  # a valid header, a random type and size, the body cut or random
                size = rng.choice([0, 1, 7, 64, 1000, 70000])
                body = rng.randbytes(min(size, rng.randint(0, size)))
                parts.append(struct.pack(">4sII", b"\0REQ", rng.randint(0, 50), size) + body)
            elif kind == 3:  # oversized
                size = rng.randint(256 * 1024 * 1024 + 1, 0xFFFFFFFF)
                parts.append(struct.pack(">4sII", b"\0REQ", rng.randint(1, 42), size))
            elif kind == 4:  # text words
                words = [rng.choice(ADMIN_WORDS) for _ in range(rng.randint(1, 7))]
                parts.append(b" ".join(words) + b"\n")
            elif kind == 5:  # response magic
                parts.append(packet(rng.randint(1, 42), rng.randbytes(8), magic=b"\0RES"))
            elif kind == 6:  # a well-formed request that needs a shard
                func = b"fuzz-%d" % rng.randrange(20)
                parts.append(packet(rng.choice([SUBMIT_JOB, CAN_DO, GRAB_JOB]), func, b"", b"x"))
            else:
                parts.append(b"\0RE")  # a cut header
        return b"".join(parts)

    def one(self) -> None:
        rng = self.rng
        s = socket.create_connection((self.host, self.port), timeout=5)
        try:
            data = self.payload()
            ending = rng.randrange(4)
            if ending == 3:  # closed in the middle of what it was sending
                data = data[: rng.randint(0, len(data))]
            try:
                s.sendall(data)
            except (ConnectionResetError, BrokenPipeError):
                return  # the server refused the input and closed first: fine
            if ending == 0:
                s.close()
            elif ending == 1:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            elif ending == 2:  # half-close: everything owed, then EOF (bounded)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(15)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    try:
                        if not s.recv(65536):
                            break
                    except ConnectionResetError:
                        break
                else:
                    raise AssertionError(f"no EOF after a half-close of {data[:80]!r}")
            else:
                s.close()
        finally:
            s.close()


def fuzz_round(srv, seed: int) -> int:
    rng = random.Random(seed)
    deadline = time.monotonic() + ROUND_SECONDS
    fuzzers = [
        Fuzzer(srv.host, srv.port, random.Random(rng.getrandbits(64)), deadline)
        for _ in range(FUZZERS)
    ]
    threads = [threading.Thread(target=f.run, daemon=True) for f in fuzzers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ROUND_SECONDS + 30)
    assert not any(t.is_alive() for t in threads), "a fuzzing thread hung"
    errors = [e for f in fuzzers for e in f.errors]
    assert not errors, errors
    return sum(f.done for f in fuzzers)


def test_churn_and_fuzz_while_jobs_run(start_server, make_name):
    seed = int(os.environ.get("SHARDGEAR_FUZZ_SEED") or random.randrange(1 << 32))
    print(f"SHARDGEAR_FUZZ_SEED={seed}")
    srv = start_server("--fronts", "2", "--shards", "2")
    funcs = [make_name(shard=0), make_name(shard=1)]
    pids = children(srv.pid)
    load = Load(srv.address, funcs)
    threads = [threading.Thread(target=load.worker, args=(i,)) for i in range(WORKERS)]
    threads += [threading.Thread(target=load.client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.daemon = True
    for t in threads:
        t.start()
    try:
        rounds = []
        fronts = {k: v for k, v in pids.items() if k.startswith("front")}
        for r in range(3):
            done = fuzz_round(srv, seed + r)
            assert version_round(srv) == VERSION_REPLY
            time.sleep(1.0)  # let closing connections and heap trims finish
            rounds.append((done, private_kib(pids), private_kib(fronts)))
        assert not load.errors, (seed, load.errors)
    finally:
        load.stop.set()
        for t in threads[WORKERS:]:
            t.join(40)
        load.clients_done.set()
        wait_for(load.drained, timeout=60, what="every acknowledged background job to run")
        for t in threads[:WORKERS]:
            t.join(40)
    for error in load.errors:
        print(error)
    assert not load.errors, (seed, load.errors)
    assert not any(t.is_alive() for t in threads), "a client or worker hung"
    report = (
        f"seed {seed}: fuzz connections per round {[r[0] for r in rounds]}, private KiB "
        f"after each {[r[1] for r in rounds]} (fronts {[r[2] for r in rounds]}), "
        f"{len(load.acked_bg)} background and {load.fg_done} foreground jobs acknowledged "
        "and completed"
    )
    print(report)
    assert load.fg_done > 10 and len(load.acked_bg) > 10, report
    assert all(r[0] > 100 for r in rounds), report
    assert load.acked_bg <= load.ran, report
    assert_no_child_restarted(srv, pids)
    # Memory settles: the fronts keep nothing of a closed connection (a Conn with its socket and
    # parser is a few KiB: 1200 of them kept would show); the shards keep only the jobs and
    # functions the fuzzers created. The slack is heap growth in steps, and the fronts' bounded
    # list of recent work results (front_recovery.RecentResults) filling up with the load's.
    _, (_, s2, f2), (_, s3, f3) = rounds
    assert f3 - f2 < 2048 and s3 - s2 < 6 * 1024, f"memory kept growing: {report}"
