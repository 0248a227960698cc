"""`ggap snapshot save|status|restore` through click's CliRunner: save from an in-process
node, status and restore of good and damaged files, refusals that leave everything as it
was, and a node started in-process from a restored data dir answering as the original.

The CLI calls trio.run itself, so while the test's own trio loop serves a node it runs in a
worker thread (as in test_cli.py)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from click.testing import CliRunner, Result

from ggap.cli import cli
from ggap.client import ClientError, Connection, open_connection
from ggap.config import Config
from ggap.pb import kv_pb2
from ggap.server import serve_node
from ggap.server.node import StartupError, cluster_id
from ggap.storage import LogStore, inspect_data_dir
from ggap.storage.backup import verify_backup
from ggap.storage.log import META_CLUSTER_TOKEN, META_MEMBERS, META_NODE_ID, decode_members
from ggap.types import StatusCode
from tests.unit.test_client import refused_endpoint
from tests.unit.test_storage_live_keys import real_count, stored_count


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), result.exception
    return result


async def arun(*args: str) -> Result:
    with trio.fail_after(60):
        return await trio.to_thread.run_sync(functools.partial(run, *args))


def node_config(data_dir: Path, node_id: int = 1) -> Config:
    cfg = Config()
    return attrs.evolve(
        cfg,
        node=attrs.evolve(
            cfg.node,
            id=node_id,
            client_addr="127.0.0.1:0",
            cluster_addr="127.0.0.1:0",
            data_dir=str(data_dir),
        ),
    )


async def _fill(client: Connection) -> None:
    """Overwrites, deletes, a transaction and a compaction: revisions 1..13, compacted at 5."""
    for i in range(8):
        await client.put(key=f"k{i % 3}", value=f"v{i}".encode())
    await client.delete(key="k1")
    await client.txn(
        success=[
            kv_pb2.TxnOp(put=kv_pb2.PutRequest(key="t", value=b"txn")),
            kv_pb2.TxnOp(delete=kv_pb2.DeleteRequest(key="k0")),
        ]
    )
    await client.put(key="k0", value=b"again")
    await client.put(key="k2", value=b"last")
    await client.put(key="ü/key", value=b"\x00\xff")
    await client.compact(revision=5)


async def _observe(client: Connection) -> dict[str, Any]:
    """What a client can see of the store: ranges at several revisions, histories, Status."""
    seen: dict[str, Any] = {}
    status = await client.status()
    seen["status"] = (status.revision, status.compact_revision)
    for rev in (0, 5, 7, 10, status.revision):
        resp = await client.range(start="\x00", revision=rev, read_mode=kv_pb2.READ_MODE_EVENTUAL)
        seen[f"range@{rev}"] = [
            (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in resp.kvs
        ]
    for key in ("k0", "k1", "k2", "t", "ü/key"):
        hist = await client.history(key=key, read_mode=kv_pb2.READ_MODE_EVENTUAL)
        seen[f"history/{key}"] = [(kv.mod_revision, kv.version, kv.deleted, kv.value) for kv in hist.versions]
    with pytest.raises(ClientError) as err:
        await client.get(key="k0", revision=4, read_mode=kv_pb2.READ_MODE_EVENTUAL)
    seen["below-compact"] = err.value.code
    return seen


@pytest.fixture
async def source(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """An in-process node holding _fill's data: (endpoint, what it shows)."""
    port = await nursery.start(serve_node, node_config(tmp_path / "source"))
    endpoint = f"127.0.0.1:{port}"
    async with open_connection(endpoint) as client:
        await _fill(client)
        seen = await _observe(client)
    assert seen["below-compact"] == StatusCode.OUT_OF_RANGE
    yield endpoint, seen
    nursery.cancel_scope.cancel()


