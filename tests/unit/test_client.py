"""ggap.client against an in-process fake KvService served by purerpc.

Localhost only, port 0, an absolute fail_after on every test. The fake (`FakeKv`) is also
used by test_cli.py; it keeps just enough state to make answers checkable.
"""

from __future__ import annotations

import bisect
import functools
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import purerpc
import purerpc.server
import pytest
import trio

from ggap.client import ClientError, open_connection, parse_endpoint, parse_endpoints
from ggap.pb import kv_grpc, kv_pb2
from ggap.types.errors import StatusCode

HANG_KEY = "hang"
REPO = str(Path(__file__).resolve().parents[2])


class FakeKv(kv_grpc.KvServiceServicer):
    """A dict with revisions. Key "hang" never answers; `requests` records what arrived."""

    def __init__(self) -> None:
        self.rev = 0
        self.compact_rev = 0
        self.versions: dict[str, list[kv_pb2.KeyValue]] = {}
        self.requests: list[Any] = []
        # Watch: after replaying history, end the stream (True) or stay idle forever (False).
        self.watch_ends = True
        self.watch_started = trio.Event()
        self.sessions_opened = 0
        self.sessions_closed: list[int] = []

    def _live(self, key: str) -> kv_pb2.KeyValue | None:
        versions = self.versions.get(key)
        if not versions or versions[-1].deleted:
            return None
        return versions[-1]

    def _header(self) -> kv_pb2.ResponseHeader:
        return kv_pb2.ResponseHeader(revision=self.rev, raft_term=1, member_id=1, leader_id=1)

    async def _check(self, msg: Any) -> None:
        self.requests.append(msg)
        key = getattr(msg, "key", None)
        if key == HANG_KEY:
            await trio.sleep_forever()
        if key == "":
            raise purerpc.InvalidArgumentError("key must not be empty (100% sure)")

    async def Put(self, input_message: kv_pb2.PutRequest) -> kv_pb2.PutResponse:
        await self._check(input_message)
        prev = self._live(input_message.key)
        self.rev += 1
        kv = kv_pb2.KeyValue(
            key=input_message.key,
            value=input_message.value,
            create_revision=prev.create_revision if prev else self.rev,
            mod_revision=self.rev,
            version=prev.version + 1 if prev else 1,
            # Not a clock: lets tests see the TTL the client sent.
            expires_at_ms=input_message.ttl_ms,
        )
        self.versions.setdefault(input_message.key, []).append(kv)
        resp = kv_pb2.PutResponse(header=self._header())
        if input_message.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev)
        return resp

    async def Get(self, input_message: kv_pb2.GetRequest) -> kv_pb2.GetResponse:
        await self._check(input_message)
        if input_message.revision > self.rev:
            raise purerpc.OutOfRangeError(f"revision {input_message.revision} is in the future")
        kv = self._live(input_message.key)
        resp = kv_pb2.GetResponse(header=self._header(), found=kv is not None)
        if kv is not None:
            resp.kv.CopyFrom(kv)
        return resp

    async def Delete(self, input_message: kv_pb2.DeleteRequest) -> kv_pb2.DeleteResponse:
        await self._check(input_message)
        prev = self._live(input_message.key)
        if prev is None:
            return kv_pb2.DeleteResponse(header=self._header(), deleted=False)
        self.rev += 1
        tomb = kv_pb2.KeyValue(key=prev.key, mod_revision=self.rev, deleted=True)
        self.versions[prev.key].append(tomb)
        resp = kv_pb2.DeleteResponse(header=self._header(), deleted=True)
        if input_message.prev_kv:
            resp.prev_kv.CopyFrom(prev)
        return resp

    async def Range(self, input_message: kv_pb2.RangeRequest) -> kv_pb2.RangeResponse:
        await self._check(input_message)
        req = input_message
        if req.prefix and (req.start or req.end):
            raise purerpc.InvalidArgumentError("prefix cannot be combined with start/end")
        keys = sorted(k for k in self.versions if self._live(k) is not None)
        if req.prefix:
            keys = [k for k in keys if k.startswith(req.prefix)]
        else:
            keys = keys[bisect.bisect_left(keys, req.start) :]
            if req.end:
                keys = [k for k in keys if k < req.end]
        count = len(keys)
        if req.limit:
            keys = keys[: req.limit]
        kvs = []
        for k in keys:
            kv = kv_pb2.KeyValue()
            kv.CopyFrom(self._live(k))
            if req.keys_only:
                kv.ClearField("value")
            kvs.append(kv)
        return kv_pb2.RangeResponse(header=self._header(), kvs=kvs, more=len(keys) < count, count=count)

    async def History(self, input_message: kv_pb2.HistoryRequest) -> kv_pb2.HistoryResponse:
        await self._check(input_message)
        versions = list(reversed(self.versions.get(input_message.key, [])))
        if input_message.limit:
            versions = versions[: input_message.limit]
        return kv_pb2.HistoryResponse(header=self._header(), versions=versions)

    async def Txn(self, input_message: kv_pb2.TxnRequest) -> kv_pb2.TxnResponse:
        self.requests.append(input_message)
        ok = True
        for cmp in input_message.compare:
            if cmp.target != kv_pb2.COMPARE_TARGET_VALUE or cmp.op != kv_pb2.COMPARE_OP_EQUAL:
                raise purerpc.InvalidArgumentError("fake supports only value == compares")
            kv = self._live(cmp.key)
            ok = ok and kv is not None and kv.value == cmp.value
        responses = []
        for op in input_message.success if ok else input_message.failure:
            which = op.WhichOneof("op")
            if which == "put":
                responses.append(kv_pb2.TxnOpResponse(put=await self.Put(op.put)))
            elif which == "get":
                responses.append(kv_pb2.TxnOpResponse(get=await self.Get(op.get)))
            elif which == "delete":
                responses.append(kv_pb2.TxnOpResponse(delete=await self.Delete(op.delete)))
        return kv_pb2.TxnResponse(header=self._header(), succeeded=ok, responses=responses)

    async def OpenSession(self, input_message: kv_pb2.OpenSessionRequest) -> kv_pb2.OpenSessionResponse:
        # Not in `requests`: the CLI opens one before its first write, and tests look at
        # the write itself.
        self.sessions_opened += 1
        return kv_pb2.OpenSessionResponse(
            header=self._header(), session_id=self.sessions_opened, idle_timeout_ms=600_000
        )

    async def CloseSession(self, input_message: kv_pb2.CloseSessionRequest) -> kv_pb2.CloseSessionResponse:
        self.sessions_closed.append(input_message.session_id)
        return kv_pb2.CloseSessionResponse(header=self._header(), closed=True)

    async def Compact(self, input_message: kv_pb2.CompactRequest) -> kv_pb2.CompactResponse:
        self.requests.append(input_message)
        if input_message.revision > self.rev:
            raise purerpc.OutOfRangeError(
                f"revision {input_message.revision} is above the current revision {self.rev}"
            )
        self.compact_rev = input_message.revision
        return kv_pb2.CompactResponse(header=self._header())

    async def Watch(self, input_message: kv_pb2.WatchRequest) -> AsyncIterator[kv_pb2.WatchResponse]:
        self.requests.append(input_message)
        self.watch_started.set()
        req = input_message
        if req.start_revision and req.start_revision < self.compact_rev:
            raise purerpc.OutOfRangeError(f"compacted: revision {self.compact_rev}")
        events = []
        for key, versions in self.versions.items():
            if (req.prefix and key.startswith(req.prefix)) or (not req.prefix and key == req.key):
                for kv in versions:
                    if kv.mod_revision >= req.start_revision:
                        etype = kv_pb2.EVENT_TYPE_DELETE if kv.deleted else kv_pb2.EVENT_TYPE_PUT
                        events.append(kv_pb2.Event(type=etype, kv=kv))
        events.sort(key=lambda e: e.kv.mod_revision)
        for event in events:
            yield kv_pb2.WatchResponse(header=self._header(), events=[event])
            await trio.lowlevel.checkpoint()
        if not self.watch_ends:
            await trio.sleep_forever()


