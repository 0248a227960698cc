"""The node's task tree, in process: serving, clean cancellation, and loud crashes."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio

from ggap.client import open_client
from ggap.config import Config
from ggap.server import serve_node
from ggap.storage import KvStore


def node_config(tmp_path: Path) -> Config:
    cfg = Config()
    return attrs.evolve(
        cfg,
        node=attrs.evolve(cfg.node, client_addr="127.0.0.1:0", data_dir=str(tmp_path / "data")),
        mvcc=attrs.evolve(cfg.mvcc, prune_interval_ms=50),
    )


async def test_serves_then_cancels_cleanly_and_closes_storage(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_node, cfg)
            async with open_client(f"127.0.0.1:{port}") as client:
                put = await client.put(key="a", value=b"1")
                got = await client.get(key="a")
            assert got.found and got.kv.value == b"1"
            assert got.header.revision == put.header.revision == 1
            nursery.cancel_scope.cancel()
    # The database was closed: a second open (which takes the write lock) works at once,
    # and sees the acknowledged write.
    kv = KvStore.open(Path(cfg.node.data_dir) / "kv.db", mvcc=cfg.mvcc, storage=cfg.storage)
    try:
        assert kv.revision == 1
    finally:
        kv.close()


async def test_a_crashing_background_task_brings_the_node_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_prune(self: KvStore, max_keys: int) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(KvStore, "prune", broken_prune)
    crash = pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="disk on fire"), flatten_subgroups=True)
    with trio.fail_after(20), crash:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, node_config(tmp_path))
            await trio.sleep_forever()
