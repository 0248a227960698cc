"""InstallSnapshot with real processes: a follower that was down while the leader
snapshotted and compacted its log past it catches up by snapshot, and a follower killed
while receiving or installing a snapshot recovers and catches up all the same."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import EVENTUAL, FAST_RAFT_ENV, Cluster, wait_until

pytestmark = pytest.mark.slow

SNAPSHOT_ENV = {
    **FAST_RAFT_ENV,
    "GINNUNGAGAP_RAFT__SNAPSHOT_ENTRIES": "1000",
    "GINNUNGAGAP_RAFT__LOG_RETAIN": "500",
}
KEYS = 50_000
PER_TXN = 125


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, 3, env=SNAPSHOT_ENV, proxied=False)
    try:
        c.start()
        yield c
    except BaseException:
        c.dump_logs(80)
        raise
    finally:
        c.close()


def _write_keys(c: Cluster, leader: int, keys: int) -> None:
    """`keys` keys through Txns of PER_TXN puts, from 4 threads."""
    stub = c.kv(leader)
    batches = list(range(0, keys, PER_TXN))
    errors: list[BaseException] = []

    def worker(mine: list[int]) -> None:
        try:
            for start in mine:
                ops = [
                    pb.TxnOp(put=pb.PutRequest(key=f"k/{i:06d}", value=f"v{i}".encode()))
                    for i in range(start, min(keys, start + PER_TXN))
                ]
                stub.Txn(pb.TxnRequest(success=ops), timeout=30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(batches[t::4],)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def _grow_log(c: Cluster, leader: int, entries: int) -> None:
    """Plain puts from 8 threads, so the log grows past a few snapshots."""
    stub = c.kv(leader)

    def worker(t: int) -> None:
        for j in range(entries // 8):
            stub.Put(pb.PutRequest(key=f"grow/{t}", value=str(j).encode()), timeout=30)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _since(path: Path, offset: int) -> str:
    return path.read_bytes()[offset:].decode(errors="replace")


def _applied(c: Cluster, i: int) -> int:
    st = c.try_status(i)
    return st.applied_index if st is not None else -1


def _read_all_eventual(c: Cluster, i: int) -> dict[str, bytes]:
    got: dict[str, bytes] = {}
    start = "k/"
    while True:
        resp = c.kv(i).Range(
            pb.RangeRequest(start=start, end="k0", limit=10_000, read_mode=EVENTUAL), timeout=30
        )
        for kv in resp.kvs:
            got[kv.key] = kv.value
        if not resp.more:
            return got
        start = resp.kvs[-1].key + "\x00"


def _assert_caught_up_by_snapshot(c: Cluster, follower: int, leader: int) -> None:
    target = c.status(leader).commit_index
    wait_until(lambda: _applied(c, follower) >= target, 90, f"node {follower} to apply {target}")
    log = c.nodes[follower].log_path.read_text(errors="replace")
    assert "installed snapshot at index" in log, "the follower caught up without a snapshot"
    got = _read_all_eventual(c, follower)
    assert len(got) == KEYS
    missing = [k for k in (f"k/{i:06d}" for i in range(KEYS)) if got.get(k) != f"v{int(k[2:])}".encode()]
    assert not missing, f"{len(missing)} keys wrong on node {follower}, e.g. {missing[:3]}"


def test_a_follower_behind_the_compacted_log_catches_up_by_snapshot(cluster: Cluster) -> None:
    c = cluster
    leader = c.wait_leader()
    follower = next(i for i in c.ids if i != leader)
    c.kill(follower)
    _write_keys(c, leader, KEYS)
    _grow_log(c, leader, 2400)
    # The leader snapshotted and dropped what the follower would need.
    log = c.nodes[leader].log_path.read_text(errors="replace")
    assert "log compacted through" in log
    c.start_node(follower)
    _assert_caught_up_by_snapshot(c, follower, leader)
    # And it keeps replicating normally afterwards.
    c.put(leader, "after", b"snapshot")
    wait_until(
        lambda: c.get(follower, "after", mode=EVENTUAL).kv.value == b"snapshot",
        20,
        "a write after the install",
    )


@pytest.mark.parametrize("when", ["during-transfer", "right-after-transfer"])
def test_a_follower_killed_inside_a_snapshot_install_recovers(cluster: Cluster, when: str) -> None:
    """SIGKILL the receiving follower while the snapshot streams (or just as it arrived,
    while it is being installed); on restart it must come up and catch up."""
    c = cluster
    leader = c.wait_leader()
    follower = next(i for i in c.ids if i != leader)
    c.kill(follower)
    _write_keys(c, leader, KEYS)
    _grow_log(c, leader, 2400)
    log_path = c.nodes[follower].log_path
    before = len(log_path.read_bytes())
    c.start_node(follower, wait=False)
    node = c.nodes[follower]
    snap_dir = node.data_dir / "snap"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if when == "during-transfer":
            if any(snap_dir.glob("incoming-*.tmp")):
                break
        elif any(snap_dir.glob("received-*.db")) or "installed snapshot" in _since(log_path, before):
            break
        time.sleep(0.002)
    else:
        pytest.fail(f"never saw the follower {when.replace('-', ' ')}")
    c.kill(follower)
    c.start_node(follower)
    _assert_caught_up_by_snapshot(c, follower, leader)
