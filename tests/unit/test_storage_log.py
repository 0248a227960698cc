"""LogStore specifics: the entry cache and the reader connection, migration of old files,
metadata, argument checks, corruption detection. The behaviour it shares with SimStorage
(the DurableStorage contract) is in test_storage_contract.py."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from ggap.codec import encode_command, encode_command_entry
from ggap.config.model import StorageConfig
from ggap.consensus.raft.storage import LogCompactedError, LogUnavailableError
from ggap.consensus.raft.types import Entry, EntryKind, HardState, SnapshotMeta
from ggap.storage import LOG_SCHEMA_VERSION, CacheInfo, LogStore
from ggap.storage._schema import LOG_MIGRATIONS
from ggap.types import Noop, Put, StorageCorrupt


def entry(index: int, term: int, key: str = "k", size: int = 0) -> Entry:
    value = f"{index:04}@{term}".encode() + b"x" * size
    return Entry(index=index, term=term, kind=EntryKind.NORMAL, data=encode_command(Put(key, value)))


def ents(lo: int, hi: int, term: int = 1, size: int = 0) -> list[Entry]:
    return [entry(i, term, size=size) for i in range(lo, hi)]


def open_log(path: Path, **cache: int) -> LogStore:
    return LogStore.open(path / "raft.db", StorageConfig(), **cache)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogStore]:
    store = open_log(tmp_path)
    yield store
    store.close()


ALL = 1 << 62


# --- cache -------------------------------------------------------------------------------


def test_cache_stays_bounded_by_count_and_bytes(tmp_path: Path) -> None:
    store = open_log(tmp_path, cache_entries=10, cache_bytes=1000)
    try:
        for lo in range(1, 101, 5):
            store.save(None, ents(lo, lo + 5))
            info = store.cache_info()
            assert info.entries <= 10 and info.bytes <= 1000
        info = store.cache_info()
        assert (info.first_index, info.entries) == (91, 10)  # the newest, up to last_index
        # Big entries: the byte bound wins.
        store.save(None, ents(101, 106, size=400))
        info = store.cache_info()
        assert info.bytes <= 1000 and info.entries == 2 and info.first_index == 104
        # An entry larger than the whole budget is not cached at all.
        store.save(None, [entry(106, 1, size=5000)])
        assert store.cache_info().entries == 0 and store.cache_info().first_index == 107
        big = [entry(106, 1, size=5000)]
        assert store.entries(1, 107, ALL) == ents(1, 101) + ents(101, 106, size=400) + big
    finally:
        store.close()


def test_reads_below_and_across_the_cache(tmp_path: Path) -> None:
    store = open_log(tmp_path, cache_entries=8)
    try:
        written = ents(1, 31, term=1) + ents(31, 41, term=2)
        store.save(None, written)
        assert store.cache_info().first_index == 33
        assert store.entries(1, 41, ALL) == written  # file, then cache
        assert store.entries(5, 9, ALL) == written[4:8]  # file only
        assert store.entries(35, 38, ALL) == written[34:37]  # cache only
        assert [store.term(i) for i in (1, 30, 31, 32, 33, 40)] == [1, 1, 2, 2, 2, 2]
        size = len(written[0].data)
        assert store.entries(28, 41, 3 * size) == written[27:30]  # budget stops in the file part
        assert store.entries(31, 41, 3 * size) == written[30:33]  # ... and across the boundary
        # A conflicting suffix that starts below the cache replaces file rows and cache.
        store.save(None, ents(20, 23, term=3))
        assert store.last_index() == 22 and store.cache_info().first_index == 20
        assert [e.term for e in store.entries(18, 23, ALL)] == [1, 1, 3, 3, 3]
        # Compaction inside the cache trims it.
        store.set_snapshot(SnapshotMeta(index=21, term=3))
        store.compact(21)
        info = store.cache_info()
        assert (info.first_index, info.entries) == (22, 1)
        assert store.term(21) == 3 and store.entries(22, 23, ALL) == [entry(22, 3)]
    finally:
        store.close()


def test_a_cold_store_reads_the_file(tmp_path: Path) -> None:
    store = open_log(tmp_path)
    store.save(HardState(term=2, vote=1, commit=3), ents(1, 4) + ents(4, 6, term=2))
    store.close()
    again = open_log(tmp_path)
    try:
        assert again.cache_info().entries == 0
        assert again.entries(1, 6, ALL) == ents(1, 4) + ents(4, 6, term=2)
        assert again.term(5) == 2
        again.save(None, [entry(6, 2)])
        assert again.cache_info() == CacheInfo(6, 1, len(entry(6, 2).data))
        assert again.entries(4, 7, ALL) == ents(4, 7, term=2)
    finally:
        again.close()


def test_reads_from_another_thread_while_saving(tmp_path: Path) -> None:
    """The driver reads on its loop thread while the writer thread saves and compacts."""
    store = open_log(tmp_path, cache_entries=16)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                first, last = store.first_index(), store.last_index()
                lo = max(first, last - 40)
                try:
                    got = store.entries(lo, last + 1, ALL)
                except LogCompactedError:
                    continue
                assert [e.index for e in got] == list(range(lo, lo + len(got)))
                assert all(e.term == 1 for e in got)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for lo in range(1, 600, 10):
            store.save(None, ents(lo, lo + 10))
            if lo > 100:
                store.set_snapshot(SnapshotMeta(index=lo - 50, term=1))
                store.compact(lo - 60)
    finally:
        stop.set()
        t.join()
        store.close()
    assert not errors, errors


def test_cache_bounds_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache"):
        open_log(tmp_path, cache_entries=-1)


# --- schema ----------------------------------------------------------------------------


def test_old_file_gets_its_compaction_point_as_snapshot(tmp_path: Path) -> None:
    """A raft.db from before migration 0002: the snapshot starts at the compaction point."""
    path = tmp_path / "raft.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    LOG_MIGRATIONS.apply(sqlite_utils.Database(conn), stop_before="0002_snapshot")
    conn.execute(
        "INSERT INTO log_state (shard, compacted_index, compacted_term, term, vote, commit_index) "
        "VALUES (0, 5, 2, 3, 1, 7)"
    )
    for i in (6, 7):
        conn.execute(
            "INSERT INTO log_entries (shard, idx, term, data) VALUES (0, ?, 3, ?)",
            (i, encode_command_entry(i, 3, Put("k", b"v"))),
        )
    conn.close()
    store = open_log(tmp_path)
    try:
        assert store.schema_version == LOG_SCHEMA_VERSION == 2
        assert store.initial_state() == (HardState(term=3, vote=1, commit=7), SnapshotMeta(index=5, term=2))
        assert (store.first_index(), store.last_index(), store.term(5), store.term(7)) == (6, 7, 2, 3)
        assert [e.data for e in store.entries(6, 8, ALL)] == [encode_command(Put("k", b"v"))] * 2
    finally:
        store.close()


def test_log_synchronous_and_wal(log: LogStore) -> None:
    assert log._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert log._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        log._reader.execute("DELETE FROM log_entries")
    log.save(None, [entry(1, 1)])
    assert log.db_size_bytes() > 0


def test_frames_are_the_codec_entry_frames(log: LogStore, tmp_path: Path) -> None:
    log.save(None, [entry(1, 1), Entry(index=2, term=1, kind=EntryKind.NOOP)])
    raw = sqlite3.connect(tmp_path / "raft.db")
    try:
        rows = raw.execute("SELECT idx, data FROM log_entries ORDER BY idx").fetchall()
    finally:
        raw.close()
    assert rows[0] == (1, encode_command_entry(1, 1, Put("k", b"0001@1")))
    assert rows[1][0] == 2 and rows[1][1][1] == EntryKind.NOOP


# --- metadata and argument checks ---------------------------------------------------------


def test_meta(log: LogStore) -> None:
    assert log.get_meta("node_id") is None
    log.set_meta("node_id", b"\x01")
    log.set_meta("members", b"[1]")
    log.set_meta("node_id", b"\x02")
    assert log.get_meta("node_id") == b"\x02" and log.get_meta("members") == b"[1]"
    with pytest.raises(TypeError):
        log.set_meta("x", "str")  # type: ignore[arg-type]


def test_bad_values_are_refused_and_change_nothing(log: LogStore) -> None:
    log.save(HardState(term=1), [entry(1, 1)])
    with pytest.raises(ValueError):
        log.save(None, [Entry(index=0, term=1)])
    with pytest.raises(ValueError):
        log.save(None, [Entry(index=2, term=-1)])
    with pytest.raises(TypeError):
        log.save(None, [Entry(index=2, term=1, data="text")])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        log.save(HardState(term=-1), [])
    with pytest.raises(ValueError, match="gap"):
        log.save(HardState(term=9, vote=9, commit=9), [entry(5, 1)])
    with pytest.raises(ValueError, match="contiguous"):
        log.save(HardState(term=9), [entry(2, 1), entry(4, 1)])
    assert log.hard_state() == HardState(term=1) and log.last_index() == 1
    with pytest.raises(ValueError, match="does not match"):
        log.set_snapshot(SnapshotMeta(index=1, term=2))
    with pytest.raises(ValueError, match="beyond"):
        log.set_snapshot(SnapshotMeta(index=2, term=1))
    log.set_snapshot(SnapshotMeta(index=1, term=1))
    with pytest.raises(ValueError, match="older"):
        log.set_snapshot(SnapshotMeta(index=0, term=0))


# --- corruption -------------------------------------------------------------------------


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


@pytest.fixture
def cold(tmp_path: Path) -> Iterator[LogStore]:
    """A store without a cache: every read goes to the file."""
    store = open_log(tmp_path, cache_entries=0)
    yield store
    store.close()


@pytest.mark.parametrize("offset", [0, 10, -1])
def test_flipped_byte_is_detected(cold: LogStore, tmp_path: Path, offset: int) -> None:
    cold.save(None, [entry(1, 1), entry(2, 1, key="victim"), entry(3, 1)])
    raw = _raw(tmp_path / "raft.db")
    try:
        (data,) = raw.execute("SELECT data FROM log_entries WHERE idx=2").fetchone()
        buf = bytearray(data)
        buf[offset] ^= 0x40
        raw.execute("UPDATE log_entries SET data=? WHERE idx=2", (bytes(buf),))
    finally:
        raw.close()
    assert len(cold.entries(1, 2, ALL)) == 1  # entries before the bad one still read
    with pytest.raises(StorageCorrupt, match="entry 2"):
        cold.entries(1, 4, ALL)


def test_entry_framed_for_another_index_is_detected(cold: LogStore, tmp_path: Path) -> None:
    cold.save(None, [entry(1, 1), entry(2, 1)])
    raw = _raw(tmp_path / "raft.db")
    try:
        raw.execute("UPDATE log_entries SET data=? WHERE idx=2", (encode_command_entry(7, 1, Noop()),))
    finally:
        raw.close()
    with pytest.raises(StorageCorrupt, match="index 7"):
        cold.entries(2, 3, ALL)


def test_missing_row_is_detected(cold: LogStore, tmp_path: Path) -> None:
    cold.save(None, [entry(1, 1), entry(2, 1), entry(3, 1, key="x")])
    raw = _raw(tmp_path / "raft.db")
    try:
        raw.execute("DELETE FROM log_entries WHERE idx=2")
    finally:
        raw.close()
    with pytest.raises(StorageCorrupt, match="gaps"):
        cold.entries(1, 4, ALL)
    with pytest.raises(StorageCorrupt, match="gaps"):
        cold.term(2)
    assert cold.term(3) == 1
    with pytest.raises(LogUnavailableError):
        cold.term(4)


def test_rows_below_the_compaction_point_are_corruption(log: LogStore, tmp_path: Path) -> None:
    log.save(None, ents(1, 5))
    log.set_snapshot(SnapshotMeta(index=3, term=1))
    log.compact(3)
    raw = _raw(tmp_path / "raft.db")
    try:
        raw.execute("INSERT INTO log_entries VALUES (0, 2, 1, ?)", (encode_command_entry(2, 1, Noop()),))
    finally:
        raw.close()
    with pytest.raises(StorageCorrupt, match="compaction point"):
        open_log(tmp_path)
