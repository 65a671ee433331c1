"""Other projects' clients over TLS: the PyPI `gear` library's own functional tests in their TLS
scenario, and Perl Gearman::Client / Gearman::Worker with their SSL options.

gear's `TestFunctional` (``ssl`` scenario) makes a root CA and certificates for the server, a
client and a worker with pyOpenSSL, and starts ``gear.Server(0, key, cert, ca)``; here that server
is shardgear, started with the same three files (`ShardgearServer`), and gear's test methods run
unchanged against it.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.certs import Pki, make_pki
from tests.conftest import IS_GEARMAND, Server, free_port
from tests.interop import tools

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(IS_GEARMAND, reason="shardgear's TLS flags"),
    pytest.mark.filterwarnings("ignore:notifyAll:DeprecationWarning"),  # gear on 3.11
    # gear's tests call pyOpenSSL's X509 API and ssl.PROTOCOL_TLS, both deprecated
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _gear_functional() -> Any:
    try:
        import fixtures  # noqa: F401
        import OpenSSL  # noqa: F401
        import testresources  # noqa: F401
        import testscenarios  # noqa: F401
        from gear.tests import test_functional
    except ImportError as exc:
        tools.missing(f"gear's functional tests need the test extra ({exc})")
        raise
    return test_functional


class ShardgearServer:
    """Stands in for ``gear.Server(port, ssl_key, ssl_cert, ssl_ca)`` in gear's tests: shardgear
    with TLS on a port of its own (required client certificates, signed by `ssl_ca`)."""

    def __init__(
        self, port: int = 0, ssl_key: str = "", ssl_cert: str = "", ssl_ca: str = "", **_: Any
    ) -> None:
        assert ssl_key and ssl_cert and ssl_ca, "only gear's TLS scenario runs here"
        last: Exception | None = None
        for _attempt in range(3):
            self.port = free_port()
            args = ("--tls-cert", ssl_cert, "--tls-key", ssl_key, "--tls-ca", ssl_ca)
            args += ("--tls-port", str(self.port), "--tls-listen", "127.0.0.1")
            try:
                self.server = Server(args).start()
                ShardgearServer.started.append(self)
                return
            except RuntimeError as exc:
                last = exc
        raise AssertionError(f"shardgear did not start: {last}")

    started: list[ShardgearServer] = []  # every one is stopped when its test ends

    def shutdown(self) -> None:
        self.server.stop()


def _gear_tls_case() -> type:
    gear_tests = _gear_functional()
    import gear

    class GearFunctionalTLS(gear_tests.TestFunctional):  # type: ignore[misc,name-defined]
        """gear's TestFunctional, scenario ``ssl``, against shardgear."""

        ssl = True

        def setUp(self) -> None:
            original = gear.Server
            gear.Server = ShardgearServer  # gear's setUp builds its server through this name
            try:
                super().setUp()
            finally:
                gear.Server = original
            self.addCleanup(self.server.shutdown)
            self.addCleanup(self.worker.shutdown)
            self.addCleanup(lambda: getattr(self, "client", None) and self.client.shutdown())

    return GearFunctionalTLS


@pytest.mark.parametrize(
    "method", ["test_job", "test_bg_job", "test_worker_termination", "test_text_job_name"]
)
def test_gear_functional_tests_over_tls(method: str) -> None:
    """Each of gear's TestFunctional tests, in its TLS scenario, passes against shardgear."""
    import unittest

    case = _gear_tls_case()(method)
    result = unittest.TestResult()
    try:
        case.run(result)
    finally:  # also when gear's setUp failed before its cleanups were registered
        while ShardgearServer.started:
            ShardgearServer.started.pop().shutdown()
    problems = [text for _test, text in result.errors + result.failures]
    assert result.testsRun == 1 and not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------- Perl


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[tuple[Server, int]]:
    port = free_port()
    args = ("--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-ca", pki.ca)
    srv = Server((*args, "--tls-port", str(port), "--tls-listen", "127.0.0.1")).start()
    try:
        yield srv, port
    finally:
        srv.stop()


PERL_TLS = r"""
use strict; use warnings;
use Gearman::Client; use Gearman::Worker;
my ($port, $ca, $wcert, $wkey, $ccert, $ckey, $func) = @ARGV;
sub server { my ($cert, $key) = @_;
    return { host => "127.0.0.1", port => $port, use_ssl => 1, ca_file => $ca,
             cert_file => $cert, key_file => $key,
             socket_cb => sub { $_[0]->{SSL_verifycn_name} = "localhost" } } }
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0) {
    my $worker = Gearman::Worker->new(job_servers => [server($wcert, $wkey)]);
    $worker->register_function($func => sub { return scalar reverse $_[0]->arg });
    $worker->work(stop_if => sub { $_[0] }) for 1 .. 2;
    exit 0;
}
my $client = Gearman::Client->new(job_servers => [server($ccert, $ckey)]);
for my $word ("hello over tls", "x" x 70000) {
    my $result = $client->do_task($func => $word, { timeout => 20 });
    die "no result for a job" unless defined $result;
    die "wrong result" unless $$result eq scalar reverse $word;
}
waitpid($pid, 0);
die "worker exited with $?" if $?;
print "ok\n";
"""


def test_perl_client_and_worker_over_mutual_tls(
    pki: Pki, tls_server: tuple[Server, int], tmp_path: Path
) -> None:
    tools.require_perl()
    r = subprocess.run(["perl", "-MIO::Socket::SSL", "-e", "1"], capture_output=True, timeout=30)
    if r.returncode != 0:
        tools.missing("IO::Socket::SSL (libio-socket-ssl-perl) is not installed")
    _srv, port = tls_server
    worker, client = pki.client("perl-worker"), pki.client("perl-client")
    script = tmp_path / "tls.pl"
    script.write_text(PERL_TLS)
    func = f"perl-tls-{uuid.uuid4().hex[:12]}"
    args = [str(port), pki.ca, worker.cert, worker.key, client.cert, client.key, func]
    r = subprocess.run(
        ["perl", str(script), *args],
        capture_output=True,
        text=True,
        timeout=tools.TIMEOUT,
        env={**os.environ, "PERL_HASH_SEED": "0"},
        start_new_session=True,
    )
    assert r.returncode == 0 and r.stdout == "ok\n", r.stdout + r.stderr


def test_perl_client_without_a_certificate_is_refused(
    pki: Pki, tls_server: tuple[Server, int], tmp_path: Path
) -> None:
    tools.require_perl()
    _srv, port = tls_server
    script = tmp_path / "anon.pl"
    script.write_text(
        r"""
use strict; use warnings; use Gearman::Client;
my ($port, $ca) = @ARGV;
my $client = Gearman::Client->new(job_servers => [{ host => "127.0.0.1", port => $port,
    use_ssl => 1, ca_file => $ca,
    socket_cb => sub { $_[0]->{SSL_verifycn_name} = "localhost" } }]);
my $handle = eval { $client->dispatch_background("anything" => "x") };
print defined $handle ? "submitted\n" : "refused\n";
"""
    )
    r = subprocess.run(
        ["perl", str(script), str(port), pki.ca],
        capture_output=True,
        text=True,
        timeout=tools.TIMEOUT,
        start_new_session=True,
    )
    assert r.stdout == "refused\n", r.stdout + r.stderr
