"""The HTTP listener's application: gearmand's HTTP protocol, a JSON API and the dashboard (WSGI).

Theory of operation
-------------------
``--http ADDR:PORT`` starts one more child process, ``http`` (`shardgear.http_server`), that
serves this WSGI application with waitress. It is a client of its own server: every request
opens a loopback Gearman connection (`shardgear.gearlink`) to the fronts, so fronts and shards
know nothing of HTTP, and a crash of this process loses nothing but its open requests (the
supervisor restarts it).

Routes:

* ``/_shardgear/api/v1/...``: the JSON API (`API_PREFIX`; table in README, "HTTP API"):
  functions with their counts and throughput, workers, a job's status by handle or unique,
  retries, the dead set (list, show, replay, delete) and the schedules (list, create, remove).
  Mutating calls (POST, DELETE) are refused (403) when the request says it comes from another
  web origin (an ``Origin`` or ``Referer`` whose host is not the ``Host``): a browser page of
  another site cannot replay or delete, while curl and scripts, which send no Origin, can.
* ``/_shardgear/``: the dashboard, one static page (``dashboard.html``) over the JSON API.
* ``/metrics``: a mounted WSGI app, if one is given (`HttpApi.mount`).
* ``GET /``: a redirect to the dashboard (gearmand answers 404 there).
* everything else is gearmand's HTTP protocol: ``GET|POST|PUT /FUNCTION`` submits the body as
  the workload of FUNCTION (``X-Gearman-Unique``, default ``-``; ``X-Gearman-Background:
  true``; ``X-Gearman-Priority: high|low``) and answers 200 with ``X-Gearman-Job-Handle`` and
  ``X-Gearman-Command`` (``WORK_COMPLETE``, ``WORK_FAIL``... or ``JOB_CREATED`` for a background
  job, at once), the body being the WORK_COMPLETE data; the function is the request target as
  sent, query string and escapes included (as gearmand: ``/f?x=1`` names the function ``f?x=1``);
  HEAD with a function submits the job to run in the background and answers at once, with the
  handle only; TRACE (and HEAD without a function) echoes the body through ECHO_REQ; a
  request without a function is 404 and other methods 405. As with gearmand a job failure is still
  200, and a foreground request waits for its job with no time limit (it is abandoned, and the
  job detached, if the HTTP client leaves).

Where this differs from gearmand's plugin on purpose (README, "Where shardgear differs"): a
WORK_FAIL answer carries the whole job handle (gearmand 1.1.20 cuts its number off), an ERROR
from the server (a full queue, say) is 503 with the error text instead of a dropped connection,
and the reply is HTTP/1.1 to an HTTP/1.1 request (gearmand 2.0 behaviour, #391), whose
connection may stay open for the next request (gearmand closes it after every answer).
"""

from __future__ import annotations

import base64
import importlib.resources
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import orjson

from shardgear import __version__
from shardgear.gearlink import GearmanLink, LinkError
from shardgear.proto.admin import unescape
from shardgear.proto.packets import PacketType

log = logging.getLogger("shardgear.http")

P = PacketType
API_PREFIX: Final = "/_shardgear/api/v1"
DASHBOARD_PATH: Final = "/_shardgear/"
SERVER_HEADER: Final = f"Gearman/shardgear-{__version__}"
SAMPLE_INTERVAL: Final = 2.0
SAMPLES: Final = 60  # two minutes of throughput history per function
DEFAULT_LIMIT: Final = 100

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Headers = list[tuple[str, str]]

_SUBMIT: Final = {
    ("high", False): P.SUBMIT_JOB_HIGH,
    ("normal", False): P.SUBMIT_JOB,
    ("low", False): P.SUBMIT_JOB_LOW,
    ("high", True): P.SUBMIT_JOB_HIGH_BG,
    ("normal", True): P.SUBMIT_JOB_BG,
    ("low", True): P.SUBMIT_JOB_LOW_BG,
}
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


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, 'Unknown')}"


# ---------------------------------------------------------------------------- throughput


class Sampler:
    """Samples ``show functions`` every `SAMPLE_INTERVAL` seconds in a thread of its own and
    keeps each function's jobs-done rate (jobs per second) of the last `SAMPLES` intervals, for
    the dashboard's sparklines. `beat` is called each round (the process heartbeat)."""

    def __init__(self, address: tuple[str, int], beat: Callable[[], None] | None = None) -> None:
        self.address = address
        self.beat = beat
        self.rates: dict[str, deque[float]] = {}
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def history(self, name: str) -> list[float]:
        with self._lock:
            return list(self.rates.get(name, ()))

    def _run(self) -> None:
        link: GearmanLink | None = None
        while not self._stop.wait(SAMPLE_INTERVAL):
            if self.beat is not None:
                self.beat()
            try:
                if link is None:
                    link = GearmanLink(self.address)
                rows = link.admin(b"show functions", listing=True)
            except LinkError:
                if link is not None:
                    link.close()
                link = None
                continue
            self.record(time.monotonic(), rows)

    def record(self, now: float, rows: list[bytes]) -> None:
        """Add one sample: `rows` are ``show functions`` lines."""
        seen = set()
        with self._lock:
            for row in rows:
                cols = row.split(b"\t")
                if len(cols) != 8:
                    continue
                name, done = text(cols[0]), int(cols[7])
                seen.add(name)
                last = self._last.get(name)
                self._last[name] = (now, done)
                if last is None:
                    continue
                dt = now - last[0]
                rate = max(0, done - last[1]) / dt if dt > 0 else 0.0  # a shard restart: 0
                self.rates.setdefault(name, deque(maxlen=SAMPLES)).append(round(rate, 3))
            for name in list(self._last):
                if name not in seen:  # dropped function
                    del self._last[name]
                    self.rates.pop(name, None)


