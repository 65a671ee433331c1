"""Numbers read as gearmand's C library reads them (`shardgear.proto.numbers`)."""

from __future__ import annotations

import pytest

from shardgear.proto.numbers import INT64_MAX, INT64_MIN, atou32, fits_int64, strtoll


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"", 0),
        (b"abc", 0),
        (b" \t+12x", 12),
        (b"-7", -7),
        (b"9223372036854775807", INT64_MAX),
        (b"-9223372036854775808", INT64_MIN),
        (b"9223372036854775808", None),  # overflow: gearmand refuses it
        (b"0" * 5000 + b"42", 42),  # leading zeros are no overflow
        (b"1" * 5000, None),  # not a ValueError: Python's int() refuses over 4300 digits
        (b"-" + b"9" * 5000, None),
    ],
)
def test_strtoll_as_c_reads_it(text: bytes, value: int | None) -> None:
    assert strtoll(text) == value
    assert fits_int64(text) == (value is not None)


def test_atou32_of_a_huge_number_saturates_then_truncates() -> None:
    """WORK_STATUS's numerator of 5000 digits crashed a shard (a breaker, 2026-12-02)."""
    assert atou32(b"1" * 5000) == INT64_MAX & 0xFFFFFFFF
    assert atou32(b"-" + b"1" * 5000) == INT64_MIN & 0xFFFFFFFF
