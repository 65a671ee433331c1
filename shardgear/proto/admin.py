"""The text admin protocol (spec section 3): parsing command lines, formatting replies.

Pure functions; the front asks shards for the data and formats it here. Every reply byte was
checked against gearmand 1.1.20 on the wire. What that showed beyond the spec table:

* Extra tokens are ignored by ``status``, ``prioritystatus``, ``workers``, ``version``, ``getpid``
  and ``verbose`` (``status x`` is ``status``).
* ``show`` alone and ``cancel`` with fewer than 3 tokens are unknown commands
  (``ERR UNKNOWN_COMMAND Unknown+server+commandshow``); ``show jobs x`` and ``show unique`` are
  ``ERR UNKNOWN_SHOW_ARGUMENTS``.
* ``create``/``drop`` need exactly ``<cmd> function F``; anything else gets INVALID_ARGUMENTS.
  Error replies echo the command token as typed (``...command+MAXQUEUE``), and the sub-keywords
  (``jobs``, ``unique``, ``job``, ``function``) are case-insensitive like the command names.
* Tokens come from :class:`~shardgear.proto.parser.AdminLine`, which splits like gearmand: a
  trailing space makes an empty last token, so ``cancel job H `` is ``ERR UNKNOWN_ERROR`` and
  ``maxqueue F 5 `` sets HIGH=5, NORMAL=atoi("")=0, LOW=0 (both confirmed on gearmand).
* ``maxqueue`` numbers are parsed with C ``atoi``: leading whitespace, a sign, digits, and
  the rest ignored (``1x`` is 1, ``abc`` is 0); glibc's atoi is ``(int)strtol`` so out-of-range
  values wrap to 32 bits (``4294967297`` is 1). Negative limits become 0 (unlimited).
* gearmand echoes the unknown command only up to a NUL byte (C strings); shardgear echoes the whole
  token. gearmand's ``create function`` drops the name's last byte when the line ends in a bare
  ``\\n`` (spec quirk); here the name is the token, which the parser has already stripped.
* ``shutdown`` / ``shutdown graceful`` are unknown commands in gearmand >= 1.1.15; shardgear keeps
  them with the pre-1.1.15 replies (``OK\\r\\n``, other arguments give INVALID_ARGUMENTS).

Commands of shardgear's own (retries, the dead set and cron schedules, issue 9), in gearmand's
style (lists end with ``.``, one tab-separated line per item, times in integer epoch seconds,
errors and payloads percent-escaped with `escape` so that a line stays one line):

* ``show functions``: per function the runnable jobs by priority, the waiting (epoch or retry),
  running and workers (`format_show_functions`);
* ``show retries``: jobs with failed attempts under a retry policy (`format_show_retries`);
* ``show dead jobs [FUNC|*] [LIMIT]`` (newest first, LIMIT default 100), ``show dead job ID``,
  ``show dead functions``; ``replay dead job ID``, ``replay dead function FUNC``,
  ``replay dead all`` (``OK REPLAYED REFUSED``); ``delete dead ...`` the same (``OK DELETED``);
* ``show schedules``; ``remove schedule FUNC [UNIQUE]`` (no UNIQUE: the empty unique).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Final, NamedTuple

OK_REPLY: Final = b"OK\r\n"
"""Success reply of maxqueue, cancel job, create/drop function and shutdown."""

END_OF_LIST: Final = b".\n"
"""The last line of every list reply."""

ERR_UNKNOWN_SHOW_ARGUMENTS: Final = b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"
ERR_UNKNOWN_JOB: Final = b"ERR UNKNOWN_JOB\r\n"
"""``cancel job H`` for a handle that is not queued."""
ERR_UNKNOWN_ERROR: Final = b"ERR UNKNOWN_ERROR\r\n"
"""``cancel`` with a wrong shape (``cancel foo x``, ``cancel job a b``)."""
ERR_FUNCTION_BUSY: Final = b"ERR there are still connected workers or executing clients\r\n"
"""``drop function F`` while workers are registered for F or its jobs are running."""
ERR_FUNCTION_NOT_FOUND: Final = b"ERR function not found\r\n"
"""``drop function F`` for an unknown F (names are matched case-insensitively)."""


def unknown_command(token: bytes) -> bytes:
    """The reply to an unknown command; no separator before the token, as in gearmand."""
    return b"ERR UNKNOWN_COMMAND Unknown+server+command" + token + b"\r\n"


def invalid_arguments(token: bytes) -> bytes:
    """The INVALID_ARGUMENTS reply naming the command token as typed."""
    return (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
        + token
        + b"\r\n"
    )


def format_ok(value: bytes) -> bytes:
    """The reply of ``version``, ``getpid`` and ``verbose``: ``OK <value>\\n`` (no ``\\r``)."""
    return b"OK " + value + b"\n"


class AdminCommand(enum.Enum):
    """The admin commands shardgear answers."""

    STATUS = enum.auto()
    PRIORITY_STATUS = enum.auto()
    WORKERS = enum.auto()
    VERSION = enum.auto()
    GETPID = enum.auto()
    VERBOSE = enum.auto()
    MAXQUEUE = enum.auto()
    SHOW_JOBS = enum.auto()
    SHOW_UNIQUE_JOBS = enum.auto()
    CANCEL_JOB = enum.auto()
    CREATE_FUNCTION = enum.auto()
    DROP_FUNCTION = enum.auto()
    SHUTDOWN = enum.auto()
    SHOW_FUNCTIONS = enum.auto()
    SHOW_RETRIES = enum.auto()
    SHOW_DEAD_JOBS = enum.auto()
    SHOW_DEAD_JOB = enum.auto()
    SHOW_DEAD_FUNCTIONS = enum.auto()
    REPLAY_DEAD = enum.auto()
    DELETE_DEAD = enum.auto()
    SHOW_SCHEDULES = enum.auto()
    REMOVE_SCHEDULE = enum.auto()
    UNKNOWN = enum.auto()


class ParsedAdmin(NamedTuple):
    """A parsed admin line.

    ``args`` by command: MAXQUEUE ``[FUNC, *numbers]`` (give it to :func:`maxqueue_limits`);
    CANCEL_JOB ``[HANDLE]``; CREATE_FUNCTION and DROP_FUNCTION ``[FUNC]``; SHUTDOWN ``[]`` or
    ``[b"graceful"]``; SHOW_DEAD_JOBS ``[FUNC, LIMIT]`` (b"" for every function / the default);
    SHOW_DEAD_JOB ``[ID]`` (digits); REPLAY_DEAD and DELETE_DEAD ``[b"job", ID]``,
    ``[b"function", FUNC]`` or ``[b"all"]``; REMOVE_SCHEDULE ``[FUNC, UNIQUE]``; otherwise ``[]``.
    When ``error`` is not None it is the complete reply to
    send instead of running anything (``command`` then says what the line tried to be, UNKNOWN
    if nothing).
    """

    command: AdminCommand
    args: list[bytes]
    error: bytes | None


_NO_ARGS: Final = {
    b"status": AdminCommand.STATUS,
    b"prioritystatus": AdminCommand.PRIORITY_STATUS,
    b"workers": AdminCommand.WORKERS,
    b"version": AdminCommand.VERSION,
    b"getpid": AdminCommand.GETPID,
    b"verbose": AdminCommand.VERBOSE,
}

_FUNCTION_COMMANDS: Final = {
    b"create": AdminCommand.CREATE_FUNCTION,
    b"drop": AdminCommand.DROP_FUNCTION,
}


def parse_admin(tokens: list[bytes]) -> ParsedAdmin:
    """Recognise an admin command from the tokens of an :class:`AdminLine`.

    Command names and their keywords are case-insensitive; arguments (function names, handles)
    are kept as sent.

    Args:
        tokens: at most 5 tokens, as the parser yields them.

    Returns:
        The command and its arguments, or the error reply to send.
    """
    if not tokens:
        return ParsedAdmin(AdminCommand.UNKNOWN, [], unknown_command(b""))
    token = tokens[0]
    name = token.lower()
    argc = len(tokens)
    simple = _NO_ARGS.get(name)
    if simple is not None:
        return ParsedAdmin(simple, [], None)
    if name == b"maxqueue":
        if argc == 1:
            return ParsedAdmin(AdminCommand.MAXQUEUE, [], invalid_arguments(token))
        return ParsedAdmin(AdminCommand.MAXQUEUE, tokens[1:], None)
    if name == b"show" and argc > 1:
        keywords = [t.lower() for t in tokens[1:]]
        if keywords == [b"jobs"]:
            return ParsedAdmin(AdminCommand.SHOW_JOBS, [], None)
        if keywords == [b"unique", b"jobs"]:
            return ParsedAdmin(AdminCommand.SHOW_UNIQUE_JOBS, [], None)
        if keywords == [b"functions"]:
            return ParsedAdmin(AdminCommand.SHOW_FUNCTIONS, [], None)
        if keywords == [b"retries"]:
            return ParsedAdmin(AdminCommand.SHOW_RETRIES, [], None)
        if keywords == [b"schedules"]:
            return ParsedAdmin(AdminCommand.SHOW_SCHEDULES, [], None)
        if keywords[0] == b"dead":
            return _parse_show_dead(token, tokens[2:])
        return ParsedAdmin(AdminCommand.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)
    if name in (b"replay", b"delete") and argc > 1 and tokens[1].lower() == b"dead":
        return _parse_dead_command(token, tokens[2:])
    if name == b"remove" and argc > 1 and tokens[1].lower() == b"schedule":
        if argc not in (3, 4) or not tokens[2]:
            return ParsedAdmin(AdminCommand.REMOVE_SCHEDULE, [], invalid_arguments(token))
        unique = tokens[3] if argc == 4 else b""
        return ParsedAdmin(AdminCommand.REMOVE_SCHEDULE, [tokens[2], unique], None)
    if name == b"cancel" and argc > 2:
        if argc == 3 and tokens[1].lower() == b"job":
            return ParsedAdmin(AdminCommand.CANCEL_JOB, [tokens[2]], None)
        return ParsedAdmin(AdminCommand.CANCEL_JOB, [], ERR_UNKNOWN_ERROR)
    function_command = _FUNCTION_COMMANDS.get(name)
    if function_command is not None:
        if argc == 3 and tokens[1].lower() == b"function":
            return ParsedAdmin(function_command, [tokens[2]], None)
        return ParsedAdmin(function_command, [], invalid_arguments(token))
    if name == b"shutdown":
        if argc == 1:
            return ParsedAdmin(AdminCommand.SHUTDOWN, [], None)
        if argc == 2 and tokens[1].lower() == b"graceful":
            return ParsedAdmin(AdminCommand.SHUTDOWN, [b"graceful"], None)
        return ParsedAdmin(AdminCommand.SHUTDOWN, [], invalid_arguments(token))
    return ParsedAdmin(AdminCommand.UNKNOWN, [], unknown_command(token))


def _is_id(raw: bytes) -> bool:
    """ASCII digits that fit a signed 64-bit integer (the shards' SQLite and orjson need one)."""
    return raw.isdigit() and len(raw) <= 19 and int(raw) <= _LONG_MAX


def _parse_show_dead(token: bytes, rest: list[bytes]) -> ParsedAdmin:
    """``show dead jobs [FUNC|*] [LIMIT]``, ``show dead job ID``, ``show dead functions``."""
    what = rest[0].lower() if rest else b""
    if what == b"functions" and len(rest) == 1:
        return ParsedAdmin(AdminCommand.SHOW_DEAD_FUNCTIONS, [], None)
    if what == b"jobs" and len(rest) <= 3:
        func = rest[1] if len(rest) > 1 and rest[1] != b"*" else b""
        limit = rest[2] if len(rest) > 2 else b""
        if limit and not _is_id(limit):
            return ParsedAdmin(AdminCommand.SHOW_DEAD_JOBS, [], invalid_arguments(token))
        return ParsedAdmin(AdminCommand.SHOW_DEAD_JOBS, [func, limit], None)
    if what == b"job":
        if len(rest) != 2 or not _is_id(rest[1]):
            return ParsedAdmin(AdminCommand.SHOW_DEAD_JOB, [], invalid_arguments(token))
        return ParsedAdmin(AdminCommand.SHOW_DEAD_JOB, [rest[1]], None)
    return ParsedAdmin(AdminCommand.UNKNOWN, [], ERR_UNKNOWN_SHOW_ARGUMENTS)


def _parse_dead_command(token: bytes, rest: list[bytes]) -> ParsedAdmin:
    """``replay|delete dead job ID``, ``... function FUNC``, ``... all``."""
    command = AdminCommand.REPLAY_DEAD if token.lower() == b"replay" else AdminCommand.DELETE_DEAD
    what = rest[0].lower() if rest else b""
    if what == b"all" and len(rest) == 1:
        return ParsedAdmin(command, [b"all"], None)
    if what == b"job" and len(rest) == 2 and _is_id(rest[1]):
        return ParsedAdmin(command, [b"job", rest[1]], None)
    if what == b"function" and len(rest) == 2 and rest[1]:
        return ParsedAdmin(command, [b"function", rest[1]], None)
    return ParsedAdmin(command, [], invalid_arguments(token))


# C atoi: optional leading isspace(), optional sign, then digits; anything after is ignored.
_atoi_prefix: Final = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)").match
_LONG_MIN: Final = -(1 << 63)
_LONG_MAX: Final = (1 << 63) - 1


