"""The TOML config file (``--config FILE``) and the one table of settings it shares with the flags.

Schema
======
The file is TOML (read with the standard library's ``tomllib``). Top-level keys are the long flag
names without ``--``, letter for letter (``port``, ``max-packet-size``, ``log-level``, ...): every
flag has a key, and `SETTINGS` is the one list of both. Sizes are an integer of bytes or a string
with a K, M or G suffix; durations are seconds (integer or float). Flags given on the command line
override the file.

Per-function settings live in one table per function name or glob pattern::

    [functions."resize_*"]          # fnmatch glob: *, ?, [...]; matched against the name's bytes
    maxqueue = 1000                 # the same limit for HIGH, NORMAL and LOW (0 = unlimited)

    [functions."thumbnail"]         # an exact name
    maxqueue = [10, 100, 100]       # HIGH, NORMAL, LOW, as the admin command `maxqueue F H N L`

    [functions."thumbnail".retry]   # a retry policy (retries.POLICY_KEYS) and the dead set
    attempts = 5
    delay = "10s"

A function takes each setting from the table of its exact name when that table sets it, else from
the first glob table (in file order) that matches the name and sets it. Keys of a function table are
`FUNCTION_KEYS` (``maxqueue``, ``retry``); adding a per-function setting is one field in
``config.FunctionSettings`` and one parser there. Other top-level tables get a `TABLES` entry of
their own: ``[access]`` (identities and access rules, checked by ``access.parse_table``; see the
README's "Security" section) is one.

Errors
======
Anything the schema does not know (a misspelt key, a table that does not exist, a value of the
wrong type or out of range) is refused with `ConfigError`, whose text is ``FILE:LINE: reason``
(the line of the offending key, found by `_KeyLines`; a TOML syntax error carries tomllib's own
line). At start the server prints it and exits with status 2; at a reload (SIGHUP) it is logged
and the running config stays.

Reload
======
`RELOADABLE` names the settings a reload applies to the running server without dropping a
connection; `reload_changes` splits a new config into what is applied and what needs a restart.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from shardgear import access
from shardgear.config import (
    CLIENT_CERT_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    MIB,
    Config,
    FunctionRule,
    FunctionSettings,
)
from shardgear.retries import RetryPolicy, parse_policy

__all__ = [
    "FUNCTION_KEYS",
    "RELOADABLE",
    "SETTINGS",
    "ConfigError",
    "Setting",
    "build_config",
    "load_file",
    "reload_changes",
]


class ConfigError(ValueError):
    """A config file (or a value in it) that cannot be used; the text says where and why."""


# ------------------------------------------------------------------------------ value parsers
# Each takes a value from TOML (already typed) or from the command line (a string) and returns the
# Config value, or raises ValueError with a reason that reads after "KEY: ".


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an integer, got {value!r}")


def int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    """An integer from `low` to `high` (inclusive; None = no upper bound)."""

    def parse(value: Any) -> int:
        n = _int(value)
        if n < low or (high is not None and n > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {n}")
        return n

    return parse


_UNITS: Final = {"k": 1024, "m": MIB, "g": 1024 * MIB}


def size(minimum: int = 1, maximum: int | None = None) -> Callable[[Any], int]:
    """A byte count: an integer, or a string with an optional K, M or G suffix (powers of 1024),
    from `minimum` to `maximum` (None: no bound)."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"not a size: {value!r}")
        if isinstance(value, int):
            n = value
        elif isinstance(value, str):
            text = value.strip()
            try:
                if text and text[-1].lower() in _UNITS:
                    n = int(float(text[:-1]) * _UNITS[text[-1].lower()])
                else:
                    n = int(text)
            except ValueError:
                raise ValueError(f"not a size: {value!r}") from None
        else:
            raise ValueError(f"not a size: {value!r}")
        if n < minimum:
            shown = f"{minimum // 1024}K" if minimum >= 1024 else str(minimum)
            raise ValueError(f"must be at least {shown}, got {value!r}")
        if maximum is not None and n > maximum:
            raise ValueError(f"must be at most {maximum}, got {value!r}")
        return n

    return parse


def seconds(value: Any) -> float:
    """A duration in seconds, 0 or more."""
    if isinstance(value, bool):
        raise ValueError(f"expected seconds, got {value!r}")
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected seconds, got {value!r}") from None
    if not n >= 0 or n == float("inf"):
        raise ValueError(f"must be a finite number of seconds, 0 or more, got {value!r}")
    return n


