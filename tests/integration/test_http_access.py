"""The HTTP process applies the access rules (``[access]``, README "Security") to its own clients,
by address: it reaches the server over loopback, which the fronts would let through."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.gearclient import wait_for
from tests.integration.http_helpers import api, curl, start_http_server
from tests.ops.helpers import wait_for_log

pytestmark = pytest.mark.shardgear_only

# loopback is neither an admin nor allowed to submit "locked": what a remote client would be
RULES = """
[access]
admins = ["192.0.2.1"]

[access.functions."locked"]
submit = ["192.0.2.1"]
"""


def test_the_http_api_follows_the_access_rules(start_server, tmp_path: Path) -> None:
    config = tmp_path / "shardgear.toml"
    config.write_text(RULES)
    srv, http = start_http_server(start_server, "--config", str(config))
    # reads follow `monitors` (everyone by default)
    assert api(http, "/dead")[0] == 200
    assert api(http, "/functions")[0] == 200
    # changes follow `admins`
    status, body = api(http, "/dead/replay?all=1", "POST")
    assert status == 403 and "replay dead" in body["error"], body
    assert api(http, "/dead/12345", "DELETE")[0] == 403
    assert api(http, "/schedules?function=f", "DELETE")[0] == 403
    # submissions (gearmand's protocol and a new schedule) follow the function's `submit` rule
    status, _, answer = curl("-H", "X-Gearman-Background: true", "-d", "x", f"http://{http}/locked")
    assert status == 403 and b"may not submit jobs of function locked" in answer
    schedule = {"function": "locked", "expression": "* * * * *"}
    assert api(http, "/schedules", "POST", schedule)[0] == 403
    status, headers, _ = curl("-H", "X-Gearman-Background: true", "-d", "x", f"http://{http}/open")
    assert (status, headers["x-gearman-command"]) == (200, "JOB_CREATED")
    # a reload that makes loopback an admin applies to the HTTP process too
    config.write_text(RULES.replace('admins = ["192.0.2.1"]', 'admins = ["loopback"]'))
    srv.signal(signal.SIGHUP)
    wait_for_log(srv, "reloaded")  # the HTTP process applies it within a second
    replayed = wait_for(
        lambda: api(http, "/dead/replay?all=1", "POST")[0] == 200, what="the new admins rule"
    )
    assert replayed
