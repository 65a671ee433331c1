"""The JSON API of the HTTP process (``/_shardgear/api/v1``), over the server's admin commands.

`shardgear.http_api` routes requests under `API_PREFIX` here. Each call opens a loopback
connection to the server (`shardgear.gearlink`) and runs admin text commands (``show functions``,
``show dead jobs``, ``replay dead job``...) or binary requests (GET_STATUS, SUBMIT_JOB_SCHED), and
turns the answers into JSON. The calls are listed in README, "HTTP API and dashboard".

Names, uniques and payloads are bytes on the server; the JSON carries them as UTF-8 text (invalid
bytes as U+FFFD), and a dead job's payload also as base64. A call that changes something (POST,
DELETE) is refused with 403 when a browser sends it from a page of another web origin
(`check_origin`), so that no other site's page can replay or delete.

Access rules (``access.py``, the config file's ``[access]`` table): the process reaches the
server over loopback, which the admin rule lets through by default, so it applies the rules to
its own clients itself, by their address (`JsonApi.policy`, replaced on a reload): a call that
changes something follows ``admins`` (``replay dead``, ``delete dead``, ``remove schedule``; a
new schedule is a submission of its function), one that reads follows ``monitors`` under the
name of the admin command it runs, and a denied call gets 403.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import orjson

from shardgear import __version__
from shardgear.access import SUBMIT, AccessPolicy, Identity
from shardgear.gearlink import GearmanLink, LinkError
from shardgear.proto.admin import unescape

API_PREFIX: Final = "/_shardgear/api/v1"
DEFAULT_LIMIT: Final = 100

StartResponse = Callable[..., Any]


class History(Protocol):
    """Where a function's throughput comes from (`http_api.Sampler`)."""

    def history(self, name: str) -> list[float]:
        """Results per second of the last samples, oldest first."""
        ...

    def done(self, name: str) -> int:
        """Results so far (WORK_COMPLETE, WORK_FAIL, WORK_EXCEPTION; 0 if unknown)."""
        ...


