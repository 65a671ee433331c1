"""Retry policies: how many attempts a job gets, which failures count, and the wait between them.

Policies come from the config file: a ``retry`` table in a ``[functions."PATTERN"]`` table, read by
`parse_policy` (``config_file.FUNCTION_KEYS``), kept in ``config.FunctionSettings.retry`` and given
to each function (`jobs.Function.retry`) by ``function_settings``, at its creation and at a reload.

Theory of operation
-------------------
gearmand never runs a failed job again: WORK_FAIL and WORK_EXCEPTION end it, and a job whose worker
died is requeued at once until ``--job-retries`` drops it. A *retry policy*, set per function in the
config file (``[functions."PATTERN".retry]``, `parse_policy`), changes that the way Celery, Dramatiq
and Faktory do: an attempt that ends in one of the failures the policy counts (`RetryPolicy.on`:
WORK_FAIL, WORK_EXCEPTION, a worker lost mid-job, a CAN_DO_TIMEOUT expiry) is recorded on the job
(`jobs.RetryState`) and, while attempts remain, the job waits for its next attempt instead of
ending: it keeps its handle and its unique (GET_STATUS says known, not running; a submission with
the same unique coalesces onto it) and sits in the scheduler's timer heap like an epoch job (state
FUTURE), recorded in the job log (`JobLogHooks.delay`, a JR_DELAY record), so it survives a
shard crash and a restart exactly as a queued job does. When no attempt remains, the failure is
final: the clients get it, and a background job goes to the dead set (`shardgear.deadset`) if
the policy says so.

The wait before attempt ``k + 1`` after ``k`` failures is `RetryPolicy.backoff_delay`: ``delay``
(fixed), or ``delay * factor ** (k - 1)`` (exponential), times a uniform jitter factor in
``[1 - jitter, 1 + jitter]``, capped at ``max-delay``. The jitter comes from a `random.Random`
the caller passes in (the scheduler's), so that the job core stays deterministic under test.

Foreground jobs follow a policy only with ``foreground = true``; their clients then see the WORK_*
packets of the final attempt only. WORK_DATA, WORK_WARNING and WORK_STATUS of a running attempt
are held back (`hold`) until the attempt ends: they go out before its WORK_COMPLETE or final
failure and are dropped if it is retried. An attempt whose held packets pass `HELD_LIMIT` bytes
sends them on and becomes final (it is not retried: its clients have seen it).

This module is pure: it decides; `shardgear.scheduler` applies the decision with its lifecycle
methods.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shardgear.jobs import (
    OUT_EXCEPTION,
    OUT_FAIL,
    OUT_LOST,
    OUT_TIMEOUT,
    OUTCOME_NAMES,
    Job,
    RetryState,
)

__all__ = [
    "ERROR_LIMIT",
    "HELD_LIMIT",
    "POLICY_KEYS",
    "RetryPolicy",
    "duration",
    "hold",
    "next_attempt",
    "parse_policy",
    "record_failure",
    "release_held",
]

ERROR_LIMIT: Final = 4096
"""Bytes of a failure's WORK_EXCEPTION data kept with the job and in the dead set."""

HELD_LIMIT: Final = 1024 * 1024
"""Bytes of WORK_* packets held back from a foreground attempt's clients before they are sent
on and the attempt becomes final."""

