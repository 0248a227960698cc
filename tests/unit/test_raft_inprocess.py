"""Three nodes with the real driver, transport and storage in one trio process."""

from __future__ import annotations

import socket
from pathlib import Path

import attrs
import trio

from ggap.client import open_connection
from ggap.config import Config
from ggap.pb import kv_pb2 as pb
from ggap.server import serve_node


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_configs(tmp_path: Path, n: int = 3) -> list[Config]:
    ports = free_ports(2 * n)
    peers = ",".join(f"{i + 1}=127.0.0.1:{ports[2 * i + 1]}" for i in range(n))
    base = Config()
    return [
        attrs.evolve(
            base,
            node=attrs.evolve(
                base.node,
                id=i + 1,
                client_addr=f"127.0.0.1:{ports[2 * i]}",
                cluster_addr=f"127.0.0.1:{ports[2 * i + 1]}",
                data_dir=str(tmp_path / f"n{i + 1}"),
            ),
            raft=attrs.evolve(base.raft, peers=peers, tick_ms=20),
        )
        for i in range(n)
    ]


async def test_three_nodes_replicate_forward_and_read_linearizably(tmp_path: Path) -> None:
    configs = cluster_configs(tmp_path)
    endpoints = [c.node.client_addr for c in configs]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(serve_node, cfg)
            # Wait for a leader everyone agrees on.
            while True:
                leaders = set()
                for ep in endpoints:
                    async with open_connection(ep) as c:
                        leaders.add((await c.status()).leader_id)
                if len(leaders) == 1 and 0 not in leaders:
                    break
                await trio.sleep(0.05)
            leader = leaders.pop()
            follower_ep = next(ep for i, ep in enumerate(endpoints) if i + 1 != leader)
            # A write sent to a follower is forwarded; quorum ALL waits for every voter.
            async with open_connection(follower_ep) as c:
                put = await c.put(key="k", value=b"v1")
                put_all = await c.put(key="k", value=b"v2", quorum=pb.WRITE_QUORUM_ALL)
            assert put_all.header.revision == put.header.revision + 1
            for ep in endpoints:
                async with open_connection(ep) as c:
                    got = await c.get(key="k")  # linearizable: ReadIndex through the leader
                    assert got.found and got.kv.value == b"v2" and got.kv.version == 2
                    assert got.header.revision == put_all.header.revision
                    assert got.header.leader_id == leader
                    # After quorum ALL, even an eventual read sees it everywhere.
                    ev = await c.get(key="k", read_mode=pb.READ_MODE_EVENTUAL)
                    assert ev.kv.value == b"v2"
            nursery.cancel_scope.cancel()


def test_contradicting_peers_are_refused_and_stored_ones_reused(tmp_path: Path) -> None:
    import pytest

    from ggap.server.node import StartupError, _open_storage

    cfg = cluster_configs(tmp_path)[0]
    kv, log_store, peers, token = _open_storage(cfg)
    kv.close()
    log_store.close()
    assert sorted(peers) == [1, 2, 3]
    assert token == ""  # only `ggap snapshot restore` gives a data dir a cluster token
    # Restart without --peers: the stored membership is used.
    bare = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, peers=""))
    kv, log_store, again, _token = _open_storage(bare)
    kv.close()
    log_store.close()
    assert again == peers
    # Different peers for the same data dir: refused, naming both.
    other = attrs.evolve(cfg, raft=attrs.evolve(cfg.raft, peers=f"1={cfg.node.cluster_addr}"))
    with pytest.raises(StartupError, match=r"bootstrapped with peers .* contradicts"):
        _open_storage(other)


async def test_snapshots_are_taken_and_logs_compacted_behind_them(tmp_path: Path) -> None:
    from ggap.config.model import MvccConfig, StorageConfig
    from ggap.storage import KvStore, LogStore
    from ggap.storage.snapshot import read_snapshot_state, snapshot_path

    configs = [
        # Steps of 3 entries: the compaction behind each snapshot takes several writer turns.
        attrs.evolve(c, raft=attrs.evolve(c.raft, log_retain=10, snapshot_entries=20, compact_step_entries=3))
        for c in cluster_configs(tmp_path)
    ]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(serve_node, cfg)
            async with open_connection(configs[0].node.client_addr, timeout_s=10) as c:
                for i in range(60):
                    await c.put(key=f"k{i % 5}", value=str(i).encode(), quorum=pb.WRITE_QUORUM_ALL)
            nursery.cancel_scope.cancel()
    for cfg in configs:
        data = Path(cfg.node.data_dir)
        log_store = LogStore.open(data / "raft.db", StorageConfig())
        kv = KvStore.open(data / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
        try:
            assert kv.revision == 60
            snap = log_store.snapshot()
            assert snap.index >= 20  # a snapshot was recorded...
            found = snapshot_path(data / "snap", snap.index)
            assert read_snapshot_state(found)[0] == snap.index  # ...with its file
            assert log_store.first_index() > 1  # compacted...
            assert snap.index - log_store.first_index() >= 9  # ...but log_retain kept behind it
        finally:
            kv.close()
            log_store.close()


async def test_bootstrap_members_list_the_same_everywhere_and_their_client_addresses_are_taken(
    tmp_path: Path,
) -> None:
    """--peers names cluster addresses only: MemberList must not differ by which node
    answers (each filling in its own client address did), and MemberAdd still refuses a
    client address a bootstrap member serves on (the leader knows what each reports)."""
    import pytest

    from ggap.client import ClientError
    from ggap.types import StatusCode

    configs = cluster_configs(tmp_path)
    endpoints = [c.node.client_addr for c in configs]
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for cfg in configs:
                await nursery.start(serve_node, cfg)
            leader = 0
            while not leader:  # the leader has heard every follower's applied report
                async with open_connection(endpoints[0]) as c:
                    leader = (await c.status()).leader_id
                if leader:
                    async with open_connection(endpoints[leader - 1]) as c:
                        progress = (await c.status()).progress
                    if len(progress) < 3 or not all(p.applied_index for p in progress):
                        leader = 0
                await trio.sleep(0.05)
            lists = []
            for ep in endpoints:
                async with open_connection(ep) as c:
                    listed = await c.member_list()
                lists.append([(m.id, m.client_addr, m.cluster_addr, m.learner) for m in listed.members])
            assert lists[0] == [(c.node.id, "", c.node.cluster_addr, False) for c in configs]
            assert lists[1] == lists[0] and lists[2] == lists[0]
            follower = next(c for c in configs if c.node.id != leader)
            async with open_connection(endpoints[0]) as c:
                with pytest.raises(ClientError) as info:
                    await c.member_add(
                        id=9, client_addr=follower.node.client_addr, cluster_addr="127.0.0.1:1"
                    )
            assert info.value.code == StatusCode.FAILED_PRECONDITION
            assert (
                info.value.message
                == f"{follower.node.client_addr} is already used by member {follower.node.id}"
            )
            nursery.cancel_scope.cancel()
