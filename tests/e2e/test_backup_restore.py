"""Backup and restore with real processes and the real CLI.

A 3-node cluster gets overwrites, deletes, a transaction, a key with a TTL and a
compaction; `ggap snapshot save` backs it up from the leader. The backup is restored into
a fresh single node and into a fresh 3-node cluster: both answer Range at several
revisions, History, Status and OUT_OF_RANGE below the compact revision exactly as the
original did, and new writes replicate to every restored node. A damaged or truncated
backup is refused (exit 2, nothing created), and a node restored from the backup cannot
join the original cluster (its cluster token differs).

Every process is a NodeProcess or a CLI run with a timeout: all are stopped (or reaped)
whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import EVENTUAL, LIN, Cluster, wait_until
from tests.procs import REPO_ROOT, NodeProcess, free_port, node_command

pytestmark = pytest.mark.slow

CLI_TIMEOUT_S = 120
HOUR_MS = 3_600_000


def ggap(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI of this checkout (PYTHONPATH first), in a child that is always reaped."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [*node_command(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def direct_peers(c: Cluster) -> str:
    return ",".join(f"{i}={c.nodes[i].cluster_addr}" for i in c.ids)


def fill(c: Cluster, leader: int) -> None:
    """Revisions 1..15, compacted at 6."""
    kv = c.kv(leader)
    for i in range(9):
        kv.Put(pb.PutRequest(key=f"k{i % 3}", value=f"v{i}".encode()), timeout=10)
    kv.Delete(pb.DeleteRequest(key="k1"), timeout=10)
    kv.Txn(
        pb.TxnRequest(
            success=[
                pb.TxnOp(put=pb.PutRequest(key="t", value=b"txn")),
                pb.TxnOp(delete=pb.DeleteRequest(key="k0")),
            ]
        ),
        timeout=10,
    )
    kv.Put(pb.PutRequest(key="lease", value=b"held", ttl_ms=HOUR_MS), timeout=10)
    kv.Put(pb.PutRequest(key="k0", value=b"again"), timeout=10)
    kv.Put(pb.PutRequest(key="k2", value=b"last"), timeout=10)
    kv.Put(pb.PutRequest(key="\u00fc/key", value=b"\x00\xff"), timeout=10)
    kv.Compact(pb.CompactRequest(revision=6), timeout=10)


@attrs.frozen
class Seen:
    status: tuple[int, int]
    reads: dict[str, Any]


def observe(node: NodeProcess, mode: pb.ReadMode = EVENTUAL) -> Seen:
    """What a client sees: Range at several revisions, History of every key, Status, and
    the error for a read below the compact revision."""
    kv, cluster = node.kv_stub(), node.cluster_stub()
    st = cluster.Status(pb.StatusRequest(), timeout=10)
    reads: dict[str, Any] = {}
    for rev in (0, 6, 8, 11, st.revision):
        resp = kv.Range(pb.RangeRequest(start="\x00", revision=rev, read_mode=mode), timeout=10)
        reads[f"range@{rev}"] = [
            (x.key, x.value, x.create_revision, x.mod_revision, x.version, x.expires_at_ms) for x in resp.kvs
        ]
    for key in ("k0", "k1", "k2", "t", "lease", "\u00fc/key"):
        hist = kv.History(pb.HistoryRequest(key=key, read_mode=mode), timeout=10)
        reads[f"history/{key}"] = [(x.mod_revision, x.version, x.deleted, x.value) for x in hist.versions]
    with pytest.raises(grpc.RpcError) as below:
        kv.Get(pb.GetRequest(key="k0", revision=5, read_mode=mode), timeout=10)
    reads["below-compact"] = below.value.code()
    return Seen((st.revision, st.compact_revision), reads)


@attrs.frozen
class Source:
    cluster: Cluster
    backup: Path
    saved: dict[str, Any]
    seen: Seen


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    base = tmp_path_factory.mktemp("source")
    c = Cluster(base, 3, proxied=False)
    try:
        c.start(timeout=60)
        leader = c.wait_leader(timeout=30)
        fill(c, leader)
        c.wait_converged(timeout=30)
        seen = observe(c.nodes[leader], LIN)
        assert seen.status == (15, 6) and seen.reads["below-compact"] == grpc.StatusCode.OUT_OF_RANGE
        backup = base / "cluster.snap"
        saved = ggap(
            "snapshot", "save", str(backup), "--endpoints", c.nodes[leader].client_addr, "-o", "json"
        )
        assert saved.returncode == 0, saved.stderr
        yield Source(c, backup, json.loads(saved.stdout), seen)
    except BaseException:
        c.dump_logs(80)
        raise
    finally:
        c.close()


def test_save_and_status(source: Source) -> None:
    saved = source.saved
    assert (saved["revision"], saved["compact_revision"]) == source.seen.status
    assert saved["sqlite_bytes"] > 0 and len(saved["sha256"]) == 64
    status = ggap("snapshot", "status", str(source.backup), "-o", "json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["verified"] is True
    assert {k: doc[k] for k in ("index", "term", "revision", "compact_revision", "sha256", "backup_id")} == {
        k: saved[k] for k in ("index", "term", "revision", "compact_revision", "sha256", "backup_id")
    }
    # Saving again onto the same file is refused without --force.
    again = ggap("snapshot", "save", str(source.backup), "--endpoints", source.cluster.nodes[1].client_addr)
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_backup_is_refused(tmp_path: Path, source: Source, damage: str) -> None:
    raw = bytearray(source.backup.read_bytes())
    if damage == "flipped":
        raw[len(raw) // 2] ^= 0x01
    else:
        del raw[-100:]
    bad = tmp_path / "bad.snap"
    bad.write_bytes(bytes(raw))
    status = ggap("snapshot", "status", str(bad))
    assert status.returncode == 2 and "DATA_LOSS" in status.stderr
    target = tmp_path / "restored"
    restored = ggap("snapshot", "restore", str(bad), "--data-dir", str(target))
    assert restored.returncode == 2 and "DATA_LOSS" in restored.stderr
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.snap"]


def test_restore_into_a_single_node(tmp_path: Path, source: Source) -> None:
    data = tmp_path / "node1"
    result = ggap("snapshot", "restore", str(source.backup), "--data-dir", str(data), "--node-id", "1")
    assert result.returncode == 0, result.stderr
    node = NodeProcess(data, node_id=1)
    try:
        node.start_and_wait(60)
        assert observe(node) == source.seen
        assert observe(node, LIN) == source.seen
        put = node.kv_stub().Put(pb.PutRequest(key="after", value=b"restore"), timeout=10)
        assert put.header.revision == source.seen.status[0] + 1
    except BaseException:
        print(node.log_tail(80))
        raise
    finally:
        node.close()


def test_restore_into_a_three_node_cluster(tmp_path: Path, source: Source) -> None:
    c = Cluster(tmp_path, 3, proxied=False)
    try:
        peers = direct_peers(c)
        for i in c.ids:
            result = ggap(
                "snapshot",
                "restore",
                str(source.backup),
                "--data-dir",
                str(c.nodes[i].data_dir),
                "--node-id",
                str(i),
                "--peers",
                peers,
            )
            assert result.returncode == 0, result.stderr
        c.start(timeout=60)
        leader = c.wait_leader(timeout=30)
        for i in c.ids:
            assert observe(c.nodes[i]) == source.seen, f"node {i}"
        assert observe(c.nodes[leader], LIN) == source.seen
        # Writes after the restore replicate to every restored node.
        revision = source.seen.status[0]
        for n, i in enumerate(c.ids, 1):
            put = c.put(i, f"after/{i}", f"from node {i}".encode(), timeout=10)
            assert put.header.revision == revision + n
        for i in c.ids:
            wait_until(
                lambda i=i: (
                    [
                        kv.value
                        for kv in c.kv(i)
                        .Range(pb.RangeRequest(prefix="after/", read_mode=EVENTUAL), timeout=5)
                        .kvs
                    ]
                    == [f"from node {j}".encode() for j in c.ids]
                ),
                30,
                f"the writes after the restore on node {i}",
            )
        c.wait_converged(timeout=30)
    except BaseException:
        c.dump_logs(80)
        raise
    finally:
        c.close()


def test_a_restored_node_cannot_join_the_original_cluster(tmp_path: Path, source: Source) -> None:
    """Node 3 restored with the original nodes 1 and 2 as its peers (same ids, their real
    addresses): they refuse its connections, so it never joins and they never change."""
    orig = source.cluster
    port = free_port()
    peers = f"1={orig.nodes[1].cluster_addr},2={orig.nodes[2].cluster_addr},3=127.0.0.1:{port}"
    data = tmp_path / "node3"
    result = ggap(
        "snapshot", "restore", str(source.backup), "--data-dir", str(data), "--node-id", "3", "--peers", peers
    )
    assert result.returncode == 0, result.stderr
    offsets = {i: orig.nodes[i].log_path.stat().st_size for i in (1, 2)}
    stranger = NodeProcess(
        data, node_id=3, cluster_port=port, client_port=free_port(), extra_args=["--peers", peers]
    )
    try:
        stranger.start()

        def refused() -> bool:
            for i in (1, 2):
                with orig.nodes[i].log_path.open("rb") as fh:
                    fh.seek(offsets[i])
                    if b"is not this cluster's" in fh.read():
                        return True
            return False

        wait_until(refused, 60, "the original nodes to refuse the restored node's handshake")
        # It runs, alone: it never becomes SERVING (no leader), so ask its Status directly.
        st = wait_until(
            lambda: stranger.cluster_stub().Status(pb.StatusRequest(), timeout=2),
            60,
            "the restored node to answer Status",
        )
        assert stranger.is_running() and st.leader_id == 0 and st.role != "leader"
        assert observe(orig.nodes[1]).status == source.seen.status
    finally:
        stranger.close()
