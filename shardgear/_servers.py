"""Server lists for the client and the worker: addresses, the choice of server per job, and
backoff after failures. Pure: the caller passes the time (``time.monotonic()`` seconds).

Choice of server per job (:meth:`ServerPool.candidates`)
-------------------------------------------------------
* A job **with a unique** goes to the server that libgearman picks for it when its
  ``server_selection_hash_unique`` option is on (gearmand HEAD, ``libgearman/server_selection.cc``,
  issue #64): a ketama ring with 4 replica keys ``"HOST:PORT-R"`` per server, each MD5 digest
  split into four little-endian 32-bit points, and the key's point the first four bytes of the
  MD5 of the unique, little-endian. So every client of the same server list, in Python or C, sends
  the same unique to the same server and coalescing keeps working across servers. If that server
  is down, the next distinct servers in ring order follow, so a failure moves only its own
  uniques.
* A job **without a unique** cannot coalesce, so it goes to the servers in turn (round-robin),
  spreading the load; libgearman instead uses the first server until it fails.
* A server that failed is skipped for a backoff delay (doubling from ``backoff_min`` up to
  ``backoff_max``, with jitter); when every server is in backoff they are all tried anyway.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_PORT: Final = 4730
KETAMA_REPLICAS: Final = 4  # as libgearman


@dataclass(frozen=True, slots=True)
class Address:
    """A server address: ``host`` as written (a name, IPv4 or IPv6 literal) and ``port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


ServerSpec = str | tuple[str, int] | Address
"""A server as users write it: ``"host"``, ``"host:port"``, ``"[v6]:port"``, or ``(host, port)``."""


def parse_address(spec: ServerSpec) -> Address:
    """Parse one server spec; the port defaults to 4730.

    Raises:
        ValueError: an empty host or a port that is not 1..65535.
    """
    if isinstance(spec, Address):
        return spec
    if isinstance(spec, tuple):
        host, port = spec
    else:
        text = spec.strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, ""
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"bad port in server address {spec!r}") from None
    if not host:
        raise ValueError(f"no host in server address {spec!r}")
    if not 0 < int(port) < 65536:
        raise ValueError(f"bad port in server address {spec!r}")
    return Address(str(host), int(port))


def parse_servers(servers: ServerSpec | Iterable[ServerSpec]) -> list[Address]:
    """Parse a server or a list of servers (a comma-separated string is a list too).

    Raises:
        ValueError: a bad address, a duplicate, or no server at all.
    """
    if isinstance(servers, str):
        specs: list[ServerSpec] = [s for s in servers.split(",") if s.strip()]
    elif isinstance(servers, Address):
        specs = [servers]
    elif isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int):
        specs = [(str(servers[0]), servers[1])]
    else:
        specs = list(servers)
    out = [parse_address(s) for s in specs]
    if not out:
        raise ValueError("no Gearman server given")
    if len(set(out)) != len(out):
        raise ValueError(f"a server is listed twice: {[str(a) for a in out]}")
    return out


def _md5_points(key: bytes) -> list[int]:
    d = hashlib.md5(key, usedforsecurity=False).digest()
    return [int.from_bytes(d[i : i + 4], "little") for i in range(0, 16, 4)]


def key_point(key: bytes) -> int:
    """libhashkit's MD5 hash of a key: the digest's first four bytes, little-endian."""
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest()[:4], "little")


class Backoff:
    """Delays between attempts: ``min`` doubling up to ``max`` seconds, each times a random
    factor in [0.5, 1] (so that many clients of a restarted server do not come back at once)."""

    __slots__ = ("max", "min", "rng")

    def __init__(self, min: float = 0.1, max: float = 30.0, rng: random.Random | None = None):
        if not 0 < min <= max:
            raise ValueError(f"backoff needs 0 < min <= max, got {min}, {max}")
        self.min = min
        self.max = max
        self.rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failure in a row (1 for the first)."""
        base = min(self.max, self.min * 2.0 ** min(max(failures - 1, 0), 60))
        return float(base * (0.5 + 0.5 * self.rng.random()))


class ServerPool:
    """The servers of one client, their health, and the order to try them in for a job.

    Args:
        addresses: the servers, in the user's order.
        backoff: delays after failures.
    """

    __slots__ = ("_failures", "_next", "_points", "_ring", "_up_at", "addresses", "backoff")

    def __init__(self, addresses: Sequence[Address], backoff: Backoff | None = None) -> None:
        self.addresses = list(addresses)
        self.backoff = backoff or Backoff()
        n = len(self.addresses)
        self._failures = [0] * n
        self._up_at = [0.0] * n
        self._next = 0
        ring = sorted(
            (point, i)
            for i, a in enumerate(self.addresses)
            for r in range(KETAMA_REPLICAS)
            for point in _md5_points(f"{a.host}:{a.port}-{r}".encode())
        )
        self._points = [p for p, _ in ring]
        self._ring = [i for _, i in ring]

    def ring_order(self, key: bytes) -> list[int]:
        """Server indexes in ketama ring order from ``key``'s point, each once."""
        start = bisect.bisect_left(self._points, key_point(key))
        order: list[int] = []
        n = len(self._ring)
        for k in range(n):
            i = self._ring[(start + k) % n]
            if i not in order:
                order.append(i)
                if len(order) == len(self.addresses):
                    break
        return order

    def candidates(self, unique: bytes, now: float) -> list[int]:
        """Server indexes to try for a job, best first: healthy ones, then those in backoff.

        ``unique`` non-empty: ring order; empty: round-robin from the next server in turn.
        """
        if unique:
            order = self.ring_order(unique)
        else:
            n = len(self.addresses)
            start = self._next
            self._next = (start + 1) % n
            order = [(start + k) % n for k in range(n)]
        up = [i for i in order if self._up_at[i] <= now]
        return up + [i for i in order if self._up_at[i] > now]

    def is_up(self, index: int, now: float) -> bool:
        return self._up_at[index] <= now

    def failed(self, index: int, now: float) -> float:
        """Record a failure of server ``index``; return the seconds until it is tried again."""
        self._failures[index] += 1
        delay = self.backoff.delay(self._failures[index])
        self._up_at[index] = now + delay
        return delay

    def succeeded(self, index: int) -> None:
        """Record a successful connection: the server's backoff starts over."""
        self._failures[index] = 0
        self._up_at[index] = 0.0
