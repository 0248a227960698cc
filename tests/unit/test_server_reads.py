"""ReaderPool: its thread count (`reads.reader_threads`) bounds the scans running at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from ggap.config import load_config
from ggap.config.model import MvccConfig, StorageConfig
from ggap.server.reads import ReaderPool
from ggap.storage import KvReader, KvStore


@pytest.fixture
def kv(tmp_path: Path) -> Iterator[KvStore]:
    store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
    try:
        yield store
    finally:
        store.close()


async def test_configured_thread_count_bounds_concurrent_scans(kv: KvStore) -> None:
    threads = load_config(env={"GINNUNGAGAP_READS__READER_THREADS": "2"}).reads.reader_threads
    pool = ReaderPool(kv, threads=threads)
    lock = threading.Lock()
    running = peak = 0
    readers: set[int] = set()
    release = threading.Event()

    def scan(reader: KvReader) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            readers.add(id(reader))
        release.wait(5)
        with lock:
            running -= 1

    try:
        assert pool.threads == 2
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(pool.run, scan)
                while True:  # wait until the pool is full, then give the others a chance
                    with lock:
                        if running == 2:
                            break
                    await trio.sleep(0.01)
                await trio.sleep(0.1)
                with lock:
                    assert running == 2  # the other three wait for a thread
                release.set()
        assert peak == 2
        assert len(readers) == 2  # each scan ran on one of the pool's own connections
    finally:
        release.set()
        pool.close()


def test_thread_count_must_be_positive(kv: KvStore) -> None:
    with pytest.raises(ValueError, match="threads must be >= 1"):
        ReaderPool(kv, threads=0)
