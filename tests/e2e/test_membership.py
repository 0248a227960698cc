"""Membership with real processes: a node joins a running cluster as a learner (seeded by
snapshot), is promoted, and a removed node cannot come back with its old data dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import EVENTUAL, FAST_RAFT_ENV, Cluster, wait_until
from tests.conftest import NodeFactory

pytestmark = pytest.mark.slow


def _eventual_get(node: object, key: str) -> bytes | None:
    got = node.kv_stub().Get(pb.GetRequest(key=key, read_mode=EVENTUAL), timeout=5)  # type: ignore[attr-defined]
    return got.kv.value if got.found else None


def test_a_single_node_grows_by_join_and_auto_promote(node_factory: NodeFactory) -> None:
    first = node_factory(node_id=1, env=FAST_RAFT_ENV)
    kv = first.kv_stub()
    for i in range(200):
        kv.Put(pb.PutRequest(key=f"k/{i:03d}", value=f"v{i}".encode()), timeout=10)
    second = node_factory(
        node_id=2,
        env=FAST_RAFT_ENV,
        extra_args=["--join", first.client_addr, "--auto-promote"],
        timeout=60,
    )
    # The joiner serves the data it was seeded with, and what is written afterwards.
    assert _eventual_get(second, "k/007") == b"v7"
    kv.Put(pb.PutRequest(key="after", value=b"join"), timeout=10)
    wait_until(lambda: _eventual_get(second, "after") == b"join", 20, "the joiner to replicate a new write")

    def promoted() -> bool:
        status = second.cluster_stub().Status(pb.StatusRequest(), timeout=2)
        return status.role == "follower"

    wait_until(promoted, 30, "node 2 to be promoted to voter")
    # Two voters now: a write needs both; it still goes while both are up.
    kv.Put(pb.PutRequest(key="two-voters", value=b"ok"), timeout=10)
    assert second.stop() == 0
    # Node 2 restarts from its own data dir (no second join).
    second.start_and_wait(timeout=60)
    wait_until(lambda: _eventual_get(second, "two-voters") == b"ok", 20, "the restarted joiner to catch up")


def test_a_leader_stopped_gracefully_hands_off_first(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 3, proxied=False)
    try:
        c.start()
        leader = c.wait_leader()
        c.put(leader, "before", b"1")
        term = c.status(leader).raft_term
        assert c.nodes[leader].stop() == 0
        log = c.nodes[leader].log_path.read_text()
        handed = re.search(r"handing leadership to node (\d+) before stopping", log)
        assert handed is not None, log[-2000:]
        target = int(handed.group(1))
        others = [i for i in c.ids if i != leader]
        new = c.wait_leader(ids=others)
        assert new == target
        # One term up: the target campaigned at once (TIMEOUT_NOW), no election timeout.
        assert c.status(new).raft_term == term + 1
        c.put(new, "after", b"2")
    except BaseException:
        c.dump_logs(60)
        raise
    finally:
        c.close()


def test_a_removed_node_stops_campaigning_and_cannot_come_back(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 3, proxied=False)
    try:
        c.start()
        leader = c.wait_leader()
        gone = next(i for i in c.ids if i != leader)
        c.nodes[leader].cluster_stub().MemberRemove(pb.MemberRemoveRequest(id=gone), timeout=10)
        stayed = [i for i in c.ids if i != gone]
        listed = c.nodes[stayed[0]].cluster_stub().MemberList(pb.MemberListRequest(), timeout=5)
        assert sorted(m.id for m in listed.members) == stayed
        wait_until(
            lambda: "was removed from the cluster" in c.nodes[gone].log_path.read_text(),
            20,
            f"node {gone} to learn it was removed",
        )
        # Writes commit with the two voters left; the removed node stays quiet.
        term = c.status(leader).raft_term
        for j in range(20):
            c.put(leader, f"after/{j}", b"x")
        assert c.status(leader).raft_term == term and c.wait_leader(ids=stayed) == leader
        # Restarting it with its old data dir is refused with a clear message, exit 2.
        c.nodes[gone].stop()
        c.nodes[gone].start()
        assert c.nodes[gone].wait(timeout=30) == 2
        assert "was removed from the cluster" in c.nodes[gone].log_tail(20)
    except BaseException:
        c.dump_logs(60)
        raise
    finally:
        c.close()
