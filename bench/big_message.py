"""One big message (issues 7 and 11): server memory and time of a P-byte foreground round trip.

For each server and payload size P, one client submits a foreground SUBMIT_JOB of P bytes, one
worker grabs it and echoes the payload back in WORK_COMPLETE, and the client reads the result and
checks it. Client and worker are raw sockets in this process (each in its own thread), so that
their copies of the payload are not in the server's numbers. While the job runs, the server's
memory is sampled every ~20 ms: the sum of Pss (``/proc/PID/smaps_rollup``) over the server's
process tree (supervisor, fronts, shards; shared memory counted once), and the peak is reported
with the wall time of the round trip (from the client's first byte to its last), in MB (10^6) and
as a multiple of P.

    python -m bench.big_message [--sizes 256M 1G] [--servers gearmand shardgear:1x1 shardgear:2x2]
                                [--shardgear-cmd CMD] [--grab-all]

With ``--grab-all`` the worker grabs with GRAB_JOB_ALL, as libgearman's workers do, and gets the
job as a JOB_ASSIGN_UNIQ (the payload after the unique id) instead of a JOB_ASSIGN.

Servers start as `bench.servers` starts them (gearmand 1.1.x with ``--threads 2``; shardgear with
its defaults and ``--fronts F --shards S``; before 2026-12-01 its default packet size was 256 MiB,
so a build from then needs ``--shardgear-cmd "... --max-packet-size 4294967295"`` for 1 GiB),
each on a free loopback port, and are stopped by pid after each measurement. Take the benchmark
lock around it on a shared machine: ``flock -x /tmp/shardgear-bench.lock python -m ...``.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

from bench import procstats, servers

REQ = b"\0REQ"
CAN_DO, SUBMIT_JOB, GRAB_JOB, NO_JOB, JOB_ASSIGN, JOB_CREATED = 1, 7, 9, 10, 11, 8
WORK_COMPLETE, PRE_SLEEP, NOOP = 13, 4, 6
GRAB_JOB_ALL, JOB_ASSIGN_UNIQ = 39, 31
CHUNK = 1 << 20  # the raw peers send and receive in pieces of this size
MB = 1_000_000
FUNC = b"big_echo"


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``64M+3`` or a plain number of bytes."""
    total = 0
    for term in text.split("+"):
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(term[-1:].upper(), 1)
        total += int(term[:-1] if scale > 1 else term) * scale
    return total


def send_packet(sock: socket.socket, ptype: int, args: list[bytes], data: bytes | None) -> None:
    """Send a packet whose last argument is `data` (never copied: sent from a view)."""
    head = b"\0".join(args)
    if data is not None:
        head += b"\0" if args else b""
        size = len(head) + len(data)
    else:
        size = len(head)
    sock.sendall(struct.pack(">4sII", REQ, ptype, size) + head)
    if data is not None:
        view = memoryview(data)
        for off in range(0, len(view), CHUNK):
            sock.sendall(view[off : off + CHUNK])


