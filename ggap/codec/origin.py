"""The proposer's stamp on a write a follower hands to the leader inside Raft.

A follower that forwards a write as a PROPOSE message cannot learn the entry's index (the
leader assigns it), so it recognises its own entry when it applies it by this stamp: a fixed
25-byte header in front of the entry's data, (mark, node, incarnation, sequence), big-endian.
Encoded commands begin with a packed list (0x06) and the simulator's with ASCII, so the mark
byte never starts an unstamped entry. The incarnation is drawn anew at each start, so an
entry stamped before a restart never matches a write proposed after it.

A leader that refuses forwarded writes (it no longer leads, or is handing leadership over)
says which, with `encode_refusals` in the refusal's context, so the follower can fail them
at once with a definite "not applied".
"""

from __future__ import annotations

import struct

import attrs

from ggap.codec._pure import pack, unpack
from ggap.types.errors import CodecError

ORIGIN_MARK = 0xF0
_HEADER = struct.Struct(">BQQQ")
ORIGIN_HEADER_SIZE = _HEADER.size
_U64 = (1 << 64) - 1
_I64_MAX = (1 << 63) - 1


@attrs.frozen(slots=True)
class Origin:
    """Which node proposed an entry, in which run of that node, as its how-many-th forward."""

    node: int
    incarnation: int
    seq: int


def stamp_origin(origin: Origin, data: bytes) -> bytes:
    for what, v in (("node", origin.node), ("incarnation", origin.incarnation), ("seq", origin.seq)):
        if not 0 <= v <= _U64:
            raise CodecError(f"origin {what} {v} does not fit 64 bits")
    return _HEADER.pack(ORIGIN_MARK, origin.node, origin.incarnation, origin.seq) + data


def is_stamped(data: bytes) -> bool:
    return bool(data) and data[0] == ORIGIN_MARK


def read_origin(data: bytes) -> Origin | None:
    """The stamp of `data`; None when it has none; CodecError for a truncated one."""
    if not is_stamped(data):
        return None
    if len(data) < ORIGIN_HEADER_SIZE:
        raise CodecError(f"origin stamp is {len(data)} bytes, under {ORIGIN_HEADER_SIZE}")
    _, node, incarnation, seq = _HEADER.unpack_from(data)
    return Origin(node=node, incarnation=incarnation, seq=seq)


def strip_origin(data: bytes) -> bytes:
    """The entry's data as proposed (without its stamp, if it has one)."""
    if not is_stamped(data):
        return data
    if len(data) < ORIGIN_HEADER_SIZE:
        raise CodecError(f"origin stamp is {len(data)} bytes, under {ORIGIN_HEADER_SIZE}")
    return data[ORIGIN_HEADER_SIZE:]


def _signed(v: int) -> int:
    # The tagged codec carries signed 64-bit ints; incarnations use all 64 bits.
    return v - (1 << 64) if v > _I64_MAX else v


def encode_refusals(origins: list[Origin]) -> bytes:
    """The forwarded writes a leader refused (all from one node). Numbers at or above 2^63
    travel as their two's complement (a random incarnation is one half the time)."""
    return pack(tuple((_signed(o.incarnation), _signed(o.seq)) for o in origins))


def decode_refusals(node: int, data: bytes) -> list[Origin]:
    """Inverse of encode_refusals for writes forwarded by `node`; CodecError for anything else."""
    value = unpack(data)
    if type(value) is not tuple:
        raise CodecError("refusals must be a list")
    out = []
    for item in value:
        if (
            type(item) is not tuple
            or len(item) != 2
            or not all(type(v) is int and -(1 << 63) <= v <= _I64_MAX for v in item)
        ):
            raise CodecError(f"bad refusal {item!r}")
        incarnation, seq = (v & _U64 for v in item)
        out.append(Origin(node=node, incarnation=incarnation, seq=seq))
    return out
