"""Throwaway certificates for `ggap cluster up --tls`: one CA, a certificate per node and
one for the CLI, all under DATA_DIR/tls. For a local secure cluster only: the CA key sits
next to the certificates (mode 0600) and nothing here is meant for production PKI.

Node certificates carry both serverAuth and clientAuth, because a node presents the same
certificate as the peer-port listener, as the peer-port dialer, on its client port and
when it calls another node's client port (README "Running securely").
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import attrs

VALID_DAYS = 365
TLS_DIR = "tls"


@attrs.frozen
class ClusterCerts:
    """Where `ensure_cluster_certs` put the files."""

    directory: Path
    ca_file: Path
    client_cert: Path
    client_key: Path

    def node_cert(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.pem"

    def node_key(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.key"


def _san(hosts: Sequence[str]) -> list[object]:
    from cryptography import x509

    names: list[object] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: object) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _write_cert(path: Path, cert: object) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))  # type: ignore[attr-defined]


def generate_cluster_certs(directory: Path, node_ids: Sequence[int], host: str) -> ClusterCerts:
    """A fresh CA, node<i>.pem/.key for each node (SANs: `host`, localhost, 127.0.0.1, ::1)
    and client.pem/.key, valid VALID_DAYS days; overwrites what was there."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ggap cluster up --tls"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("ggap throwaway CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, usages: list[x509.ObjectIdentifier], hosts: Sequence[str]) -> tuple[object, object]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san(hosts)),  # type: ignore[arg-type]
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    certs = ClusterCerts(
        directory=directory,
        ca_file=directory / "ca.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    _write_cert(certs.ca_file, ca)
    _write_key(directory / "ca.key", ca_key)
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    for node_id in node_ids:
        cert, key = leaf(f"node{node_id}", both, [host, "localhost", "127.0.0.1", "::1"])
        _write_cert(certs.node_cert(node_id), cert)
        _write_key(certs.node_key(node_id), key)
    cert, key = leaf("ggap-client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    _write_cert(certs.client_cert, cert)
    _write_key(certs.client_key, key)
    return certs


def ensure_cluster_certs(data_dir: Path, node_ids: Sequence[int], host: str) -> tuple[ClusterCerts, bool]:
    """The certificates in DATA_DIR/tls, reused when every file is there and usable (a
    restarted cluster keeps its CA, so clients' --cacert stays valid), else made anew.
    Returns them and whether they were generated now."""
    from ggap.tls import TlsFileError, client_context, server_context

    directory = data_dir / TLS_DIR
    certs = ClusterCerts(directory, directory / "ca.pem", directory / "client.pem", directory / "client.key")
    try:
        for node_id in node_ids:
            server_context(str(certs.node_cert(node_id)), str(certs.node_key(node_id)), str(certs.ca_file))
        client_context(str(certs.ca_file), str(certs.client_cert), str(certs.client_key))
    except TlsFileError:
        return generate_cluster_certs(directory, node_ids, host), True
    return certs, False
