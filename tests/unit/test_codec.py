"""The codec, run against both implementations (ids `py` and `c`).

Golden vectors pin the wire format; Hypothesis checks round trips and that corrupt or
random input is either rejected with CodecError or decodes to something that re-encodes
to the very same bytes.
"""

from __future__ import annotations

import bisect
import os
import struct
import subprocess
import sys
import types
import typing
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ggap.codec
from ggap.codec import _pure
from ggap.codec.commands import COMMAND_FORMAT_VERSION, command_from_value, command_to_value
from ggap.codec.confchange import (
    CONF_CHANGE_FORMAT_VERSION,
    conf_change_from_value,
    conf_change_to_value,
)
from ggap.types import (
    CloseSession,
    CodecError,
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
    TxnRange,
)

try:
    import ggap._fastlog as _fast
except ImportError:  # not built: `make ext`
    _fast = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]

IMPLS = [
    pytest.param(_pure, id="py"),
    pytest.param(
        _fast,
        id="c",
        marks=pytest.mark.skipif(_fast is None, reason="ggap._fastlog is not built (run `make ext`)"),
    ),
]
impls = pytest.mark.parametrize("impl", IMPLS)

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

I64 = st.integers(-(2**63), 2**63 - 1)
U64 = st.integers(0, 2**64 - 1)

# --- strategies (also used by test_fastlog_equivalence) --------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    I64,
    st.binary(max_size=40),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.lists(inner, max_size=5).map(tuple)),
    max_leaves=25,
)

keys = st.text(max_size=12)
puts = st.builds(Put, key=keys, value=st.binary(max_size=30), expires_at_ms=I64)
deletes = st.builds(Delete, key=keys)
txn_gets = st.builds(TxnGet, key=keys, revision=I64)
txn_ranges = st.builds(
    TxnRange, prefix=keys, start=keys, end=keys, limit=I64, revision=I64, keys_only=st.booleans()
)
compares = st.builds(
    Compare,
    key=keys,
    target=st.sampled_from(CompareTarget),
    op=st.sampled_from(CompareOp),
    value=st.binary(max_size=20),
    number=I64,
)
txn_ops = st.lists(st.one_of(puts, deletes, txn_gets, txn_ranges), max_size=4).map(tuple)
txns = st.builds(Txn, compare=st.lists(compares, max_size=3).map(tuple), success=txn_ops, failure=txn_ops)
compacts = st.builds(Compact, revision=I64)
expires = st.builds(Expire, items=st.lists(st.tuples(keys, I64), max_size=4).map(tuple))
prunes = st.builds(Prune, depth=I64, keys=st.lists(keys, max_size=4).map(tuple))
commands: st.SearchStrategy[Command] = st.one_of(
    puts, deletes, txns, compacts, expires, prunes, st.just(Noop())
)


def normalize(v: object) -> object:
    """What unpack returns for v: lists become tuples."""
    if isinstance(v, (list, tuple)):
        return tuple(normalize(x) for x in v)
    return v


def encode_cmd(impl: types.ModuleType, cmd: Command) -> bytes:
    return impl.pack(command_to_value(cmd))  # type: ignore[no-any-return]


def decode_cmd(impl: types.ModuleType, data: bytes) -> Command:
    return command_from_value(impl.unpack(data))


# --- pack / unpack ---------------------------------------------------------------------

GOLDEN: list[tuple[object, bytes]] = [
    (None, b"\x00"),
    (False, b"\x01"),
    (True, b"\x02"),
    (0, b"\x03\x00"),
    (-1, b"\x03\x01"),
    (1, b"\x03\x02"),
    (63, b"\x03\x7e"),
    (64, b"\x03\x80\x01"),
    (2**63 - 1, b"\x03" + b"\xfe" + b"\xff" * 8 + b"\x01"),
    (-(2**63), b"\x03" + b"\xff" * 9 + b"\x01"),
    (b"", b"\x04\x00"),
    (b"ab", b"\x04\x02ab"),
    ("é", b"\x05\x02\xc3\xa9"),
    ([], b"\x06\x00"),
    ((1, [None, "a"]), b"\x06\x02\x03\x02\x06\x02\x00\x05\x01a"),
]