def choice(*options: str) -> Callable[[Any], str]:
    """One of `options` (case-insensitive)."""

    def parse(value: Any) -> str:
        if isinstance(value, str) and value.lower() in options:
            return value.lower()
        raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")

    return parse


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {value!r}")


def handle_prefix(value: Any) -> str:
    prefix = text(value)
    if not 0 < len(prefix.encode()) <= 36:
        raise ValueError("must be 1 to 36 bytes")
    return prefix


def listen_address(value: Any) -> str:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6), or "" for off."""
    address = text(value).strip()
    if not address:
        return ""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected ADDR:PORT, got {value!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"expected ADDR:PORT or [IPV6]:PORT, got {value!r}")
    return address


def store_kind(value: Any) -> str:
    """log or none; sqlite (the former store) is log now."""
    kind = choice("log", "none", "sqlite")(value)
    return "log" if kind == "sqlite" else kind


def maxqueue(value: Any) -> tuple[int, int, int]:
    """One limit for every priority, or [HIGH, NORMAL, LOW]; 0 = unlimited."""
    limit = int_range(0, 2**31 - 1)
    if isinstance(value, list):
        if len(value) != 3:
            raise ValueError(f"expected N or [HIGH, NORMAL, LOW], got {len(value)} numbers")
        high, normal, low = (limit(v) for v in value)
        return (high, normal, low)
    n = limit(value)
    return (n, n, n)


def retry_policy(value: Any) -> RetryPolicy:
    """A ``retry`` table (``retries.POLICY_KEYS``): attempts, which failures count, the backoff,
    the dead set and its bounds."""
    if not isinstance(value, dict):
        raise ValueError(
            f'expected a table, e.g. [functions."NAME".retry] or retry = {{ attempts = 5 }}, '
            f"got {value!r}"
        )
    return parse_policy(value)


# ------------------------------------------------------------------------------ the settings


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: a flag ``--KEY`` and a file key ``KEY`` that set the Config field `field`."""

    key: str
    field: str
    parse: Callable[[Any], Any]
    reload: bool = False
    """True if a reload (SIGHUP) applies a new value without a restart."""


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("listen", "listen", text),
    Setting("port", "port", int_range(0, 65535)),
    Setting("fronts", "fronts", int_range(1)),
    Setting("shards", "shards", int_range(1)),
    Setting("job-retries", "job_retries", int_range(0, 255), reload=True),
    Setting("exceptions", "exceptions", boolean, reload=True),
    Setting("job-handle-prefix", "job_handle_prefix", handle_prefix),
    Setting("worker-wakeup", "worker_wakeup", int_range(0), reload=True),
    Setting("grab-lease", "grab_lease", boolean, reload=True),
    # a packet's size field is a u32 (gearman-protocol.md): 4294967295 is gearmand's limit too
    Setting("max-packet-size", "max_packet_size", size(maximum=0xFFFFFFFF), reload=True),
    Setting("max-output-buffer", "max_output_buffer", size(), reload=True),
    Setting("max-total-output", "max_total_output", size(), reload=True),
    Setting("max-total-input", "max_total_input", size(), reload=True),
    Setting("ring-size", "ring_size", size(64 * 1024)),
    Setting("backlog", "backlog", int_range(1)),
    Setting("store", "store", store_kind),
    Setting("state-dir", "state_dir", text),
    Setting("store-sync", "store_sync", choice("normal", "full")),
    Setting("graceful-timeout", "graceful_timeout", seconds, reload=True),
    Setting("heartbeat-timeout", "heartbeat_timeout", seconds, reload=True),
    Setting("log-level", "log_level", choice(*LOG_LEVELS), reload=True),
    Setting("log-format", "log_format", choice(*LOG_FORMATS)),
    Setting("metrics", "metrics", listen_address),
    Setting("http", "http", listen_address),
    Setting("http-threads", "http_threads", int_range(1, 10_000)),
    # TLS (tls.py); a change needs a restart: listeners and contexts are made at start
    Setting("tls-cert", "tls_cert", text),
    Setting("tls-key", "tls_key", text),
    Setting("tls-ca", "tls_ca", text),
    Setting("tls-client-cert", "tls_client_cert", choice(*CLIENT_CERT_MODES)),
    Setting("tls-listen", "tls_listen", text),
    Setting("tls-port", "tls_port", int_range(0, 65535)),
    Setting("tls-handshake-timeout", "tls_handshake_timeout", seconds),
    # limits against abuse (limits.py); 0 = no limit
    Setting("max-connections", "max_connections", int_range(0)),
    Setting("max-connections-per-peer", "max_connections_per_peer", int_range(0)),
    Setting("max-functions", "max_functions", int_range(0)),
    Setting("max-function-name", "max_function_name", int_range(0)),
    Setting("max-queued-bytes", "max_queued_bytes", size(0)),
    Setting("max-schedules", "max_schedules", int_range(0)),
)
BY_KEY: Final = {s.key: s for s in SETTINGS}
RELOADABLE: Final = frozenset(s.field for s in SETTINGS if s.reload) | {"functions", "access"}

