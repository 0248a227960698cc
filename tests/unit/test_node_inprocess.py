"""The node's task tree, in process: serving, clean cancellation, and loud crashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from ggap.client import open_connection
from ggap.config import Config
from ggap.server import node as node_mod
from ggap.server import serve_node
from ggap.server.forward import Forwarder
from ggap.server.maintenance import HistoryKeeper
from ggap.server.members import MemberManager
from ggap.server.reads import ReaderPool
from ggap.storage import KvStore


def node_config(tmp_path: Path) -> Config:
    cfg = Config()
    return attrs.evolve(
        cfg,
        node=attrs.evolve(
            cfg.node, client_addr="127.0.0.1:0", cluster_addr="127.0.0.1:0", data_dir=str(tmp_path / "data")
        ),
        mvcc=attrs.evolve(cfg.mvcc, prune_interval_ms=50),
    )


async def test_serves_then_cancels_cleanly_and_closes_storage(tmp_path: Path) -> None:
    cfg = node_config(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_node, cfg)
            async with open_connection(f"127.0.0.1:{port}") as client:
                put = await client.put(key="a", value=b"1")
                got = await client.get(key="a")
            assert got.found and got.kv.value == b"1"
            assert got.header.revision == put.header.revision == 1
            async with open_connection(f"127.0.0.1:{port}") as client:
                listed = await client.member_list()
            # A node started without --peers is its own bootstrap voter.
            assert [(m.id, m.client_addr, m.cluster_addr, m.learner) for m in listed.members] == [
                (1, "127.0.0.1:0", cfg.node.cluster_addr, False)
            ]
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
    async def broken_prune(self: HistoryKeeper) -> int:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(HistoryKeeper, "prune_pass", broken_prune)
    crash = pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="disk on fire"), flatten_subgroups=True)
    with trio.fail_after(20), crash:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, node_config(tmp_path))
            await trio.sleep_forever()


async def test_serve_node_hands_the_configured_knobs_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reads.reader_threads reaches the ReaderPool; the server's forward, health and
    membership knobs reach the Forwarder, the health loop and the MemberManager, converted
    to seconds."""
    seen: dict[str, Any] = {}

    class Pool(ReaderPool):
        def __init__(self, kv: KvStore, *, threads: int) -> None:
            super().__init__(kv, threads=threads)
            seen["pool"] = self

    class Fwd(Forwarder):
        def __init__(self, **kw: float) -> None:
            super().__init__(**kw)
            seen["forwarder"] = self

    class Members(MemberManager):
        def __init__(self, consensus: Any, **kw: Any) -> None:
            super().__init__(consensus, **kw)
            seen["members"] = self

    real_health_loop = node_mod._health_loop

    async def health_loop(*args: Any) -> None:
        seen["health_interval_s"] = args[-1]
        await real_health_loop(*args)

    monkeypatch.setattr(node_mod, "ReaderPool", Pool)
    monkeypatch.setattr(node_mod, "Forwarder", Fwd)
    monkeypatch.setattr(node_mod, "_health_loop", health_loop)
    monkeypatch.setattr(node_mod, "MemberManager", Members)
    cfg = node_config(tmp_path)
    cfg = attrs.evolve(
        cfg,
        reads=attrs.evolve(cfg.reads, reader_threads=5),
        server=attrs.evolve(
            cfg.server,
            forward_connect_timeout_ms=1500,
            forward_retry_ms=70,
            answer_margin_ms=30,
            health_interval_ms=250,
            promote_max_lag_entries=0,
            auto_promote_interval_ms=120,
        ),
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_node, cfg)
            while "health_interval_s" not in seen:  # the health task starts just after
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert seen["pool"].threads == 5
    fwd = seen["forwarder"]
    assert (fwd.connect_timeout_s, fwd.retry_pause_s, fwd.answer_margin_s) == (1.5, 0.07, 0.03)
    assert seen["health_interval_s"] == 0.25
    members = seen["members"]
    assert (members.max_lag_entries, members.auto_promote_interval_s) == (0, 0.12)
