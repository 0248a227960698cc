"""Membership changes <-> packable values: the payload of an ENTRY_KIND_CONF_CHANGE entry.

A conf change becomes ``(CONF_CHANGE_FORMAT_VERSION, type, node_id, context)``, packed with
the same `pack`/`unpack` as commands. This mapping is pure Python under both codec
implementations, like ggap.codec.commands: a conf change is a rare entry, nowhere near a
hot path, and only the byte layer below it (pack/unpack) is duplicated in Cython.

Like the entry kind bytes, the change types are plain ints here because the codec knows no
Raft: ggap.consensus.raft.types.ConfChangeType is the one enum, its values are these
(checked by tests/unit/test_codec.py), and ggap.consensus.raft.membership converts.

Decoding trusts nothing: a committed conf change that decoded to a subtly different change
would be applied by every replica, so every shape, type and value is checked and any
mismatch is a CodecError.
"""

from __future__ import annotations

from ggap.types.errors import CodecError

CONF_CHANGE_FORMAT_VERSION = 1

CONF_CHANGE_ADD_LEARNER = 1
CONF_CHANGE_PROMOTE = 2
CONF_CHANGE_REMOVE = 3

_TYPES = frozenset({CONF_CHANGE_ADD_LEARNER, CONF_CHANGE_PROMOTE, CONF_CHANGE_REMOVE})
_I64_MAX = (1 << 63) - 1


def _int(v: object, what: str) -> int:
    # bool is an int subclass with a tag of its own: refuse it so the shape stays exact.
    if not isinstance(v, int) or isinstance(v, bool):
        raise CodecError(f"{what} must be int, got {type(v).__name__}")
    return int(v)


def _check(change_type: object, node_id: object, context: object) -> tuple[int, int, bytes]:
    t = _int(change_type, "conf change type")
    if t not in _TYPES:
        raise CodecError(f"unknown conf change type {t}")
    n = _int(node_id, "conf change node id")
    if n < 1 or n > _I64_MAX:
        raise CodecError(f"conf change node id {n} out of range 1..2**63-1")
    if type(context) is not bytes:
        raise CodecError(f"conf change context must be bytes, got {type(context).__name__}")
    return t, n, context


def conf_change_to_value(change_type: int, node_id: int, context: bytes = b"") -> tuple[object, ...]:
    t, n, ctx = _check(change_type, node_id, context)
    return (CONF_CHANGE_FORMAT_VERSION, t, n, ctx)


def conf_change_from_value(value: object) -> tuple[int, int, bytes]:
    """(type, node_id, context) of a value conf_change_to_value produced; CodecError otherwise."""
    if not isinstance(value, tuple):
        raise CodecError(f"conf change must be a sequence, got {type(value).__name__}")
    if len(value) != 4:
        raise CodecError(f"conf change must have 4 fields, got {len(value)}")
    version, t, n, ctx = value
    if type(version) is not int or version != CONF_CHANGE_FORMAT_VERSION:
        raise CodecError(f"unknown conf change format version {version!r}")
    return _check(t, n, ctx)


MEMBER_CONTEXT_VERSION = 1


def member_context_to_value(client_addr: str, cluster_addr: str) -> tuple[object, ...]:
    """The driver's context of a membership change: where to reach the member."""
    for what, v in (("client address", client_addr), ("cluster address", cluster_addr)):
        if type(v) is not str:
            raise CodecError(f"member {what} must be str, got {type(v).__name__}")
    return (MEMBER_CONTEXT_VERSION, client_addr, cluster_addr)


def member_context_from_value(value: object) -> tuple[str, str]:
    if not isinstance(value, tuple) or len(value) != 3:
        raise CodecError("member context must be a 3-field sequence")
    version, client_addr, cluster_addr = value
    if type(version) is not int or version != MEMBER_CONTEXT_VERSION:
        raise CodecError(f"unknown member context version {version!r}")
    if type(client_addr) is not str or type(cluster_addr) is not str:
        raise CodecError("member addresses must be str")
    return client_addr, cluster_addr