async def test_save_status_restore_and_serve_the_same_data(
    tmp_path: Path, source: tuple[str, dict[str, Any]]
) -> None:
    endpoint, seen = source
    backup = tmp_path / "b.snap"
    saved = await arun("snapshot", "save", str(backup), "--endpoints", endpoint, "-o", "json")
    assert saved.exit_code == 0, saved.stderr
    doc = json.loads(saved.stdout)
    assert (doc["revision"], doc["compact_revision"], doc["member_id"]) == (13, 5, 1)
    assert doc["index"] >= 13 and doc["term"] >= 1 and doc["endpoint"] == endpoint
    assert "received" in saved.stderr and f"{doc['sqlite_bytes']}/{doc['sqlite_bytes']} bytes" in saved.stderr
    assert not (tmp_path / "b.snap.part").exists()
    assert verify_backup(backup).sha256 == doc["sha256"]
    # The node's snapshot directory holds nothing of the stream (the copy was unlinked).
    assert not list((tmp_path / "source" / "snap").glob("backup-*"))

    status = run("snapshot", "status", str(backup), "-o", "json")
    assert status.exit_code == 0
    assert json.loads(status.stdout) == {
        **{k: v for k, v in doc.items() if k != "endpoint"},
        "verified": True,
    }
    table = run("snapshot", "status", str(backup))
    assert table.exit_code == 0 and "sha256" in table.stdout and doc["sha256"] in table.stdout

    restored = tmp_path / "restored"
    r = run("snapshot", "restore", str(backup), "--data-dir", str(restored), "-o", "json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert (info["index"], info["revision"], info["term"]) == (doc["index"], 13, 1)
    assert info["cluster_token"] == doc["backup_id"] and info["voters"] == [1]
    # The restored file's live key count (ggap_mvcc_keys_total) is exact.
    kv_db = restored / "kv.db"
    assert stored_count(kv_db) == real_count(kv_db) > 0

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_node, node_config(restored))
        async with open_connection(f"127.0.0.1:{port}") as client:
            assert await _observe(client) == seen
            after = await client.put(key="new", value=b"x")
            assert after.header.revision == 14
        nursery.cancel_scope.cancel()


async def test_save_refuses_an_existing_file_unless_forced(
    tmp_path: Path, source: tuple[str, dict[str, Any]]
) -> None:
    endpoint, _ = source
    backup = tmp_path / "b.snap"
    backup.write_bytes(b"keep me")
    refused = await arun("snapshot", "save", str(backup), "--endpoints", endpoint)
    assert refused.exit_code == 2 and "exists; pass --force" in refused.stderr
    assert backup.read_bytes() == b"keep me" and "asking" not in refused.stderr  # no server contacted
    forced = await arun("snapshot", "save", str(backup), "--endpoints", endpoint, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert "sha256" in forced.stdout
    verify_backup(backup)


async def test_save_failures_leave_no_part_file(tmp_path: Path) -> None:
    backup = tmp_path / "b.snap"
    gone = await arun("snapshot", "save", str(backup), "--endpoints", refused_endpoint(), "--timeout", "2")
    assert gone.exit_code == 1 and gone.stderr.startswith("Error: UNAVAILABLE: cannot connect")
    assert os.listdir(tmp_path) == []
    missing = await arun("snapshot", "save", str(tmp_path / "no" / "b.snap"))
    assert missing.exit_code == 2 and "is not a directory" in missing.stderr


# --- status and restore of damaged files, and restore refusals -------------------------------


@pytest.fixture(scope="module")
def good_backup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of a node with _fill's data, saved through the CLI once for the module."""
    d = tmp_path_factory.mktemp("backup")
    path = d / "b.snap"

    async def make() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_node, node_config(d / "node"))
            async with open_connection(f"127.0.0.1:{port}") as client:
                await _fill(client)
            result = await arun("snapshot", "save", str(path), "--endpoints", f"127.0.0.1:{port}")
            assert result.exit_code == 0, result.stderr
            nursery.cancel_scope.cancel()

    trio.run(make)
    return path


