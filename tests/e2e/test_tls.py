"""TLS for real: `ggap node` processes with --cert-file/--client-cert-auth and peer mTLS,
reached with grpcio (ssl_channel_credentials), grpcurl, ggap.client (purerpc) and the CLI.

Certificates come from trustme, written fresh into the test's directory (none is
committed). Covers every refusal: plaintext client, no client certificate, a certificate
of another CA, a silent or garbage handshake (the node keeps serving everyone else), bad
files at start (node and CLI exit 2 naming the file), a peer with a foreign-CA certificate
(refused both ways, the cluster keeps its leader and term), and `cluster up --tls`.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trio

from ggap.client import open_connection
from ggap.consensus.raft.types import Message, MessageType
from ggap.pb import kv_pb2, kv_pb2_grpc
from ggap.server.node import cluster_id
from ggap.tls import client_context
from ggap.transport.wire import (
    PURPOSE_RAFT,
    FrameDecoder,
    Handshake,
    decode_reply,
    encode_frame,
    encode_handshake,
    encode_messages,
)
from tests.cluster import FAST_RAFT_ENV, Cluster, wait_until
from tests.procs import CHANNEL_OPTIONS, REPO_ROOT, NodeProcess, free_port, grpcurl_path
from tests.unit.test_tls import Pki

pytestmark = pytest.mark.slow

T = 10.0
KV = "ginnungagap.v1.KvService"


class Creds:
    """One CA's files: a node certificate (127.0.0.1/localhost, server+client use) and a
    client certificate."""

    def __init__(self, directory: Path, name: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(directory, name)
        self.ca = self.pki.ca_file
        self.node_cert, self.node_key = self.pki.leaf(
            "node", "127.0.0.1", "localhost", common_name="ggap-node"
        )
        self.client_cert, self.client_key = self.pki.leaf("client", "ggap-client")

    def node_args(self, *, peer: bool = True, allowed_cn: str = "") -> list[str]:
        args = ["--cert-file", self.node_cert, "--key-file", self.node_key]
        args += ["--trusted-ca-file", self.ca, "--client-cert-auth"]
        if peer:
            args += ["--peer-cert-file", self.node_cert, "--peer-key-file", self.node_key]
            args += ["--peer-trusted-ca-file", self.ca]
        if allowed_cn:
            args += ["--peer-cert-allowed-cn", allowed_cn]
        return args

    def grpc_creds(self, *, with_cert: bool = True, ca: str | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=Path(ca or self.ca).read_bytes(),
            private_key=Path(self.client_key).read_bytes() if with_cert else None,
            certificate_chain=Path(self.client_cert).read_bytes() if with_cert else None,
        )

    def cli_args(self) -> list[str]:
        return ["--cacert", self.ca, "--cert", self.client_cert, "--key", self.client_key]


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="module")
def creds(tmp_module: Path) -> Creds:
    return Creds(tmp_module / "pki", "ca")


@pytest.fixture(scope="module")
def foreign(tmp_module: Path) -> Creds:
    return Creds(tmp_module / "foreign", "foreign")


@pytest.fixture(scope="module")
def tls_node(tmp_module: Path, creds: Creds) -> Iterator[NodeProcess]:
    node = NodeProcess(
        tmp_module / "node1",
        extra_args=creds.node_args(),
        credentials=creds.grpc_creds(),
        env={"GINNUNGAGAP_LIMITS__HANDSHAKE_TIMEOUT_MS": "1000"},
    )
    try:
        node.start_and_wait(30)
        yield node
    finally:
        if node.exited_unexpectedly():
            sys.stderr.write(node.log_tail(80))
        node.close()


def _forge_votes(
    cluster_addr: str, ctx: ssl.SSLContext, *, ids: list[int], to: int, frm: int, term: int
) -> str:
    """The reviewer's attack: open the peer port with `ctx`'s (client) certificate, send a
    valid handshake (the cluster id is computable from the member ids) and a vote request
    at a much higher term. Returns what happened: "accepted" when the node took the
    handshake (the attack would work), else the refusal as this side saw it."""
    host, port = cluster_addr.rsplit(":", 1)
    hello = Handshake(
        cluster_id=cluster_id(dict.fromkeys(ids, "")), from_id=frm, to_id=to, purpose=PURPOSE_RAFT
    )
    vote = Message(type=MessageType.VOTE, to=to, frm=frm, term=term, log_term=term, index=10**9)
    try:
        with socket.create_connection((host, int(port)), timeout=T) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(encode_frame(encode_handshake(hello)))
                tls.sendall(encode_frame(encode_messages([vote])))
                decoder = FrameDecoder(max_frame=1 << 20)
                while (payload := decoder.next_frame()) is None:
                    data = tls.recv(65536)
                    if not data:
                        return "closed"
                    decoder.feed(data)
                reply = decode_reply(payload)
                return "accepted" if reply.accepted else f"rejected: {reply.reason}"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def _dropped(metrics_addr: str, to: int) -> float:
    """ggap_network_peer_sent_failures{To=...} as a node's /metrics reports it (0 if absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=T) as resp:
        text = resp.read().decode()
    m = re.search(rf'^ggap_network_peer_sent_failures(?:_total)?{{To="{to}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _put_get(channel: grpc.Channel, key: str) -> kv_pb2.GetResponse:
    stub = kv_pb2_grpc.KvServiceStub(channel)
    stub.Put(kv_pb2.PutRequest(key=key, value=b"v-" + key.encode()), timeout=T)
    return stub.Get(kv_pb2.GetRequest(key=key), timeout=T)


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        kv_pb2_grpc.KvServiceStub(channel).Get(kv_pb2.GetRequest(key="x"), timeout=3)
    code: grpc.StatusCode = info.value.code()
    return code


# --- one TLS node ------------------------------------------------------------------------------


def test_grpcio_with_client_certificate_and_h2_alpn(tls_node: NodeProcess, creds: Creds) -> None:
    got = _put_get(tls_node.channel(), "grpcio")
    assert got.found and got.kv.value == b"v-grpcio"
    # What grpcio relies on: ALPN h2 over TLS >= 1.2.
    ctx = client_context(creds.ca, creds.client_cert, creds.client_key)
    with socket.create_connection(("127.0.0.1", tls_node.client_port), timeout=T) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_refusals_are_logged_and_the_node_keeps_serving(
    tls_node: NodeProcess, creds: Creds, foreign: Creds
) -> None:
    addr = tls_node.client_addr
    # Held open across the refusals: a silent client and one that sends garbage.
    silent = socket.create_connection(("127.0.0.1", tls_node.client_port), timeout=T)
    garbage = socket.create_connection(("127.0.0.1", tls_node.client_port), timeout=T)
    garbage.sendall(b"\x16\x03\x01\x00\x05hello" + os.urandom(64))
    try:
        with grpc.insecure_channel(addr, options=CHANNEL_OPTIONS) as plain:
            assert _refused(plain) == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(addr, creds.grpc_creds(with_cert=False), options=CHANNEL_OPTIONS) as ch:
            assert _refused(ch) == grpc.StatusCode.UNAVAILABLE
        foreign_client = grpc.ssl_channel_credentials(
            root_certificates=Path(creds.ca).read_bytes(),
            private_key=Path(foreign.client_key).read_bytes(),
            certificate_chain=Path(foreign.client_cert).read_bytes(),
        )
        with grpc.secure_channel(addr, foreign_client, options=CHANNEL_OPTIONS) as ch:
            assert _refused(ch) == grpc.StatusCode.UNAVAILABLE
        # A client that trusts another CA refuses the node (the client verifies, too).
        with grpc.secure_channel(addr, foreign.grpc_creds(), options=CHANNEL_OPTIONS) as ch:
            assert _refused(ch) == grpc.StatusCode.UNAVAILABLE
        # Everyone else is still served, while the silent connection is still open.
        with grpc.secure_channel(addr, creds.grpc_creds(), options=CHANNEL_OPTIONS) as good:
            assert _put_get(good, "after-refusals").found
        wait_until(lambda: "handshake timed out" in tls_node.log_tail(400), 10, "the silent client's refusal")
    finally:
        silent.close()
        garbage.close()
    log = tls_node.log_tail(400)
    refusals = [line for line in log.splitlines() if "refused client connection from 127.0.0.1:" in line]
    assert any("WRONG_VERSION_NUMBER" in line or "HTTP_REQUEST" in line for line in refusals), log
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in line for line in refusals), log
    assert any("certificate verify failed" in line for line in refusals), log
    assert "Traceback" not in log
    assert tls_node.is_running()
    assert _put_get(tls_node.channel(), "still-serving").found