def _atoi(text: bytes) -> int:
    """glibc ``atoi``: ``(int)strtol(text, NULL, 10)``, saturating to long, then wrapping to int."""
    match = _atoi_prefix(text)
    if match is None:
        return 0
    number = match.group(1)
    digits = number.lstrip(b"+-").lstrip(b"0")
    if len(digits) > 19:  # saturates (and Python refuses int() of over 4300 digits)
        value = _LONG_MIN if number[:1] == b"-" else _LONG_MAX
    else:
        value = int(digits) if digits else 0
        if number[:1] == b"-":
            value = -value
        value = min(max(value, _LONG_MIN), _LONG_MAX)
    return (value + (1 << 31)) % (1 << 32) - (1 << 31)


def maxqueue_limits(args: list[bytes]) -> tuple[bytes, tuple[int, int, int]]:
    """Interpret ``maxqueue`` arguments as gearmand does.

    ``[F]`` resets all three limits to 0 (unlimited); ``[F, N]`` sets N for every priority;
    ``[F, H, N]`` sets HIGH and NORMAL and resets LOW to 0; ``[F, H, N, L]`` sets all three.
    Numbers are read with C ``atoi`` (non-numbers are 0) and negative values become 0.

    Args:
        args: ``ParsedAdmin.args`` of a MAXQUEUE command: the function, then up to 3 numbers.

    Returns:
        ``(function, (high, normal, low))``.

    Raises:
        ValueError: ``args`` is empty.
    """
    if not args:
        raise ValueError("maxqueue needs a function name")
    numbers = [max(_atoi(arg), 0) for arg in args[1:4]]
    if len(numbers) == 1:
        numbers *= 3
    numbers.extend([0] * (3 - len(numbers)))
    return args[0], (numbers[0], numbers[1], numbers[2])


