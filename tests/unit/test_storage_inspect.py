"""inspect_data_dir and schema migrations at open."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from ggap.codec import encode_command
from ggap.config.model import MvccConfig, StorageConfig
from ggap.consensus.raft.types import Entry, HardState, SnapshotMeta
from ggap.storage import KV_SCHEMA_VERSION, LOG_SCHEMA_VERSION, KvStore, LogStore, inspect_data_dir
from ggap.storage._schema import KV_KNOWN, LOG_MIGRATIONS
from ggap.storage.snapshot import snapshot_dir, snapshot_path, take_snapshot
from ggap.types import Command, Delete, FailedPrecondition, NotFound, Prune, Put


def _fill(tmp_path: Path) -> None:
    kv = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(history_depth=2), storage=StorageConfig())
    log = LogStore.open(tmp_path / "raft.db", StorageConfig())
    try:
        cmds: list[Command] = [
            Put("a", b"1"),
            Put("a", b"2"),
            Put("a", b"3"),
            Put("b", b"1", expires_at_ms=5),
            Delete("c"),
        ]
        log.save(
            HardState(term=1, vote=1, commit=5),
            [Entry(index=i, term=1, data=encode_command(c)) for i, c in enumerate(cmds, 1)],
        )
        log.set_snapshot(SnapshotMeta(index=3, term=1, voters=(1, 2, 3)))
        log.compact(1)
        log.set_meta("node_id", b"1")
        kv.apply(list(enumerate(cmds, 1)))
        kv.apply([(6, Prune(2, ("a", "b")))])
    finally:
        kv.close()
        log.close()


def test_inspect_reports_both_files(tmp_path: Path) -> None:
    _fill(tmp_path)
    info = inspect_data_dir(tmp_path)
    kv, log = info["kv"], info["log"]
    assert kv["schema_version"] == KV_SCHEMA_VERSION == kv["schema_version_supported"]
    assert (kv["applied_index"], kv["revision"], kv["compact_revision"]) == (6, 4, 0)
    assert (kv["live_keys"], kv["version_rows"], kv["keys_with_ttl"], kv["pruned_keys"]) == (2, 3, 1, 1)
    assert kv["size_bytes"] > 0
    assert (log["first_index"], log["last_index"], log["last_term"], log["entries"]) == (2, 5, 1, 4)
    assert log["hard_state"] == {"term": 1, "vote": 1, "commit": 5}
    assert log["meta_names"] == ["node_id"] and log["schema_version"] == LOG_SCHEMA_VERSION
    assert (log["compacted_index"], log["compacted_term"]) == (1, 1)
    assert log["snapshot"] == {"index": 3, "term": 1, "voters": [1, 2, 3], "learners": []}


def test_inspect_a_file_from_before_the_snapshot_columns(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "raft.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    LOG_MIGRATIONS.apply(sqlite_utils.Database(conn), stop_before="0002_snapshot")
    conn.execute(
        "INSERT INTO log_state (shard, compacted_index, compacted_term, term, vote, commit_index) "
        "VALUES (0, 4, 2, 2, 1, 4)"
    )
    conn.close()
    log = inspect_data_dir(tmp_path)["log"]
    assert log["schema_version"] == 1 and log["schema_version_supported"] == LOG_SCHEMA_VERSION
    assert (log["first_index"], log["last_index"], log["last_term"]) == (5, 4, 2)
    assert log["snapshot"] == {"index": 4, "term": 2, "voters": [], "learners": []}


def test_inspect_is_read_only(tmp_path: Path) -> None:
    _fill(tmp_path)
    before = (tmp_path / "kv.db").read_bytes(), (tmp_path / "raft.db").read_bytes()
    inspect_data_dir(tmp_path)
    assert ((tmp_path / "kv.db").read_bytes(), (tmp_path / "raft.db").read_bytes()) == before


def test_inspect_only_one_file(tmp_path: Path) -> None:
    LogStore.open(tmp_path / "raft.db", StorageConfig()).close()
    info = inspect_data_dir(tmp_path)
    assert info["kv"] is None and info["log"]["last_index"] == 0


def test_inspect_refuses_non_ggap_dirs(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no ggap data"):
        inspect_data_dir(tmp_path)
    with pytest.raises(NotFound, match="not a directory"):
        inspect_data_dir(tmp_path / "missing")
    other = sqlite3.connect(tmp_path / "kv.db")
    other.execute("CREATE TABLE t (x)")
    other.commit()
    other.close()
    with pytest.raises(FailedPrecondition, match="not a ggap database"):
        inspect_data_dir(tmp_path)
    (tmp_path / "kv.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(FailedPrecondition, match="not a readable SQLite"):
        inspect_data_dir(tmp_path)


def test_open_refuses_a_newer_schema(tmp_path: Path) -> None:
    KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig()).close()
    raw = sqlite3.connect(tmp_path / "kv.db")
    raw.execute(
        "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
        "VALUES ('ggap.kv', '9999_future', 'x')"
    )
    raw.commit()
    raw.close()
    with pytest.raises(FailedPrecondition, match="newer version"):
        KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())


def test_reopen_does_not_rerun_migrations(tmp_path: Path) -> None:
    for _ in range(2):
        store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
        assert store.schema_version == KV_SCHEMA_VERSION
        store.close()
    raw = sqlite3.connect(tmp_path / "kv.db")
    try:
        rows = raw.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
    finally:
        raw.close()
    assert rows == [("ggap.kv", name) for name in KV_KNOWN]
    assert os.path.exists(tmp_path / "kv.db")


def test_inspect_shows_the_latest_snapshot_file_and_the_log_range(tmp_path: Path) -> None:
    _fill(tmp_path)
    assert inspect_data_dir(tmp_path)["snapshot_file"] is None  # no snap/ yet
    snap = snapshot_dir(tmp_path)
    assert inspect_data_dir(tmp_path)["snapshot_file"] is None  # an empty snap/
    taken = take_snapshot(tmp_path / "kv.db", snap, busy_timeout_ms=1000)
    (snap / "snapshot-00000000000000000002.db").write_bytes(b"an older one, never read")
    info = inspect_data_dir(tmp_path)
    file = info["snapshot_file"]
    assert file == {
        "file": str(taken.path),
        "size_bytes": taken.size,
        "files": 2,
        "index": 6,  # kv.db's applied index when it was taken
        "term": None,  # raft.db's snapshot is at 3, not 6: the term is not known here
        "revision": 4,
        "compact_revision": 0,
    }
    assert (info["log"]["first_index"], info["log"]["last_index"]) == (2, 5)


def test_inspect_takes_the_snapshot_term_from_the_log(tmp_path: Path) -> None:
    _fill(tmp_path)
    taken = take_snapshot(tmp_path / "kv.db", snapshot_dir(tmp_path), busy_timeout_ms=1000)
    taken.path.replace(snapshot_path(tmp_path / "snap", 3))
    file = inspect_data_dir(tmp_path)["snapshot_file"]
    # Named for index 3 (raft.db's snapshot index) but holding index 6: the content is
    # what counts, and the log's term for index 3 is not this file's.
    assert file["index"] == 6 and file["term"] is None and file["size_bytes"] == taken.size
    restored = tmp_path / "restored"
    restored.mkdir()
    snap = snapshot_dir(restored)
    take_snapshot(tmp_path / "kv.db", snap, busy_timeout_ms=1000)
    log = LogStore.open(restored / "raft.db", StorageConfig())
    try:
        log.save(HardState(term=1, vote=0, commit=6), [], SnapshotMeta(index=6, term=4, voters=(1,)))
    finally:
        log.close()
    info = inspect_data_dir(restored)
    assert (info["snapshot_file"]["index"], info["snapshot_file"]["term"]) == (6, 4)
    assert (info["log"]["first_index"], info["log"]["last_index"], info["log"]["entries"]) == (7, 6, 0)


def test_inspect_reports_an_unreadable_snapshot_file(tmp_path: Path) -> None:
    _fill(tmp_path)
    bad = snapshot_path(snapshot_dir(tmp_path), 9)
    bad.write_bytes(b"not sqlite" * 500)
    file = inspect_data_dir(tmp_path)["snapshot_file"]
    assert file["file"] == str(bad) and file["size_bytes"] == 5000
    assert "not a readable kv.db snapshot" in file["error"] and "index" not in file
