"""How the supervisor starts its children: forked at the first start (no interpreter start and no
imports per child), ``python -m shardgear.child`` (exec) on a restart or with SHARDGEAR_SPAWN=exec.
Either way a child ends with its supervisor and holds none of the supervisor's own descriptors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.gearclient import Conn, wait_for
from tests.ops.helpers import child_roles, wait_for_log

pytestmark = pytest.mark.shardgear_only
ROLES = ["front0", "front1", "shard0", "shard1"]


def argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def forked(pid: int) -> bool:
    """A forked child's command line is its title (child._set_title): no interpreter, no -m."""
    return argv(pid)[0] == b"shardgear.child"


def execd(pid: int) -> bool:
    args = argv(pid)
    return b"-m" in args and args[args.index(b"-m") + 1] == b"shardgear.child"


def descriptors(pid: int) -> set[str]:
    """What each open fd of `pid` points at ("socket:[123]", "pipe:[456]", paths...)."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return out


def test_forked_at_start_execd_on_restart_and_all_end_with_the_supervisor(start_server):
    srv = start_server()
    roles = child_roles(srv.pid)
    assert sorted(roles.values()) == ROLES
    assert all(forked(pid) for pid in roles), {pid: argv(pid) for pid in roles}
    wait_for_log(srv, "started front 0 as pid")
    assert "(forked)" in srv.stderr_text()

    front0 = next(pid for pid, role in roles.items() if role == "front0")
    os.kill(front0, signal.SIGKILL)

    def new_front0() -> int | None:
        now = child_roles(srv.pid)
        pid = next((p for p, role in now.items() if role == "front0"), None)
        return pid if pid not in (None, front0) else None

    again = wait_for(new_front0, what="front 0 to be restarted")
    assert execd(again)
    # its config is in its environment, which only our user reads, not on its command line
    assert not any(b"{" in a for a in argv(again)), argv(again)
    wait_for_log(srv, "restarted front 0 as pid")
    for _ in range(4):  # whichever front the kernel picks: both serve
        with Conn(srv.address) as c:
            assert wait_for(lambda c=c: c.admin("version").startswith("OK"))

    # the exec'd child and the forked ones alike end when the supervisor is killed
    kids = list(child_roles(srv.pid))
    assert len(kids) == 4 and again in kids
    os.kill(srv.pid, signal.SIGKILL)
    srv.wait(10)
    wait_for(
        lambda: not any(os.path.exists(f"/proc/{k}") for k in kids),
        timeout=10,
        what="the children of a killed supervisor to exit",
    )
    srv.stop(check=False)  # removes what the killed supervisor left in /dev/shm


def test_a_forked_child_holds_none_of_the_supervisors_sockets_or_pipes(start_server):
    metrics = f"127.0.0.1:{free_port()}"
    srv = start_server("--metrics", metrics)
    ours = {d for d in descriptors(srv.pid) if d.startswith(("socket:", "pipe:"))}
    assert ours  # the metrics listener, the signal wakeup pair, the HTTP thread's wake pipe
    roles = child_roles(srv.pid)
    assert sorted(roles.values()) == ROLES
    for pid in roles:
        assert forked(pid)
        assert descriptors(pid) & ours == set(), roles[pid]
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"


def test_spawn_exec_starts_every_child_with_exec(start_server):
    srv = start_server(env={"SHARDGEAR_SPAWN": "exec"})
    roles = child_roles(srv.pid)
    assert sorted(roles.values()) == ROLES
    assert all(execd(pid) for pid in roles)
    with Conn(srv.address) as c:
        assert c.admin("version").startswith("OK")


def test_the_supervisor_outlives_the_process_that_started_it(tmp_path):
    """`nohup shardgear &` from a shell that then exits: the supervisor imports child.py to fork
    its children, and must not take the children's PR_SET_PDEATHSIG for itself (it did: the
    shell's exit sent it SIGTERM)."""
    import subprocess
    import sys
    import time

    port = free_port()
    pidfile = tmp_path / "pid"
    # The launcher starts the server, waits until it answers, and exits: the server's parent dies.
    launcher = (
        "import subprocess, sys, time\n"
        "from tests.gearclient import Conn, wait_for\n"
        f"p = subprocess.Popen([sys.executable, '-m', 'shardgear', '--listen', '127.0.0.1', "
        f"'--port', '{port}', '--state-dir', {str(tmp_path)!r}], stderr=subprocess.DEVNULL)\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "def up():\n"
        "    try:\n"
        f"        with Conn('127.0.0.1:{port}') as c:\n"
        "            return c.admin('version')\n"
        "    except OSError:\n"
        "        return None\n"
        "wait_for(up, what='the server')\n"
    )
    try:
        subprocess.run([sys.executable, "-c", launcher], check=True, timeout=60)
        pid = int(pidfile.read_text())
        time.sleep(0.5)  # a parent-death SIGTERM would be handled by now
        with Conn(f"127.0.0.1:{port}") as c:
            assert c.admin("version")
        assert Path(f"/proc/{pid}").exists()
    finally:
        # however the launcher ended, the server it started is ours to stop
        if pidfile.exists():
            _stop_orphan(int(pidfile.read_text()))


