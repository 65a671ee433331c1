"""Servers to measure: parse a spec, start it on a free loopback port, wait for it, stop it.

Specs:
* ``gearmand`` or ``gearmand:T``: start gearmand (``--threads T``, default 2);
* ``shardgear`` or ``shardgear:FxS``: start ``python -m shardgear`` (default flags, or F fronts and
  S shards); ``+tls`` after either (``shardgear:2x2+tls``): the load goes over mutual TLS to a TLS
  port of its own, with throw-away certificates (`bench.tlsfiles`);
* ``host:port`` or ``host:port@PID,PID``: a server that is already running (give its pids to get its
  CPU and memory; a pid stands for the process and all its descendants).

Started servers are stopped by pid: SIGTERM, then SIGKILL after a grace period, and any descendant
still alive (seen before the SIGTERM) gets SIGKILL too.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench import procstats, tlsfiles
from bench.config import parse_target
from bench.tlsfiles import TLSFiles

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GEARMAND = "/usr/sbin/gearmand"
READY_TIMEOUT = 20.0
STOP_GRACE = 10.0


@dataclass(frozen=True)
class ServerSpec:
    kind: str  # "gearmand" | "shardgear" | "external"
    label: str
    threads: int = 2
    fronts: int | None = None
    shards: int | None = None
    host: str = "127.0.0.1"
    port: int = 0
    pids: tuple[int, ...] = ()
    tls: bool = False


def parse_spec(text: str) -> ServerSpec:
    if text.startswith("shardgear") and text.endswith("+tls"):
        plain = parse_spec(text[: -len("+tls")])
        return dataclasses.replace(plain, label=plain.label + "+tls", tls=True)
    name, _, arg = text.partition(":")
    if name == "gearmand":
        threads = int(arg) if arg else 2
        return ServerSpec("gearmand", "gearmand" if not arg else f"gearmand-t{threads}", threads)
    if name == "shardgear":
        if not arg:
            return ServerSpec("shardgear", "shardgear")
        fronts, sep, shards = arg.lower().partition("x")
        if not sep:
            raise ValueError(f"shardgear spec must be shardgear:FxS, got {text!r}")
        f, s = int(fronts), int(shards)
        return ServerSpec("shardgear", f"shardgear-{f}x{s}", fronts=f, shards=s)
    target, _, pids = text.partition("@")
    host, port = parse_target(target)
    pid_list = tuple(int(p) for p in pids.split(",") if p) if pids else ()
    return ServerSpec("external", f"{host}:{port}", host=host, port=port, pids=pid_list)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready(host: str, port: int) -> bool:
    """True if the server accepts a connection and answers the admin ``version`` command."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"version\n")
            data = b""
            while not data.endswith(b"\n") and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return True
    except OSError:
        return False


@dataclass
class Server:
    """A server being measured; `proc` is set only if we started it."""

    spec: ServerSpec
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    given_pids: tuple[int, ...] = field(default_factory=tuple)
    tls_port: int = 0  # the port the load goes to when the spec asks for TLS
    tls: TLSFiles | None = None

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def target(self) -> tuple[str, int]:
        return self.host, self.tls_port or self.port

    def client_tls(self) -> dict[str, str]:
        """The Load fields of a client of this server (empty: plain text)."""
        if self.tls is None:
            return {}
        t = self.tls
        return {"tls_ca": t.ca, "tls_cert": t.client_cert, "tls_key": t.client_key}

    @property
    def pids(self) -> tuple[int, ...]:
        if self.proc is not None:
            return (self.proc.pid,)
        return self.given_pids

    def log_tail(self, n: int = 2000) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:].decode(errors="replace")

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        family = [p for p in procstats.descendants([proc.pid]) if p != proc.pid]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for pid in family:
            if os.path.exists(f"/proc/{pid}"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def command(spec: ServerSpec, port: int, gearmand: str, shardgear_cmd: str | None) -> list[str]:
    if spec.kind == "gearmand":
        return [
            gearmand,
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(spec.threads),
            "--log-file",
            "stderr",
            "--verbose",
            "WARNING",
        ]
    base = shlex.split(shardgear_cmd) if shardgear_cmd else [sys.executable, "-m", "shardgear"]
    cmd = [*base, "--listen", "127.0.0.1", "--port", str(port)]
    if spec.fronts is not None:
        cmd += ["--fronts", str(spec.fronts), "--shards", str(spec.shards)]
    return cmd


def start(
    spec: ServerSpec,
    *,
    gearmand: str = DEFAULT_GEARMAND,
    shardgear_cmd: str | None = None,
    timeout: float = READY_TIMEOUT,
) -> Server:
    """Start (or, for an external spec, check) a server and return it once it answers."""
    if spec.kind == "external":
        if not ready(spec.host, spec.port):
            raise RuntimeError(f"{spec.label}: no Gearman server answering there")
        return Server(spec, spec.host, spec.port, given_pids=spec.pids)
    port = free_port()
    cmd = command(spec, port, gearmand, shardgear_cmd)
    if spec.kind == "shardgear":
        # the job store of a benchmarked server lives and dies with the run
        state_dir = tempfile.mkdtemp(prefix="bench-state-")
        atexit.register(shutil.rmtree, state_dir, True)
        cmd += ["--state-dir", state_dir]
    tls: TLSFiles | None = None
    tls_port = 0
    if spec.tls:
        tls_dir = tempfile.mkdtemp(prefix="bench-tls-")
        atexit.register(shutil.rmtree, tls_dir, True)
        tls = tlsfiles.make(tls_dir)
        tls_port = free_port()
        cmd += ["--tls-cert", tls.server_cert, "--tls-key", tls.server_key, "--tls-ca", tls.ca]
        cmd += ["--tls-port", str(tls_port), "--tls-listen", "127.0.0.1"]
    log = tempfile.TemporaryFile(  # noqa: SIM115 (closed by Server.stop)
        prefix=f"bench-{spec.label}-"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO_ROOT, env=env
        )
    except OSError as e:
        log.close()
        raise RuntimeError(f"{spec.label}: cannot start {cmd[0]}: {e}") from e
    server = Server(spec, "127.0.0.1", port, proc=proc, log=log, tls_port=tls_port, tls=tls)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = server.log_tail()
            server.stop()
            raise RuntimeError(
                f"{spec.label}: exited with {proc.returncode}: {shlex.join(cmd)}\n{tail}"
            )
        if ready("127.0.0.1", port):
            return server
        time.sleep(0.05)
    tail = server.log_tail()
    server.stop()
    raise TimeoutError(f"{spec.label}: not ready after {timeout:.0f} s: {shlex.join(cmd)}\n{tail}")
