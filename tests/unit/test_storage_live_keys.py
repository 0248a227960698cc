"""kv_meta.live_keys (ggap_mvcc_keys_total) is kept exact by the apply transaction: it always
equals a real count of the keys whose newest version is not a tombstone, under any mix of
commands, across reopen, snapshot install, and files written before it existed."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import KvStore
from ggap.storage.snapshot import snapshot_dir, take_snapshot
from ggap.types import Command, Compact, Delete, Expire, Noop, Prune, Put, Txn
from ggap.types.commands import Compare, CompareOp, CompareTarget, TxnGet

_REAL_COUNT = (
    "SELECT count(*) FROM (SELECT tombstone, max(mod_revision) FROM kv_versions WHERE shard=0 GROUP BY key) "
    "WHERE tombstone=0"
)


def real_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(_REAL_COUNT).fetchone()[0])
    finally:
        conn.close()


def stored_count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT live_keys FROM kv_meta WHERE shard=0").fetchone()[0])
    finally:
        conn.close()


def open_store(path: Path) -> KvStore:
    return KvStore.open(path, mvcc=MvccConfig(), storage=StorageConfig())


def random_command(rng: random.Random, store: KvStore) -> Command:
    key = f"k{rng.randrange(12)}"
    other = f"k{rng.randrange(12)}"
    roll = rng.random()
    if roll < 0.35:
        return Put(key, b"v", expires_at_ms=rng.choice((0, 0, 1000)))
    if roll < 0.55:
        return Delete(key)
    if roll < 0.75:
        exists = Compare(key=key, target=CompareTarget.EXISTS, op=CompareOp.EQUAL, number=1)
        ops_a = (Delete(key), Put(other, b"t")) if other != key else (Delete(key),)
        ops_b = (Put(key, b"t"), TxnGet(other))
        return Txn(compare=(exists,), success=ops_a, failure=ops_b)
    if roll < 0.85:
        # TTL expiry: the current version of a key, or a stale mod revision (expires nothing).
        rows = store.reader()
        try:
            kv, _ = rows.get(key)
        finally:
            rows.close()
        mod = kv.mod_revision if kv is not None and rng.random() < 0.8 else 1
        return Expire(items=((key, mod),))
    if roll < 0.92:
        target = rng.randrange(store.compact_revision, store.revision + 2)
        return Compact(revision=target)  # sometimes refused (OutOfRange): must change nothing
    if roll < 0.97:
        return Prune(keys=(key, other), depth=rng.choice((1, 2)))
    return Noop()


@pytest.mark.parametrize("seed", range(5))
def test_count_is_exact_under_a_random_mix(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "kv.db"
    store = open_store(path)
    index = 0
    try:
        for _ in range(60):
            batch = []
            for _ in range(rng.randrange(1, 6)):
                index += 1
                batch.append((index, random_command(rng, store)))
            store.apply(batch)
            assert store.live_keys == real_count(path) == stored_count(path), f"seed={seed}"
    finally:
        store.close()
    again = open_store(path)
    try:
        assert again.live_keys == real_count(path), f"seed={seed}"
    finally:
        again.close()


def test_a_refused_command_leaves_the_count_alone(tmp_path: Path) -> None:
    store = open_store(tmp_path / "kv.db")
    try:
        store.apply([(1, Put("a", b"1")), (2, Put("", b"bad")), (3, Compact(revision=99))])
        assert store.live_keys == 1
    finally:
        store.close()


def _filled(path: Path, n: int) -> None:
    store = open_store(path)
    try:
        cmds: list[Command] = [Put(f"k{i}", b"v") for i in range(n)]
        cmds += [Delete("k0"), Put("k0", b"again"), Delete("k1")]
        store.apply(list(enumerate(cmds, start=1)))
        assert store.live_keys == n - 1
    finally:
        store.close()


def test_snapshot_install_carries_the_count(tmp_path: Path) -> None:
    src = tmp_path / "a" / "kv.db"
    src.parent.mkdir()
    _filled(src, 10)
    snap = take_snapshot(src, snapshot_dir(tmp_path / "a"), busy_timeout_ms=1000)
    dst = tmp_path / "kv.db"
    store = open_store(dst)
    try:
        store.apply([(1, Put("x", b"1"))])
        store.install_snapshot(snap.path)
        assert store.live_keys == 9 == real_count(dst)
        store.apply([(snap.index + 1, Put("new", b"1"))])
        assert store.live_keys == 10 == real_count(dst)
    finally:
        store.close()


def _make_old(path: Path) -> None:
    """Turn a kv.db into one written before migration 0003."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("ALTER TABLE kv_meta DROP COLUMN live_keys")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name='0003_live_keys'")
    finally:
        conn.close()


def test_migration_counts_the_keys_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "kv.db"
    _filled(path, 25)
    _make_old(path)
    store = open_store(path)
    try:
        assert store.live_keys == 24 == stored_count(path)
    finally:
        store.close()


def test_installing_a_snapshot_of_an_older_ggap_migrates_it(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    _filled(old, 7)
    _make_old(old)
    store = open_store(tmp_path / "kv.db")
    try:
        store.install_snapshot(old)
        assert store.live_keys == 6 == stored_count(tmp_path / "kv.db")
    finally:
        store.close()
