"""Every row of API.md's error table, plus abuse of the client port, against one real node.

The node runs with small limits (keys 64 bytes, values 1 KiB, 8 Txn compares+ops, 16
requests in flight) so over-limit requests are cheap; the default limits are checked in
test_kv_api.py. Sentinel data written first must survive every abuse unchanged, and no
status message may leak a traceback or a source path.
"""

from __future__ import annotations

import random
import re
import socket
import struct
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

T = 5.0
MAX_KEY = 64
MAX_VALUE = 1024
MAX_TXN_OPS = 8
MAX_IN_FLIGHT = 16
DEFAULT_MAX_MESSAGE = 4 * 1024 * 1024

# The shared `node` fixture (tests/conftest.py) starts the node with these.
NODE_ENV = {
    "GINNUNGAGAP_LIMITS__MAX_KEY_BYTES": str(MAX_KEY),
    "GINNUNGAGAP_LIMITS__MAX_VALUE_BYTES": str(MAX_VALUE),
    "GINNUNGAGAP_LIMITS__MAX_TXN_OPS": str(MAX_TXN_OPS),
    "GINNUNGAGAP_LIMITS__MAX_IN_FLIGHT": str(MAX_IN_FLIGHT),
}

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE

_LEAK = re.compile(r"(?i)traceback|File \"|\.pyx?\b|site-packages|/ggap/|object at 0x|<class '")


@pytest.fixture(scope="module")
def kv(node: NodeProcess) -> kv_pb2_grpc.KvServiceStub:
    return node.kv_stub()


@pytest.fixture(scope="module")
def sentinel(kv: kv_pb2_grpc.KvServiceStub) -> list[tuple[str, bytes, int]]:
    """Data written before any abuse: (key, value, mod_revision)."""
    out = []
    for i in range(10):
        key, value = f"sentinel/{i:02d}", f"value-{i}".encode()
        rev = kv.Put(pb.PutRequest(key=key, value=value), timeout=T).header.revision
        out.append((key, value, rev))
    return out


def assert_intact(node: NodeProcess, sentinel: list[tuple[str, bytes, int]]) -> None:
    """The node answers on a fresh connection and the sentinel data is exactly as written."""
    with grpc.insecure_channel(node.client_addr) as channel:
        kv = kv_pb2_grpc.KvServiceStub(channel)
        r = kv.Range(pb.RangeRequest(prefix="sentinel/"), timeout=T)
        assert [(x.key, x.value, x.mod_revision) for x in r.kvs] == sentinel
        # And still accepts writes.
        p = kv.Put(pb.PutRequest(key="alive", value=b"yes"), timeout=T)
        assert p.header.revision >= sentinel[-1][2]
    assert node.is_running()


def check_message(details: str | None) -> None:
    assert not _LEAK.search(details or ""), f"status message leaks internals: {details!r}"


