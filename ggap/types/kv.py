"""Keys, stored values, watch events, read modes and the results of applying commands."""

from __future__ import annotations

import enum

import attrs

from ggap.types.errors import InvalidArgument


def check_key(key: object, what: str = "key", *, max_bytes: int | None = None) -> str:
    """The one rule for a key (and for a prefix or range bound that is given): a non-empty
    str that can be stored as UTF-8 (lone surrogates cannot). Returns it; InvalidArgument
    names `what` otherwise.

    `max_bytes` is the configured size limit (LimitsConfig.max_key_bytes), which only the
    request edge applies: applying a committed command must not depend on configuration.
    """
    if type(key) is not str:
        raise InvalidArgument(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidArgument(f"{what} must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} is not valid UTF-8: {exc.reason}") from None
    if max_bytes is not None and size > max_bytes:
        raise InvalidArgument(f"{what} is {size} bytes, over the limit of {max_bytes}")
    return key


@attrs.frozen(slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    expires_at_ms: int = 0
    # True only for tombstones (as returned by History and in watch events).
    deleted: bool = False


class ReadMode(enum.Enum):
    """How fresh a read must be. The values are the config file's spelling
    (`reads.default_mode`); the protobuf enum is converted at the request edge."""

    LINEARIZABLE = "linearizable"  # confirmed by the leader (ReadIndex), then read locally
    SEQUENTIAL = "sequential"  # this node's applied state; min_revision gives read-your-writes
    EVENTUAL = "eventual"  # this node's applied state, however far behind


class EventType(enum.IntEnum):
    PUT = 1
    DELETE = 2


@attrs.frozen(slots=True)
class Event:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None
    expired: bool = False


@attrs.frozen(slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    more: bool
    count: int


@attrs.frozen(slots=True)
class PutResult:
    revision: int
    prev_kv: KeyValue | None


@attrs.frozen(slots=True)
class DeleteResult:
    revision: int
    deleted: bool
    prev_kv: KeyValue | None


@attrs.frozen(slots=True)
class GetResult:
    kv: KeyValue | None


TxnOpResult = PutResult | DeleteResult | GetResult | RangeResult


@attrs.frozen(slots=True)
class TxnResult:
    revision: int
    succeeded: bool
    responses: tuple[TxnOpResult, ...]


@attrs.frozen(slots=True)
class CompactResult:
    revision: int


@attrs.frozen(slots=True)
class ExpireResult:
    revision: int
    expired: tuple[str, ...]


@attrs.frozen(slots=True)
class PruneResult:
    revision: int
    removed: int  # versions deleted


@attrs.frozen(slots=True)
class NoopResult:
    revision: int


@attrs.frozen(slots=True)
class SessionResult:
    """OpenSession: the new session; CloseSession: whether it existed; SessionClock: the
    sessions that expired."""

    revision: int
    session: int = 0
    closed: bool = False
    expired: tuple[int, ...] = ()
    evicted: tuple[int, ...] = ()  # OpenSession: sessions dropped to make room


ApplyResult = (
    PutResult
    | DeleteResult
    | TxnResult
    | CompactResult
    | ExpireResult
    | PruneResult
    | NoopResult
    | SessionResult
)