def _damaged(tmp_path: Path, good: Path, how: str) -> Path:
    raw = bytearray(good.read_bytes())
    if how == "flipped":
        raw[len(raw) // 3] ^= 0x10
    elif how == "truncated":
        del raw[len(raw) * 2 // 3 :]
    path = tmp_path / f"{how}.snap"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_status_of_a_damaged_file_exits_2(tmp_path: Path, good_backup: Path, how: str) -> None:
    result = run("snapshot", "status", str(_damaged(tmp_path, good_backup, how)))
    assert result.exit_code == 2 and result.stdout == ""
    expected = "checksum mismatch" if how == "flipped" else "not a complete ggap snapshot file"
    assert result.stderr.startswith("Error: DATA_LOSS: ") and expected in result.stderr


def test_status_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    assert run("snapshot", "status", str(tmp_path / "nope")).exit_code == 2


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_restore_of_a_damaged_file_exits_2_and_creates_nothing(
    tmp_path: Path, good_backup: Path, how: str
) -> None:
    bad = _damaged(tmp_path, good_backup, how)
    target = tmp_path / "parent" / "data"
    before = sorted(tmp_path.iterdir())
    result = run("snapshot", "restore", str(bad), "--data-dir", str(target))
    assert result.exit_code == 2 and "DATA_LOSS" in result.stderr
    assert sorted(tmp_path.iterdir()) == before  # not even the parent was created


def test_restore_refuses_a_non_empty_dir_and_leaves_it_alone(tmp_path: Path, good_backup: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    (target / "kv.db").write_bytes(b"someone's data")
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(target))
    assert result.exit_code == 2 and "is not empty" in result.stderr
    assert [p.name for p in target.iterdir()] == ["kv.db"]
    assert (target / "kv.db").read_bytes() == b"someone's data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging dir left


def test_a_failed_build_leaves_no_directory_behind(
    tmp_path: Path, good_backup: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the checks (here: raft.db cannot be written) removes the staging dir
    and the parents the restore created."""
    from ggap.storage import restore as restore_mod

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(restore_mod.LogStore, "open", broken)
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(tmp_path / "a" / "b" / "data"))
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert "nothing was changed" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_restore_refuses_a_file_as_data_dir(tmp_path: Path, good_backup: Path) -> None:
    target = tmp_path / "data"
    target.write_text("a file")
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(target))
    assert result.exit_code == 2 and "is not a directory" in result.stderr
    assert target.read_text() == "a file"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "1=127.0.0.1:1,nonsense"], "expected ID=HOST:PORT"),
        (["--peers", "2=127.0.0.1:1,3=127.0.0.1:2"], "node 1 is not one of the peers"),
        (["--node-id", "0"], "x>=1"),
        (["--cluster-token", "no spaces allowed"], "cluster token"),
    ],
)
def test_restore_refuses_bad_arguments(
    tmp_path: Path, good_backup: Path, args: list[str], message: str
) -> None:
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(tmp_path / "d"), *args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "d").exists()


def test_restore_into_an_empty_dir(tmp_path: Path, good_backup: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(target), "--node-id", "4")
    assert result.exit_code == 0, result.stderr
    assert "start it with: ggap node --node-id 4" in result.stdout
    assert sorted(p.name for p in target.iterdir()) == ["kv.db", "raft.db", "snap"]


def test_restore_builds_what_a_cluster_member_checks_at_start(tmp_path: Path, good_backup: Path) -> None:
    """Three data dirs from one file: same state, same token, own node ids, the peers."""
    peers = "1=127.0.0.1:7001,2=127.0.0.1:7011,3=127.0.0.1:7021"
    meta = verify_backup(good_backup)
    tokens = set()
    for i in (1, 2, 3):
        d = tmp_path / f"node{i}"
        result = run(
            "snapshot",
            "restore",
            str(good_backup),
            "--data-dir",
            str(d),
            "--node-id",
            str(i),
            "--peers",
            peers,
        )
        assert result.exit_code == 0, result.stderr
        info = inspect_data_dir(d)
        assert (info["kv"]["applied_index"], info["kv"]["revision"]) == (meta.index, meta.revision)
        assert info["kv"]["compact_revision"] == meta.compact_revision
        log = info["log"]
        assert log["snapshot"] == {"index": meta.index, "term": 1, "voters": [1, 2, 3], "learners": []}
        assert (log["compacted_index"], log["last_index"], log["entries"]) == (meta.index, meta.index, 0)
        assert log["hard_state"] == {"term": 1, "vote": 0, "commit": meta.index}
        snap = info["snapshot_file"]
        assert (snap["index"], snap["term"], snap["revision"]) == (meta.index, 1, meta.revision)
        store = LogStore.open(d / "raft.db", Config().storage)
        try:
            assert store.get_meta(META_NODE_ID) == str(i).encode()
            members = store.get_meta(META_MEMBERS)
            assert members is not None and decode_members(members) == {
                1: "127.0.0.1:7001",
                2: "127.0.0.1:7011",
                3: "127.0.0.1:7021",
            }
            token = store.get_meta(META_CLUSTER_TOKEN)
            assert token is not None
            tokens.add(token.decode())
        finally:
            store.close()
    assert tokens == {meta.backup_id}
    # The restored cluster's identity is its own: the original cluster's nodes are refused.
    ids = {1: "a", 2: "b", 3: "c"}
    assert cluster_id(ids, meta.backup_id) != cluster_id(ids)
    assert cluster_id(ids, "") == cluster_id(ids) == cluster_id({1: "x", 2: "y", 3: "z"})


def test_an_explicit_cluster_token_wins(tmp_path: Path, good_backup: Path) -> None:
    d = tmp_path / "d"
    result = run("snapshot", "restore", str(good_backup), "--data-dir", str(d), "--cluster-token", "drill-7")
    assert result.exit_code == 0, result.stderr
    store = LogStore.open(d / "raft.db", Config().storage)
    try:
        assert store.get_meta(META_CLUSTER_TOKEN) == b"drill-7"
    finally:
        store.close()


async def test_a_restored_node_refuses_another_node_id(tmp_path: Path, good_backup: Path) -> None:
    d = tmp_path / "d"
    assert run("snapshot", "restore", str(good_backup), "--data-dir", str(d), "--node-id", "2").exit_code == 0
    with trio.fail_after(20), pytest.raises(StartupError, match="belongs to node 2, not node 1"):
        await serve_node(node_config(d, node_id=1))
