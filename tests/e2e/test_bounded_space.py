"""Bounded space through real processes and a grpcio client: the quota refuses writes and
lets them back in once deletes and compaction free space; history pruning and automatic
compaction are replicated, so every replica answers point-in-time reads the same way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import EVENTUAL, FAST_RAFT_ENV, Cluster, wait_until
from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow

QUOTA = 2_000_000
VALUE = b"x" * 32_000


def _code(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_quota_refuses_writes_until_space_is_freed(node_factory: NodeFactory) -> None:
    node = node_factory(
        env={
            **FAST_RAFT_ENV,
            "GINNUNGAGAP_STORAGE__QUOTA_BYTES": str(QUOTA),
            "GINNUNGAGAP_STORAGE__RECLAIM_INTERVAL_MS": "100",
        }
    )
    kv, cluster = node.kv_stub(), node.cluster_stub()
    written: list[str] = []
    refused: grpc.RpcError | None = None
    for i in range(400):  # ~12 MB would be written; the quota stops it near 2 MB
        key = f"q/{i:04d}"
        try:
            kv.Put(pb.PutRequest(key=key, value=VALUE), timeout=10)
        except grpc.RpcError as exc:
            refused = exc
            break
        written.append(key)
    assert refused is not None, "no write was refused past the quota"
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"storage.quota_bytes is {QUOTA}" in (refused.details() or "")
    # Near the quota: each 32 kB value takes 8-9 pages of 4 KiB (so ~54 fill 2 MB), and the
    # in-use size is measured every reclaim interval, so a few more may get in before it shows.
    assert QUOTA // (2 * len(VALUE)) <= len(written) < 2 * QUOTA // len(VALUE)
    status = cluster.Status(pb.StatusRequest(), timeout=5)
    assert status.db_size_in_use_bytes >= QUOTA
    assert status.db_size_bytes > status.db_size_in_use_bytes

    # Writes that add data are refused, whatever their shape ...
    put_op = pb.TxnOp(put=pb.PutRequest(key="q/txn", value=b"v"))
    code, details = _code(lambda: kv.Txn(pb.TxnRequest(success=[put_op]), timeout=5))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "storage.quota_bytes" in details
    # ... while reads, deletes and compaction go on.
    got = kv.Get(pb.GetRequest(key=written[0]), timeout=5)
    assert got.found and got.kv.value == VALUE
    listed = kv.Range(pb.RangeRequest(prefix="q/", keys_only=True), timeout=5)
    assert [item.key for item in listed.kvs] == written
    revision = listed.header.revision
    assert kv.Delete(pb.DeleteRequest(key=written[0]), timeout=5).deleted
    delete_op = pb.TxnOp(delete=pb.DeleteRequest(key=written[1]))
    assert kv.Txn(pb.TxnRequest(success=[delete_op]), timeout=5).succeeded
    for key in written[2:]:
        kv.Delete(pb.DeleteRequest(key=key), timeout=5)
    last = kv.Delete(pb.DeleteRequest(key="q/none"), timeout=5).header.revision
    kv.Compact(pb.CompactRequest(revision=last), timeout=10)

    # Space comes back (on the next measurement): the same write now goes.
    def put_goes() -> bool:
        kv.Put(pb.PutRequest(key="q/after", value=b"back"), timeout=5)
        return True

    wait_until(put_goes, 15, "a Put to be accepted after deletes and compaction")
    status = cluster.Status(pb.StatusRequest(), timeout=5)
    assert status.db_size_in_use_bytes < QUOTA
    assert status.compact_revision == last
    code, _ = _code(lambda: kv.Get(pb.GetRequest(key=written[3], revision=revision), timeout=5))
    assert code == grpc.StatusCode.OUT_OF_RANGE


DEPTH = 3
KEEP_REVISIONS = 40
HISTORY_ENV = {
    **FAST_RAFT_ENV,
    "GINNUNGAGAP_MVCC__HISTORY_DEPTH": str(DEPTH),
    "GINNUNGAGAP_MVCC__PRUNE_INTERVAL_MS": "100",
    "GINNUNGAGAP_MVCC__AUTO_COMPACT_REVISIONS": str(KEEP_REVISIONS),
    "GINNUNGAGAP_MVCC__COMPACT_STEP_VERSIONS": "7",
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3, env=HISTORY_ENV, proxied=False)
    try:
        c.start()
        yield c
    except BaseException:
        c.dump_logs(60)
        raise
    finally:
        c.close()


def _read_at(c: Cluster, i: int, key: str, revision: int) -> tuple[str, ...]:
    """What node i answers for `key` at `revision`, eventual mode, as a comparable tuple."""
    try:
        got = c.kv(i).Get(pb.GetRequest(key=key, revision=revision, read_mode=EVENTUAL), timeout=5)
    except grpc.RpcError as exc:
        return ("error", exc.code().name)
    return ("found", got.kv.value.decode(), str(got.kv.mod_revision)) if got.found else ("absent",)


def test_replicas_prune_and_compact_alike(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    for j in range(40):  # revisions 1-40: mostly below the compaction point
        cluster.put(leader, f"cold/{j % 5}", f"c{j}".encode())
    for j in range(30):  # revisions 41-70: above it, deeper than history_depth
        cluster.put(leader, "hot", f"v{j}".encode())
    revision = cluster.put(leader, "last", b"1").header.revision

    def settled() -> tuple[str, ...]:
        st = cluster.statuses()
        seen = tuple(
            f"node {i}: applied {s.applied_index} compact {s.compact_revision} history "
            + str(
                len(
                    cluster.kv(i)
                    .History(pb.HistoryRequest(key="hot", read_mode=EVENTUAL), timeout=5)
                    .versions
                )
            )
            for i, s in st.items()
        )
        done = {f"applied {st[1].applied_index} compact {revision - KEEP_REVISIONS} history {DEPTH}"}
        if {line.partition(": ")[2] for line in seen} != done:
            raise AssertionError(seen)  # reported by wait_until if it never settles
        return seen

    wait_until(settled, 30, f"every replica compacted to {revision - KEEP_REVISIONS} and pruned to {DEPTH}")
    answers = {
        i: [_read_at(cluster, i, key, r) for key in ("hot", "cold/1") for r in range(1, revision + 1)]
        for i in cluster.ids
    }
    assert answers[1] == answers[2] == answers[3]
    flat = answers[1]
    assert ("error", "OUT_OF_RANGE") in flat  # below the compaction and the per-key floor
    assert any(a[0] == "found" for a in flat)
    request = pb.HistoryRequest(key="cold/1", read_mode=EVENTUAL)
    histories = {
        i: [(v.value, v.mod_revision) for v in cluster.kv(i).History(request, timeout=5).versions]
        for i in cluster.ids
    }
    assert histories[1] == histories[2] == histories[3] and 0 < len(histories[1]) <= DEPTH