ALL_OUTCOMES: Final = OUT_FAIL | OUT_EXCEPTION | OUT_LOST | OUT_TIMEOUT
_BY_NAME: Final = {name: bit for bit, name in OUTCOME_NAMES.items()}
DAY: Final = 86400.0
DEFAULT_MAX_DELAY: Final = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One function's retry policy; the defaults are the config file's.

    Attributes:
        attempts: attempts in total, the first included (1 = no retry).
        on: the failures that count, OR-ed ``jobs.OUT_*`` bits (default: all four).
        backoff: ``"exponential"`` or ``"fixed"``.
        delay: seconds before the second attempt (exponential) or between any two (fixed).
        factor: the growth of an exponential delay per failure.
        max_delay: seconds no delay exceeds, jitter included.
        jitter: each delay is multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]``.
        foreground: foreground jobs follow the policy too (their clients see the final attempt).
        dead_letter: a background job whose attempts are exhausted (or that ``--job-retries``
            drops) goes to the dead set instead of vanishing.
        dead_max_jobs: dead jobs kept for this function; the oldest go first (counted).
        dead_max_age: seconds a dead job is kept.
    """

    attempts: int = 3
    on: int = ALL_OUTCOMES
    backoff: str = "exponential"
    delay: float = 10.0
    factor: float = 2.0
    max_delay: float = DEFAULT_MAX_DELAY
    jitter: float = 0.1
    foreground: bool = False
    dead_letter: bool = True
    dead_max_jobs: int = 1000
    dead_max_age: float = 30 * DAY

    def applies(self, job: Job) -> bool:
        """Whether `job` follows this policy (background jobs; foreground ones if configured)."""
        return job.background or self.foreground

    def backoff_delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1-based), jitter and cap
        applied; draws one number from `rng` when jitter is on."""
        if self.backoff == "fixed":
            d = self.delay
        else:
            # factor ** n overflows a float past ~1000 doublings: cap the exponent first
            n = min(failures - 1, 1023)
            try:
                d = self.delay * self.factor**n
            except OverflowError:
                d = self.max_delay
        if self.jitter > 0.0:
            d *= 1.0 + self.jitter * (2.0 * rng.random() - 1.0)
        return max(0.0, min(d, self.max_delay))


def record_failure(job: Job, outcome: int, error: bytes, now: float) -> RetryState:
    """Count a failed attempt of `job` (`outcome` an OUT_* code, `error` the WORK_EXCEPTION data
    or b""); return its `RetryState`. The held packets of the attempt stay (see `release_held`)."""
    st = job.retry
    if st is None:
        st = job.retry = RetryState()
    st.failures += 1
    if st.failures == 1 or not st.first_failed:
        st.first_failed = now
    st.last_failed = now
    st.reason = outcome
    st.error = error[:ERROR_LIMIT]
    return st


def next_attempt(
    policy: RetryPolicy, st: RetryState, now: float, rng: random.Random
) -> float | None:
    """When the next attempt runs (epoch seconds), or None when the failure just recorded in `st`
    is final: the attempts are used up, or the attempt was made final by `hold`."""
    if st.final or st.failures >= policy.attempts:
        return None
    return now + policy.backoff_delay(st.failures, rng)


def hold(job: Job, packet: bytes) -> list[bytes]:
    """A WORK_DATA, WORK_WARNING or WORK_STATUS `packet` for the clients of `job`, whose function
    has a policy: return the packets to relay now, in order (none while they are held back).

    Packets are held while the job follows its policy, has clients, and the attempt is not
    final; past `HELD_LIMIT` bytes the held ones are released and the attempt becomes final.
    Packets held before a reload took the policy away go out first."""
    policy = job.fn.retry
    st = job.retry
    if policy is None or not policy.applies(job) or (st is not None and st.final):
        if st is not None and st.held:
            return [*release_held(job), packet]
        return [packet]
    if st is None:
        st = job.retry = RetryState()
    held = st.held
    if held is None:
        held = st.held = []
    held.append(packet)
    st.held_bytes += len(packet)
    if st.held_bytes <= HELD_LIMIT:
        return []
    st.final = True
    return release_held(job)


def release_held(job: Job) -> list[bytes]:
    """The held packets of the running attempt (for its clients, in order), forgotten here."""
    st = job.retry
    if st is None or st.held is None:
        return []
    held = st.held
    st.held = None
    st.held_bytes = 0
    return held


