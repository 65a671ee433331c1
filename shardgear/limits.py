"""Limits against abuse: connections per front and per peer, and what one shard lets functions
grow to (how many, how long a name, how many queued payload bytes).

None of these exist in gearmand, whose only defence is ``maxqueue`` (jobs per function and
priority, which a client with large payloads gets around). Each is a setting (`Config`) whose
default leaves a normal deployment alone.

Connections (`ConnectionLimits`, in each front)
-----------------------------------------------
The kernel spreads connections over the fronts (SO_REUSEPORT), and each front counts its own: a
front admits at most ``max_connections // fronts`` connections in total and ``max_connections_per_
peer // fronts`` from one peer address (at least one each), so the server as a whole never holds
more than the setting; a peer whose connections happen to hash unevenly may be refused a little
before it. A refused connection is closed at once, and a WARNING says which limit it hit (rate-
limited: a flood of connections must not flood the log).

Functions (`FunctionLimits`, in each shard's scheduler)
-------------------------------------------------------
A function is created by its first SUBMIT_JOB* or CAN_DO and lives until ``drop function``. A shard
refuses to create one with a name longer than ``max_function_name`` bytes, or beyond its share
(``max_functions // shards``, at least one) of ``max_functions``; a submission is refused while the
payloads of the function's jobs (queued, scheduled or running) plus the new one would pass
``max_queued_bytes`` (a function holding no payload bytes takes one job of any size, up to
``--max-packet-size``, so that every packet gearmand accepts can be a job). The refusals are ERROR
packets (submissions) or an ERROR to a worker whose CAN_DO was not registered.
"""

from __future__ import annotations

import logging
from typing import Final

from shardgear.log_limit import LogLimiter
from shardgear.proto.packets import error_packet

log = logging.getLogger("shardgear.limits")


def share(limit: int, parts: int) -> int:
    """One process's share of a server-wide `limit` split over `parts` (0 stays 0 = no limit)."""
    if limit <= 0:
        return 0
    return max(1, limit // max(1, parts))


class ConnectionLimits:
    """A front's connection counts: `admit` at accept, `release` at close."""

    def __init__(self, total: int, per_peer: int, fronts: int) -> None:
        self.total_setting = total
        self.per_peer_setting = per_peer
        self.total = share(total, fronts)
        self.per_peer = share(per_peer, fronts)
        self.count = 0
        self.by_peer: dict[str, int] = {}
        self.warn = LogLimiter(log)

    def admit(self, ip: str) -> bool:
        """Count a new connection from `ip`; False (and a WARNING) if a limit refuses it."""
        if self.total and self.count >= self.total:
            self.warn.warning(
                "max-connections",
                "refusing a connection from %s: this front holds %d connections, its share of "
                "max-connections %d",
                ip,
                self.count,
                self.total_setting,
            )
            return False
        if self.per_peer:
            n = self.by_peer.get(ip, 0)
            if n >= self.per_peer:
                self.warn.warning(
                    "max-connections-per-peer " + ip,
                    "refusing a connection from %s: this front holds %d connections from that "
                    "address, its share of max-connections-per-peer %d",
                    ip,
                    n,
                    self.per_peer_setting,
                )
                return False
            self.by_peer[ip] = n + 1
        self.count += 1
        return True

    def release(self, ip: str) -> None:
        """Forget a connection counted by `admit`."""
        self.count -= 1
        if self.per_peer:
            n = self.by_peer.get(ip, 0) - 1
            if n > 0:
                self.by_peer[ip] = n
            else:
                self.by_peer.pop(ip, None)


ERR_QUEUED_BYTES: Final = error_packet(
    b"QUEUE_ERROR", b"Job queue is full: the function's jobs hold max-queued-bytes of data"
)

MAX_JOB_BYTES: Final = 0xFFFFFFFF - 1024
"""The most bytes a job's function name, unique, reducer and payload may add up to. Its
JOB_ASSIGN_ALL carries all four, the handle and NULs in one packet whose size is a u32 (and its
job log record 48 bytes more), so a submission within a handle's length of the protocol's 4 GiB
would make a packet whose size the header cannot say: it is refused with ARGUMENT_TOO_LARGE."""

ERR_JOB_TOO_LARGE: Final = error_packet(
    b"ARGUMENT_TOO_LARGE", b"Job too large: its JOB_ASSIGN would pass the 4 GiB packet size"
)


class FunctionLimits:
    """What a shard's functions may grow to (0 = no limit)."""

    __slots__ = (
        "err_name",
        "err_number",
        "max_functions",
        "max_job_bytes",
        "max_name",
        "max_queued_bytes",
        "warn",
    )

    def __init__(
        self,
        max_functions: int = 0,
        max_name: int = 0,
        max_queued_bytes: int = 0,
        shards: int = 1,
        max_job_bytes: int = MAX_JOB_BYTES,
    ) -> None:
        self.max_functions = share(max_functions, shards)
        self.max_name = max_name
        self.max_queued_bytes = max_queued_bytes
        self.max_job_bytes = max_job_bytes  # name + unique + reducer + payload (MAX_JOB_BYTES)
        self.warn = LogLimiter(log)
        self.err_name = error_packet(
            b"ARGUMENT_TOO_LARGE",
            b"Function name longer than max-function-name (%d bytes)" % max_name,
        )
        self.err_number = error_packet(
            b"QUEUE_ERROR",
            b"Too many functions: this shard holds %d, its share of max-functions %d"
            % (self.max_functions, max_functions),
        )

    def refuse_function(self, name: bytes, known: int) -> bytes | None:
        """The ERROR packet that refuses to create function `name` on a shard that knows `known`
        functions, or None to allow it."""
        if self.max_name and len(name) > self.max_name:
            self.warn.warning(
                "max-function-name",
                "refusing function %r...: its name is %d bytes, more than max-function-name %d",
                name[:32],
                len(name),
                self.max_name,
            )
            return self.err_name
        if self.max_functions and known >= self.max_functions:
            self.warn.warning(
                "max-functions",
                "refusing function %r: this shard holds %d functions, its share of max-functions",
                name[:64],
                known,
            )
            return self.err_number
        return None
