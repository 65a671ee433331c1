"""Helpers for the HTTP tests: a server with ``--http``, gear workers in threads, curl."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import gear

from tests.conftest import free_port
from tests.gearclient import wait_for

Handler = Callable[[Any], None]


def wait_http(address: str, timeout: float = 20.0) -> None:
    """Until `address` (host:port) accepts TCP connections."""
    host, _, port = address.rpartition(":")

    def up() -> bool:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except OSError:
            return False

    wait_for(up, timeout=timeout, pause=0.1, what=f"the HTTP listener on {address}")


def start_http_server(
    start_server: Callable[..., Any], *args: str, **options: Any
) -> tuple[Any, str]:
    """A shardgear server with its HTTP listener; returns (server, "127.0.0.1:PORT")."""
    http = f"127.0.0.1:{free_port()}"
    srv = start_server("--http", http, *args, **options)
    wait_http(http)
    return srv, http


class Workers:
    """gear workers in threads, one per function, answering with a handler(job)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.workers: list[gear.Worker] = []
        self.threads: list[threading.Thread] = []
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, func: str, handler: Handler) -> None:
        host, _, port = self.address.rpartition(":")
        w = gear.Worker(f"w-{func}")
        w.addServer(host, int(port))
        w.waitForServer()
        w.registerFunction(func)
        self.workers.append(w)

        def loop() -> None:
            while True:
                try:
                    job = w.getJob()
                except (gear.InterruptedError, Exception):
                    return
                with self.lock:
                    self.calls[func] = self.calls.get(func, 0) + 1
                try:
                    handler(job)
                except Exception:
                    try:
                        job.sendWorkFail()
                    except Exception:
                        pass  # its connection is gone (the worker was shut down)
                    return

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self.threads.append(t)

    def stop(self) -> None:
        for w in self.workers:
            w.shutdown()
        for t in self.threads:
            t.join(5)


def curl(*args: str, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """Run curl -si ARGS; return (status, headers by lower-case name, body)."""
    out = subprocess.run(
        ["curl", "-si", "--max-time", str(int(timeout)), *args],
        capture_output=True,
        timeout=timeout + 5,
        check=False,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines or not lines[0].startswith(b"HTTP/"):
        return 0, {}, out
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.decode().strip().lower()] = value.decode().strip()
    return status, headers, body


def api(
    http: str,
    path: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Call the JSON API; return (status, decoded JSON)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://{http}/_shardgear/api/v1{path}", data=data, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Gearmand:
    """gearmand with its HTTP protocol plugin, if this gearmand has it (``--http-port``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the process)

    @staticmethod
    def has_http() -> bool:
        exe = shutil.which("gearmand") or "/usr/sbin/gearmand"
        try:
            out = subprocess.run([exe, "--help"], capture_output=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return b"--http-port" in out

    def start(self) -> Gearmand:
        exe = shutil.which("gearmand") or "/usr/sbin/gearmand"
        self.proc = subprocess.Popen(
            [exe, "--listen", "127.0.0.1", "--port", str(self.port), "-r", "http",
             "--http-port", str(self.http_port), "--log-file", "stderr", "--verbose", "ERROR",
             "--threads", "2"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        wait_http(f"127.0.0.1:{self.port}")
        wait_http(f"127.0.0.1:{self.http_port}")
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def settle(seconds: float = 0.2) -> None:
    time.sleep(seconds)