def _stop_orphan(pid: int) -> None:
    """SIGTERM a server we started whose parent is gone (no wait(): look until it is gone)."""
    import time

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def test_a_stop_signal_to_the_whole_process_group_restarts_nothing(tmp_path):
    """`timeout shardgear` or `kill -TERM -PGID` signals the supervisor and its children at once:
    the children's exits during the graceful stop are not restarts, and the server stops."""
    import subprocess
    import sys

    port = free_port()
    log_path = tmp_path / "log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shardgear",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path),
                "--log-level",
                "info",
            ],
            stderr=log_file,
            start_new_session=True,  # its own process group: the signal reaches only the server
        )
        try:

            def up() -> str | None:
                try:
                    with Conn(f"127.0.0.1:{port}") as c:
                        return c.admin("version")
                except OSError:
                    return None

            wait_for(up, what="the server")
            wait_for(lambda: "ready" in log_path.read_text(), what="ready in the log")
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log_path.read_text()
    assert "restarted" not in text and "exited with status" not in text, text


def test_a_child_whose_supervisor_died_before_it_started_removes_the_run_s_shared_memory():
    """`python -m shardgear.child` checks its parent first: if the supervisor it names is already
    gone (it died between the fork or exec and PR_SET_PDEATHSIG), the child is never told, so it
    unlinks that run's segments itself and exits 0 instead of serving."""
    import subprocess
    import sys

    import orjson
    import posix_ipc

    from shardgear.child import CONFIG_ENV
    from shardgear.config import Config
    from shardgear.instance import Instance

    port = free_port()
    gone = os.getpid()  # names a supervisor that is not the child's parent
    instance = Instance(port, gone, 1, 1)
    names = [instance.to_shard(0, 0), instance.to_front(0, 0)]
    for name in names:
        posix_ipc.SharedMemory(name, posix_ipc.O_CREX, size=4096).close_fd()
    other = f"/shardgear.{port}.{gone + 1}.f0s0"  # another run on the port: not ours to remove
    posix_ipc.SharedMemory(other, posix_ipc.O_CREX, size=4096).close_fd()
    try:
        config = Config(port=port, fronts=1, shards=1)
        env = {**os.environ, CONFIG_ENV: orjson.dumps(config.to_json_dict()).decode()}
        # the child is our grandchild (through sh), so its parent is not `gone`
        done = subprocess.run(
            ["sh", "-c", f'"{sys.executable}" -m shardgear.child front 0 {gone} 0; exit $?'],
            env=env,
            timeout=60,
        )
        assert done.returncode == 0
        left = {n for n in (*names, other) if Path("/dev/shm" + n).exists()}
        assert left == {other}
    finally:
        for name in (*names, other):
            try:
                posix_ipc.unlink_shared_memory(name)
            except posix_ipc.ExistentialError:
                pass
