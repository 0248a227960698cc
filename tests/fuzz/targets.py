"""Fuzz targets: each takes arbitrary bytes and fails (an exception other than the ones it
documents, or an AssertionError) only on a bug.

- `peer_wire`: the peer port's frame decoder and every payload decoder behind it raise
  only CodecError, and whatever decodes re-encodes to the same value.
- `command_codec`: the pure and the Cython codec agree on every input (same value, or the
  same error class), and a command that decodes round-trips byte for byte.
- `convert`: any protobuf request the client port can parse converts to a command or
  raises one of our typed errors (INVALID_ARGUMENT and friends, never a crash), and every
  command it produces is one the log codec can store and read back.
- `h2_frontdoor`: the client port's sans-I/O HTTP/2 layer (`GuardedConnection`) lets only
  http2.ProtocolError (a connection error, RFC 9113) escape `receive_data`, and what it
  holds for handlers never goes over its budget.

Run them with `make fuzz` (atheris, coverage-guided; tests/fuzz/run.py); `make test` runs
a short pass, and tests/unit/test_fuzz_regressions.py pins what they found.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import MessageReceived

from ggap.codec import _pure, decode_command, encode_command
from ggap.codec.commands import command_from_value
from ggap.config.model import LimitsConfig
from ggap.pb import kv_pb2 as pb
from ggap.rpc import http2
from ggap.rpc.frontdoor import ConnectionLimits, GuardedConnection
from ggap.server import convert
from ggap.transport import wire
from ggap.types import ReadMode
from ggap.types.errors import CodecError, GgapError, StatusCode

try:
    from ggap import _fastlog
except ImportError:  # not built: the pure path is checked alone
    _fastlog = None  # type: ignore[assignment]

# -- peer wire -----------------------------------------------------------------------------

_PAYLOAD_DECODERS: list[Callable[[bytes], object]] = [
    wire.decode_messages,
    wire.decode_handshake,
    wire.decode_reply,
    wire.decode_snapshot_header,
    wire.decode_snapshot_ack,
]


def peer_wire(data: bytes) -> None:
    if not data:
        return
    # First byte: chunk size for feeding the decoder (how TCP might split the stream).
    chunk = data[0] % 64 + 1
    stream = data[1:]
    decoder = wire.FrameDecoder(max_frame=1 << 16)
    frames: list[bytes] = []
    try:
        for i in range(0, len(stream), chunk):
            decoder.feed(stream[i : i + chunk])
            while (frame := decoder.next_frame()) is not None:
                frames.append(frame)
    except CodecError:
        pass
    # The payload decoders see both framed payloads and the raw bytes themselves (a valid
    # CRC is hard to hit by chance; a peer with a bug computes it over bad bytes anyway).
    for payload in [*frames, stream]:
        for decode in _PAYLOAD_DECODERS:
            try:
                value = decode(payload)
            except CodecError:
                continue
            if decode is wire.decode_messages:
                assert isinstance(value, list)
                again = wire.encode_messages(value)
                assert wire.decode_messages(again) == value
                for m in value:
                    assert wire.estimate_size(m) >= 0
            elif decode is wire.decode_handshake:
                assert isinstance(value, wire.Handshake)
                assert wire.decode_handshake(wire.encode_handshake(value)) == value
            elif decode is wire.decode_reply:
                assert isinstance(value, wire.HandshakeReply)
                assert wire.decode_reply(wire.encode_reply(value)) == value
            elif decode is wire.decode_snapshot_header:
                assert isinstance(value, wire.SnapshotHeader)
                assert wire.decode_snapshot_header(wire.encode_snapshot_header(value)) == value


# -- command codec: pure and Cython must agree ----------------------------------------------


def _outcome(fn: Callable[[bytes], object], data: bytes) -> tuple[str, object]:
    try:
        return "ok", fn(data)
    except CodecError as exc:
        return "CodecError", type(exc)
    # Anything else escapes: that is a finding.


def command_codec(data: bytes) -> None:
    py = _outcome(_pure.unpack, data)
    if _fastlog is not None:
        c = _outcome(_fastlog.unpack, data)
        assert py == c, f"unpack disagrees: py={py!r} c={c!r}"
    py_entry = _outcome(_pure.decode_entry, data)
    if _fastlog is not None:
        c_entry = _outcome(_fastlog.decode_entry, data)
        assert py_entry == c_entry, f"decode_entry disagrees: py={py_entry!r} c={c_entry!r}"
    if py[0] == "ok":
        value = py[1]
        packed = _pure.pack(value)
        if _fastlog is not None:
            assert _fastlog.pack(value) == packed
        assert _pure.unpack(packed) == value
        try:
            cmd = command_from_value(value)
        except CodecError:
            return
        encoded = encode_command(cmd)
        assert decode_command(encoded) == cmd
        assert encode_command(decode_command(encoded)) == encoded


# -- request converters --------------------------------------------------------------------

_LIMITS = LimitsConfig(max_key_bytes=64, max_value_bytes=256, max_txn_ops=8)
_CLIENT_ERRORS = {StatusCode.INVALID_ARGUMENT, StatusCode.OUT_OF_RANGE, StatusCode.RESOURCE_EXHAUSTED}
_REQUESTS = [
    pb.PutRequest,
    pb.DeleteRequest,
    pb.TxnRequest,
    pb.GetRequest,
    pb.RangeRequest,
    pb.HistoryRequest,
]


def _convert(req: object) -> object:
    if isinstance(req, pb.PutRequest):
        convert.quorum_all(req.quorum)
        return convert.put_command(req, _LIMITS, now_ms=1_700_000_000_000, max_ttl_ms=0)
    if isinstance(req, pb.DeleteRequest):
        convert.quorum_all(req.quorum)
        return convert.delete_command(req, _LIMITS)
    if isinstance(req, pb.TxnRequest):
        convert.quorum_all(req.quorum)
        return convert.txn_command(req, _LIMITS, now_ms=1_700_000_000_000, max_ttl_ms=0)
    if isinstance(req, pb.GetRequest):
        convert.read_mode(req.read_mode, ReadMode.LINEARIZABLE)
        return convert.txn_get(req, _LIMITS)
    if isinstance(req, pb.RangeRequest):
        convert.read_mode(req.read_mode, ReadMode.LINEARIZABLE)
        convert.non_negative(req.limit, "limit")
        return convert.txn_range(req, _LIMITS)
    assert isinstance(req, pb.HistoryRequest)
    convert.read_mode(req.read_mode, ReadMode.LINEARIZABLE)
    return convert.non_negative(req.limit, "limit")


def convert_request(data: bytes) -> None:
    if not data:
        return
    req = _REQUESTS[data[0] % len(_REQUESTS)]()
    try:
        req.ParseFromString(data[1:])
    except DecodeError:
        return  # answered INVALID_ARGUMENT by the rpc guard before any converter runs
    try:
        result = _convert(req)
    except GgapError as exc:
        assert exc.code in _CLIENT_ERRORS, f"{type(exc).__name__} ({exc.code.name}): {exc}"
        return
    if isinstance(req, pb.PutRequest | pb.DeleteRequest | pb.TxnRequest):
        # What the server accepts, the log must be able to carry.
        encoded = encode_command(result)  # type: ignore[arg-type]
        assert decode_command(encoded) == result


# -- client port HTTP/2 ----------------------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_LIMITS = ConnectionLimits(max_message_bytes=1024, max_concurrent_streams=4, connection_buffer_bytes=2048)


def h2_frontdoor(data: bytes) -> None:
    if not data:
        return
    # First byte: chunk size (low 6 bits), and whether handlers read what arrives (top bit).
    chunk = data[0] % 64 + 1
    handlers_read = bool(data[0] & 0x80)
    conn = GuardedConnection(
        GRPCConfiguration(client_side=False, max_message_length=4 * _H2_LIMITS.max_message_bytes), _H2_LIMITS
    )
    conn.initiate_connection()
    stream = H2_PREFACE + data[1:]
    try:
        for i in range(0, len(stream), chunk):
            for event in conn.receive_data(stream[i : i + chunk]):
                if handlers_read and isinstance(event, MessageReceived):
                    conn.acknowledge_received_data(event.stream_id, event.flow_controlled_length)
            conn.data_to_send()
            held = sum(ledger.received - ledger.acked for ledger in conn._ledgers.values())
            assert conn.buffered == held >= 0, (conn.buffered, held)
            assert conn.buffered <= _H2_LIMITS.buffer_budget, conn.buffered
            assert conn.open_streams <= _H2_LIMITS.max_concurrent_streams
    except http2.ProtocolError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "peer_wire": peer_wire,
    "command_codec": command_codec,
    "convert": convert_request,
    "h2_frontdoor": h2_frontdoor,
}
