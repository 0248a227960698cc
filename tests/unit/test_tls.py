"""ggap/tls.py (file checks, contexts), the [tls]/[peer_tls] config rules, and TLS on the
gRPC adapter and the peer transport, in process. Certificates come from trustme, made
fresh in tmp_path: none is committed."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import random
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from ggap.client import ClientError, open_connection
from ggap.config import ConfigError, load_config
from ggap.config.model import PeerTlsConfig, TlsConfig
from ggap.rpc import HealthService, ServerTls, serve_grpc
from ggap.tls import (
    PeerIdentity,
    TlsFileError,
    check_certificates,
    client_context,
    node_tls,
    server_context,
)
from ggap.transport import PeerTransport
from tests.unit.test_transport import CLUSTER, FAST, LOCAL, Inbox, msg, start, wait_until


class Pki:
    """A CA and leaf certificates written as PEM files into one directory."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.dir = directory
        self.name = name
        self.ca = trustme.CA()
        self.ca_file = self._write(f"{name}.pem", self.ca.cert_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def leaf(self, name: str, *identities: str, **kw: object) -> tuple[str, str]:
        cert = self.ca.issue_cert(*(identities or ("127.0.0.1", "localhost")), **kw)  # type: ignore[arg-type]
        chain = b"".join(p.bytes() for p in cert.cert_chain_pems)
        return (
            self._write(f"{self.name}-{name}.pem", chain),
            self._write(f"{self.name}-{name}.key", cert.private_key_pem.bytes()),
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, "ca")


@pytest.fixture
def other(tmp_path: Path) -> Pki:
    return Pki(tmp_path, "other")


# --- file checks -----------------------------------------------------------------------------


def test_good_files_make_contexts(pki: Pki) -> None:
    cert, key = pki.leaf("node")
    assert check_certificates(cert) == 1
    ctx = server_context(cert, key, pki.ca_file, require_client_cert=True)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    client = client_context(pki.ca_file, cert, key)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED


def test_missing_file_is_named(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(TlsFileError, match=r"nope\.pem: certificate file not found"):
        check_certificates(missing)
    cert, _key = pki.leaf("node")
    with pytest.raises(TlsFileError, match=r"nope\.pem: key file not found"):
        server_context(cert, missing)
    with pytest.raises(TlsFileError, match=r"nope\.pem: CA certificate file not found"):
        client_context(missing)


def test_unreadable_file_is_named(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = pki.leaf("node")
    if os.geteuid() == 0:  # root reads any file: make the read fail as it would for others
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if str(self) == key:
                raise PermissionError(13, "Permission denied")
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    else:
        os.chmod(key, 0)
    with pytest.raises(TlsFileError, match=r"ca-node\.key: cannot read the key file: Permission denied"):
        server_context(cert, key)


def test_directory_is_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsFileError, match="is a directory"):
        client_context(str(tmp_path))


def test_not_pem_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(TlsFileError, match=r"junk\.pem: no PEM certificate"):
        check_certificates(str(junk))


def test_expired_and_future_certificates_are_named(pki: Pki) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old_cert, old_key = pki.leaf(
        "old", not_before=now - datetime.timedelta(days=10), not_after=now - datetime.timedelta(days=1)
    )
    with pytest.raises(TlsFileError, match=r"ca-old\.pem: certificate .* expired on"):
        server_context(old_cert, old_key)
    new_cert, new_key = pki.leaf(
        "new", not_before=now + datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=10)
    )
    with pytest.raises(TlsFileError, match=r"ca-new\.pem: certificate .* is not valid before"):
        client_context(pki.ca_file, new_cert, new_key)


def test_key_of_another_certificate_is_named(pki: Pki) -> None:
    cert, _ = pki.leaf("a")
    _, other_key = pki.leaf("b")
    with pytest.raises(
        TlsFileError, match=r"ca-b\.key: the key does not match the certificate in .*ca-a\.pem"
    ):
        server_context(cert, other_key)


def test_encrypted_key_is_refused_without_prompting(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key = pki.leaf("enc")
    loaded = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
    Path(key).write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TlsFileError, match=r"ca-enc\.key: the key is encrypted"):
        server_context(cert, key)


def test_node_tls_uses_the_peer_certificate_for_node_to_node_calls(pki: Pki) -> None:
    cert, key = pki.leaf("client-port")
    p_cert, p_key = pki.leaf("peer")
    both = node_tls(
        TlsConfig(cert_file=cert, key_file=key, trusted_ca_file=pki.ca_file, client_cert_auth=True),
        PeerTlsConfig(cert_file=p_cert, key_file=p_key, trusted_ca_file=pki.ca_file),
    )
    assert both.client_port is not None and both.node_client is not None
    assert both.peer_server is not None and both.peer_client is not None
    assert node_tls(TlsConfig(), PeerTlsConfig()).client_port is None


# --- config ------------------------------------------------------------------------------------


def test_config_keys_and_env(tmp_path: Path) -> None:
    env = {
        "GINNUNGAGAP_TLS__CERT_FILE": "/c.pem",
        "GINNUNGAGAP_TLS__KEY_FILE": "/c.key",
        "GINNUNGAGAP_TLS__TRUSTED_CA_FILE": "/ca.pem",
        "GINNUNGAGAP_TLS__CLIENT_CERT_AUTH": "true",
        "GINNUNGAGAP_PEER_TLS__CERT_FILE": "/p.pem",
        "GINNUNGAGAP_PEER_TLS__KEY_FILE": "/p.key",
        "GINNUNGAGAP_PEER_TLS__TRUSTED_CA_FILE": "/pca.pem",
    }
    cfg = load_config(env=env)
    assert cfg.tls == TlsConfig("/c.pem", "/c.key", "/ca.pem", True)
    assert cfg.peer_tls == PeerTlsConfig("/p.pem", "/p.key", "/pca.pem")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"tls.cert_file": "/c.pem"}, "tls.key_file: must be set when tls.cert_file is"),
        ({"tls.key_file": "/c.key"}, "tls.cert_file: must be set when tls.key_file is"),
        ({"tls.client_cert_auth": "true"}, "tls.cert_file: must be set when tls.client_cert_auth"),
        (
            {"tls.client_cert_auth": "true", "tls.cert_file": "/c", "tls.key_file": "/k"},
            "tls.trusted_ca_file: must be set when tls.client_cert_auth",
        ),
        ({"peer_tls.cert_file": "/p.pem"}, "peer_tls.key_file: must be set with the other peer_tls keys"),
    ],
)
def test_config_refuses_half_tls(overrides: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides=overrides)
    assert any(problem in e for e in info.value.errors), info.value.errors


