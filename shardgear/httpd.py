"""The supervisor's HTTP listener: a threaded WSGI server (the standard library's ``wsgiref``) and a
`Router` of WSGI apps by path prefix, so that several apps can share one listener.

It runs in threads of the supervisor, never in a front or shard. Requests are not logged (a
scraper every second would fill the log); errors of an app are logged and answered with 500.

Sharing a port with the HTTP API: ``--metrics`` and ``--http`` may name the same ADDR:PORT. The
HTTP API runs in a process of its own (``http_server.py``: its foreground requests hold threads
for as long as their jobs run, which the supervisor must not do), so that process owns the
listener, and the supervisor serves this listener on 127.0.0.1 at a port the kernel picks
instead; it hands the address to the HTTP process in `METRICS_UPSTREAM_ENV`, whose ``/metrics``
forwards each request here (``http_api.MetricsProxy``). A scrape then costs one loopback
request more, and metrics stay where their data is (the supervisor knows the children's pids,
restarts and rings).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger("shardgear.httpd")

#: The environment variable that gives the HTTP process the supervisor's metrics listener
#: (``HOST:PORT``) when the two share one address.
METRICS_UPSTREAM_ENV = "SHARDGEAR_METRICS_UPSTREAM"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Router:
    """A WSGI app that hands each request to the app mounted at the longest matching prefix
    (``mount("/metrics", app)`` serves ``/metrics`` and ``/metrics/...``); 404 otherwise."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, WSGIApp]] = []

    def mount(self, prefix: str, app: WSGIApp) -> None:
        self.routes.append((prefix.rstrip("/"), app))
        self.routes.sort(key=lambda route: -len(route[0]))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        for prefix, app in self.routes:
            if path == prefix or path.startswith(prefix + "/") or (not prefix and path == "/"):
                return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        paths = "\n".join(prefix or "/" for prefix, _ in reversed(self.routes))
        return [f"not found; try:\n{paths}\n".encode()]


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("http request from %s failed", client_address, exc_info=True)


def parse_address(address: str) -> tuple[socket.AddressFamily, str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (family, host, port)."""
    host, _, port = address.rpartition(":")
    family = socket.AF_INET
    if host.startswith("["):
        host = host[1:-1]
        family = socket.AF_INET6
    elif ":" in host:
        family = socket.AF_INET6
    return family, host or "0.0.0.0", int(port)


class HttpServer:
    """A WSGI app served on `address` from a background thread. Binding happens in the
    constructor (OSError if the address is taken); `start` serves, `stop` closes at once."""

    def __init__(self, address: str, app: WSGIApp) -> None:
        family, host, port = parse_address(address)

        class Server(_Server):
            address_family = family

        self.server = Server((host, port), _Handler)
        self.server.set_app(app)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._serve, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def _serve(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self.server.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    if key.fileobj == self._wake_r:
                        return
                    self.server.handle_request()  # the socket is readable: does not block

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Stop accepting; requests being answered finish in their own (daemon) threads."""
        if self.thread.is_alive():
            os.write(self._wake_w, b"x")
            self.thread.join(2.0)
        self.server.server_close()
        os.close(self._wake_r)
        os.close(self._wake_w)
