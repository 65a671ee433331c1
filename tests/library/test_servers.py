"""Server addresses, the choice of server per job (ketama by unique), backoff."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from shardgear._servers import Address, Backoff, ServerPool, key_point, parse_servers


@pytest.mark.parametrize(
    ("spec", "address"),
    [
        ("h", Address("h", 4730)),
        ("h:1", Address("h", 1)),
        ("[::1]:5", Address("::1", 5)),
        ("::1", Address("::1", 4730)),
        (("h", 7), Address("h", 7)),
    ],
)
def test_parse(spec: object, address: Address) -> None:
    assert parse_servers(spec) == [address]  # type: ignore[arg-type]


def test_parse_lists() -> None:
    assert parse_servers("a:1, b:2") == [Address("a", 1), Address("b", 2)]
    assert parse_servers(["a", ("b", 2)]) == [Address("a", 4730), Address("b", 2)]
    assert str(Address("::1", 5)) == "[::1]:5"


@pytest.mark.parametrize("spec", ["", "h:x", "h:0", ":80", ["a", "a:4730"]])
def test_parse_refuses(spec: object) -> None:
    with pytest.raises(ValueError):
        parse_servers(spec)  # type: ignore[arg-type]


def test_key_point_is_libhashkit_md5() -> None:
    # md5("") = d41d8cd98f00b204...: the first four bytes little-endian
    assert key_point(b"") == 0xD98C1DD4


def servers(n: int) -> list[Address]:
    return [Address(f"10.0.0.{i}", 4730) for i in range(1, n + 1)]


def test_ring_is_deterministic_and_lists_every_server_once() -> None:
    pool, again = ServerPool(servers(3)), ServerPool(servers(3))
    for i in range(100):
        order = pool.ring_order(b"u%d" % i)
        assert order == again.ring_order(b"u%d" % i)
        assert sorted(order) == [0, 1, 2]


def test_ring_spreads_uniques() -> None:
    pool = ServerPool(servers(3))
    counts = Counter(pool.ring_order(b"job-%d" % i)[0] for i in range(3000))
    assert set(counts) == {0, 1, 2} and min(counts.values()) > 300


def test_removing_a_server_moves_only_its_uniques() -> None:
    three, two = ServerPool(servers(3)), ServerPool(servers(2))
    for i in range(500):
        key = b"k%d" % i
        owner = three.ring_order(key)[0]
        if owner != 2:
            assert two.ring_order(key)[0] == owner
        else:  # its uniques go to the next server in ring order
            assert two.ring_order(key)[0] == three.ring_order(key)[1]


def test_candidates_skip_failed_servers_until_their_backoff_ends() -> None:
    pool = ServerPool(servers(3), Backoff(1.0, 8.0, random.Random(0)))
    first = pool.candidates(b"u", 100.0)
    delay = pool.failed(first[0], 100.0)
    assert 0.5 <= delay <= 1.0
    assert pool.candidates(b"u", 100.0) == [*first[1:], first[0]]
    assert pool.candidates(b"u", 101.0) == first
    pool.succeeded(first[0])
    assert pool.is_up(first[0], 100.0)


def test_no_unique_round_robin() -> None:
    pool = ServerPool(servers(3))
    assert [pool.candidates(b"", 0.0)[0] for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(0.1, 2.0, random.Random(1))
    delays = [backoff.delay(n) for n in range(1, 12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert 1.0 <= delays[-1] <= 2.0
    with pytest.raises(ValueError):
        Backoff(0, 1)
