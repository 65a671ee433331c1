"""Identities and access rules: who may submit, work on, and read the status of which functions,
and who may run which admin commands.

Identities
==========
A connection is known by its `Identity`: the names its verified TLS client certificate proves
(subject common names and subjectAltName values, `shardgear.tls.peer_names`) and its peer address.
A rule's identity pattern is one of

* ``"*"``: everyone, anonymous plain-text peers included;
* ``"loopback"``: peers on 127.0.0.0/8 or ::1;
* an IP address or CIDR network (``"10.0.0.0/8"``, ``"2001:db8::/32"``): peers whose address is in
  it, with or without a certificate;
* anything else: a certificate name, exact or an fnmatch glob (``"worker-*.example.com"``),
  matched case-sensitively against every name of the certificate; a peer without a verified
  certificate has no names.

Rules (the config file's ``[access]`` table)
============================================
::

    [access]
    admins = ["loopback", "ops.example.com"]   # state-changing admin commands (default: loopback)
    monitors = ["*"]                           # read-only admin commands (default: everyone)
    commands = { "cancel job" = ["loopback", "scheduler"] }   # per-command override

    [access.functions."resize_*"]               # an exact function name or an fnmatch glob
    submit = ["web-*", "10.1.0.0/16"]           # SUBMIT_JOB* (every kind)
    work = ["resizer-*"]                        # CAN_DO, CAN_DO_TIMEOUT
    status = ["web-*"]                          # GET_STATUS, GET_STATUS_UNIQUE

A function is governed by the table of its exact name, else by the first glob table (in file
order) that matches it, else by nothing: an action a governing table does not list, and every
action on a function no table governs, is allowed to everyone. So with no ``[access]`` table
everything is allowed (as in gearmand: a drop-in replacement), and a last ``"*"`` table with
empty lists denies whatever the tables above it do not grant.

Admin commands that change state (`STATE_CHANGING` and any command not in `READ_ONLY`) follow
``admins``; read-only ones follow ``monitors``; ``commands`` overrides either for one command.

Cost
====
With no function tables a connection's `Rights` is None and the front's data path tests nothing
more than that. With tables, each connection caches its decision per function and action, so a
rule is matched once per (connection, function, action) until the rules are reloaded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Final

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SUBMIT: Final = "submit"
WORK: Final = "work"
STATUS: Final = "status"
ACTIONS: Final = (SUBMIT, WORK, STATUS)
EVERYONE: Final = "*"
LOOPBACK: Final = "loopback"
_LOOPBACK_NETS: Final = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_GLOB_CHARS: Final = frozenset("*?[")

#: Admin commands that only read (gearmand's names, as typed on the admin line).
READ_ONLY: Final = frozenset(
    {
        "status",
        "prioritystatus",
        "workers",
        "show jobs",
        "show unique jobs",
        "version",
        "getpid",
        "verbose",
        # issue 9: retries, the dead set, schedules
        "show functions",
        "show retries",
        "show dead jobs",
        "show dead job",
        "show dead functions",
        "show schedules",
    }
)
#: Admin commands that change state. A command in neither set counts as state-changing.
STATE_CHANGING: Final = frozenset(
    {
        "shutdown",
        "maxqueue",
        "cancel job",
        "create function",
        "drop function",
        "replay dead",
        "delete dead",
        "remove schedule",
    }
)
ADMIN_COMMANDS: Final = READ_ONLY | STATE_CHANGING
DEFAULT_ADMINS: Final = (LOOPBACK,)
DEFAULT_MONITORS: Final = (EVERYONE,)


class Identity:
    """Who a connection is: its certificate's names (empty without one) and peer address."""

    __slots__ = ("addr", "ip", "names")

    def __init__(self, ip: str, names: tuple[str, ...] = ()) -> None:
        self.ip = ip
        self.names = names
        try:
            self.addr: Address | None = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            self.addr = None  # "-": the peer's address was unknown at accept

    def __str__(self) -> str:
        """How logs name it: ``CN@ADDRESS`` with a certificate, else the address."""
        return f"{self.names[0]}@{self.ip}" if self.names else self.ip


