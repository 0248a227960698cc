"""The reference codec, in pure Python. `ggap/_fastlog.pyx` must match it byte for byte
and error for error (same CodecError messages), so keep the two in step.

Value format (`pack`/`unpack`): one tag byte, then
  0x00 None | 0x01 False | 0x02 True
  0x03 int    zigzag varint (signed 64-bit only)
  0x04 bytes  varint length, raw bytes
  0x05 str    varint length, UTF-8 bytes
  0x06 list   varint count, that many values (tuple and list both encode here; decode gives tuple)
Varints are unsigned LEB128 (7 bits a byte, low first, at most 10 bytes). Decoding is strict:
minimal varints only, strict UTF-8, no trailing bytes, so every accepted buffer re-packs to
itself and a value has exactly one encoding.

Entry frame (`encode_entry`/`decode_entry`), all integers big-endian:
  offset 0  u8   format version (FORMAT_VERSION)
         1  u8   kind (ggap.codec.ENTRY_KIND_*)
         2  u64  index
        10  u64  term
        18  u32  payload length
        22  u32  CRC32 (zlib) of bytes 0..21 followed by the payload
        26       payload
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from ggap.types.errors import CodecError

FORMAT_VERSION = 1
MAX_DEPTH = 64
ENTRY_HEADER_SIZE = 26

TAG_NONE = 0x00
TAG_FALSE = 0x01
TAG_TRUE = 0x02
TAG_INT = 0x03
TAG_BYTES = 0x04
TAG_STR = 0x05
TAG_LIST = 0x06

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1

_HEAD = struct.Struct(">BBQQI")
_CRC = struct.Struct(">I")

_Row = TypeVar("_Row", bound=tuple[Any, ...])


# --- values ---------------------------------------------------------------------------


def _put_varint(out: bytearray, u: int) -> None:
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)


def _pack_into(out: bytearray, obj: object, depth: int) -> None:
    if obj is None:
        out.append(TAG_NONE)
    elif obj is True:
        out.append(TAG_TRUE)
    elif obj is False:
        out.append(TAG_FALSE)
    elif isinstance(obj, int):
        n = int(obj)
        if n < _I64_MIN or n > _I64_MAX:
            raise CodecError("int out of signed 64-bit range")
        out.append(TAG_INT)
        _put_varint(out, ((n << 1) ^ (n >> 63)) & _U64_MAX)
    elif isinstance(obj, bytes):
        out.append(TAG_BYTES)
        _put_varint(out, len(obj))
        out += obj
    elif isinstance(obj, str):
        try:
            data = obj.encode("utf-8")
        except UnicodeEncodeError:
            raise CodecError("str cannot be encoded as UTF-8") from None
        out.append(TAG_STR)
        _put_varint(out, len(data))
        out += data
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise CodecError(f"nesting deeper than {MAX_DEPTH}")
        # A subclass may iterate differently from its len(); freeze what we write.
        items = obj if type(obj) is list or type(obj) is tuple else tuple(obj)
        out.append(TAG_LIST)
        _put_varint(out, len(items))
        for item in items:
            _pack_into(out, item, depth + 1)
    else:
        raise CodecError(f"cannot pack value of type {type(obj).__name__}")


def pack(obj: object) -> bytes:
    """Encode None/bool/int/bytes/str and nested list/tuple of them; CodecError otherwise."""
    out = bytearray()
    _pack_into(out, obj, 0)
    return bytes(out)


def _as_bytes(buf: object) -> bytes:
    if isinstance(buf, bytes):
        return buf
    if isinstance(buf, (bytearray, memoryview)):
        return bytes(buf)
    raise CodecError(f"expected bytes, got {type(buf).__name__}")


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    start = pos
    end = len(buf)
    result = 0
    shift = 0
    for i in range(10):
        if pos >= end:
            raise CodecError(f"truncated varint at offset {start}")
        b = buf[pos]
        pos += 1
        if i == 9 and b > 1:
            raise CodecError(f"over-long varint at offset {start}")
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and i > 0:
                raise CodecError(f"non-canonical varint at offset {start}")
            return result, pos
        shift += 7
    raise AssertionError("unreachable: the tenth byte always ends the varint")


def _read_len(buf: bytes, pos: int) -> tuple[int, int]:
    start = pos
    n, pos = _read_varint(buf, pos)
    remaining = len(buf) - pos
    if n > remaining:
        raise CodecError(f"length {n} at offset {start} exceeds the {remaining} remaining bytes")
    return n, pos


def _unpack_from(buf: bytes, pos: int, depth: int) -> tuple[object, int]:
    if pos >= len(buf):
        raise CodecError(f"truncated input at offset {pos}")
    tag = buf[pos]
    tag_pos = pos
    pos += 1
    if tag == TAG_NONE:
        return None, pos
    if tag == TAG_FALSE:
        return False, pos
    if tag == TAG_TRUE:
        return True, pos
    if tag == TAG_INT:
        u, pos = _read_varint(buf, pos)
        return (u >> 1) ^ -(u & 1), pos
    if tag == TAG_BYTES:
        n, pos = _read_len(buf, pos)
        return buf[pos : pos + n], pos + n
    if tag == TAG_STR:
        n, pos = _read_len(buf, pos)
        try:
            s = buf[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise CodecError(f"invalid UTF-8 in str at offset {pos}") from None
        return s, pos + n
    if tag == TAG_LIST:
        if depth >= MAX_DEPTH:
            raise CodecError(f"nesting deeper than {MAX_DEPTH} at offset {tag_pos}")
        # Every item takes at least one byte, so the count is bounded by what is left.
        n, pos = _read_len(buf, pos)
        items = []
        for _ in range(n):
            item, pos = _unpack_from(buf, pos, depth + 1)
            items.append(item)
        return tuple(items), pos
    raise CodecError(f"unknown tag 0x{tag:02x} at offset {tag_pos}")


def unpack(buf: bytes) -> object:
    """Decode exactly one value filling all of `buf`; lists come back as tuples."""
    data = _as_bytes(buf)
    obj, pos = _unpack_from(data, 0, 0)
    if pos != len(data):
        raise CodecError(f"{len(data) - pos} trailing bytes after value")
    return obj


# --- log entry frame ------------------------------------------------------------------


def _check_u64(name: str, v: object) -> int:
    if not isinstance(v, int):
        raise CodecError(f"{name} must be an int, got {type(v).__name__}")
    if v < 0 or v > _U64_MAX:
        raise CodecError(f"{name} {v} out of unsigned 64-bit range")
    return int(v)


def encode_entry(index: int, term: int, kind: int, payload: bytes) -> bytes:
    """Frame one log entry; the CRC lets recovery tell a torn or rotten write from data."""
    index = _check_u64("index", index)
    term = _check_u64("term", term)
    if not isinstance(kind, int):
        raise CodecError(f"kind must be an int, got {type(kind).__name__}")
    if kind < 0 or kind > 255:
        raise CodecError(f"kind {kind} out of range 0..255")
    if not isinstance(payload, bytes):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > _U32_MAX:
        raise CodecError(f"payload of {len(payload)} bytes exceeds the 4 GiB entry limit")
    head = _HEAD.pack(FORMAT_VERSION, kind, index, term, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, _CRC.pack(crc), payload))


def decode_entry(buf: bytes) -> tuple[int, int, int, bytes]:
    """Return (index, term, kind, payload) of one frame; CodecError unless it is exactly valid."""
    data = _as_bytes(buf)
    n = len(data)
    if n < ENTRY_HEADER_SIZE:
        raise CodecError(f"truncated entry: {n} bytes, header needs {ENTRY_HEADER_SIZE}")
    version = data[0]
    if version != FORMAT_VERSION:
        raise CodecError(f"unknown entry format version {version}")
    _, kind, index, term, plen = _HEAD.unpack_from(data, 0)
    avail = n - ENTRY_HEADER_SIZE
    if avail < plen:
        raise CodecError(f"truncated entry: payload needs {plen} bytes, {avail} present")
    if avail > plen:
        raise CodecError(f"{avail - plen} trailing bytes after entry payload")
    (stored,) = _CRC.unpack_from(data, 22)
    payload = data[ENTRY_HEADER_SIZE:]
    computed = zlib.crc32(payload, zlib.crc32(data[:22]))
    if stored != computed:
        raise CodecError(f"crc mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
    return index, term, kind, payload


# --- MVCC helpers ---------------------------------------------------------------------


def visible_versions(rows: Iterable[_Row], limit: int) -> tuple[list[_Row], int]:
    """Pick each key's newest version from rows sorted (key asc, mod_revision desc).

    Rows are tuples (key, mod_revision, create_revision, version, expires_at_ms, tombstone,
    value, ...); a key whose newest row is a tombstone is absent. Returns the first `limit`
    survivors (all if limit <= 0), as the same tuple objects, and how many survived in total.
    """
    if not isinstance(limit, int):
        raise CodecError(f"limit must be an int, got {type(limit).__name__}")
    out: list[_Row] = []
    count = 0
    have_prev = False
    prev: object = None
    for row in rows:
        if not isinstance(row, tuple):
            raise CodecError(f"row must be a tuple, got {type(row).__name__}")
        if len(row) < 7:
            raise CodecError(f"row has {len(row)} fields, needs at least 7")
        key = row[0]
        if have_prev and (key is prev or key == prev):
            continue
        have_prev = True
        prev = key
        if row[5]:
            continue
        count += 1
        if limit <= 0 or count <= limit:
            out.append(row)
    return out, count


def version_at(revisions: Sequence[int], revision: int) -> int:
    """Position of the greatest element <= revision in an ascending sequence, else -1."""
    if not isinstance(revision, int):
        raise CodecError(f"revision must be an int, got {type(revision).__name__}")
    lo = 0
    hi = len(revisions)
    while lo < hi:
        mid = (lo + hi) >> 1
        v = revisions[mid]
        if not isinstance(v, int):
            raise CodecError(f"revisions[{mid}] must be an int, got {type(v).__name__}")
        if v <= revision:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1
