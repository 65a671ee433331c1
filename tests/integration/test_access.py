"""Identities and access rules on a real server (README "Security"): TLS client certificates name
who is who; the config file's [access] table says who may submit, work on and read the status of
which functions, and who may run admin commands; a reload (SIGHUP) changes rights at once."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import gearclient as g
from tests.certs import Pki, client_context, make_pki
from tests.conftest import IS_GEARMAND, Server, free_port

pytestmark = pytest.mark.skipif(IS_GEARMAND, reason="shardgear's access rules")

RULES = """
[access]
admins = ["ops-admin"]           # loopback is not an admin here
monitors = ["*"]

[access.functions."secure-*"]
submit = ["web-*"]
work = ["worker-*"]
status = ["web-*"]
"""


class Site:
    """A server with plain text on loopback and mutual TLS on `tls_address`."""

    def __init__(self, server: Server, tls_port: int, pki: Pki, config: Path) -> None:
        self.server = server
        self.tls_address = f"127.0.0.1:{tls_port}"
        self.pki = pki
        self.config = config
        self.conns: list[g.Conn] = []

    def tls(self, name: str) -> g.Conn:
        """A connection whose client certificate says `name`."""
        c = g.Conn(self.tls_address, tls=client_context(self.pki, self.pki.client(name)))
        self.conns.append(c)
        return c

    def plain(self) -> g.Conn:
        """An anonymous plain-text connection (from 127.0.0.1)."""
        c = g.Conn(self.server.address)
        self.conns.append(c)
        return c

    def close_all(self) -> None:
        for c in self.conns:
            c.close()
        self.conns.clear()


def start_site(tmp: Path, rules: str) -> Site:
    pki = make_pki(tmp / "pki")
    config = tmp / "shardgear.toml"
    config.write_text(rules)
    port = free_port()
    args = ("--config", str(config), "--tls-port", str(port), "--tls-listen", "127.0.0.1")
    args += ("--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-ca", pki.ca)
    return Site(Server(args).start(), port, pki, config)


@pytest.fixture(scope="module")
def module_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = start_site(tmp_path_factory.mktemp("access"), RULES)
    try:
        yield site
    finally:
        site.server.stop()


@pytest.fixture
def site(module_site: Site) -> Iterator[Site]:
    yield module_site
    module_site.close_all()


@pytest.fixture
def secure(make_name: Callable[..., bytes]) -> bytes:
    return make_name("secure")


def denied(conn: g.Conn) -> bytes:
    """Expect ERROR PERMISSION_DENIED; return its text."""
    code, text = conn.expect(g.ERROR)
    assert code == b"PERMISSION_DENIED", (code, text)
    return text


def test_allowed_worker_gets_the_jobs_of_an_allowed_submitter(site: Site, secure: bytes) -> None:
    worker = g.worker(site.tls("worker-1"), secure)
    client = site.tls("web-1")
    handle = g.submit(client, secure, b"payload")
    assert g.grab_job(worker) == [handle, secure, b"payload"]
    worker.send(g.WORK_COMPLETE, handle, b"done")
    assert client.expect(g.WORK_COMPLETE) == [handle, b"done"]


def test_denied_worker_never_receives_the_functions_jobs(site: Site, secure: bytes) -> None:
    rogue = site.tls("rogue-1")
    rogue.send(g.CAN_DO, secure)
    text = denied(rogue)
    assert text == b"rogue-1@127.0.0.1 may not work on function " + secure
    rogue.send(g.CAN_DO_TIMEOUT, secure, b"10")
    denied(rogue)
    client = site.tls("web-1")
    handle = g.submit(client, secure, b"not for rogues", bg=True)
    # the job is there, and the rogue's GRABs never get it; nor does it get woken for it
    assert g.grab(rogue)[0] == g.NO_JOB
    rogue.send(g.PRE_SLEEP)
    g.submit(client, secure, b"another", bg=True)
    rogue.recv_nothing(0.3)
    assert g.status_of(site.server.address, secure) == [2, 0, 0]  # no worker registered
    worker = g.worker(site.tls("worker-2"), secure)
    assert g.grab_job(worker)[0] == handle
    # an anonymous plain-text worker is denied too
    anonymous = site.plain()
    anonymous.send(g.CAN_DO, secure)
    assert denied(anonymous) == b"127.0.0.1 may not work on function " + secure


def test_denied_submitter_gets_the_error(site: Site, secure: bytes) -> None:
    for conn in (site.tls("rogue-1"), site.plain()):
        for ptype in (g.SUBMIT_JOB, g.SUBMIT_JOB_BG, g.SUBMIT_JOB_HIGH, g.SUBMIT_JOB_LOW_BG):
            conn.send(ptype, secure, b"", b"x")
            assert b"may not submit jobs of function " + secure in denied(conn)
        conn.send(g.SUBMIT_JOB_EPOCH, secure, b"", b"4000000000", b"x")
        denied(conn)
        conn.send(g.SUBMIT_REDUCE_JOB, secure, b"", b"reducer", b"0", b"x")
        denied(conn)
        # functions no rule restricts stay open to everyone (drop-in)
        g.submit(conn, b"open-" + secure, b"x", bg=True)
    assert g.status_of(site.server.address, secure) is None
    assert "access denied: rogue-1@127.0.0.1 may not submit jobs of function" in (
        site.server.stderr_text()
    )


def test_large_submissions_meet_the_same_rules(site: Site, secure: bytes) -> None:
    """A submission of 1 MiB or more goes to its shard as the pieces it arrived in; the access
    rules are checked from its start all the same (SUBMIT_JOB_EPOCH's too)."""
    big = b"z" * (3 * 1024 * 1024 + 1)
    rogue = site.tls("rogue-1")
    rogue.send(g.SUBMIT_JOB_BG, secure, b"", big)
    assert b"may not submit jobs of function " + secure in denied(rogue)
    rogue.send(g.SUBMIT_JOB_EPOCH, secure, b"", b"1", big)
    denied(rogue)
    assert g.status_of(site.server.address, secure) is None
    web = site.tls("web-1")
    handle = g.submit(web, secure, big, bg=True)
    web.send(g.SUBMIT_JOB_EPOCH, secure, b"", b"1", big)
    later = web.expect(g.JOB_CREATED)[0]
    worker = g.worker(site.tls("worker-1"), secure)
    assert g.grab_job(worker, timeout=30) == [handle, secure, big]
    assert g.grab_job(worker, timeout=30) == [later, secure, big]


def test_replies_keep_their_order_around_a_denial(site: Site, secure: bytes) -> None:
    """A denial answers in its request's place: allowed submissions before and after it get
    their JOB_CREATED in order."""
    web = site.tls("web-1")
    open_func = b"open-" + secure
    web.send(g.SUBMIT_JOB_BG, open_func, b"", b"1")
    web.send(g.SUBMIT_JOB_BG, secure, b"", b"2")
    rogue_like = site.tls("rogue-2")
    rogue_like.send(g.SUBMIT_JOB_BG, open_func, b"", b"a")
    rogue_like.send(g.SUBMIT_JOB_BG, secure, b"", b"b")
    rogue_like.send(g.SUBMIT_JOB_BG, open_func, b"", b"c")
    assert web.recv()[0] == g.JOB_CREATED and web.recv()[0] == g.JOB_CREATED
    assert [rogue_like.recv()[0] for _ in range(3)] == [g.JOB_CREATED, g.ERROR, g.JOB_CREATED]


def test_job_status_follows_the_status_rule(site: Site, secure: bytes) -> None:
    web = site.tls("web-1")
    handle = g.submit(web, secure, b"x", unique=b"u-" + secure[-8:], bg=True)
    web.send(g.GET_STATUS, handle)
    assert web.expect(g.STATUS_RES)[:3] == [handle, b"1", b"0"]
    web.send(g.GET_STATUS_UNIQUE, b"u-" + secure[-8:])
    assert web.expect(g.STATUS_RES_UNIQUE)[1] == b"1"
    for other in (site.tls("worker-1"), site.plain()):
        other.send(g.GET_STATUS, handle)
        assert b"may not read the status of jobs of function " + secure in denied(other)
        other.send(g.GET_STATUS_UNIQUE, b"u-" + secure[-8:])
        denied(other)
        other.send(g.GET_STATUS, b"H:nowhere:999999")  # no such job: nothing to protect
        assert other.expect(g.STATUS_RES)[1] == b"0"


def test_non_admin_shutdown_is_refused_and_the_server_keeps_serving(
    site: Site, secure: bytes
) -> None:
    adm = site.plain()  # loopback, but this config's admins are ["ops-admin"]
    for line in (
        "shutdown",
        "shutdown graceful",
        f"drop function {secure.decode()}",
        f"maxqueue {secure.decode()} 1",
        "cancel job H:x:1",
        f"create function {secure.decode()}",
    ):
        reply = adm.admin(line)
        assert reply.startswith("ERR PERMISSION_DENIED "), (line, reply)
        assert "is+allowed+only+to:+ops-admin" in reply
    # read-only commands follow monitors = ["*"]
    assert adm.admin("version").startswith("OK ")
    assert adm.admin("status").endswith(".\n")
    assert g.status_of(site.server.address, secure) is None  # create function did nothing
    # still serving, same connection and new ones
    worker = g.worker(site.tls("worker-1"), secure)
    client = site.tls("web-1")
    handle = g.submit(client, secure, b"after")
    assert g.grab_job(worker)[0] == handle
    assert site.server.proc is not None and site.server.proc.poll() is None
    # an admin identity may
    ops = site.tls("ops-admin")
    assert ops.admin(f"maxqueue {secure.decode()} 5") == "OK\r\n"
    assert "may not run admin command 'shutdown'" in site.server.stderr_text()


def test_a_reload_takes_rights_away_at_once_and_gives_new_ones(tmp_path: Path) -> None:
    site = start_site(tmp_path, RULES)
    try:
        secure = b"secure-reload"
        worker = g.worker(site.tls("worker-1"), secure)
        rogue = site.tls("rogue-1")
        rogue.send(g.SUBMIT_JOB_BG, secure, b"", b"x")
        denied(rogue)
        client = site.tls("web-1")
        first = g.submit(client, secure, b"one", bg=True)
        assert g.grab_job(worker)[0] == first
        site.config.write_text(
            RULES.replace('work = ["worker-*"]', 'work = ["worker-2"]').replace(
                'submit = ["web-*"]', 'submit = ["web-*", "rogue-*"]'
            )
        )
        site.server.signal(signal.SIGHUP)
        g.wait_for(
            lambda: "may no longer work on 'secure-reload'" in site.server.stderr_text(),
            what="the worker to lose its registration",
        )
        second = g.submit(rogue, secure, b"two", bg=True)  # allowed now
        assert g.grab(worker)[0] == g.NO_JOB  # no longer registered
        worker.send(g.CAN_DO, secure)
        denied(worker)
        # the job it was running went back to the queue with its rights: its result is refused
        worker.send(g.WORK_COMPLETE, first, b"too late")
        assert worker.expect(g.ERROR)[0] == b"JOB_NOT_FOUND"
        worker.send(g.ECHO_REQ, b"still connected")
        assert worker.expect(g.ECHO_RES) == [b"still connected"]
        # both, in either order: the front logs the revocation before the shard requeues
        # `first`, so `second` may be queued ahead of it
        newcomer = g.worker(site.tls("worker-2"), secure)
        assert {g.grab_job(newcomer)[0], g.grab_job(newcomer)[0]} == {first, second}
    finally:
        site.close_all()
        site.server.stop()