#: Keys of a ``[functions."PATTERN"]`` table -> parser; each is a field of FunctionSettings.
FUNCTION_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    "maxqueue": maxqueue,
    "retry": retry_policy,
}

#: Top-level tables -> parser of the table (gets the table and a `_KeyLines` for errors).
TABLES: Final = ("functions", "access")


# ------------------------------------------------------------------------------ reading a file


def load_file(path: str) -> tuple[dict[str, Any], tuple[FunctionRule, ...]]:
    """Read config file `path`: return (Config field -> value, per-function rules).

    Raises ConfigError (``FILE:LINE: reason``) for a file that cannot be read, is not TOML, or
    does not follow the schema.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    import tomllib  # only with --config (4 ms)

    try:
        source = raw.decode("utf-8")
        data = tomllib.loads(source)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}:{_syntax_error(str(exc))}") from None
    lines = _KeyLines(source)

    def fail(key_path: tuple[str, ...], reason: str) -> ConfigError:
        line = lines.find(key_path)
        where = f"{path}:{line}" if line else path
        return ConfigError(f"{where}: {reason}")

    values: dict[str, Any] = {}
    rules: tuple[FunctionRule, ...] = ()
    for key, value in data.items():
        if key == "functions":
            rules = _function_rules(value, fail)
            continue
        if key == "access":  # identities and access rules: access.py checks the table
            try:
                values["access"] = access.parse_table(value)
            except ValueError as exc:
                raise fail(_access_path(str(exc)), str(exc)) from None
            continue
        setting = BY_KEY.get(key)
        if setting is None:
            raise fail((key,), _unknown(key, [*BY_KEY, *TABLES], "key"))
        if isinstance(value, dict):
            raise fail((key,), f"{key}: expected a value, got a table")
        try:
            values[setting.field] = setting.parse(value)
        except ValueError as exc:
            raise fail((key,), f"{key}: {exc}") from None
    return values, rules


def _function_rules(
    table: Any, fail: Callable[[tuple[str, ...], str], ConfigError]
) -> tuple[FunctionRule, ...]:
    if not isinstance(table, dict):
        raise fail(("functions",), 'functions: expected tables, e.g. [functions."NAME"]')
    rules = []
    for pattern, entry in table.items():
        where = ("functions", pattern)
        if not pattern:
            raise fail(where, "functions: an empty function name")
        if not isinstance(entry, dict):
            raise fail(where, f'functions."{pattern}": expected a table of settings')
        settings: dict[str, Any] = {}
        for key, value in entry.items():
            parse = FUNCTION_KEYS.get(key)
            if parse is None:
                reason = _unknown(key, list(FUNCTION_KEYS), "function setting")
                raise fail((*where, key), f'functions."{pattern}": {reason}')
            try:
                settings[key] = parse(value)
            except ValueError as exc:
                at = (*where, key, *_failing_key(parse, value))
                raise fail(at, f'functions."{pattern}".{key}: {exc}') from None
        rules.append(FunctionRule(pattern, FunctionSettings(**settings)))
    return tuple(rules)


def _failing_key(parse: Callable[[Any], Any], value: Any) -> tuple[str, ...]:
    """For an error message's line: the key of table `value` that `parse` refuses on its own
    (``()`` if `value` is no table, or no key alone is to blame)."""
    if isinstance(value, dict):
        for key, item in value.items():
            try:
                parse({key: item})
            except ValueError:
                return (key,)
    return ()


def _unknown(key: str, known: list[str], what: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, known, n=1)
    if not close and "_" in key:
        close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {key!r}{hint}"


_AT_LINE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")
_AT_END = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_error(message: str) -> str:
    """tomllib's "reason (at line N, column M)" as "N: reason"."""
    m = _AT_LINE.search(message)
    if m:
        return f"{m.group(1)}: {message[: m.start()]}"
    m = _AT_END.search(message)
    if m:
        return f" {message[: m.start()]} (at the end of the file)"
    return f" {message}"


