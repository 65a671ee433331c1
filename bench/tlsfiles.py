"""Throw-away certificates for benchmarks over TLS (the `cryptography` package of the test extra):
a CA, a server certificate for 127.0.0.1/localhost and a client certificate, in a directory."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make(directory: str) -> TLSFiles:
    """Write the files into `directory` (EC P-256 keys, SHA-256, valid for a day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    d = Path(directory)

    def write(name: str, cert: Any, key: Any) -> tuple[str, str]:
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(d / f"{name}.crt"), str(d / f"{name}.key")

    def build(cn: str, issuer: Any, issuer_key: Any, key: Any, ca: bool, sans: list[Any]) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench-ca")])
    ca_cert = build("bench-ca", ca_name, ca_key, ca_key, True, [])
    ca, _ = write("ca", ca_cert, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = write(
        "server", build("localhost", ca_name, ca_key, server_key, False, sans), server_key
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = write(
        "client", build("bench-client", ca_name, ca_key, client_key, False, []), client_key
    )
    return TLSFiles(ca, server[0], server[1], client[0], client[1])
