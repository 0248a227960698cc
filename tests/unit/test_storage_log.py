"""LogStore: append/truncate/compact, hard state, metadata, corruption detection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ggap.codec import encode_command_entry
from ggap.config.model import StorageConfig
from ggap.storage import LogCompacted, LogStore, LogUnavailable
from ggap.types import Delete, Noop, Put, StorageCorrupt


def entry(index: int, term: int, key: str = "k") -> tuple[int, int, bytes]:
    return index, term, encode_command_entry(index, term, Put(key, f"{index}@{term}".encode()))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogStore]:
    store = LogStore.open(tmp_path / "raft.db", StorageConfig())
    yield store
    store.close()


def test_empty_log(log: LogStore) -> None:
    assert (log.first_index, log.last_index, log.last_term) == (1, 0, 0)
    assert log.hard_state() == (0, 0, 0)
    assert log.entries(1, 1) == []
    assert log.schema_version == 1
    with pytest.raises(LogUnavailable):
        log.entries(1, 2)


def test_append_and_read(log: LogStore) -> None:
    batch = [entry(1, 1), entry(2, 1), entry(3, 2)]
    log.append(batch)
    assert (log.first_index, log.last_index, log.last_term) == (1, 3, 2)
    assert log.entries(1, 4) == batch
    assert log.entries(2, 3) == [batch[1]]
    assert [(i, t, c) for i, t, c in log.commands(1, 3)] == [
        (1, 1, Put("k", b"1@1")),
        (2, 1, Put("k", b"2@1")),
    ]
    assert log.term(3) == 2 and log.term(1) == 1
    with pytest.raises(LogUnavailable):
        log.entries(1, 5)
    with pytest.raises(ValueError):
        log.entries(3, 2)


def test_append_conflict_truncates_suffix(log: LogStore, tmp_path: Path) -> None:
    log.append([entry(i, 1) for i in range(1, 6)])
    log.append([entry(3, 2), entry(4, 2)])
    assert (log.last_index, log.last_term) == (4, 2)
    assert [(i, t) for i, t, _ in log.entries(1, 5)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    again = LogStore.open(tmp_path / "raft.db", StorageConfig())
    try:
        assert (again.first_index, again.last_index, again.last_term) == (1, 4, 2)
        assert [(i, t) for i, t, _ in again.entries(1, 5)] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    finally:
        again.close()


def test_append_rejects_gaps_and_bad_entries(log: LogStore) -> None:
    log.append([entry(1, 1)])
    with pytest.raises(ValueError, match="ends at 1"):
        log.append([entry(3, 1)])
    with pytest.raises(ValueError, match="contiguous"):
        log.append([entry(2, 1), entry(4, 1)])
    with pytest.raises(ValueError):
        log.append([(0, 1, b"x")])
    with pytest.raises(TypeError):
        log.append([(2, 1, "text")])  # type: ignore[list-item]
    assert log.last_index == 1


def test_hard_state_alone_and_with_entries(log: LogStore, tmp_path: Path) -> None:
    log.set_hard_state(3, 2, 0)
    assert log.hard_state() == (3, 2, 0)
    log.append([entry(1, 3), entry(2, 3)], hard_state=(3, 2, 2))
    assert log.hard_state() == (3, 2, 2)
    with pytest.raises(ValueError):
        log.set_hard_state(-1, 0, 0)
    assert log.hard_state() == (3, 2, 2)
    reopened = LogStore.open(tmp_path / "raft.db", StorageConfig())
    try:
        assert reopened.hard_state() == (3, 2, 2)
        assert reopened.last_index == 2
    finally:
        reopened.close()


def test_failed_append_changes_nothing(log: LogStore) -> None:
    log.append([entry(1, 1)], hard_state=(1, 0, 0))
    with pytest.raises(ValueError):
        log.append([entry(2, 1), entry(5, 1)], hard_state=(9, 9, 9))
    assert log.hard_state() == (1, 0, 0) and log.last_index == 1


def test_compact(log: LogStore, tmp_path: Path) -> None:
    log.append([entry(i, 1 if i < 4 else 2) for i in range(1, 7)])
    log.compact(4)
    assert (log.first_index, log.last_index, log.last_term) == (5, 6, 2)
    assert log.compacted == (4, 2)
    assert log.term(4) == 2
    with pytest.raises(LogCompacted):
        log.entries(4, 6)
    with pytest.raises(LogCompacted):
        log.term(3)
    assert [i for i, _, _ in log.entries(5, 7)] == [5, 6]
    log.compact(2)  # already compacted: no-op
    assert log.first_index == 5
    with pytest.raises(ValueError):
        log.compact(7)
    with pytest.raises(ValueError, match="compacted"):
        log.append([entry(4, 3)])
    # Everything compacted: last index/term come from the compaction point.
    log.compact(6)
    assert (log.first_index, log.last_index, log.last_term) == (7, 6, 2)
    log.append([entry(7, 3)])
    assert (log.last_index, log.last_term) == (7, 3)
    reopened = LogStore.open(tmp_path / "raft.db", StorageConfig())
    try:
        assert (reopened.first_index, reopened.last_index, reopened.compacted) == (7, 7, (6, 2))
    finally:
        reopened.close()


def test_meta(log: LogStore) -> None:
    assert log.get_meta("node_id") is None
    log.set_meta("node_id", b"\x01")
    log.set_meta("members", b"[1]")
    log.set_meta("node_id", b"\x02")
    assert log.get_meta("node_id") == b"\x02" and log.get_meta("members") == b"[1]"
    with pytest.raises(TypeError):
        log.set_meta("x", "str")  # type: ignore[arg-type]


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.mark.parametrize("offset", [0, 10, -1])
def test_flipped_byte_is_detected(log: LogStore, tmp_path: Path, offset: int) -> None:
    log.append([entry(1, 1), entry(2, 1, key="victim"), entry(3, 1)])
    raw = _raw(tmp_path / "raft.db")
    try:
        (data,) = raw.execute("SELECT data FROM log_entries WHERE idx=2").fetchone()
        buf = bytearray(data)
        buf[offset] ^= 0x40
        raw.execute("UPDATE log_entries SET data=? WHERE idx=2", (bytes(buf),))
    finally:
        raw.close()
    assert len(log.entries(1, 2)) == 1  # entries before the bad one still read
    with pytest.raises(StorageCorrupt, match="entry 2"):
        log.entries(1, 4)
    with pytest.raises(StorageCorrupt, match="entry 2"):
        log.commands(2, 3)


def test_entry_framed_for_another_index_is_detected(log: LogStore, tmp_path: Path) -> None:
    log.append([entry(1, 1), entry(2, 1)])
    raw = _raw(tmp_path / "raft.db")
    try:
        raw.execute("UPDATE log_entries SET data=? WHERE idx=2", (encode_command_entry(7, 1, Noop()),))
    finally:
        raw.close()
    with pytest.raises(StorageCorrupt, match="index 7"):
        log.entries(2, 3)


def test_missing_row_is_detected(log: LogStore, tmp_path: Path) -> None:
    log.append([entry(1, 1), entry(2, 1), entry(3, 1, key="x")])
    raw = _raw(tmp_path / "raft.db")
    try:
        raw.execute("DELETE FROM log_entries WHERE idx=2")
    finally:
        raw.close()
    with pytest.raises(StorageCorrupt, match="gaps"):
        log.entries(1, 4)


def test_log_synchronous_and_wal(tmp_path: Path) -> None:
    store = LogStore.open(tmp_path / "raft.db", StorageConfig())
    try:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.append([(1, 1, encode_command_entry(1, 1, Delete("a")))])
        assert store.db_size_bytes() > 0
    finally:
        store.close()