class _KeyLines:
    """Line numbers of the keys of a TOML text, for error messages (best effort: a key it cannot
    place gets no line).

    Each ``[table]`` header and each ``key = value`` line is parsed with tomllib on its own to get
    its dotted path, so quoting and dotted keys are read exactly as TOML reads them.
    """

    def __init__(self, source: str) -> None:
        self.lines: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        in_string = False
        for number, line in enumerate(source.splitlines(), 1):
            stripped = line.strip()
            if line.count('"""') % 2 or line.count("'''") % 2:
                was_in_string = in_string
                in_string = not in_string
                if was_in_string:
                    continue
            elif in_string:
                continue
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("["):
                path = _path_of(stripped.lstrip("[").split("]")[0] + " = 0")
                if path:
                    table = path
                    self._add(table, number)
                continue
            key, sep, _ = stripped.partition("=")
            if sep:
                path = _path_of(key + " = 0")
                if path:
                    self._add(table + path, number)

    def _add(self, path: tuple[str, ...], number: int) -> None:
        for i in range(1, len(path) + 1):
            self.lines.setdefault(path[:i], number)

    def find(self, path: tuple[str, ...]) -> int:
        """The line of `path` (or of its nearest enclosing table); 0 if unknown."""
        for i in range(len(path), 0, -1):
            line = self.lines.get(path[:i])
            if line:
                return line
        return 0


def _path_of(assignment: str) -> tuple[str, ...]:
    import tomllib

    try:
        data: Any = tomllib.loads(assignment)
    except tomllib.TOMLDecodeError:
        return ()
    path: list[str] = []
    while isinstance(data, dict) and len(data) == 1:
        key = next(iter(data))
        path.append(key)
        data = data[key]
    return tuple(path)


# ------------------------------------------------------------------------------ building Configs


def build_config(path: str | None, flags: Mapping[str, Any]) -> Config:
    """The Config of config file `path` (None: no file) overridden by `flags` (Config field ->
    value, parsed already). Raises ConfigError for a bad file, or for settings that do not go
    together (`check_tls`)."""
    values: dict[str, Any] = {}
    if path:
        file_values, rules = load_file(path)
        values.update(file_values)
        values["functions"] = rules
        values["config_file"] = os.path.abspath(path)
    values.update(flags)
    config = Config(**values)
    check_tls(config)
    return config


def check_tls(config: Config) -> None:
    """Refuse TLS settings that cannot work: a TLS port without a certificate, a client-certificate
    mode that needs a CA without one, files that do not load (the context is built once here, so
    the error comes at start, not at the first connection). Raises ConfigError."""
    if config.tls_port and not config.tls_cert:
        raise ConfigError("tls-port needs tls-cert")
    if config.http and config.tls_cert and not config.tls_port:
        raise ConfigError(
            "http needs the plain-text listener (the HTTP process is a loopback client of the "
            "fronts): with tls-cert, give TLS a port of its own (tls-port)"
        )
    if not config.tls_cert:
        return
    from shardgear import tls  # ssl is imported only when TLS is configured

    try:
        tls.server_context(config.tls_cert, config.tls_key, config.tls_ca, config.tls_client_cert)
    except tls.TLSConfigError as exc:
        raise ConfigError(str(exc)) from None


def _access_path(message: str) -> tuple[str, ...]:
    """The key path at the start of an access.parse_table error, for its line number."""
    where = message.split(":", 1)[0]
    return tuple(part.strip('"') for part in re.findall(r'"[^"]*"|[^.]+', where))


def reload_changes(running: Config, new: Config) -> tuple[Config, list[str]]:
    """Split `new` (a reloaded config) against the `running` one: return the config to run now
    (`running` with every reloadable setting of `new`) and the keys that changed but need a
    restart to take effect (in `SETTINGS` order)."""
    applied: dict[str, Any] = {}
    restart: list[str] = []
    for setting in SETTINGS:
        old_value = getattr(running, setting.field)
        new_value = getattr(new, setting.field)
        if old_value == new_value:
            continue
        if setting.reload:
            applied[setting.field] = new_value
        else:
            restart.append(setting.key)
    applied["functions"] = new.functions
    applied["access"] = new.access
    return dataclasses.replace(running, **applied), restart
