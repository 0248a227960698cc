"""ClusterService.Snapshot on an in-process node: the shape of the stream, the stream
limit (RESOURCE_EXHAUSTED), a client that stops reading losing its slot after the stall
timeout, a client that disconnects mid-stream, and no copy left on disk or open afterwards.

A grpcio client that stops reading stops granting HTTP/2 window, so the server's send
parks after a few MiB: the store is filled well past that."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest
import trio

from ggap.client import ClientError, open_connection
from ggap.config import Config
from ggap.pb import kv_pb2, kv_pb2_grpc
from ggap.server import node as node_mod
from ggap.server import serve_node
from ggap.server.snapshots import SnapshotStreams
from ggap.storage.snapshot import snapshot_state
from ggap.types import StatusCode

BIG_BYTES = 12 << 20


@attrs.define
class Node:
    endpoint: str
    data_dir: Path
    streams: SnapshotStreams


async def start(
    nursery: trio.Nursery,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    fill_bytes: int,
    **limits: Any,
) -> Node:
    seen: list[SnapshotStreams] = []

    class Captured(SnapshotStreams):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            seen.append(self)

    monkeypatch.setattr(node_mod, "SnapshotStreams", Captured)
    cfg = Config()
    server_knobs = {k: limits.pop(k) for k in list(limits) if k.startswith("snapshot_")}
    cfg = attrs.evolve(
        cfg,
        node=attrs.evolve(
            cfg.node, client_addr="127.0.0.1:0", cluster_addr="127.0.0.1:0", data_dir=str(tmp_path / "data")
        ),
        limits=attrs.evolve(cfg.limits, **limits),
        server=attrs.evolve(cfg.server, **server_knobs),
    )
    port = await nursery.start(serve_node, cfg)
    endpoint = f"127.0.0.1:{port}"
    async with open_connection(endpoint, timeout_s=30) as client:
        per_txn, value = 40, 1000  # 40 kB per request: under any limit a test sets
        for t in range(fill_bytes // (per_txn * value) + 1):
            ops = [
                kv_pb2.TxnOp(put=kv_pb2.PutRequest(key=f"k{t:04d}/{j:03d}", value=os.urandom(value)))
                for j in range(per_txn)
            ]
            await client.txn(success=ops)
    return Node(endpoint, tmp_path / "data", seen[0])


def open_copies() -> list[str]:
    """Copies still open in this process (unlinked files keep their name in /proc)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc")
    names = []
    for fd in fd_dir.iterdir():
        try:
            names.append(os.readlink(fd))
        except OSError:
            pass
    return [n for n in names if "backup-" in n]


async def wait_for(condition: Any, what: str) -> None:
    """Poll `condition` (state inside the node: there is no event to wait on), 20 s at most."""
    with trio.move_on_after(20):
        while not condition():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after 20s waiting for {what}")


def assert_nothing_left(node: Node) -> None:
    assert node.streams.active == 0
    assert not list((node.data_dir / "snap").glob("backup-*"))
    assert open_copies() == []


async def read_all(endpoint: str) -> tuple[list[kv_pb2.SnapshotResponse], bytes]:
    msgs: list[kv_pb2.SnapshotResponse] = []
    async with open_connection(endpoint, timeout_s=30) as client:
        async for msg in client.snapshot():
            msgs.append(msg)
    return msgs, b"".join(m.blob for m in msgs)


@pytest.fixture
async def nursery_cancelled_at_end(nursery: trio.Nursery) -> AsyncIterator[trio.Nursery]:
    yield nursery
    nursery.cancel_scope.cancel()


