"""One load run: spawn the generator processes, start them together, watch, stop, merge.

The parent is the only writer of the control area and decides when the run is over:
* job count: every process is idle (quota submitted, nothing outstanding) and every distinct
  background job created has been executed by a worker;
* duration: after ``duration`` it tells processes to stop submitting, then waits for the same
  condition for at most ``drain_timeout``;
* always: ``max_time`` since the start, ``stall_timeout`` without progress, or a process failing.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bench import procstats
from bench.config import Load
from bench.driver import process_main
from bench.plan import make_plans
from bench.wire import (
    C_EXIT,
    C_GO,
    C_GO_NS,
    C_STOP_SUBMIT,
    F_BG_ACKED,
    F_BG_DISTINCT,
    F_BG_EXEC,
    F_ERRORS,
    F_FAILED,
    F_FG_DONE,
    F_IDLE,
    F_READY,
    NCTRL,
    NFIELDS,
)

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
WATCH_INTERVAL = 0.05
MEM_INTERVAL = 0.5


def latency_summary(hist: Counter[int]) -> dict[str, Any]:
    """Percentiles (ms) from a µs histogram, nearest-rank."""
    total = sum(hist.values())
    if not total:
        return {"count": 0}
    items = sorted(hist.items())
    out: dict[str, Any] = {"count": total}
    targets = [(name, max(1, -(-total * q // 100))) for name, q in PERCENTILES]
    cum = 0
    ti = 0
    for value, count in items:
        cum += count
        while ti < len(targets) and cum >= targets[ti][1]:
            out[targets[ti][0]] = value / 1000
            ti += 1
        if ti == len(targets):
            break
    out["max"] = items[-1][0] / 1000
    out["mean"] = round(sum(v * c for v, c in items) / total / 1000, 3)
    return out


class Progress:
    """A live ``\\r`` line on a terminal."""

    def __init__(self, enabled: bool, label: str, total: int | None) -> None:
        self.enabled = enabled
        self.label = label
        self.total = total
        self.last_t = time.monotonic()
        self.last_done = 0
        self.next_t = self.last_t + 0.5

    def update(self, done: int, errors: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self.next_t and not force:
            return
        rate = (done - self.last_done) / max(1e-9, now - self.last_t)
        self.last_t, self.last_done, self.next_t = now, done, now + 0.5
        total = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(
            f"\r\x1b[K{self.label}jobs {done}{total}  {rate / 1000:8.1f} k/s  errors {errors}"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _sum(mv: memoryview, nprocs: int, field: int) -> int:
    return sum(mv[p * NFIELDS + field] for p in range(nprocs))


def run_load(
    load: Load,
    *,
    server_pids: Sequence[int] = (),
    progress: bool = False,
    label: str = "",
    on_start: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `load` once and return the merged summary (see README for the fields)."""
    ctx = mp.get_context("spawn")
    plans = make_plans(load)
    nprocs = len(plans)
    raw = ctx.RawArray(ctypes.c_uint64, nprocs * NFIELDS + NCTRL)
    mv = memoryview(raw).cast("B").cast("Q")
    ctrl = nprocs * NFIELDS
    procs = []
    pipes = []
    for plan in plans:
        parent_end, child_end = ctx.Pipe(duplex=False)
        p = ctx.Process(
            target=process_main,
            args=(load, plan, raw, nprocs, child_end),
            name=f"bench-gen-{plan.index}",
            daemon=True,
        )
        p.start()
        child_end.close()
        procs.append(p)
        pipes.append(parent_end)
    messages: dict[int, tuple[str, Any]] = {}
    failure = ""

    def poll_pipes() -> None:
        for i, pipe in enumerate(pipes):
            if i not in messages and pipe.poll():
                try:
                    messages[i] = pipe.recv()
                except (EOFError, OSError):
                    messages[i] = ("error", f"generator process {i} died")

    try:
        deadline = time.monotonic() + load.connect_timeout + 60
        while _sum(mv, nprocs, F_READY) < nprocs:
            poll_pipes()
            errs = [m[1] for m in messages.values() if m[0] == "error"]
            dead = [p.name for p in procs if not p.is_alive() and p.exitcode not in (None, 0)]
            if errs or dead:
                raise RuntimeError("; ".join(errs) or f"died during setup: {dead}")
            if time.monotonic() > deadline:
                raise TimeoutError("generator processes did not connect in time")
            time.sleep(0.01)
        if on_start is not None:
            on_start()
        server_cpu = procstats.CpuMeter(server_pids)
        server_cpu.start()
        mem_before = procstats.memory(server_pids) if server_pids else None
        peak_pss = mem_before.pss_kb if mem_before else 0
        peak_rss = mem_before.rss_kb if mem_before else 0
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        go_ns = time.monotonic_ns()
        mv[ctrl + C_GO_NS] = go_ns
        mv[ctrl + C_GO] = 1
        bar = Progress(progress, label, load.jobs)
        t_start = time.monotonic()
        stop_at = t_start + load.duration if load.duration is not None else None
        drain_until: float | None = None
        last_progress = (-1, t_start)
        next_mem = t_start + MEM_INTERVAL
        outcome = "complete"
        while True:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            idle = _sum(mv, nprocs, F_IDLE) == nprocs
            fg = _sum(mv, nprocs, F_FG_DONE)
            bg_acked = _sum(mv, nprocs, F_BG_ACKED)
            bg_exec = _sum(mv, nprocs, F_BG_EXEC)
            bg_distinct = _sum(mv, nprocs, F_BG_DISTINCT)
            errors = _sum(mv, nprocs, F_ERRORS)
            bar.update(fg + bg_acked, errors)
            drained = idle and (bg_exec >= bg_distinct or load.workers == 0)
            if stop_at is not None and now >= stop_at and drain_until is None:
                mv[ctrl + C_STOP_SUBMIT] = 1
                drain_until = now + load.drain_timeout
            if drained and (stop_at is None or drain_until is not None):
                break
            if drain_until is not None and now > drain_until:
                outcome = "drain timeout"
                break
            if now - t_start > load.max_time:
                outcome = "max time"
                break
            if _sum(mv, nprocs, F_FAILED) or any(not p.is_alive() for p in procs):
                outcome = "generator process failed"
                break
            marker = fg + bg_acked + bg_exec
            if marker != last_progress[0]:
                last_progress = (marker, now)
            elif now - last_progress[1] > load.stall_timeout:
                outcome = "stalled"
                break
            if server_pids and now >= next_mem:
                next_mem = now + MEM_INTERVAL
                server_cpu.sample()
                m = procstats.memory(server_pids)
                peak_pss, peak_rss = max(peak_pss, m.pss_kb), max(peak_rss, m.rss_kb)
        end_ns = time.monotonic_ns()
        server_cpu_s = server_cpu.stop()
        mem_after = procstats.memory(server_pids) if server_pids else None
        if mem_after:
            peak_pss, peak_rss = max(peak_pss, mem_after.pss_kb), max(peak_rss, mem_after.rss_kb)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        bar.update(
            _sum(mv, nprocs, F_FG_DONE) + _sum(mv, nprocs, F_BG_ACKED),
            _sum(mv, nprocs, F_ERRORS),
            force=True,
        )
        bar.close()
        mv[ctrl + C_EXIT] = 1
        collect_deadline = time.monotonic() + 30
        while len(messages) < nprocs and time.monotonic() < collect_deadline:
            poll_pipes()
            if len(messages) < nprocs:
                time.sleep(0.01)
                for i, p in enumerate(procs):
                    if i not in messages and not p.is_alive() and not pipes[i].poll():
                        messages[i] = ("error", f"generator process {i} exited ({p.exitcode})")
    finally:
        mv[ctrl + C_EXIT] = 1
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for pipe in pipes:
            pipe.close()
    results = [m[1] for m in messages.values() if m[0] == "result"]
    errors_text = [m[1] for m in messages.values() if m[0] == "error"]
    if len(results) < nprocs:
        failure = "; ".join(errors_text) or "missing results"
        outcome = "generator process failed"
    parent_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    summary = merge(load, results, go_ns, end_ns, outcome, failure, parent_cpu)
    if server_pids:
        summary["server"] = server_summary(
            server_cpu,
            server_cpu_s,
            summary["elapsed_s"],
            mem_before,
            mem_after,
            peak_pss,
            peak_rss,
        )
    summary["label"] = label.strip()
    return summary