@impls
@pytest.mark.parametrize(("value", "encoded"), GOLDEN)
def test_golden_vectors(impl: Any, value: object, encoded: bytes) -> None:
    assert impl.pack(value) == encoded
    assert impl.unpack(encoded) == normalize(value)


@impls
@SETTINGS
@given(values)
def test_pack_round_trip(impl: Any, value: object) -> None:
    data = impl.pack(value)
    assert type(data) is bytes
    out = impl.unpack(data)
    assert out == normalize(value)
    # bool/int are distinct on the wire, so equality above is not fooled by True == 1.
    assert repr(out) == repr(normalize(value))


@impls
def test_unpack_accepts_bytes_like(impl: Any) -> None:
    data = impl.pack([1, b"x", "y"])
    assert impl.unpack(bytearray(data)) == (1, b"x", "y")
    assert impl.unpack(memoryview(data)) == (1, b"x", "y")


@impls
@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 2**200])
def test_pack_rejects_ints_outside_int64(impl: Any, bad: int) -> None:
    with pytest.raises(CodecError, match="64-bit"):
        impl.pack(bad)
    with pytest.raises(CodecError):
        impl.pack([1, [bad]])


@impls
@pytest.mark.parametrize("bad", [1.5, {}, {1}, bytearray(b"x"), object(), CompareTarget])
def test_pack_rejects_unsupported_types(impl: Any, bad: object) -> None:
    with pytest.raises(CodecError, match="cannot pack"):
        impl.pack(bad)


@impls
def test_pack_rejects_unencodable_str(impl: Any) -> None:
    with pytest.raises(CodecError, match="UTF-8"):
        impl.pack("a\ud800b")


@impls
def test_pack_int_subclass_packs_as_int(impl: Any) -> None:
    assert impl.pack(CompareOp.LESS) == impl.pack(4)


def nested(depth: int) -> object:
    v: object = None
    for _ in range(depth):
        v = [v]
    return v


@impls
def test_nesting_limit(impl: Any) -> None:
    ok = impl.pack(nested(_pure.MAX_DEPTH))
    assert impl.unpack(ok) == normalize(nested(_pure.MAX_DEPTH))
    with pytest.raises(CodecError, match="nesting deeper"):
        impl.pack(nested(_pure.MAX_DEPTH + 1))
    too_deep = b"\x06\x01" * (_pure.MAX_DEPTH + 1) + b"\x00"
    with pytest.raises(CodecError, match="nesting deeper"):
        impl.unpack(too_deep)
    # A self-containing list hits the same limit instead of recursing forever.
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(CodecError, match="nesting deeper"):
        impl.pack(loop)


