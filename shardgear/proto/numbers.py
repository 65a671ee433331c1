"""Numbers in Gearman arguments, parsed the way gearmand's C library parses them.

gearmand reads numeric arguments (SUBMIT_JOB_EPOCH's time, CAN_DO_TIMEOUT's timeout, WORK_STATUS's
numerator and denominator) with ``strtoll`` / ``atoi``: leading blanks and a sign are skipped,
digits are read up to the first non-digit, and text with no digits is 0. These functions do the
same, so that a peer sees the same result from either server.
"""

from __future__ import annotations

from typing import Final

INT64_MAX: Final = (1 << 63) - 1
INT64_MIN: Final = -(1 << 63)
_WS: Final = b" \t\n\v\f\r"


def strtoll(s: bytes) -> int | None:
    """C ``strtoll(s, NULL, 10)``: leading blanks and sign, then digits; no digits = 0.

    Returns None where C would overflow (outside int64), which gearmand treats as an error.
    """
    if s.isdigit() and len(s) < 19:
        return int(s)
    s = s.lstrip(_WS)
    neg = s[:1] == b"-"
    i = 1 if s[:1] in (b"-", b"+") else 0
    j = i
    n = len(s)
    while j < n and 48 <= s[j] <= 57:
        j += 1
    if j == i:
        return 0
    digits = s[i:j].lstrip(b"0")
    if len(digits) > 19:  # past int64 (and Python refuses int() of over 4300 digits)
        return None
    v = int(digits) if digits else 0
    if neg:
        v = -v
    if v > INT64_MAX or v < INT64_MIN:
        return None
    return v


def atou32(s: bytes) -> int:
    """C ``atoi`` stored into a uint32 (glibc: strtol clamped to int64, then truncated)."""
    v = strtoll(s)
    if v is None:
        v = INT64_MAX if s.lstrip(_WS)[:1] != b"-" else INT64_MIN
    return v & 0xFFFFFFFF


def fits_int64(value: bytes) -> bool:
    """True if ``strtoll`` would parse `value` without overflow (non-numbers parse as 0).

    The front checks this before forwarding, to close the connection as gearmand does.
    """
    return strtoll(value) is not None
