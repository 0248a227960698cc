"""Apply results <-> packable values: what a session keeps for a write until the client
acknowledges it, so a retry is answered with the first application's result.

Saved in kv.db (and so in snapshots): decoding trusts nothing, as for commands. An error
result keeps its class and message; a class this version does not know decodes as
Internal, never as success.
"""

from __future__ import annotations

from collections.abc import Sequence

from ggap.codec.commands import _bool, _bytes, _fail, _int, _seq, _shape, _str
from ggap.types.errors import (
    FailedPrecondition,
    GgapError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from ggap.types.kv import (
    CompactResult,
    DeleteResult,
    GetResult,
    KeyValue,
    PutResult,
    RangeResult,
    TxnOpResult,
    TxnResult,
)

RESULT_FORMAT_VERSION = 1

TAG_PUT = 1
TAG_DELETE = 2
TAG_TXN = 3
TAG_COMPACT = 4
TAG_GET = 5
TAG_RANGE = 6
TAG_ERROR = 7

SessionOutcome = PutResult | DeleteResult | TxnResult | CompactResult | GgapError

# The errors a write can end with at apply (the others never reach a session's table).
_ERRORS: dict[str, type[GgapError]] = {
    cls.__name__: cls
    for cls in (InvalidArgument, OutOfRange, FailedPrecondition, ResourceExhausted, NotFound)
}


def _kv_to_value(kv: KeyValue | None) -> tuple[object, ...]:
    if kv is None:
        return ()
    return (
        _str(kv.key, "KeyValue.key"),
        _bytes(kv.value, "KeyValue.value"),
        _int(kv.create_revision, "KeyValue.create_revision"),
        _int(kv.mod_revision, "KeyValue.mod_revision"),
        _int(kv.version, "KeyValue.version"),
        _int(kv.expires_at_ms, "KeyValue.expires_at_ms"),
        _bool(kv.deleted, "KeyValue.deleted"),
    )


def _kv_from_value(v: object) -> KeyValue | None:
    t = _seq(v, "KeyValue")
    if not t:
        return None
    key, value, create, mod, version, expires, deleted = _shape(t, 7, "KeyValue")
    return KeyValue(
        key=_str(key, "KeyValue.key"),
        value=_bytes(value, "KeyValue.value"),
        create_revision=_int(create, "KeyValue.create_revision"),
        mod_revision=_int(mod, "KeyValue.mod_revision"),
        version=_int(version, "KeyValue.version"),
        expires_at_ms=_int(expires, "KeyValue.expires_at_ms"),
        deleted=_bool(deleted, "KeyValue.deleted"),
    )


def _op_result_to_value(r: object) -> tuple[object, ...]:
    if isinstance(r, PutResult):
        return (TAG_PUT, _int(r.revision, "PutResult.revision"), _kv_to_value(r.prev_kv))
    if isinstance(r, DeleteResult):
        return (
            TAG_DELETE,
            _int(r.revision, "DeleteResult.revision"),
            _bool(r.deleted, "DeleteResult.deleted"),
            _kv_to_value(r.prev_kv),
        )
    if isinstance(r, GetResult):
        return (TAG_GET, _kv_to_value(r.kv))
    if isinstance(r, RangeResult):
        return (
            TAG_RANGE,
            tuple(_kv_to_value(kv) for kv in r.kvs),
            _bool(r.more, "RangeResult.more"),
            _int(r.count, "RangeResult.count"),
        )
    _fail(f"not a Txn op result: {type(r).__name__}")


def _some_kv(v: object, what: str) -> KeyValue:
    kv = _kv_from_value(v)
    if kv is None:
        _fail(f"{what} must be a KeyValue")
    return kv


def _op_result_from_value(v: object) -> TxnOpResult:
    t = _seq(v, "result")
    if not t:
        _fail("result is empty")
    tag = _int(t[0], "result tag")
    f: Sequence[object] = t[1:]
    if tag == TAG_PUT:
        rev, prev = _shape(f, 2, "PutResult")
        return PutResult(revision=_int(rev, "PutResult.revision"), prev_kv=_kv_from_value(prev))
    if tag == TAG_DELETE:
        rev, deleted, prev = _shape(f, 3, "DeleteResult")
        return DeleteResult(
            revision=_int(rev, "DeleteResult.revision"),
            deleted=_bool(deleted, "DeleteResult.deleted"),
            prev_kv=_kv_from_value(prev),
        )
    if tag == TAG_GET:
        (kv,) = _shape(f, 1, "GetResult")
        return GetResult(kv=_kv_from_value(kv))
    if tag == TAG_RANGE:
        kvs, more, count = _shape(f, 3, "RangeResult")
        return RangeResult(
            kvs=tuple(_some_kv(kv, "RangeResult item") for kv in _seq(kvs, "RangeResult.kvs")),
            more=_bool(more, "RangeResult.more"),
            count=_int(count, "RangeResult.count"),
        )
    _fail(f"unknown Txn op result tag {tag}")


def outcome_to_value(outcome: SessionOutcome) -> tuple[object, ...]:
    """The packable tuple for a write's outcome; CodecError for anything else."""
    v = RESULT_FORMAT_VERSION
    if isinstance(outcome, GgapError):
        compact = current = 0
        if isinstance(outcome, OutOfRange):
            compact, current = outcome.compact_revision, outcome.current_revision
        return (
            v,
            TAG_ERROR,
            type(outcome).__name__,
            _str(outcome.message, "error message"),
            _int(compact, "OutOfRange.compact_revision"),
            _int(current, "OutOfRange.current_revision"),
        )
    if isinstance(outcome, TxnResult):
        return (
            v,
            TAG_TXN,
            _int(outcome.revision, "TxnResult.revision"),
            _bool(outcome.succeeded, "TxnResult.succeeded"),
            tuple(_op_result_to_value(r) for r in outcome.responses),
        )
    if isinstance(outcome, CompactResult):
        return (v, TAG_COMPACT, _int(outcome.revision, "CompactResult.revision"))
    if isinstance(outcome, (PutResult, DeleteResult)):
        return (v, *_op_result_to_value(outcome))
    _fail(f"not a session outcome: {type(outcome).__name__}")


def outcome_from_value(value: object) -> SessionOutcome:
    t = _seq(value, "outcome")
    if len(t) < 2:
        _fail(f"outcome needs a version and a tag, got {len(t)} fields")
    version = _int(t[0], "outcome format version")
    if version != RESULT_FORMAT_VERSION:
        _fail(f"unknown outcome format version {version}")
    tag = _int(t[1], "outcome tag")
    f = t[2:]
    if tag == TAG_ERROR:
        name, message, compact, current = _shape(f, 4, "error outcome")
        cls = _ERRORS.get(_str(name, "error class"))
        text = _str(message, "error message")
        if cls is OutOfRange:
            return OutOfRange(
                text,
                compact_revision=_int(compact, "OutOfRange.compact_revision"),
                current_revision=_int(current, "OutOfRange.current_revision"),
            )
        if cls is None:
            return Internal(f"{name}: {text}")
        return cls(text)
    if tag == TAG_TXN:
        rev, succeeded, responses = _shape(f, 3, "TxnResult")
        return TxnResult(
            revision=_int(rev, "TxnResult.revision"),
            succeeded=_bool(succeeded, "TxnResult.succeeded"),
            responses=tuple(_op_result_from_value(r) for r in _seq(responses, "TxnResult.responses")),
        )
    if tag == TAG_COMPACT:
        (rev,) = _shape(f, 1, "CompactResult")
        return CompactResult(revision=_int(rev, "CompactResult.revision"))
    if tag in (TAG_PUT, TAG_DELETE):
        r = _op_result_from_value(t[1:])
        assert isinstance(r, (PutResult, DeleteResult))
        return r
    _fail(f"unknown outcome tag {tag}")
