"""Commands <-> packable values: the one place that knows how commands look in the log.

Pure Python and shared by both codec implementations (only the byte layer below it,
pack/unpack, is duplicated in Cython). A command becomes the tuple
``(COMMAND_FORMAT_VERSION, tag, *fields)``; Txn ops nest as ``(tag, *fields)`` and
Compares as plain field tuples. Field order is the wire format: append new optional
fields at the end and bump COMMAND_FORMAT_VERSION for anything else.

Decoding trusts nothing: every shape, type and enum value is checked, and any mismatch is a
CodecError (never a TypeError/IndexError), because a log entry that decodes to a subtly
wrong command would be applied by every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from ggap.types.commands import (
    CloseSession,
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Expire,
    Noop,
    OpenSession,
    Prune,
    Put,
    SessionClock,
    SessionWrite,
    Txn,
    TxnGet,
    TxnOp,
    TxnRange,
)
from ggap.types.errors import CodecError

COMMAND_FORMAT_VERSION = 1

# One tag space for commands and Txn ops, so a tag never means two things.
TAG_PUT = 1
TAG_DELETE = 2
TAG_TXN = 3
TAG_COMPACT = 4
TAG_EXPIRE = 5
TAG_NOOP = 6
TAG_TXN_GET = 7
TAG_TXN_RANGE = 8
TAG_PRUNE = 9
TAG_OPEN_SESSION = 10
TAG_CLOSE_SESSION = 11
TAG_SESSION_CLOCK = 12
TAG_SESSION_WRITE = 13
# The commands a SessionWrite may carry (a session never wraps another session command).
_SESSION_OP_TAGS = (TAG_PUT, TAG_DELETE, TAG_TXN, TAG_COMPACT)

_TARGETS = {t.value: t for t in CompareTarget}
_OPS = {o.value: o for o in CompareOp}


def _fail(msg: str) -> NoReturn:
    raise CodecError(msg)


# --- field checks (used both ways, so encode never writes what decode would refuse) ---


def _str(v: object, what: str) -> str:
    if type(v) is not str:
        _fail(f"{what} must be str, got {type(v).__name__}")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        _fail(f"{what} must be bytes, got {type(v).__name__}")
    return v


def _int(v: object, what: str) -> int:
    # bool is an int subclass but has its own tag; refuse it so the shape stays exact.
    if not isinstance(v, int) or isinstance(v, bool):
        _fail(f"{what} must be int, got {type(v).__name__}")
    return int(v)


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        _fail(f"{what} must be bool, got {type(v).__name__}")
    return v


def _seq(v: object, what: str) -> tuple[object, ...]:
    if not isinstance(v, (tuple, list)):
        _fail(f"{what} must be a sequence, got {type(v).__name__}")
    return tuple(v)


def _shape(v: object, n: int, what: str) -> tuple[object, ...]:
    t = _seq(v, what)
    if len(t) != n:
        _fail(f"{what} must have {n} fields, got {len(t)}")
    return t


# --- encode ---------------------------------------------------------------------------


def _compare_to_value(c: object) -> tuple[object, ...]:
    if not isinstance(c, Compare):
        _fail(f"Txn compare must be Compare, got {type(c).__name__}")
    target = _int(c.target, "Compare.target")
    op = _int(c.op, "Compare.op")
    if target not in _TARGETS:
        _fail(f"unknown compare target {target}")
    if op not in _OPS:
        _fail(f"unknown compare op {op}")
    return (
        _str(c.key, "Compare.key"),
        target,
        op,
        _bytes(c.value, "Compare.value"),
        _int(c.number, "Compare.number"),
    )


def _put_fields(p: Put) -> tuple[object, ...]:
    return (_str(p.key, "Put.key"), _bytes(p.value, "Put.value"), _int(p.expires_at_ms, "Put.expires_at_ms"))


def _op_to_value(op: object) -> tuple[object, ...]:
    if isinstance(op, Put):
        return (TAG_PUT, *_put_fields(op))
    if isinstance(op, Delete):
        return (TAG_DELETE, _str(op.key, "Delete.key"))
    if isinstance(op, TxnGet):
        return (TAG_TXN_GET, _str(op.key, "TxnGet.key"), _int(op.revision, "TxnGet.revision"))
    if isinstance(op, TxnRange):
        return (
            TAG_TXN_RANGE,
            _str(op.prefix, "TxnRange.prefix"),
            _str(op.start, "TxnRange.start"),
            _str(op.end, "TxnRange.end"),
            _int(op.limit, "TxnRange.limit"),
            _int(op.revision, "TxnRange.revision"),
            _bool(op.keys_only, "TxnRange.keys_only"),
        )
    _fail(f"not a Txn op: {type(op).__name__}")


def command_to_value(cmd: Command) -> tuple[object, ...]:
    """The packable tuple for `cmd`; CodecError for anything that is not a valid command."""
    v = COMMAND_FORMAT_VERSION
    if isinstance(cmd, Put):
        return (v, TAG_PUT, *_put_fields(cmd))
    if isinstance(cmd, Delete):
        return (v, TAG_DELETE, _str(cmd.key, "Delete.key"))
    if isinstance(cmd, Txn):
        return (
            v,
            TAG_TXN,
            tuple(_compare_to_value(c) for c in _seq(cmd.compare, "Txn.compare")),
            tuple(_op_to_value(o) for o in _seq(cmd.success, "Txn.success")),
            tuple(_op_to_value(o) for o in _seq(cmd.failure, "Txn.failure")),
        )
    if isinstance(cmd, Compact):
        return (v, TAG_COMPACT, _int(cmd.revision, "Compact.revision"))
    if isinstance(cmd, Expire):
        items = []
        for item in _seq(cmd.items, "Expire.items"):
            key, rev = _shape(item, 2, "Expire item")
            items.append((_str(key, "Expire item key"), _int(rev, "Expire item mod_revision")))
        return (v, TAG_EXPIRE, tuple(items))
    if isinstance(cmd, Prune):
        keys = tuple(_str(k, "Prune key") for k in _seq(cmd.keys, "Prune.keys"))
        return (v, TAG_PRUNE, _int(cmd.depth, "Prune.depth"), keys)
    if isinstance(cmd, Noop):
        return (v, TAG_NOOP)
    if isinstance(cmd, OpenSession):
        return (
            v,
            TAG_OPEN_SESSION,
            _int(cmd.max_sessions, "OpenSession.max_sessions"),
            _int(cmd.max_unacked, "OpenSession.max_unacked"),
        )
    if isinstance(cmd, CloseSession):
        return (v, TAG_CLOSE_SESSION, _int(cmd.session, "CloseSession.session"))
    if isinstance(cmd, SessionClock):
        return (
            v,
            TAG_SESSION_CLOCK,
            _int(cmd.now_ms, "SessionClock.now_ms"),
            _int(cmd.idle_timeout_ms, "SessionClock.idle_timeout_ms"),
        )
    if isinstance(cmd, SessionWrite):
        if not isinstance(cmd.command, (Put, Delete, Txn, Compact)):
            _fail(f"a SessionWrite cannot carry {type(cmd.command).__name__}")
        inner = command_to_value(cmd.command)
        return (
            v,
            TAG_SESSION_WRITE,
            _int(cmd.session, "SessionWrite.session"),
            _int(cmd.seq, "SessionWrite.seq"),
            _int(cmd.lowest_unacked, "SessionWrite.lowest_unacked"),
            inner,
        )
    _fail(f"not a command: {type(cmd).__name__}")


# --- decode ---------------------------------------------------------------------------


def _compare_from_value(v: object) -> Compare:
    key, target, op, value, number = _shape(v, 5, "Compare")
    t = _TARGETS.get(_int(target, "Compare.target"))
    if t is None:
        _fail(f"unknown compare target {target}")
    o = _OPS.get(_int(op, "Compare.op"))
    if o is None:
        _fail(f"unknown compare op {op}")
    return Compare(
        key=_str(key, "Compare.key"),
        target=t,
        op=o,
        value=_bytes(value, "Compare.value"),
        number=_int(number, "Compare.number"),
    )


def _put_from_fields(f: Sequence[object]) -> Put:
    if len(f) != 3:
        _fail(f"Put must have 3 fields, got {len(f)}")
    return Put(
        key=_str(f[0], "Put.key"),
        value=_bytes(f[1], "Put.value"),
        expires_at_ms=_int(f[2], "Put.expires_at_ms"),
    )


def _delete_from_fields(f: Sequence[object]) -> Delete:
    if len(f) != 1:
        _fail(f"Delete must have 1 field, got {len(f)}")
    return Delete(key=_str(f[0], "Delete.key"))


def _op_from_value(v: object) -> TxnOp:
    t = _seq(v, "Txn op")
    if not t:
        _fail("Txn op is empty")
    tag = _int(t[0], "Txn op tag")
    f = t[1:]
    if tag == TAG_PUT:
        return _put_from_fields(f)
    if tag == TAG_DELETE:
        return _delete_from_fields(f)
    if tag == TAG_TXN_GET:
        if len(f) != 2:
            _fail(f"TxnGet must have 2 fields, got {len(f)}")
        return TxnGet(key=_str(f[0], "TxnGet.key"), revision=_int(f[1], "TxnGet.revision"))
    if tag == TAG_TXN_RANGE:
        if len(f) != 6:
            _fail(f"TxnRange must have 6 fields, got {len(f)}")
        return TxnRange(
            prefix=_str(f[0], "TxnRange.prefix"),
            start=_str(f[1], "TxnRange.start"),
            end=_str(f[2], "TxnRange.end"),
            limit=_int(f[3], "TxnRange.limit"),
            revision=_int(f[4], "TxnRange.revision"),
            keys_only=_bool(f[5], "TxnRange.keys_only"),
        )
    _fail(f"unknown Txn op tag {tag}")


def command_from_value(value: object) -> Command:
    """Rebuild a command from an unpacked value; CodecError on any unexpected shape."""
    t = _seq(value, "command")
    if len(t) < 2:
        _fail(f"command needs a version and a tag, got {len(t)} fields")
    version = _int(t[0], "command format version")
    if version != COMMAND_FORMAT_VERSION:
        _fail(f"unknown command format version {version}")
    tag = _int(t[1], "command tag")
    f = t[2:]
    if tag == TAG_PUT:
        return _put_from_fields(f)
    if tag == TAG_DELETE:
        return _delete_from_fields(f)
    if tag == TAG_TXN:
        if len(f) != 3:
            _fail(f"Txn must have 3 fields, got {len(f)}")
        return Txn(
            compare=tuple(_compare_from_value(c) for c in _seq(f[0], "Txn.compare")),
            success=tuple(_op_from_value(o) for o in _seq(f[1], "Txn.success")),
            failure=tuple(_op_from_value(o) for o in _seq(f[2], "Txn.failure")),
        )
    if tag == TAG_COMPACT:
        if len(f) != 1:
            _fail(f"Compact must have 1 field, got {len(f)}")
        return Compact(revision=_int(f[0], "Compact.revision"))
    if tag == TAG_EXPIRE:
        if len(f) != 1:
            _fail(f"Expire must have 1 field, got {len(f)}")
        items = []
        for item in _seq(f[0], "Expire.items"):
            key, rev = _shape(item, 2, "Expire item")
            items.append((_str(key, "Expire item key"), _int(rev, "Expire item mod_revision")))
        return Expire(items=tuple(items))
    if tag == TAG_PRUNE:
        if len(f) != 2:
            _fail(f"Prune must have 2 fields, got {len(f)}")
        keys = tuple(_str(k, "Prune key") for k in _seq(f[1], "Prune.keys"))
        return Prune(depth=_int(f[0], "Prune.depth"), keys=keys)
    if tag == TAG_NOOP:
        if f:
            _fail(f"Noop must have 0 fields, got {len(f)}")
        return Noop()
    if tag == TAG_OPEN_SESSION:
        if len(f) != 2:
            _fail(f"OpenSession must have 2 fields, got {len(f)}")
        return OpenSession(
            max_sessions=_int(f[0], "OpenSession.max_sessions"),
            max_unacked=_int(f[1], "OpenSession.max_unacked"),
        )
    if tag == TAG_CLOSE_SESSION:
        if len(f) != 1:
            _fail(f"CloseSession must have 1 field, got {len(f)}")
        return CloseSession(session=_int(f[0], "CloseSession.session"))
    if tag == TAG_SESSION_CLOCK:
        if len(f) != 2:
            _fail(f"SessionClock must have 2 fields, got {len(f)}")
        return SessionClock(
            now_ms=_int(f[0], "SessionClock.now_ms"),
            idle_timeout_ms=_int(f[1], "SessionClock.idle_timeout_ms"),
        )
    if tag == TAG_SESSION_WRITE:
        if len(f) != 4:
            _fail(f"SessionWrite must have 4 fields, got {len(f)}")
        inner_value = _seq(f[3], "SessionWrite.command")
        if len(inner_value) < 2 or _int(inner_value[1], "SessionWrite command tag") not in _SESSION_OP_TAGS:
            _fail("a SessionWrite must carry a Put, Delete, Txn or Compact")
        inner = command_from_value(inner_value)
        assert isinstance(inner, (Put, Delete, Txn, Compact))
        return SessionWrite(
            session=_int(f[0], "SessionWrite.session"),
            seq=_int(f[1], "SessionWrite.seq"),
            lowest_unacked=_int(f[2], "SessionWrite.lowest_unacked"),
            command=inner,
        )
    _fail(f"unknown command tag {tag}")
