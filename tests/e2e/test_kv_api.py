"""KvService and ClusterService.Status through a real grpcio client against one real `ggap node`.

All tests share one node (module scope); each uses its own keys and computes the
revisions it expects from the header of its first write, so they never depend on each
other. The compaction test runs last (it makes older revisions unreadable for everyone).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 5.0  # per-call deadline: a liveness bound, never a measurement


@pytest.fixture(scope="module")
def kv(node: NodeProcess) -> kv_pb2_grpc.KvServiceStub:
    return node.kv_stub()


@pytest.fixture(scope="module")
def cluster(node: NodeProcess) -> kv_pb2_grpc.ClusterServiceStub:
    return node.cluster_stub()


def status(cluster: kv_pb2_grpc.ClusterServiceStub) -> pb.StatusResponse:
    return cluster.Status(pb.StatusRequest(), timeout=T)


def put(kv: kv_pb2_grpc.KvServiceStub, key: str, value: bytes, **kw: Any) -> pb.PutResponse:
    return kv.Put(pb.PutRequest(key=key, value=value, **kw), timeout=T)


def get(kv: kv_pb2_grpc.KvServiceStub, key: str, **kw: Any) -> pb.GetResponse:
    return kv.Get(pb.GetRequest(key=key, **kw), timeout=T)


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert isinstance(err, grpc.RpcError)
    details = err.details() or ""
    assert "Traceback" not in details and ".py" not in details, details
    return err


# -- Put / Get / Delete --------------------------------------------------------------------


def test_put_get_latest(kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub) -> None:
    r = put(kv, "basic/a", b"hello")
    rev = r.header.revision
    assert rev >= 1
    assert not r.HasField("prev_kv")
    g = get(kv, "basic/a")
    assert g.found
    assert g.kv.key == "basic/a"
    assert g.kv.value == b"hello"
    assert (g.kv.create_revision, g.kv.mod_revision, g.kv.version) == (rev, rev, 1)
    assert g.kv.expires_at_ms == 0
    assert not g.kv.deleted
    assert g.header.revision == status(cluster).revision
    missing = get(kv, "basic/never-written")
    assert not missing.found
    assert not missing.HasField("kv")


def test_empty_value_is_a_value(kv: kv_pb2_grpc.KvServiceStub) -> None:
    rev = put(kv, "basic/empty", b"").header.revision
    g = get(kv, "basic/empty")
    assert g.found and g.kv.value == b"" and g.kv.mod_revision == rev


def test_binary_value_round_trips(kv: kv_pb2_grpc.KvServiceStub) -> None:
    value = bytes(range(256)) * 4
    put(kv, "basic/bin", value)
    assert get(kv, "basic/bin").kv.value == value


def test_versions_across_put_put_delete_put(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "life/k"
    r1 = put(kv, key, b"v1").header.revision
    r2 = put(kv, key, b"v2").header.revision
    d = kv.Delete(pb.DeleteRequest(key=key), timeout=T)
    r3 = d.header.revision
    assert d.deleted
    r4 = put(kv, key, b"v3").header.revision
    assert (r2, r3, r4) == (r1 + 1, r1 + 2, r1 + 3)

    g = get(kv, key)
    assert g.kv.value == b"v3"
    assert (g.kv.create_revision, g.kv.mod_revision, g.kv.version) == (r4, r4, 1)

    # Point in time.
    assert not get(kv, key, revision=r1 - 1).found
    at1 = get(kv, key, revision=r1)
    assert at1.found and at1.kv.value == b"v1"
    assert (at1.kv.create_revision, at1.kv.mod_revision, at1.kv.version) == (r1, r1, 1)
    at2 = get(kv, key, revision=r2)
    assert at2.found and at2.kv.value == b"v2"
    assert (at2.kv.create_revision, at2.kv.mod_revision, at2.kv.version) == (r1, r2, 2)
    assert not get(kv, key, revision=r3).found
    at4 = get(kv, key, revision=r4)
    assert at4.found and at4.kv.value == b"v3" and at4.kv.version == 1


def test_prev_kv_on_put_and_delete(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "prev/k"
    first = put(kv, key, b"one", prev_kv=True)
    assert not first.HasField("prev_kv")  # the key did not exist
    r1 = first.header.revision
    second = put(kv, key, b"two", prev_kv=True)
    assert second.HasField("prev_kv")
    p = second.prev_kv
    assert (p.key, p.value, p.create_revision, p.mod_revision, p.version) == (key, b"one", r1, r1, 1)
    third = put(kv, key, b"three")  # not asked for
    assert not third.HasField("prev_kv")
    d = kv.Delete(pb.DeleteRequest(key=key, prev_kv=True), timeout=T)
    assert d.deleted
    assert d.prev_kv.value == b"three"
    assert d.prev_kv.version == 3
    assert d.prev_kv.mod_revision == third.header.revision
    d2 = kv.Delete(pb.DeleteRequest(key=key, prev_kv=True), timeout=T)
    assert not d2.deleted
    assert not d2.HasField("prev_kv")


def test_delete_missing_key_changes_nothing(
    kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub
) -> None:
    rev = put(kv, "delmiss/anchor", b"x").header.revision
    d = kv.Delete(pb.DeleteRequest(key="delmiss/nope"), timeout=T)
    assert not d.deleted
    assert d.header.revision == rev
    assert status(cluster).revision == rev
    assert put(kv, "delmiss/after", b"y").header.revision == rev + 1


# -- Range ---------------------------------------------------------------------------------


def _keys(resp: pb.RangeResponse) -> list[str]:
    return [kv.key for kv in resp.kvs]


def test_range_prefix_and_bounds(kv: kv_pb2_grpc.KvServiceStub) -> None:
    for k in ("rng/a", "rng/b", "rng/c", "rng/d", "rng0", "rnf/z"):
        put(kv, k, k.encode())
    pre = kv.Range(pb.RangeRequest(prefix="rng/"), timeout=T)
    assert _keys(pre) == ["rng/a", "rng/b", "rng/c", "rng/d"]
    assert [x.value for x in pre.kvs] == [b"rng/a", b"rng/b", b"rng/c", b"rng/d"]
    assert pre.count == 4 and not pre.more
    half_open = kv.Range(pb.RangeRequest(start="rng/b", end="rng/d"), timeout=T)
    assert _keys(half_open) == ["rng/b", "rng/c"]
    assert half_open.count == 2 and not half_open.more
    none = kv.Range(pb.RangeRequest(prefix="rng/zz"), timeout=T)
    assert list(none.kvs) == [] and none.count == 0 and not none.more


def test_range_open_end(kv: kv_pb2_grpc.KvServiceStub) -> None:
    # U+10FFFF is the largest code point, so nothing another test writes sorts after these.
    top = "\U0010ffff"
    keys = [f"{top}/a", f"{top}/b", f"{top}/c"]
    for k in keys:
        put(kv, k, b"v")
    r = kv.Range(pb.RangeRequest(start=f"{top}/b"), timeout=T)
    assert _keys(r) == keys[1:]
    assert r.count == 2


def test_range_limit_more_count(kv: kv_pb2_grpc.KvServiceStub) -> None:
    keys = [f"lim/{i}" for i in range(5)]
    for k in keys:
        put(kv, k, b"v")
    cut = kv.Range(pb.RangeRequest(prefix="lim/", limit=2), timeout=T)
    assert _keys(cut) == keys[:2] and cut.more and cut.count == 5
    exact = kv.Range(pb.RangeRequest(prefix="lim/", limit=5), timeout=T)
    assert _keys(exact) == keys and not exact.more and exact.count == 5
    above = kv.Range(pb.RangeRequest(prefix="lim/", limit=50), timeout=T)
    assert _keys(above) == keys and not above.more and above.count == 5
    unlimited = kv.Range(pb.RangeRequest(prefix="lim/", limit=0), timeout=T)
    assert _keys(unlimited) == keys and not unlimited.more and unlimited.count == 5
    bounded = kv.Range(pb.RangeRequest(start="lim/1", end="lim/4", limit=1), timeout=T)
    assert _keys(bounded) == ["lim/1"] and bounded.more and bounded.count == 3


def test_range_keys_only(kv: kv_pb2_grpc.KvServiceStub) -> None:
    revs = [put(kv, f"ko/{i}", b"payload").header.revision for i in range(3)]
    r = kv.Range(pb.RangeRequest(prefix="ko/", keys_only=True), timeout=T)
    assert _keys(r) == ["ko/0", "ko/1", "ko/2"]
    assert [x.value for x in r.kvs] == [b"", b"", b""]
    assert [x.mod_revision for x in r.kvs] == revs
    assert [x.version for x in r.kvs] == [1, 1, 1]
    full = kv.Range(pb.RangeRequest(prefix="ko/"), timeout=T)
    assert [x.value for x in full.kvs] == [b"payload"] * 3


def test_range_point_in_time(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r1 = put(kv, "pit/a", b"1").header.revision
    put(kv, "pit/b", b"1")
    put(kv, "pit/a", b"2")
    kv.Delete(pb.DeleteRequest(key="pit/b"), timeout=T)
    old = kv.Range(pb.RangeRequest(prefix="pit/", revision=r1 + 1), timeout=T)
    assert [(x.key, x.value) for x in old.kvs] == [("pit/a", b"1"), ("pit/b", b"1")]
    now = kv.Range(pb.RangeRequest(prefix="pit/"), timeout=T)
    assert [(x.key, x.value, x.version) for x in now.kvs] == [("pit/a", b"2", 2)]


def test_utf8_byte_ordering(kv: kv_pb2_grpc.KvServiceStub) -> None:
    # Code point order equals UTF-8 byte order; UTF-16 order would put U+1F600 before U+FFFF.
    suffixes = ["a", "z", "Z", "é", "ÿ", "Ā", "日本", "\uffff", "😀", "~", "aa", "a\u0301"]
    keys = [f"utf/{s}" for s in suffixes]
    for i, k in enumerate(keys):
        put(kv, k, str(i).encode())
    expected = sorted(keys, key=lambda s: s.encode("utf-8"))
    r = kv.Range(pb.RangeRequest(prefix="utf/"), timeout=T)
    assert _keys(r) == expected
    assert r.count == len(keys)
    for x in r.kvs:
        assert x.value == str(keys.index(x.key)).encode()
    between = kv.Range(pb.RangeRequest(start="utf/é", end="utf/😀"), timeout=T)
    assert _keys(between) == [k for k in expected if "utf/é".encode() <= k.encode() < "utf/😀".encode()]
    assert get(kv, "utf/日本").kv.value == str(keys.index("utf/日本")).encode()


# -- Txn -----------------------------------------------------------------------------------

V, VER, CREATE, MOD, EXISTS = (
    pb.COMPARE_TARGET_VALUE,
    pb.COMPARE_TARGET_VERSION,
    pb.COMPARE_TARGET_CREATE_REVISION,
    pb.COMPARE_TARGET_MOD_REVISION,
    pb.COMPARE_TARGET_EXISTS,
)
EQ, NE, GT, LT = pb.COMPARE_OP_EQUAL, pb.COMPARE_OP_NOT_EQUAL, pb.COMPARE_OP_GREATER, pb.COMPARE_OP_LESS


@pytest.fixture(scope="module")
def cmp_key(kv: kv_pb2_grpc.KvServiceStub) -> tuple[int, int]:
    """`txncmp/k` written twice ("v1", then "v2"): returns (create_revision, mod_revision)."""
    c = put(kv, "txncmp/k", b"v1").header.revision
    m = put(kv, "txncmp/k", b"v2").header.revision
    return c, m


# (target, op, value, number-or-callable(create, mod), expected) against txncmp/k: v2, version 2.
COMPARES_EXISTING: list[tuple[int, int, bytes, Any, bool]] = [
    (V, EQ, b"v2", 0, True),
    (V, EQ, b"v1", 0, False),
    (V, NE, b"v1", 0, True),
    (V, NE, b"v2", 0, False),
    (V, GT, b"v1", 0, True),
    (V, GT, b"v2", 0, False),
    (V, LT, b"v3", 0, True),
    (V, LT, b"v2", 0, False),
    (V, GT, b"v", 0, True),  # a proper prefix sorts first
    (VER, EQ, b"", 2, True),
    (VER, EQ, b"", 1, False),
    (VER, NE, b"", 2, False),
    (VER, GT, b"", 1, True),
    (VER, GT, b"", 2, False),
    (VER, LT, b"", 3, True),
    (VER, LT, b"", 2, False),
    (CREATE, EQ, b"", lambda c, m: c, True),
    (CREATE, EQ, b"", lambda c, m: m, False),
    (CREATE, LT, b"", lambda c, m: m, True),
    (CREATE, GT, b"", lambda c, m: c, False),
    (CREATE, NE, b"", lambda c, m: m, True),
    (MOD, EQ, b"", lambda c, m: m, True),
    (MOD, GT, b"", lambda c, m: c, True),
    (MOD, LT, b"", lambda c, m: m, False),
    (MOD, NE, b"", lambda c, m: m, False),
    (EXISTS, EQ, b"", 1, True),
    (EXISTS, EQ, b"", 0, False),
    (EXISTS, NE, b"", 0, True),
    (EXISTS, NE, b"", 1, False),
]


def _ids(cases: list[tuple[int, int, bytes, Any, bool]]) -> list[str]:
    out = []
    for target, op, value, number, expected in cases:
        operand = value.decode() if target == V else ("f" if callable(number) else str(number))
        out.append(f"{pb.CompareTarget.Name(target)[15:]}-{pb.CompareOp.Name(op)[11:]}-{operand}-{expected}")
    return out


@pytest.mark.parametrize(
    ("target", "op", "value", "number", "expected"), COMPARES_EXISTING, ids=_ids(COMPARES_EXISTING)
)
def test_txn_compare_existing_key(
    kv: kv_pb2_grpc.KvServiceStub,
    cmp_key: tuple[int, int],
    target: int,
    op: int,
    value: bytes,
    number: Any,
    expected: bool,
) -> None:
    n = number(*cmp_key) if callable(number) else number
    before = get(kv, "txncmp/k").header.revision
    r = kv.Txn(
        pb.TxnRequest(
            compare=[pb.Compare(key="txncmp/k", target=target, op=op, value=value, number=n)],
            success=[pb.TxnOp(get=pb.GetRequest(key="txncmp/k"))],
            failure=[pb.TxnOp(range=pb.RangeRequest(prefix="txncmp/"))],
        ),
        timeout=T,
    )
    assert r.succeeded is expected
    assert len(r.responses) == 1
    assert r.responses[0].WhichOneof("response") == ("get" if expected else "range")
    assert r.header.revision == before  # a Txn without writes writes nothing


COMPARES_MISSING: list[tuple[int, int, bytes, Any, bool]] = [
    (VER, EQ, b"", 0, True),
    (VER, GT, b"", 0, False),
    (CREATE, EQ, b"", 0, True),
    (MOD, EQ, b"", 0, True),
    (MOD, GT, b"", 0, False),
    (EXISTS, EQ, b"", 0, True),
    (EXISTS, EQ, b"", 1, False),
    (V, EQ, b"", 0, False),  # a missing key compares unequal to every value, even b""
    (V, EQ, b"x", 0, False),
    (V, NE, b"", 0, True),
    (V, NE, b"x", 0, True),
]


@pytest.mark.parametrize(
    ("target", "op", "value", "number", "expected"), COMPARES_MISSING, ids=_ids(COMPARES_MISSING)
)
def test_txn_compare_missing_key(
    kv: kv_pb2_grpc.KvServiceStub, target: int, op: int, value: bytes, number: int, expected: bool
) -> None:
    r = kv.Txn(
        pb.TxnRequest(
            compare=[pb.Compare(key="txncmp/missing", target=target, op=op, value=value, number=number)]
        ),
        timeout=T,
    )
    assert r.succeeded is expected
    assert list(r.responses) == []


def test_txn_compare_deleted_key_counts_as_missing(kv: kv_pb2_grpc.KvServiceStub) -> None:
    put(kv, "txncmp/gone", b"x")
    kv.Delete(pb.DeleteRequest(key="txncmp/gone"), timeout=T)
    r = kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key="txncmp/gone", target=VER, op=EQ, number=0),
                pb.Compare(key="txncmp/gone", target=EXISTS, op=EQ, number=0),
                pb.Compare(key="txncmp/gone", target=MOD, op=EQ, number=0),
            ]
        ),
        timeout=T,
    )
    assert r.succeeded


def test_txn_success_branch_is_atomic_and_reads_pre_state(kv: kv_pb2_grpc.KvServiceStub) -> None:
    base = put(kv, "txn/a", b"a0").header.revision
    put(kv, "txn/b", b"b0")
    put(kv, "txn/cas", b"old")
    r = kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key="txn/cas", target=V, op=EQ, value=b"old"),
                pb.Compare(key="txn/a", target=VER, op=EQ, number=1),
            ],
            success=[
                pb.TxnOp(get=pb.GetRequest(key="txn/a")),
                pb.TxnOp(put=pb.PutRequest(key="txn/a", value=b"a1", prev_kv=True)),
                pb.TxnOp(delete=pb.DeleteRequest(key="txn/b", prev_kv=True)),
                pb.TxnOp(put=pb.PutRequest(key="txn/cas", value=b"new")),
                pb.TxnOp(put=pb.PutRequest(key="txn/c", value=b"c1")),
                pb.TxnOp(range=pb.RangeRequest(prefix="txn/")),
            ],
            failure=[pb.TxnOp(put=pb.PutRequest(key="txn/failed", value=b"x"))],
        ),
        timeout=T,
    )
    rev = base + 3
    assert r.succeeded
    assert r.header.revision == rev
    kinds = [x.WhichOneof("response") for x in r.responses]
    assert kinds == ["get", "put", "delete", "put", "put", "range"]
    # Reads inside see the state before the Txn's writes.
    assert r.responses[0].get.found and r.responses[0].get.kv.value == b"a0"
    assert r.responses[1].put.prev_kv.value == b"a0"
    assert r.responses[2].delete.deleted
    assert r.responses[2].delete.prev_kv.value == b"b0"
    pre = r.responses[5].range
    assert [(x.key, x.value) for x in pre.kvs] == [("txn/a", b"a0"), ("txn/b", b"b0"), ("txn/cas", b"old")]
    assert pre.count == 3
    # All writes share one revision.
    after = kv.Range(pb.RangeRequest(prefix="txn/"), timeout=T)
    assert [(x.key, x.value, x.mod_revision) for x in after.kvs] == [
        ("txn/a", b"a1", rev),
        ("txn/c", b"c1", rev),
        ("txn/cas", b"new", rev),
    ]
    assert after.header.revision == rev
    assert get(kv, "txn/a").kv.version == 2
    c = get(kv, "txn/c").kv
    assert (c.create_revision, c.version) == (rev, 1)
    assert not get(kv, "txn/failed").found
    assert not get(kv, "txn/b", revision=rev).found
    assert get(kv, "txn/b", revision=rev - 1).kv.value == b"b0"


def test_txn_failure_branch(kv: kv_pb2_grpc.KvServiceStub) -> None:
    base = put(kv, "txnf/cas", b"actual").header.revision
    r = kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key="txnf/cas", target=EXISTS, op=EQ, number=1),  # true
                pb.Compare(key="txnf/cas", target=V, op=EQ, value=b"expected"),  # false: all must hold
            ],
            success=[pb.TxnOp(put=pb.PutRequest(key="txnf/cas", value=b"swapped"))],
            failure=[
                pb.TxnOp(get=pb.GetRequest(key="txnf/cas")),
                pb.TxnOp(put=pb.PutRequest(key="txnf/lost", value=b"1")),
                pb.TxnOp(delete=pb.DeleteRequest(key="txnf/nothing")),
            ],
        ),
        timeout=T,
    )
    assert not r.succeeded
    assert r.header.revision == base + 1
    assert [x.WhichOneof("response") for x in r.responses] == ["get", "put", "delete"]
    assert r.responses[0].get.kv.value == b"actual"
    assert not r.responses[2].delete.deleted
    assert get(kv, "txnf/cas").kv.value == b"actual"
    lost = get(kv, "txnf/lost").kv
    assert (lost.value, lost.mod_revision) == (b"1", base + 1)


def test_txn_empty_and_read_only_do_not_advance_revision(
    kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub
) -> None:
    rev = put(kv, "txnro/a", b"x").header.revision
    empty = kv.Txn(pb.TxnRequest(), timeout=T)
    assert empty.succeeded and list(empty.responses) == []
    ro = kv.Txn(pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key="txnro/a"))]), timeout=T)
    assert ro.succeeded and ro.responses[0].get.kv.value == b"x"
    # A Txn whose only write is a Delete of a missing key changes nothing either.
    noop = kv.Txn(pb.TxnRequest(success=[pb.TxnOp(delete=pb.DeleteRequest(key="txnro/none"))]), timeout=T)
    assert noop.succeeded and not noop.responses[0].delete.deleted
    assert status(cluster).revision == rev
    assert put(kv, "txnro/b", b"y").header.revision == rev + 1


def test_txn_cas_increment_is_exact(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """Compare-and-swap loop: each successful swap bumps version and mod_revision by one."""
    put(kv, "txncas/n", b"0")
    for i in range(5):
        cur = get(kv, "txncas/n").kv
        r = kv.Txn(
            pb.TxnRequest(
                compare=[pb.Compare(key="txncas/n", target=MOD, op=EQ, number=cur.mod_revision)],
                success=[pb.TxnOp(put=pb.PutRequest(key="txncas/n", value=str(i + 1).encode()))],
            ),
            timeout=T,
        )
        assert r.succeeded
        # A stale compare fails.
        stale = kv.Txn(
            pb.TxnRequest(
                compare=[pb.Compare(key="txncas/n", target=MOD, op=EQ, number=cur.mod_revision)],
                success=[pb.TxnOp(put=pb.PutRequest(key="txncas/n", value=b"stale"))],
            ),
            timeout=T,
        )
        assert not stale.succeeded
    final = get(kv, "txncas/n").kv
    assert (final.value, final.version) == (b"5", 6)


# -- History -------------------------------------------------------------------------------


def test_history_newest_first_with_tombstones(kv: kv_pb2_grpc.KvServiceStub) -> None:
    key = "hist/k"
    r1 = put(kv, key, b"v1").header.revision
    put(kv, key, b"v2")
    kv.Delete(pb.DeleteRequest(key=key), timeout=T)
    put(kv, key, b"v3")
    h = kv.History(pb.HistoryRequest(key=key), timeout=T)
    got = [(x.key, x.mod_revision, x.deleted) for x in h.versions]
    assert got == [(key, r1 + 3, False), (key, r1 + 2, True), (key, r1 + 1, False), (key, r1, False)]
    live = [x for x in h.versions if not x.deleted]
    assert [(x.value, x.version, x.create_revision) for x in live] == [
        (b"v3", 1, r1 + 3),
        (b"v2", 2, r1),
        (b"v1", 1, r1),
    ]
    assert h.header.revision >= r1 + 3
    limited = kv.History(pb.HistoryRequest(key=key, limit=2), timeout=T)
    assert [(x.mod_revision, x.deleted) for x in limited.versions] == [(r1 + 3, False), (r1 + 2, True)]
    one = kv.History(pb.HistoryRequest(key=key, limit=1), timeout=T)
    assert [x.value for x in one.versions] == [b"v3"]
    assert list(kv.History(pb.HistoryRequest(key="hist/never"), timeout=T).versions) == []


def test_history_read_modes(kv: kv_pb2_grpc.KvServiceStub) -> None:
    rev = put(kv, "histm/k", b"v").header.revision
    for mode in (pb.READ_MODE_LINEARIZABLE, pb.READ_MODE_SEQUENTIAL, pb.READ_MODE_EVENTUAL):
        h = kv.History(pb.HistoryRequest(key="histm/k", read_mode=mode), timeout=T)
        assert [(x.value, x.mod_revision) for x in h.versions] == [(b"v", rev)]


def test_history_depth_prunes_old_versions(node_factory: Callable[..., NodeProcess]) -> None:
    """Each key keeps at least its newest history_depth versions; older ones are OUT_OF_RANGE."""
    small = node_factory(
        extra_args=["--history-depth", "3"], env={"GINNUNGAGAP_MVCC__PRUNE_INTERVAL_MS": "100"}
    )
    kv = small.kv_stub()
    revs = [put(kv, "deep/k", str(i).encode()).header.revision for i in range(10)]
    other = put(kv, "deep/other", b"o").header.revision  # one version only: never pruned

    def oldest_gone() -> bool:
        try:
            get(kv, "deep/k", revision=revs[0])
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.OUT_OF_RANGE, exc
            return True
        return False

    deadline = time.monotonic() + 5.0
    while not oldest_gone():
        assert time.monotonic() < deadline, "old versions were never pruned"
        time.sleep(0.05)
    for i in (7, 8, 9):  # the newest three are always there
        g = get(kv, "deep/k", revision=revs[i])
        assert (g.kv.value, g.kv.version) == (str(i).encode(), i + 1)
    versions = kv.History(pb.HistoryRequest(key="deep/k"), timeout=T).versions
    assert [x.mod_revision for x in versions][:3] == revs[:-4:-1]
    assert [x.mod_revision for x in versions] == sorted((x.mod_revision for x in versions), reverse=True)
    assert len(versions) < 10
    assert get(kv, "deep/other", revision=other).kv.value == b"o"
    latest = get(kv, "deep/k").kv
    assert (latest.value, latest.version, latest.create_revision) == (b"9", 10, revs[0])


def test_acknowledged_writes_are_visible_on_other_connections(node: NodeProcess) -> None:
    """Linearizable reads on a different connection see every write acknowledged before them."""
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            writer = kv_pb2_grpc.KvServiceStub(node.new_channel())
            reader = kv_pb2_grpc.KvServiceStub(node.new_channel())
            for j in range(25):
                key = f"ryw/{i}/{j}"
                rev = writer.Put(pb.PutRequest(key=key, value=b"v"), timeout=T).header.revision
                g = reader.Get(pb.GetRequest(key=key, read_mode=pb.READ_MODE_LINEARIZABLE), timeout=T)
                assert g.found and g.kv.mod_revision == rev, (key, rev, g)
                assert g.header.revision >= rev
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert (
        kv_pb2_grpc.KvServiceStub(node.channel()).Range(pb.RangeRequest(prefix="ryw/"), timeout=T).count
        == 100
    )


# -- read modes ----------------------------------------------------------------------------


def test_read_modes_return_the_data(kv: kv_pb2_grpc.KvServiceStub) -> None:
    rev = put(kv, "mode/k", b"data").header.revision
    for mode in (
        pb.READ_MODE_UNSPECIFIED,
        pb.READ_MODE_LINEARIZABLE,
        pb.READ_MODE_SEQUENTIAL,
        pb.READ_MODE_EVENTUAL,
    ):
        g = get(kv, "mode/k", read_mode=mode)
        assert g.found and g.kv.value == b"data" and g.kv.mod_revision == rev, mode
        assert g.header.revision >= rev
        r = kv.Range(pb.RangeRequest(prefix="mode/", read_mode=mode), timeout=T)
        assert [x.value for x in r.kvs] == [b"data"], mode


def test_sequential_min_revision_current_answers_at_once(kv: kv_pb2_grpc.KvServiceStub) -> None:
    rev = put(kv, "minrev/k", b"v").header.revision
    g = get(kv, "minrev/k", read_mode=pb.READ_MODE_SEQUENTIAL, min_revision=rev)
    assert g.found and g.kv.value == b"v"
    assert g.header.revision >= rev
    r = kv.Range(
        pb.RangeRequest(prefix="minrev/", read_mode=pb.READ_MODE_EVENTUAL, min_revision=rev), timeout=T
    )
    assert r.count == 1


def test_min_revision_in_future_waits_until_deadline(
    kv: kv_pb2_grpc.KvServiceStub, node: NodeProcess
) -> None:
    rev = put(kv, "minrev/future", b"v").header.revision
    err = rpc_error(
        lambda: kv.Get(
            pb.GetRequest(key="minrev/future", read_mode=pb.READ_MODE_SEQUENTIAL, min_revision=rev + 1000),
            timeout=0.5,
        )
    )
    assert err.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), err
    # The node is still fine afterwards.
    assert get(kv, "minrev/future").kv.value == b"v"


def test_min_revision_reached_by_a_later_write(node: NodeProcess, kv: kv_pb2_grpc.KvServiceStub) -> None:
    """A read waiting for min_revision answers as soon as a write reaches that revision."""
    rev = put(kv, "minrev/later", b"1").header.revision
    fut = kv.Get.future(
        pb.GetRequest(key="minrev/later", read_mode=pb.READ_MODE_SEQUENTIAL, min_revision=rev + 1), timeout=T
    )
    time.sleep(0.2)
    put(kv, "minrev/later", b"2")
    g = fut.result(timeout=T)
    assert g.found and g.kv.value == b"2" and g.kv.mod_revision == rev + 1


# -- headers and Status --------------------------------------------------------------------


def test_headers(kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub) -> None:
    p = put(kv, "hdr/k", b"v")
    rev = p.header.revision
    headers = [
        p.header,
        get(kv, "hdr/k").header,
        kv.Range(pb.RangeRequest(prefix="hdr/"), timeout=T).header,
        kv.History(pb.HistoryRequest(key="hdr/k"), timeout=T).header,
        kv.Txn(pb.TxnRequest(), timeout=T).header,
        kv.Delete(pb.DeleteRequest(key="hdr/none"), timeout=T).header,
    ]
    for h in headers:
        assert (h.revision, h.member_id, h.leader_id) == (rev, 1, 1), h
        assert h.raft_term == headers[0].raft_term
    assert status(cluster).revision == rev


def test_cluster_status(kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub) -> None:
    rev = put(kv, "status/k", b"v").header.revision
    s = status(cluster)
    assert s.member_id == 1
    assert s.leader_id == 1
    assert s.role == "leader"
    assert s.revision == rev
    assert s.commit_index >= 1
    assert s.applied_index == s.commit_index  # idle single node: everything committed is applied
    assert s.version != ""
    assert s.db_size_bytes > 0
    assert s.compact_revision <= rev


def test_member_list_names_this_node(node: NodeProcess, cluster: kv_pb2_grpc.ClusterServiceStub) -> None:
    members = cluster.MemberList(pb.MemberListRequest(), timeout=T).members
    assert len(members) == 1
    assert members[0].id == 1
    assert members[0].client_addr == node.client_addr
    assert members[0].cluster_addr == node.cluster_addr
    assert not members[0].learner


def test_write_quorum_all_on_one_node(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r1 = put(kv, "qall/k", b"1", quorum=pb.WRITE_QUORUM_ALL).header.revision
    r2 = put(kv, "qall/k", b"2", quorum=pb.WRITE_QUORUM_MAJORITY).header.revision
    t = kv.Txn(
        pb.TxnRequest(
            success=[pb.TxnOp(put=pb.PutRequest(key="qall/t", value=b"t"))], quorum=pb.WRITE_QUORUM_ALL
        ),
        timeout=T,
    )
    d = kv.Delete(pb.DeleteRequest(key="qall/k", quorum=pb.WRITE_QUORUM_ALL), timeout=T)
    assert (r2, t.header.revision, d.header.revision) == (r1 + 1, r1 + 2, r1 + 3)
    assert d.deleted
    assert get(kv, "qall/t").kv.value == b"t"


def test_default_limits_key_and_value(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """Defaults: keys up to 4096 UTF-8 bytes, values up to 1 MiB (one past each is refused)."""
    key = "deflim/" + "k" * (4096 - 7)
    put(kv, key, b"v")
    assert get(kv, key).kv.value == b"v"
    err = rpc_error(lambda: put(kv, key + "k", b"v"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    big = b"\xab" * (1 << 20)
    put(kv, "limv/max", big)
    assert get(kv, "limv/max").kv.value == big
    err = rpc_error(lambda: put(kv, "limv/over", big + b"x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not get(kv, "limv/over").found


# -- Compact (last: it makes older revisions unreadable for every test) -------------------


def test_zz_compact_then_read_below(
    kv: kv_pb2_grpc.KvServiceStub, cluster: kv_pb2_grpc.ClusterServiceStub
) -> None:
    r1 = put(kv, "cmp/k", b"c1").header.revision
    r2 = put(kv, "cmp/k", b"c2").header.revision
    r3 = put(kv, "cmp/k", b"c3").header.revision
    c = kv.Compact(pb.CompactRequest(revision=r2), timeout=T)
    assert c.header.revision == r3  # compaction is not a write
    assert status(cluster).compact_revision == r2
    for call in (
        lambda: get(kv, "cmp/k", revision=r1),
        lambda: kv.Range(pb.RangeRequest(prefix="cmp/", revision=r1), timeout=T),
    ):
        err = rpc_error(call)
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        assert str(r2) in (err.details() or ""), err.details()
    at = get(kv, "cmp/k", revision=r2)  # the compacted revision itself stays readable
    assert at.found and at.kv.value == b"c2"
    latest = get(kv, "cmp/k")
    assert (latest.kv.value, latest.kv.version, latest.kv.create_revision) == (b"c3", 3, r1)
    assert put(kv, "cmp/after", b"x").header.revision == r3 + 1