@impls
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated input at offset 0"),
        (b"\x07", "unknown tag 0x07"),
        (b"\xff", "unknown tag 0xff"),
        (b"\x00\x00", "1 trailing bytes"),
        (b"\x03", "truncated varint"),
        (b"\x03\x80", "truncated varint"),
        (b"\x03\x80\x00", "non-canonical varint"),
        (b"\x03" + b"\xff" * 9 + b"\x02", "over-long varint"),
        (b"\x03" + b"\x80" * 10 + b"\x01", "over-long varint"),
        (b"\x04\x05abc", "length 5 at offset 1 exceeds the 3 remaining"),
        (b"\x05\x02\xc3", "exceeds"),
        (b"\x05\x01\xff", "invalid UTF-8"),
        (b"\x05\x03\xed\xa0\x80", "invalid UTF-8"),  # an encoded surrogate
        (b"\x06\x02\x00", "length 2 at offset 1 exceeds the 1 remaining"),
        (b"\x06\x02\x06\x00", "truncated input at offset 4"),
        (b"\x06\xff\xff\xff\xff\x0f", "exceeds"),  # a huge count is refused before allocating
        (b"\x04" + b"\xff" * 9 + b"\x01", "exceeds"),
    ],
)
def test_unpack_rejects(impl: Any, data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        impl.unpack(data)


@impls
@pytest.mark.parametrize("bad", ["text", 5, None, [1]])
def test_unpack_rejects_non_bytes(impl: Any, bad: object) -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        impl.unpack(bad)


@impls
@SETTINGS
@given(values)
def test_every_truncation_of_a_value_is_rejected(impl: Any, value: object) -> None:
    data = impl.pack(value)
    for cut in range(len(data)):
        with pytest.raises(CodecError):
            impl.unpack(data[:cut])


@impls
@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_reject_or_round_trip(impl: Any, data: bytes) -> None:
    try:
        value = impl.unpack(data)
    except CodecError:
        return
    # Decoding is canonical: whatever is accepted re-encodes to the same bytes.
    assert impl.pack(value) == data


# --- entries ---------------------------------------------------------------------------


@impls
def test_entry_layout(impl: Any) -> None:
    frame = impl.encode_entry(7, 3, 1, b"payload")
    assert len(frame) == _pure.ENTRY_HEADER_SIZE + 7
    version, kind, index, term, plen, crc = struct.unpack(">BBQQII", frame[:26])
    assert (version, kind, index, term, plen) == (_pure.FORMAT_VERSION, 1, 7, 3, 7)
    assert crc == zlib.crc32(frame[:22] + b"payload")
    assert frame[26:] == b"payload"
    assert impl.decode_entry(frame) == (7, 3, 1, b"payload")


@impls
@SETTINGS
@given(U64, U64, st.integers(0, 255), st.binary(max_size=300))
def test_entry_round_trip(impl: Any, index: int, term: int, kind: int, payload: bytes) -> None:
    frame = impl.encode_entry(index, term, kind, payload)
    assert impl.decode_entry(frame) == (index, term, kind, payload)
    assert impl.decode_entry(bytearray(frame)) == (index, term, kind, payload)


@impls
@SETTINGS
@given(U64, U64, st.integers(0, 255), st.binary(max_size=64))
def test_every_entry_truncation_is_rejected(
    impl: Any, index: int, term: int, kind: int, payload: bytes
) -> None:
    frame = impl.encode_entry(index, term, kind, payload)
    for cut in range(len(frame)):
        with pytest.raises(CodecError, match="truncated"):
            impl.decode_entry(frame[:cut])
    with pytest.raises(CodecError, match="trailing"):
        impl.decode_entry(frame + b"\x00")


@impls
def test_every_single_bit_flip_is_detected(impl: Any) -> None:
    frame = impl.encode_entry(2**40 + 5, 9, 1, bytes(range(100)))
    for bit in range(len(frame) * 8):
        bad = bytearray(frame)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodecError):
            impl.decode_entry(bytes(bad))


@impls
@SETTINGS
@given(st.binary(min_size=1, max_size=40), st.data())
def test_random_bit_flips_are_detected(impl: Any, payload: bytes, data: st.DataObject) -> None:
    frame = impl.encode_entry(1, 1, 1, payload)
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    bad = bytearray(frame)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CodecError, match=r"crc mismatch|unknown entry format version|truncated|trailing"):
        impl.decode_entry(bytes(bad))


@impls
def test_crc_mismatch_message(impl: Any) -> None:
    frame = bytearray(impl.encode_entry(1, 1, 1, b"abc"))
    frame[-1] ^= 0xFF
    with pytest.raises(CodecError, match="crc mismatch"):
        impl.decode_entry(bytes(frame))


@impls
@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_entry_version(impl: Any, version: int) -> None:
    frame = bytearray(impl.encode_entry(1, 1, 1, b"abc"))
    frame[0] = version
    with pytest.raises(CodecError, match=f"unknown entry format version {version}$"):
        impl.decode_entry(bytes(frame))


@impls
@SETTINGS
@given(st.binary(max_size=80))
def test_random_bytes_are_not_entries(impl: Any, data: bytes) -> None:
    try:
        index, term, kind, payload = impl.decode_entry(data)
    except CodecError:
        return
    assert impl.encode_entry(index, term, kind, payload) == data


