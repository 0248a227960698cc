"""Stored values, watch events and the results of applying commands."""

from __future__ import annotations

import enum

import attrs


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
class NoopResult:
    revision: int


ApplyResult = PutResult | DeleteResult | TxnResult | CompactResult | ExpireResult | NoopResult
