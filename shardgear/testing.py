"""A real shardgear server for test suites, started and stopped in one line::

    from shardgear.testing import Server
    from shardgear.client import Client

    with Server() as server:                     # 1 front x 1 shard, free loopback port
        with Client(server.address) as client:
            ...

The server is ``python -m shardgear`` in a subprocess of its own session, with a temporary state
directory (removed at stop) and its log in a temporary file (:meth:`Server.log_text`). It is
ready when :meth:`Server.start` returns: it answered an admin ``version`` and, over a few
connections, ``getpid`` with its own pid (so the port is not shared with another server through
SO_REUSEPORT). ``stop`` sends SIGQUIT (stop at once; ``graceful=True``: SIGTERM), SIGKILL to its
process group after the timeout, and unlinks any shared memory the server left.

For pytest, :mod:`shardgear.pytest_plugin` turns this into fixtures (``shardgear_server``,
``make_shardgear_server``); it is registered automatically when shardgear is installed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["Server", "ServerError", "free_port"]

_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class ServerError(RuntimeError):
    """The server did not start (its log is in the message), or did not stop cleanly."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ask(host: str, port: int, line: bytes, timeout: float) -> bytes:
    """Send one admin line and return the first line of the reply (b"" if none)."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(line + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
        return reply


class Server:
    """A shardgear server process for tests.

    Args:
        *args: extra command-line flags (e.g. ``"--job-retries", "2"``).
        host: the address to listen on.
        port: the TCP port; 0 (default) picks a free one.
        fronts, shards: processes of each kind.
        state_dir: the store's directory; None makes a temporary one, removed at stop.
        log_level: the server's ``--log-level``.
        graceful_timeout: the server's ``--graceful-timeout``, in seconds.
        startup_timeout: seconds to wait for the server to be ready.
        python: the interpreter that runs ``-m shardgear``.

    Attributes:
        host, port, address (``"host:port"``), pid (of the supervisor), state_dir.
    """

    def __init__(
        self,
        *args: str,
        host: str = "127.0.0.1",
        port: int = 0,
        fronts: int = 1,
        shards: int = 1,
        state_dir: str | os.PathLike[str] | None = None,
        log_level: str = "info",
        graceful_timeout: float = 5.0,
        startup_timeout: float = 15.0,
        python: str = sys.executable,
    ) -> None:
        self.args = tuple(str(a) for a in args)
        self.host = host
        self.port = port
        self._fixed_port = port
        self.fronts = fronts
        self.shards = shards
        self._own_state_dir = state_dir is None
        self.state_dir = str(state_dir) if state_dir is not None else ""
        self.log_level = log_level
        self.graceful_timeout = graceful_timeout
        self.startup_timeout = startup_timeout
        self.python = python
        self.log_path = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<shardgear.testing.Server {self.address} {state}>"

    # -- properties -----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ServerError("the server is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self, limit: int = 100_000) -> str:
        """The end of the server's log (stderr), up to ``limit`` characters."""
        try:
            data = Path(self.log_path).read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def command(self) -> list[str]:
        """The server's command line."""
        return [
            self.python,
            "-m",
            "shardgear",
            "--listen",
            self.host,
            "--port",
            str(self.port),
            "--fronts",
            str(self.fronts),
            "--shards",
            str(self.shards),
            "--state-dir",
            self.state_dir,
            "--log-level",
            self.log_level,
            "--graceful-timeout",
            f"{self.graceful_timeout:g}",
            *self.args,
        ]

    def start(self) -> Server:
        """Start the server and wait until it serves.

        Raises:
            ServerError: it exited or was not ready within ``startup_timeout`` seconds.
        """
        if self.running:
            raise ServerError("the server is already running")
        if self._own_state_dir and not self.state_dir:
            self.state_dir = tempfile.mkdtemp(prefix="shardgear-test-state.")
        error = ""
        for _attempt in range(3):  # a free port may be taken before the server binds it
            self.port = self._fixed_port or free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
                return self
            except ServerError as exc:
                error = str(exc)
                self._terminate(2.0)
                if self._fixed_port or ("taken" not in error and "in use" not in error):
                    break
                with contextlib.suppress(OSError):
                    os.unlink(self.log_path)
        self._cleanup()
        raise ServerError(error)

    def _spawn(self) -> None:
        fd, self.log_path = tempfile.mkstemp(prefix=f"shardgear.{self.port}.", suffix=".log")
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + path if path else "")
        try:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(fd)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"shardgear exited with status {self._proc.returncode} before it was "
                    f"ready:\n{self.log_text()}"
                )
            try:
                if _ask(self.host, self.port, b"version", 1.0).startswith(b"OK"):
                    pids = {_ask(self.host, self.port, b"getpid", 1.0) for _ in range(4)}
                    if pids != {b"OK %d\n" % self._proc.pid}:
                        raise ServerError(f"port {self.port} is taken by another server")
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise ServerError(
            f"shardgear on port {self.port} not ready in {self.startup_timeout} s:\n"
            + self.log_text()
        )

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the server and all its processes at once (to test failover), and return
        once every one of them is gone (so its connections are closed); ``stop`` still cleans
        up after it."""
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # the children, reaped by whoever adopted them
            try:
                os.killpg(self._proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0, *, graceful: bool = False) -> int | None:
        """Stop the server and remove its shared memory, state directory and log.

        Args:
            timeout: seconds to wait before SIGKILL to its process group.
            graceful: SIGTERM, which lets running jobs finish (up to ``graceful_timeout``);
                by default SIGQUIT, which stops at once (as admin ``shutdown``) and is faster.

        Returns:
            Its exit status (None if it was never started). Calling it again does nothing more.
        """
        if self._proc is None:
            self._cleanup()
            return None
        status = self._terminate(timeout, signal.SIGTERM if graceful else signal.SIGQUIT)
        self._cleanup()
        return status

    def _terminate(self, timeout: float, sig: int = signal.SIGQUIT) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # children of a killed or wedged supervisor: the process group we created
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(timeout)
        for path in glob.glob(f"/dev/shm/shardgear.{self.port}.{proc.pid}.*"):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return proc.returncode

    def _cleanup(self) -> None:
        if self._own_state_dir and self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = ""
        if self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
