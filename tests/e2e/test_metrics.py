"""/metrics and /healthz of real `ggap node` processes (`--metrics-addr`), scraped over HTTP
and parsed with prometheus_client's own parser; requests come from a real grpcio client."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from ggap.pb import kv_pb2 as pb
from tests.cluster import Cluster, wait_until
from tests.procs import REPO_ROOT, NodeProcess, free_port, node_command

T = 5.0
N_PUTS = 20

#: Every metric name the brief lists, as the parser reports families (counters lose _total).
EXPECTED_FAMILIES = {
    "ggap_server_has_leader": "gauge",
    "ggap_server_is_leader": "gauge",
    "ggap_server_leader_changes_seen": "counter",
    "ggap_server_proposals_committed_total": "gauge",
    "ggap_server_proposals_applied_total": "gauge",
    "ggap_server_proposals_pending": "gauge",
    "ggap_server_proposals_failed": "counter",
    "ggap_server_forwarded_writes": "counter",
    "ggap_server_requests_rejected": "counter",
    "ggap_server_requests_in_flight": "gauge",
    "ggap_disk_wal_fsync_duration_seconds": "histogram",
    "ggap_disk_backend_commit_duration_seconds": "histogram",
    "ggap_mvcc_db_total_size_in_bytes": "gauge",
    "ggap_mvcc_keys_total": "gauge",
    "ggap_mvcc_watcher_total": "gauge",
    "ggap_sessions_total": "gauge",
    "ggap_mvcc_events": "counter",
    "ggap_network_peer_sent_bytes": "counter",
    "ggap_network_peer_received_bytes": "counter",
    "ggap_network_peer_round_trip_time_seconds": "histogram",
    "ggap_snapshot_save_total_duration_seconds": "histogram",
    "ggap_snapshot_send_total_duration_seconds": "histogram",
    "ggap_snapshot_receive_total_duration_seconds": "histogram",
    "ggap_snapshot_install_duration_seconds": "histogram",
    "grpc_server_started": "counter",
    "grpc_server_handled": "counter",
    "grpc_server_handling_seconds": "histogram",
}

ENV = {
    # Every scrape renders afresh: the tests look for changes at once.
    "GINNUNGAGAP_METRICS__CACHE_MS": "0",
    "GINNUNGAGAP_RAFT__TICK_MS": "20",
    "GINNUNGAGAP_LOG__LEVEL": "info",
    "GINNUNGAGAP_METRICS__HEALTH_APPLY_STALL_MS": "500",
    # One watch at a time: a second one is refused, deterministically.
    "GINNUNGAGAP_LIMITS__MAX_WATCHES": "1",
}


def http_get(addr: str, path: str, timeout: float = T) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def scrape(addr: str) -> dict[str, tuple[str, list[Sample]]]:
    status, text = http_get(addr, "/metrics")
    assert status == 200, text
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)}


def value(families: dict[str, tuple[str, list[Sample]]], sample: str, **labels: str) -> float:
    """The one sample named `sample` whose labels include `labels`."""
    family = next(name for name in families if sample.startswith(name))
    found = [
        s.value
        for s in families[family][1]
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, found)
    return found[0]


def samples(families: dict[str, tuple[str, list[Sample]]], sample: str) -> list[Sample]:
    family = next(name for name in families if sample.startswith(name))
    return [s for s in families[family][1] if s.name == sample]


def _metrics_cluster(path: Path) -> Iterator[tuple[Cluster, dict[int, str]]]:
    c = Cluster(path, 3, env=ENV, proxied=False)
    addrs: dict[int, str] = {}
    for i, node in c.nodes.items():
        addrs[i] = f"127.0.0.1:{free_port()}"
        node.extra_args += ["--metrics-addr", addrs[i]]
    try:
        c.start()
        yield c, addrs
    except BaseException:
        c.dump_logs()
        raise
    finally:
        c.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[int, str]]]:
    yield from _metrics_cluster(tmp_path_factory.mktemp("metrics"))


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, dict[int, str]]]:
    """A cluster of its own, for a test that breaks it."""
    yield from _metrics_cluster(tmp_path)


def leader_of(c: Cluster) -> int:
    def find() -> int:
        leaders = {s.leader_id for s in c.statuses().values() if s is not None}
        return leaders.pop() if len(leaders) == 1 and 0 not in leaders else 0

    return wait_until(find, 10, "one leader everyone agrees on")


def test_cluster_metrics(cluster: tuple[Cluster, dict[int, str]]) -> None:
    c, addrs = cluster
    leader = leader_of(c)
    follower = next(i for i in c.ids if i != leader)
    kv = c.kv(follower)  # forwarded to the leader inside Raft, answered by the follower
    for n in range(N_PUTS):
        kv.Put(pb.PutRequest(key=f"k{n}", value=b"v"), timeout=T)
    # An error code other than OK, labelled as go-grpc-prometheus does.
    with pytest.raises(grpc.RpcError) as bad:
        kv.Put(pb.PutRequest(key="", value=b"v"), timeout=T)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A watch that receives an event, then a second watch refused by limits.max_watches=1.
    with grpc.insecure_channel(c.nodes[follower].client_addr) as channel:
        from ggap.pb import kv_pb2_grpc

        stub = kv_pb2_grpc.KvServiceStub(channel)
        first = stub.Watch(pb.WatchRequest(key="watched"), timeout=30)
        got: list[pb.WatchResponse] = []
        reader = threading.Thread(target=lambda: got.append(next(first)), daemon=True)
        reader.start()
        wait_until(lambda: value(scrape(addrs[follower]), "ggap_mvcc_watcher_total") == 1, 10, "watch open")
        kv.Put(pb.PutRequest(key="watched", value=b"x"), timeout=T)
        reader.join(10)
        assert got and got[0].events, got
        second = stub.Watch(pb.WatchRequest(key="other"), timeout=10)
        with pytest.raises(grpc.RpcError) as refused:
            next(second)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        on_follower = scrape(addrs[follower])
        first.cancel()

    for family, type_ in EXPECTED_FAMILIES.items():
        assert on_follower.get(family, ("missing",))[0] == type_, family
    f = on_follower
    assert value(f, "ggap_mvcc_events_total") >= 1
    watch = {"grpc_method": "Watch", "grpc_service": "ginnungagap.v1.KvService", "grpc_type": "server_stream"}
    assert value(f, "grpc_server_handled_total", grpc_code="ResourceExhausted", **watch) == 1
    assert value(f, "ggap_server_requests_rejected_total", kind="stream") == 1
    assert value(f, "grpc_server_started_total", **watch) >= 2
    put = {"grpc_method": "Put", "grpc_service": "ginnungagap.v1.KvService", "grpc_type": "unary"}
    assert value(f, "grpc_server_handled_total", grpc_code="OK", **put) >= N_PUTS + 1
    assert value(f, "grpc_server_handled_total", grpc_code="InvalidArgument", **put) == 1
    assert value(f, "grpc_server_handling_seconds_count", **put) >= N_PUTS + 2
    assert value(f, "ggap_server_forwarded_writes_total", outcome="applied") == N_PUTS + 1
    assert value(f, "ggap_server_forwarded_writes_total", outcome="refused") == 0

    def proposals_applied() -> bool:
        scraped = {i: scrape(a) for i, a in addrs.items()}
        return all(value(s, "ggap_server_proposals_applied_total") >= N_PUTS + 1 for s in scraped.values())

    wait_until(proposals_applied, 10, "every node applied the puts")
    wait_until(lambda: value(scrape(addrs[leader]), "ggap_mvcc_keys_total") == N_PUTS + 1, 10, "keys_total")
    # A session opened on one node is counted on every node once applied there.
    before = {i: value(scrape(a), "ggap_sessions_total") for i, a in addrs.items()}
    c.kv(leader).OpenSession(pb.OpenSessionRequest(), timeout=5)
    wait_until(
        lambda: all(value(scrape(a), "ggap_sessions_total") == before[i] + 1 for i, a in addrs.items()),
        10,
        "the session counted everywhere",
    )
    # RTT samples need a few heartbeat rounds (20 ms ticks).
    wait_until(
        lambda: all(
            s.value > 0
            for s in samples(scrape(addrs[leader]), "ggap_network_peer_round_trip_time_seconds_count")
        ),
        10,
        "heartbeat round trips measured",
    )
    scraped = {i: scrape(a) for i, a in addrs.items()}
    assert sum(value(s, "ggap_server_is_leader") for s in scraped.values()) == 1
    assert value(scraped[leader], "ggap_server_is_leader") == 1
    for i, s in scraped.items():
        others = {str(p) for p in c.ids if p != i}
        assert value(s, "ggap_server_has_leader") == 1, i
        assert value(s, "ggap_server_proposals_committed_total") >= N_PUTS + 1, i
        assert value(s, "ggap_server_proposals_applied_total") <= value(
            s, "ggap_server_proposals_committed_total"
        )
        assert value(s, "ggap_server_leader_changes_seen_total") >= 1, i
        assert value(s, "ggap_server_proposals_failed_total") == 0, i
        assert value(s, "ggap_server_proposals_pending") == 0, i
        assert value(s, "ggap_disk_wal_fsync_duration_seconds_count") >= N_PUTS, i
        assert value(s, "ggap_disk_backend_commit_duration_seconds_count") >= 1, i
        assert value(s, "ggap_disk_wal_fsync_duration_seconds_bucket", le="+Inf") == value(
            s, "ggap_disk_wal_fsync_duration_seconds_count"
        )
        assert value(s, "ggap_mvcc_db_total_size_in_bytes") > 0, i
        sent = {x.labels["To"]: x.value for x in samples(s, "ggap_network_peer_sent_bytes_total")}
        received = {x.labels["From"]: x.value for x in samples(s, "ggap_network_peer_received_bytes_total")}
        assert set(sent) == others and all(v > 0 for v in sent.values()), (i, sent)
        assert set(received) == others and all(v > 0 for v in received.values()), (i, received)
    rtt = {
        x.labels["To"]: x.value
        for x in samples(scraped[leader], "ggap_network_peer_round_trip_time_seconds_sum")
    }
    assert set(rtt) == {str(p) for p in c.ids if p != leader}
    assert all(0 < v for v in rtt.values()), rtt
    for i, a in addrs.items():
        assert http_get(a, "/healthz") == (200, "ok\n"), i


def test_healthz_without_quorum(own_cluster: tuple[Cluster, dict[int, str]]) -> None:
    """Stops two of the three nodes of its own cluster."""
    c, addrs = own_cluster
    leader = leader_of(c)
    survivor = next(i for i in c.ids if i != leader)
    for i in c.ids:
        if i != survivor:
            assert c.nodes[i].stop() == 0
    # The leader is gone and no election can win: the survivor loses its leader.
    _, body = wait_until(
        lambda: (r := http_get(addrs[survivor], "/healthz"))[0] == 503 and r, 15, "503 from /healthz"
    )
    assert body.startswith("unhealthy: "), body
    assert "no leader" in body, body
    assert value(scrape(addrs[survivor]), "ggap_server_has_leader") == 0


# -- a single node: the HTTP side's bounds, bad configuration -----------------------------------


@pytest.fixture
def one_node(node_factory: Callable[..., NodeProcess]) -> tuple[NodeProcess, str]:
    addr = f"127.0.0.1:{free_port()}"
    env = {"GINNUNGAGAP_METRICS__REQUEST_TIMEOUT_MS": "300", "GINNUNGAGAP_METRICS__MAX_REQUEST_BYTES": "1024"}
    return node_factory(extra_args=["--metrics-addr", addr], env=env), addr


def _raw(addr: str, data: bytes, *, wait: float = 5.0) -> bytes:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_http_bounds(one_node: tuple[NodeProcess, str]) -> None:
    node, addr = one_node
    assert http_get(addr, "/healthz") == (200, "ok\n")
    assert http_get(addr, "/nope")[0] == 404
    assert _raw(addr, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert _raw(addr, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    head = b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n"
    assert _raw(addr, head).startswith(b"HTTP/1.1 431 ")
    # A client that never finishes its request is dropped after the request timeout (0.3 s;
    # _raw's own socket timeout, 5 s, fails the test if the server never drops it).
    assert _raw(addr, b"GET /metrics HTTP/1.1\r\n") == b""
    assert http_get(addr, "/metrics")[0] == 200
    assert node.is_running()


def _refused(addr: str) -> bool:
    """Closed without an answer (on accept: over metrics.max_connections)."""
    try:
        return _raw(addr, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
    except ConnectionResetError:
        return True


def test_max_connections(node_factory: Callable[..., NodeProcess]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    env = {"GINNUNGAGAP_METRICS__MAX_CONNECTIONS": "2", "GINNUNGAGAP_METRICS__REQUEST_TIMEOUT_MS": "60000"}
    node = node_factory(extra_args=["--metrics-addr", addr], env=env)
    host, port = addr.rsplit(":", 1)
    assert http_get(addr, "/healthz") == (200, "ok\n")
    # Two clients that never send their request hold both slots ...
    idle = [socket.create_connection((host, int(port)), timeout=T) for _ in range(2)]
    try:
        wait_until(lambda: _refused(addr), 10, "a third connection closed on accept")
        assert _refused(addr)  # ... for as long as they stay
    finally:
        idle.pop().close()
    # One slot free again: requests are answered (one at a time here, as each ends).
    wait_until(lambda: http_get(addr, "/healthz") == (200, "ok\n"), 10, "answered once a slot is free")
    for sock in idle:
        sock.close()
    assert node.is_running()


def _run_node(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [
        *node_command(),
        "node",
        "--node-id", "1",
        "--client-addr", f"127.0.0.1:{free_port()}",
        "--cluster-addr", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path / "d"),
        *extra,
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    )


def test_malformed_metrics_addr_is_refused(tmp_path: Path) -> None:
    out = _run_node(tmp_path, "--metrics-addr", "nonsense")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "metrics.listen_addr" in out.stderr and "nonsense" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_metrics_port_in_use_is_refused(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        out = _run_node(tmp_path, "--metrics-addr", f"127.0.0.1:{port}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
