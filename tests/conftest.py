"""Fixtures that start a real server: shardgear (the default) or gearmand
(SHARDGEAR_TEST_TARGET=gearmand).

Every server listens on 127.0.0.1 on its own free port, is checked for readiness (TCP connect and an
admin `version` reply) within 15 s, and is stopped by pid: SIGTERM, up to 10 s, then SIGKILL. A
shardgear server must leave no `/dev/shm/shardgear.<port>.*` segment behind.

Tests marked `shardgear_only` (gearmand 2.0 semantics or a gearmand bug that shardgear fixes) are
skipped for the gearmand target; set SHARDGEAR_TEST_RUN_SHARDGEAR_ONLY=1 to run them anyway and see
how gearmand 1.1.20 differs.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# shardgear's own pytest fixtures (installed through the pytest11 entry point); imported here
# too so that a checkout whose installed metadata predates the entry point has them (a conftest
# definition simply takes precedence over the plugin's).
from shardgear.pytest_plugin import make_shardgear_server, shardgear_server  # noqa: F401
from tests.gearclient import Conn

TARGET = os.environ.get("SHARDGEAR_TEST_TARGET", "shardgear").strip().lower() or "shardgear"
IS_GEARMAND = TARGET == "gearmand"
REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

if TARGET not in ("shardgear", "gearmand"):
    raise pytest.UsageError(f"SHARDGEAR_TEST_TARGET must be shardgear or gearmand, not {TARGET!r}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gearmand_args(extra: tuple[str, ...]) -> list[str]:
    """Map shardgear flags to gearmand's (same names for the ones both have)."""
    out: list[str] = []
    for arg in extra:
        out.append(arg)
    return out


