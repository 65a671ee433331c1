"""A worker process killed mid-job: another worker completes the job for the waiting client."""

from __future__ import annotations

import signal
import uuid

import pytest

from tests.gearclient import status_of, wait_for
from tests.interop import tools

pytestmark = [
    pytest.mark.interop,
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
]


def test_killed_cli_worker_job_is_completed_by_another_cli_worker(server, procs):
    tools.require_tools("gearman")
    func = f"failover-{uuid.uuid4().hex[:12]}"
    stuck = tools.cli_worker(procs, server.address, func, "sh", "-c", "sleep 60; cat", count=1)
    client = procs.spawn([*tools.cli_args(server.address), "-f", func, "precious payload"])
    wait_for(
        lambda: status_of(server.address, func) == [1, 1, 1],
        timeout=15,
        what="job running on the first worker",
    )
    procs.kill(stuck, signal.SIGKILL)
    rescuer = tools.cli_worker(procs, server.address, func, "rev", count=1)
    out, err = client.communicate(timeout=tools.TIMEOUT)
    assert client.returncode == 0, err
    assert out == b"daolyap suoicerp"
    assert rescuer.wait(tools.TIMEOUT) == 0


def test_killed_cli_worker_job_is_completed_by_a_gear_worker(server, procs):
    tools.require_tools("gearman")
    func = f"failover-{uuid.uuid4().hex[:12]}"
    stuck = tools.cli_worker(procs, server.address, func, "sh", "-c", "sleep 60; cat", count=1)
    client = procs.spawn([*tools.cli_args(server.address), "-f", func, "abc"])
    wait_for(
        lambda: status_of(server.address, func) == [1, 1, 1],
        timeout=15,
        what="job running on the first worker",
    )
    procs.kill(stuck, signal.SIGKILL)
    rescuer = tools.GearWorker(server.address, func, lambda b: b.upper(), count=1)
    rescuer.start()
    try:
        out, err = client.communicate(timeout=tools.TIMEOUT)
    finally:
        rescuer.stop()
    assert client.returncode == 0, err
    assert out == b"ABC"


def test_killed_perl_worker_job_goes_to_cli_worker(server, procs, tmp_path):
    tools.require_tools("gearman")
    tools.require_perl()
    func = f"failover-{uuid.uuid4().hex[:12]}"
    script = tmp_path / "slow_worker.pl"
    script.write_text(
        "use Gearman::Worker; $|=1; my $w = Gearman::Worker->new(job_servers => [$ARGV[0]]);\n"
        "$w->register_function($ARGV[1] => sub { sleep 60; return 'never' });\n"
        'print "ready\\n"; $w->work(stop_if => sub { 0 });\n'
    )
    stuck = procs.spawn(["perl", str(script), server.address, func])
    assert stuck.stdout.readline() == b"ready\n"
    r_client = procs.spawn(["perl", str(tools.PERL_DIR / "client.pl"), server.address, func, "xyz"])
    wait_for(
        lambda: status_of(server.address, func) == [1, 1, 1],
        timeout=15,
        what="job running on the perl worker",
    )
    procs.kill(stuck, signal.SIGKILL)
    tools.cli_worker(procs, server.address, func, "rev", count=1)
    out, err = r_client.communicate(timeout=tools.TIMEOUT)
    assert r_client.returncode == 0, err
    assert out == b"zyx"