def rpc_error(call: Callable[[], object], survived: Callable[[], None] | None = None) -> grpc.RpcError:
    """The call's RpcError, after `survived()` (if given) confirmed the node is fine; its
    message must not leak internals."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    if survived is not None:
        survived()
    err = info.value
    check_message(err.details())
    return err


def current_revision(kv: kv_pb2_grpc.KvServiceStub) -> int:
    return kv.Txn(pb.TxnRequest(), timeout=T).header.revision


def first_watch_response(kv: kv_pb2_grpc.KvServiceStub, req: pb.WatchRequest) -> Any:
    call = kv.Watch(req, timeout=T)
    try:
        return next(call)
    finally:
        call.cancel()


# -- the INVALID_ARGUMENT rows -------------------------------------------------------------

LONG_KEY = "k" * (MAX_KEY + 1)
WIDE_KEY = "é" * (MAX_KEY // 2) + "a"  # 33 characters but 65 UTF-8 bytes
BIG_VALUE = b"v" * (MAX_VALUE + 1)


def _put(**kw: Any) -> pb.TxnOp:
    return pb.TxnOp(put=pb.PutRequest(**kw))


Call = Callable[[kv_pb2_grpc.KvServiceStub], object]

INVALID_CASES: dict[str, Call] = {
    # empty key
    "put-empty-key": lambda kv: kv.Put(pb.PutRequest(key="", value=b"v"), timeout=T),
    "get-empty-key": lambda kv: kv.Get(pb.GetRequest(key=""), timeout=T),
    "delete-empty-key": lambda kv: kv.Delete(pb.DeleteRequest(key=""), timeout=T),
    "history-empty-key": lambda kv: kv.History(pb.HistoryRequest(key=""), timeout=T),
    "watch-empty-key": lambda kv: first_watch_response(kv, pb.WatchRequest(key="")),
    "txn-compare-empty-key": lambda kv: kv.Txn(
        pb.TxnRequest(compare=[pb.Compare(key="", target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_EQUAL)]),
        timeout=T,
    ),
    "txn-put-empty-key": lambda kv: kv.Txn(pb.TxnRequest(success=[_put(key="", value=b"v")]), timeout=T),
    "txn-delete-empty-key": lambda kv: kv.Txn(
        pb.TxnRequest(failure=[pb.TxnOp(delete=pb.DeleteRequest(key=""))]), timeout=T
    ),
    "txn-get-empty-key": lambda kv: kv.Txn(
        pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key=""))]), timeout=T
    ),
    # key over the limit
    "put-long-key": lambda kv: kv.Put(pb.PutRequest(key=LONG_KEY, value=b"v"), timeout=T),
    "put-wide-key": lambda kv: kv.Put(pb.PutRequest(key=WIDE_KEY, value=b"v"), timeout=T),
    "get-long-key": lambda kv: kv.Get(pb.GetRequest(key=LONG_KEY), timeout=T),
    "delete-long-key": lambda kv: kv.Delete(pb.DeleteRequest(key=LONG_KEY), timeout=T),
    "history-long-key": lambda kv: kv.History(pb.HistoryRequest(key=LONG_KEY), timeout=T),
    "watch-long-key": lambda kv: first_watch_response(kv, pb.WatchRequest(key=LONG_KEY)),
    "watch-long-prefix": lambda kv: first_watch_response(kv, pb.WatchRequest(prefix=LONG_KEY)),
    "range-long-prefix": lambda kv: kv.Range(pb.RangeRequest(prefix=LONG_KEY), timeout=T),
    "range-long-start": lambda kv: kv.Range(pb.RangeRequest(start=LONG_KEY), timeout=T),
    "range-long-end": lambda kv: kv.Range(pb.RangeRequest(start="a", end=LONG_KEY), timeout=T),
    "txn-compare-long-key": lambda kv: kv.Txn(
        pb.TxnRequest(
            compare=[pb.Compare(key=LONG_KEY, target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_EQUAL)]
        ),
        timeout=T,
    ),
    "txn-put-long-key": lambda kv: kv.Txn(pb.TxnRequest(success=[_put(key=LONG_KEY, value=b"v")]), timeout=T),
    # value over the limit
    "put-big-value": lambda kv: kv.Put(pb.PutRequest(key="big", value=BIG_VALUE), timeout=T),
    "txn-put-big-value": lambda kv: kv.Txn(
        pb.TxnRequest(failure=[_put(key="big", value=BIG_VALUE)]), timeout=T
    ),
    # unknown enum values
    "get-read-mode-99": lambda kv: kv.Get(pb.GetRequest(key="a", read_mode=99), timeout=T),
    "range-read-mode-99": lambda kv: kv.Range(pb.RangeRequest(prefix="a", read_mode=99), timeout=T),
    "history-read-mode-99": lambda kv: kv.History(pb.HistoryRequest(key="a", read_mode=99), timeout=T),
    "put-quorum-7": lambda kv: kv.Put(pb.PutRequest(key="a", value=b"v", quorum=7), timeout=T),
    "delete-quorum-7": lambda kv: kv.Delete(pb.DeleteRequest(key="a", quorum=7), timeout=T),
    "txn-quorum-7": lambda kv: kv.Txn(pb.TxnRequest(quorum=7), timeout=T),
    "txn-inner-put-quorum-7": lambda kv: kv.Txn(
        pb.TxnRequest(success=[_put(key="a", value=b"v", quorum=7)]), timeout=T
    ),
    "txn-inner-get-read-mode-99": lambda kv: kv.Txn(
        pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key="a", read_mode=99))]), timeout=T
    ),
    **{
        f"compare-target-{t}-op-{o}": (
            lambda kv, t=t, o=o: kv.Txn(
                pb.TxnRequest(compare=[pb.Compare(key="a", target=t, op=o)]), timeout=T
            )
        )
        for t, o in (
            (0, pb.COMPARE_OP_EQUAL),
            (42, pb.COMPARE_OP_EQUAL),
            (pb.COMPARE_TARGET_VERSION, 0),
            (pb.COMPARE_TARGET_VERSION, 42),
        )
    },
    "compare-exists-number-2": lambda kv: kv.Txn(
        pb.TxnRequest(
            compare=[pb.Compare(key="a", target=pb.COMPARE_TARGET_EXISTS, op=pb.COMPARE_OP_EQUAL, number=2)]
        ),
        timeout=T,
    ),
    # prefix with start/end, end <= start
    "range-prefix-and-start": lambda kv: kv.Range(pb.RangeRequest(prefix="a", start="a"), timeout=T),
    "range-prefix-and-end": lambda kv: kv.Range(pb.RangeRequest(prefix="a", end="b"), timeout=T),
    "range-end-equals-start": lambda kv: kv.Range(pb.RangeRequest(start="b", end="b"), timeout=T),
    "range-end-below-start": lambda kv: kv.Range(pb.RangeRequest(start="b", end="a"), timeout=T),
    "range-end-below-start-utf8": lambda kv: kv.Range(pb.RangeRequest(start="😀", end="\uffff"), timeout=T),
    "txn-range-prefix-and-start": lambda kv: kv.Txn(
        pb.TxnRequest(success=[pb.TxnOp(range=pb.RangeRequest(prefix="a", start="a"))]), timeout=T
    ),
    "txn-range-end-below-start": lambda kv: kv.Txn(
        pb.TxnRequest(success=[pb.TxnOp(range=pb.RangeRequest(start="b", end="a"))]), timeout=T
    ),
    # negative numbers
    "range-negative-limit": lambda kv: kv.Range(pb.RangeRequest(prefix="a", limit=-1), timeout=T),
    "history-negative-limit": lambda kv: kv.History(pb.HistoryRequest(key="a", limit=-1), timeout=T),
    "put-negative-ttl": lambda kv: kv.Put(pb.PutRequest(key="a", value=b"v", ttl_ms=-1), timeout=T),
    # Txn shape
    "txn-too-many-ops": lambda kv: kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key="a", target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_GREATER, number=-1)
            ],
            success=[_put(key=f"many/{i}", value=b"v") for i in range(MAX_TXN_OPS)],
        ),
        timeout=T,
    ),
    "txn-same-key-twice": lambda kv: kv.Txn(
        pb.TxnRequest(success=[_put(key="twice", value=b"1"), _put(key="twice", value=b"2")]), timeout=T
    ),
    "txn-put-and-delete-same-key": lambda kv: kv.Txn(
        pb.TxnRequest(
            failure=[_put(key="twice", value=b"1"), pb.TxnOp(delete=pb.DeleteRequest(key="twice"))]
        ),
        timeout=T,
    ),
    "txn-empty-op": lambda kv: kv.Txn(pb.TxnRequest(success=[pb.TxnOp()]), timeout=T),
}


@pytest.mark.parametrize("case", sorted(INVALID_CASES))
def test_invalid_argument(
    kv: kv_pb2_grpc.KvServiceStub, sentinel: list[tuple[str, bytes, int]], case: str
) -> None:
    before = current_revision(kv)
    err = rpc_error(lambda: INVALID_CASES[case](kv))
    assert err.code() == INVALID, (err.code(), err.details())
    assert err.details(), "an INVALID_ARGUMENT should say what is wrong"
    assert current_revision(kv) == before  # nothing was written


def test_limits_are_inclusive(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """Exactly at each limit is fine (keys are counted in UTF-8 bytes)."""
    at_key = "k" * MAX_KEY
    wide = "é" * (MAX_KEY // 2)
    kv.Put(pb.PutRequest(key=at_key, value=b"v" * MAX_VALUE), timeout=T)
    kv.Put(pb.PutRequest(key=wide, value=b"w"), timeout=T)
    assert kv.Get(pb.GetRequest(key=at_key), timeout=T).kv.value == b"v" * MAX_VALUE
    assert kv.Get(pb.GetRequest(key=wide), timeout=T).kv.value == b"w"
    r = kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key=at_key, target=pb.COMPARE_TARGET_EXISTS, op=pb.COMPARE_OP_EQUAL, number=1)
            ],
            success=[_put(key=f"ops/{i}", value=b"v") for i in range(MAX_TXN_OPS - 1)],
        ),
        timeout=T,
    )
    assert r.succeeded and len(r.responses) == MAX_TXN_OPS - 1


def test_same_key_in_both_branches_is_fine(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r = kv.Txn(
        pb.TxnRequest(
            compare=[
                pb.Compare(key="branch", target=pb.COMPARE_TARGET_EXISTS, op=pb.COMPARE_OP_EQUAL, number=1)
            ],
            success=[_put(key="branch", value=b"s")],
            failure=[_put(key="branch", value=b"f")],
        ),
        timeout=T,
    )
    assert not r.succeeded
    assert kv.Get(pb.GetRequest(key="branch"), timeout=T).kv.value == b"f"


def test_rejected_txn_writes_nothing(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """An invalid op late in a Txn must not leave the earlier ops applied."""
    before = current_revision(kv)
    err = rpc_error(
        lambda: kv.Txn(
            pb.TxnRequest(success=[_put(key="half/1", value=b"v"), _put(key="half/2", value=BIG_VALUE)]),
            timeout=T,
        )
    )
    assert err.code() == INVALID
    assert not kv.Get(pb.GetRequest(key="half/1"), timeout=T).found
    assert current_revision(kv) == before


# -- OUT_OF_RANGE --------------------------------------------------------------------------


def test_revision_above_current(kv: kv_pb2_grpc.KvServiceStub) -> None:
    kv.Put(pb.PutRequest(key="future", value=b"v"), timeout=T)
    cur = current_revision(kv)
    for call in (
        lambda: kv.Get(pb.GetRequest(key="future", revision=cur + 1), timeout=T),
        lambda: kv.Get(pb.GetRequest(key="future", revision=cur + 1000), timeout=T),
        lambda: kv.Range(pb.RangeRequest(prefix="future", revision=cur + 1), timeout=T),
        lambda: kv.Txn(
            pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key="future", revision=cur + 5))]), timeout=T
        ),
        lambda: kv.Compact(pb.CompactRequest(revision=cur + 1), timeout=T),
    ):
        err = rpc_error(call)
        assert err.code() == OUT_OF_RANGE, (err.code(), err.details())
    assert kv.Get(pb.GetRequest(key="future", revision=cur), timeout=T).kv.value == b"v"


def test_compacted_revision(
    kv: kv_pb2_grpc.KvServiceStub, node: NodeProcess, sentinel: list[tuple[str, bytes, int]]
) -> None:
    r1 = kv.Put(pb.PutRequest(key="compacted", value=b"1"), timeout=T).header.revision
    r2 = kv.Put(pb.PutRequest(key="compacted", value=b"2"), timeout=T).header.revision
    kv.Compact(pb.CompactRequest(revision=r2), timeout=T)
    for call in (
        lambda: kv.Get(pb.GetRequest(key="compacted", revision=r1), timeout=T),
        lambda: kv.Range(pb.RangeRequest(prefix="compacted", revision=r1), timeout=T),
        lambda: kv.Txn(
            pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key="compacted", revision=r1))]), timeout=T
        ),
        lambda: first_watch_response(kv, pb.WatchRequest(key="compacted", start_revision=r1)),
        lambda: kv.Compact(pb.CompactRequest(revision=r1), timeout=T),  # already compacted
    ):
        err = rpc_error(call)
        assert err.code() == OUT_OF_RANGE, (err.code(), err.details())
        assert str(r2) in (err.details() or ""), err.details()
    assert kv.Get(pb.GetRequest(key="compacted", revision=r2), timeout=T).kv.value == b"2"
    assert_intact(node, sentinel)


# -- RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED ---------------------------------------------


def test_too_many_in_flight(
    node: NodeProcess, kv: kv_pb2_grpc.KvServiceStub, sentinel: list[tuple[str, bytes, int]]
) -> None:
    far = current_revision(kv) + 1_000_000
    blocked = [
        kv.Get.future(pb.GetRequest(key="a", read_mode=pb.READ_MODE_EVENTUAL, min_revision=far), timeout=1.5)
        for _ in range(MAX_IN_FLIGHT)
    ]
    try:
        time.sleep(0.5)  # let all of them reach the server
        err = rpc_error(lambda: kv.Get(pb.GetRequest(key="sentinel/00"), timeout=T))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())
    finally:
        codes = []
        for fut in blocked:
            exc = fut.exception(timeout=T + 3)
            codes.append(exc.code() if isinstance(exc, grpc.RpcError) else exc)
    # Streams abandoned by earlier tests may still hold a slot for a while, so some of the
    # blockers may have been refused themselves; the rest waited out their deadline.
    # A min_revision wait ends just before the deadline with UNAVAILABLE ("not caught up");
    # the client may see that or its own DEADLINE_EXCEEDED, whichever comes first.
    waited_out = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    assert set(codes) <= waited_out | {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert waited_out & set(codes), codes
    # The server ends its side at the same deadline, a moment after the client gave up:
    # its slots must come back (within a liveness bound), the limit is not a leak.
    deadline = time.monotonic() + 5.0
    while True:
        try:
            kv.Get(pb.GetRequest(key="sentinel/00"), timeout=T)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, "in-flight slots were not released"
            time.sleep(0.05)
    assert_intact(node, sentinel)


def test_client_deadline(kv: kv_pb2_grpc.KvServiceStub) -> None:
    far = current_revision(kv) + 1_000_000
    err = rpc_error(
        lambda: kv.Range(
            pb.RangeRequest(prefix="a", read_mode=pb.READ_MODE_SEQUENTIAL, min_revision=far), timeout=0.3
        )
    )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- malformed bytes -----------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _raw_call(node: NodeProcess, method: str, body: bytes, timeout: float = T) -> bytes:
    with grpc.insecure_channel(node.client_addr) as channel:
        fn = channel.unary_unary(f"/ginnungagap.v1.KvService/{method}")  # no (de)serializers: bytes
        return fn(body, timeout=timeout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("method", ["Put", "Get", "Delete", "History"])
def test_invalid_utf8_key(node: NodeProcess, sentinel: list[tuple[str, bytes, int]], method: str) -> None:
    body = _field(1, b"bad\xff\xfekey")
    if method == "Put":
        body += _field(2, b"value")
    err = rpc_error(lambda: _raw_call(node, method, body), lambda: assert_intact(node, sentinel))
    assert err.code() == INVALID, (err.code(), err.details())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x0a\x10abc", id="truncated-field"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="bad-varint"),
        pytest.param(b"\x0b", id="start-group"),
        pytest.param(_field(1, b"a") + _field(2, b"b") + b"\x18", id="truncated-tail"),
    ],
)
def test_unparsable_request(node: NodeProcess, sentinel: list[tuple[str, bytes, int]], body: bytes) -> None:
    err = rpc_error(lambda: _raw_call(node, "Put", body), lambda: assert_intact(node, sentinel))
    # A request that is not a PutRequest at all is the client's fault; INTERNAL is what
    # grpcio's own servers answer, so it is tolerated; CANCELLED/UNKNOWN are not.
    assert err.code() in (INVALID, grpc.StatusCode.INTERNAL), (err.code(), err.details())


def test_unknown_fields_are_ignored(node: NodeProcess) -> None:
    body = pb.PutRequest(key="unknown-fields", value=b"v").SerializeToString() + _field(99, b"extra")
    reply = pb.PutResponse.FromString(_raw_call(node, "Put", body))
    assert reply.header.revision > 0
    with grpc.insecure_channel(node.client_addr) as channel:
        got = kv_pb2_grpc.KvServiceStub(channel).Get(pb.GetRequest(key="unknown-fields"), timeout=T)
    assert got.kv.value == b"v"


def test_unknown_method(node: NodeProcess) -> None:
    err = rpc_error(lambda: _raw_call(node, "Explode", b""))
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED


def test_huge_message(
    node: NodeProcess, kv: kv_pb2_grpc.KvServiceStub, sentinel: list[tuple[str, bytes, int]]
) -> None:
    """A message over max_message_bytes (4 MiB) that is otherwise a valid PutRequest: its only
    fault is its size (the padding is an unknown field), so only the size check can refuse it."""
    body = pb.PutRequest(key="huge", value=b"v").SerializeToString() + _field(
        99, b"\0" * (DEFAULT_MAX_MESSAGE + 1024)
    )
    err = rpc_error(lambda: _raw_call(node, "Put", body, timeout=15), lambda: assert_intact(node, sentinel))
    assert not kv.Get(pb.GetRequest(key="huge"), timeout=T).found
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (err.code(), err.details())


def test_huge_message_spares_other_streams(node: NodeProcess, sentinel: list[tuple[str, bytes, int]]) -> None:
    """Refusing one oversized message must not kill other calls multiplexed on its connection."""
    with grpc.insecure_channel(node.client_addr) as channel:
        kv = kv_pb2_grpc.KvServiceStub(channel)
        start = kv.Put(pb.PutRequest(key="multiplex", value=b"0"), timeout=T).header.revision
        watch = kv.Watch(pb.WatchRequest(key="multiplex", start_revision=start), timeout=30)
        try:
            assert next(watch).events[0].kv.value == b"0"
            raw = channel.unary_unary("/ginnungagap.v1.KvService/Put")
            body = pb.PutRequest(key="multiplex", value=b"x").SerializeToString() + _field(
                99, b"\0" * (DEFAULT_MAX_MESSAGE + 1024)
            )
            with pytest.raises(grpc.RpcError):
                raw(body, timeout=15)
            kv.Put(pb.PutRequest(key="multiplex", value=b"1"), timeout=T)
            # The watch opened before the oversized message still delivers.
            got: list[bytes] = []
            while not got:
                got = [e.kv.value for e in next(watch).events]
            assert got == [b"1"]
        finally:
            watch.cancel()
    assert_intact(node, sentinel)


# -- abuse of the raw TCP port -------------------------------------------------------------


def _read_until_closed(sock: socket.socket, limit: float) -> bool:
    """True if the server closed (or reset) the connection within `limit` seconds."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_GARBAGE = random.Random(20240601).randbytes(4096)