@impls
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-1, 0, 1, b""), "index -1 out of unsigned 64-bit range"),
        ((2**64, 0, 1, b""), "index .* out of unsigned 64-bit range"),
        ((0, -5, 1, b""), "term -5 out of"),
        (("1", 0, 1, b""), "index must be an int"),
        ((0, 0, 256, b""), "kind 256 out of range"),
        ((0, 0, -1, b""), "kind -1 out of range"),
        ((0, 0, 1.0, b""), "kind must be an int"),
        ((0, 0, 1, "text"), "payload must be bytes"),
        ((0, 0, 1, bytearray(b"x")), "payload must be bytes"),
    ],
)
def test_encode_entry_rejects_bad_arguments(impl: Any, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        impl.encode_entry(*args)


@impls
def test_decode_entry_rejects_non_bytes(impl: Any) -> None:
    with pytest.raises(CodecError, match="expected bytes"):
        impl.decode_entry("x" * 40)


# --- commands --------------------------------------------------------------------------

ONE_OF_EACH: list[Command] = [
    Put("k", b"v", expires_at_ms=1_700_000_000_000),
    Delete("k"),
    Txn(
        compare=(
            Compare("a", CompareTarget.VALUE, CompareOp.EQUAL, value=b"x"),
            Compare("b", CompareTarget.VERSION, CompareOp.GREATER, number=3),
        ),
        success=(Put("a", b"y"), Delete("b"), TxnGet("c", revision=4)),
        failure=(TxnRange(prefix="p/", limit=10, keys_only=True), TxnRange(start="a", end="z")),
    ),
    Compact(42),
    Expire(items=(("a", 3), ("b", 9))),
    Prune(depth=16, keys=("a", "b/c")),
    Noop(),
    OpenSession(max_sessions=10_000, max_unacked=256),
    CloseSession(session=17),
    SessionClock(now_ms=1_700_000_000_000, idle_timeout_ms=600_000),
    SessionWrite(session=17, seq=9, lowest_unacked=4, command=Txn(success=(Put("a", b"y"),))),
]


def test_examples_cover_every_command_type() -> None:
    """Adding a command type must come with codec support and an example here."""
    assert {type(c) for c in ONE_OF_EACH} == set(typing.get_args(Command))


@impls
@pytest.mark.parametrize("cmd", ONE_OF_EACH, ids=lambda c: type(c).__name__)
def test_command_examples_round_trip(impl: Any, cmd: Command) -> None:
    decoded = decode_cmd(impl, encode_cmd(impl, cmd))
    assert decoded == cmd
    assert type(decoded) is type(cmd)


def test_decoded_enums_are_enum_members() -> None:
    txn = ONE_OF_EACH[2]
    decoded = ggap.codec.decode_command(ggap.codec.encode_command(txn))
    assert isinstance(decoded, Txn)
    assert [type(c.target) for c in decoded.compare] == [CompareTarget, CompareTarget]
    assert [type(c.op) for c in decoded.compare] == [CompareOp, CompareOp]


@impls
@SETTINGS
@given(commands)
def test_command_round_trip(impl: Any, cmd: Command) -> None:
    data = encode_cmd(impl, cmd)
    assert decode_cmd(impl, data) == cmd


@SETTINGS
@given(U64, U64, commands)
def test_command_entry_round_trip(index: int, term: int, cmd: Command) -> None:
    frame = ggap.codec.encode_command_entry(index, term, cmd)
    assert ggap.codec.decode_command_entry(frame) == (index, term, cmd)
    assert ggap.codec.decode_entry(frame)[2] == ggap.codec.ENTRY_KIND_COMMAND


def test_entry_kind_bytes_are_the_raft_entry_kinds() -> None:
    # One enum (Raft's), one set of frame bytes (the codec's, which imports no consensus code).
    from ggap.consensus.raft.types import EntryKind

    codec_kinds = {
        name.removeprefix("ENTRY_KIND_"): value
        for name, value in vars(ggap.codec).items()
        if name.startswith("ENTRY_KIND_")
    }
    assert codec_kinds == {"COMMAND": 1, "CONF_CHANGE": 2, "NOOP": 3}
    assert {k.value for k in EntryKind} == set(codec_kinds.values())
    assert EntryKind.NORMAL == ggap.codec.ENTRY_KIND_COMMAND
    assert EntryKind.CONF_CHANGE == ggap.codec.ENTRY_KIND_CONF_CHANGE
    assert EntryKind.NOOP == ggap.codec.ENTRY_KIND_NOOP


def test_decode_command_entry_rejects_other_kinds() -> None:
    frame = ggap.codec.encode_entry(1, 1, ggap.codec.ENTRY_KIND_CONF_CHANGE, b"\x00")
    with pytest.raises(CodecError, match="not a command entry"):
        ggap.codec.decode_command_entry(frame)


V = COMMAND_FORMAT_VERSION
BAD_COMMAND_VALUES: list[tuple[object, str]] = [
    (None, "command must be a sequence"),
    ((), "needs a version and a tag"),
    ((V,), "needs a version and a tag"),
    ((2, 1, "k", b"v", 0), "unknown command format version 2"),
    ((True, 1, "k", b"v", 0), "command format version must be int"),
    ((V, 99), "unknown command tag 99"),
    ((V, "put"), "command tag must be int"),
    ((V, 1, "k", b"v"), "Put must have 3 fields"),
    ((V, 1, "k", b"v", 0, 0), "Put must have 3 fields"),
    ((V, 1, b"k", b"v", 0), "Put.key must be str"),
    ((V, 1, "k", "v", 0), "Put.value must be bytes"),
    ((V, 1, "k", b"v", False), "Put.expires_at_ms must be int"),
    ((V, 2), "Delete must have 1 field"),
    ((V, 2, 5), "Delete.key must be str"),
    ((V, 3, (), ()), "Txn must have 3 fields"),
    ((V, 3, None, (), ()), "Txn.compare must be a sequence"),
    ((V, 3, (("k", 1, 1, b""),), (), ()), "Compare must have 5 fields"),
    ((V, 3, (("k", 9, 1, b"", 0),), (), ()), "unknown compare target 9"),
    ((V, 3, (("k", 1, 0, b"", 0),), (), ()), "unknown compare op 0"),
    ((V, 3, (("k", 1, 1, "s", 0),), (), ()), "Compare.value must be bytes"),
    ((V, 3, (), ((),), ()), "Txn op is empty"),
    ((V, 3, (), ((3, (), (), ()),), ()), "unknown Txn op tag 3"),  # no Txn inside a Txn
    ((V, 3, (), (), ((6,),)), "unknown Txn op tag 6"),
    ((V, 3, (), ((7, "k"),), ()), "TxnGet must have 2 fields"),
    ((V, 3, (), ((8, "", "", "", 0, 0, 1),), ()), "TxnRange.keys_only must be bool"),
    ((V, 3, (), ((8, "", "", "", 0, 0),), ()), "TxnRange must have 6 fields"),
    ((V, 3, (), (5,), ()), "Txn op must be a sequence"),
    ((V, 4), "Compact must have 1 field"),
    ((V, 4, "1"), "Compact.revision must be int"),
    ((V, 5, (("k",),)), "Expire item must have 2 fields"),
    ((V, 5, (("k", "1"),)), "Expire item mod_revision must be int"),
    ((V, 5, ((1, 1),)), "Expire item key must be str"),
    ((V, 5, "k"), "Expire.items must be a sequence"),
    ((V, 6, None), "Noop must have 0 fields"),
    ((V, 9, 16), "Prune must have 2 fields"),
    ((V, 9, "16", ()), "Prune.depth must be int"),
    ((V, 9, 16, "k"), "Prune.keys must be a sequence"),
    ((V, 9, 16, (b"k",)), "Prune key must be str"),
]


@impls
@pytest.mark.parametrize(("value", "message"), BAD_COMMAND_VALUES)
def test_decode_command_rejects_bad_shapes(impl: Any, value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_cmd(impl, impl.pack(value))


@pytest.mark.parametrize(
    "bad",
    [
        Put(b"k", b"v"),  # type: ignore[arg-type]
        Put("k", "v"),  # type: ignore[arg-type]
        Put("k", b"v", expires_at_ms=2**64),
        Delete(None),  # type: ignore[arg-type]
        Compact(True),
        Compare("k", 9, CompareOp.EQUAL),  # type: ignore[arg-type]
        Txn(compare=(Compare("k", 9, CompareOp.EQUAL),)),  # type: ignore[arg-type]
        Txn(success=(Compact(1),)),  # type: ignore[arg-type]
        Txn(success=(Txn(),)),  # type: ignore[arg-type]
        TxnRange(keys_only=1),  # type: ignore[arg-type]
        Expire(items=(("k",),)),  # type: ignore[arg-type]
        "put k v",
    ],
    ids=repr,
)
def test_encode_command_rejects_invalid_commands(bad: Any) -> None:
    with pytest.raises(CodecError):
        ggap.codec.encode_command(bad)


@impls
@SETTINGS
@given(values)
def test_arbitrary_values_decode_as_commands_or_fail_cleanly(impl: Any, value: object) -> None:
    data = impl.pack(value)
    try:
        cmd = decode_cmd(impl, data)
    except CodecError:
        return
    assert encode_cmd(impl, cmd) == data


@impls
@SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_decode_as_commands_or_fail_cleanly(impl: Any, data: bytes) -> None:
    try:
        cmd = decode_cmd(impl, data)
    except CodecError:
        return
    assert encode_cmd(impl, cmd) == data


@impls
@SETTINGS
@given(commands, st.data())
def test_mutated_commands_fail_cleanly(impl: Any, cmd: Command, data: st.DataObject) -> None:
    buf = bytearray(encode_cmd(impl, cmd))
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_cmd(impl, bytes(buf))
    except CodecError:
        return
    assert encode_cmd(impl, decoded) == bytes(buf)


# --- conf changes (the CONF_CHANGE entry payload) --------------------------------------

conf_changes = st.tuples(st.sampled_from([1, 2, 3]), st.integers(1, 2**63 - 1), st.binary(max_size=40))


def encode_cc(impl: types.ModuleType, t: int, node: int, ctx: bytes) -> bytes:
    return impl.pack(conf_change_to_value(t, node, ctx))  # type: ignore[no-any-return]


def decode_cc(impl: types.ModuleType, data: bytes) -> tuple[int, int, bytes]:
    return conf_change_from_value(impl.unpack(data))


@impls
def test_conf_change_golden(impl: Any) -> None:
    # (version 1, type ADD_LEARNER=1, node 4, context b"h:1")
    encoded = b"\x06\x04\x03\x02\x03\x02\x03\x08\x04\x03h:1"
    assert encode_cc(impl, 1, 4, b"h:1") == encoded
    assert decode_cc(impl, encoded) == (1, 4, b"h:1")


def test_conf_change_public_functions() -> None:
    data = ggap.codec.encode_conf_change(ggap.codec.CONF_CHANGE_REMOVE, 9)
    assert data == encode_cc(_pure, 3, 9, b"")
    assert ggap.codec.decode_conf_change(data) == (3, 9, b"")


def test_conf_change_types_are_the_raft_ones() -> None:
    # One enum (Raft's), one set of payload ints (the codec's, which imports no consensus code).
    from ggap.consensus.raft.types import ConfChangeType

    codec_types = {
        name.removeprefix("CONF_CHANGE_"): value
        for name, value in vars(ggap.codec).items()
        if name.startswith("CONF_CHANGE_") and name != "CONF_CHANGE_FORMAT_VERSION"
    }
    assert codec_types == {t.name: t.value for t in ConfChangeType}


@impls
@SETTINGS
@given(conf_changes)
def test_conf_change_round_trip(impl: Any, change: tuple[int, int, bytes]) -> None:
    assert decode_cc(impl, encode_cc(impl, *change)) == change


CC = CONF_CHANGE_FORMAT_VERSION
BAD_CONF_CHANGE_VALUES: list[tuple[object, str]] = [
    (None, "conf change must be a sequence"),
    ((CC, 1, 4), "must have 4 fields"),
    ((CC, 1, 4, b"", b""), "must have 4 fields"),
    ((2, 1, 4, b""), "unknown conf change format version 2"),
    ((True, 1, 4, b""), "unknown conf change format version True"),
    ((CC, 0, 4, b""), "unknown conf change type 0"),
    ((CC, 4, 4, b""), "unknown conf change type 4"),
    ((CC, True, 4, b""), "conf change type must be int, got bool"),
    ((CC, "1", 4, b""), "conf change type must be int, got str"),
    ((CC, 1, 0, b""), "node id 0 out of range"),
    ((CC, 1, -5, b""), "node id -5 out of range"),
    ((CC, 1, True, b""), "node id must be int, got bool"),
    ((CC, 1, 4, "ctx"), "context must be bytes, got str"),
    ((CC, 1, 4, None), "context must be bytes, got NoneType"),
]


@impls
@pytest.mark.parametrize(("value", "message"), BAD_CONF_CHANGE_VALUES)
def test_decode_conf_change_rejects_bad_shapes(impl: Any, value: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_cc(impl, impl.pack(value))


@pytest.mark.parametrize(
    "args",
    [(0, 4, b""), (1, 0, b""), (1, 2**63, b""), (1, 4, "x"), (1, 4, bytearray(b"x")), (True, 4, b"")],
    ids=repr,
)
def test_encode_conf_change_rejects_bad_arguments(args: tuple[Any, ...]) -> None:
    with pytest.raises(CodecError):
        ggap.codec.encode_conf_change(*args)


@impls
@SETTINGS
@given(values)
def test_arbitrary_values_decode_as_conf_changes_or_fail_cleanly(impl: Any, value: object) -> None:
    data = impl.pack(value)
    try:
        change = decode_cc(impl, data)
    except CodecError:
        return
    assert encode_cc(impl, *change) == data


@impls
@SETTINGS
@given(conf_changes, st.data())
def test_mutated_conf_changes_fail_cleanly(
    impl: Any, change: tuple[int, int, bytes], data: st.DataObject
) -> None:
    buf = bytearray(encode_cc(impl, *change))
    pos = data.draw(st.integers(0, len(buf) - 1))
    buf[pos] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_cc(impl, bytes(buf))
    except CodecError:
        return
    assert encode_cc(impl, *decoded) == bytes(buf)


# --- visible_versions ------------------------------------------------------------------


def make_rows(history: dict[str, list[tuple[int, bool]]]) -> list[tuple[Any, ...]]:
    """Rows as storage's SQL returns them: key asc, mod_revision desc, one extra field."""
    rows = []
    for key in sorted(history, key=lambda k: k.encode()):
        for n, (rev, tomb) in enumerate(sorted(history[key], reverse=True)):
            value = None if tomb else f"{key}@{rev}".encode()
            rows.append((key, rev, 1, n + 1, 0, int(tomb), value, f"extra-{key}-{rev}"))
    return rows


histories = st.dictionaries(
    st.text(alphabet="abcz/é", min_size=1, max_size=4),
    st.lists(
        st.tuples(st.integers(1, 10_000), st.booleans()), min_size=1, max_size=5, unique_by=lambda t: t[0]
    ),
    max_size=12,
)


@impls
@SETTINGS
@given(histories, st.integers(-2, 15))
def test_visible_versions_matches_model(
    impl: Any, history: dict[str, list[tuple[int, bool]]], limit: int
) -> None:
    rows = make_rows(history)
    newest: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        if row[0] not in newest or row[1] > newest[row[0]][1]:
            newest[row[0]] = row
    expected = [r for r in rows if newest[r[0]] is r and not r[5]]
    out, count = impl.visible_versions(rows, limit)
    assert count == len(expected)
    want = expected if limit <= 0 else expected[:limit]
    assert out == want
    assert all(a is b for a, b in zip(out, want, strict=True))


@impls
def test_visible_versions_examples(impl: Any) -> None:
    rows = [
        ("a", 5, 1, 2, 0, 0, b"a5", "x"),
        ("a", 3, 1, 1, 0, 0, b"a3", "x"),
        ("b", 6, 4, 2, 0, 1, None, "x"),  # deleted at 6: b is gone
        ("b", 4, 4, 1, 0, 0, b"b4", "x"),
        ("c", 2, 2, 1, 0, 1, None, "x"),
        ("d", 9, 7, 1, 0, 0, b"d9", "x"),
    ]
    assert impl.visible_versions(rows, 0) == ([rows[0], rows[5]], 2)
    assert impl.visible_versions(rows, 1) == ([rows[0]], 2)
    assert impl.visible_versions(iter(rows), 2**70) == ([rows[0], rows[5]], 2)
    assert impl.visible_versions([], 3) == ([], 0)


@impls
@pytest.mark.parametrize(
    ("rows", "limit", "message"),
    [
        ([["a", 1, 1, 1, 0, 0, b""]], 0, "row must be a tuple"),
        ([("a", 1, 1, 1, 0, 0)], 0, "needs at least 7"),
        ([], "1", "limit must be an int"),
    ],
)
def test_visible_versions_rejects_bad_rows(impl: Any, rows: Any, limit: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        impl.visible_versions(rows, limit)


# --- version_at ------------------------------------------------------------------------


@impls
@SETTINGS
@given(st.lists(st.integers(-(2**70), 2**70), max_size=30), st.integers(-(2**71), 2**71))
def test_version_at_matches_bisect(impl: Any, revisions: list[int], revision: int) -> None:
    revisions.sort()
    assert impl.version_at(revisions, revision) == bisect.bisect_right(revisions, revision) - 1


@impls
def test_version_at_examples(impl: Any) -> None:
    revs = (3, 5, 5, 9)
    assert [impl.version_at(revs, r) for r in (0, 3, 4, 5, 8, 9, 100)] == [-1, 0, 0, 2, 2, 3, 3]
    assert impl.version_at([], 7) == -1
    with pytest.raises(CodecError, match="revision must be an int"):
        impl.version_at(revs, "5")
    with pytest.raises(CodecError, match=r"revisions\[1\] must be an int"):
        impl.version_at([1, "2", 3], 5)


# --- implementation selection ----------------------------------------------------------


def test_selected_implementation_is_consistent() -> None:
    assert ggap.codec.IMPL == ("c" if ggap.codec.HAS_FASTLOG else "py")
    source = _fast if ggap.codec.HAS_FASTLOG else _pure
    assert ggap.codec.pack is source.pack
    assert ggap.codec.decode_entry is source.decode_entry
    if _fast is not None and not os.environ.get("GGAP_NO_EXTENSIONS"):
        assert ggap.codec.IMPL == "c"


def test_no_extensions_env_forces_pure_python() -> None:
    code = "import ggap.codec as c; print(c.IMPL, c.HAS_FASTLOG, c.pack.__module__)"
    env = {**os.environ, "GGAP_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["py", "False", "ggap.codec._pure"]


def test_origin_stamps_and_refusals_carry_every_64_bit_number() -> None:
    """A node's incarnation is a random 64-bit number: at or above 2^63 one half of the
    time. A refusal naming such a write once crashed the refusing leader (the tagged
    codec's ints are signed)."""
    from ggap.codec import Origin, decode_refusals, encode_refusals, read_origin, stamp_origin

    big = (1 << 64) - 1
    origins = [Origin(7, big, 1), Origin(7, 1 << 63, big), Origin(7, (1 << 63) - 1, 0)]
    assert decode_refusals(7, encode_refusals(origins)) == origins
    for o in origins:
        assert read_origin(stamp_origin(o, b"data")) == o
    with pytest.raises(CodecError):
        decode_refusals(7, ggap.codec.pack(((1, 2, 3),)))