class FakeCluster(kv_grpc.ClusterServiceServicer):
    def __init__(self, kv: FakeKv) -> None:
        self.kv = kv

    async def Status(self, input_message: kv_pb2.StatusRequest) -> kv_pb2.StatusResponse:
        return kv_pb2.StatusResponse(
            member_id=1,
            leader_id=1,
            raft_term=3,
            role="leader",
            commit_index=self.kv.rev + 1,
            applied_index=self.kv.rev + 1,
            revision=self.kv.rev,
            compact_revision=self.kv.compact_rev,
            db_size_bytes=8192,
            version="0.1.0",
        )

    async def MemberList(self, input_message: kv_pb2.MemberListRequest) -> kv_pb2.MemberListResponse:
        member = kv_pb2.Member(id=1, client_addr="127.0.0.1:1", cluster_addr="127.0.0.1:2")
        return kv_pb2.MemberListResponse(members=[member])


async def start_fake_server(nursery: trio.Nursery, fake: FakeKv | None = None) -> tuple[str, FakeKv]:
    """Serve a FakeKv on 127.0.0.1:0 (purerpc's own Server binds every interface)."""
    fake = fake or FakeKv()
    services = {s.name: s for s in (fake.service, FakeCluster(fake).service)}
    handler = purerpc.server.ConnectionHandler(services, purerpc.Server(port=0))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    nursery.start_soon(listener.serve, handler)
    return f"127.0.0.1:{port}", fake