# ---------------------------------------------------------------------------- the application


class HttpApi:
    """The WSGI application (see the module docstring). `address` is the Gearman port to use."""

    def __init__(self, address: tuple[str, int], sampler: Sampler | None = None) -> None:
        self.address = address
        self.sampler = sampler
        self.mounts: list[tuple[str, WSGIApp]] = []
        self._dashboard: bytes | None = None

    def mount(self, prefix: str, app: WSGIApp) -> None:
        """Serve `prefix` and everything under it with another WSGI app (the metrics)."""
        self.mounts.append((prefix.rstrip("/"), app))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = _raw_path(environ)
        for prefix, app in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return app(environ, start_response)
        try:
            if path.startswith(API_PREFIX + "/") or path == API_PREFIX:
                return self._api(environ, start_response, path[len(API_PREFIX) :])
            if path in (DASHBOARD_PATH, DASHBOARD_PATH.rstrip("/")):
                return self._page(environ, start_response)
            return self._gearman_http(environ, start_response)
        except HttpError as exc:
            return _json(start_response, exc.status, {"error": exc.message})
        except Exception:
            log.exception("HTTP request %s %s failed", environ.get("REQUEST_METHOD"), path)
            error = {"error": "internal error (see the server log)"}
            return _json(start_response, 500, error, sys.exc_info())

    def link(self) -> GearmanLink:
        try:
            return GearmanLink(self.address)
        except LinkError as exc:
            raise HttpError(503, str(exc)) from exc

    # ------------------------------------------------------------------ gearmand's protocol

    def _gearman_http(
        self, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        func = _raw_target(environ).encode("latin-1")[1:]  # as sent, query too, like gearmand
        body = _body(environ)
        if method == "GET" and not func:  # gearmand: 404; a browser wants the dashboard
            start_response(_status(302), [("Location", DASHBOARD_PATH)])
            return [b""]
        if method == "TRACE" or (method == "HEAD" and not func):
            with self.link() as link:
                echoed = link.echo(body)
            return _gearman_reply(start_response, 200, None, None, echoed, method == "HEAD")
        if method == "HEAD":
            # gearmand answers a HEAD at JOB_CREATED, without X-Gearman-Command, and the job
            # runs with nobody waiting: a background job here
            with self.link() as link:
                try:
                    handle = link.submit(P.SUBMIT_JOB_BG, func, _unique(environ), body)
                except LinkError:
                    return _gearman_reply(start_response, 503, None, "ERROR", b"", True)
            return _gearman_reply(start_response, 200, handle, None, b"", True)
        if method not in ("GET", "POST", "PUT", "HEAD"):
            return _gearman_reply(start_response, 405, None, None, b"", False)
        if not func:
            return _gearman_reply(start_response, 404, None, None, b"", False)
        unique = _unique(environ)
        background = environ.get("HTTP_X_GEARMAN_BACKGROUND", "").lower() == "true"
        priority = environ.get("HTTP_X_GEARMAN_PRIORITY", "normal").lower()
        ptype = _SUBMIT.get((priority if priority in ("high", "low") else "normal", background))
        assert ptype is not None
        abandon = environ.get("waitress.client_disconnected")
        with self.link() as link:
            try:
                handle = link.submit(ptype, func, unique, body)
            except LinkError as exc:
                return _gearman_reply(start_response, 503, None, "ERROR", str(exc).encode(), False)
            if background:
                return _gearman_reply(start_response, 200, handle, "JOB_CREATED", b"", False)
            try:
                result = link.wait_result(handle, abandon)
            except LinkError as exc:
                log.info("HTTP request for job %r abandoned: %s", handle, exc)
                return _gearman_reply(start_response, 502, handle, None, b"", False)
        return _gearman_reply(
            start_response, 200, result.handle, result.command, result.data, False
        )

    # ------------------------------------------------------------------ the dashboard

    def _page(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._dashboard is None:
            self._dashboard = (
                importlib.resources.files("shardgear").joinpath("dashboard.html").read_bytes()
            )
        start_response(
            _status(200),
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(self._dashboard))),
                ("Cache-Control", "no-cache"),
                ("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline';"
                 " script-src 'self' 'unsafe-inline'; img-src 'self' data:"),
            ],
        )  # fmt: skip
        return [self._dashboard]

    # ------------------------------------------------------------------ the JSON API

    def _api(
        self, environ: dict[str, Any], start_response: StartResponse, route: str
    ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        parts = (
            [unquote_to_bytes(p) for p in route.strip("/").split("/")] if route.strip("/") else []
        )
        query = {
            k: v[-1]
            for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
        }
        if method in ("POST", "DELETE", "PUT"):
            _check_origin(environ)
        head = parts[0].decode("latin-1") if parts else ""
        if method == "GET":
            if head == "":
                return _json(start_response, 200, self.summary())
            if head == "functions" and len(parts) == 1:
                return _json(start_response, 200, {"functions": self.functions()})
            if head == "workers" and len(parts) == 1:
                return _json(start_response, 200, {"workers": self.workers()})
            if head == "jobs":
                return _json(start_response, 200, self.job(parts[1:], query))
            if head == "retries" and len(parts) == 1:
                return _json(start_response, 200, {"jobs": self.retries()})
            if head == "dead":
                return _json(start_response, 200, self.dead_get(parts[1:], query))
            if head == "schedules" and len(parts) == 1:
                return _json(start_response, 200, {"schedules": self.schedules()})
        elif head == "dead" and method in ("POST", "DELETE"):
            return _json(start_response, 200, self.dead_change(method, parts[1:], query))
        elif head == "schedules" and method == "POST" and len(parts) == 1:
            return _json(start_response, 201, self.schedule_add(_json_body(environ)))
        elif head == "schedules" and method == "DELETE":
            return _json(start_response, 200, self.schedule_remove(parts[1:], query))
        raise HttpError(404 if method in ("GET", "POST", "DELETE") else 405, "no such API call")

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
            if len(cols) != 8:
                continue
            name = text(cols[0])
            high, normal, low, waiting, running, workers, done = (int(c) for c in cols[1:])
            d, dropped = dead.pop(name, (0, 0))
            out.append(
                {
                    "name": name,
                    "queued": {"high": high, "normal": normal, "low": low},
                    "waiting": waiting,
                    "running": running,
                    "workers": workers,
                    "done": done,
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

    def schedule_add(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST schedules {"function", "unique", "expression": "M H DOM MON DOW", "data"}."""
        func = body.get("function")
        expr = body.get("expression")
        if not isinstance(func, str) or not func or not isinstance(expr, str):
            raise HttpError(400, "give function and expression (five crontab fields)")
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


def _unique(environ: dict[str, Any]) -> bytes:
    return str(environ.get("HTTP_X_GEARMAN_UNIQUE", "-")).encode("latin-1")


def _raw_target(environ: dict[str, Any]) -> str:
    """The request target as sent (``/path?query``, escapes kept); origin form even if the
    client sent the absolute form."""
    raw = str(environ.get("REQUEST_URI") or environ.get("RAW_URI") or "")
    if not raw:
        query = environ.get("QUERY_STRING")
        return str(environ.get("PATH_INFO") or "/") + (f"?{query}" if query else "")
    if not raw.startswith("/"):
        parts = urlsplit(raw)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return raw


def _raw_path(environ: dict[str, Any]) -> str:
    """The request's path as sent (percent escapes kept), without the query string."""
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if not raw:
        return str(environ.get("PATH_INFO") or "/")
    return urlsplit(raw).path or "/"


def _body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length <= 0:
        return b""
    data: bytes = environ["wsgi.input"].read(length)
    return data


def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
    raw = _body(environ)
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
    if not raw.isdigit():
        raise HttpError(404, "dead job ids are numbers")
    return int(raw)


def _check_origin(environ: dict[str, Any]) -> None:
    """Refuse a mutating call that a browser sends from a page of another origin (CSRF)."""
    origin = environ.get("HTTP_ORIGIN") or environ.get("HTTP_REFERER")
    if not origin:
        return
    host = environ.get("HTTP_HOST", "")
    if origin == "null" or urlsplit(origin).netloc != host:
        raise HttpError(403, "cross-origin requests may not change anything")


def _json(
    start_response: StartResponse, status: int, value: Any, exc_info: Any = None
) -> list[bytes]:
    body = orjson.dumps(value)
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if exc_info is not None:
        start_response(_status(status), headers, exc_info)
    else:
        start_response(_status(status), headers)
    return [body]


def _gearman_reply(
    start_response: StartResponse,
    status: int,
    handle: bytes | None,
    command: str | None,
    body: bytes,
    head: bool,
) -> list[bytes]:
    """An answer in the shape of gearmand's HTTP plugin."""
    headers: Headers = []
    if handle is not None:
        headers.append(("X-Gearman-Job-Handle", handle.decode("latin-1")))
    if command is not None:
        headers.append(("X-Gearman-Command", command))
    headers.append(("Content-Length", str(len(body))))
    start_response(_status(status), headers)
    return [b""] if head else [body]
