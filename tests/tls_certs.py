"""A throwaway certificate authority and a server certificate it signed, for tests of TLS clients (webhook
deliveries over https) against a server on loopback: nothing here is trusted outside the test that made it."""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class LoopbackCertificates:
    ca_file: Path  # the authority's certificate (PEM): what the client trusts
    ca_key_file: Path  # the authority's private key (PEM), to sign more certificates with
    cert_file: Path  # the server's certificate (PEM), for `dns_name`
    key_file: Path  # the server's private key (PEM)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this authority alone, checking host names as clients do by default."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certificates(
    folder: Path, dns_name: str, authority: LoopbackCertificates | None = None
) -> LoopbackCertificates:
    """A certificate for `dns_name`, valid for a day, signed by `authority`'s CA (a new CA when None), written with
    its key and the CA under `folder`."""
    now = datetime.datetime.now(datetime.UTC)
    if authority is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renderfarm test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
    else:
        loaded = serialization.load_pem_private_key(authority.ca_key_file.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
        ca_cert = x509.load_pem_x509_certificate(authority.ca_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    made = LoopbackCertificates(
        folder / "ca.pem", folder / "ca-key.pem", folder / "server.pem", folder / "server-key.pem"
    )
    made.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    made.ca_key_file.write_bytes(_pem_key(ca_key))
    made.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    made.key_file.write_bytes(_pem_key(key))
    return made