def server_summary(
    meter: procstats.CpuMeter,
    cpu_s: float,
    elapsed: float,
    before: Any,
    after: Any,
    peak_pss: int,
    peak_rss: int,
) -> dict[str, Any]:
    return {
        "pids": meter.pids,
        "cpu_s": round(cpu_s, 3),
        "cpu_cores": round(cpu_s / elapsed, 3) if elapsed > 0 else None,
        "peak_pss_kb": peak_pss,
        "peak_rss_kb": peak_rss,
        "vmhwm_kb": after.hwm_kb if after else None,
        "pss_before_kb": before.pss_kb if before else None,
        "pss_after_kb": after.pss_kb if after else None,
    }


def merge(
    load: Load,
    results: list[dict[str, Any]],
    go_ns: int,
    end_ns: int,
    outcome: str,
    failure: str,
    parent_cpu: float,
) -> dict[str, Any]:
    """Merge the per-process results into one summary."""
    tot: Counter[str] = Counter()
    hist_fg: Counter[int] = Counter()
    hist_bg: Counter[int] = Counter()
    hist_ack: Counter[int] = Counter()
    samples: list[str] = []
    last_ns = 0
    gen_cpu = parent_cpu
    max_util = 0.0
    for r in results:
        for key in (
            "submitted",
            "acked",
            "fg_done",
            "bg_acked",
            "bg_distinct",
            "bg_executed",
            "executed_all",
            "stale",
            "stray",
            "coalesced",
            "errors",
            "lost",
            "outstanding",
        ):
            tot[key] += r[key]
        hist_fg.update(r["hist_fg"])
        hist_bg.update(r["hist_bg"])
        hist_ack.update(r["hist_ack"])
        samples.extend(r["error_samples"])
        last_ns = max(last_ns, r["last_ns"])
        gen_cpu += r["cpu_s"]
        if r["wall_s"] > 0:
            max_util = max(max_util, r["cpu_s"] / r["wall_s"])
    wall = (end_ns - go_ns) / 1e9
    # rate over the time until the last completion (in duration mode this includes the drain)
    active = (last_ns - go_ns) / 1e9 if last_ns > go_ns else wall
    done = tot["fg_done"] + tot["bg_acked"]
    errors = tot["errors"] + (1 if failure else 0)
    both = hist_fg + hist_bg
    out: dict[str, Any] = {
        "outcome": outcome,
        "jobs_requested": load.jobs,
        "duration_requested": load.duration,
        "jobs_done": done,
        "fg_done": tot["fg_done"],
        "bg_acked": tot["bg_acked"],
        "bg_distinct": tot["bg_distinct"],
        "bg_executed": tot["bg_executed"],
        "executed_by_workers": tot["executed_all"],
        "coalesced": tot["coalesced"],
        "stale_jobs": tot["stale"],
        "stray_results": tot["stray"],
        "submitted": tot["submitted"],
        "outstanding": tot["outstanding"],
        "errors": errors,
        "error_samples": ([failure] if failure else []) + samples[:10],
        "elapsed_s": round(active, 4),
        "wall_s": round(wall, 4),
        "jobs_per_s": round(done / active, 1) if active > 0 else 0.0,
        "latency_ms": latency_summary(both),
    }
    if load.mode == "mixed":
        out["latency_fg_ms"] = latency_summary(hist_fg)
        out["latency_bg_ms"] = latency_summary(hist_bg)
    if load.has_bg:
        out["bg_ack_latency_ms"] = latency_summary(hist_ack)
    out["loadgen"] = {
        "procs": load.procs,
        "cpu_s": round(gen_cpu, 3),
        "cpu_cores": round(gen_cpu / wall, 3) if wall > 0 else None,
        "max_proc_util": round(max_util, 3),
        "machine_cpus": os.cpu_count(),
    }
    out["config"] = load.describe()
    return out