# Abuse -> whether the server must hang up. It must when it has received a complete frame
# that is a connection error (RFC 9113); garbage that announces a long frame leaves h2
# waiting for the rest, so there only survival is required.
ABUSE: dict[str, tuple[bytes, bool]] = {
    "random-bytes": (_GARBAGE, True),
    "http1-request": (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    "preface-then-garbage": (PREFACE + _GARBAGE, False),
    "preface-settings-bad-hpack": (
        PREFACE + _h2_frame(0x4, 0, 0, b"") + _h2_frame(0x1, 0x4 | 0x1, 1, b"\xff\xff\xff\xff\xff\xff\x7f"),
        True,
    ),
    "preface-oversized-frame-header": (
        PREFACE + _h2_frame(0x4, 0, 0, b"") + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + _GARBAGE,
        False,
    ),
    "settings-bad-length": (PREFACE + _h2_frame(0x4, 0, 0, b"\x00\x01\x00"), True),
    "window-update-zero": (
        PREFACE + _h2_frame(0x4, 0, 0, b"") + _h2_frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
        True,
    ),
    "headers-on-stream-0": (PREFACE + _h2_frame(0x4, 0, 0, b"") + _h2_frame(0x1, 0x4, 0, b"\x82"), True),
    "data-on-idle-stream": (
        PREFACE + _h2_frame(0x4, 0, 0, b"") + _h2_frame(0x0, 0x1, 7, b"\x00\x00\x00\x00\x00"),
        True,
    ),
}


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_raw_socket_abuse(node: NodeProcess, sentinel: list[tuple[str, bytes, int]], name: str) -> None:
    data, must_close = ABUSE[name]
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=T) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may hang up mid-send: fine
        closed = _read_until_closed(sock, 5.0 if must_close else 0.5)
        assert_intact(node, sentinel)  # while the bad connection is still open on our side
    assert_intact(node, sentinel)
    if must_close:
        assert closed, "the server kept a connection open after a connection error"


