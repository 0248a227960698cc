"""ggap.rpc.http2 against h2 and hpack, the reference implementations, in process."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ggap.rpc import http2

HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/ginnungagap.v1.KvService/Put"),
    (":authority", "127.0.0.1:1"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    ("grpc-timeout", "4999m"),
]


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Pair:
    """An h2 client and our server connection, past the preface and SETTINGS."""

    def __init__(self, *, client_settings: dict[int, int] | None = None, **server: int) -> None:
        options = {"max_concurrent_streams": 16, "initial_window_size": 1 << 20} | server
        self.server = http2.ServerConnection(**options)
        self.server.initiate_connection()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.to_server()
        self.to_client()
        self.to_server()

    def to_server(self) -> list[http2.Event]:
        return self.server.receive_data(self.client.data_to_send())

    def to_client(self) -> list[h2.events.Event]:
        return self.client.receive_data(self.server.data_to_send())

    def request(self, headers: list[tuple[str, str]] = HEADERS, body: bytes = b"", **data: int) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers)
        self.client.send_data(sid, body, end_stream=True, **data)
        return sid


def test_a_unary_call_round_trip() -> None:
    pair = Pair()
    sid = pair.request(body=b"x" * 300, pad_length=20)
    events = pair.to_server()
    assert [type(e) for e in events] == [http2.RequestReceived, http2.DataReceived, http2.StreamEnded]
    request, data, _ = events
    assert isinstance(request, http2.RequestReceived) and isinstance(data, http2.DataReceived)
    assert request.headers == HEADERS and request.malformed is None and not request.stream_ended
    assert data.data == b"x" * 300 and data.flow_controlled_length == 300 + 20 + 1
    pair.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc+proto")])
    pair.server.send_data(sid, b"answer")
    pair.server.send_headers(sid, [("grpc-status", "0")], end_stream=True)
    got = pair.to_client()
    kinds = [type(e) for e in got]
    assert kinds[:4] == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.TrailersReceived,
        h2.events.StreamEnded,
    ]
    assert dict(got[0].headers)[":status"] == "200" and got[1].data == b"answer"
    assert pair.server.streams == {}  # closed both ways: forgotten
    with pytest.raises(http2.StreamClosedError):
        pair.server.send_data(sid, b"late")


def test_header_blocks_in_continuation_frames_both_ways() -> None:
    pair = Pair(max_header_list_size=1 << 17)
    big = [*HEADERS, ("x-big", "v" * 40_000)]
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, big, end_stream=False)
    pair.client.send_data(sid, b"", end_stream=True)
    request = pair.to_server()[0]
    assert isinstance(request, http2.RequestReceived) and request.headers == big
    pair.server.send_headers(sid, [(":status", "200"), ("x-big", "w" * 40_000)], end_stream=True)
    got = pair.to_client()
    assert isinstance(got[0], h2.events.ResponseReceived)
    assert dict(got[0].headers)["x-big"] == "w" * 40_000


def test_flow_control_towards_the_client() -> None:
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    sid = pair.request()
    pair.to_server()
    assert pair.server.local_flow_control_window(sid) == 100
    pair.server.send_headers(sid, [(":status", "200")])
    pair.server.send_data(sid, b"a" * 100)
    assert pair.server.local_flow_control_window(sid) == 0
    with pytest.raises(ValueError):
        pair.server.send_data(sid, b"b")
    got = pair.to_client()
    data = next(e for e in got if isinstance(e, h2.events.DataReceived))
    pair.client.acknowledge_received_data(data.flow_controlled_length, sid)
    pair.client.increment_flow_control_window(50, stream_id=sid)
    updates = [e for e in pair.to_server() if isinstance(e, http2.WindowUpdated)]
    assert sid in {e.stream_id for e in updates}
    assert pair.server.local_flow_control_window(sid) >= 50
    # The client raises its initial window: every open stream gets the difference.
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    assert any(isinstance(e, http2.SettingsChanged) for e in pair.to_server())
    assert pair.server.local_flow_control_window(sid) >= 950


def test_window_is_given_back_in_batches() -> None:
    pair = Pair(initial_window_size=1000)
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, HEADERS)
    pair.client.send_data(sid, b"z" * 600)
    events = pair.to_server()
    data = next(e for e in events if isinstance(e, http2.DataReceived))
    pair.server.acknowledge_received_data(100, sid)
    assert not [e for e in pair.to_client() if isinstance(e, h2.events.WindowUpdated)]
    pair.server.acknowledge_received_data(data.flow_controlled_length - 100, sid)
    updates = [e for e in pair.to_client() if isinstance(e, h2.events.WindowUpdated)]
    assert [(e.stream_id, e.delta) for e in updates] == [(sid, 600)]


def test_client_reset_and_late_data() -> None:
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, HEADERS)
    pair.to_server()
    window = pair.server.inbound_window
    pair.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    events = pair.to_server()
    assert events == [http2.StreamReset(sid, h2.errors.ErrorCodes.CANCEL, remote=True)]
    assert sid not in pair.server.streams
    # DATA the client had in flight: counted for the connection, given back, no event.
    late = frame(0x0, 0x0, sid, b"q" * 100)
    assert pair.server.receive_data(late) == []
    assert pair.server.inbound_window == window - 100
    assert pair.server._conn_unacked == 100
    with pytest.raises(http2.StreamClosedError):
        pair.server.send_headers(sid, [(":status", "200")])


def test_streams_over_the_limit_are_refused_alone() -> None:
    pair = Pair(max_concurrent_streams=2)
    enc = hpack.Encoder()  # raw frames: h2's client would not open the third stream at all
    sids = [1, 3, 5]
    events = pair.server.receive_data(b"".join(frame(0x1, 0x4, sid, enc.encode(HEADERS)) for sid in sids))
    assert {e.stream_id for e in events if isinstance(e, http2.RequestReceived)} == set(sids[:2])
    assert pair.server.refused_streams == [sids[2]]
    assert frame(0x3, 0, 5, struct.pack(">I", 7)) in pair.server.data_to_send()
    # Its DATA counts for the connection and is given back; a stream freed makes room.
    assert pair.server.receive_data(frame(0x0, 0x1, 5, b"q" * 10)) == []
    pair.server.reset_stream(sids[0], http2.ErrorCode.CANCEL)
    events = pair.server.receive_data(frame(0x1, 0x4, 7, enc.encode(HEADERS)))
    assert isinstance(events[0], http2.RequestReceived) and 7 in pair.server.streams


def test_trailers_and_headers_only_requests() -> None:
    pair = Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, HEADERS)
    pair.client.send_data(sid, b"m")
    pair.client.send_headers(sid, [("x-trailer", "1")], end_stream=True)
    kinds = [type(e) for e in pair.to_server()]
    assert kinds == [
        http2.RequestReceived,
        http2.DataReceived,
        http2.TrailersReceived,
        http2.StreamEnded,
    ]
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_headers(sid, HEADERS, end_stream=True)
    request, ended = pair.to_server()
    assert isinstance(request, http2.RequestReceived) and request.stream_ended
    assert ended == http2.StreamEnded(sid)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(":method", "POST"), (":path", "/a/b")], "without :method"),
        ([*HEADERS, (":path", "/x/y")], "pseudo-header :path after"),
        ([(":method", "POST"), (":method", "POST"), *HEADERS[1:]], "twice"),
        ([*HEADERS[:4], (":status", "200"), *HEADERS[4:]], "not one of a request's"),
        ([*HEADERS, ("connection", "close")], "connection-specific"),
        ([*HEADERS[:4], ("te", "gzip"), *HEADERS[5:]], "te other than"),
        ([*HEADERS, ("X-Upper", "1")], "upper case"),
    ],
)
def test_malformed_requests_are_flagged_for_that_stream(headers: list[tuple[str, str]], reason: str) -> None:
    pair = Pair()
    block = hpack.Encoder().encode(headers)
    sid = 1
    events = pair.server.receive_data(frame(0x1, 0x4, sid, block))
    assert isinstance(events[0], http2.RequestReceived) and reason in (events[0].malformed or "")
    assert sid in pair.server.streams  # the layer above answers it with a status
    assert isinstance(
        pair.server.receive_data(frame(0x1, 0x4, 3, hpack.Encoder().encode(HEADERS)))[0],
        http2.RequestReceived,
    )


def test_oversized_header_list_is_flagged_and_the_table_stays_in_step() -> None:
    pair = Pair(max_header_list_size=1024)
    enc = hpack.Encoder()
    big = [*HEADERS, ("x-big", "v" * 2000)]
    events = pair.server.receive_data(frame(0x1, 0x4, 1, enc.encode(big)))
    assert isinstance(events[0], http2.RequestReceived) and "over 1024" in (events[0].malformed or "")
    # The same encoder's next block refers to entries the oversized block added.
    events = pair.server.receive_data(frame(0x1, 0x4, 3, enc.encode(HEADERS)))
    assert isinstance(events[0], http2.RequestReceived) and events[0].headers == HEADERS


def test_ping_is_answered() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    assert pair.to_server() == []
    acks = [e for e in pair.to_client() if isinstance(e, h2.events.PingAckReceived)]
    assert [e.ping_data for e in acks] == [b"12345678"]


CONNECTION_ERRORS = {
    "data on stream 0": (frame(0x0, 0, 0, b"x"), http2.ErrorCode.PROTOCOL_ERROR),
    "headers on an even stream": (frame(0x1, 0x4, 2, b"\x82"), http2.ErrorCode.PROTOCOL_ERROR),
    "window update of 0": (frame(0x8, 0, 0, b"\x00" * 4), http2.ErrorCode.PROTOCOL_ERROR),
    "frame over the size limit": (b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", http2.ErrorCode.FRAME_SIZE_ERROR),
    "data on an idle stream": (frame(0x0, 0x1, 7, b"\x00" * 5), http2.ErrorCode.PROTOCOL_ERROR),
    "bad hpack": (frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff\x7f"), http2.ErrorCode.COMPRESSION_ERROR),
    "index not in table": (frame(0x1, 0x5, 1, b"\xbf"), http2.ErrorCode.COMPRESSION_ERROR),
    "settings of bad length": (frame(0x4, 0, 0, b"\x00\x01\x00"), http2.ErrorCode.FRAME_SIZE_ERROR),
    "push promise": (frame(0x5, 0x4, 1, b"\x00\x00\x00\x02"), http2.ErrorCode.PROTOCOL_ERROR),
    "frame inside a header block": (
        frame(0x1, 0, 1, b"\x82") + frame(0x6, 0, 0, b"\x00" * 8),
        http2.ErrorCode.PROTOCOL_ERROR,
    ),
    "rst on an idle stream": (frame(0x3, 0, 9, b"\x00" * 4), http2.ErrorCode.PROTOCOL_ERROR),
    "connection window overflow": (frame(0x8, 0, 0, b"\x7f\xff\xff\xff"), http2.ErrorCode.FLOW_CONTROL_ERROR),
    "header block flood": (
        frame(0x1, 0, 1, b"\x82") + b"".join(frame(0x9, 0, 1, b"\x82" * 8000) for _ in range(8)),
        http2.ErrorCode.ENHANCE_YOUR_CALM,
    ),
}


@pytest.mark.parametrize("name", sorted(CONNECTION_ERRORS))
def test_connection_errors_raise_and_queue_goaway(name: str) -> None:
    data, code = CONNECTION_ERRORS[name]
    pair = Pair()
    with pytest.raises(http2.ProtocolError) as caught:
        pair.server.receive_data(data)
    assert caught.value.error_code == code
    gone = [e for e in pair.to_client() if isinstance(e, h2.events.ConnectionTerminated)]
    assert [e.error_code for e in gone] == [code]
    with pytest.raises(http2.ProtocolError):
        pair.server.receive_data(b"")


def test_preface_is_checked_and_must_end_in_settings() -> None:
    conn = http2.ServerConnection(max_concurrent_streams=1, initial_window_size=65535)
    assert conn.receive_data(http2.PREFACE[:10]) == [] and conn.partial_frame_pending()
    with pytest.raises(http2.ProtocolError):
        conn.receive_data(b"GET / HTTP/1.1\r\n")
    conn = http2.ServerConnection(max_concurrent_streams=1, initial_window_size=65535)
    with pytest.raises(http2.ProtocolError):
        conn.receive_data(http2.PREFACE + frame(0x6, 0, 0, b"\x00" * 8))


def test_stream_window_overrun_is_a_stream_error() -> None:
    pair = Pair(initial_window_size=70_000)
    pair.server.increment_flow_control_window(1 << 20)  # as purerpc does: only the stream's is short
    pair.server.receive_data(frame(0x1, 0x4, 1, hpack.Encoder().encode(HEADERS)))
    overrun = b"".join(frame(0x0, 0, 1, b"d" * 16_000) for _ in range(5))
    events = pair.server.receive_data(overrun)
    assert http2.StreamReset(1, http2.ErrorCode.FLOW_CONTROL_ERROR, remote=False) in events
    assert 1 not in pair.server.streams


# -- HPACK ---------------------------------------------------------------------------------------

header_name = st.one_of(
    st.sampled_from([":path", "content-type", "grpc-timeout", "user-agent", "x-trace", "te", "x-bin-bin"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=30),
)
header_value = st.one_of(
    st.sampled_from(["", "trailers", "application/grpc", "4999m", "1S", "grpc-python/1.66.0"]),
    st.text(min_size=0, max_size=200),
)
header_lists = st.lists(st.tuples(header_name, header_value), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(header_lists, st.booleans(), st.booleans(), st.sampled_from([None, 0, 256, 4096])),
        min_size=1,
        max_size=12,
    )
)
def test_hpack_decoder_agrees_with_hpack(
    blocks: list[tuple[list[tuple[str, str]], bool, bool, int | None]],
) -> None:
    """Whatever hpack's encoder does (indexing, Huffman or not, never-indexed, table size
    changes), our decoder reads the same header lists and keeps the same table."""
    enc = hpack.Encoder()
    ours = http2.HpackDecoder(max_header_list_size=1 << 20)
    theirs = hpack.Decoder(max_header_list_size=1 << 20)
    for headers, huffman, never_indexed, resize in blocks:
        if resize is not None:
            enc.header_table_size = resize
        fields = [hpack.NeverIndexedHeaderTuple(n, v) if never_indexed else (n, v) for n, v in headers]
        block = enc.encode(fields, huffman=huffman)
        decoded, oversized = ours.decode(block)
        assert decoded == [(n, v) for n, v in theirs.decode(block)]
        assert not oversized
        assert ours._table == list(
            reversed([(bytes(n).decode(), bytes(v).decode()) for n, v in theirs.header_table.dynamic_entries])
        )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_hpack_decoder_refuses_garbage_with_its_own_error(block: bytes) -> None:
    try:
        ours = http2.HpackDecoder(max_header_list_size=1 << 16).decode(block)
    except http2.HpackError:
        return
    assert isinstance(ours[0], list)


@settings(max_examples=200, deadline=None)
@given(header_lists)
def test_our_header_blocks_decode_with_hpack(headers: list[tuple[str, str]]) -> None:
    assert hpack.Decoder().decode(http2.encode_header_block(headers)) == headers
