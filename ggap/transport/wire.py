"""The peer wire format: Raft messages as ggap.codec values, in CRC-checked frames.

Everything here is sans-I/O (bytes in, bytes out) so it can be fuzzed without sockets.

Frame, integers big-endian:
  offset 0  u32  payload length (at most the decoder's max_frame, checked before buffering)
         4  u32  CRC32 (zlib) of bytes 0..3 followed by the payload
         8       payload
Covering the length with the CRC means a corrupted length is caught even when the bogus
length happens to fit the bytes at hand.

Payloads (all `ggap.codec.pack` values; lists decode as tuples):
  handshake  (client -> server, first frame):
             ("ggap-peer", PROTOCOL_VERSION, cluster_id: str, from_id: int, to_id: int
              [, purpose: str])
             purpose "raft" (the default, and the only one sent without the field) carries
             message batches; "snapshot" carries one snapshot transfer (below).
  reply      (server -> client, answer to the handshake; the only frame a server sends):
             ("ggap-peer-ack", PROTOCOL_VERSION, accepted: bool, reason: str)
  batch      (client -> server, every later frame): a list of messages, possibly empty
             (an empty batch is a keepalive). A message is
             (type, to, frm, term, log_term, index, entries, commit, reject, reject_hint,
              context, snapshot)
             entry    = (index, term, kind, data)
             snapshot = None | (index, term, voters: list[int], learners: list[int])
On a "snapshot" connection, after the reply:
  header     (client -> server): ("ggap-snap", PROTOCOL_VERSION, message, size: int, sha256: str)
             where message is the SNAPSHOT message the data belongs to
  chunks     (client -> server): raw bytes frames, `size` bytes in all
  verdict    (server -> client): ("ggap-snap-ack", PROTOCOL_VERSION, ok: bool, reason: str)
Enums travel as their int values. Decoding is strict: exact shapes, exact types, known enum
values, non-negative integers; anything else is a CodecError, never another exception.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import attrs

from ggap.codec import pack, unpack
from ggap.consensus.raft.types import Entry, EntryKind, Message, MessageType, SnapshotMeta
from ggap.types.errors import CodecError

__all__ = [
    "FRAME_HEADER_SIZE",
    "MAGIC",
    "MAX_FRAME_SIZE",
    "PROTOCOL_VERSION",
    "PURPOSE_RAFT",
    "PURPOSE_SNAPSHOT",
    "REPLY_MAGIC",
    "FrameDecoder",
    "Handshake",
    "HandshakeReply",
    "SnapshotHeader",
    "decode_frame",
    "decode_handshake",
    "decode_messages",
    "decode_reply",
    "decode_snapshot_ack",
    "decode_snapshot_header",
    "encode_frame",
    "encode_handshake",
    "encode_messages",
    "encode_reply",
    "encode_snapshot_ack",
    "encode_snapshot_header",
    "estimate_size",
]

MAGIC = "ggap-peer"
REPLY_MAGIC = "ggap-peer-ack"
SNAPSHOT_MAGIC = "ggap-snap"
SNAPSHOT_ACK_MAGIC = "ggap-snap-ack"
PURPOSE_RAFT = "raft"
PURPOSE_SNAPSHOT = "snapshot"
_PURPOSES = (PURPOSE_RAFT, PURPOSE_SNAPSHOT)
PROTOCOL_VERSION = 1
FRAME_HEADER_SIZE = 8
#: Largest payload a decoder accepts by default; a bigger announced length is rejected
#: from the 8-byte header alone, before any buffering.
MAX_FRAME_SIZE = 64 << 20

_HEADER = struct.Struct(">II")
_LEN = struct.Struct(">I")
_U32_MAX = (1 << 32) - 1
_MESSAGE_FIELDS = 12


# --- frames -----------------------------------------------------------------------------


def _crc(length_bytes: bytes | bytearray | memoryview, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(length_bytes))


def encode_frame(payload: bytes) -> bytes:
    """Wrap `payload` in a frame; CodecError if it cannot be framed (over 4 GiB)."""
    if not isinstance(payload, bytes):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > _U32_MAX:
        raise CodecError(f"payload of {len(payload)} bytes exceeds the 4 GiB frame limit")
    length = _LEN.pack(len(payload))
    return b"".join((length, _LEN.pack(_crc(length, payload)), payload))


def decode_frame(data: bytes, *, max_frame: int = MAX_FRAME_SIZE) -> bytes:
    """The payload of exactly one complete frame; CodecError unless `data` is exactly that."""
    decoder = FrameDecoder(max_frame=max_frame)
    decoder.feed(data)
    payload = decoder.next_frame()
    if payload is None:
        raise CodecError(f"truncated frame: {len(data)} bytes")
    if decoder.buffered:
        raise CodecError(f"{decoder.buffered} trailing bytes after frame")
    return payload


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    Feed whatever the socket returned, then call `next_frame` until it returns None. After a
    CodecError the stream is unusable (framing is lost): close the connection.
    """

    __slots__ = ("_buf", "_need", "max_frame")

    def __init__(self, *, max_frame: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame <= _U32_MAX:
            raise ValueError(f"max_frame must be in 1..{_U32_MAX}, got {max_frame}")
        self.max_frame = max_frame
        self._buf = bytearray()
        self._need = FRAME_HEADER_SIZE  # bytes needed before next_frame can make progress

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as a frame (a partial frame at EOF is a truncation)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, or None if more bytes are needed.

        Error handling: CodecError for a length over `max_frame` (raised as soon as the
        header is in, so a hostile length never makes us buffer it) or a CRC mismatch.
        """
        buf = self._buf
        if len(buf) < self._need:
            return None
        length, stored = _HEADER.unpack_from(buf, 0)
        if length > self.max_frame:
            raise CodecError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        end = FRAME_HEADER_SIZE + length
        if len(buf) < end:
            self._need = end
            return None
        view = memoryview(buf)
        try:
            computed = _crc(view[:4], view[FRAME_HEADER_SIZE:end])
            payload = bytes(view[FRAME_HEADER_SIZE:end])
        finally:
            view.release()
        if computed != stored:
            raise CodecError(f"frame crc mismatch: stored 0x{stored:08x}, computed 0x{computed:08x}")
        del buf[:end]
        self._need = FRAME_HEADER_SIZE
        return payload


# --- handshake --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Handshake:
    """Who is calling whom: the first frame on every peer connection."""

    cluster_id: str
    from_id: int
    to_id: int
    version: int = PROTOCOL_VERSION
    purpose: str = PURPOSE_RAFT


@attrs.frozen(slots=True)
class HandshakeReply:
    """The server's verdict on a handshake; `reason` says why when not accepted."""

    accepted: bool
    reason: str = ""
    version: int = PROTOCOL_VERSION


def _tuple(v: object, what: str, size: int | None = None) -> tuple[object, ...]:
    if not isinstance(v, tuple):
        raise CodecError(f"{what}: expected a list, got {type(v).__name__}")
    if size is not None and len(v) != size:
        raise CodecError(f"{what}: expected {size} fields, got {len(v)}")
    return v


def _uint(v: object, what: str) -> int:
    # bool is an int subclass; the codec has distinct tags for them, so insist on int itself.
    if type(v) is not int:
        raise CodecError(f"{what}: expected an int, got {type(v).__name__}")
    if v < 0:
        raise CodecError(f"{what}: expected a non-negative int, got {v}")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise CodecError(f"{what}: expected a bool, got {type(v).__name__}")
    return v


def _bytes(v: object, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"{what}: expected bytes, got {type(v).__name__}")
    return v


def _str(v: object, what: str) -> str:
    if type(v) is not str:
        raise CodecError(f"{what}: expected a str, got {type(v).__name__}")
    return v


def _versioned(payload: bytes, magic: str, what: str) -> tuple[object, ...]:
    """Check magic and version first, so a newer peer gets "unsupported version", not "malformed"."""
    value = _tuple(unpack(payload), what)
    if len(value) < 2 or value[0] != magic:
        raise CodecError(f"{what}: not a ggap peer {what}")
    version = _uint(value[1], f"{what} version")
    if version != PROTOCOL_VERSION:
        raise CodecError(
            f"{what}: unsupported protocol version {version} (this node speaks {PROTOCOL_VERSION})"
        )
    return value


def encode_handshake(hs: Handshake) -> bytes:
    fields: tuple[object, ...] = (
        MAGIC,
        hs.version,
        _str(hs.cluster_id, "cluster_id"),
        _uint(hs.from_id, "from_id"),
        _uint(hs.to_id, "to_id"),
    )
    if hs.purpose != PURPOSE_RAFT:
        if hs.purpose not in _PURPOSES:
            raise CodecError(f"handshake: unknown purpose {hs.purpose!r}")
        fields += (hs.purpose,)
    return pack(fields)


def decode_handshake(payload: bytes) -> Handshake:
    """Inverse of encode_handshake; CodecError for a wrong magic, version or shape."""
    value = _versioned(payload, MAGIC, "handshake")
    if len(value) != 6:
        _tuple(value, "handshake", 5)
    purpose = PURPOSE_RAFT
    if len(value) == 6:
        purpose = _str(value[5], "handshake purpose")
        if purpose not in _PURPOSES:
            raise CodecError(f"handshake: unknown purpose {purpose!r}")
    return Handshake(
        cluster_id=_str(value[2], "handshake cluster_id"),
        from_id=_uint(value[3], "handshake from_id"),
        to_id=_uint(value[4], "handshake to_id"),
        purpose=purpose,
    )


@attrs.frozen(slots=True)
class SnapshotHeader:
    """What a snapshot connection carries: the SNAPSHOT message and its data's size and hash."""

    message: Message
    size: int
    sha256: str


def encode_snapshot_header(h: SnapshotHeader) -> bytes:
    if h.message.type is not MessageType.SNAPSHOT or h.message.snapshot is None:
        raise CodecError("snapshot header: the message must be a SNAPSHOT with metadata")
    fields = (SNAPSHOT_MAGIC, PROTOCOL_VERSION, _message_value(h.message), _uint(h.size, "size"), h.sha256)
    return pack(fields)


def decode_snapshot_header(payload: bytes) -> SnapshotHeader:
    value = _versioned(payload, SNAPSHOT_MAGIC, "snapshot header")
    _tuple(value, "snapshot header", 5)
    msg = _decode_message(value[2])
    if msg.type is not MessageType.SNAPSHOT or msg.snapshot is None:
        raise CodecError("snapshot header: the message is not a SNAPSHOT with metadata")
    sha = _str(value[4], "snapshot sha256")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise CodecError("snapshot header: sha256 must be 64 lowercase hex digits")
    return SnapshotHeader(message=msg, size=_uint(value[3], "snapshot size"), sha256=sha)


def encode_snapshot_ack(ok: bool, reason: str = "") -> bytes:
    return pack((SNAPSHOT_ACK_MAGIC, PROTOCOL_VERSION, _bool(ok, "ok"), _str(reason, "reason")))


def decode_snapshot_ack(payload: bytes) -> tuple[bool, str]:
    value = _versioned(payload, SNAPSHOT_ACK_MAGIC, "snapshot verdict")
    _tuple(value, "snapshot verdict", 4)
    return _bool(value[2], "snapshot ok"), _str(value[3], "snapshot reason")


def encode_reply(reply: HandshakeReply) -> bytes:
    return pack((REPLY_MAGIC, reply.version, _bool(reply.accepted, "accepted"), _str(reply.reason, "reason")))


def decode_reply(payload: bytes) -> HandshakeReply:
    """Inverse of encode_reply; CodecError for a wrong magic, version or shape."""
    value = _versioned(payload, REPLY_MAGIC, "reply")
    _tuple(value, "reply", 4)
    return HandshakeReply(accepted=_bool(value[2], "reply accepted"), reason=_str(value[3], "reply reason"))


# --- messages ---------------------------------------------------------------------------


def _entry_value(e: Entry) -> tuple[object, ...]:
    return (
        _uint(e.index, "entry index"),
        _uint(e.term, "entry term"),
        _uint(int(e.kind), "entry kind"),
        _bytes(e.data, "entry data"),
    )


def _snapshot_value(s: SnapshotMeta | None) -> tuple[object, ...] | None:
    if s is None:
        return None
    return (
        _uint(s.index, "snapshot index"),
        _uint(s.term, "snapshot term"),
        tuple(_uint(v, "snapshot voter") for v in s.voters),
        tuple(_uint(v, "snapshot learner") for v in s.learners),
    )


def _message_value(m: Message) -> tuple[object, ...]:
    if not isinstance(m, Message):
        raise CodecError(f"expected a Message, got {type(m).__name__}")
    return (
        _uint(int(m.type), "type"),
        _uint(m.to, "to"),
        _uint(m.frm, "frm"),
        _uint(m.term, "term"),
        _uint(m.log_term, "log_term"),
        _uint(m.index, "index"),
        tuple(_entry_value(e) for e in m.entries),
        _uint(m.commit, "commit"),
        _bool(m.reject, "reject"),
        _uint(m.reject_hint, "reject_hint"),
        _bytes(m.context, "context"),
        _snapshot_value(m.snapshot),
    )


def encode_messages(msgs: Sequence[Message]) -> bytes:
    """One batch payload; CodecError if any message holds a value the wire cannot carry
    (a negative or over-64-bit number, a wrong type), so a bad message fails at the sender."""
    return pack(tuple(_message_value(m) for m in msgs))


def _enum(cls: type[MessageType] | type[EntryKind], v: object, what: str) -> MessageType | EntryKind:
    n = _uint(v, what)
    try:
        return cls(n)
    except ValueError:
        raise CodecError(f"{what}: unknown {cls.__name__} {n}") from None


def _decode_entry(v: object) -> Entry:
    t = _tuple(v, "entry", 4)
    return Entry(
        index=_uint(t[0], "entry index"),
        term=_uint(t[1], "entry term"),
        kind=_enum(EntryKind, t[2], "entry kind"),  # type: ignore[arg-type]
        data=_bytes(t[3], "entry data"),
    )


def _decode_snapshot(v: object) -> SnapshotMeta | None:
    if v is None:
        return None
    t = _tuple(v, "snapshot", 4)
    return SnapshotMeta(
        index=_uint(t[0], "snapshot index"),
        term=_uint(t[1], "snapshot term"),
        voters=tuple(_uint(x, "snapshot voter") for x in _tuple(t[2], "snapshot voters")),
        learners=tuple(_uint(x, "snapshot learner") for x in _tuple(t[3], "snapshot learners")),
    )


def _decode_message(v: object) -> Message:
    t = _tuple(v, "message", _MESSAGE_FIELDS)
    return Message(
        type=_enum(MessageType, t[0], "message type"),  # type: ignore[arg-type]
        to=_uint(t[1], "to"),
        frm=_uint(t[2], "frm"),
        term=_uint(t[3], "term"),
        log_term=_uint(t[4], "log_term"),
        index=_uint(t[5], "index"),
        entries=tuple(_decode_entry(e) for e in _tuple(t[6], "entries")),
        commit=_uint(t[7], "commit"),
        reject=_bool(t[8], "reject"),
        reject_hint=_uint(t[9], "reject_hint"),
        context=_bytes(t[10], "context"),
        snapshot=_decode_snapshot(t[11]),
    )


def decode_messages(data: bytes) -> list[Message]:
    """Inverse of encode_messages; CodecError for anything it would not have produced."""
    return [_decode_message(v) for v in _tuple(unpack(data), "batch")]


# Worst-case overhead of the encoding: a tag byte plus a 10-byte varint per number, a tag and
# a count per list; the estimate errs high so batches stay under their byte budget.
_MESSAGE_OVERHEAD = 160
_ENTRY_OVERHEAD = 48
_SNAPSHOT_OVERHEAD = 64
_ID_OVERHEAD = 11


def estimate_size(m: Message) -> int:
    """An upper-bound guess of `m`'s encoded size, without encoding it (for byte budgets)."""
    size = _MESSAGE_OVERHEAD + len(m.context)
    for e in m.entries:
        size += _ENTRY_OVERHEAD + len(e.data)
    if m.snapshot is not None:
        size += _SNAPSHOT_OVERHEAD + _ID_OVERHEAD * (len(m.snapshot.voters) + len(m.snapshot.learners))
    return size
