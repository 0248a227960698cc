"""The single-node write path: group commit, recovery from the log, shutdown."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ggap import codec
from ggap.config.model import MvccConfig, StorageConfig
from ggap.consensus import AppliedBatch, LocalConsensus
from ggap.storage import KvStore, LogStore
from ggap.types import Compact, OutOfRange, Put, PutResult, Unavailable


def open_stores(path: Path) -> tuple[KvStore, LogStore]:
    storage = StorageConfig()
    return (
        KvStore.open(path / "kv.db", mvcc=MvccConfig(), storage=storage),
        LogStore.open(path / "raft.db", storage),
    )


async def test_concurrent_proposals_share_batches_and_get_distinct_revisions(tmp_path: Path) -> None:
    kv, log_store = open_stores(tmp_path)
    consensus = LocalConsensus(member_id=1, log_store=log_store, kv=kv)
    batches: list[AppliedBatch] = []
    consensus.subscribe(batches.append)
    results: list[PutResult] = []

    async def put(i: int) -> None:
        res = await consensus.propose(Put(key=f"k{i}", value=b"v"))
        assert isinstance(res, PutResult)
        results.append(res)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(consensus.run)
            async with trio.open_nursery() as writers:
                for i in range(200):
                    writers.start_soon(put, i)
            nursery.cancel_scope.cancel()
    assert sorted(r.revision for r in results) == list(range(1, 201))
    # 200 proposals plus the start-up no-op in far fewer than 201 write transactions.
    assert len(batches) < 100
    assert sum(len(b.events) for b in batches) == 200
    assert kv.revision == 200
    assert log_store.last_index == 201
    kv.close()
    log_store.close()


async def test_failed_command_is_reported_and_batch_continues(tmp_path: Path) -> None:
    kv, log_store = open_stores(tmp_path)
    consensus = LocalConsensus(member_id=1, log_store=log_store, kv=kv)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(consensus.run)
            await consensus.propose(Put(key="a", value=b"1"))
            with pytest.raises(OutOfRange):
                await consensus.propose(Compact(revision=99))
            res = await consensus.propose(Put(key="a", value=b"2"))
            assert isinstance(res, PutResult) and res.revision == 2
            nursery.cancel_scope.cancel()
    kv.close()
    log_store.close()


async def test_log_entries_not_yet_applied_are_replayed_on_start(tmp_path: Path) -> None:
    kv, log_store = open_stores(tmp_path)
    # Simulate a crash after the log append and before apply: entries 1..3 only in the log.
    log_store.append(
        [(i, 1, codec.encode_command_entry(i, 1, Put(key=f"k{i}", value=b"x"))) for i in range(1, 4)]
    )
    assert kv.applied_index == 0
    consensus = LocalConsensus(member_id=1, log_store=log_store, kv=kv)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(consensus.run)
            assert kv.applied_index >= 3
            assert kv.revision == 3
            res = await consensus.propose(Put(key="k9", value=b"y"))
            assert isinstance(res, PutResult) and res.revision == 4
            nursery.cancel_scope.cancel()
    kv.close()
    log_store.close()


async def test_waiters_and_proposers_fail_cleanly_on_shutdown(tmp_path: Path) -> None:
    kv, log_store = open_stores(tmp_path)
    consensus = LocalConsensus(member_id=1, log_store=log_store, kv=kv)
    errors: list[BaseException] = []

    async def wait_for_future_revision() -> None:
        try:
            await consensus.wait_revision(1000)
        except Unavailable as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as nursery:
                await nursery.start(consensus.run)
                outer.start_soon(wait_for_future_revision)
                await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
    assert len(errors) == 1
    with pytest.raises(Unavailable):
        await consensus.propose(Put(key="late", value=b""))
    kv.close()
    log_store.close()


async def test_log_is_compacted_only_behind_a_durable_checkpoint(tmp_path: Path) -> None:
    kv, log_store = open_stores(tmp_path)
    consensus = LocalConsensus(member_id=1, log_store=log_store, kv=kv, log_retain=50)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(consensus.run)
            for i in range(160):
                await consensus.propose(Put(key=f"k{i % 7}", value=b"v"))
            nursery.cancel_scope.cancel()
    # Entries far behind the applied index are gone, a tail of log_retain stays.
    assert log_store.first_index > 1
    assert kv.applied_index - log_store.first_index >= 49
    assert log_store.last_index == kv.applied_index == 161
    kv.close()
    log_store.close()
    # Reopening replays nothing and loses nothing.
    kv, log_store = open_stores(tmp_path)
    assert kv.revision == 160
    kv.close()
    log_store.close()
