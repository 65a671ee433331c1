"""The systemd protocol on a real server, with a fake notify socket (a datagram socket the test
reads) and sockets the test binds and passes (socket activation): READY only when served,
EXTEND_TIMEOUT_USEC during a long replay, STATUS, STOPPING once, RELOADING + READY, the watchdog,
LISTEN_FDS."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from shardgear import recovery
from shardgear.joblog import JobLog
from shardgear.proto.packets import PacketType
from shardgear.scheduler import Scheduler
from tests.conftest import Server
from tests.gearclient import Conn, parse_status, submit, wait_for
from tests.ops.helpers import NotifySocket, child_roles, wait_for_log

pytestmark = pytest.mark.shardgear_only
ROLES = ["front0", "front1", "shard0", "shard1"]


def replaced(srv: Server, old: int) -> bool:
    """Every child slot is filled again, and not by process `old`."""
    roles = child_roles(srv.pid)
    return sorted(roles.values()) == ROLES and old not in roles


@pytest.fixture
def notify(tmp_path: Path):
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.close()


def test_ready_once_when_every_front_listens_and_status_and_stopping_once(
    start_server, notify, tmp_path
):
    srv = start_server(env=notify.env)
    ((_t, ready),) = notify.wait_for("READY", "1")
    assert ready["MAINPID"] == str(srv.pid)
    # The fixture's readiness probe (a `version` round trip) may still count: its front can see
    # it close after READY went out.
    assert re.fullmatch(r"[01] connections, 0 jobs queued, 0 running", ready["STATUS"]), ready
    conns = [Conn(srv.address) for _ in range(3)]
    try:
        # STATUS= is refreshed every few seconds with the live numbers
        notify.wait_for("STATUS", "3 connections, 0 jobs queued, 0 running", timeout=20)
    finally:
        for c in conns:
            c.close()
    srv.signal(signal.SIGTERM)
    assert srv.wait(10) == 0
    notify.poll()
    assert len(notify.having("READY", "1")) == 1
    assert len(notify.having("STOPPING", "1")) == 1
    assert notify.having("STOPPING")[0][1]["STATUS"].startswith("stopping")


def test_a_second_stop_signal_sends_no_second_stopping(start_server, notify, connect, func_name):
    srv = start_server("--graceful-timeout", "30", env=notify.env)
    notify.wait_for("READY", "1")
    client, w = connect(srv.address), connect(srv.address)
    submit(client, func_name, b"x")
    from tests.gearclient import grab_job, worker

    worker(w, func_name)
    grab_job(w)  # a running job makes the stop wait
    srv.signal(signal.SIGTERM)
    notify.wait_for("STOPPING", "1")
    srv.signal(signal.SIGTERM)  # the second one: at once
    assert srv.wait(10) == 0
    assert len(notify.having("STOPPING")) == 1


def test_ready_comes_after_the_store_is_replayed(start_server, notify, func_name, tmp_path):
    state = str(tmp_path / "state")
    os.makedirs(state)
    first = start_server(state_dir=state)
    with Conn(first.address) as c:
        for i in range(300):
            submit(c, func_name, b"%d" % i, bg=True)
    port = first.port
    first.stop()
    srv = start_server(port=port, state_dir=state, env=notify.env)
    notify.wait_for("READY", "1")
    # every front listens and every shard has its jobs the moment READY=1 arrived
    for _ in range(6):
        with Conn(srv.address) as c:
            assert parse_status(c.admin("status"))[func_name.decode()][0] == 300


def _fill_store(state: str, port: int, jobs: int) -> None:
    """Write a job log holding `jobs` durable background jobs for shard 0 of 1 of a server on
    `port` (an earlier run's: the server recovers them at start)."""
    sched = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:x", durable=True)
    for i in range(jobs):
        sched.handle_packet(1, PacketType.SUBMIT_JOB_BG, b"replay-me\0\0payload %d" % i, 0.0)
        if i % 50000 == 49999:
            sched.out.clear()
    joblog = JobLog(os.path.join(state, f"jobs.{port}.shard0.log"))
    assert recovery.start_log(sched, joblog, 12345, 0, 1)
    joblog.close()


@pytest.mark.slow
def test_a_long_replay_extends_the_start_timeout(start_server, notify, tmp_path):
    from tests.conftest import free_port

    state = str(tmp_path / "state")
    os.makedirs(state)
    port = free_port()
    _fill_store(state, port, 400_000)
    srv = start_server("--shards", "1", port=port, state_dir=state, env=notify.env)
    ready_at = notify.wait_for("READY", "1", timeout=120)[0][0]
    extends = [(t, m) for t, m in notify.having("EXTEND_TIMEOUT_USEC") if t < ready_at]
    assert extends, notify.messages
    assert int(extends[0][1]["EXTEND_TIMEOUT_USEC"]) >= 10_000_000
    assert extends[0][1]["STATUS"].startswith("starting:")
    with Conn(srv.address) as c:
        assert parse_status(c.admin("status"))["replay-me"][0] == 400_000


def test_reload_sends_reloading_then_ready(start_server, notify, tmp_path):
    path = tmp_path / "shardgear.toml"
    path.write_text("")
    srv = start_server("--config", str(path), env=notify.env)
    notify.wait_for("READY", "1")
    srv.signal(signal.SIGHUP)
    (t_ready, _m), = notify.wait_for("READY", "1", count=2)[1:]
    (t_reloading, reloading), = notify.having("RELOADING", "1")
    assert t_reloading <= t_ready
    assert int(reloading["MONOTONIC_USEC"]) > 0


def test_watchdog_pings_only_while_every_heartbeat_moves(start_server, notify):
    srv = start_server(
        "--heartbeat-timeout", "6", env={**notify.env, "WATCHDOG_USEC": "1000000"}
    )
    notify.wait_for("WATCHDOG", "1", count=3)
    front = next(pid for pid, role in child_roles(srv.pid).items() if role == "front0")
    os.kill(front, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        log = wait_for_log(srv, "stopped responding", timeout=20)
    finally:
        try:
            os.kill(front, signal.SIGCONT)
        except ProcessLookupError:
            pass
    killed_at = time.monotonic()
    assert "front 0" in log
    # no WATCHDOG=1 while front 0 was stuck (after the health window of a few seconds) ...
    quiet = [t for t, _ in notify.having("WATCHDOG") if stopped_at + 3.5 < t < killed_at - 0.5]
    assert quiet == []
    # ... and they come back once it has been restarted
    wait_for(lambda: replaced(srv, front))
    before = len(notify.having("WATCHDOG"))
    notify.wait_for("WATCHDOG", "1", count=before + 2, timeout=20)
    assert Conn(srv.address).admin("version").startswith("OK")


def test_a_stuck_shard_is_killed_and_restarted(start_server, connect, func_name):
    srv = start_server("--heartbeat-timeout", "2")
    client = connect(srv.address)
    h = submit(client, func_name, b"kept", bg=True)
    shard = next(pid for pid, role in child_roles(srv.pid).items() if role == "shard0")
    os.kill(shard, signal.SIGSTOP)
    wait_for_log(srv, f"shard 0 (pid {shard}) stopped responding", timeout=20)
    wait_for(lambda: replaced(srv, shard))
    wait_for_log(srv, "restarted shard 0")
    # its jobs survive (journal recovery)
    with Conn(srv.address) as c:
        assert wait_for(lambda: c.admin("show jobs").count(h.decode()) == 1)


# -- socket activation ---------------------------------------------------------------------------


def _listener(reuseport: bool = False, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


# As systemd does after fork: the sockets at fd 3, 4, ...; LISTEN_PID = our own pid.
_ACTIVATE = """
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="gearman")
os.execv(sys.executable, [sys.executable, "-m", "shardgear", *sys.argv[2:]])
"""


class ActivatedServer(Server):
    """A server started as systemd starts a socket-activated service."""

    def __init__(self, socks: list[socket.socket], *args: str) -> None:
        port = socks[0].getsockname()[1]
        fds = tuple(s.fileno() for s in socks)
        super().__init__(args, port=port, pass_fds=fds)
        self.fds = fds

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("shardgear")
        return [sys.executable, "-c", _ACTIVATE, ",".join(map(str, self.fds)), *cmd[i + 1 :]]


def _served(port: int, n: int) -> set[str]:
    """Open n connections at once, then ask `getpid` on each; the set of answers."""
    conns = [Conn(f"127.0.0.1:{port}", timeout=5.0) for _ in range(n)]
    try:
        return {c.admin("getpid", timeout=5.0) for c in conns}
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize("reuseport", [False, True])
def test_fronts_serve_an_inherited_socket_and_bind_nothing(reuseport, notify):
    sock = _listener(reuseport)
    srv = ActivatedServer([sock], "--port", "1")  # the inherited socket wins over --port
    srv.env = notify.env
    srv.start()
    try:
        sock.close()  # the server holds its own copy
        notify.wait_for("READY", "1")
        assert _served(srv.port, 20) == {f"OK {srv.pid}\n"}
        log = srv.stderr_text()
        assert "socket activation" in log and "Address already in use" not in log
        # a restarted front serves it too
        front = next(pid for pid, role in child_roles(srv.pid).items() if role == "front1")
        os.kill(front, signal.SIGKILL)
        wait_for_log(srv, "restarted front 1")
        assert _served(srv.port, 20) == {f"OK {srv.pid}\n"}
    finally:
        srv.stop()


def test_several_inherited_sockets_are_all_served():
    socks = [_listener(), _listener()]
    ports = [s.getsockname()[1] for s in socks]
    srv = ActivatedServer(socks)
    srv.start()
    try:
        for s in socks:
            s.close()
        for port in ports:
            assert _served(port, 10) == {f"OK {srv.pid}\n"}
    finally:
        srv.stop()


# -- children never outlive the supervisor -------------------------------------------------------


def test_children_end_when_the_supervisor_is_killed(start_server):
    srv = start_server()
    kids = list(child_roles(srv.pid))
    assert len(kids) == 4
    port, pid = srv.port, srv.pid
    os.kill(pid, signal.SIGKILL)
    srv.wait(10)

    def gone() -> bool:
        return not any(os.path.exists(f"/proc/{k}") for k in kids)

    wait_for(gone, timeout=10, what="the children of a killed supervisor to exit")
    # ... and the last of them took the shared memory the supervisor could not remove
    assert srv.shm_leftovers() == []
    assert "the supervisor is gone: removed" in srv.stderr_text()
    srv.stop(check=False)
    again = start_server(port=port)
    assert _served(port, 30) == {f"OK {again.pid}\n"}
