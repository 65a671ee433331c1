"""The HTTP listener's application: gearmand's HTTP protocol, a JSON API and the dashboard (WSGI).

Theory of operation
-------------------
``--http ADDR:PORT`` starts one more child process, ``http`` (`shardgear.http_server`), that
serves this WSGI application with waitress. It is a client of its own server: every request
opens a loopback Gearman connection (`shardgear.gearlink`) to the fronts, so fronts and shards
know nothing of HTTP, and a crash of this process loses nothing but its open requests (the
supervisor restarts it).

Routes:

* ``/_shardgear/api/v1/...``: the JSON API (`shardgear.http_json`; README, "HTTP API"):
  functions with their counts and throughput, workers, a job's status by handle or unique,
  retries, the dead set (list, show, replay, delete) and the schedules (list, create, remove).
  Mutating calls (POST, DELETE) are refused (403) when the request says it comes from another
  web origin (an ``Origin`` or ``Referer`` whose host is not the ``Host``): a browser page of
  another site cannot replay or delete, while curl and scripts, which send no Origin, can.
* ``/_shardgear/``: the dashboard, one static page (``dashboard.html``) over the JSON API.
* ``/metrics``: when ``--metrics`` names the same ADDR:PORT as ``--http``, the Prometheus
  metrics, forwarded to the supervisor's listener on loopback (`MetricsProxy`, mounted with
  `HttpApi.mount`); a function named ``metrics`` cannot be submitted over HTTP then.
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

import http.client
import importlib.resources
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final
from urllib.parse import urlsplit

from shardgear import __version__
from shardgear.access import SUBMIT, AccessPolicy
from shardgear.gearlink import GearmanLink, LinkError
from shardgear.http_json import (
    API_PREFIX,
    HttpError,
    JsonApi,
    client_identity,
    json_reply,
    read_body,
    status_line,
)
from shardgear.proto.packets import PacketType

log = logging.getLogger("shardgear.http")

P = PacketType
DASHBOARD_PATH: Final = "/_shardgear/"
SERVER_HEADER: Final = f"Gearman/shardgear-{__version__}"
SAMPLE_INTERVAL: Final = 2.0
BEAT_INTERVAL: Final = 1.0  # the heartbeat, well inside the supervisor's 3 s healthy window
SAMPLES: Final = 60  # two minutes of throughput history per function

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
# ---------------------------------------------------------------------------- throughput


class Sampler:
    """Keeps each function's results per second (jobs whose worker sent WORK_COMPLETE, WORK_FAIL
    or WORK_EXCEPTION) over the last `SAMPLES` intervals of `SAMPLE_INTERVAL` seconds, for the
    dashboard's sparklines.

    `totals` returns {function: results so far}: the shards' per-function counters of the
    stats segment (``stats.FunctionStats``, `http_server.result_totals`), the ones the Prometheus
    metrics show as ``shardgear_jobs_{completed,failed,exception}_total``. A thread of its own
    reads them, and calls `beat` every `BEAT_INTERVAL` (the process's heartbeat and reloads).
    """

    def __init__(
        self,
        totals: Callable[[], dict[str, int]],
        beat: Callable[[], None] | None = None,
    ) -> None:
        self.totals = totals
        self.beat = beat
        self.rates: dict[str, deque[float]] = {}
        self._last: dict[str, tuple[float, int]] = {}
        self._sampled_at: float | None = None  # the time of the last sample
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        """Take the first sample now (before the process reports READY, so that every result
        after that shows in the throughput), then sample in a thread."""
        self._sample(time.monotonic())
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def history(self, name: str) -> list[float]:
        with self._lock:
            return list(self.rates.get(name, ()))

    def done(self, name: str) -> int:
        """Results of `name` at the last sample (since its shard started; 0 if unknown)."""
        with self._lock:
            last = self._last.get(name)
        return last[1] if last is not None else 0

    def _run(self) -> None:
        next_sample = 0.0
        while not self._stop.wait(BEAT_INTERVAL):
            if self.beat is not None:
                self.beat()
            now = time.monotonic()
            if now < next_sample:
                continue
            next_sample = now + SAMPLE_INTERVAL
            self._sample(now)

    def _sample(self, now: float) -> None:
        try:
            totals = self.totals()
        except Exception:  # the heartbeat stops with the thread: never let it end
            log.exception("reading the function counters failed")
            return
        self.record(now, totals)

    def record(self, now: float, totals: dict[str, int]) -> None:
        """Add one sample: `totals` maps each function to its results so far. A function first
        seen now had none at the previous sample (its results since then count); at the first
        sample every function only gets its baseline."""
        with self._lock:
            before, self._sampled_at = self._sampled_at, now
            for name, done in totals.items():
                last = self._last.get(name)
                self._last[name] = (now, done)
                if last is None:
                    if before is None:
                        continue
                    last = (before, 0)
                dt = now - last[0]
                rate = max(0, done - last[1]) / dt if dt > 0 else 0.0  # a shard restart: 0
                self.rates.setdefault(name, deque(maxlen=SAMPLES)).append(round(rate, 3))
            for name in list(self._last):
                if name not in totals:  # a dropped function
                    del self._last[name]
                    self.rates.pop(name, None)


class MetricsProxy:
    """A WSGI app that forwards a request to the supervisor's metrics listener `upstream`
    (``HOST:PORT``, loopback): how ``--metrics`` and ``--http`` share one listener (httpd.py,
    `httpd.METRICS_UPSTREAM_ENV`). The Accept and Accept-Encoding headers go along, so that
    Prometheus still negotiates its format and compression; the answer comes back as it is."""

    def __init__(self, upstream: str, timeout: float = 30.0) -> None:
        host, _, port = upstream.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response(status_line(405), [("Content-Length", "0")])
            return [b""]
        target = _raw_target(environ)
        forwarded = (("Accept", "HTTP_ACCEPT"), ("Accept-Encoding", "HTTP_ACCEPT_ENCODING"))
        headers = {name: str(environ[key]) for name, key in forwarded if environ.get(key)}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(environ.get("REQUEST_METHOD", "GET"), target, headers=headers)
            reply = conn.getresponse()
            body = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            log.warning("metrics: the supervisor's %s:%d failed: %s", self.host, self.port, exc)
            start_response(status_line(502), [("Content-Type", "text/plain; charset=utf-8")])
            return [f"metrics unavailable: {exc}\n".encode()]
        finally:
            conn.close()
        kept = [
            (name, value)
            for name, value in reply.getheaders()
            if name.lower() in ("content-type", "content-encoding", "content-length", "vary")
        ]
        start_response(f"{reply.status} {reply.reason}", kept)
        return [body]


# ---------------------------------------------------------------------------- the application


class HttpApi:
    """The WSGI application (see the module docstring). `address` is the Gearman port to use."""

    def __init__(
        self,
        address: tuple[str, int],
        sampler: Sampler | None = None,
        policy: AccessPolicy | None = None,
    ) -> None:
        self.address = address
        self.sampler = sampler
        self.api = JsonApi(address, sampler, policy)
        self.mounts: list[tuple[str, WSGIApp]] = []
        self._dashboard: bytes | None = None

    @property
    def policy(self) -> AccessPolicy:
        """The access rules applied to HTTP clients (``[access]``; replaced on a reload)."""
        return self.api.policy

    @policy.setter
    def policy(self, policy: AccessPolicy) -> None:
        self.api.policy = policy

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
                return self.api(environ, start_response, path[len(API_PREFIX) :])
            if path in (DASHBOARD_PATH, DASHBOARD_PATH.rstrip("/")):
                return self._page(environ, start_response)
            return self._gearman_http(environ, start_response)
        except HttpError as exc:
            return json_reply(start_response, exc.status, {"error": exc.message})
        except Exception:
            log.exception("HTTP request %s %s failed", environ.get("REQUEST_METHOD"), path)
            error = {"error": "internal error (see the server log)"}
            return json_reply(start_response, 500, error, sys.exc_info())

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
        body = read_body(environ)
        if method == "GET" and not func:  # gearmand: 404; a browser wants the dashboard
            start_response(status_line(302), [("Location", DASHBOARD_PATH)])
            return [b""]
        if method == "TRACE" or (method == "HEAD" and not func):
            with self.link() as link:
                echoed = link.echo(body)
            return _gearman_reply(start_response, 200, None, None, echoed, method == "HEAD")
        if method == "HEAD":
            self._check_submit(environ, func)
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
        self._check_submit(environ, func)
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

    def _check_submit(self, environ: dict[str, Any], func: bytes) -> None:
        """The function's ``submit`` rule, for the HTTP client's address (403 if denied): the
        process submits over loopback, so the fronts cannot tell who asked."""
        ident = client_identity(environ)
        if not self.api.policy.allows(ident, SUBMIT, func):
            name = func.decode("utf-8", "replace")
            raise HttpError(403, f"{ident} may not submit jobs of function {name}")

    # ------------------------------------------------------------------ the dashboard

    def _page(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._dashboard is None:
            self._dashboard = (
                importlib.resources.files("shardgear").joinpath("dashboard.html").read_bytes()
            )
        start_response(
            status_line(200),
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
    start_response(status_line(status), headers)
    return [b""] if head else [body]