# --- the gRPC adapter ----------------------------------------------------------------------------


async def _serve(nursery: trio.Nursery, ctx: ssl.SSLContext, handshake_timeout_s: float = 5.0) -> str:
    health = HealthService()
    health.set_status("", True)
    port = await nursery.start(
        functools.partial(
            serve_grpc,
            [health.service],
            LOCAL,
            0,
            max_message_bytes=1 << 20,
            tls=ServerTls(ctx, handshake_timeout_s),
        )
    )
    return f"{LOCAL}:{port}"


async def test_grpc_tls_refusals_are_logged_and_others_keep_being_served(
    nursery: trio.Nursery, pki: Pki, other: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = pki.leaf("server")
    c_cert, c_key = pki.leaf("client", "client")
    f_cert, f_key = other.leaf("client", "client")
    with trio.fail_after(30):
        addr = await _serve(nursery, server_context(cert, key, pki.ca_file, require_client_cert=True), 0.5)
        good = client_context(pki.ca_file, c_cert, c_key)
        # A client that connects and says nothing holds only its own connection...
        silent = await trio.open_tcp_stream(LOCAL, int(addr.rpartition(":")[2]))
        caplog.set_level(logging.DEBUG, "ggap.rpc.server")
        for ctx in (client_context(pki.ca_file), client_context(pki.ca_file, f_cert, f_key), None):
            with pytest.raises(ClientError):
                async with open_connection(addr, timeout_s=1.0, ssl_context=ctx) as client:
                    await client.health()
        async with open_connection(addr, timeout_s=2.0, ssl_context=good) as client:
            assert (await client.health()).status == 1  # SERVING, while `silent` still hangs
        await wait_until(lambda: "handshake timed out" in caplog.text)  # ...for 0.5 s
        await silent.aclose()
    refusals = [r.getMessage() for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in m for m in refusals), refusals
    assert any("certificate verify failed" in m for m in refusals), refusals
    assert any("WRONG_VERSION_NUMBER" in m or "HTTP_REQUEST" in m for m in refusals), refusals
    assert all(f"from {LOCAL}:" in m for m in refusals)


async def test_grpc_tls_negotiates_h2_and_tls12_or_newer(nursery: trio.Nursery, pki: Pki) -> None:
    cert, key = pki.leaf("server")
    with trio.fail_after(10):
        addr = await _serve(nursery, server_context(cert, key))
        host, port = addr.split(":")
        tcp = await trio.open_tcp_stream(host, int(port))
        ctx = client_context(pki.ca_file)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        stream = trio.SSLStream(tcp, ctx, server_hostname=host)
        await stream.do_handshake()
        assert stream.selected_alpn_protocol() == "h2"
        assert stream.version() == "TLSv1.2"
        await stream.aclose()
        old = client_context(pki.ca_file)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        tcp = await trio.open_tcp_stream(host, int(port))
        with pytest.raises(trio.BrokenResourceError):
            await trio.SSLStream(tcp, old, server_hostname=host).do_handshake()


# --- the peer transport --------------------------------------------------------------------------


def _transport(
    node_id: int,
    inbox: Inbox,
    p: Pki,
    *,
    identity: PeerIdentity = PeerIdentity(),
    leaf: tuple[str, str] | None = None,
) -> PeerTransport:
    cert, key = leaf or p.leaf(f"n{node_id}", "127.0.0.1", "localhost", common_name=f"node{node_id}")
    return PeerTransport(
        node_id=node_id,
        cluster_id=CLUSTER,
        listen=(LOCAL, 0),
        peers={},
        on_messages=inbox,
        config=FAST,
        rng=random.Random(node_id),
        server_tls=server_context(cert, key, p.ca_file, require_client_cert=True, alpn=()),
        client_tls=client_context(p.ca_file, cert, key, alpn=()),
        peer_identity=identity,
    )


async def test_peer_mtls_exchanges_messages_and_refuses_a_foreign_ca_both_ways(
    nursery: trio.Nursery, pki: Pki, other: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ggap.transport.peer")
    with trio.fail_after(20):
        in1, in2, in3 = Inbox(), Inbox(), Inbox()
        t1, t2 = _transport(1, in1, pki), _transport(2, in2, pki)
        intruder = _transport(3, in3, other)
        addrs = {1: await start(nursery, t1), 2: await start(nursery, t2), 3: await start(nursery, intruder)}
        for t in (t1, t2, intruder):
            t.update_peers(addrs)
        t1.send([msg(2, 1, term=7)])
        (got,) = await in2.wait(1)
        assert got.term == 7
        # The intruder dials node 1 (node 1 refuses its certificate) and node 1 dials the
        # intruder (node 1 refuses the listener's certificate): nothing gets through.
        intruder.send([msg(1, 3, term=99)])
        t1.send([msg(3, 1, term=8)])
        await wait_until(lambda: t1.statistics().inbound_rejected >= 1)
        await wait_until(lambda: "TLS" in t1.statistics().peers[3].last_error)
        # Both refusals counted on both listeners, and the intruder redialled and was
        # refused again: its message had its chances and none got through.
        await wait_until(lambda: t1.statistics().inbound_rejected >= 2)
        await wait_until(lambda: intruder.statistics().inbound_rejected >= 1)
        assert intruder.statistics().inbound_accepted == t1.statistics().peers[3].connects == 0
        assert not in1.messages and not in3.messages
        assert not t1.statistics().peers[3].connected
        assert t1.statistics().peers[2].connected
    assert "refused peer connection from" in caplog.text
    assert "certificate verify failed" in caplog.text


async def test_peer_allowed_cn_refuses_a_same_ca_client_certificate_both_ways(
    nursery: trio.Nursery, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """The reviewer's attack: a client certificate of the peers' CA (clientAuth, no node
    CN) dials the peer port with a valid handshake frame. allowed_cn refuses it after the
    TLS handshake, before the frame is read; a node dialling a listener with such a
    certificate refuses it too."""
    caplog.set_level(logging.INFO, "ggap.transport.peer")
    allowed = PeerIdentity(allowed_cn=("node1", "node2"))
    with trio.fail_after(20):
        in1, in2, in3 = Inbox(), Inbox(), Inbox()
        t1 = _transport(1, in1, pki, identity=allowed)
        t2 = _transport(2, in2, pki, identity=allowed)
        client_leaf = pki.leaf("client", "127.0.0.1", common_name="ggap-client")
        forger = _transport(3, in3, pki, leaf=client_leaf)  # accepts anyone of the CA
        addrs = {1: await start(nursery, t1), 2: await start(nursery, t2), 3: await start(nursery, forger)}
        for t in (t1, t2, forger):
            t.update_peers(addrs)
        t1.send([msg(2, 1, term=7)])
        (got,) = await in2.wait(1)
        assert got.term == 7
        forger.send([msg(1, 3, term=99)])
        t1.send([msg(3, 1, term=8)])
        await wait_until(lambda: t1.statistics().inbound_rejected >= 2)
        await wait_until(lambda: "allowed_cn" in t1.statistics().peers[3].last_error)
        assert t1.statistics().peers[3].connects == 0 and not t1.statistics().peers[3].connected
        assert forger.statistics().inbound_accepted == 0  # node 1 never spoke to it
        assert not in1.messages and not in3.messages
        assert t1.statistics().peers[2].connected
    refusals = [r.getMessage() for r in caplog.records if "refused peer connection" in r.getMessage()]
    assert refusals and "certificate not allowed" in refusals[0] and "'ggap-client'" in refusals[0]
    # Logged once (per host and reason; node 2's refusal of the same host repeats it at DEBUG).
    not_allowed = [r for r in caplog.records if "certificate not allowed" in r.getMessage()]
    assert [r.levelno for r in not_allowed].count(logging.WARNING) == 1


def test_peer_identity_matches_cn_and_sans() -> None:
    cert = {
        "subject": ((("organizationName", "o"),), (("commonName", "node1"),)),
        "subjectAltName": (("DNS", "Node1.Example"), ("IP Address", "0:0:0:0:0:0:0:1")),
    }
    assert PeerIdentity().problem(cert) == ""
    assert PeerIdentity(allowed_cn=("node2", "node1")).problem(cert) == ""
    assert "'node1' is not in peer_tls.allowed_cn" in PeerIdentity(allowed_cn=("node2",)).problem(cert)
    assert PeerIdentity(allowed_hostname=("node1.example",)).problem(cert) == ""
    assert PeerIdentity(allowed_hostname=("::1",)).problem(cert) == ""
    assert "match no peer_tls.allowed_hostname" in PeerIdentity(allowed_hostname=("127.0.0.1",)).problem(cert)
    both = PeerIdentity(allowed_cn=("node1",), allowed_hostname=("other",))
    assert "allowed_hostname" in both.problem(cert)
    assert PeerIdentity.from_config(PeerTlsConfig(allowed_cn=" a, b ,")) == PeerIdentity(("a", "b"))


def test_peer_allowed_names_need_peer_tls() -> None:
    with pytest.raises(ConfigError, match=r"peer_tls.cert_file: must be set when peer_tls.allowed_cn is"):
        load_config(env={}, overrides={"peer_tls.allowed_cn": "node1"})


def test_trusted_ca_without_cert_is_refused_not_silently_plaintext(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"tls.cert_file: must be set when tls.trusted_ca_file is"):
        load_config(env={}, overrides={"tls.trusted_ca_file": pki.ca_file})