def test_grpcurl_over_tls(tls_node: NodeProcess, creds: Creds) -> None:
    grpcurl = grpcurl_path()
    tls = ["-cacert", creds.ca, "-cert", creds.client_cert, "-key", creds.client_key]
    listed = subprocess.run(
        [grpcurl, *tls, tls_node.client_addr, "list"], capture_output=True, text=True, timeout=30
    )
    assert listed.returncode == 0 and KV in listed.stdout.split(), listed.stdout + listed.stderr
    put = subprocess.run(
        [grpcurl, *tls, "-d", '{"key":"grpcurl","value":"dGxz"}', tls_node.client_addr, f"{KV}/Put"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert put.returncode == 0, put.stderr
    assert int(json.loads(put.stdout)["header"]["revision"]) >= 1
    got = kv_pb2_grpc.KvServiceStub(tls_node.channel()).Get(kv_pb2.GetRequest(key="grpcurl"), timeout=T)
    assert got.kv.value == b"tls"
    no_cert = subprocess.run(
        [grpcurl, "-cacert", creds.ca, tls_node.client_addr, "list"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert no_cert.returncode != 0
    plaintext = subprocess.run(
        [grpcurl, "-plaintext", tls_node.client_addr, "list"], capture_output=True, text=True, timeout=30
    )
    assert plaintext.returncode != 0


def test_purerpc_client_over_tls(tls_node: NodeProcess, creds: Creds) -> None:
    async def main() -> bytes:
        ctx = client_context(creds.ca, creds.client_cert, creds.client_key)
        async with open_connection(tls_node.client_addr, timeout_s=T, ssl_context=ctx) as client:
            await client.put(key="purerpc", value=b"over-tls")
            got = await client.get(key="purerpc")
            events = client.watch(key="purerpc", start_revision=got.kv.mod_revision, idle_timeout_s=T)
            first = await events.__anext__()
            await events.aclose()
            assert first.events[0].kv.value == b"over-tls"
            return bytes(got.kv.value)

    assert trio.run(main) == b"over-tls"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    for name in ("GGAP_CACERT", "GGAP_CERT", "GGAP_KEY", "GGAP_ENDPOINTS"):
        child_env.pop(name, None)
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ggap.cli", *args], capture_output=True, text=True, timeout=60, env=child_env
    )


def test_cli_flags_env_and_bad_files(tls_node: NodeProcess, creds: Creds, tmp_path: Path) -> None:
    ep = ["--endpoints", tls_node.client_addr]
    put = _cli("put", "cli-key", "cli-value", *ep, *creds.cli_args())
    assert put.returncode == 0, put.stderr
    env = {"GGAP_CACERT": creds.ca, "GGAP_CERT": creds.client_cert, "GGAP_KEY": creds.client_key}
    got = _cli("get", "cli-key", *ep, "-o", "json", env=env)
    assert got.returncode == 0, got.stderr
    assert base64.b64decode(json.loads(got.stdout)["kv"]["value"]) == b"cli-value"
    # Refusals at start, exit 2, naming the file.
    missing = str(tmp_path / "missing.pem")
    bad = _cli("get", "cli-key", *ep, "--cacert", missing)
    assert bad.returncode == 2 and "missing.pem" in bad.stderr and "not found" in bad.stderr
    half = _cli("get", "cli-key", *ep, "--cacert", creds.ca, "--cert", creds.client_cert)
    assert half.returncode == 2 and "--cert and --key go together" in half.stderr
    mismatch = _cli(
        "get", "cli-key", *ep, "--cacert", creds.ca, "--cert", creds.client_cert, "--key", creds.node_key
    )
    assert (
        mismatch.returncode == 2 and creds.node_key in mismatch.stderr and "does not match" in mismatch.stderr
    )


# --- refused at start ------------------------------------------------------------------------------


def _expired(creds: Creds) -> tuple[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    return creds.pki.leaf(
        "expired", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )


@pytest.mark.parametrize("case", ["missing", "expired", "mismatched", "expired-peer"])
def test_node_refuses_bad_certificate_files(tmp_path: Path, creds: Creds, case: str) -> None:
    cert, key = creds.node_cert, creds.node_key
    peer = ["--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", creds.ca]
    if case == "missing":
        cert = str(tmp_path / "nope.pem")
        named = cert
    elif case == "expired":
        cert, key = _expired(creds)
        named = cert
    elif case == "mismatched":
        key = creds.client_key
        named = key
    else:
        e_cert, e_key = _expired(creds)
        peer = ["--peer-cert-file", e_cert, "--peer-key-file", e_key, "--peer-trusted-ca-file", creds.ca]
        named = e_cert
    node = NodeProcess(tmp_path / "n", extra_args=["--cert-file", cert, "--key-file", key, *peer])
    try:
        node.start()
        assert node.wait(30) == 2
    finally:
        node.close()
    log = node.log_tail(20)
    assert named in log and "cannot start: TLS:" in log, log
    assert not (tmp_path / "n" / "raft.db").exists()  # refused before touching the data dir


# --- a 3-node cluster ----------------------------------------------------------------------------


def test_mtls_cluster_forwards_writes_and_refuses_a_foreign_peer(
    tmp_path: Path, creds: Creds, foreign: Creds
) -> None:
    """One CA for everything, as many deployments have: --peer-cert-allowed-cn is what keeps
    that CA's client certificate off the peer port."""
    cluster = Cluster(
        tmp_path,
        3,
        proxied=False,
        extra_args=creds.node_args(allowed_cn="ggap-node"),
        credentials=creds.grpc_creds(),
    )
    intruder: NodeProcess | None = None
    try:
        cluster.start(30)
        leader = cluster.wait_leader(timeout=30)
        term = cluster.status(leader).raft_term
        follower = next(i for i in cluster.ids if i != leader)
        # A write sent to a follower is forwarded to the leader's client port, which
        # requires a client certificate: the follower presents its own.
        put = cluster.put(follower, "forwarded", b"through-tls")
        assert put.header.revision >= 1
        got = cluster.get(leader, "forwarded")
        assert got.found and got.kv.value == b"through-tls"

        # A node with a certificate from another CA, configured as a 4th member, campaigns
        # and dials every peer: each refuses it at the TLS handshake, and it refuses them.
        members = {i: n.cluster_addr for i, n in cluster.nodes.items()}
        intruder = NodeProcess(tmp_path / "intruder", node_id=4, env=FAST_RAFT_ENV)
        members[4] = intruder.cluster_addr
        peers = ",".join(f"{i}={a}" for i, a in sorted(members.items()))
        metrics = f"127.0.0.1:{free_port()}"
        intruder.extra_args = ["--peers", peers, "--metrics-addr", metrics, *foreign.node_args()]
        intruder.start()
        wait_until(
            lambda: all("refused peer connection from" in n.log_tail(300) for n in cluster.nodes.values()),
            20,
            "every member to log the intruder's refusal",
        )
        wait_until(
            lambda: "certificate verify failed" in intruder.log_tail(300), 10, "the intruder's refusal"
        )
        # The intruder campaigns and redials after each refusal; its own counter of
        # messages it could not deliver to each member grows: once it has lost several
        # to each, its votes had their chances. Then nothing may have moved.
        wait_until(
            lambda: all(_dropped(metrics, i) >= 3 for i in cluster.ids),
            20,
            "the intruder's messages to every member to be dropped",
        )
        statuses = cluster.statuses()
        assert {s.leader_id for s in statuses.values()} == {leader}
        assert {s.raft_term for s in statuses.values()} == {term}
        assert cluster.put(leader, "after-intruder", b"ok").header.revision > put.header.revision
        for node in cluster.nodes.values():
            line = next(x for x in node.log_tail(300).splitlines() if "refused peer connection" in x)
            assert "TLS handshake failed" in line and "127.0.0.1:" in line

        # The same CA's client certificate (clientAuth, CN ggap-client) on every member's
        # peer port, with a valid handshake and a vote at term+100: refused after the TLS
        # handshake, before the frame is read.
        forger = client_context(creds.ca, creds.client_cert, creds.client_key, alpn=())
        for i, node in cluster.nodes.items():
            frm = next(j for j in cluster.ids if j != i)
            got = _forge_votes(
                node.cluster_addr, forger, ids=list(cluster.ids), to=i, frm=frm, term=term + 100
            )
            assert got != "accepted", got
            wait_until(
                lambda n=node: "certificate not allowed: certificate CN" in n.log_tail(300),
                10,
                f"node {i} to log the forged peer connection",
            )
        statuses = cluster.statuses()
        assert {s.leader_id for s in statuses.values()} == {leader}
        assert {s.raft_term for s in statuses.values()} == {term}
    finally:
        if intruder is not None:
            intruder.close()
        cluster.close()


def test_join_and_auto_promote_over_tls(tmp_path: Path, creds: Creds) -> None:
    """--join and --auto-promote call a member's client port (client-cert-auth) with the
    node's own credentials; the snapshot that seeds the joiner comes over TLS too."""
    first = NodeProcess(
        tmp_path / "n1",
        node_id=1,
        env=FAST_RAFT_ENV,
        extra_args=creds.node_args(),
        credentials=creds.grpc_creds(),
    )
    second: NodeProcess | None = None
    try:
        first.start_and_wait(30)
        kv = first.kv_stub()
        kv.Put(kv_pb2.PutRequest(key="seeded", value=b"before-join"), timeout=T)
        second = NodeProcess(
            tmp_path / "n2",
            node_id=2,
            env=FAST_RAFT_ENV,
            extra_args=["--join", first.client_addr, "--auto-promote", *creds.node_args()],
            credentials=creds.grpc_creds(),
        )
        second.start_and_wait(60)
        got = second.kv_stub().Get(
            kv_pb2.GetRequest(key="seeded", read_mode=kv_pb2.READ_MODE_EVENTUAL), timeout=T
        )
        assert got.kv.value == b"before-join"
        joined = second

        def promoted() -> bool:
            return joined.cluster_stub().Status(kv_pb2.StatusRequest(), timeout=2).role == "follower"

        wait_until(promoted, 30, "node 2 to be promoted to voter")
        # Two voters, over peer mTLS; a write through node 2 is forwarded over TLS.
        assert second.kv_stub().Put(kv_pb2.PutRequest(key="two", value=b"voters"), timeout=T).header.revision
    finally:
        if second is not None:
            second.close()
        first.close()


# --- cluster up --tls ------------------------------------------------------------------------------


def test_cluster_up_tls(tmp_path: Path) -> None:
    from tests.e2e.test_cluster_up import ClusterUp, _free_base

    base = _free_base(1)
    data = tmp_path / "data"
    up = ClusterUp("--nodes", "1", "--tls", "--data-dir", str(data), "--base-port", str(base))
    try:
        up.expect(r"^TLS: generated a throwaway client CA, a separate peer CA", timeout=20)
        up.expect(r"^ready: 1 node SERVING", timeout=30)
        exports = {}
        for _ in range(4):
            m = up.expect(r"export (GGAP_\w+)=(\S+)", timeout=5)
            exports[m.group(1)] = m.group(2)
        assert set(exports) == {"GGAP_ENDPOINTS", "GGAP_CACERT", "GGAP_CERT", "GGAP_KEY"}
        put = _cli("put", "k", "v", env=exports)
        assert put.returncode == 0, put.stderr
        plain = _cli("get", "k", "--timeout", "2", env={"GGAP_ENDPOINTS": exports["GGAP_ENDPOINTS"]})
        assert plain.returncode != 0
        grpcurl = up.expect(r"^\s+(grpcurl .* list)$", timeout=5).group(1)
        listed = subprocess.run(
            [grpcurl_path(), *grpcurl.split()[1:]], capture_output=True, text=True, timeout=30
        )
        assert listed.returncode == 0 and KV in listed.stdout.split(), listed.stderr
        assert re.search(r"--client-cert-auth", (data / "node1.log").read_text())
        # client.pem on the peer port (its CA is not the peer CA): refused at the TLS
        # handshake by the node, which logs it, and the term does not move.
        tls_dir = data / "tls"
        term = _status_term(exports)
        forger = client_context(
            str(tls_dir / "peer-ca.pem"), exports["GGAP_CERT"], exports["GGAP_KEY"], alpn=()
        )
        got = _forge_votes(f"127.0.0.1:{base + 1}", forger, ids=[1], to=1, frm=2, term=term + 100)
        assert got != "accepted", got
        wait_until(
            lambda: re.search(
                r"refused peer connection from 127\.0\.0\.1:\d+: TLS handshake failed",
                (data / "node1.log").read_text(),
            ),
            10,
            "node 1 to log the refused peer connection",
        )
        assert _status_term(exports) == term
        assert json.loads((data / "cluster.json").read_text())["tls"] is True
        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=20) == 0, up.transcript
    finally:
        up.close()


def _status_term(env: dict[str, str]) -> int:
    out = _cli("status", "--output", "json", env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc if isinstance(doc, list) else [doc]
    return int(rows[0]["raft_term"])


def test_cluster_up_tls_flags_must_match_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cluster.json").write_text(json.dumps({"nodes": 1, "host": "127.0.0.1", "base_port": 21000}))
    out = _cli("cluster", "up", "--tls", "--data-dir", str(data))
    assert out.returncode == 2 and "--tls (it was created with --no-tls)" in out.stderr, out.stderr
