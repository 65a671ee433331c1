"""Memory mode: queue N background jobs with no workers, and report the server's memory per job.

Memory is the sum of Pss over the server's processes (so shared memory, such as shardgear's rings,
counts once), measured before and after queueing. A server we did not start is drained afterwards
by a worker connection, so it is left as it was found.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from typing import Any

from bench import procstats
from bench.config import GRABS, Load
from bench.runner import run_load
from bench.wire import CAN_DO, HDR, JOB_ASSIGN, NO_JOB, RES, WORK_COMPLETE, func_names, packet

SETTLE = 0.3
DRAIN_BATCH = 256


def measure_memory(
    load: Load, pids: tuple[int, ...], label: str, progress: bool = False
) -> dict[str, Any]:
    """Queue ``load.jobs`` background jobs (no workers) and return memory per queued job."""
    if not pids:
        raise ValueError(f"{label}: memory mode needs the server's pids")
    qload = dataclasses.replace(load, workers=0, mode="bg", bg_backlog=0, func_prefix="benchmem")
    before = procstats.memory(pids)
    run = run_load(qload, progress=progress, label=f"{label} ")
    time.sleep(SETTLE)
    after = procstats.memory(pids)
    n = run["bg_distinct"] or run["bg_acked"]
    return {
        "server": label,
        "jobs_queued": run["bg_acked"],
        "distinct_jobs": run["bg_distinct"],
        "payload": list(load.payload),
        "pss_before_kb": before.pss_kb,
        "pss_after_kb": after.pss_kb,
        "rss_before_kb": before.rss_kb,
        "rss_after_kb": after.rss_kb,
        "processes": after.nprocs,
        "bytes_per_job_pss": round((after.pss_kb - before.pss_kb) * 1024 / n, 1) if n else None,
        "bytes_per_job_rss": round((after.rss_kb - before.rss_kb) * 1024 / n, 1) if n else None,
        "submit_rate": run["jobs_per_s"],
        "errors": run["errors"],
        "error_samples": run["error_samples"],
        "run": run,
    }


def drain(host: str, port: int, load: Load, expected: int, timeout: float = 120.0) -> int:
    """Take and complete up to `expected` queued jobs of the memory-mode functions.

    Pipelines GRAB_JOB in batches; stops at the first batch that returns only NO_JOB, at
    `expected` jobs, or after `timeout` seconds. Returns the number of jobs completed.
    """
    funcs = func_names(dataclasses.replace(load, func_prefix="benchmem"))
    done = 0
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"".join(packet(CAN_DO, f) for f in funcs))
        grab = packet(GRABS["job"])
        buf = b""
        while done < expected and time.monotonic() < deadline:
            s.sendall(grab * DRAIN_BATCH)
            answers = 0
            got = 0
            reply = []
            while answers < DRAIN_BATCH and time.monotonic() < deadline:
                chunk = s.recv(1 << 16)
                if not chunk:
                    return done
                buf += chunk
                pos = 0
                while len(buf) - pos >= 12:
                    magic, ptype, size = HDR.unpack_from(buf, pos)
                    if magic != RES or len(buf) - pos < 12 + size:
                        break
                    if ptype == JOB_ASSIGN:
                        h = buf[pos + 12 : pos + 12 + size].split(b"\0", 1)[0]
                        reply.append(packet(WORK_COMPLETE, h, b""))
                        got += 1
                    if ptype in (JOB_ASSIGN, NO_JOB):
                        answers += 1
                    pos += 12 + size
                buf = buf[pos:]
            if reply:
                s.sendall(b"".join(reply))
            done += got
            if got == 0:
                break
    return done
