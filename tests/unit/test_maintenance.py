"""Leader-side history retention and local space keeping (ggap/server/maintenance.py),
against a real KvStore: proposals are applied to it directly, as the log would."""

from __future__ import annotations

import collections
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import attrs
import pytest
import trio

from ggap.config.model import MvccConfig, StorageConfig
from ggap.replica.api import RoleInfo
from ggap.server.maintenance import HistoryKeeper, SpaceKeeper, compaction_target
from ggap.server.reads import ReaderPool
from ggap.storage import KvStore, LogStore
from ggap.types import ApplyResult, Command, Compact, Delete, GgapError, Prune, Put, ResourceExhausted, Txn

T = TypeVar("T")


@attrs.define
class StoreConsensus:
    """Applies each proposal to the store at the next index; records what was proposed."""

    kv: KvStore
    proposed: list[Command] = attrs.Factory(list)
    leader: bool = True
    term: int = 1

    async def propose(self, command: Command) -> ApplyResult:
        self.proposed.append(command)
        applied = self.kv.apply([(self.kv.applied_index + 1, command)])[0]
        assert applied is not None
        if isinstance(applied.result, GgapError):
            raise applied.result
        return applied.result

    def role(self) -> RoleInfo:
        return RoleInfo(
            member_id=1,
            leader_id=1 if self.leader else 2,
            term=self.term,
            role="leader" if self.leader else "follower",
            commit_index=self.kv.applied_index,
            applied_index=self.kv.applied_index,
        )

    async def maintain(self, fn: Callable[[], T]) -> T:
        return fn()


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KvStore]:
    store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
    yield store
    store.close()


def write(consensus: StoreConsensus, *cmds: Command) -> None:
    for cmd in cmds:
        consensus.kv.apply([(consensus.kv.applied_index + 1, cmd)])


def test_compaction_target_by_revisions_by_age_and_both() -> None:
    samples: collections.deque[tuple[float, int]] = collections.deque()
    assert compaction_target(100, samples, 0.0, keep_revisions=30, keep_ms=0) == 70
    assert compaction_target(20, samples, 0.0, keep_revisions=30, keep_ms=0) == 0
    samples.extend([(0.0, 10), (5.0, 40), (9.0, 60)])
    # keep 6 s at t=12: the newest sample at least 6 s old is (5.0, 40); (0.0, 10) goes.
    assert compaction_target(80, samples, 12.0, keep_revisions=0, keep_ms=6000) == 40
    assert list(samples) == [(5.0, 40), (9.0, 60)]
    # Nothing old enough yet: no target.
    fresh: collections.deque[tuple[float, int]] = collections.deque([(10.0, 5)])
    assert compaction_target(80, fresh, 12.0, keep_revisions=0, keep_ms=6000) == 0
    # Both rules: the higher target wins (history within both bounds).
    assert compaction_target(80, samples, 12.0, keep_revisions=30, keep_ms=6000) == 50
    assert compaction_target(80, samples, 12.0, keep_revisions=50, keep_ms=6000) == 40


async def test_auto_compaction_goes_in_bounded_steps(kv: KvStore) -> None:
    consensus = StoreConsensus(kv)
    write(consensus, *[Put(f"k{i % 3}", b"v") for i in range(50)])
    config = MvccConfig(auto_compact_revisions=10, auto_compact_interval_ms=0, compact_step_versions=15)
    readers = ReaderPool(kv, threads=1)
    try:
        keeper = HistoryKeeper(consensus, readers, config)  # type: ignore[arg-type]
        assert await keeper.compact_step() == 40
        assert consensus.proposed == [Compact(15), Compact(30), Compact(40)]
        assert kv.compact_revision == 40
        assert await keeper.compact_step() == 0  # nothing new to compact
        write(consensus, Put("k0", b"w"))
        assert await keeper.compact_step() == 41
    finally:
        readers.close()


async def test_compaction_steps_are_sized_in_versions_not_revisions(kv: KvStore) -> None:
    consensus = StoreConsensus(kv)
    # Revisions 1-10 hold 20 versions each (one Txn of 20 puts), 11-20 one each.
    for r in range(10):
        write(consensus, Txn(success=tuple(Put(f"t{r}/{k}", b"v") for k in range(20))))
    write(consensus, *[Put("single", b"v") for _ in range(10)])
    config = MvccConfig(auto_compact_revisions=1, auto_compact_interval_ms=0, compact_step_versions=45)
    readers = ReaderPool(kv, threads=1)
    try:
        reader = readers.inline(lambda r: r)
        assert reader.compaction_step(0, 19, 45) == 2  # 40 versions; the 3rd Txn would pass 45
        assert reader.compaction_step(0, 19, 5) == 1  # one revision bigger than a step is one step
        assert reader.compaction_step(10, 19, 5) == 15
        assert reader.compaction_step(10, 19, 500) == 19
        keeper = HistoryKeeper(consensus, readers, config)  # type: ignore[arg-type]
        assert await keeper.compact_step() == 19
        assert consensus.proposed == [
            Compact(2),
            Compact(4),
            Compact(6),
            Compact(8),
            Compact(15),
            Compact(19),
        ]
    finally:
        readers.close()


