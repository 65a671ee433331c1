"""Slow readers and memory (issue 7): clients that never read while workers stream to them.

Each round, CLIENTS clients submit a foreground job and never read again (4 KiB receive buffers);
as many workers grab one job each and stream MB megabytes of 1 MiB WORK_DATA to it, then
WORK_COMPLETE. The server closes the readers as their unread output passes its limits. Prints,
per round, the resident memory (VmRSS, MB) of the server's children at peak (sampled every 50 ms)
and once the round's connections are closed, and how many slow-reader closes were logged.

    python -m bench.slow_readers [--rounds 3] [--clients 6] [--mb 500] [-- SERVER FLAGS...]

It starts its own server (``python -m shardgear``, 2 fronts x 2 shards, ``--store none`` by
default) on a free port of 127.0.0.1, from the current directory's sources.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

REQ = b"\0REQ"
CAN_DO, SUBMIT_JOB, GRAB_JOB, JOB_ASSIGN, NO_JOB = 1, 7, 9, 11, 10
WORK_COMPLETE, ECHO_REQ, ECHO_RES, WORK_DATA = 13, 16, 17, 28


def packet(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return struct.pack(">4sII", REQ, ptype, len(body)) + body


def recv_packet(sock: socket.socket) -> tuple[int, bytes]:
    head = b""
    while len(head) < 12:
        chunk = sock.recv(12 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    _magic, ptype, size = struct.unpack(">4sII", head)
    body = b""
    while len(body) < size:
        chunk = sock.recv(size - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return ptype, body


def children(pid: int) -> dict[str, int]:
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if b"shardgear.child" in argv:
                i = argv.index(b"shardgear.child")
                out[f"{argv[i + 1].decode()} {argv[i + 2].decode()}"] = int(child)
    return out


def rss_mb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def worker(port: int, func: bytes, mb: int) -> None:
    w = socket.create_connection(("127.0.0.1", port), timeout=120)
    w.sendall(packet(CAN_DO, func))
    while True:
        w.sendall(packet(GRAB_JOB))
        ptype, body = recv_packet(w)
        if ptype == JOB_ASSIGN:
            break
        time.sleep(0.05)
    handle = body.split(b"\0", 1)[0]
    chunk = b"d" * (1 << 20)
    for _ in range(mb):
        w.sendall(packet(WORK_DATA, handle, chunk))
    w.sendall(packet(WORK_COMPLETE, handle, b"end") + packet(ECHO_REQ, b"x"))
    while recv_packet(w)[0] != ECHO_RES:  # the server has read all of it
        pass
    w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--mb", type=int, default=500, help="MB streamed to each client")
    p.add_argument("server_flags", nargs="*", help="extra flags for the server (after --)")
    a = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = f"/tmp/slow_readers.{port}.log"
    flags = a.server_flags or ["--fronts", "2", "--shards", "2", "--store", "none"]
    cmd = [sys.executable, "-m", "shardgear", "-L", "127.0.0.1", "-p", str(port), *flags]
    with open(log_path, "w") as log:
        server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(1.0)
        pids = children(server.pid)
        peaks: dict[str, int] = {}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for name, pid in pids.items():
                    peaks[name] = max(peaks.get(name, 0), rss_mb(pid))
                peaks["total"] = max(peaks.get("total", 0), sum(rss_mb(q) for q in pids.values()))
                time.sleep(0.05)

        threading.Thread(target=sample, daemon=True).start()
        print(f"start: {sum(rss_mb(q) for q in pids.values())} MB", flush=True)
        for r in range(a.rounds):
            func = b"slow-readers-%d" % r
            readers = []
            for i in range(a.clients):
                c = socket.socket()
                c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                c.connect(("127.0.0.1", port))
                c.sendall(packet(SUBMIT_JOB, func, b"u%d" % i, b"p"))
                readers.append(c)
            time.sleep(0.5)
            peaks.clear()
            threads = [
                threading.Thread(target=worker, args=(port, func, a.mb)) for _ in range(a.clients)
            ]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c in readers:
                c.close()
            took = time.monotonic() - t0
            time.sleep(3.0)
            after = {name: rss_mb(pid) for name, pid in pids.items()}
            print(
                f"round {r}: {took:.1f} s; peak {peaks.get('total', 0)} MB "
                f"{ {k: v for k, v in peaks.items() if k != 'total'} }; "
                f"after {sum(after.values())} MB {after}",
                flush=True,
            )
        stop.set()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(60)
    closes = Path(log_path).read_text().count("unread")
    print(f"{closes} slow-reader closes logged ({log_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
