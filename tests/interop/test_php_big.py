"""PHP's php-gearman (libgearman) with large payloads against 2 fronts x 2 shards (issue 7): a
16 MiB echo, a 16 MiB background job and a doHigh of 16 MiB + 4 bytes on one connection, round
after round. It once never reached the worker (1 run in 25): libgearman's 32 KiB socket buffers
met the kernel's delayed ACKs, each 16 MiB took 11 s to reach the server, and a client whose
timeout ran out left a job that never ran. The client here gives each step 15 s, as an
application would; each now takes well under one."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.interop import tools

pytestmark = [pytest.mark.interop, pytest.mark.shardgear_only]

ROUNDS = 2
CLIENT_TIMEOUT_MS = 15000


def test_php_big_do_high_after_a_big_echo_and_a_big_background_job(start_server):
    tools.require_php()
    srv = start_server("--fronts", "2", "--shards", "2")
    func = f"php-big-{uuid.uuid4().hex[:12]}"
    procs = tools.Procs()
    try:
        tools.php_big_worker(procs, srv.address, func)
        host, port = tools.host_port(srv.address)
        r = subprocess.run(
            [
                "php",
                str(tools.PHP_DIR / "big_client.php"),
                host,
                port,
                func,
                str(ROUNDS),
                str(CLIENT_TIMEOUT_MS),
            ],
            capture_output=True,
            timeout=ROUNDS * 3 * CLIENT_TIMEOUT_MS / 1000 + 30,
        )
    finally:
        procs.stop_all()
    lines = r.stdout.decode().splitlines()
    expected = [
        f"round {i} {step} ok" for i in range(ROUNDS) for step in ("echo", "background", "high")
    ]
    assert (r.returncode, lines) == (0, expected), r.stderr.decode()[-2000:]
