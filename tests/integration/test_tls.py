"""TLS (README "Security"): mutual TLS on a listener of its own beside the plain one, refused
clients (no certificate, unknown CA, expired), handshakes that stall, and TLS on the main port.

Every certificate is made by the test (`tests.certs`, with the `cryptography` package).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests import gearclient as g
from tests.certs import Pki, client_context, make_pki
from tests.conftest import IS_GEARMAND, REPO, Server, free_port

pytestmark = pytest.mark.skipif(IS_GEARMAND, reason="shardgear's TLS flags")

# Every way a refused TLS client learns it: an alert during the handshake, or (TLS 1.3: the
# server checks the client's certificate after the client thinks the handshake is done) an alert
# or a closed connection at its first read.
REFUSED = (ssl.SSLError, ConnectionResetError, BrokenPipeError, g.ConnectionClosed)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_args(pki: Pki, *extra: str) -> tuple[str, ...]:
    return (
        "--tls-cert",
        pki.server.cert,
        "--tls-key",
        pki.server.key,
        "--tls-ca",
        pki.ca,
        *extra,
    )


class TLSServer:
    """A server with plain text on `server.address` and TLS on `tls_address`."""

    def __init__(self, server: Server, tls_port: int) -> None:
        self.server = server
        self.tls_address = f"127.0.0.1:{tls_port}"


def start_tls_server(pki: Pki, *extra: str) -> TLSServer:
    last: Exception | None = None
    for _ in range(3):  # the TLS port is free when picked, someone may take it before we bind
        port = free_port()
        args = tls_args(pki, "--tls-port", str(port), "--tls-listen", "127.0.0.1", *extra)
        try:
            return TLSServer(Server(args).start(), port)
        except RuntimeError as e:
            last = e
            if "Address already in use" not in str(e):
                raise
    raise AssertionError(f"could not start: {last}")


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TLSServer]:
    srv = start_tls_server(pki, "--tls-handshake-timeout", "1")
    try:
        yield srv
    finally:
        srv.server.stop()


@pytest.fixture
def tls_connect(tls_server: TLSServer, pki: Pki) -> Iterator[Callable[..., g.Conn]]:
    conns: list[g.Conn] = []

    def make(name: str | None = "client", address: str | None = None) -> g.Conn:
        ctx = client_context(pki, pki.client(name) if name else None)
        c = g.Conn(address or tls_server.tls_address, tls=ctx)
        conns.append(c)
        return c

    yield make
    for c in conns:
        c.close()


def refused(pki: Pki, address: str, ctx: ssl.SSLContext) -> bool:
    """True if a TLS client with `ctx` cannot get an answer to `version`."""
    try:
        c = g.Conn(address, tls=ctx)
    except REFUSED:
        return True
    try:
        c.admin("version")
    except REFUSED:
        return True
    finally:
        c.close()
    return False


def test_a_job_runs_over_mutual_tls(tls_connect: Callable[..., g.Conn], func_name: bytes) -> None:
    worker = g.worker(tls_connect("worker-1"), func_name)
    client = tls_connect("web-1")
    handle = g.submit(client, func_name, b"x" * 100_000)
    h, func, data = g.grab_job(worker)
    assert (h, func, data) == (handle, func_name, b"x" * 100_000)
    worker.send(g.WORK_COMPLETE, handle, b"y" * 200_000)
    assert client.expect(g.WORK_COMPLETE) == [handle, b"y" * 200_000]


def test_large_payloads_cross_tls_both_ways(
    tls_connect: Callable[..., g.Conn], func_name: bytes
) -> None:
    """Several MiB each way: the front's TLS writes block and resume (OpenSSL's retry rule)."""
    payload = bytes(range(256)) * (5 * 4096)  # 5 MiB
    worker = g.worker(tls_connect("worker-1"), func_name)
    client = tls_connect("web-1")
    client.send(g.SUBMIT_JOB, func_name, b"", payload)
    handle = client.expect(g.JOB_CREATED, timeout=30)[0]
    h, _func, data = g.grab_job(worker, timeout=30)
    assert h == handle and data == payload
    worker.send(g.WORK_COMPLETE, handle, payload[::-1])
    assert client.expect(g.WORK_COMPLETE, timeout=30) == [handle, payload[::-1]]


def test_plain_listener_serves_beside_tls(
    tls_server: TLSServer, tls_connect: Callable[..., g.Conn], func_name: bytes
) -> None:
    """A plain-text worker and a TLS client share the function (both listeners, every front)."""
    with g.Conn(tls_server.server.address) as plain:
        g.worker(plain, func_name)
        client = tls_connect("web-1")
        handle = g.submit(client, func_name, b"mixed")
        assert g.grab_job(plain)[0] == handle
        plain.send(g.WORK_COMPLETE, handle, b"done")
        assert client.expect(g.WORK_COMPLETE) == [handle, b"done"]


@pytest.mark.parametrize("kind", ["no certificate", "unknown CA", "expired"])
def test_bad_client_certificates_are_refused(
    tls_server: TLSServer, tls_connect: Callable[..., g.Conn], pki: Pki, kind: str
) -> None:
    pair = {
        "no certificate": None,
        "unknown CA": pki.foreign_client("intruder"),
        "expired": pki.expired_client("old-client"),
    }[kind]
    assert refused(pki, tls_server.tls_address, client_context(pki, pair))
    reason = {
        "no certificate": "did not return a certificate",
        "unknown CA": "unable to get local issuer certificate",
        "expired": "certificate has expired",
    }[kind]
    g.wait_for(
        lambda: (
            f"TLS handshake with 127.0.0.1 failed: certificate verify failed: {reason}"
            in tls_server.server.stderr_text()
            or f"TLS handshake with 127.0.0.1 failed: peer {reason}"
            in tls_server.server.stderr_text()
        ),
        what=f"a WARNING naming the peer and {reason!r}",
    )
    assert tls_connect("web-1").admin("version").startswith("OK ")  # still serving


def test_a_stalled_handshake_is_cut_without_stalling_others(
    tls_server: TLSServer, tls_connect: Callable[..., g.Conn], func_name: bytes
) -> None:
    host, _, port = tls_server.tls_address.rpartition(":")
    stalled = [socket.create_connection((host, int(port)), timeout=5) for _ in range(4)]
    try:
        stalled[0].sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        # meanwhile everyone else is served at once
        worker = g.worker(tls_connect("worker-1"), func_name)
        client = tls_connect("web-1")
        handle = g.submit(client, func_name, b"x")
        assert g.grab_job(worker)[0] == handle
        for s in stalled:  # cut after --tls-handshake-timeout 1
            s.settimeout(10)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in stalled:
            s.close()
    assert "TLS handshake with 127.0.0.1 failed: not finished within 1 s" in (
        tls_server.server.stderr_text()
    )


def test_plain_text_on_the_tls_port_is_refused(tls_server: TLSServer) -> None:
    host, _, port = tls_server.tls_address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"version\r\n")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"OK")


def test_certificate_optional_lets_anonymous_clients_in(
    pki: Pki, start_server: Callable[..., Server], func_name: bytes
) -> None:
    port = free_port()
    start_server(*tls_args(pki, "--tls-port", str(port), "--tls-client-cert", "optional"))
    address = f"127.0.0.1:{port}"
    with g.Conn(address, tls=client_context(pki, None)) as anonymous:
        assert anonymous.admin("version").startswith("OK ")
    with g.Conn(address, tls=client_context(pki, pki.client("web-1"))) as named:
        assert named.admin("version").startswith("OK ")
    # a certificate that is sent is still verified
    assert refused(pki, address, client_context(pki, pki.foreign_client("intruder")))


def test_tls_on_the_main_port(pki: Pki, start_server: Callable[..., Server]) -> None:
    ctx = client_context(pki, pki.client("admin"))
    srv = start_server(*tls_args(pki), tls=ctx)  # the readiness check speaks TLS
    with g.Conn(srv.address, tls=ctx) as c:
        assert c.admin("version").startswith("OK ")
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        s.sendall(b"version\r\n")
        s.settimeout(5)
        try:
            assert not s.recv(100).startswith(b"OK")
        except ConnectionResetError:
            pass


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tls-cert", "/nonexistent/cert.pem"), "cannot load tls-cert"),
        (("--tls-client-cert", "required"), "needs tls-ca"),
        (("--tls-port", "4999"), "tls-port needs tls-cert"),
    ],
)
def test_bad_tls_settings_exit_2_with_one_line(
    pki: Pki, args: tuple[str, ...], message: str
) -> None:
    if args[0] == "--tls-client-cert":
        args = ("--tls-cert", pki.server.cert, "--tls-key", pki.server.key, *args)
    r = subprocess.run(
        [sys.executable, "-m", "shardgear", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_key_that_does_not_match_the_certificate(pki: Pki) -> None:
    other = pki.client("someone-else")
    r = subprocess.run(
        [sys.executable, "-m", "shardgear", "--tls-cert", pki.server.cert, "--tls-key", other.key],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 2 and "key values mismatch" in r.stderr, r.stderr