def recv_exact(sock: socket.socket, n: int) -> bytearray:
    """Read exactly `n` bytes into one preallocated buffer."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(CHUNK, n - got))
        if not k:
            raise ConnectionError("closed by the server")
        got += k
    return buf


def recv_packet(sock: socket.socket) -> tuple[int, bytearray]:
    magic, ptype, size = struct.unpack(">4sII", recv_exact(sock, 12))
    if magic != b"\0RES":
        raise ConnectionError(f"bad magic {magic!r}")
    return ptype, recv_exact(sock, size)


def worker(port: int, ready: threading.Event, errors: list[str], grab_all: bool = False) -> None:
    """Grab one job of FUNC and echo its payload back in WORK_COMPLETE."""
    grab, assign = (GRAB_JOB_ALL, JOB_ASSIGN_UNIQ) if grab_all else (GRAB_JOB, JOB_ASSIGN)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=600) as w:
            send_packet(w, CAN_DO, [FUNC], None)
            ready.set()
            while True:
                send_packet(w, grab, [], None)
                ptype, body = recv_packet(w)
                if ptype == assign:
                    break
                if ptype != NO_JOB:
                    raise ConnectionError(f"worker got packet type {ptype}")
                send_packet(w, PRE_SLEEP, [], None)
                while recv_packet(w)[0] != NOOP:
                    pass
            view = memoryview(body)
            first = body.index(0)
            end = body.index(0, first + 1)  # after the function name
            if grab_all:
                end = body.index(0, end + 1)  # after the unique id
            handle = bytes(view[:first])
            payload = view[end + 1 :]
            send_packet(w, WORK_COMPLETE, [handle], payload)  # type: ignore[arg-type]
            del view, payload, body
    except Exception as exc:  # reported by the caller
        errors.append(f"worker: {exc!r}")
        ready.set()


def round_trip(port: int, size: int, grab_all: bool = False) -> float:
    """One foreground job of `size` bytes through the server at `port`; return its wall time."""
    errors: list[str] = []
    ready = threading.Event()
    t = threading.Thread(target=worker, args=(port, ready, errors, grab_all), daemon=True)
    t.start()
    ready.wait(60)
    time.sleep(0.2)  # the CAN_DO is in before the job
    payload = bytes(range(251)) * (size // 251) + b"x" * (size % 251)
    with socket.create_connection(("127.0.0.1", port), timeout=600) as c:
        t0 = time.monotonic()
        send_packet(c, SUBMIT_JOB, [FUNC, b""], payload)
        ptype, body = recv_packet(c)
        if ptype != JOB_CREATED:
            raise RuntimeError(f"client got packet type {ptype}: {bytes(body[:200])!r}")
        ptype, body = recv_packet(c)
        took = time.monotonic() - t0
    t.join(60)
    if errors:
        raise RuntimeError(errors[0])
    if ptype != WORK_COMPLETE:
        raise RuntimeError(f"client got packet type {ptype}: {bytes(body[:200])!r}")
    start = body.index(0) + 1
    if len(body) - start != size or memoryview(body)[start:] != payload:
        raise RuntimeError("the result differs from the payload")
    return took


class PeakPss:
    """Samples the Pss of a process tree every `interval` seconds in a thread; keeps the peak."""

    def __init__(self, pids: tuple[int, ...], interval: float = 0.02) -> None:
        self.pids = pids
        self.interval = interval
        self.base_kb = procstats.memory(pids).pss_kb
        self.peak_kb = self.base_kb
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kb = procstats.memory(self.pids).pss_kb
            self.samples += 1
            if kb > self.peak_kb:
                self.peak_kb = kb
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(
    spec_text: str, size: int, shardgear_cmd: str | None, grab_all: bool = False
) -> dict[str, float]:
    spec = servers.parse_spec(spec_text)
    server = servers.start(spec, shardgear_cmd=shardgear_cmd)
    try:
        time.sleep(1.0)  # settled after start
        with PeakPss(server.pids) as peak:
            took = round_trip(server.port, size, grab_all)
            time.sleep(0.1)
        return {
            "base_mb": peak.base_kb * 1024 / MB,
            "peak_mb": peak.peak_kb * 1024 / MB,
            "seconds": took,
            "samples": peak.samples,
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["256M", "1G"])
    p.add_argument("--servers", nargs="+", default=["gearmand", "shardgear:1x1", "shardgear:2x2"])
    p.add_argument("--shardgear-cmd", help="command that starts shardgear (default: this python)")
    p.add_argument("--grab-all", action="store_true", help="the worker grabs with GRAB_JOB_ALL")
    a = p.parse_args(argv)
    print(
        f"{'server':<16} {'P':>6} {'peak MB':>8} {'base MB':>8} {'peak/P':>7} {'(+)/P':>6} {'s':>6}"
    )
    for text in a.sizes:
        size = parse_size(text)
        for spec in a.servers:
            r = measure(spec, size, a.shardgear_cmd, a.grab_all)
            ratio = r["peak_mb"] * MB / size
            grown = (r["peak_mb"] - r["base_mb"]) * MB / size
            print(
                f"{spec:<16} {text:>6} {r['peak_mb']:8.0f} {r['base_mb']:8.0f} "
                f"{ratio:7.2f} {grown:6.2f} {r['seconds']:6.2f}",
                flush=True,
            )
    print(
        "peak/P: peak Pss of the server's processes over P; (+)/P: the same less the Pss at start"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