async def test_the_stream_carries_a_consistent_copy_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery_cancelled_at_end: trio.Nursery
) -> None:
    node = await start(nursery_cancelled_at_end, tmp_path, monkeypatch, fill_bytes=3 << 20)
    msgs, data = await read_all(node.endpoint)
    first, chunks = msgs[0], msgs[1:]
    info = first.info
    assert first.HasField("info") and not first.blob and first.remaining_bytes == info.size_bytes == len(data)
    assert first.header.revision == info.revision and first.header.member_id == 1
    assert info.applied_term >= 1 and info.applied_index >= info.revision
    assert len(chunks) >= 3 and all(0 < len(m.blob) <= 1 << 20 for m in chunks)
    assert [m.remaining_bytes for m in chunks] == [
        len(data) - sum(len(m.blob) for m in chunks[: i + 1]) for i in range(len(chunks))
    ]
    assert [bool(m.sha256) for m in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest()
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    state = snapshot_state(copy)
    assert (state.index, state.revision) == (info.applied_index, info.revision)
    assert_nothing_left(node)


async def test_chunks_fit_a_small_message_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery_cancelled_at_end: trio.Nursery
) -> None:
    node = await start(
        nursery_cancelled_at_end, tmp_path, monkeypatch, fill_bytes=200_000, max_message_bytes=65536
    )
    msgs, data = await read_all(node.endpoint)
    assert len(data) > 65536 and max(len(m.blob) for m in msgs) <= 32768


def _park(endpoint: str) -> tuple[grpc.Channel, Any, kv_pb2.SnapshotResponse]:
    """A grpcio client that takes the first message and then stops reading."""
    channel = grpc.insecure_channel(endpoint)
    call = kv_pb2_grpc.ClusterServiceStub(channel).Snapshot(kv_pb2.SnapshotRequest(), timeout=120)
    return channel, call, next(call)


async def test_streams_beyond_the_limit_are_refused_and_a_disconnect_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery_cancelled_at_end: trio.Nursery
) -> None:
    node = await start(
        nursery_cancelled_at_end, tmp_path, monkeypatch, fill_bytes=BIG_BYTES, max_snapshot_streams=1
    )
    channel, _call, first = await trio.to_thread.run_sync(_park, node.endpoint)
    try:
        assert first.info.size_bytes > BIG_BYTES
        # Parked in purerpc's send: the client grants no more window.
        await wait_for(
            lambda: any(s.waiting_since is not None for s in node.streams._active), "a parked send"
        )
        assert open_copies()  # the copy is open (and unlinked: nothing in snap/)
        assert not list((node.data_dir / "snap").glob("backup-*"))
        with pytest.raises(ClientError) as refused:
            await read_all(node.endpoint)
        assert refused.value.code == StatusCode.RESOURCE_EXHAUSTED
        assert "max_snapshot_streams" in refused.value.message
    finally:
        await trio.to_thread.run_sync(channel.close)
    # The connection ended: the parked send fails, the stream ends, its copy is closed.
    await wait_for(lambda: node.streams.active == 0, "the slot to be freed")
    assert_nothing_left(node)
    _msgs, data = await read_all(node.endpoint)
    assert len(data) > BIG_BYTES
    assert_nothing_left(node)


async def test_a_stalled_stream_loses_its_slot_to_the_next_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nursery_cancelled_at_end: trio.Nursery
) -> None:
    node = await start(
        nursery_cancelled_at_end,
        tmp_path,
        monkeypatch,
        fill_bytes=BIG_BYTES,
        max_snapshot_streams=1,
        snapshot_stall_timeout_ms=200,
    )
    channel, call, _first = await trio.to_thread.run_sync(_park, node.endpoint)
    try:

        def stalled() -> bool:
            now = trio.current_time()
            return any(
                s.waiting_since is not None and now - s.waiting_since > 0.4 for s in node.streams._active
            )

        await wait_for(stalled, "the parked stream to count as stalled")
        _msgs, data = await read_all(node.endpoint)  # takes the stalled stream's slot
        assert len(data) > BIG_BYTES
        assert_nothing_left(node)  # the stalled stream's copy went with its slot

        def drain() -> BaseException | None:
            try:
                for _ in call:
                    pass
            except grpc.RpcError as err:
                return err
            return None

        # The stalled client, reading again, gets what was buffered and then an error:
        # never a complete stream (no message with the checksum).
        err = await trio.to_thread.run_sync(drain)
        assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE
        assert "abandoned" in (err.details() or "")
    finally:
        await trio.to_thread.run_sync(channel.close)
    assert_nothing_left(node)