def format_status(rows: Iterable[tuple[bytes, int, int, int]]) -> bytes:
    """``status``: ``NAME\\tTOTAL\\tRUNNING\\tWORKERS\\n`` per function, then ``.\\n``."""
    lines = [b"%s\t%d\t%d\t%d\n" % row for row in rows]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_priority_status(rows: Iterable[tuple[bytes, int, int, int, int]]) -> bytes:
    """``prioritystatus``: ``NAME\\tHIGH\\tNORMAL\\tLOW\\tWORKERS\\n`` per function, then ``.\\n``.

    HIGH, NORMAL and LOW count queued jobs, not running ones.
    """
    lines = [b"%s\t%d\t%d\t%d\t%d\n" % row for row in rows]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_workers(rows: Iterable[tuple[int, bytes, bytes, list[bytes]]]) -> bytes:
    """``workers``: ``FD IP ID :`` then `` FUNC`` per registration, per connection; then ``.\\n``.

    Example row ``(12, b"127.0.0.1", b"-", [b"reverse", b"wc"])`` gives
    ``12 127.0.0.1 - : reverse wc``; with no functions the line is ``12 127.0.0.1 - :``.
    """
    lines = [
        b"%d %s %s :%s\n" % (fd, ip, client_id, b"".join([b" " + f for f in functions]))
        for fd, ip, client_id, functions in rows
    ]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_show_jobs(rows: Iterable[tuple[bytes, int, int, int]]) -> bytes:
    """``show jobs``: ``HANDLE\\tRETRIES\\tIGNORE_JOB\\tJOB_QUEUED\\n`` per job, then ``.\\n``."""
    lines = [b"%s\t%d\t%d\t%d\n" % row for row in rows]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_show_unique_jobs(uniques: Iterable[bytes]) -> bytes:
    """``show unique jobs``: ``UNIQUE\\n`` per job (an empty line for no unique), then ``.\\n``."""
    lines = [unique + b"\n" for unique in uniques]
    lines.append(END_OF_LIST)
    return b"".join(lines)