async def test_auto_compaction_by_age_uses_only_this_leaders_samples(kv: KvStore) -> None:
    consensus = StoreConsensus(kv)
    now = [100.0]
    config = MvccConfig(auto_compact_revisions=0, auto_compact_interval_ms=10_000)
    readers = ReaderPool(kv, threads=1)
    try:
        keeper = HistoryKeeper(consensus, readers, config, clock=lambda: now[0])  # type: ignore[arg-type]
        write(consensus, *[Put("a", b"v") for _ in range(5)])
        assert await keeper.compact_step() == 0  # revision 5 sampled at t=100
        now[0] = 105.0
        write(consensus, *[Put("a", b"v") for _ in range(5)])
        assert await keeper.compact_step() == 0  # 10 at t=105; nothing 10 s old yet
        now[0] = 111.0
        assert await keeper.compact_step() == 5
        now[0] = 116.0
        assert await keeper.compact_step() == 10
        assert consensus.proposed == [Compact(5), Compact(10)]
    finally:
        readers.close()


async def test_a_client_compaction_racing_the_auto_compactor_is_not_an_error(kv: KvStore) -> None:
    consensus = StoreConsensus(kv)
    write(consensus, *[Put("a", b"v") for _ in range(30)], Compact(25))
    readers = ReaderPool(kv, threads=1)
    try:
        config = MvccConfig(auto_compact_revisions=10, auto_compact_interval_ms=0)
        keeper = HistoryKeeper(consensus, readers, config)  # type: ignore[arg-type]
        assert await keeper.compact_step() == 0  # target 20 is below 25: nothing to do
        assert consensus.proposed == []
    finally:
        readers.close()


async def test_prune_pass_proposes_only_deep_keys_in_batches(kv: KvStore) -> None:
    consensus = StoreConsensus(kv)
    for i in range(6):
        write(consensus, *[Put(f"k{j}", bytes([i])) for j in range(5)])
    write(consensus, Put("shallow", b"x"))
    readers = ReaderPool(kv, threads=1)
    try:
        config = MvccConfig(history_depth=4, prune_scan_keys=4, prune_batch_keys=2)
        keeper = HistoryKeeper(consensus, readers, config)  # type: ignore[arg-type]
        assert await keeper.prune_pass() == 4  # k0..k3
        assert await keeper.prune_pass() == 1  # k4, shallow: the scan wraps
        assert await keeper.prune_pass() == 0  # from the start again: all pruned
        assert consensus.proposed == [
            Prune(4, ("k0", "k1")),
            Prune(4, ("k2", "k3")),
            Prune(4, ("k4",)),
        ]
        with kv.reader() as reader:
            assert all(len(reader.history(f"k{j}")[0]) == 4 for j in range(5))
    finally:
        readers.close()


async def test_the_keeper_only_acts_as_leader(kv: KvStore) -> None:
    consensus = StoreConsensus(kv, leader=False)
    write(consensus, *[Put("a", b"v") for _ in range(40)])
    readers = ReaderPool(kv, threads=1)
    try:
        config = MvccConfig(history_depth=2, prune_interval_ms=10, auto_compact_revisions=5)
        keeper = HistoryKeeper(consensus, readers, config)  # type: ignore[arg-type]
        with trio.move_on_after(0.1):
            await keeper.run()
        assert consensus.proposed == []
        consensus.leader = True
        with trio.move_on_after(0.1):
            await keeper.run()
        assert Compact(35) in consensus.proposed and Prune(2, ("a",)) in consensus.proposed
    finally:
        readers.close()


async def test_quota_refuses_then_space_comes_back(tmp_path: Path, kv: KvStore) -> None:
    log_store = LogStore.open(tmp_path / "raft.db", StorageConfig())
    consensus = StoreConsensus(kv)
    try:
        storage = StorageConfig(quota_bytes=2_000_000, reclaim_pages=64)
        keeper = SpaceKeeper(consensus, kv, log_store, tmp_path, storage)  # type: ignore[arg-type]
        keeper.check_quota()
        write(consensus, *[Put(f"k{i:05}", b"v" * 1000) for i in range(3000)])
        await keeper.refresh()
        with pytest.raises(ResourceExhausted, match=r"storage\.quota_bytes is 2000000"):
            keeper.check_quota()
        before = keeper.space
        write(consensus, *[Delete(f"k{i:05}") for i in range(3000)])
        write(consensus, Compact(kv.revision))
        await keeper.refresh()
        assert keeper.space.kv.free_bytes > 1_000_000  # deleted pages are free, not yet returned
        keeper.check_quota()  # in-use bytes fell below the quota: writes go again
        released = await keeper.reclaim()
        assert released * 4096 >= keeper.space.kv.free_bytes - 64 * 4096
        sqlite3.connect(kv.path).execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        after = await keeper.refresh()
        assert after.kv.free_bytes == 0
        assert after.kv.file_bytes < before.kv.file_bytes // 4
        assert after.total_bytes >= after.kv.file_bytes + after.log.file_bytes
    finally:
        log_store.close()


def test_new_files_use_incremental_vacuum_and_old_ones_are_converted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ggap.storage")
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("CREATE TABLE x (y)")
    conn.execute("INSERT INTO x VALUES (1)")
    conn.commit()
    conn.close()
    for path in (tmp_path / "new.db", old):
        store = KvStore.open(path, mvcc=MvccConfig(), storage=StorageConfig())
        try:
            mode = sqlite3.connect(path).execute("PRAGMA auto_vacuum").fetchone()[0]
            assert mode == 2  # INCREMENTAL
        finally:
            store.close()
    assert sqlite3.connect(old).execute("SELECT y FROM x").fetchall() == [(1,)]
    converted = [r.getMessage() for r in caplog.records if "incremental vacuum" in r.getMessage()]
    assert converted == [f"{old}: switching to incremental vacuum (a one-time VACUUM)"]  # not new.db
