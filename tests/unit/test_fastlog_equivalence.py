"""The compiled ggap._fastlog against the pure reference, on the same generated inputs.

Valid and invalid inputs alike: both must return the same bytes/values, or both raise
CodecError with the same message. Any other exception (or a crash) fails the test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggap.codec import _pure
from ggap.codec.commands import command_to_value
from ggap.types import CodecError, Command
from tests.unit.test_codec import commands, histories, make_rows, values

fast = pytest.importorskip("ggap._fastlog", reason="ggap._fastlog is not built (run `make ext`)")

SETTINGS = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except CodecError as e:
        return "error", str(e)


def same(name: str, *args: Any) -> tuple[str, Any]:
    """Run `name` from both implementations; assert identical outcomes (type-exact)."""
    py = outcome(getattr(_pure, name), *args)
    c = outcome(getattr(fast, name), *args)
    assert py[0] == c[0], (py, c)
    if py[0] == "ok":
        assert repr(py[1]) == repr(c[1]), (py, c)
        assert type(py[1]) is type(c[1])
    else:
        assert py[1] == c[1]
    return py


def test_same_constants() -> None:
    for name in ("FORMAT_VERSION", "MAX_DEPTH", "ENTRY_HEADER_SIZE"):
        assert getattr(_pure, name) == getattr(fast, name)


# Values that pack may refuse: out-of-range ints, unsupported types, unencodable strs.
risky_scalars = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(codec=None, categories=["Cs", "Ll"]), max_size=3),
    st.sets(st.integers(0, 3), max_size=2),
    st.binary(max_size=5).map(bytearray),
)
risky_values = st.recursive(
    st.one_of(values, risky_scalars),
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple),
    max_leaves=15,
)


@SETTINGS
@given(risky_values)
def test_pack_agrees(value: object) -> None:
    same("pack", value)


@pytest.mark.parametrize("depth", [63, 64, 65, 200])
def test_pack_and_unpack_agree_on_depth(depth: int) -> None:
    v: object = 1
    for _ in range(depth):
        v = (v,)
    same("pack", v)
    same("unpack", b"\x06\x01" * depth + b"\x03\x02")


def mutate(data: bytes, draw: st.DataObject) -> bytes:
    """Flip, overwrite, insert or delete a byte, or cut the buffer."""
    buf = bytearray(data)
    how = draw.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
    pos = draw.draw(st.integers(0, max(len(buf) - 1, 0)))
    if how == "insert" or not buf:
        buf.insert(pos, draw.draw(st.integers(0, 255)))
    elif how == "flip":
        buf[pos] ^= 1 << draw.draw(st.integers(0, 7))
    elif how == "set":
        buf[pos] = draw.draw(st.integers(0, 255))
    elif how == "delete":
        del buf[pos]
    else:
        del buf[pos:]
    return bytes(buf)


@SETTINGS
@given(st.binary(max_size=80))
def test_unpack_agrees_on_random_bytes(data: bytes) -> None:
    same("unpack", data)


@st.composite
def raw_varints(draw: st.DrawFn) -> bytes:
    """Varint-shaped bytes: up to 11 continuation bytes, then any final byte."""
    n = draw(st.integers(0, 11))
    body = [draw(st.integers(0x80, 0xFF)) for _ in range(n)]
    last = draw(st.one_of(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]), st.integers(0, 0xFF)))
    return bytes([*body, last])


@SETTINGS
@given(st.sampled_from([0x03, 0x04, 0x05, 0x06]), raw_varints(), st.binary(max_size=6))
def test_unpack_agrees_on_varint_edges(tag: int, varint: bytes, tail: bytes) -> None:
    same("unpack", bytes([tag]) + varint + tail)
    same("unpack", bytes([tag]) + varint)


@pytest.mark.parametrize("fill", [0x80, 0xFF])
def test_unpack_agrees_on_every_varint_length_and_final_byte(fill: int) -> None:
    for n in range(12):
        for last in range(256):
            for tag in (0x03, 0x04):
                same("unpack", bytes([tag, *[fill] * n, last]))


@SETTINGS
@given(values, st.data())
def test_unpack_agrees_on_mutated_values(value: object, draw: st.DataObject) -> None:
    data = _pure.pack(value)
    same("unpack", data)
    same("unpack", mutate(data, draw))


@SETTINGS
@given(commands, st.data())
def test_commands_agree(cmd: Command, draw: st.DataObject) -> None:
    value = command_to_value(cmd)
    kind, data = same("pack", value)
    assert kind == "ok"
    same("unpack", mutate(data, draw))
    kind, frame = same("encode_entry", 12, 3, 1, data)
    assert kind == "ok"
    same("decode_entry", frame)
    same("decode_entry", mutate(frame, draw))


@SETTINGS
@given(
    st.one_of(st.integers(-5, 2**64 + 5), st.integers(2**64 - 3, 2**64 + 3), st.just("1")),
    st.integers(-(2**65), 2**65),
    st.one_of(st.integers(-3, 260), st.just(1.0)),
    st.one_of(st.binary(max_size=200), st.text(max_size=3), st.binary(max_size=3).map(bytearray)),
)
def test_encode_entry_agrees(index: Any, term: Any, kind: Any, payload: Any) -> None:
    same("encode_entry", index, term, kind, payload)


@SETTINGS
@given(
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 255),
    st.binary(max_size=120),
    st.data(),
)
def test_decode_entry_agrees(index: int, term: int, kind: int, payload: bytes, draw: st.DataObject) -> None:
    frame = _pure.encode_entry(index, term, kind, payload)
    same("decode_entry", frame)
    same("decode_entry", mutate(frame, draw))
    same("decode_entry", frame[: draw.draw(st.integers(0, len(frame)))])


@SETTINGS
@given(st.binary(max_size=60))
def test_decode_entry_agrees_on_random_bytes(data: bytes) -> None:
    same("decode_entry", data)
    same("decode_entry", b"\x01" + data)


@SETTINGS
@given(histories, st.one_of(st.integers(-3, 20), st.integers(2**62, 2**70)), st.data())
def test_visible_versions_agree(
    history: dict[str, list[tuple[int, bool]]], limit: int, draw: st.DataObject
) -> None:
    rows = make_rows(history)
    add_bad_row: bool = draw.draw(st.booleans())
    if rows and add_bad_row:
        # Occasionally a malformed row: both must refuse it the same way.
        bad: Any = draw.draw(st.sampled_from([["k", 1, 1, 1, 0, 0, b""], ("k", 1), "row"]))
        rows.insert(draw.draw(st.integers(0, len(rows))), bad)
    py = outcome(_pure.visible_versions, rows, limit)
    c = outcome(fast.visible_versions, rows, limit)
    assert py[0] == c[0]
    if py[0] == "error":
        assert py[1] == c[1]
        return
    (py_out, py_count), (c_out, c_count) = py[1], c[1]
    assert py_count == c_count
    assert len(py_out) == len(c_out)
    assert all(a is b for a, b in zip(py_out, c_out, strict=True))


@SETTINGS
@given(
    st.lists(st.one_of(st.integers(-(2**66), 2**66), st.integers(-10, 10)), max_size=40),
    st.one_of(st.integers(-(2**66), 2**66), st.integers(-12, 12), st.just(2.5)),
    st.booleans(),
)
def test_version_at_agrees(revisions: list[Any], revision: Any, poison: bool) -> None:
    revisions.sort()
    if poison and revisions:
        revisions[len(revisions) // 2] = "x"
    same("version_at", revisions, revision)
    same("version_at", tuple(revisions), revision)