# ---------------------------------------------------------------------------- shardgear's own

ERR_UNKNOWN_SCHEDULE: Final = b"ERR UNKNOWN_SCHEDULE\r\n"
"""``remove schedule F U`` for a schedule that does not exist."""

_PLAIN: Final = frozenset(range(0x21, 0x7F)) - {0x25}  # printable ASCII but '%'


def escape(raw: bytes) -> bytes:
    """Percent-escape every byte that is not printable ASCII (and ``%`` itself), so that error
    texts and payloads fit on one admin line: ``b"a b\\t%"`` -> ``b"a%20b%09%25"``."""
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in raw)


def unescape(text: bytes) -> bytes:
    """The inverse of `escape` (malformed escapes are kept as they are)."""
    if b"%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == 0x25 and _is_hex(text[i + 1 : i + 3]):
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def error_reply(code: bytes, text: str) -> bytes:
    """``ERR CODE text`` with the text escaped (gearmand URL-encodes its error texts too)."""
    return b"ERR " + code + b" " + escape(text.encode()) + b"\r\n"


def format_counts(*counts: int) -> bytes:
    """``OK N [M]``: what a replay (replayed, refused) or a delete (deleted) did."""
    return b"OK " + b" ".join(b"%d" % n for n in counts) + b"\r\n"


