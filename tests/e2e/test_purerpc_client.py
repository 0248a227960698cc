"""The same basics through purerpc's client (generated ggap.pb.kv_grpc stubs) under trio.

purerpc has no deadlines, so every call sits under `trio.fail_after` (PITFALLS §1.2), and
each test as a whole has an outer bound too (a channel's exit can hang, §1.3).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import purerpc
import pytest
import trio

from ggap.pb import kv_grpc
from ggap.pb import kv_pb2 as pb
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 5.0


@asynccontextmanager
async def open_stubs(
    node: NodeProcess,
) -> AsyncIterator[tuple[kv_grpc.KvServiceStub, kv_grpc.ClusterServiceStub]]:
    async with purerpc.insecure_channel(node.host, node.client_port) as channel:
        yield kv_grpc.KvServiceStub(channel), kv_grpc.ClusterServiceStub(channel)


async def test_put_get_range_delete(node: NodeProcess) -> None:
    with trio.fail_after(30):
        async with open_stubs(node) as (kv, cluster):
            with trio.fail_after(T):
                r1 = (await kv.Put(pb.PutRequest(key="pr/a", value=b"1"))).header.revision
            with trio.fail_after(T):
                r2 = (await kv.Put(pb.PutRequest(key="pr/b", value=b"2"))).header.revision
            with trio.fail_after(T):
                r3 = (await kv.Put(pb.PutRequest(key="pr/a", value=b"3", prev_kv=True))).header.revision
            assert (r2, r3) == (r1 + 1, r1 + 2)
            with trio.fail_after(T):
                g = await kv.Get(pb.GetRequest(key="pr/a"))
            assert g.found
            assert (g.kv.value, g.kv.version, g.kv.create_revision, g.kv.mod_revision) == (b"3", 2, r1, r3)
            with trio.fail_after(T):
                old = await kv.Get(pb.GetRequest(key="pr/a", revision=r1))
            assert old.kv.value == b"1"
            with trio.fail_after(T):
                rng = await kv.Range(pb.RangeRequest(prefix="pr/"))
            assert [(x.key, x.value) for x in rng.kvs] == [("pr/a", b"3"), ("pr/b", b"2")]
            assert rng.count == 2 and not rng.more
            with trio.fail_after(T):
                d = await kv.Delete(pb.DeleteRequest(key="pr/b", prev_kv=True))
            assert d.deleted and d.prev_kv.value == b"2" and d.header.revision == r1 + 3
            with trio.fail_after(T):
                t = await kv.Txn(
                    pb.TxnRequest(
                        compare=[
                            pb.Compare(
                                key="pr/a", target=pb.COMPARE_TARGET_VALUE, op=pb.COMPARE_OP_EQUAL, value=b"3"
                            )
                        ],
                        success=[pb.TxnOp(put=pb.PutRequest(key="pr/c", value=b"c"))],
                    )
                )
            assert t.succeeded and t.header.revision == r1 + 4
            with trio.fail_after(T):
                h = await kv.History(pb.HistoryRequest(key="pr/b"))
            assert [(x.deleted, x.mod_revision) for x in h.versions] == [(True, r1 + 3), (False, r2)]
            with trio.fail_after(T):
                s = await cluster.Status(pb.StatusRequest())
            assert (s.role, s.revision, s.member_id) == ("leader", r1 + 4, 1)


async def test_errors_have_specific_classes(node: NodeProcess) -> None:
    with trio.fail_after(30):
        async with open_stubs(node) as (kv, _):
            with trio.fail_after(T), pytest.raises(purerpc.InvalidArgumentError) as info:
                await kv.Put(pb.PutRequest(key="", value=b"v"))
            assert "Traceback" not in str(info.value)
            with trio.fail_after(T):
                rev = (await kv.Put(pb.PutRequest(key="pe/k", value=b"v"))).header.revision
            with trio.fail_after(T), pytest.raises(purerpc.OutOfRangeError):
                await kv.Get(pb.GetRequest(key="pe/k", revision=rev + 100))
            # The channel is still usable after errors.
            with trio.fail_after(T):
                assert (await kv.Get(pb.GetRequest(key="pe/k"))).kv.value == b"v"


async def test_watch(node: NodeProcess) -> None:
    with trio.fail_after(30):
        async with open_stubs(node) as (kv, _):
            with trio.fail_after(T):
                r1 = (await kv.Put(pb.PutRequest(key="pw/k", value=b"1"))).header.revision
            with trio.fail_after(T):
                r2 = (await kv.Put(pb.PutRequest(key="pw/k", value=b"2"))).header.revision
            events: list[pb.Event] = []
            async with aclosing(kv.Watch(pb.WatchRequest(prefix="pw/", start_revision=r1))) as stream:
                with trio.fail_after(T):
                    while len(events) < 2:  # replayed history
                        events += (await anext(stream)).events
                with trio.fail_after(T):
                    r3 = (await kv.Delete(pb.DeleteRequest(key="pw/k"))).header.revision
                with trio.fail_after(T):
                    while len(events) < 3:  # live
                        events += (await anext(stream)).events
            assert [(e.type, e.kv.value, e.kv.mod_revision) for e in events] == [
                (pb.EVENT_TYPE_PUT, b"1", r1),
                (pb.EVENT_TYPE_PUT, b"2", r2),
                (pb.EVENT_TYPE_DELETE, b"", r3),
            ]
            # The connection keeps serving unary calls after the stream was closed.
            with trio.fail_after(T):
                assert not (await kv.Get(pb.GetRequest(key="pw/k"))).found


async def test_concurrent_calls_on_one_channel(node: NodeProcess) -> None:
    with trio.fail_after(30):
        async with open_stubs(node) as (kv, _):
            revisions: list[int] = []

            async def one(i: int) -> None:
                with trio.fail_after(T):
                    r = await kv.Put(pb.PutRequest(key=f"pc/{i:02d}", value=str(i).encode()))
                revisions.append(r.header.revision)

            async with trio.open_nursery() as nursery:
                for i in range(32):
                    nursery.start_soon(one, i)
            assert len(set(revisions)) == 32
            assert max(revisions) - min(revisions) == 31
            with trio.fail_after(T):
                rng = await kv.Range(pb.RangeRequest(prefix="pc/"))
            assert [x.value for x in rng.kvs] == [str(i).encode() for i in range(32)]
