"""Commands: what is proposed to the log and applied, in order, by every replica.

Commands are deterministic: anything that depends on a clock (TTL) is resolved to
an absolute value by the proposer before the command enters the log, so applying
the same log always yields the same state and revisions.
"""

from __future__ import annotations

import enum

import attrs


class CompareTarget(enum.IntEnum):
    VALUE = 1
    VERSION = 2
    CREATE_REVISION = 3
    MOD_REVISION = 4
    EXISTS = 5


class CompareOp(enum.IntEnum):
    EQUAL = 1
    NOT_EQUAL = 2
    GREATER = 3
    LESS = 4


@attrs.frozen(slots=True)
class Put:
    key: str
    value: bytes
    # Absolute expiry in wall-clock milliseconds, decided by the proposer; 0 = no TTL.
    expires_at_ms: int = 0


@attrs.frozen(slots=True)
class Delete:
    key: str


@attrs.frozen(slots=True)
class TxnGet:
    """A point read inside a Txn; sees the state before the Txn's writes."""

    key: str
    revision: int = 0


@attrs.frozen(slots=True)
class TxnRange:
    """A range read inside a Txn. Either prefix, or [start, end) with end "" unbounded."""

    prefix: str = ""
    start: str = ""
    end: str = ""
    limit: int = 0
    revision: int = 0
    keys_only: bool = False


@attrs.frozen(slots=True)
class Compare:
    key: str
    target: CompareTarget
    op: CompareOp
    value: bytes = b""
    number: int = 0


WriteOp = Put | Delete
ReadOp = TxnGet | TxnRange
TxnOp = Put | Delete | TxnGet | TxnRange


@attrs.frozen(slots=True)
class Txn:
    compare: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


@attrs.frozen(slots=True)
class Compact:
    revision: int


@attrs.frozen(slots=True)
class Expire:
    """Delete keys whose TTL ran out. Each item is (key, mod_revision seen by the proposer):
    a key re-written since then is left alone, so a refresh never races an expiry."""

    items: tuple[tuple[str, int], ...]


@attrs.frozen(slots=True)
class Prune:
    """Drop versions of `keys` older than each key's newest `depth`, decided by the leader
    and applied by every replica, so all of them refuse the same historical reads."""

    depth: int
    keys: tuple[str, ...]


@attrs.frozen(slots=True)
class Noop:
    """Appended by a new leader (Raft §8) and for barriers; changes no revision."""


@attrs.frozen(slots=True)
class OpenSession:
    """Start a client session; its id is this entry's log index (unique, and the same on
    every replica). The bounds travel in the command, not in each replica's config, so
    every replica evicts and refuses the same way."""

    max_sessions: int  # the table's bound: opening one more evicts the least recently used
    max_unacked: int  # the session's bound on results kept for writes not yet acknowledged


@attrs.frozen(slots=True)
class CloseSession:
    session: int


@attrs.frozen(slots=True)
class SessionClock:
    """The leader's clock, entered into the log: sessions idle for more than
    `idle_timeout_ms` of log time (the clock values in log order) expire when it applies.
    No replica ever reads its own clock for this."""

    now_ms: int
    idle_timeout_ms: int


SessionOp = Put | Delete | Txn | Compact


@attrs.frozen(slots=True)
class SessionWrite:
    """A write of a session: applied once per (session, seq), however often it is retried.
    `lowest_unacked` is the client's lowest sequence number still without an answer: the
    results of all lower ones may be forgotten."""

    session: int
    seq: int
    lowest_unacked: int
    command: SessionOp


Command = (
    Put
    | Delete
    | Txn
    | Compact
    | Expire
    | Prune
    | Noop
    | OpenSession
    | CloseSession
    | SessionClock
    | SessionWrite
)