_REASONS: Final = {
    200: "OK",
    201: "Created",
    302: "Found",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class HttpError(Exception):
    """Answer the request with `status` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def text(raw: bytes) -> str:
    """Bytes from the server (names, uniques, payloads) as JSON text: UTF-8, invalid bytes as
    U+FFFD (the base64 fields carry payloads exactly)."""
    return raw.decode("utf-8", errors="replace")


def status_line(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Unknown')}"


class JsonApi:
    """The API calls, each over a fresh loopback connection to `address`."""

    def __init__(
        self,
        address: tuple[str, int],
        sampler: History | None = None,
        policy: AccessPolicy | None = None,
    ) -> None:
        self.address = address
        self.sampler = sampler
        self.policy = policy if policy is not None else AccessPolicy()

    def link(self) -> GearmanLink:
        try:
            return GearmanLink(self.address)
        except LinkError as exc:
            raise HttpError(503, str(exc)) from exc

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse, route: str
    ) -> Iterable[bytes]:
        """Answer the API call `route` (the path after `API_PREFIX`, escapes kept)."""
        method = environ.get("REQUEST_METHOD", "GET")
        parts = (
            [unquote_to_bytes(p) for p in route.strip("/").split("/")] if route.strip("/") else []
        )
        query = {
            k: v[-1]
            for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
        }
        if method in ("POST", "DELETE", "PUT"):
            check_origin(environ)
        head = parts[0].decode("latin-1") if parts else ""
        self.check_access(environ, method, head, parts, query)
        if method == "GET":
            if head == "":
                return json_reply(start_response, 200, self.summary())
            if head == "functions" and len(parts) == 1:
                return json_reply(start_response, 200, {"functions": self.functions()})
            if head == "workers" and len(parts) == 1:
                return json_reply(start_response, 200, {"workers": self.workers()})
            if head == "jobs":
                return json_reply(start_response, 200, self.job(parts[1:], query))
            if head == "retries" and len(parts) == 1:
                return json_reply(start_response, 200, {"jobs": self.retries()})
            if head == "dead":
                return json_reply(start_response, 200, self.dead_get(parts[1:], query))
            if head == "schedules" and len(parts) == 1:
                return json_reply(start_response, 200, {"schedules": self.schedules()})
        elif head == "dead" and method in ("POST", "DELETE"):
            return json_reply(start_response, 200, self.dead_change(method, parts[1:], query))
        elif head == "schedules" and method == "POST" and len(parts) == 1:
            added = self.schedule_add(_json_body(environ), client_identity(environ))
            return json_reply(start_response, 201, added)
        elif head == "schedules" and method == "DELETE":
            return json_reply(start_response, 200, self.schedule_remove(parts[1:], query))
        raise HttpError(404 if method in ("GET", "POST", "DELETE") else 405, "no such API call")

    def check_access(
        self,
        environ: dict[str, Any],
        method: str,
        head: str,
        parts: list[bytes],
        query: dict[str, str],
    ) -> None:
        """Refuse (403) a call that the access rules do not give the client's address."""
        if head == "schedules" and method == "POST":  # a submission: `schedule_add` checks
            return
        ident = client_identity(environ)
        command = _COMMANDS.get((method == "GET", head))
        if command is None and method != "GET" and parts:
            command = "delete dead" if parts[-1] != b"replay" else "replay dead"
        if command is not None and not self.policy.admin_allows(ident, command):
            rule = self.policy.admin_rule(command)
            raise HttpError(403, f"{ident} may not run {command!r} (allowed: {rule})")

    def admin(self, line: bytes, listing: bool = True) -> list[bytes]:
        with self.link() as link:
            try:
                return link.admin(line, listing=listing)
            except LinkError as exc:
                raise HttpError(502, str(exc)) from exc

    def summary(self) -> dict[str, Any]:
        return {
            "server": "shardgear",
            "version": __version__,
            "api": API_PREFIX,
            "time": time.time(),
        }

    def functions(self) -> list[dict[str, Any]]:
        dead = {}
        for row in self.admin(b"show dead functions"):
            cols = row.split(b"\t")
            if len(cols) == 3:
                dead[text(cols[0])] = (int(cols[1]), int(cols[2]))
        out = []
        for row in self.admin(b"show functions"):
            cols = row.split(b"\t")
            if len(cols) != 7:
                continue
            name = text(cols[0])
            high, normal, low, waiting, running, workers = (int(c) for c in cols[1:])
            d, dropped = dead.pop(name, (0, 0))
            out.append(
                {
                    "name": name,
                    "queued": {"high": high, "normal": normal, "low": low},
                    "waiting": waiting,
                    "running": running,
                    "workers": workers,
                    "done": self.sampler.done(name) if self.sampler else 0,
                    "dead": d,
                    "dead_dropped": dropped,
                    "throughput": self.sampler.history(name) if self.sampler else [],
                }
            )
        for name, (d, dropped) in sorted(dead.items()):  # dead jobs of a function not known now
            out.append(
                {
                    "name": name,
                    "queued": {"high": 0, "normal": 0, "low": 0},
                    "waiting": 0,
                    "running": 0,
                    "workers": 0,
                    "done": 0,
                    "dead": d,
                    "dead_dropped": dropped,
                    "throughput": [],
                }
            )
        return out

    def workers(self) -> list[dict[str, Any]]:
        out = []
        for row in self.admin(b"workers"):
            head, _, funcs = row.partition(b" :")
            fields = head.split(b" ")
            if len(fields) < 3:
                continue
            out.append(
                {
                    "fd": int(fields[0]),
                    "ip": text(fields[1]),
                    "client_id": text(b" ".join(fields[2:])),
                    "functions": [text(f) for f in funcs.split(b" ") if f],
                }
            )
        return out

    def job(self, parts: list[bytes], query: dict[str, str]) -> dict[str, Any]:
        # What the front would refuse by closing the link (gearmand's limits: a handle under 64
        # bytes, a unique of at most 64) or could not frame (a NUL ends a packet's field) is the
        # HTTP client's mistake: 400, not the 502 of a lost link.
        if len(parts) == 1 and (len(parts[0]) >= 64 or b"\0" in parts[0]):
            raise HttpError(400, "a job handle is under 64 bytes, without NUL")
        if not parts and "unique" in query:
            raw = query["unique"].encode("utf-8", errors="surrogateescape")
            if len(raw) > 64 or b"\0" in raw:
                raise HttpError(400, "a unique is at most 64 bytes, without NUL")
        with self.link() as link:
            try:
                if len(parts) == 1:
                    known, running, num, den = link.status(parts[0])
                    return {
                        "handle": text(parts[0]),
                        "known": known,
                        "running": running,
                        "numerator": num,
                        "denominator": den,
                    }
                if not parts and "unique" in query:
                    unique = query["unique"].encode("utf-8", errors="surrogateescape")
                    known, running, num, den, clients = link.status_unique(unique)
                    return {
                        "unique": query["unique"],
                        "known": known,
                        "running": running,
                        "numerator": num,
                        "denominator": den,
                        "clients": clients,
                    }
            except LinkError as exc:
                raise HttpError(502, str(exc)) from exc
        raise HttpError(400, "ask for jobs/HANDLE or jobs?unique=UNIQUE")

    def retries(self) -> list[dict[str, Any]]:
        out = []
        for row in self.admin(b"show retries"):
            cols = row.split(b"\t")
            if len(cols) != 9:
                continue
            out.append(
                {
                    "handle": text(cols[0]),
                    "function": text(cols[1]),
                    "unique": text(cols[2]),
                    "failures": int(cols[3]),
                    "state": text(cols[4]),
                    "next_attempt": int(cols[5]),
                    "last_failed": int(cols[6]),
                    "reason": text(cols[7]),
                    "error": text(unescape(cols[8])),
                }
            )
        return out

    def dead_get(self, parts: list[bytes], query: dict[str, str]) -> dict[str, Any]:
        if len(parts) == 1 and parts[0] == b"functions":
            rows = []
            for row in self.admin(b"show dead functions"):
                cols = row.split(b"\t")
                if len(cols) == 3:
                    rows.append(
                        {"function": text(cols[0]), "dead": int(cols[1]), "dropped": int(cols[2])}
                    )
            return {"functions": rows}
        if len(parts) == 1:
            rid = _dead_id(parts[0])
            fields: dict[str, bytes] = {}
            try:
                lines = self.admin(b"show dead job %d" % rid)
            except HttpError as exc:
                if "UNKNOWN_JOB" in exc.message:
                    raise HttpError(404, f"no dead job {rid}") from exc
                raise
            for line in lines:
                name, _, value = line.partition(b"\t")
                fields[name.decode("latin-1")] = unescape(value)
            data = fields.get("data", b"")
            return {
                "id": rid,
                "function": text(fields.get("function", b"")),
                "unique": text(fields.get("unique", b"")),
                "priority": text(fields.get("priority", b"")),
                "attempts": int(fields.get("attempts", b"0")),
                "first_failed": int(fields.get("first_failed", b"0")),
                "last_failed": int(fields.get("last_failed", b"0")),
                "reason": text(fields.get("reason", b"")),
                "error": text(fields.get("error", b"")),
                "handle": text(fields.get("handle", b"")),
                "size": len(data),
                "data": text(data),
                "data_base64": base64.b64encode(data).decode(),
            }
        if parts:
            raise HttpError(404, "no such API call")
        func = query.get("function", "")
        if any(c in func for c in " \t\r\n"):
            raise HttpError(400, "a function name with spaces cannot be asked for here")
        limit = _int(query.get("limit", str(DEFAULT_LIMIT)), "limit")
        line = b"show dead jobs %s %d" % (func.encode() if func else b"*", limit)
        jobs = []
        for row in self.admin(line):
            cols = row.split(b"\t")
            if len(cols) != 9:
                continue
            jobs.append(
                {
                    "id": int(cols[0]),
                    "function": text(cols[1]),
                    "unique": text(cols[2]),
                    "attempts": int(cols[3]),
                    "first_failed": int(cols[4]),
                    "last_failed": int(cols[5]),
                    "reason": text(cols[6]),
                    "size": int(cols[7]),
                    "error": text(unescape(cols[8])),
                }
            )
        return {"jobs": jobs}

    def dead_change(self, method: str, parts: list[bytes], query: dict[str, str]) -> dict[str, Any]:
        """POST dead/ID/replay, DELETE dead/ID; POST dead/replay and POST dead/delete with
        ``function=F`` or ``all=1``."""
        if method == "DELETE" and len(parts) == 1:
            verb, target = b"delete", b"job %d" % _dead_id(parts[0])
        elif method == "POST" and len(parts) == 2 and parts[1] in (b"replay", b"delete"):
            verb, target = parts[1], b"job %d" % _dead_id(parts[0])
        elif method == "POST" and len(parts) == 1 and parts[0] in (b"replay", b"delete"):
            verb = parts[0]
            func = query.get("function", "")
            if func:
                if any(c in func for c in " \t\r\n"):
                    raise HttpError(400, "a function name with spaces cannot be named here")
                target = b"function " + func.encode()
            elif query.get("all") in ("1", "true", "yes"):
                target = b"all"
            else:
                raise HttpError(400, "say function=NAME or all=1")
        else:
            raise HttpError(404, "no such API call")
        try:
            [reply] = self.admin(b"%s dead %s" % (verb, target), listing=False)
        except HttpError as exc:
            if "UNKNOWN_JOB" in exc.message:
                raise HttpError(404, "no such dead job") from exc
            raise
        counts = [int(x) for x in reply.split(b" ")[1:]]
        if verb == b"replay":
            return {"replayed": counts[0], "refused": counts[1] if len(counts) > 1 else 0}
        return {"deleted": counts[0]}

    def schedules(self) -> list[dict[str, Any]]:
        out = []
        for row in self.admin(b"show schedules"):
            cols = row.split(b"\t")
            if len(cols) != 6:
                continue
            out.append(
                {
                    "function": text(cols[0]),
                    "unique": text(cols[1]),
                    "expression": text(cols[2]),
                    "next_run": int(cols[3]),
                    "last_run": int(cols[4]),
                    "handle": text(cols[5]),
                }
            )
        return out

    def schedule_add(self, body: dict[str, Any], ident: Identity | None = None) -> dict[str, Any]:
        """POST schedules {"function", "unique", "expression": "M H DOM MON DOW", "data"}, for
        `ident` (SUBMIT_JOB_SCHED is a submission: the function's ``submit`` rule)."""
        func = body.get("function")
        expr = body.get("expression")
        if not isinstance(func, str) or not func or not isinstance(expr, str):
            raise HttpError(400, "give function and expression (five crontab fields)")
        if ident is not None and not self.policy.allows(ident, SUBMIT, func.encode()):
            raise HttpError(403, f"{ident} may not submit jobs of function {func}")
        fields = expr.split()
        if len(fields) != 5:
            raise HttpError(400, "expression must have five crontab fields")
        unique = str(body.get("unique", ""))
        data = body.get("data", "")
        payload = data.encode() if isinstance(data, str) else b""
        with self.link() as link:
            try:
                handle = link.schedule(
                    func.encode(), unique.encode(), [f.encode() for f in fields], payload
                )
            except LinkError as exc:
                raise HttpError(400, str(exc)) from exc
        return {"handle": text(handle), "function": func, "unique": unique, "expression": expr}

    def schedule_remove(self, parts: list[bytes], query: dict[str, str]) -> dict[str, Any]:
        """DELETE schedules?function=F&unique=U."""
        func = query.get("function", "")
        unique = query.get("unique", "")
        if parts or not func or any(c in func + unique for c in " \t\r\n"):
            raise HttpError(400, "give function (and unique), without spaces")
        line = b"remove schedule " + func.encode() + (b" " + unique.encode() if unique else b"")
        try:
            self.admin(line, listing=False)
        except HttpError as exc:
            if "UNKNOWN_SCHEDULE" in exc.message:
                raise HttpError(404, "no such schedule") from exc
            raise
        return {"removed": True}


# ---------------------------------------------------------------------------- helpers


def read_body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length <= 0:
        return b""
    data: bytes = environ["wsgi.input"].read(length)
    return data


def json_reply(
    start_response: StartResponse, status: int, value: Any, exc_info: Any = None
) -> list[bytes]:
    body = orjson.dumps(value)
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if exc_info is not None:
        start_response(status_line(status), headers, exc_info)
    else:
        start_response(status_line(status), headers)
    return [body]


def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
    raw = read_body(environ)
    try:
        value = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise HttpError(400, "the body must be a JSON object")
    return value


def _int(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise HttpError(400, f"{name} must be a number") from None
    if n < 0:
        raise HttpError(400, f"{name} must be 0 or more")
    return n


def _dead_id(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 18:  # the ids are SQLite rowids: under 2**63
        raise HttpError(404, "dead job ids are numbers")
    return int(raw)


#: (a read, the call's first path segment) -> the admin command whose access rule it follows
_COMMANDS: Final = {
    (True, ""): "status",
    (True, "functions"): "show functions",
    (True, "workers"): "workers",
    (True, "jobs"): "status",
    (True, "retries"): "show retries",
    (True, "dead"): "show dead jobs",
    (True, "schedules"): "show schedules",
    (False, "schedules"): "remove schedule",
}


def client_identity(environ: dict[str, Any]) -> Identity:
    """The HTTP client as the access rules know it: its address (no certificate names)."""
    return Identity(str(environ.get("REMOTE_ADDR") or "-"))


def check_origin(environ: dict[str, Any]) -> None:
    """Refuse a mutating call that a browser sends from a page of another origin (CSRF)."""
    origin = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
    if not origin:
        return
    host = environ.get("HTTP_HOST", "")
    if origin == "null" or urlsplit(origin).netloc != host:
        raise HttpError(403, "cross-origin requests may not change anything")
