"""The one place protobuf messages become commands and results become protobuf."""

from __future__ import annotations

from collections.abc import Iterable

from ggap.config.model import LimitsConfig
from ggap.pb import kv_pb2 as pb
from ggap.types import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    Event,
    EventType,
    GetResult,
    InvalidArgument,
    KeyValue,
    MemberProgress,
    Membership,
    OutOfRange,
    Put,
    PutResult,
    RangeResult,
    ReadMode,
    Txn,
    TxnGet,
    TxnOp,
    TxnOpResult,
    TxnRange,
    TxnResult,
    check_key,
)

READ_MODES: dict[int, ReadMode] = {
    pb.READ_MODE_LINEARIZABLE: ReadMode.LINEARIZABLE,
    pb.READ_MODE_SEQUENTIAL: ReadMode.SEQUENTIAL,
    pb.READ_MODE_EVENTUAL: ReadMode.EVENTUAL,
}
_EVENT_TYPES = {EventType.PUT: pb.EVENT_TYPE_PUT, EventType.DELETE: pb.EVENT_TYPE_DELETE}


# -- requests -> validated values ----------------------------------------------------------


def check_value(value: bytes, limits: LimitsConfig) -> None:
    if len(value) > limits.max_value_bytes:
        raise InvalidArgument(f"value is {len(value)} bytes, over the limit of {limits.max_value_bytes}")


def read_mode(value: int, default: ReadMode) -> ReadMode:
    """The request's read mode; READ_MODE_UNSPECIFIED is the configured default."""
    if value == pb.READ_MODE_UNSPECIFIED:
        return default
    try:
        return READ_MODES[value]
    except KeyError:
        raise InvalidArgument(f"unknown read_mode {value}") from None


def quorum_all(value: int) -> bool:
    if value in (pb.WRITE_QUORUM_UNSPECIFIED, pb.WRITE_QUORUM_MAJORITY):
        return False
    if value == pb.WRITE_QUORUM_ALL:
        return True
    raise InvalidArgument(f"unknown quorum {value}")


# Revisions and timestamps are signed 64-bit in the log codec and in SQLite; protobuf's
# uint64 fields can carry more (found by tests/fuzz: a Txn read at revision 2**64-1, or a
# TTL that pushed the expiry past 2**63, failed in the codec instead of being refused).
MAX_I64 = 2**63 - 1


def revision(value: int, name: str = "revision") -> int:
    """A requested revision: above 2**63-1 it is above any revision the store can reach."""
    if value > MAX_I64:
        raise OutOfRange(f"{name} {value} is above the current revision")
    return value


def non_negative(value: int, name: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{name} must not be negative (got {value})")
    return value


def put_command(req: pb.PutRequest, limits: LimitsConfig, now_ms: int, max_ttl_ms: int) -> Put:
    check_key(req.key, max_bytes=limits.max_key_bytes)
    check_value(req.value, limits)
    quorum_all(req.quorum)
    ttl = non_negative(req.ttl_ms, "ttl_ms")
    if max_ttl_ms and ttl > max_ttl_ms:
        raise InvalidArgument(f"ttl_ms {ttl} is over the limit of {max_ttl_ms}")
    if ttl > MAX_I64 - now_ms:
        raise InvalidArgument(f"ttl_ms {ttl} puts the expiry past the largest time the store can hold")
    return Put(key=req.key, value=bytes(req.value), expires_at_ms=now_ms + ttl if ttl else 0)


def delete_command(req: pb.DeleteRequest, limits: LimitsConfig) -> Delete:
    check_key(req.key, max_bytes=limits.max_key_bytes)
    quorum_all(req.quorum)
    return Delete(key=req.key)


def range_bounds(prefix: str, start: str, end: str, limits: LimitsConfig) -> None:
    if prefix:
        if start or end:
            raise InvalidArgument("prefix cannot be combined with start/end")
        check_key(prefix, "prefix", max_bytes=limits.max_key_bytes)
        return
    if start:
        check_key(start, "start", max_bytes=limits.max_key_bytes)
    if end:
        check_key(end, "end", max_bytes=limits.max_key_bytes)
        if end.encode("utf-8", "surrogatepass") <= start.encode("utf-8", "surrogatepass"):
            raise InvalidArgument("end must be greater than start")


def txn_get(req: pb.GetRequest, limits: LimitsConfig) -> TxnGet:
    check_key(req.key, max_bytes=limits.max_key_bytes)
    read_mode(req.read_mode, ReadMode.LINEARIZABLE)
    return TxnGet(key=req.key, revision=revision(req.revision))


def txn_range(req: pb.RangeRequest, limits: LimitsConfig) -> TxnRange:
    range_bounds(req.prefix, req.start, req.end, limits)
    read_mode(req.read_mode, ReadMode.LINEARIZABLE)
    return TxnRange(
        prefix=req.prefix,
        start=req.start,
        end=req.end,
        limit=non_negative(req.limit, "limit"),
        revision=revision(req.revision),
        keys_only=req.keys_only,
    )


def _txn_ops(
    ops: Iterable[pb.TxnOp], limits: LimitsConfig, now_ms: int, max_ttl_ms: int
) -> tuple[TxnOp, ...]:
    out: list[TxnOp] = []
    written: set[str] = set()
    for op in ops:
        kind = op.WhichOneof("op")
        item: TxnOp
        if kind == "put":
            item = put_command(op.put, limits, now_ms, max_ttl_ms)
        elif kind == "delete":
            item = delete_command(op.delete, limits)
        elif kind == "get":
            item = txn_get(op.get, limits)
        elif kind == "range":
            item = txn_range(op.range, limits)
        else:
            raise InvalidArgument("txn op has no operation set")
        if isinstance(item, (Put, Delete)):
            if item.key in written:
                raise InvalidArgument(f"duplicate key {item.key!r} written twice in one txn branch")
            written.add(item.key)
        out.append(item)
    return tuple(out)


def _compare(c: pb.Compare, limits: LimitsConfig) -> Compare:
    check_key(c.key, "compare key", max_bytes=limits.max_key_bytes)
    try:
        target = CompareTarget(c.target)
    except ValueError:
        raise InvalidArgument(f"unknown compare target {c.target}") from None
    try:
        op = CompareOp(c.op)
    except ValueError:
        raise InvalidArgument(f"unknown compare op {c.op}") from None
    if target is CompareTarget.EXISTS and c.number not in (0, 1):
        raise InvalidArgument("EXISTS compares against number 1 (exists) or 0 (missing)")
    if target is CompareTarget.VALUE:
        check_value(c.value, limits)
    return Compare(key=c.key, target=target, op=op, value=bytes(c.value), number=c.number)


def txn_command(req: pb.TxnRequest, limits: LimitsConfig, now_ms: int, max_ttl_ms: int) -> Txn:
    quorum_all(req.quorum)
    total = len(req.compare) + len(req.success) + len(req.failure)
    if total > limits.max_txn_ops:
        raise InvalidArgument(f"txn has {total} compares and ops, over the limit of {limits.max_txn_ops}")
    return Txn(
        compare=tuple(_compare(c, limits) for c in req.compare),
        success=_txn_ops(req.success, limits, now_ms, max_ttl_ms),
        failure=_txn_ops(req.failure, limits, now_ms, max_ttl_ms),
    )


# -- results -> protobuf -------------------------------------------------------------------


def kv_pb(kv: KeyValue, keys_only: bool = False) -> pb.KeyValue:
    return pb.KeyValue(
        key=kv.key,
        value=b"" if keys_only else kv.value,
        create_revision=kv.create_revision,
        mod_revision=kv.mod_revision,
        version=kv.version,
        expires_at_ms=kv.expires_at_ms,
        deleted=kv.deleted,
    )


def event_pb(ev: Event, with_prev: bool) -> pb.Event:
    out = pb.Event(type=_EVENT_TYPES[ev.type], kv=kv_pb(ev.kv), expired=ev.expired)
    if with_prev and ev.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(ev.prev_kv))
    return out