def refused_endpoint() -> str:
    """An endpoint nothing listens on (bound then closed, so the port is free)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, FakeKv]:
    return await start_fake_server(nursery)


async def test_roundtrip_with_messages_and_kwargs(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    with trio.fail_after(10):
        async with open_connection(endpoint, timeout_s=2) as client:
            assert client.endpoint == endpoint
            put = await client.put(key="a", value=b"1", quorum="WRITE_QUORUM_ALL")
            assert put.header.revision == 1
            assert fake.requests[-1].quorum == kv_pb2.WRITE_QUORUM_ALL
            put = await client.put(kv_pb2.PutRequest(key="a", value=b"2", prev_kv=True))
            assert put.prev_kv.value == b"1"
            got = await client.get(key="a")
            assert got.found and got.kv.value == b"2" and got.kv.version == 2
            rng = await client.range(prefix="a")
            assert [kv.key for kv in rng.kvs] == ["a"]
            hist = await client.history(key="a")
            assert [kv.value for kv in hist.versions] == [b"2", b"1"]
            deleted = await client.delete(key="a")
            assert deleted.deleted
            assert not (await client.get(key="a")).found
            txn = await client.txn(success=[kv_pb2.TxnOp(put=kv_pb2.PutRequest(key="t", value=b"x"))])
            assert txn.succeeded and txn.responses[0].put.header.revision == 4
            await client.compact(revision=2)
            assert fake.compact_rev == 2
            status = await client.status()
            assert status.role == "leader" and status.revision == 4
            members = await client.member_list()
            assert [m.id for m in members.members] == [1]


async def test_request_and_fields_together_is_a_type_error(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    with trio.fail_after(10):
        async with open_connection(endpoint) as client:
            with pytest.raises(TypeError):
                await client.get(kv_pb2.GetRequest(key="a"), key="b")
            with pytest.raises(ClientError) as info:
                await client.get(nope=1)
            assert info.value.code == StatusCode.INVALID_ARGUMENT


async def test_server_error_code_and_message_preserved(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    with trio.fail_after(10):
        async with open_connection(endpoint) as client:
            with pytest.raises(ClientError) as info:
                await client.put(key="", value=b"x")
            assert info.value.code == StatusCode.INVALID_ARGUMENT
            assert info.value.message == "key must not be empty (100% sure)"
            with pytest.raises(ClientError) as info:
                await client.compact(revision=99)
            assert info.value.code == StatusCode.OUT_OF_RANGE
            assert "above the current revision 0" in info.value.message
            # The connection is still usable after an error answer.
            assert (await client.put(key="k", value=b"v")).header.revision == 1


async def test_error_escaping_the_block_is_not_wrapped(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    with trio.fail_after(10):
        with pytest.raises(ClientError) as info:
            async with open_connection(endpoint) as client:
                await client.get(key="", timeout_s=2)
        assert info.value.code == StatusCode.INVALID_ARGUMENT
        # The caller's own exceptions pass through untouched, even OSError.
        with pytest.raises(FileNotFoundError):
            async with open_connection(endpoint):
                raise FileNotFoundError("mine")


async def test_timeout_on_a_server_that_never_answers(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    with trio.fail_after(10):
        start = trio.current_time()
        async with open_connection(endpoint, timeout_s=0.3) as client:
            with pytest.raises(ClientError) as info:
                await client.get(key=HANG_KEY)
            elapsed = trio.current_time() - start
            assert info.value.code == StatusCode.DEADLINE_EXCEEDED
            assert endpoint in info.value.message
            assert 0.3 <= elapsed < 1.5
            # A per-call timeout overrides the default.
            with pytest.raises(ClientError) as info:
                await client.put(key=HANG_KEY, value=b"", timeout_s=0.1)
            assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert trio.current_time() - start < 3


async def test_timeout_on_a_peer_that_accepts_tcp_but_never_speaks(nursery: trio.Nursery) -> None:
    """purerpc would wait forever here: the connection is open, no HTTP/2 ever comes back."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, _hold_forever, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        start = trio.current_time()
        with pytest.raises(ClientError) as info:
            async with open_connection(f"127.0.0.1:{port}", timeout_s=0.3) as client:
                await client.status()
        assert info.value.code == StatusCode.DEADLINE_EXCEEDED
        assert trio.current_time() - start < 3


