"""Helpers for driving other projects' Gearman clients and workers against the server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
PERL_DIR = Path(__file__).resolve().parent / "perl"
TIMEOUT = 30.0


def missing(msg: str) -> None:
    """Skip a test whose tool is missing, unless under CI where that is a failure."""
    if IN_CI:
        pytest.fail(f"{msg} (CI is set, so a missing interop tool is a failure)")
    pytest.skip(msg)


def require_tools(*names: str) -> None:
    absent = [n for n in names if shutil.which(n) is None]
    if absent:
        missing(f"interop tool(s) not installed: {', '.join(absent)}")


def require_perl() -> None:
    require_tools("perl")
    r = subprocess.run(
        ["perl", "-MGearman::Client", "-MGearman::Worker", "-e", "1"],
        capture_output=True,
        timeout=TIMEOUT,
    )
    if r.returncode != 0:
        missing("Perl Gearman::Client / Gearman::Worker (libgearman-client-perl) not installed")


def require_gear() -> Any:
    try:
        import gear
    except ImportError:
        missing("PyPI gear is not installed")
    return gear


class Procs:
    """Subprocesses started by one test; each in its own session, stopped by pid (group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, args: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill(self, p: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the process group we created for `p` (the process and its command children)."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.kill(p, signal.SIGTERM)
            if p.poll() is None:
                self.kill(p, signal.SIGKILL)
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def host_port(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host, port


# -- gearman CLI (gearman-tools) ---------------------------------------------------------------


def cli_args(address: str) -> list[str]:
    host, port = host_port(address)
    return ["gearman", "-h", host, "-p", port]


def cli_worker(procs: Procs, address: str, func: str, *command: str, count: int = 1):
    return procs.spawn([*cli_args(address), "-w", "-f", func, "-c", str(count), "--", *command])


def cli_client(address: str, func: str, data: str, *flags: str) -> bytes:
    r = subprocess.run(
        [*cli_args(address), "-f", func, *flags, data], capture_output=True, timeout=TIMEOUT
    )
    assert r.returncode == 0, r
    return r.stdout


def gearadmin(address: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    host, port = host_port(address)
    return subprocess.run(
        ["gearadmin", "-h", host, "-p", port, *options], capture_output=True, timeout=TIMEOUT
    )


# -- Perl Gearman::Client / Gearman::Worker ----------------------------------------------------


def perl_client(
    address: str, func: str, data: str, mode: str = "fg", unique: str = ""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["perl", str(PERL_DIR / "client.pl"), address, func, data, mode, unique],
        capture_output=True,
        timeout=TIMEOUT,
    )


def perl_worker(procs: Procs, address: str, func: str, mode: str = "rev", count: int = 1):
    p = procs.spawn(["perl", str(PERL_DIR / "worker.pl"), address, func, mode, str(count)])
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"  # the script loaded its modules
    return p


# -- PHP's gearman extension (php-gearman, libgearman) ----------------------------------------

PHP_DIR = Path(__file__).resolve().parent / "php"


def require_php() -> None:
    require_tools("php")
    r = subprocess.run(
        ["php", "-r", 'exit(class_exists("GearmanClient") ? 0 : 1);'],
        capture_output=True,
        timeout=TIMEOUT,
    )
    if r.returncode != 0:
        missing("PHP's gearman extension (php-gearman) is not installed")


def php_client(
    address: str, func: str, data: str, mode: str = "fg", unique: str = ""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["php", str(PHP_DIR / "client.php"), address, func, data, mode, unique],
        capture_output=True,
        timeout=TIMEOUT,
    )


def php_worker(procs: Procs, address: str, func: str, mode: str = "rev", count: int = 1):
    p = procs.spawn(["php", str(PHP_DIR / "worker.php"), address, func, mode, str(count)])
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"
    return p


def php_big_worker(procs: Procs, address: str, func: str) -> subprocess.Popen[bytes]:
    """A php-gearman worker that serves FUNC (reverses) and FUNC-bg (returns nothing) until
    stopped: big_client.php's counterpart."""
    host, port = host_port(address)
    p = procs.spawn(["php", str(PHP_DIR / "big_worker.php"), host, port, func])
    assert p.stdout is not None
    assert p.stdout.readline() == b"ready\n"  # the extension loaded and the worker registered
    return p


# -- PyPI gear ---------------------------------------------------------------------------------


def gear_client(address: str) -> Any:
    gear = require_gear()
    host, port = host_port(address)
    client = gear.Client("interop-client")
    client.addServer(host, int(port))
    client.waitForServer(timeout=10)
    return client


def gear_run(
    client: Any,
    func: str,
    data: bytes,
    background: bool = False,
    precedence: int | None = None,
    unique: bytes | None = None,
) -> Any:
    """Submit a gear job; for a foreground job wait (bounded) until it completes."""
    import gear

    job = gear.Job(func.encode(), data, unique=unique)
    kw = {} if precedence is None else {"precedence": precedence}
    client.submitJob(job, background=background, timeout=TIMEOUT, **kw)
    if not background:
        deadline = time.monotonic() + TIMEOUT
        while not job.complete:
            assert time.monotonic() < deadline, "gear job did not complete in time"
            time.sleep(0.02)
    return job


class GearWorker(threading.Thread):
    """A gear.Worker in a thread that handles `count` jobs with `handler(bytes) -> bytes`."""

    def __init__(
        self, address: str, func: str, handler: Callable[[bytes], bytes], count: int = 1
    ) -> None:
        super().__init__(daemon=True)
        gear = require_gear()
        host, port = host_port(address)
        self.worker = gear.Worker("interop-gear-worker")
        self.worker.addServer(host, int(port))
        self.worker.waitForServer(timeout=10)
        self.worker.registerFunction(func)
        self.handler = handler
        self.count = count
        self.handled: list[bytes] = []
        self.error: BaseException | None = None
        self.stopped = False

    def run(self) -> None:
        try:
            for _ in range(self.count):
                job = self.worker.getJob()
                self.handled.append(job.arguments)
                job.sendWorkComplete(self.handler(job.arguments))
        except InterruptedError:
            pass
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.is_alive():
            self.worker.stopWaitingForJobs()
        self.join(TIMEOUT)
        self.worker.shutdown()
        if self.error is not None:
            raise self.error

