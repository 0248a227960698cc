"""TTL through a real grpcio client against one real node.

The node and this test process share the host's wall clock, so `expires_at_ms` (Unix
milliseconds) can be compared with `time.time()`. Waits are bounded polls; the only
timing-based claims are "not gone before its TTL" (checked only when our read certainly
happened before the expiry) and "gone once past it".
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 5.0
TTL_MS = 1500


@pytest.fixture(scope="module")
def kv(node: NodeProcess) -> kv_pb2_grpc.KvServiceStub:
    return node.kv_stub()


def now_ms() -> int:
    return int(time.time() * 1000)


def sleep_until_ms(t_ms: int) -> None:
    delay = t_ms / 1000 - time.time()
    if delay > 0:
        time.sleep(delay)


def get(kv: kv_pb2_grpc.KvServiceStub, key: str, **kw: object) -> pb.GetResponse:
    return kv.Get(pb.GetRequest(key=key, **kw), timeout=T)  # type: ignore[arg-type]


def history(kv: kv_pb2_grpc.KvServiceStub, key: str) -> list[pb.KeyValue]:
    return list(kv.History(pb.HistoryRequest(key=key), timeout=T).versions)


def poll(check: object, timeout: float = 3.0) -> None:
    """Call `check()` until it returns truthy; fail after `timeout` seconds."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_key_expires(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "ttl/basic"
    t0 = now_ms()
    put = kv.Put(pb.PutRequest(key=key, value=b"v", ttl_ms=TTL_MS), timeout=T)
    t1 = now_ms()
    rev = put.header.revision

    g = get(kv, key)
    assert g.found and g.kv.value == b"v"
    expires = g.kv.expires_at_ms
    assert t0 + TTL_MS <= expires <= t1 + TTL_MS, (t0, expires, t1)
    assert (g.kv.mod_revision, g.kv.version) == (rev, 1)
    # Every read path reports it.
    r = kv.Range(pb.RangeRequest(prefix="ttl/basic"), timeout=T)
    assert [x.expires_at_ms for x in r.kvs] == [expires]
    assert [x.expires_at_ms for x in history(kv, key)] == [expires]

    # Never gone before its TTL: read at TTL-200 ms, counted only if the answer came back
    # before the expiry time (otherwise the check proves nothing either way).
    sleep_until_ms(t0 + TTL_MS - 200)
    early = get(kv, key)
    if now_ms() < t0 + TTL_MS:
        assert early.found, "key disappeared before its TTL"

    # Once past the expiry, a linearizable read never returns it.
    sleep_until_ms(expires + 20)
    gone = get(kv, key, read_mode=pb.READ_MODE_LINEARIZABLE)
    assert not gone.found
    assert not kv.Range(pb.RangeRequest(prefix="ttl/basic"), timeout=T).kvs

    # The expiry is a replicated delete: a tombstone in History, one revision after the put
    # (nothing else writes on this node meanwhile).
    def tombstoned() -> bool:
        versions = history(kv, key)
        return bool(versions) and versions[0].deleted

    poll(tombstoned)
    versions = history(kv, key)
    assert [(x.deleted, x.mod_revision) for x in versions] == [(True, rev + 1), (False, rev)]
    assert get(kv, key, revision=rev).found  # the past is still there
    assert not get(kv, key, revision=rev + 1).found


def test_watcher_sees_expiry(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "ttl/watched"
    rev = kv.Put(pb.PutRequest(key=key, value=b"v", ttl_ms=TTL_MS), timeout=T).header.revision
    call = kv.Watch(pb.WatchRequest(key=key, start_revision=rev, prev_kv=True), timeout=30)
    events: queue.Queue[pb.Event | BaseException] = queue.Queue()

    def read() -> None:
        try:
            for resp in call:
                for ev in resp.events:
                    events.put(ev)
        except BaseException as exc:
            events.put(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    try:
        first = events.get(timeout=T)
        assert isinstance(first, pb.Event), first
        assert (first.type, first.kv.mod_revision, first.expired) == (pb.EVENT_TYPE_PUT, rev, False)
        second = events.get(timeout=TTL_MS / 1000 + 3)
        assert isinstance(second, pb.Event), second
        assert second.type == pb.EVENT_TYPE_DELETE
        assert second.expired
        assert second.kv.key == key
        assert second.kv.mod_revision > rev
        assert second.prev_kv.value == b"v"
        assert now_ms() >= first.kv.expires_at_ms  # not expired early
    finally:
        call.cancel()
        t.join(T)


def test_reput_without_ttl_cancels_expiry(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "ttl/reput"
    r1 = kv.Put(pb.PutRequest(key=key, value=b"short", ttl_ms=TTL_MS), timeout=T).header.revision
    expires = get(kv, key).kv.expires_at_ms
    r2 = kv.Put(pb.PutRequest(key=key, value=b"forever"), timeout=T).header.revision
    g = get(kv, key)
    assert (g.kv.value, g.kv.expires_at_ms, g.kv.version) == (b"forever", 0, 2)
    sleep_until_ms(expires + 500)  # well past the old expiry (the expirer checks every 100 ms)
    g = get(kv, key)
    assert g.found and g.kv.value == b"forever"
    assert g.kv.mod_revision == r2
    assert [(x.mod_revision, x.deleted) for x in history(kv, key)] == [(r2, False), (r1, False)]


def test_reput_with_new_ttl_extends_it(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "ttl/extend"
    kv.Put(pb.PutRequest(key=key, value=b"1", ttl_ms=1000), timeout=T)
    first = get(kv, key).kv.expires_at_ms
    kv.Put(pb.PutRequest(key=key, value=b"2", ttl_ms=3000), timeout=T)
    second = get(kv, key).kv.expires_at_ms
    assert second >= first + 1500
    sleep_until_ms(first + 300)
    g = get(kv, key)
    if now_ms() < second:
        assert g.found and g.kv.value == b"2"


def test_several_keys_expire_and_range_skips_them(kv: kv_pb2_grpc.KvServiceStub) -> None:
    keep = kv.Put(pb.PutRequest(key="ttlm/keep", value=b"k"), timeout=T).header.revision
    for i in range(5):
        kv.Put(pb.PutRequest(key=f"ttlm/{i}", value=b"x", ttl_ms=800), timeout=T)
    latest = max(get(kv, f"ttlm/{i}").kv.expires_at_ms for i in range(5))
    sleep_until_ms(latest + 20)
    r = kv.Range(pb.RangeRequest(prefix="ttlm/"), timeout=T)
    assert [(x.key, x.mod_revision) for x in r.kvs] == [("ttlm/keep", keep)]
    assert r.count == 1


def test_txn_put_with_ttl(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r = kv.Txn(
        pb.TxnRequest(success=[pb.TxnOp(put=pb.PutRequest(key="ttlt/k", value=b"v", ttl_ms=800))]), timeout=T
    )
    assert r.succeeded
    g = get(kv, "ttlt/k")
    assert g.found and g.kv.expires_at_ms > 0
    sleep_until_ms(g.kv.expires_at_ms + 20)
    assert not get(kv, "ttlt/k").found


def test_negative_ttl_refused(kv: kv_pb2_grpc.KvServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        kv.Put(pb.PutRequest(key="ttl/neg", value=b"v", ttl_ms=-5), timeout=T)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not get(kv, "ttl/neg").found