async def _hold_forever(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def test_connection_refused_is_unavailable() -> None:
    endpoint = refused_endpoint()
    with trio.fail_after(10):
        with pytest.raises(ClientError) as info:
            async with open_connection(endpoint, timeout_s=2):
                pytest.fail("connected to a closed port")
    assert info.value.code == StatusCode.UNAVAILABLE
    assert endpoint in info.value.message and "cannot connect" in info.value.message


async def test_endpoints_are_tried_in_order(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    dead = refused_endpoint()
    with trio.fail_after(10):
        async with open_connection(f"{dead}, {endpoint}") as client:
            assert client.endpoint == endpoint
            assert (await client.put(key="x", value=b"y")).header.revision == 1


async def test_malformed_endpoint_is_invalid_argument() -> None:
    with pytest.raises(ClientError) as info:
        async with open_connection("localhost"):
            pass
    assert info.value.code == StatusCode.INVALID_ARGUMENT


def test_parse_endpoints() -> None:
    assert parse_endpoints("a:1, [::1]:2,") == [("a", 1), ("::1", 2)]
    assert parse_endpoint(" 127.0.0.1:17000 ") == ("127.0.0.1", 17000)
    for bad in ("", "a", "a:", ":1", "a:0", "a:65536", "a:x"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


async def test_watch_streams_events_then_ends(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    with trio.fail_after(10):
        async with open_connection(endpoint) as client:
            for i in range(3):
                await client.put(key=f"w/{i}", value=str(i).encode())
            await client.put(key="other", value=b"")
            got = [r.events[0].kv.key async for r in client.watch(prefix="w/", start_revision=2)]
            assert got == ["w/1", "w/2"]


async def test_watch_idle_timeout(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    fake.watch_ends = False
    with trio.fail_after(10):
        async with open_connection(endpoint) as client:
            await client.put(key="k", value=b"v")
            seen = []
            with pytest.raises(ClientError) as info:
                async for resp in client.watch(key="k", start_revision=1, idle_timeout_s=0.3):
                    seen.append(resp)
            assert len(seen) == 1
            assert info.value.code == StatusCode.DEADLINE_EXCEEDED


async def test_watch_server_error(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    fake.compact_rev = 5
    with trio.fail_after(10):
        async with open_connection(endpoint) as client:
            with pytest.raises(ClientError) as info:
                async for _ in client.watch(key="k", start_revision=1):
                    pass
            assert info.value.code == StatusCode.OUT_OF_RANGE
            assert "compacted: revision 5" in info.value.message


async def _serve_cancellable(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            endpoint, _ = await start_fake_server(nursery)
            task_status.started((endpoint, scope))


async def test_server_gone_mid_session_never_hangs(nursery: trio.Nursery) -> None:
    endpoint, server_scope = await nursery.start(_serve_cancellable)
    with trio.fail_after(10):
        async with open_connection(endpoint, timeout_s=0.5) as client:
            await client.put(key="a", value=b"1")
            server_scope.cancel()
            await trio.sleep(0.1)
            with pytest.raises(ClientError) as info:
                await client.get(key="a")
            assert info.value.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED)


def test_the_client_loads_the_status_mapping_but_no_server_code() -> None:
    # ggap.rpc.errors is the one status mapping, shared with the server; importing it must
    # not pull in the serving side of ggap.rpc, let alone the node.
    code = (
        "import sys, ggap.client\n"
        "serving = ('ggap.rpc.server', 'ggap.rpc.health', 'ggap.rpc.reflection', 'ggap.server',"
        " 'ggap.consensus', 'ggap.storage', 'ggap.config')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(serving))\n"
        "assert 'ggap.rpc.errors' in sys.modules and not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
