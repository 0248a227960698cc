"""Throwaway certificates for `ggap cluster up --tls`, all under DATA_DIR/tls. For a local
secure cluster only: the CA keys sit next to the certificates (mode 0600) and nothing here
is meant for production PKI.

Two CAs, so that a client certificate can never open a peer connection (the peer port
accepts any certificate chaining to its trusted CA):
- ca.pem, the client CA: signs each node's client-port certificate (node<i>.pem) and the
  CLI's client.pem. It is what clients verify the nodes with.
- peer-ca.pem, the peer CA: signs only the nodes' peer certificates (node<i>-peer.pem,
  serverAuth and clientAuth: a node presents it as peer-port listener and dialer, and as
  its client certificate when it calls another node's client port). It is the peer port's
  trusted CA.
- client-port-ca.pem = ca.pem + peer-ca.pem: the client port's trusted CA file, which
  verifies clients (client CA) and nodes calling it (peer CA), and which a node uses to
  verify the other nodes' client ports (README "Running securely").
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

    @property
    def ca_file(self) -> Path:
        """The client CA: what clients verify the nodes' client ports with."""
        return self.directory / "ca.pem"

    @property
    def peer_ca_file(self) -> Path:
        """The peer CA: the peer port's only trusted CA."""
        return self.directory / "peer-ca.pem"

    @property
    def client_port_ca_file(self) -> Path:
        """Client CA + peer CA: the nodes' tls.trusted_ca_file."""
        return self.directory / "client-port-ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def node_cert(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.pem"

    def node_key(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}.key"

    def node_peer_cert(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}-peer.pem"

    def node_peer_key(self, node_id: int) -> Path:
        return self.directory / f"node{node_id}-peer.key"


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
    """Fresh client and peer CAs, node<i>.pem/.key (client port) and node<i>-peer.pem/.key
    (peer port) for each node (SANs: `host`, localhost, 127.0.0.1, ::1) and client.pem/.key,
    valid VALID_DAYS days; overwrites what was there."""
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

    def make_ca(cn: str) -> tuple[x509.Name, object, object]:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = name(cn)
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
        return ca_name, ca_key, ca

    def leaf(
        issuer: tuple[x509.Name, object, object],
        cn: str,
        usages: list[x509.ObjectIdentifier],
        hosts: Sequence[str],
    ) -> tuple[object, object]:
        ca_name, ca_key, _ca = issuer
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
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[attr-defined]
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_san(hosts)),  # type: ignore[arg-type]
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key  # type: ignore[arg-type]

    certs = ClusterCerts(directory=directory)
    client_ca = make_ca("ggap throwaway client CA")
    peer_ca = make_ca("ggap throwaway peer CA")
    _write_cert(certs.ca_file, client_ca[2])
    _write_key(directory / "ca.key", client_ca[1])
    _write_cert(certs.peer_ca_file, peer_ca[2])
    _write_key(directory / "peer-ca.key", peer_ca[1])
    certs.client_port_ca_file.write_bytes(certs.ca_file.read_bytes() + certs.peer_ca_file.read_bytes())
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    hosts = [host, "localhost", "127.0.0.1", "::1"]
    for node_id in node_ids:
        cert, key = leaf(client_ca, f"node{node_id}", [server], hosts)
        _write_cert(certs.node_cert(node_id), cert)
        _write_key(certs.node_key(node_id), key)
        cert, key = leaf(peer_ca, f"node{node_id}", [server, client], hosts)
        _write_cert(certs.node_peer_cert(node_id), cert)
        _write_key(certs.node_peer_key(node_id), key)
    cert, key = leaf(client_ca, "ggap-client", [client], [])
    _write_cert(certs.client_cert, cert)
    _write_key(certs.client_key, key)
    return certs


def ensure_cluster_certs(data_dir: Path, node_ids: Sequence[int], host: str) -> tuple[ClusterCerts, bool]:
    """The certificates in DATA_DIR/tls, reused when every file is there and usable (a
    restarted cluster keeps its CA, so clients' --cacert stays valid), else made anew.
    Returns them and whether they were generated now."""
    from ggap.tls import TlsFileError, client_context, server_context

    directory = data_dir / TLS_DIR
    certs = ClusterCerts(directory)
    try:
        for node_id in node_ids:
            cert, key = certs.node_cert(node_id), certs.node_key(node_id)
            server_context(str(cert), str(key), str(certs.client_port_ca_file))
            peer_cert, peer_key = certs.node_peer_cert(node_id), certs.node_peer_key(node_id)
            server_context(str(peer_cert), str(peer_key), str(certs.peer_ca_file))
        client_context(str(certs.ca_file), str(certs.client_cert), str(certs.client_key))
    except TlsFileError:  # missing, expired, or from before the peer CA existed
        return generate_cluster_certs(directory, node_ids, host), True
    return certs, False