class Matcher:
    """A compiled list of identity patterns (see the module docstring)."""

    __slots__ = ("everyone", "globs", "names", "networks", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self.everyone = False
        self.names: frozenset[str] = frozenset()
        self.globs: list[str] = []
        self.networks: list[Network] = []
        names = set()
        for p in self.patterns:
            if p == EVERYONE:
                self.everyone = True
            elif p == LOOPBACK:
                self.networks.extend(_LOOPBACK_NETS)
            else:
                net = _network(p)
                if net is not None:
                    self.networks.append(net)
                elif any(c in _GLOB_CHARS for c in p):
                    self.globs.append(p)
                else:
                    names.add(p)
        self.names = frozenset(names)

    def matches(self, ident: Identity) -> bool:
        if self.everyone:
            return True
        addr = ident.addr
        if addr is not None:
            for net in self.networks:
                if addr.version == net.version and addr in net:
                    return True
        for name in ident.names:
            if name in self.names:
                return True
            for g in self.globs:
                if fnmatchcase(name, g):
                    return True
        return False


def _network(text: str) -> Network | None:
    if not text or not (text[0].isdigit() or ":" in text):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


class FunctionRule:
    """One ``[access.functions."PATTERN"]`` table: a Matcher per action it lists (None: not
    listed, so everyone)."""

    __slots__ = ("is_glob", "pattern", "status", "submit", "work")

    def __init__(self, pattern: str, table: Mapping[str, Sequence[str]]) -> None:
        self.pattern = pattern.encode()
        self.is_glob = any(c in _GLOB_CHARS for c in pattern)
        self.submit = Matcher(table[SUBMIT]) if SUBMIT in table else None
        self.work = Matcher(table[WORK]) if WORK in table else None
        self.status = Matcher(table[STATUS]) if STATUS in table else None

    def matcher(self, action: str) -> Matcher | None:
        if action == SUBMIT:
            return self.submit
        if action == WORK:
            return self.work
        return self.status


class AccessPolicy:
    """The compiled ``[access]`` settings (`Config.access`, as `parse_table` returns it)."""

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        settings = settings or {}
        self.settings = dict(settings)
        self.admins = Matcher(settings.get("admins", DEFAULT_ADMINS))
        self.monitors = Matcher(settings.get("monitors", DEFAULT_MONITORS))
        self.commands = {
            name: Matcher(patterns) for name, patterns in settings.get("commands", {}).items()
        }
        self.exact: dict[bytes, FunctionRule] = {}
        self.globs: list[FunctionRule] = []
        for pattern, table in settings.get("functions", {}).items():
            rule = FunctionRule(pattern, table)
            if rule.is_glob:
                self.globs.append(rule)
            else:
                self.exact[rule.pattern] = rule
        #: True when any function table exists: connections then get a `Rights`.
        self.restricts = bool(self.exact or self.globs)
        #: True when some table lists `status`: GET_STATUS* then needs the job's function.
        self.restricts_status = any(
            r.status is not None for r in (*self.exact.values(), *self.globs)
        )

    def rule_for(self, func: bytes) -> FunctionRule | None:
        """The table governing `func`: its exact name's, else the first matching glob's."""
        rule = self.exact.get(func)
        if rule is not None:
            return rule
        for g in self.globs:
            if fnmatchcase(func, g.pattern):
                return g
        return None

    def allows(self, ident: Identity, action: str, func: bytes) -> bool:
        """May `ident` do `action` (SUBMIT, WORK, STATUS) on function `func`?"""
        rule = self.rule_for(func)
        if rule is None:
            return True
        m = rule.matcher(action)
        return m is None or m.matches(ident)

    def rights(self, ident: Identity) -> Rights | None:
        """A connection's cache of decisions; None when no function is restricted."""
        return Rights(ident, self) if self.restricts else None

    def admin_allows(self, ident: Identity, command: str) -> bool:
        """May `ident` run admin `command` (a `ADMIN_COMMANDS` name)?"""
        m = self.commands.get(command)
        if m is None:
            m = self.monitors if command in READ_ONLY else self.admins
        return m.matches(ident)

    def admin_rule(self, command: str) -> str:
        """Who may run `command`, for an error text."""
        m = self.commands.get(command)
        if m is None:
            m = self.monitors if command in READ_ONLY else self.admins
        return ", ".join(m.patterns) or "nobody"


class Rights:
    """One connection's access decisions, cached per function (see `AccessPolicy.allows`)."""

    __slots__ = ("ident", "policy", "status", "submit", "work")

    def __init__(self, ident: Identity, policy: AccessPolicy) -> None:
        self.ident = ident
        self.policy = policy
        self.submit: dict[bytes, bool] = {}
        self.work: dict[bytes, bool] = {}
        self.status: dict[bytes, bool] = {}

    def may_submit(self, func: bytes) -> bool:
        ok = self.submit.get(func)
        if ok is None:
            if len(self.submit) >= _CACHE_LIMIT:
                self.submit.clear()
            ok = self.submit[func] = self.policy.allows(self.ident, SUBMIT, func)
        return ok

    def may_work(self, func: bytes) -> bool:
        ok = self.work.get(func)
        if ok is None:
            if len(self.work) >= _CACHE_LIMIT:
                self.work.clear()
            ok = self.work[func] = self.policy.allows(self.ident, WORK, func)
        return ok

    def may_read_status(self, func: bytes) -> bool:
        ok = self.status.get(func)
        if ok is None:
            if len(self.status) >= _CACHE_LIMIT:
                self.status.clear()
            ok = self.status[func] = self.policy.allows(self.ident, STATUS, func)
        return ok


_CACHE_LIMIT: Final = 4096  # functions cached per connection and action (a client may name many)


# ------------------------------------------------------------------------------ the config table


def parse_table(table: Any) -> dict[str, Any]:
    """Check an ``[access]`` table (as tomllib reads it) and return it normalized (lists of
    strings, JSON-able: `Config.access`).

    Raises ValueError whose text starts with the offending key (``access.functions."f".submit:
    ...``), for a config-file error message.
    """
    if not isinstance(table, dict):
        raise ValueError("access: expected a table ([access])")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("admins", "monitors"):
            out[key] = _patterns(f"access.{key}", value)
        elif key == "commands":
            if not isinstance(value, dict):
                raise ValueError('access.commands: expected a table, e.g. {"shutdown" = [...]}')
            commands = {}
            for name, patterns in value.items():
                command = " ".join(str(name).lower().split())
                if command not in ADMIN_COMMANDS:
                    raise ValueError(
                        f'access.commands."{name}": unknown admin command {name!r} '
                        f"(known: {', '.join(sorted(ADMIN_COMMANDS))})"
                    )
                commands[command] = _patterns(f'access.commands."{name}"', patterns)
            out["commands"] = commands
        elif key == "functions":
            if not isinstance(value, dict):
                raise ValueError('access.functions: expected tables, e.g. [access.functions."f"]')
            functions = {}
            for pattern, rule in value.items():
                where = f'access.functions."{pattern}"'
                if not pattern:
                    raise ValueError("access.functions: an empty function name")
                if not isinstance(rule, dict):
                    raise ValueError(f"{where}: expected a table of {', '.join(ACTIONS)}")
                entry = {}
                for action, patterns in rule.items():
                    if action not in ACTIONS:
                        raise ValueError(
                            f"{where}.{action}: unknown action {action!r} "
                            f"(known: {', '.join(ACTIONS)})"
                        )
                    entry[action] = _patterns(f"{where}.{action}", patterns)
                functions[pattern] = entry
            out["functions"] = functions
        else:
            raise ValueError(
                f"access.{key}: unknown key {key!r} (known: admins, monitors, commands, functions)"
            )
    return out


def _patterns(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of identities (names, globs, networks)")
    for v in value:
        if not v.strip():
            raise ValueError(f"{where}: an empty identity")
        if "/" in v and _network(v) is None:
            raise ValueError(f"{where}: {v!r} is not a network (ADDRESS/PREFIX)")
    return [v.strip() for v in value]
