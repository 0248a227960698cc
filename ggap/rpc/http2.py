"""The client port's HTTP/2, server side only, sans I/O: what gRPC needs and nothing more.

It replaces h2 under purerpc's gRPC layer (see DESIGN.md, "Why our own HTTP/2"): h2's
general-purpose state machine, event objects, header validation and HPACK were 40-60% of
a busy node's GIL time. This module parses frames straight from one buffer, keeps a
stream as a few counters, decodes HPACK with a cache for the strings grpcio repeats, and
never indexes what it sends (so a header block it built once is valid on any connection).

It speaks RFC 9113 as a server: connection errors raise `ProtocolError` with a GOAWAY
queued; stream errors reset the stream (RST_STREAM) and are reported as `StreamReset`
with `remote=False`. There is no server push, no priority handling (PRIORITY is parsed
and ignored) and no CONNECT.
"""

from __future__ import annotations

import enum
import struct
from typing import Any

import attrs
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable
from purerpc.grpclib.exceptions import StreamClosedError

__all__ = [
    "PREFACE",
    "ConnectionTerminated",
    "DataReceived",
    "ErrorCode",
    "HpackDecoder",
    "ProtocolError",
    "RequestReceived",
    "ServerConnection",
    "SettingsChanged",
    "StreamEnded",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
    "encode_header_block",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_FRAME_SIZE = 16_384
MAX_FRAME_SIZE_LIMIT = 2**24 - 1
HEADER_TABLE_SIZE = 4096  # ours, for decoding: the RFC default, never changed

# Frame types (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# SETTINGS identifiers.
S_HEADER_TABLE_SIZE = 0x1
S_ENABLE_PUSH = 0x2
S_MAX_CONCURRENT_STREAMS = 0x3
S_INITIAL_WINDOW_SIZE = 0x4
S_MAX_FRAME_SIZE = 0x5
S_MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class ProtocolError(Exception):
    """A connection error (RFC 9113 §5.4.1): a GOAWAY is queued; close after sending it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.error_code = code


class _StreamError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error_code = code


class HpackError(Exception):
    """The header block does not decode (a COMPRESSION_ERROR for the connection)."""


# -- events ----------------------------------------------------------------------------------


@attrs.define(slots=True)
class RequestReceived:
    stream_id: int
    headers: list[tuple[str, str]]
    stream_ended: bool
    # A reason the headers make this request malformed (RFC 9113 §8.1.1), or None.
    malformed: str | None = None


@attrs.define(slots=True)
class TrailersReceived:
    stream_id: int


@attrs.define(slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    flow_controlled_length: int


@attrs.define(slots=True)
class StreamEnded:
    stream_id: int


@attrs.define(slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    remote: bool  # the client reset it; False: we did, for a stream error of the client's


@attrs.define(slots=True)
class WindowUpdated:
    stream_id: int
    delta: int


@attrs.define(slots=True)
class SettingsChanged:
    """The client's SETTINGS arrived (and were acknowledged)."""


@attrs.define(slots=True)
class ConnectionTerminated:
    error_code: int
    last_stream_id: int


Event = (
    RequestReceived
    | TrailersReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | SettingsChanged
    | ConnectionTerminated
)

# -- HPACK -------------------------------------------------------------------------------------

_STATIC: tuple[tuple[str, str], ...] = tuple(
    (name.decode("ascii"), value.decode("ascii")) for name, value in HeaderTable.STATIC_TABLE
)
_STATIC_LEN = len(_STATIC)  # 61
_STATIC_NAME_INDEX: dict[str, int] = {}
for _i, (_name, _) in enumerate(_STATIC, start=1):
    _STATIC_NAME_INDEX.setdefault(_name, _i)

_HUFFMAN_CACHE_MAX = 4096


class HpackDecoder:
    """RFC 7541 decoding with a dynamic table of HEADER_TABLE_SIZE octets.

    grpcio repeats the same few strings (its grpc-timeout values, metadata) Huffman-coded;
    decoding them is cached per connection, bounded."""

    def __init__(self, max_header_list_size: int) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_table_size = HEADER_TABLE_SIZE
        self._table: list[tuple[str, str]] = []  # oldest first; index 62 is the last
        self._table_size = 0
        self._huffman: dict[bytes, str] = {}

    def _add(self, name: str, value: str) -> None:
        self._table.append((name, value))
        self._table_size += _entry_size(name, value)
        self._evict(self.max_table_size)  # an entry larger than the table empties it

    def _shrink(self, size: int) -> None:
        if size > HEADER_TABLE_SIZE:
            raise HpackError(f"table size update to {size}, over {HEADER_TABLE_SIZE}")
        self.max_table_size = size
        self._evict(size)

    def _evict(self, limit: int) -> None:
        table = self._table
        while self._table_size > limit:
            self._table_size -= _entry_size(*table.pop(0))

    def _entry(self, index: int) -> tuple[str, str]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        pos = index - _STATIC_LEN
        table = self._table
        if index == 0 or pos > len(table):
            raise HpackError(f"header index {index} is not in the table")
        return table[-pos]

    def decode(self, block: bytes) -> tuple[list[tuple[str, str]], bool]:
        """The header list, and whether it is over max_header_list_size (it is still
        decoded whole, so that the table stays in step with the client's)."""
        out: list[tuple[str, str]] = []
        size = 0
        pos = 0
        end = len(block)
        first = True
        while pos < end:
            b = block[pos]
            if b & 0x80:  # indexed field
                index = b & 0x7F
                pos += 1
                if index == 0x7F:
                    index, pos = _integer(block, pos, 0x7F)
                out.append(self._entry(index))
            elif b & 0x40:  # literal, incremental indexing
                name, value, pos = self._literal(block, pos, 0x3F)
                self._add(name, value)
                out.append((name, value))
            elif b & 0x20:  # dynamic table size update
                if not first:
                    raise HpackError("table size update after a header field")
                new_size = b & 0x1F
                pos += 1
                if new_size == 0x1F:
                    new_size, pos = _integer(block, pos, 0x1F)
                self._shrink(new_size)
                continue
            else:  # literal, without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 0x0F)
                out.append((name, value))
            first = False
            size += len(out[-1][0]) + len(out[-1][1]) + 32
        return out, size > self.max_header_list_size

    def _literal(self, block: bytes, pos: int, mask: int) -> tuple[str, str, int]:
        """A literal field whose name index has a prefix of `mask` bits (0: a literal name)."""
        index = block[pos] & mask
        pos += 1
        if index == mask:
            index, pos = _integer(block, pos, mask)
        if index:
            name = self._entry(index)[0]
        else:
            name, pos = self._string(block, pos)
        value, pos = self._string(block, pos)
        return name, value, pos

    def _string(self, block: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(block):
            raise HpackError("header block ends inside a string")
        b = block[pos]
        length = b & 0x7F
        pos += 1
        if length == 0x7F:
            length, pos = _integer(block, pos, 0x7F)
        stop = pos + length
        if stop > len(block):
            raise HpackError("a string runs past the end of the header block")
        raw = block[pos:stop]
        if b & 0x80:
            text = self._huffman.get(raw)
            if text is None:
                try:
                    text = decode_huffman(raw).decode("utf-8")
                except Exception as exc:  # hpack's own error, or bad UTF-8
                    raise HpackError(f"bad Huffman string: {exc}") from None
                if len(self._huffman) >= _HUFFMAN_CACHE_MAX:
                    self._huffman.clear()
                self._huffman[raw] = text
            return text, stop
        try:
            return raw.decode("utf-8"), stop
        except UnicodeDecodeError:
            raise HpackError("a header string is not UTF-8") from None


def _entry_size(name: str, value: str) -> int:
    """An entry's size in the table: its octets plus 32 (RFC 7541 §4.1)."""
    return len(name.encode()) + len(value.encode()) + 32


def _integer(block: bytes, pos: int, prefix_max: int) -> tuple[int, int]:
    """The rest of an HPACK integer whose prefix was all ones (RFC 7541 §5.1)."""
    value = prefix_max
    shift = 0
    while True:
        if pos >= len(block):
            raise HpackError("header block ends inside an integer")
        b = block[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("an HPACK integer over 2^32")


def _encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_header_block(headers: Any) -> bytes:
    """Headers as literals without indexing (RFC 7541 §6.2.2), names from the static table
    where it has them, no Huffman: the block leaves the client's table alone and is the
    same bytes on every connection."""
    out = bytearray()
    for name, value in headers:
        if isinstance(name, bytes):
            name = name.decode("ascii")
        raw_value = value if isinstance(value, bytes) else str(value).encode("utf-8")
        index = _STATIC_NAME_INDEX.get(name)
        if index is not None:
            out += _encode_integer(index, 4, 0x00)
        else:
            raw_name = name.encode("ascii")
            out.append(0x00)
            out += _encode_integer(len(raw_name), 7, 0x00) + raw_name
        out += _encode_integer(len(raw_value), 7, 0x00) + raw_value
    return bytes(out)


# -- request header checks (RFC 9113 §8.1.1, §8.2, §8.3.1) --------------------------------

_REQUEST_PSEUDO = frozenset((":method", ":scheme", ":path", ":authority"))
_REQUIRED_PSEUDO = frozenset((":method", ":scheme", ":path"))
_CONNECTION_SPECIFIC = frozenset(
    ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
)


def _malformed_request(headers: list[tuple[str, str]]) -> str | None:
    seen: set[str] = set()
    regular = False
    for name, value in headers:
        if not name:
            return "an empty header name"
        if name[0] == ":":
            if regular:
                return f"pseudo-header {name} after a regular header"
            if name not in _REQUEST_PSEUDO:
                return f"pseudo-header {name} is not one of a request's"
            if name in seen:
                return f"pseudo-header {name} twice"
            seen.add(name)
            continue
        regular = True
        if name != name.lower():
            return f"header name {name!r} has upper case"
        if name in _CONNECTION_SPECIFIC:
            return f"connection-specific header {name}"
        if name == "te" and value != "trailers":
            return "te other than 'trailers'"
    if not _REQUIRED_PSEUDO <= seen:
        return "a request without :method, :scheme and :path"
    return None


def _malformed_trailers(headers: list[tuple[str, str]]) -> str | None:
    for name, _ in headers:
        if not name or name[0] == ":":
            return "a pseudo-header in trailers"
    return None


# -- the connection ------------------------------------------------------------------------------

_FRAME_HEADER = struct.Struct(">HBBBI")  # length as 16 + 8 bits, type, flags, stream id
_U32 = struct.Struct(">I")
_U16_U32 = struct.Struct(">HI")
_GOAWAY = struct.Struct(">II")
_CONSTANT_BLOCKS_MAX = 64


class _Stream:
    """A stream that is not closed both ways. Windows: `inbound` is what the client may
    still send us, `outbound` what we may send it."""

    __slots__ = ("inbound", "local_closed", "outbound", "remote_closed", "unacked")

    def __init__(self, inbound: int, outbound: int, remote_closed: bool) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.remote_closed = remote_closed
        self.local_closed = False
        self.unacked = 0


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


class ServerConnection:
    """One HTTP/2 connection, server side. Feed it bytes (`receive_data`), act on the
    events, answer with `send_headers`/`send_data`, and write out `data_to_send()`."""

    def __init__(
        self,
        *,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_frame_size: int = DEFAULT_FRAME_SIZE,
        max_header_list_size: int = 8192,
    ) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.local_initial_window = initial_window_size
        self.max_inbound_frame_size = max_frame_size
        self.max_header_list_size = max_header_list_size
        # A header block may arrive in many CONTINUATION frames: bound what is gathered.
        self.max_header_block_bytes = max(4 * max_header_list_size, 16_384)
        self.streams: dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.refused_streams: list[int] = []
        self.remote_initial_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_FRAME_SIZE
        self.outbound_window = DEFAULT_WINDOW  # the connection's, towards the client
        self.inbound_window = DEFAULT_WINDOW  # the connection's, from the client
        self._inbound_window_max = DEFAULT_WINDOW
        self._conn_unacked = 0
        self.settings_received = False
        self._settings_acked = False
        self.closed = False  # we sent GOAWAY
        self._dead = False  # a connection error happened
        self._preface_pending = True
        self._buf = bytearray()
        self._out = bytearray()
        self._continuation: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._decoder = HpackDecoder(max_header_list_size)
        self._table_reset_pending = True  # our first block tells the client: table size 0
        self._blocks: dict[tuple[Any, ...], bytes] = {}

    # -- outbound -----------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        settings = b"".join(
            _U16_U32.pack(code, value)
            for code, value in (
                (S_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
                (S_INITIAL_WINDOW_SIZE, self.local_initial_window),
                (S_MAX_FRAME_SIZE, self.max_inbound_frame_size),
                (S_MAX_HEADER_LIST_SIZE, self.max_header_list_size),
            )
        )
        self._out += _frame(SETTINGS, 0, 0, settings)

    def increment_flow_control_window(self, increment: int) -> None:
        """Widen the connection's inbound window (purerpc asks for 2^30)."""
        self.inbound_window += increment
        self._inbound_window_max += increment
        self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))

    def data_to_send(self, amount: int | None = None) -> bytes:
        out = self._out
        if amount is None or amount >= len(out):
            data = bytes(out)
            out.clear()
            return data
        data = bytes(out[:amount])
        del out[:amount]
        return data

    def clear_outbound_data_buffer(self) -> None:
        self._out.clear()

    def _header_block(self, headers: Any) -> bytes:
        key = tuple(headers)
        block = self._blocks.get(key)
        if block is None:
            block = encode_header_block(key)
            if len(self._blocks) < _CONSTANT_BLOCKS_MAX:
                self._blocks[key] = block
        if self._table_reset_pending:
            self._table_reset_pending = False
            block = b"\x20" + block  # dynamic table size update: 0 (we never index)
        return block

    def _open_stream(self, stream_id: int) -> _Stream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(stream_id, ErrorCode.STREAM_CLOSED)
        return stream

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False) -> None:
        stream = self._open_stream(stream_id)
        block = self._header_block(headers)
        flags = END_STREAM if end_stream else 0
        limit = self.max_outbound_frame_size
        if len(block) <= limit:
            self._out += _frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._out += _frame(HEADERS, flags, stream_id, block[:limit])
            for at in range(limit, len(block), limit):
                last = at + limit >= len(block)
                self._out += _frame(
                    CONTINUATION, END_HEADERS if last else 0, stream_id, block[at : at + limit]
                )
        if end_stream:
            self._end_local(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self._open_stream(stream_id)
        n = len(data)
        if n > self.outbound_window or n > stream.outbound:
            raise ValueError(f"{n} bytes over the flow-control window of stream {stream_id}")
        self.outbound_window -= n
        stream.outbound -= n
        limit = self.max_outbound_frame_size
        if n <= limit:
            self._out += _frame(DATA, END_STREAM if end_stream else 0, stream_id, data)
        else:
            for at in range(0, n, limit):
                last = at + limit >= n
                self._out += _frame(
                    DATA, END_STREAM if end_stream and last else 0, stream_id, data[at : at + limit]
                )
        if end_stream:
            self._end_local(stream_id, stream)

    def _end_local(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream_id]

    def local_flow_control_window(self, stream_id: int) -> int:
        """Bytes we may send on this stream now (0 for a closed one)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, min(self.outbound_window, stream.outbound))

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """Bytes the application consumed: give them back as window, in batches."""
        if acknowledged_size <= 0:
            return
        self._conn_unacked += acknowledged_size
        if self._conn_unacked >= self._inbound_window_max // 2:
            self.inbound_window += self._conn_unacked
            self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._conn_unacked))
            self._conn_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return  # the client sends no more on it: no window to give
        stream.unacked += acknowledged_size
        if stream.unacked >= self.local_initial_window // 2:
            stream.inbound += stream.unacked
            self._out += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.unacked))
            stream.unacked = 0

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        """RST_STREAM, if the stream is not already closed both ways (then nothing)."""
        if self.streams.pop(stream_id, None) is not None:
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))

    def close_connection(self, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY naming the last stream we saw: streams above it were not processed."""
        self.closed = True
        self._out += _frame(GOAWAY, 0, 0, _GOAWAY.pack(self.last_stream_id, error_code) + debug)

    def partial_frame_pending(self) -> bool:
        """A frame, or a header block awaiting CONTINUATION, is half received."""
        return bool(self._buf) or self._continuation is not None

    # -- inbound ------------------------------------------------------------------------------

    def _fail(self, code: ErrorCode, message: str) -> ProtocolError:
        if not self._dead:
            self._dead = True
            self.close_connection(code, message.encode("ascii", "replace")[:256])
        return ProtocolError(code, message)

    def receive_data(self, data: bytes) -> list[Event]:
        if self._dead:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the connection has failed")
        buf = self._buf
        buf += data
        events: list[Event] = []
        if self._preface_pending:
            n = min(len(buf), len(PREFACE))
            if buf[:n] != PREFACE[:n]:
                raise self._fail(ErrorCode.PROTOCOL_ERROR, "not the HTTP/2 client preface")
            if n < len(PREFACE):
                return events
            del buf[: len(PREFACE)]
            self._preface_pending = False
        pos = 0
        end = len(buf)
        limit = self.max_inbound_frame_size
        try:
            while end - pos >= 9:
                hi, lo, kind, flags, stream_id = _FRAME_HEADER.unpack_from(buf, pos)
                length = (hi << 8) | lo
                if length > limit:
                    raise self._fail(ErrorCode.FRAME_SIZE_ERROR, f"a frame of {length} bytes, over {limit}")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                stream_id &= 0x7FFFFFFF
                if not self.settings_received and kind != SETTINGS:
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, "the client preface must end in SETTINGS")
                if self._continuation is not None and kind != CONTINUATION:
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, "a frame inside a header block")
                if kind == DATA:
                    self._on_data(flags, stream_id, bytes(buf[start:pos]), events)
                elif kind == HEADERS:
                    self._on_headers(flags, stream_id, bytes(buf[start:pos]), events)
                elif kind == WINDOW_UPDATE:
                    self._on_window_update(stream_id, buf[start:pos], events)
                elif kind == SETTINGS:
                    self._on_settings(flags, stream_id, buf[start:pos], events)
                elif kind == RST_STREAM:
                    self._on_rst_stream(stream_id, buf[start:pos], events)
                elif kind == PING:
                    if stream_id:
                        raise self._fail(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
                    if length != 8:
                        raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "PING is not 8 bytes")
                    if not flags & ACK:
                        self._out += _frame(PING, ACK, 0, bytes(buf[start:pos]))
                elif kind == CONTINUATION:
                    self._on_continuation(flags, stream_id, bytes(buf[start:pos]), events)
                elif kind == PRIORITY:
                    if not stream_id:
                        raise self._fail(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
                    if length != 5:
                        raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY is not 5 bytes")
                elif kind == GOAWAY:
                    if stream_id:
                        raise self._fail(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
                    if length < 8:
                        raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY under 8 bytes")
                    last, code = _GOAWAY.unpack_from(buf, start)
                    events.append(ConnectionTerminated(code, last & 0x7FFFFFFF))
                elif kind == PUSH_PROMISE:
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                # Other frame types are extensions: ignored (RFC 9113 §5.5).
        finally:
            del buf[:pos]
        return events

    def _stream_error(self, stream_id: int, code: ErrorCode, events: list[Event]) -> None:
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, code, remote=False))
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        self.inbound_window -= length
        if self.inbound_window < 0:
            raise self._fail(ErrorCode.FLOW_CONTROL_ERROR, "DATA over the connection's window")
        if flags & PADDED:
            payload = self._unpad(payload)
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise self._fail(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            # A stream we closed: its bytes still count for the connection; give them back.
            self.acknowledge_received_data(length, stream_id)
            return
        if stream.remote_closed:
            self.acknowledge_received_data(length, stream_id)
            self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, events)
            return
        stream.inbound -= length
        if stream.inbound < 0:
            self.acknowledge_received_data(length, stream_id)
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        events.append(DataReceived(stream_id, payload, length))
        if flags & END_STREAM:
            self._end_remote(stream_id, stream, events)

    def _end_remote(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream_id]
        events.append(StreamEnded(stream_id))

    def _unpad(self, payload: bytes) -> bytes:
        if not payload:
            raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "a padded frame without its pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "padding as long as the frame")
        return payload[1 : len(payload) - pad]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if not stream_id & 1:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, f"HEADERS on even stream {stream_id}")
        if flags & PADDED:
            payload = self._unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block_done(flags, stream_id, payload, events)
        else:
            self._continuation = (stream_id, flags, bytearray(payload))
            self._check_block_size(len(payload))

    def _check_block_size(self, size: int) -> None:
        if size > self.max_header_block_bytes:
            raise self._fail(
                ErrorCode.ENHANCE_YOUR_CALM, f"a header block of over {self.max_header_block_bytes} bytes"
            )

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "CONTINUATION out of a header block")
        block = pending[2]
        block += payload
        self._check_block_size(len(block))
        if flags & END_HEADERS:
            self._continuation = None
            self._header_block_done(pending[1], stream_id, bytes(block), events)

    def _header_block_done(self, flags: int, stream_id: int, block: bytes, events: list[Event]) -> None:
        try:
            headers, oversized = self._decoder.decode(block)
        except HpackError as exc:
            raise self._fail(ErrorCode.COMPRESSION_ERROR, str(exc)) from None
        end_stream = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:  # trailers
            if stream.remote_closed:
                self._stream_error(stream_id, ErrorCode.STREAM_CLOSED, events)
            elif not end_stream or oversized or _malformed_trailers(headers):
                self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            else:
                events.append(TrailersReceived(stream_id))
                self._end_remote(stream_id, stream, events)
            return
        if stream_id <= self.last_stream_id:
            return  # a stream already closed (our RST may have crossed the client's frames)
        self.last_stream_id = stream_id
        if self.closed:
            return  # past our GOAWAY: not processed, the client may retry it elsewhere
        if len(self.streams) >= self.max_concurrent_streams:
            self.refused_streams.append(stream_id)
            self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(ErrorCode.REFUSED_STREAM))
            return
        malformed = _malformed_request(headers)
        if oversized:
            malformed = f"request headers over {self.max_header_list_size} bytes"
        inbound = (
            self.local_initial_window
            if self._settings_acked
            else max(self.local_initial_window, DEFAULT_WINDOW)
        )
        stream = _Stream(inbound, self.remote_initial_window, end_stream)
        self.streams[stream_id] = stream
        events.append(RequestReceived(stream_id, headers, end_stream, malformed))
        if end_stream:
            events.append(StreamEnded(stream_id))

    def _on_window_update(self, stream_id: int, payload: Any, events: list[Event]) -> None:
        if len(payload) != 4:
            raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        delta = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not delta:
                raise self._fail(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 for the connection")
            self.outbound_window += delta
            if self.outbound_window > MAX_WINDOW:
                raise self._fail(ErrorCode.FLOW_CONTROL_ERROR, "the connection's window over 2^31-1")
            events.append(WindowUpdated(0, delta))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if stream_id > self.last_stream_id:
                raise self._fail(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if not delta:
            self._stream_error(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        stream.outbound += delta
        if stream.outbound > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(stream_id, delta))

    def _on_settings(self, flags: int, stream_id: int, payload: Any, events: list[Event]) -> None:
        if stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "a SETTINGS ACK with a payload")
            self._settings_acked = True
            return
        if len(payload) % 6:
            raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for at in range(0, len(payload), 6):
            code, value = _U16_U32.unpack_from(payload, at)
            if code == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise self._fail(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.remote_initial_window
                self.remote_initial_window = value
                for stream in self.streams.values():
                    stream.outbound += delta
                    if stream.outbound > MAX_WINDOW:
                        raise self._fail(ErrorCode.FLOW_CONTROL_ERROR, "a stream's window over 2^31-1")
            elif code == S_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self.max_outbound_frame_size = value
            elif code == S_ENABLE_PUSH:
                if value > 1:
                    raise self._fail(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
            elif code == S_HEADER_TABLE_SIZE:
                self._table_reset_pending = True  # our blocks never index: size 0 says so
            # MAX_CONCURRENT_STREAMS (we push nothing), MAX_HEADER_LIST_SIZE (advisory), and
            # unknown settings: nothing to do.
        self._out += _frame(SETTINGS, ACK, 0)
        self.settings_received = True
        events.append(SettingsChanged())

    def _on_rst_stream(self, stream_id: int, payload: Any, events: list[Event]) -> None:
        if not stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise self._fail(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if stream_id > self.last_stream_id:
            raise self._fail(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        if self.streams.pop(stream_id, None) is not None:
            events.append(StreamReset(stream_id, _U32.unpack(payload)[0], remote=True))
