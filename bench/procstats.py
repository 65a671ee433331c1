"""CPU and memory of server processes, read from /proc (Linux only).

A root pid stands for itself and all its descendants (a shardgear supervisor and its fronts and
shards). CPU is utime + stime of each process (all its threads); memory is the sum of Pss from
``smaps_rollup`` (shared memory counted once in total) and the sum of Rss / VmHWM for reference.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads' children)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def descendants(roots: Iterable[int]) -> list[int]:
    """`roots` (those alive) and every descendant, each once, parents first."""
    seen: list[int] = []
    stack = [p for p in roots if os.path.exists(f"/proc/{p}")]
    found = set(stack)
    while stack:
        pid = stack.pop(0)
        seen.append(pid)
        for child in children(pid):
            if child not in found:
                found.add(child)
                stack.append(child)
    return seen


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of `pid` in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of the full line)


def _kb_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in names:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


@dataclass
class MemSample:
    pss_kb: int = 0
    rss_kb: int = 0
    hwm_kb: int = 0
    nprocs: int = 0


def memory(roots: Iterable[int]) -> MemSample:
    """Sum of Pss, Rss and VmHWM over `roots` and their descendants."""
    s = MemSample()
    for pid in descendants(roots):
        roll = _kb_fields(f"/proc/{pid}/smaps_rollup", ("Pss", "Rss"))
        status = _kb_fields(f"/proc/{pid}/status", ("VmHWM", "VmRSS"))
        if not roll and not status:
            continue
        s.nprocs += 1
        s.pss_kb += roll.get("Pss", status.get("VmRSS", 0))
        s.rss_kb += roll.get("Rss", status.get("VmRSS", 0))
        s.hwm_kb += status.get("VmHWM", 0)
    return s


class CpuMeter:
    """CPU seconds used by a process tree between :meth:`start` and :meth:`stop`.

    A process seen only at the end counts whole; one that died in between counts up to the last
    time it was seen (call :meth:`sample` now and then to keep that close).
    """

    def __init__(self, roots: Iterable[int]) -> None:
        self.roots = list(roots)
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}

    def _read(self) -> dict[int, int]:
        out = {}
        for pid in descendants(self.roots):
            t = cpu_ticks(pid)
            if t is not None:
                out[pid] = t
        return out

    def start(self) -> None:
        self.first = self._read()
        self.last = dict(self.first)

    def sample(self) -> None:
        self.last.update(self._read())

    def stop(self) -> float:
        self.sample()
        ticks = sum(t - self.first.get(pid, 0) for pid, t in self.last.items())
        return ticks / TICK

    @property
    def pids(self) -> list[int]:
        return sorted(self.last)