class Server:
    """A server process started by the test suite."""

    def __init__(
        self,
        extra_args: tuple[str, ...] = (),
        *,
        port: int = 0,
        state_dir: str | None = None,
        preexec_fn: Callable[[], None] | None = None,
        target: str | None = None,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.tls = tls  # the readiness check's client context when the port speaks TLS
        self.extra_args = extra_args
        self.target = target or TARGET  # the run's target unless a test needs a given one
        self.port = self.fixed_port = port  # a fixed port: a restart of an earlier server
        self.preexec_fn = preexec_fn
        self.env = env  # added to the environment of the server
        self.pass_fds = pass_fds
        self.own_state_dir = state_dir is None
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = ""
        self.stopped = False
        # every shardgear server stores its background jobs in a directory of its own
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="shardgear-state.")

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        port = str(self.port)
        if self.target == "gearmand":
            exe = shutil.which("gearmand") or "/usr/sbin/gearmand"
            return [
                exe,
                "--listen",
                self.host,
                "--port",
                port,
                "--log-file",
                "stderr",
                "--verbose",
                "WARNING",
                "--threads",
                "2",
                *gearmand_args(self.extra_args),
            ]
        return [
            sys.executable,
            "-m",
            "shardgear",
            "--listen",
            self.host,
            "--port",
            port,
            "--fronts",
            "2",
            "--shards",
            "2",
            "--log-level",
            "info",
            "--state-dir",
            self.state_dir,
            "--graceful-timeout",
            "5",
            *self.extra_args,
        ]

    def start(self) -> Server:
        last_error = ""
        for _attempt in range(3):  # a free port can be taken by someone else before we bind it
            self.port = self.fixed_port or free_port()
            fd, self.stderr_path = tempfile.mkstemp(
                prefix=f"{self.target}.{self.port}.", suffix=".log"
            )
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                cwd=REPO,
                start_new_session=True,
                preexec_fn=self.preexec_fn,
                env=None if self.env is None else {**os.environ, **self.env},
                pass_fds=self.pass_fds,
            )
            os.close(fd)
            try:
                self._wait_ready()
                _LIVE.append(self)
                return self
            except RuntimeError as e:
                last_error = str(e)
                self.stop(check=False)
                if self.fixed_port or "Address already in use" not in last_error:
                    break
        raise RuntimeError(last_error)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.target} exited with {self.proc.returncode} before it was ready:\n"
                    + self.stderr_text()
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as plain:
                    s = plain
                    if self.tls is not None:
                        s = self.tls.wrap_socket(plain, server_hostname="localhost")
                    s.settimeout(max(0.1, min(2.0, deadline - time.monotonic())))
                    s.sendall(b"version\n")
                    reply = b""
                    while not reply.endswith(b"\n"):
                        chunk = s.recv(256)
                        if not chunk:
                            break
                        reply += chunk
                    if reply.endswith(b"\n"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(
            f"{self.target} on port {self.port} not ready in {READY_TIMEOUT} s:\n"
            + self.stderr_text()
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, check: bool = True) -> int | None:
        """SIGTERM, wait up to 10 s, SIGKILL; then check (and clean) shared memory."""
        if self.proc is None or self.stopped:
            return None if self.proc is None else self.proc.returncode
        self.stopped = True
        if self in _LIVE:
            _LIVE.remove(self)
        problems = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a graceful stop: waits for running jobs
            try:
                try:
                    self.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGTERM)  # the second one stops at once
                    self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"did not exit within {STOP_TIMEOUT} s of SIGTERM; killed")
                self._kill_group()
                self.proc.wait(STOP_TIMEOUT)
        if not self._group_gone(timeout=3.0):
            problems.append("left child processes running after it exited; killed them")
            self._kill_group()
        leftovers = self.shm_leftovers()
        for path in leftovers:
            try:
                os.unlink(path)
            except OSError:
                pass
        if leftovers:
            problems.append(f"left shared memory behind: {leftovers}")
        if self.own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if not problems:
            try:
                os.unlink(self.stderr_path)
            except OSError:
                pass
        if check and problems:
            raise AssertionError(
                f"{self.target} on port {self.port}: "
                + "; ".join(problems)
                + "\n"
                + self.stderr_text()
            )
        return self.proc.returncode

    def _kill_group(self) -> None:
        """SIGKILL the process group of the server we started (its pid is the group id)."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_gone(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.killpg(self.proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def shm_leftovers(self) -> list[str]:
        if self.target == "gearmand" or not self.port:
            return []
        return sorted(glob.glob(f"/dev/shm/shardgear.{self.port}.*"))

    def stderr_text(self, limit: int = 20000) -> str:
        try:
            data = Path(self.stderr_path).read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")


_LIVE: list[Server] = []


# -- hooks ---------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> str:
    from shardgear.build_info import describe

    return f"shardgear build: {describe()} (target: {TARGET})"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not IS_GEARMAND or os.environ.get("SHARDGEAR_TEST_RUN_SHARDGEAR_ONLY"):
        return
    skip = pytest.mark.skip(reason="shardgear_only: gearmand 1.1.20 differs (2.0 semantics or bug)")
    for item in items:
        if "shardgear_only" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and _LIVE:
        for srv in list(_LIVE):
            report.sections.append(
                (f"{srv.target} stderr (port {srv.port}, pid {srv.pid})", srv.stderr_text())
            )
    return report


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def target() -> str:
    return TARGET


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One server per test module; tests stay independent by using fresh function names."""
    srv = Server().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """Factory: `start_server("--job-retries", "2")` starts a dedicated server for this test."""
    started: list[Server] = []

    def start(*extra_args: str, **options: Any) -> Server:
        srv = Server(tuple(str(a) for a in extra_args), **options).start()
        started.append(srv)
        return srv

    yield start
    errors = []
    for srv in started:
        try:
            srv.stop()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        raise AssertionError("\n".join(errors))


@pytest.fixture
def func_name() -> bytes:
    """A function name no other test uses."""
    return b"f-" + uuid.uuid4().hex.encode()


@pytest.fixture
def make_name() -> Callable[..., bytes]:
    """Factory for more fresh function names; `make_name(shard=1)` lands on that shard (of 2)."""

    def make(prefix: str = "f", shard: int | None = None, shards: int = 2) -> bytes:
        for _ in range(1000):
            candidate = f"{prefix}-{uuid.uuid4().hex}".encode()
            if shard is None or shard_of(candidate, shards) == shard:
                return candidate
        raise AssertionError("could not find a name for that shard")

    return make


def shard_of(func: bytes, shards: int = 2) -> int:
    """The shard that owns `func` (ARCHITECTURE.md, Routing)."""
    try:
        from shardgear.routing import shard_for
    except ImportError:  # same formula: zlib.crc32(func) % shards
        import zlib

        return zlib.crc32(func) % shards
    return int(shard_for(func, shards))


@pytest.fixture
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Conn]]:
    """Factory: `connect()` opens a Conn to the module's server (or to `address`); all are
    closed at teardown."""
    conns: list[Conn] = []

    def make(address: str | None = None, timeout: float = 5.0) -> Conn:
        if address is None:
            address = request.getfixturevalue("server").address
        c = Conn(address, timeout=timeout)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()
