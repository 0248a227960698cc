"""Traced requests and JSON logs against real `ggap node` processes, through grpcio.

The nodes run `tracing.exporter = "console"` with `log.format = "json"`: every finished span
is a JSON line of the node's log (logger `ggap.spans`, the span in its `span` field), so
the test reads spans and log lines from the same file, with the trace id of the
`traceparent` the client sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.cluster import FAST_RAFT_ENV, Cluster, wait_until
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 10.0  # per-call deadline: a liveness bound, never a measurement
TRACED = {
    "GINNUNGAGAP_TRACING__EXPORTER": "console",
    "GINNUNGAGAP_LOG__FORMAT": "json",
}
REQUIRED = ("time", "level", "logger", "message", "node_id")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _traceparent(n: int) -> tuple[str, str, list[tuple[str, str]]]:
    trace_id, parent_id = f"{n:032x}", f"{n + 1:016x}"
    return trace_id, parent_id, [("traceparent", f"00-{trace_id}-{parent_id}-01")]


def _records(log_path: Path) -> list[dict[str, Any]]:
    """Every line the node wrote, parsed (the harness's own launch lines skipped)."""
    out = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("=== ggap test harness "):
            continue
        record = json.loads(line)  # every line must be JSON
        assert isinstance(record, dict), line
        out.append(record)
    return out


def _spans(log_paths: Iterable[Path], trace_id: str) -> list[dict[str, Any]]:
    spans = []
    for path in log_paths:
        for r in _records(path):
            if r["logger"] == "ggap.spans" and r["span"]["context"]["trace_id"] == "0x" + trace_id:
                spans.append({**r["span"], "node_id": r["node_id"]})
    return spans


def _sid(span: dict[str, Any]) -> str:
    return str(span["context"]["span_id"])


def _one(spans: list[dict[str, Any]], name: str, **where: Any) -> dict[str, Any]:
    found = [s for s in spans if s["name"] == name and all(s.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (name, where, [(s["name"], s.get("node_id")) for s in spans])
    return found[0]


def _check_write_path(spans: list[dict[str, Any]], server: dict[str, Any]) -> None:
    """raft.propose under the leader's Put span; persist, commit, apply under the proposal."""
    node = server["node_id"]
    propose = _one(spans, "raft.propose", node_id=node)
    assert propose["parent_id"] == _sid(server)
    assert propose["attributes"]["ggap.command"] == "Put" and propose["attributes"]["ggap.index"] > 0
    for step in ("raft.persist", "raft.commit", "raft.apply"):
        assert _one(spans, step, node_id=node)["parent_id"] == _sid(propose)
    persist = _one(spans, "raft.persist", node_id=node)
    assert persist["attributes"]["ggap.batch.entries"] >= 1 and "ggap.fsync_ms" in persist["attributes"]


def _check_log_lines(records: list[dict[str, Any]], node_id: int) -> None:
    for r in records:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, (missing, r)
        assert _TIME.match(r["time"]), r["time"]
        assert r["node_id"] == node_id


def test_traced_put_and_read_on_a_single_node(node_factory: Any) -> None:
    # slow_fsync_ms = 0: every fsync counts as slow, so the (rate-limited) line shows up.
    env = {**TRACED, "GINNUNGAGAP_LOG__LEVEL": "debug", "GINNUNGAGAP_LOG__SLOW_FSYNC_MS": "0"}
    node: NodeProcess = node_factory(env=env)
    kv = node.kv_stub()
    trace_id, parent_id, md = _traceparent(0x1234)
    kv.Put(pb.PutRequest(key="traced", value=b"v"), timeout=T, metadata=md)
    read_trace, read_parent, read_md = _traceparent(0x5678)
    kv.Get(pb.GetRequest(key="traced", read_mode=pb.READ_MODE_LINEARIZABLE), timeout=T, metadata=read_md)

    spans = wait_until(
        lambda: (s := _spans([node.log_path], trace_id)) and len(s) >= 5 and s,
        15,
        "the Put's spans in the node's log",
    )
    server = _one(spans, "ginnungagap.v1.KvService/Put")
    assert server["kind"] == "SpanKind.SERVER" and server["parent_id"] == "0x" + parent_id
    assert server["attributes"]["rpc.grpc.status_code"] == 0
    _check_write_path(spans, server)

    reads = wait_until(
        lambda: len(s := _spans([node.log_path], read_trace)) >= 2 and s, 15, "the Get's spans"
    )
    get = _one(reads, "ginnungagap.v1.KvService/Get")
    assert get["parent_id"] == "0x" + read_parent
    barrier = _one(reads, "raft.read_index")
    assert barrier["parent_id"] == _sid(get)
    assert [e["name"] for e in barrier["events"]] == ["read index confirmed"]

    records = _records(node.log_path)
    _check_log_lines(records, node.node_id)
    # A line logged inside the traced request (the debug line of the server span).
    inside = [r for r in records if r.get("trace_id") == trace_id and r["logger"] != "ggap.spans"]
    assert inside and inside[0]["span_id"] == _sid(server)[2:]
    assert any(r.get("term", 0) >= 1 for r in records)
    slow = [r for r in records if r["message"].startswith("slow fsync of the raft log")]
    assert slow and slow[0]["level"] == "warning" and slow[0]["fsync_ms"] >= 0 and "entries" in slow[0]


def test_traced_puts_through_a_follower_keep_their_trace_on_both_paths(tmp_path: Path) -> None:
    """A plain Put goes to the leader inside Raft (its traceparent rides on the PROPOSE
    message); a Put with a TTL is forwarded to the leader's client port (a `forward` client
    span, the traceparent in the call's metadata). Either way the leader's spans of the
    write are children of the follower's."""
    cluster = Cluster(tmp_path, 3, env={**FAST_RAFT_ENV, **TRACED})
    try:
        cluster.start()
        leader = cluster.wait_leader()
        follower = next(n for n in cluster.nodes.values() if n.node_id != leader)
        trace_id, parent_id, md = _traceparent(0xABCDEF)
        ttl_trace, ttl_parent, ttl_md = _traceparent(0xFEDCBA)
        channel = grpc.insecure_channel(follower.client_addr)
        try:
            stub = kv_pb2_grpc.KvServiceStub(channel)
            stub.Put(pb.PutRequest(key="fwd", value=b"v"), timeout=T, metadata=md)
            stub.Put(pb.PutRequest(key="fwd-ttl", value=b"v", ttl_ms=60_000), timeout=T, metadata=ttl_md)
        finally:
            channel.close()
        paths = [n.log_path for n in cluster.nodes.values()]

        # Inside Raft: Put and raft.propose on the follower; raft.propose, persist, commit
        # and apply on the leader.
        spans = wait_until(
            lambda: len(s := _spans(paths, trace_id)) >= 6 and s, 15, "the Put's spans on both nodes"
        )
        origin = _one(spans, "ginnungagap.v1.KvService/Put", node_id=follower.node_id)
        assert origin["parent_id"] == "0x" + parent_id
        assert not [s for s in spans if s["name"] == "forward"]
        here = _one(spans, "raft.propose", node_id=follower.node_id)
        assert here["parent_id"] == _sid(origin)
        assert here["attributes"]["ggap.forwarded_to"] == leader
        at_leader = _one(spans, "raft.propose", node_id=leader)
        assert at_leader["parent_id"] == _sid(here)  # the traceparent crossed inside Raft
        assert at_leader["attributes"]["ggap.forwarded_from"] == follower.node_id
        assert at_leader["attributes"]["ggap.index"] == here["attributes"]["ggap.index"] > 0
        for step in ("raft.persist", "raft.commit", "raft.apply"):
            assert _one(spans, step, node_id=leader)["parent_id"] == _sid(at_leader)

        # Over the leader's client port.
        spans = wait_until(
            lambda: len(s := _spans(paths, ttl_trace)) >= 7 and s, 15, "the TTL Put's spans on both nodes"
        )
        origin = _one(spans, "ginnungagap.v1.KvService/Put", node_id=follower.node_id)
        assert origin["parent_id"] == "0x" + ttl_parent
        forward = _one(spans, "forward", node_id=follower.node_id)
        assert forward["kind"] == "SpanKind.CLIENT" and forward["parent_id"] == _sid(origin)
        served = _one(spans, "ginnungagap.v1.KvService/Put", node_id=leader)
        assert served["parent_id"] == _sid(forward)  # traceparent crossed to the leader
        _check_write_path(spans, served)

        # Every line of every node's log is JSON with the fields; the leader change is
        # logged once: one "became leader" on the leader, one "leader is now" per follower.
        term = max(r.get("term", 0) for r in _records(cluster.nodes[leader].log_path))
        for n in cluster.nodes.values():
            records = _records(n.log_path)
            _check_log_lines(records, n.node_id)
            messages = [r["message"] for r in records]
            if n.node_id == leader:
                assert messages.count(f"{leader} became leader at term {term}") == 1, messages
            else:
                assert messages.count(f"node {n.node_id}: leader is now {leader} (term {term})") == 1, (
                    messages
                )
    finally:
        cluster.close()
