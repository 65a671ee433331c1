"""Routing must agree across processes: stable hashes, handles that name their shard."""

from __future__ import annotations

import subprocess
import sys

from shardgear import routing


def test_shard_for_is_stable_across_processes_with_different_hash_seeds() -> None:
    names = [b"reverse", b"wc", b"f\x00g", "ünïcode".encode()]
    here = [routing.shard_for(n, 7) for n in names]
    code = f"from shardgear import routing;print([routing.shard_for(n, 7) for n in {names!r}])"
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout
        assert out.strip() == str(here)


def test_handles_route_back_to_the_shard_that_issued_them() -> None:
    for shards in (1, 2, 3, 8):
        for shard in range(shards):
            for k in range(50):
                n = routing.handle_number(k, shard, shards)
                handle = b"H:host:%d" % n
                assert routing.shard_for_handle(handle, shards) == shard


def test_handle_numbers_of_different_shards_never_collide() -> None:
    shards = 4
    seen = set()
    for shard in range(shards):
        for k in range(1000):
            n = routing.handle_number(k, shard, shards)
            assert n not in seen
            seen.add(n)


def test_foreign_handles_are_not_routed() -> None:
    for bad in (
        b"",
        b"nocolon",
        b"H:host:",
        b"H:host:abc",
        b"H:host:0",
        b"H:host:-3",
        b"H:host:" + b"9" * 40,
    ):
        assert routing.shard_for_handle(bad, 2) is None


def test_prefix_may_contain_colons() -> None:
    assert routing.shard_for_handle(b"a:b:c:4", 3) == 0


def test_board_slots_spread_the_functions_of_one_shard() -> None:
    names = [b"func-%d" % i for i in range(2000)]
    on_shard0 = [n for n in names if routing.shard_for(n, 2) == 0]
    slots = {routing.board_slot(n) for n in on_shard0}
    assert any(s % 2 for s in slots) and any(s % 2 == 0 for s in slots)
    assert all(0 <= s < routing.BOARD_SLOTS for s in slots)