def end_attempt(job: Job) -> None:
    """A retried attempt is over: drop its held packets; the next attempt starts afresh."""
    st = job.retry
    if st is not None:
        st.held = None
        st.held_bytes = 0
        st.final = False


# ---------------------------------------------------------------------------- the config file

_DURATION: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d)?\s*", re.IGNORECASE)
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "": 1.0}


MAX_DURATION: Final = 366 * 86400.0
"""The longest delay, cap or age a ``retry`` table may give, in seconds (a year): past that a
value is a typo (``delay = 1e308`` would park a job for ever), not a policy."""


def duration(value: Any) -> float:
    """Seconds: a number, or a string with a unit (``"500ms"``, ``"30s"``, ``"5m"``, ``"2h"``,
    ``"7d"``). Raises ValueError for anything else, a negative value or one over MAX_DURATION."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ValueError(f"expected seconds or a duration like '30s' or '7d', got {value!r}")
        seconds = float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "").lower()]
    else:
        raise ValueError(f"expected seconds, got {value!r}")
    if not 0.0 <= seconds <= MAX_DURATION:
        raise ValueError(f"must be from 0 to {MAX_DURATION:.0f} seconds (366d), got {value!r}")
    return seconds


def _int(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"must be from {low} to {high}, got {value}")
    return value


def _float(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if not low <= float(value) <= high:
        raise ValueError(f"must be from {low:g} to {high:g}, got {value}")
    return float(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _outcomes(value: Any) -> int:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ValueError(f"expected a list of {', '.join(_BY_NAME)}, got {value!r}")
    bits = 0
    for name in names:
        bit = _BY_NAME.get(name.lower()) if isinstance(name, str) else None
        if bit is None:
            raise ValueError(f"unknown failure {name!r}: expected {', '.join(_BY_NAME)}")
        bits |= bit
    return bits


def _backoff(value: Any) -> str:
    if isinstance(value, str) and value.lower() in ("exponential", "fixed"):
        return value.lower()
    raise ValueError(f"must be exponential or fixed, got {value!r}")


POLICY_KEYS: Final[dict[str, tuple[str, Any]]] = {
    "attempts": ("attempts", lambda v: _int(v, 1, 1_000_000)),
    "on": ("on", _outcomes),
    "backoff": ("backoff", _backoff),
    "delay": ("delay", duration),
    "factor": ("factor", lambda v: _float(v, 1.0, 1000.0)),
    "max-delay": ("max_delay", duration),
    "jitter": ("jitter", lambda v: _float(v, 0.0, 1.0)),
    "foreground": ("foreground", _bool),
    "dead-letter": ("dead_letter", _bool),
    "dead-max-jobs": ("dead_max_jobs", lambda v: _int(v, 0, 10_000_000)),
    "dead-max-age": ("dead_max_age", duration),
}
"""Keys of a ``retry`` table -> (RetryPolicy field, parser raising ValueError)."""


def parse_policy(value: Any) -> RetryPolicy:
    """A ``retry`` table of the config file (``[functions."PATTERN".retry]`` or an inline table)
    -> RetryPolicy; keys it leaves out take the defaults. Raises ValueError with the key and the
    reason for an unknown key or a bad value."""
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table of {', '.join(POLICY_KEYS)}, got {value!r}")
    fields: dict[str, Any] = {}
    for key, raw in value.items():
        spec = POLICY_KEYS.get(key)
        if spec is None:
            raise ValueError(f"unknown key {key!r} (known: {', '.join(POLICY_KEYS)})")
        name, parse = spec
        try:
            fields[name] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    if "max_delay" not in fields and fields.get("delay", 0.0) > DEFAULT_MAX_DELAY:
        fields["max_delay"] = fields["delay"]  # an unset cap never cuts the delay itself
    policy = RetryPolicy(**fields)
    if policy.max_delay < policy.delay:
        raise ValueError(f"max-delay ({policy.max_delay:g}) is less than delay ({policy.delay:g})")
    return policy