def format_show_functions(rows: Iterable[tuple[bytes, int, int, int, int, int, int]]) -> bytes:
    """``show functions``: ``NAME\\tHIGH\\tNORMAL\\tLOW\\tWAITING\\tRUNNING\\tWORKERS\\n``
    per function, then ``.\\n``."""
    lines = [b"%s\t%d\t%d\t%d\t%d\t%d\t%d\n" % row for row in rows]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_show_retries(
    rows: Iterable[tuple[bytes, bytes, bytes, int, str, float, float, str, bytes]],
) -> bytes:
    """``show retries``: ``HANDLE\\tFUNCTION\\tUNIQUE\\tFAILURES\\tSTATE\\tNEXT\\tLAST_FAILED\\t
    REASON\\tERROR\\n`` per job, then ``.\\n``. STATE is waiting, queued or running; NEXT the
    next attempt of a waiting job (0 otherwise)."""
    lines = [
        b"%s\t%s\t%s\t%d\t%s\t%d\t%d\t%s\t%s\n"
        % (h, f, u, n, state.encode(), nxt, last, reason.encode(), escape(err))
        for h, f, u, n, state, nxt, last, reason, err in rows
    ]
    lines.append(END_OF_LIST)
    return b"".join(lines)


#: A dead job as the admin commands show it: id, function, unique, attempts, first failure, last
#: failure, reason, payload size, error.
DeadRow = tuple[int, bytes, bytes, int, float, float, str, int, bytes]


def format_dead_jobs(rows: Iterable[DeadRow]) -> bytes:
    """``show dead jobs``: ``ID\\tFUNCTION\\tUNIQUE\\tATTEMPTS\\tFIRST_FAILED\\tLAST_FAILED\\t
    REASON\\tSIZE\\tERROR\\n`` per job, then ``.\\n``."""
    lines = [
        b"%d\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\n"
        % (rid, f, u, n, first, last, reason.encode(), size, escape(err))
        for rid, f, u, n, first, last, reason, size, err in rows
    ]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_dead_job(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """``show dead job ID``: ``NAME\\tVALUE\\n`` per field (values escaped), then ``.\\n``."""
    lines = [name + b"\t" + escape(value) + b"\n" for name, value in fields]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_dead_functions(rows: Iterable[tuple[bytes, int, int]]) -> bytes:
    """``show dead functions``: ``FUNCTION\\tDEAD\\tDROPPED\\n`` per function, then ``.\\n``."""
    lines = [b"%s\t%d\t%d\n" % row for row in rows]
    lines.append(END_OF_LIST)
    return b"".join(lines)


def format_schedules(rows: Iterable[tuple[bytes, bytes, str, float, float, bytes]]) -> bytes:
    """``show schedules``: ``FUNCTION\\tUNIQUE\\tMIN HOUR MDAY MON WDAY\\tNEXT_RUN\\tLAST_RUN\\t
    HANDLE\\n`` per schedule (LAST_RUN 0: never ran), then ``.\\n``."""
    lines = [
        b"%s\t%s\t%s\t%d\t%d\t%s\n" % (f, u, expr.encode(), nxt, last, h)
        for f, u, expr, nxt, last, h in rows
    ]
    lines.append(END_OF_LIST)
    return b"".join(lines)
