"""How a load is split: connections and job quotas per generator process, submission patterns."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bench.config import Load
from bench.wire import SUBMIT_TYPES

PATTERN = 1024


@dataclass(frozen=True)
class Plan:
    index: int
    clients: tuple[tuple[int, str, int, int], ...]  # (client index, host, port, quota or -1)
    workers: tuple[tuple[int, str, int], ...]  # (worker index, host, port)


def make_plans(load: Load) -> list[Plan]:
    """Spread connections over processes round-robin, and the job count over clients."""
    n = load.procs
    targets = load.targets
    clients: list[list[tuple[int, str, int, int]]] = [[] for _ in range(n)]
    workers: list[list[tuple[int, str, int]]] = [[] for _ in range(n)]
    for i in range(load.clients):
        quota = -1
        if load.jobs is not None:
            quota = load.jobs // load.clients + (1 if i < load.jobs % load.clients else 0)
        host, port = targets[i % len(targets)]
        clients[i % n].append((i, host, port, quota))
    for i in range(load.workers):
        host, port = targets[i % len(targets)]
        # offset so that with 1 client per process the workers still spread evenly
        workers[(i + load.clients) % n].append((i, host, port))
    return [Plan(p, tuple(clients[p]), tuple(workers[p])) for p in range(n)]


def build_pattern(load: Load, client_index: int, funcs: list[bytes]) -> list[tuple[Any, ...]]:
    """Per-client cycle of submissions: (ptype, func, is_bg, size, coalesce)."""
    rng = random.Random(load.seed * 1_000_003 + client_index)
    out = []
    for i in range(PATTERN):
        if load.mode == "fg":
            bg = False
        elif load.mode == "bg":
            bg = True
        else:
            bg = rng.random() < load.bg_share
        prio = rng.choices((0, 1, 2), weights=load.priority)[0]
        func = funcs[(i + client_index) % len(funcs)]
        size = rng.randint(*load.payload)
        co = load.unique == "coalesce" and rng.random() < load.coalesce_share
        out.append((SUBMIT_TYPES[(bg, prio)], func, bg, size, co))
    return out
