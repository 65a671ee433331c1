"""Certificates made by the tests (the `cryptography` package): a CA, certificates it signs for the
server and for clients, an expired client certificate, and a second CA the server does not know.

`make_pki(directory)` writes PEM files and returns their paths; `client_context` builds the
`ssl.SSLContext` a test client uses.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_KEY_PEM = serialization.PrivateFormat.TraditionalOpenSSL


@dataclass(frozen=True)
class Pair:
    cert: str
    key: str


@dataclass(frozen=True)
class Pki:
    ca: str  # the CA that signs the server's and the clients' certificates
    server: Pair  # CN shardgear-test, SAN DNS localhost, IP 127.0.0.1
    other_ca: str  # a CA the server does not trust
    directory: Path

    def client(self, name: str) -> Pair:
        """A client certificate (CN `name`, SAN DNS `name`) signed by the trusted CA."""
        return _issue(self.directory, name, self.ca, client=True)

    def expired_client(self, name: str) -> Pair:
        return _issue(self.directory, name, self.ca, client=True, expired=True)

    def foreign_client(self, name: str) -> Pair:
        """A client certificate signed by a CA the server does not trust."""
        return _issue(self.directory, name, self.other_ca, client=True)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, _KEY_PEM, serialization.NoEncryption())
    )


def _make_ca(directory: Path, name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / f"{name}.key", key)
    return str(directory / f"{name}.crt")


def _issue(
    directory: Path, name: str, ca_path: str, *, client: bool, expired: bool = False
) -> Pair:
    ca_cert = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
    ca_key = serialization.load_pem_private_key(
        Path(ca_path[: -len(".crt")] + ".key").read_bytes(), None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    if expired:
        start, end = _now() - datetime.timedelta(days=10), _now() - datetime.timedelta(days=1)
    else:
        start, end = _now() - datetime.timedelta(days=1), _now() + datetime.timedelta(days=30)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    if not client:
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    stem = directory / (name + (".expired" if expired else "") + f".{Path(ca_path).stem}")
    cert_path, key_path = Path(f"{stem}.crt"), Path(f"{stem}.key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return Pair(str(cert_path), str(key_path))


def make_pki(directory: Path) -> Pki:
    """Write a CA, a server certificate it signs, and a second, untrusted CA into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "test-ca")
    other = _make_ca(directory, "other-ca")
    server = _issue(directory, "localhost", ca, client=False)
    return Pki(ca=ca, server=server, other_ca=other, directory=directory)


def client_context(pki: Pki, pair: Pair | None) -> ssl.SSLContext:
    """A client context that trusts the test CA and presents `pair` (None: no certificate)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    return ctx