def test_idle_and_half_open_connections_do_not_block_others(
    node: NodeProcess, sentinel: list[tuple[str, bytes, int]]
) -> None:
    socks = []
    try:
        for i in range(8):
            s = socket.create_connection(("127.0.0.1", node.client_port), timeout=T)
            if i % 2:
                s.sendall(PREFACE[:10])  # a partial preface, never finished
            socks.append(s)
        assert_intact(node, sentinel)
    finally:
        for s in socks:
            s.close()
    assert_intact(node, sentinel)


def test_client_disconnects_mid_watch(
    node: NodeProcess, kv: kv_pb2_grpc.KvServiceStub, sentinel: list[tuple[str, bytes, int]]
) -> None:
    start = kv.Put(pb.PutRequest(key="dc/k", value=b"0"), timeout=T).header.revision
    for _ in range(5):
        channel = grpc.insecure_channel(node.client_addr)
        watch = kv_pb2_grpc.KvServiceStub(channel).Watch(pb.WatchRequest(prefix="dc/", start_revision=start))
        assert next(watch).events[0].kv.value == b"0"
        channel.close()  # abandon the stream mid-watch
    # Writes after the watchers vanished: the node must not trip over their dead streams.
    revisions = [
        kv.Put(pb.PutRequest(key="dc/k", value=str(i).encode()), timeout=T).header.revision for i in range(50)
    ]
    last = revisions[-1]
    # Abrupt TCP-level disconnects as well (no RST_STREAM, no GOAWAY). They start at the last
    # write: 50 versions exceed history_depth, so the pruner may already have dropped `start`.
    for _ in range(3):
        channel = grpc.insecure_channel(node.client_addr)
        watch = kv_pb2_grpc.KvServiceStub(channel).Watch(pb.WatchRequest(prefix="dc/", start_revision=last))
        next(watch)
        t = threading.Thread(target=channel.close)
        t.start()
        t.join(T)
    # A new watcher still sees everything since a revision the history keeps, in order
    # (50 versions exceed history_depth: the pruner may have dropped `start` by now).
    watch = kv.Watch(pb.WatchRequest(prefix="dc/", start_revision=revisions[40]), timeout=30)
    try:
        values: list[bytes] = []
        while len(values) < 10:
            values += [e.kv.value for e in next(watch).events]
        assert values == [str(i).encode() for i in range(40, 50)]
    finally:
        watch.cancel()
    assert_intact(node, sentinel)


def test_zz_node_never_crashed_nor_logged_a_traceback(node: NodeProcess) -> None:
    assert node.is_running(), node.log_tail()
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, node.log_tail(120)
