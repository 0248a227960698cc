"""The Txn builder (`Compare`, `Op`) and the conversion of responses into ggap's own types
(`KeyValue`, `Event`), shared by both client faces."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ggap.pb import kv_pb2 as pb
from ggap.types import Event, EventType, KeyValue

Value = bytes | str


def as_bytes(value: Value) -> bytes:
    """Values are bytes; a str is taken as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"a value must be bytes or str, got {type(value).__name__}")


def kv_from_pb(kv: pb.KeyValue) -> KeyValue:
    return KeyValue(
        key=kv.key,
        value=kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        expires_at_ms=kv.expires_at_ms,
        deleted=kv.deleted,
    )


def event_from_pb(ev: pb.Event) -> Event:
    kind = EventType.PUT if ev.type == pb.EVENT_TYPE_PUT else EventType.DELETE
    prev = kv_from_pb(ev.prev_kv) if ev.HasField("prev_kv") else None
    return Event(type=kind, kv=kv_from_pb(ev.kv), prev_kv=prev, expired=ev.expired)


def prefix_end(prefix: str) -> str:
    """The smallest key after every key starting with `prefix` ("" = no end)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:
            nxt = 0xE000  # surrogates are not keys
        if nxt <= 0x10FFFF:
            return "".join(chars) + chr(nxt)
    return ""


# --- Txn builder ----------------------------------------------------------------------


@attrs.frozen
class _Target:
    key: str
    target: pb.CompareTarget

    def _cmp(self, op: pb.CompareOp, other: object) -> pb.Compare:
        if self.target == pb.COMPARE_TARGET_VALUE:
            if not isinstance(other, (bytes, str)):
                raise TypeError(f"compare a value with bytes or str, got {type(other).__name__}")
            return pb.Compare(key=self.key, target=self.target, op=op, value=as_bytes(other))
        if not isinstance(other, int) or isinstance(other, bool):
            raise TypeError(f"compare a version or revision with an int, got {type(other).__name__}")
        return pb.Compare(key=self.key, target=self.target, op=op, number=other)

    def __eq__(self, other: object) -> pb.Compare:  # type: ignore[override]
        return self._cmp(pb.COMPARE_OP_EQUAL, other)

    def __ne__(self, other: object) -> pb.Compare:  # type: ignore[override]
        return self._cmp(pb.COMPARE_OP_NOT_EQUAL, other)

    def __gt__(self, other: object) -> pb.Compare:
        return self._cmp(pb.COMPARE_OP_GREATER, other)

    def __lt__(self, other: object) -> pb.Compare:
        return self._cmp(pb.COMPARE_OP_LESS, other)

    __hash__ = None  # type: ignore[assignment]


class Compare:
    """`Compare.value(k) == v`, `Compare.version(k) == n` (0: the key does not exist),
    `Compare.create_revision(k) < r`, `Compare.mod_revision(k) < r`, `Compare.exists(k)`."""

    @staticmethod
    def value(key: str) -> _Target:
        return _Target(key, pb.COMPARE_TARGET_VALUE)

    @staticmethod
    def version(key: str) -> _Target:
        return _Target(key, pb.COMPARE_TARGET_VERSION)

    @staticmethod
    def create_revision(key: str) -> _Target:
        return _Target(key, pb.COMPARE_TARGET_CREATE_REVISION)

    @staticmethod
    def mod_revision(key: str) -> _Target:
        return _Target(key, pb.COMPARE_TARGET_MOD_REVISION)

    @staticmethod
    def exists(key: str, exists: bool = True) -> pb.Compare:
        return pb.Compare(
            key=key, target=pb.COMPARE_TARGET_EXISTS, op=pb.COMPARE_OP_EQUAL, number=1 if exists else 0
        )


class Op:
    """The operations of a Txn branch."""

    @staticmethod
    def put(key: str, value: Value, *, ttl: float | None = None, prev_kv: bool = False) -> pb.TxnOp:
        ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        return pb.TxnOp(put=pb.PutRequest(key=key, value=as_bytes(value), ttl_ms=ttl_ms, prev_kv=prev_kv))

    @staticmethod
    def get(key: str, *, revision: int = 0) -> pb.TxnOp:
        return pb.TxnOp(get=pb.GetRequest(key=key, revision=revision))

    @staticmethod
    def delete(key: str, *, prev_kv: bool = False) -> pb.TxnOp:
        return pb.TxnOp(delete=pb.DeleteRequest(key=key, prev_kv=prev_kv))

    @staticmethod
    def range(prefix: str = "", *, start: str = "", end: str = "", limit: int = 0) -> pb.TxnOp:
        return pb.TxnOp(range=pb.RangeRequest(prefix=prefix, start=start, end=end, limit=limit))


OpResult = int | KeyValue | None | bool | list[KeyValue]


@attrs.frozen
class TxnResult:
    """`succeeded`: which branch ran; `results`: one per op of that branch (a put: its
    revision; a get: the KeyValue or None; a delete: whether the key existed; a range: the
    KeyValues); `revision`: the store revision after it."""

    succeeded: bool
    results: tuple[OpResult, ...]
    revision: int


def txn_result(resp: pb.TxnResponse) -> TxnResult:
    out: list[OpResult] = []
    for r in resp.responses:
        which = r.WhichOneof("response")
        if which == "put":
            out.append(int(r.put.header.revision or resp.header.revision))
        elif which == "get":
            out.append(kv_from_pb(r.get.kv) if r.get.found else None)
        elif which == "delete":
            out.append(bool(r.delete.deleted))
        elif which == "range":
            out.append([kv_from_pb(kv) for kv in r.range.kvs])
        else:
            out.append(None)
    return TxnResult(succeeded=resp.succeeded, results=tuple(out), revision=int(resp.header.revision))


def txn_request(
    compare: Sequence[pb.Compare],
    success: Sequence[pb.TxnOp],
    failure: Sequence[pb.TxnOp],
    quorum: pb.WriteQuorum,
) -> pb.TxnRequest:
    for c in compare:
        if not isinstance(c, pb.Compare):
            raise TypeError(
                f"compare items are built with Compare (e.g. Compare.value(k) == v), got {type(c).__name__}"
            )
    for op in (*success, *failure):
        if not isinstance(op, pb.TxnOp):
            raise TypeError(f"txn ops are built with Op (e.g. Op.put(k, v)), got {type(op).__name__}")
    return pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure), quorum=quorum)
