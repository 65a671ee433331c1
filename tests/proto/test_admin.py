"""The text admin protocol (spec section 3); expected replies were captured from gearmand 1.1.20."""

from __future__ import annotations

import pytest

from shardgear.proto.admin import (
    END_OF_LIST,
    ERR_FUNCTION_BUSY,
    ERR_FUNCTION_NOT_FOUND,
    ERR_UNKNOWN_ERROR,
    ERR_UNKNOWN_JOB,
    ERR_UNKNOWN_SHOW_ARGUMENTS,
    OK_REPLY,
    AdminCommand,
    ParsedAdmin,
    format_ok,
    format_priority_status,
    format_show_jobs,
    format_show_unique_jobs,
    format_status,
    format_workers,
    maxqueue_limits,
    parse_admin,
)
from shardgear.proto.parser import AdminLine, Parser

C = AdminCommand


def parse_line(line: bytes) -> ParsedAdmin:
    """Frame one line with the real parser, then parse it."""
    parser = Parser()
    parser.feed(line)
    (event,) = parser.events()
    assert isinstance(event, AdminLine)
    return parse_admin(event.tokens)


def incomplete(cmd: bytes) -> bytes:
    return b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+" + (
        cmd + b"\r\n"
    )


def unknown(cmd: bytes) -> bytes:
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + cmd + b"\r\n"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"status\r\n", ParsedAdmin(C.STATUS, [], None)),
        (b"STATUS\n", ParsedAdmin(C.STATUS, [], None)),
        (b"status x\r\n", ParsedAdmin(C.STATUS, [], None)),  # extra tokens ignored
        (b"status   \r\n", ParsedAdmin(C.STATUS, [], None)),
        (b"prioritystatus\r\n", ParsedAdmin(C.PRIORITY_STATUS, [], None)),
        (b"PriorityStatus\r\n", ParsedAdmin(C.PRIORITY_STATUS, [], None)),
        (b"workers\r\n", ParsedAdmin(C.WORKERS, [], None)),
        (b"workers x\r\n", ParsedAdmin(C.WORKERS, [], None)),
        (b"version\r\n", ParsedAdmin(C.VERSION, [], None)),
        (b"VERSION x\n", ParsedAdmin(C.VERSION, [], None)),
        (b"getpid\r\n", ParsedAdmin(C.GETPID, [], None)),
        (b"verbose\r\n", ParsedAdmin(C.VERBOSE, [], None)),
        (b"verbose x\r\n", ParsedAdmin(C.VERBOSE, [], None)),
        # maxqueue
        (b"maxqueue\r\n", ParsedAdmin(C.MAXQUEUE, [], incomplete(b"maxqueue"))),
        (b"MAXQUEUE\r\n", ParsedAdmin(C.MAXQUEUE, [], incomplete(b"MAXQUEUE"))),
        (b"maxqueue f\r\n", ParsedAdmin(C.MAXQUEUE, [b"f"], None)),
        (b"maxqueue F 1 2 3\r\n", ParsedAdmin(C.MAXQUEUE, [b"F", b"1", b"2", b"3"], None)),
        (b"maxqueue f 1 \r\n", ParsedAdmin(C.MAXQUEUE, [b"f", b"1", b""], None)),
        # show
        (b"show jobs\r\n", ParsedAdmin(C.SHOW_JOBS, [], None)),
        (b"Show Jobs\r\n", ParsedAdmin(C.SHOW_JOBS, [], None)),
        (b"show  jobs\r\n", ParsedAdmin(C.SHOW_JOBS, [], None)),
        (b"show unique jobs\r\n", ParsedAdmin(C.SHOW_UNIQUE_JOBS, [], None)),
        (b"SHOW UNIQUE JOBS\r\n", ParsedAdmin(C.SHOW_UNIQUE_JOBS, [], None)),
        (b"show foo\r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"SHOW FOO\r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show unique\r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show jobs x\r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show jobs \r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show unique jobs x\r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show \r\n", ParsedAdmin(C.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)),
        (b"show\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"show"))),
        (b"SHOW\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"SHOW"))),
        # cancel job
        (b"cancel job H:x:1\r\n", ParsedAdmin(C.CANCEL_JOB, [b"H:x:1"], None)),
        (b"CANCEL JOB H:x:1\r\n", ParsedAdmin(C.CANCEL_JOB, [b"H:x:1"], None)),
        (b"cancel job \r\n", ParsedAdmin(C.CANCEL_JOB, [b""], None)),  # gearmand: UNKNOWN_JOB
        (b"cancel foo x\r\n", ParsedAdmin(C.CANCEL_JOB, [], ERR_UNKNOWN_ERROR)),
        (b"cancel job a b\r\n", ParsedAdmin(C.CANCEL_JOB, [], ERR_UNKNOWN_ERROR)),
        (b"cancel job H:x:1 \r\n", ParsedAdmin(C.CANCEL_JOB, [], ERR_UNKNOWN_ERROR)),
        (b"cancel\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"cancel"))),
        (b"Cancel\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"Cancel"))),
        (b"cancel job\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"cancel"))),
        (b"cancel foo\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"cancel"))),
        # create / drop function
        (b"create function F\r\n", ParsedAdmin(C.CREATE_FUNCTION, [b"F"], None)),
        (b"create FUNCTION Fq\n", ParsedAdmin(C.CREATE_FUNCTION, [b"Fq"], None)),
        (b"create\r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"create"))),
        (b"Create\r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"Create"))),
        (b"create function\r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"create"))),
        (b"create foo F\r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"create"))),
        (b"create function F a\r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"create"))),
        (b"create function F \r\n", ParsedAdmin(C.CREATE_FUNCTION, [], incomplete(b"create"))),
        (b"drop function F\r\n", ParsedAdmin(C.DROP_FUNCTION, [b"F"], None)),
        (b"DROP FUNCTION zz\r\n", ParsedAdmin(C.DROP_FUNCTION, [b"zz"], None)),
        (b"drop\r\n", ParsedAdmin(C.DROP_FUNCTION, [], incomplete(b"drop"))),
        (b"drop function\r\n", ParsedAdmin(C.DROP_FUNCTION, [], incomplete(b"drop"))),
        (b"DROP x\r\n", ParsedAdmin(C.DROP_FUNCTION, [], incomplete(b"DROP"))),
        (b"drop function F a\r\n", ParsedAdmin(C.DROP_FUNCTION, [], incomplete(b"drop"))),
        # shutdown: removed from gearmand 1.1.15, kept by shardgear with the old replies
        (b"shutdown\r\n", ParsedAdmin(C.SHUTDOWN, [], None)),
        (b"shutdown graceful\r\n", ParsedAdmin(C.SHUTDOWN, [b"graceful"], None)),
        (b"SHUTDOWN GRACEFUL\r\n", ParsedAdmin(C.SHUTDOWN, [b"graceful"], None)),
        (b"shutdown now\r\n", ParsedAdmin(C.SHUTDOWN, [], incomplete(b"shutdown"))),
        # unknown
        (b"foo\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"foo"))),
        (b"foo bar\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"foo"))),
        (b"a b c d e\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"a"))),
        (b"\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b""))),
        (b"\n", ParsedAdmin(C.UNKNOWN, [], unknown(b""))),
        (b"   \r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b""))),
        (b"  status\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b""))),
        (b"show\tjobs\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"show\tjobs"))),
        (b"\r\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"\r"))),
        (b"status\rx\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"status\rx"))),
        (b"gladiator\r\n", ParsedAdmin(C.UNKNOWN, [], unknown(b"gladiator"))),
    ],
)
def test_parse_admin(line: bytes, expected: ParsedAdmin) -> None:
    assert parse_line(line) == expected


def test_exact_error_lines() -> None:
    assert unknown(b"foo") == b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n"
    assert incomplete(b"maxqueue") == (
        b"ERR INVALID_ARGUMENTS "
        b"An+incomplete+set+of+arguments+was+sent+to+this+command+maxqueue\r\n"
    )
    assert ERR_UNKNOWN_SHOW_ARGUMENTS == b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
    assert ERR_UNKNOWN_JOB == b"ERR UNKNOWN_JOB\r\n"
    assert ERR_UNKNOWN_ERROR == b"ERR UNKNOWN_ERROR\r\n"
    assert ERR_FUNCTION_NOT_FOUND == b"ERR function not found\r\n"
    assert ERR_FUNCTION_BUSY == b"ERR there are still connected workers or executing clients\r\n"
    assert OK_REPLY == b"OK\r\n"
    assert END_OF_LIST == b".\n"


def test_ok_lines() -> None:
    assert format_ok(b"1.1.20+ds") == b"OK 1.1.20+ds\n"  # version
    assert format_ok(b"%d" % 3748) == b"OK 3748\n"  # getpid
    assert format_ok(b"INFO") == b"OK INFO\n"  # verbose


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([b"f"], (b"f", (0, 0, 0))),
        ([b"f", b"5"], (b"f", (5, 5, 5))),
        ([b"f", b"5", b"1"], (b"f", (5, 1, 0))),
        ([b"f", b"1", b"2", b"3"], (b"f", (1, 2, 3))),
        ([b"f", b"0", b"0", b"1"], (b"f", (0, 0, 1))),
        ([b"f", b"-3"], (b"f", (0, 0, 0))),
        ([b"f", b"-3", b"4", b"-1"], (b"f", (0, 4, 0))),
        ([b"f", b"abc"], (b"f", (0, 0, 0))),
        ([b"f", b"1x"], (b"f", (1, 1, 1))),
        ([b"f", b"+7"], (b"f", (7, 7, 7))),
        ([b"f", b"\t 9"], (b"f", (9, 9, 9))),
        ([b"f", b"- 9"], (b"f", (0, 0, 0))),
        ([b"f", b"1", b""], (b"f", (1, 0, 0))),  # "maxqueue f 1 " as gearmand reads it
        ([b"f", b"4294967297"], (b"f", (1, 1, 1))),  # glibc atoi wraps to 32 bits
        ([b"f", b"2147483647"], (b"f", (2147483647,) * 3)),
        ([b"f", b"2147483648"], (b"f", (0, 0, 0))),  # wraps negative
        ([b"f", b"99999999999999999999999"], (b"f", (0, 0, 0))),  # strtol saturates, then wraps
        ([b"f", b"1" * 5000], (b"f", (0, 0, 0))),  # past Python's 4300-digit int() limit
        ([b"f", b"0" * 5000 + b"7"], (b"f", (7, 7, 7))),  # leading zeros do not overflow
    ],
)
def test_maxqueue_limits(args: list[bytes], expected: tuple[bytes, tuple[int, int, int]]) -> None:
    assert maxqueue_limits(args) == expected


def test_maxqueue_limits_from_a_line() -> None:
    parsed = parse_line(b"MaxQueue reverse 10 20\r\n")
    assert parsed.command is C.MAXQUEUE
    assert maxqueue_limits(parsed.args) == (b"reverse", (10, 20, 0))


def test_maxqueue_limits_needs_a_function() -> None:
    with pytest.raises(ValueError, match="function"):
        maxqueue_limits([])


def test_format_status() -> None:
    rows = [(b"wc", 2, 0, 2), (b"reverse", 1, 1, 1), (b"F", 0, 0, 0)]
    assert format_status(rows) == b"wc\t2\t0\t2\nreverse\t1\t1\t1\nF\t0\t0\t0\n.\n"
    assert format_status([]) == b".\n"
    assert format_status(iter(rows[:1])) == b"wc\t2\t0\t2\n.\n"


def test_format_priority_status() -> None:
    rows = [(b"wc", 0, 1, 1, 2), (b"g2", 0, 1, 3, 0)]
    assert format_priority_status(rows) == b"wc\t0\t1\t1\t2\ng2\t0\t1\t3\t0\n.\n"
    assert format_priority_status([]) == b".\n"


def test_format_workers() -> None:
    assert format_workers([(12, b"127.0.0.1", b"-", [b"reverse", b"wc"])]) == (
        b"12 127.0.0.1 - : reverse wc\n.\n"
    )
    assert format_workers([(12, b"127.0.0.1", b"-", [])]) == b"12 127.0.0.1 - :\n.\n"
    rows = [
        (37, b"127.0.0.1", b"myid", [b"wc", b"wc", b"reverse"]),  # duplicates are listed
        (38, b"::1", b"-", []),
    ]
    assert format_workers(rows) == b"37 127.0.0.1 myid : wc wc reverse\n38 ::1 - :\n.\n"
    assert format_workers([]) == b".\n"


def test_format_show_jobs() -> None:
    rows = [(b"H:vm:1", 0, 1, 0), (b"H:vm:14", 0, 0, 1)]
    assert format_show_jobs(rows) == b"H:vm:1\t0\t1\t0\nH:vm:14\t0\t0\t1\n.\n"
    assert format_show_jobs([]) == b".\n"


def test_format_show_unique_jobs() -> None:
    assert format_show_unique_jobs([b"u1", b"", b"-"]) == b"u1\n\n-\n.\n"
    assert format_show_unique_jobs([]) == b".\n"