def range_pb(res: RangeResult, header: pb.ResponseHeader, keys_only: bool = False) -> pb.RangeResponse:
    return pb.RangeResponse(
        header=header, kvs=[kv_pb(kv, keys_only) for kv in res.kvs], more=res.more, count=res.count
    )


def get_pb(kv: KeyValue | None, header: pb.ResponseHeader) -> pb.GetResponse:
    if kv is None:
        return pb.GetResponse(header=header, found=False)
    return pb.GetResponse(header=header, found=True, kv=kv_pb(kv))


def put_pb(res: PutResult, header: pb.ResponseHeader, want_prev: bool) -> pb.PutResponse:
    out = pb.PutResponse(header=header)
    if want_prev and res.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(res.prev_kv))
    return out


def delete_pb(res: DeleteResult, header: pb.ResponseHeader, want_prev: bool) -> pb.DeleteResponse:
    out = pb.DeleteResponse(header=header, deleted=res.deleted)
    if want_prev and res.prev_kv is not None:
        out.prev_kv.CopyFrom(kv_pb(res.prev_kv))
    return out


def txn_op_pb(req_op: pb.TxnOp, res: TxnOpResult, header: pb.ResponseHeader) -> pb.TxnOpResponse:
    if isinstance(res, PutResult):
        return pb.TxnOpResponse(put=put_pb(res, header, req_op.put.prev_kv))
    if isinstance(res, DeleteResult):
        return pb.TxnOpResponse(delete=delete_pb(res, header, req_op.delete.prev_kv))
    if isinstance(res, GetResult):
        return pb.TxnOpResponse(get=get_pb(res.kv, header))
    return pb.TxnOpResponse(range=range_pb(res, header, req_op.range.keys_only))


def txn_pb(res: TxnResult, req: pb.TxnRequest, header: pb.ResponseHeader) -> pb.TxnResponse:
    ops = req.success if res.succeeded else req.failure
    return pb.TxnResponse(
        header=header,
        succeeded=res.succeeded,
        responses=[txn_op_pb(op, r, header) for op, r in zip(ops, res.responses, strict=True)],
    )


# -- membership ----------------------------------------------------------------------------


def members_pb(membership: Membership) -> list[pb.Member]:
    """Every member, voters and learners, in id order (Membership keeps them sorted)."""
    return [
        pb.Member(id=m.id, client_addr=m.client_addr, cluster_addr=m.cluster_addr, learner=m.learner)
        for m in membership.members
    ]


def member_status_pb(progress: MemberProgress, *, auto_promote: bool) -> pb.MemberStatus:
    return pb.MemberStatus(
        id=progress.id,
        learner=progress.learner,
        match_index=progress.match_index,
        applied_index=progress.applied_index,
        recent_active=progress.recent_active,
        auto_promote=auto_promote,
    )
