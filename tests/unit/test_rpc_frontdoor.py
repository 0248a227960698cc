"""The client port's front door (ggap/rpc/frontdoor.py): per-call refusal of oversized
messages, client cancels, stream and connection limits, handshake and stall timeouts, idle
connections, and the per-connection budget of unfinished messages.

In-process: serve_grpc with the toy servicer of test_rpc_server.py, a real grpcio client,
and a raw HTTP/2 client (the h2 library over a trio socket) for what grpcio never does.
"""

from __future__ import annotations

import functools
import logging
import struct
import zlib
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import hpack
import hyperframe.frame
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import RequestReceived
from purerpc.grpclib.status import Status, StatusCode

from ggap.pb import kv_pb2, kv_pb2_grpc
from ggap.rpc import RpcPolicy, guarded_service, http2, serve_grpc
from ggap.rpc.frontdoor import ConnectionLimits, GuardedConnection
from tests.unit.test_rpc_server import GRPC_OPTIONS, MAX_MESSAGE, Served, Toy, in_thread, wait_until

PUT = "/ginnungagap.v1.KvService/Put"
WATCH = "/ginnungagap.v1.KvService/Watch"


async def serve(nursery: trio.Nursery, **limits: Any) -> Served:
    toy = Toy()
    policy = RpcPolicy(default_timeout_s=5.0, max_in_flight=8, max_message_bytes=MAX_MESSAGE)
    port = await nursery.start(
        functools.partial(
            serve_grpc,
            [guarded_service(toy, policy)],
            "127.0.0.1",
            0,
            max_message_bytes=MAX_MESSAGE,
            limits=ConnectionLimits(**limits),
        )
    )
    return Served(toy, policy, port)


def grpc_frame(payload: bytes, *, compressed: bool = False, declared: int | None = None) -> bytes:
    return struct.pack(">?I", compressed, len(payload) if declared is None else declared) + payload


class RawH2:
    """A hand-driven HTTP/2 client: sends whatever it is told, records every event."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.events: list[Any] = []

    @classmethod
    async def open(cls, port: int) -> RawH2:
        raw = cls(await trio.open_tcp_stream("127.0.0.1", port))
        raw.conn.initiate_connection()
        await raw.flush()
        return raw

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    def start(self, path: str, *extra: tuple[str, str]) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "test"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            *extra,
        ]
        self.conn.send_headers(sid, headers)
        return sid

    async def read_until(self, pred: Any) -> Any:
        with trio.fail_after(5):
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("server closed the connection")
                self.events += self.conn.receive_data(data)
                await self.flush()

    async def status_of(self, sid: int) -> int:
        """The grpc-status the server sent on `sid` (trailers or trailers-only)."""

        def has_status(e: Any) -> bool:
            return getattr(e, "stream_id", None) == sid and any(
                k == "grpc-status" for k, _ in e.headers or ()
            )

        e = await self.read_until(
            lambda e: (
                isinstance(e, (h2.events.TrailersReceived, h2.events.ResponseReceived)) and has_status(e)
            )
        )
        return int(dict(e.headers)["grpc-status"])

    async def alive(self) -> None:
        """The connection still answers: a PING comes back."""
        self.conn.ping(b"pingpong")
        await self.flush()
        await self.read_until(lambda e: isinstance(e, h2.events.PingAckReceived))
        self.events.clear()


async def closed_within(stream: trio.SocketStream, seconds: float) -> float:
    """Seconds until the server closed `stream` (fails if it did not within `seconds`)."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        while True:
            try:
                if not await stream.receive_some(65536):
                    break
            except trio.BrokenResourceError:
                break
    return trio.current_time() - start


# -- oversized messages ----------------------------------------------------------------------


async def test_oversized_messages_fail_alone_and_a_watch_on_the_channel_lives_on(
    nursery: trio.Nursery,
) -> None:
    s = await serve(nursery)
    ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
    try:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        watch = stub.Watch(kv_pb2.WatchRequest(key="a"), timeout=60)
        seen = [(await in_thread(lambda: next(watch))).header.revision]
        with trio.fail_after(60):
            for size in (MAX_MESSAGE + 1, 4 * MAX_MESSAGE + 1, 16 * 1024 * 1024):
                request = kv_pb2.PutRequest(key="big", value=b"x" * size)
                with pytest.raises(grpc.RpcError) as info:
                    await in_thread(lambda r=request: stub.Put(r, timeout=20))  # type: ignore[misc]
                err: Any = info.value
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, err.code(), err.details())
                assert f"over the limit of {MAX_MESSAGE} bytes" in err.details()
                # The same watch stream goes on: its revisions continue without a gap.
                for _ in range(3):
                    seen.append((await in_thread(lambda: next(watch))).header.revision)
                assert seen == list(range(seen[0], seen[0] + len(seen)))
                assert s.policy.in_flight_unary == 0
            reply = await in_thread(
                lambda: stub.Put(kv_pb2.PutRequest(key="ok", value=b"x" * 1000), timeout=5)
            )
            assert reply.header.revision == 1000
        watch.cancel()
    finally:
        ch.close()


async def test_gzip_requests_work_and_a_decompression_bomb_is_refused(nursery: trio.Nursery) -> None:
    s = await serve(nursery)
    ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS, compression=grpc.Compression.Gzip)
    try:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        with trio.fail_after(20):
            reply = await in_thread(
                lambda: stub.Put(kv_pb2.PutRequest(key="ok", value=b"z" * 5000), timeout=5)
            )
            assert reply.header.revision == 5000
            bomb = kv_pb2.PutRequest(key="bomb", value=bytes(64 * MAX_MESSAGE))  # ~64 KiB compressed
            with pytest.raises(grpc.RpcError) as info:
                await in_thread(lambda: stub.Put(bomb, timeout=5))
            err: Any = info.value
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
            assert "decompresses to over the limit" in err.details()
            reply = await in_thread(lambda: stub.Put(kv_pb2.PutRequest(key="ok", value=b"z" * 7), timeout=5))
            assert reply.header.revision == 7
    finally:
        ch.close()


async def test_raw_oversized_declarations_and_bad_encodings_end_only_their_stream(
    nursery: trio.Nursery,
) -> None:
    s = await serve(nursery)
    ok_body = grpc_frame(kv_pb2.PutRequest(key="ok", value=b"abc").SerializeToString())
    with trio.fail_after(20):
        raw = await RawH2.open(s.port)
        # A message declaring 200 MiB: refused from its 5-byte prefix, the stream reset.
        big = raw.start(PUT)
        raw.conn.send_data(big, grpc_frame(b"\0" * 16_000, declared=200 * 1024 * 1024))
        await raw.flush()
        assert await raw.status_of(big) == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        reset = await raw.read_until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == big)
        assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR
        cases = {
            # encoding header -> body -> expected status
            "snappy": (("grpc-encoding", "snappy"), ok_body, grpc.StatusCode.UNIMPLEMENTED),
            "flag-without-encoding": (None, grpc_frame(b"abc", compressed=True), grpc.StatusCode.INTERNAL),
            "not-gzip": (
                ("grpc-encoding", "gzip"),
                grpc_frame(b"not gzip", compressed=True),
                grpc.StatusCode.INTERNAL,
            ),
            "deflate-ok": (
                ("grpc-encoding", "deflate"),
                grpc_frame(
                    zlib.compress(kv_pb2.PutRequest(key="ok", value=b"abcd").SerializeToString()),
                    compressed=True,
                ),
                grpc.StatusCode.OK,
            ),
        }
        for name, (header, body, code) in cases.items():
            sid = raw.start(PUT, *([header] if header else []))
            raw.conn.send_data(sid, body, end_stream=True)
            await raw.flush()
            assert await raw.status_of(sid) == code.value[0], name
        # Headers ending the stream (no message at all), and bad request headers.
        empty = raw.start(PUT)
        raw.conn.end_stream(empty)
        await raw.flush()
        assert await raw.status_of(empty) == grpc.StatusCode.INTERNAL.value[0]
        await raw.alive()
        # The connection still serves a good request.
        sid = raw.start(PUT)
        raw.conn.send_data(sid, ok_body, end_stream=True)
        await raw.flush()
        assert await raw.status_of(sid) == 0
        await raw.stream.aclose()
    assert s.policy.in_flight == 0


# -- cancels and stream limits -------------------------------------------------------------


async def test_client_cancel_frees_the_slot_at_once(nursery: trio.Nursery) -> None:
    toy = Toy()
    policy = RpcPolicy(default_timeout_s=30.0, max_in_flight=1, max_streams=1, max_message_bytes=MAX_MESSAGE)
    port = await nursery.start(
        functools.partial(
            serve_grpc, [guarded_service(toy, policy)], "127.0.0.1", 0, max_message_bytes=MAX_MESSAGE
        )
    )
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        with trio.fail_after(20):
            for _ in range(3):
                # A quiet watch holds the only stream slot; purerpc alone would keep it until
                # the watch next sent something (never, here).
                watch = stub.Watch(kv_pb2.WatchRequest(key="idle"))
                assert (await in_thread(lambda w=watch: next(w))).header.revision == 1  # type: ignore[misc]
                assert policy.in_flight_streams == 1
                watch.cancel()
                with trio.fail_after(1):
                    await toy.watch_closed.wait()
                    await wait_until(lambda: policy.in_flight_streams == 0)
                toy.watch_closed = trio.Event()
            # A unary call cancelled by the client: its handler is cancelled, its slot freed.
            future = stub.Put.future(kv_pb2.PutRequest(key="sleep:30"))
            await wait_until(lambda: policy.in_flight_unary == 1)
            future.cancel()
            with trio.fail_after(1):
                await toy.cancelled.wait()
                await wait_until(lambda: policy.in_flight == 0)
            reply = await in_thread(lambda: stub.Put(kv_pb2.PutRequest(key="ok", value=b"ab"), timeout=5))
            assert reply.header.revision == 2
    finally:
        ch.close()


async def test_streams_over_the_per_connection_limit_are_refused_alone(nursery: trio.Nursery) -> None:
    s = await serve(nursery, max_concurrent_streams=3)
    body = grpc_frame(kv_pb2.WatchRequest(key="idle").SerializeToString())
    with trio.fail_after(10):
        raw = await RawH2.open(s.port)
        # Sent before reading the server's SETTINGS (so h2 on our side does not hold back).
        sids = []
        for _ in range(4):
            sid = raw.start(WATCH)
            raw.conn.send_data(sid, body, end_stream=True)
            sids.append(sid)
        await raw.flush()
        settings = await raw.read_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        assert settings.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value == 3
        reset = await raw.read_until(lambda e: isinstance(e, h2.events.StreamReset))
        assert (reset.stream_id, reset.error_code) == (sids[3], h2.errors.ErrorCodes.REFUSED_STREAM)
        await wait_until(lambda: s.policy.in_flight_streams == 3)
        await raw.alive()
        # Cancelling one frees room for another, on the same connection.
        raw.conn.reset_stream(sids[0], h2.errors.ErrorCodes.CANCEL)
        await raw.flush()
        await wait_until(lambda: s.policy.in_flight_streams == 2)
        sid = raw.start(WATCH)
        raw.conn.send_data(sid, body, end_stream=True)
        await raw.flush()
        await wait_until(lambda: s.policy.in_flight_streams == 3)
        await raw.stream.aclose()
        await wait_until(lambda: s.policy.in_flight == 0)


# -- connections ---------------------------------------------------------------------------


async def test_silent_and_stalled_connections_are_closed_after_the_handshake_timeout(
    nursery: trio.Nursery,
) -> None:
    s = await serve(nursery, handshake_timeout_s=0.3)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    with trio.fail_after(20):
        silent = await trio.open_tcp_stream("127.0.0.1", s.port)
        await closed_within(silent, 3)
        half_preface = await trio.open_tcp_stream("127.0.0.1", s.port)
        await half_preface.send_all(preface[:10])
        assert await closed_within(half_preface, 3) < 2
        mid_frame = await trio.open_tcp_stream("127.0.0.1", s.port)
        await mid_frame.send_all(preface + settings + b"\x00\x00\x08\x06\x00")  # a PING's first bytes
        assert await closed_within(mid_frame, 3) < 2

        # A trickle that keeps bytes coming but never finishes the frame: bounded too.
        trickle = await trio.open_tcp_stream("127.0.0.1", s.port)
        await trickle.send_all(preface + settings + b"\x00\x00\x40\x06\x00\x00\x00\x00\x00")

        async def drip() -> None:
            try:
                for _ in range(64):
                    await trio.sleep(0.05)
                    await trickle.send_all(b"\0")
            except trio.BrokenResourceError:
                pass

        nursery.start_soon(drip)
        assert await closed_within(trickle, 3) < 1.5

        # A live client idle for longer than the timeout is not touched.
        ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
        try:
            watch = kv_pb2_grpc.KvServiceStub(ch).Watch(kv_pb2.WatchRequest(key="idle"))
            assert (await in_thread(lambda: next(watch))).header.revision == 1
            await trio.sleep(1.0)
            assert s.policy.in_flight_streams == 1
            watch.cancel()
        finally:
            ch.close()


async def test_connections_over_the_limit_are_closed_and_logged_once(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ggap.rpc.server")
    s = await serve(nursery, max_connections=2)
    ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
    try:
        with trio.fail_after(20):
            watch = kv_pb2_grpc.KvServiceStub(ch).Watch(kv_pb2.WatchRequest(key="idle"))
            assert (await in_thread(lambda: next(watch))).header.revision == 1
            second = await RawH2.open(s.port)
            await second.alive()
            for _ in range(3):
                extra = await trio.open_tcp_stream("127.0.0.1", s.port)
                assert await closed_within(extra, 2) < 1
            refusals = [r for r in caplog.records if "limits.max_connections" in r.getMessage()]
            assert len(refusals) == 1
            # Those already open are unaffected.
            await second.alive()
            assert s.policy.in_flight_streams == 1
            # A slot freed is a slot reused.
            await second.stream.aclose()
            with trio.fail_after(5):
                while True:
                    third = await RawH2.open(s.port)
                    try:
                        await third.alive()
                        break
                    except (EOFError, trio.BrokenResourceError):
                        await trio.sleep(0.05)  # the server has not yet seen `second` go
            await third.stream.aclose()
            watch.cancel()
    finally:
        ch.close()


async def test_idle_connections_get_goaway_and_close_but_not_while_a_watch_is_open(
    nursery: trio.Nursery,
) -> None:
    s = await serve(nursery, idle_timeout_s=0.3)
    body = grpc_frame(kv_pb2.WatchRequest(key="idle").SerializeToString())
    with trio.fail_after(30):
        # A connection that only sends its preface: GOAWAY(NO_ERROR), then closed.
        idle = await RawH2.open(s.port)
        gone = await idle.read_until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert gone.error_code == h2.errors.ErrorCodes.NO_ERROR
        await closed_within(idle.stream, 5)

        # One with a watch open is left alone however long it stays quiet (PINGs, which
        # are no calls, do not count either way); once the watch ends, the clock starts.
        busy = await RawH2.open(s.port)
        sid = busy.start(WATCH)
        busy.conn.send_data(sid, body, end_stream=True)
        await busy.flush()
        await wait_until(lambda: s.policy.in_flight_streams == 1)
        for _ in range(5):
            await trio.sleep(0.3)
            await busy.alive()
        busy.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        await busy.flush()
        await busy.read_until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        await closed_within(busy.stream, 5)

        # grpcio reconnects after an idle close: calls before and after it both work.
        ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
        try:
            stub = kv_pb2_grpc.KvServiceStub(ch)
            for n in (3, 4, 5):
                reply = await in_thread(
                    lambda n=n: stub.Put(kv_pb2.PutRequest(key="ok", value=b"x" * n), timeout=5)  # type: ignore[misc]
                )
                assert reply.header.revision == n
                await trio.sleep(1.0)  # past the idle timeout: the server closes
        finally:
            ch.close()


async def test_unfinished_messages_are_bounded_per_connection(nursery: trio.Nursery) -> None:
    budget = 3 * MAX_MESSAGE
    s = await serve(nursery, connection_buffer_bytes=budget)
    frame = grpc_frame(kv_pb2.PutRequest(key="k", value=b"x" * (MAX_MESSAGE - 1000)).SerializeToString())
    begun = 900_000  # legal size, never finished: no handler has its message yet
    with trio.fail_after(60):
        raw = await RawH2.open(s.port)
        # The server's window update (purerpc opens the connection window to 1 GiB).
        await raw.read_until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0)
        sids = [raw.start(PUT) for _ in range(8)]
        for sid in sids:
            for i in range(0, begun, 16_384):
                raw.conn.send_data(sid, frame[i : min(i + 16_384, begun)])
            await raw.flush()
        # PING is answered after every frame before it has been handled.
        raw.conn.ping(b"afterall")
        await raw.flush()
        await raw.read_until(lambda e: isinstance(e, h2.events.PingAckReceived))
        failed = {
            e.stream_id: dict(e.headers)
            for e in raw.events
            if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived))
            and "grpc-status" in dict(e.headers)
        }
        for headers in failed.values():
            assert int(headers["grpc-status"]) == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert "limits.connection_buffer_bytes" in headers["grpc-message"]
        survivors = [sid for sid in sids if sid not in failed]
        # What the connection still holds stays within the budget.
        assert 0 < len(survivors) * begun <= budget, (len(survivors), failed.keys())
        assert s.policy.in_flight_unary == 0
        # An honest call on another connection is unaffected...
        ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
        try:
            stub = kv_pb2_grpc.KvServiceStub(ch)
            reply = await in_thread(lambda: stub.Put(kv_pb2.PutRequest(key="ok", value=b"ab"), timeout=5))
            assert reply.header.revision == 2
        finally:
            ch.close()
        # ...and the surviving interleaved messages, finished, are served.
        for sid in survivors:
            for i in range(begun, len(frame), 16_384):
                raw.conn.send_data(sid, frame[i : i + 16_384], end_stream=i + 16_384 >= len(frame))
            await raw.flush()
        for sid in survivors:
            assert await raw.status_of(sid) == 0
        await raw.stream.aclose()


async def test_a_message_not_finished_in_time_fails_its_call_alone(nursery: trio.Nursery) -> None:
    s = await serve(nursery, message_timeout_s=0.5)
    frame = grpc_frame(kv_pb2.PutRequest(key="k", value=b"x" * 200_000).SerializeToString())
    with trio.fail_after(30):
        raw = await RawH2.open(s.port)
        await raw.read_until(lambda e: isinstance(e, h2.events.WindowUpdated) and e.stream_id == 0)
        slow = raw.start(PUT)
        # A complete frame every 0.1 s: the mid-frame timeout never fires, the message's does.
        sent = 0
        while not any(getattr(e, "stream_id", None) == slow for e in raw.events):
            raw.conn.send_data(slow, frame[sent : sent + 1000])
            sent += 1000
            await raw.flush()
            with trio.move_on_after(0.1):
                await raw.read_until(lambda e: getattr(e, "stream_id", None) == slow)
            assert sent < len(frame), "the message was never timed out"
        assert await raw.status_of(slow) == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        reset = await raw.read_until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == slow)
        assert reset.error_code == h2.errors.ErrorCodes.NO_ERROR
        # The connection lives on and serves a message sent at once.
        await raw.alive()
        sid = raw.start(PUT)
        for i in range(0, len(frame), 16_384):
            raw.conn.send_data(sid, frame[i : i + 16_384], end_stream=i + 16_384 >= len(frame))
        await raw.flush()
        assert await raw.status_of(sid) == 0
        await raw.stream.aclose()
    assert s.policy.in_flight == 0


def test_closed_streams_are_dropped_although_not_counted_per_stream() -> None:
    """Streams answered and ended both ways are forgotten at once (the HTTP/2 layer holds
    only open ones), and the limit holds exactly once streams pile up."""
    server = GuardedConnection(
        GRPCConfiguration(client_side=False, max_message_length=MAX_MESSAGE),
        ConnectionLimits(max_concurrent_streams=300),
    )
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.h2_connection.data_to_send())
    server.receive_data(client.data_to_send())
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PUT),
        (":authority", "x"),
        ("content-type", "application/grpc+proto"),
        ("te", "trailers"),
    ]
    most_held = 0
    for _ in range(2000):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers)
        client.send_data(sid, grpc_frame(b"\n\x01k"), end_stream=True)
        events = server.receive_data(client.data_to_send())
        assert any(isinstance(e, RequestReceived) and e.stream_id == sid for e in events)
        server._fail_stream(sid, Status(StatusCode.OK))
        client.receive_data(server.h2_connection.data_to_send())
        most_held = max(most_held, len(server.h2_connection.streams))
    assert most_held == 0  # each was closed both ways by its answer: none is kept

    # The limit still holds exactly: 300 open streams, the 301st is refused alone.
    opened = []
    for _ in range(301):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, headers)
        opened.append(sid)
    events = server.receive_data(client.data_to_send())
    received = {e.stream_id for e in events if isinstance(e, RequestReceived)}
    assert received == set(opened[:300])
    answered = client.receive_data(server.h2_connection.data_to_send())
    resets = [e for e in answered if isinstance(e, h2.events.StreamReset)]
    refused = h2.errors.ErrorCodes.REFUSED_STREAM
    assert [(e.stream_id, e.error_code) for e in resets] == [(opened[300], refused)]


def test_response_blocks_decode_whatever_the_dynamic_table_holds() -> None:
    """Our header blocks never index, so the same bytes decode on any connection; the first
    block (and the first after the client's SETTINGS_HEADER_TABLE_SIZE) sets the client's
    table to size 0, as RFC 7541 4.2 wants before a block after a table size change."""
    conn = http2.ServerConnection(max_concurrent_streams=8, initial_window_size=1 << 20)
    dec = hpack.Decoder()
    # The client's table already holds other headers, as on a long-lived connection.
    dec.decode(hpack.Encoder().encode([("x-a", "1"), ("grpc-message", "no%20leader")]))
    ok = [(":status", "200"), ("content-type", "application/grpc+proto")]
    first = conn._header_block(ok)
    assert first[:1] == b"\x20" and dec.decode(first) == ok and dec.header_table.maxsize == 0
    for _ in range(3):
        block = conn._header_block(ok)
        assert block == first[1:] and dec.decode(block) == ok
        assert dec.decode(conn._header_block([("grpc-status", "0")])) == [("grpc-status", "0")]
    failed = [("grpc-status", "5"), ("grpc-message", "x y%20")]
    assert dec.decode(conn._header_block(failed)) == failed
    settings = hyperframe.frame.SettingsFrame(0, settings={1: 256}).serialize()
    conn.receive_data(http2.PREFACE + settings)
    assert conn._header_block(ok) == first


_REQUEST_BASE = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", PUT),
    (":authority", "x:1"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
]
_EXTRA_HEADERS = st.sampled_from(
    [
        ("grpc-timeout", "4999m"),
        ("grpc-timeout", "5S"),
        ("grpc-timeout", "1H"),
        ("grpc-timeout", "2M"),
        ("grpc-timeout", "700u"),
        ("grpc-timeout", "12345n"),
        ("grpc-timeout", "9x"),
        ("grpc-encoding", "gzip"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
        ("user-agent", "grpc-python/1.66.0"),
        ("grpc-message-type", "T"),
        ("x-trace", "t1"),
        ("x-trace", "t2"),
        ("x-id-bin", "AAEC"),
        ("x-id-bin", "AA,AQ"),
        ("grpc-other", "1"),
        ("ggap-session", "7:3"),
        ("te", "trailers"),
        (":scheme", "ftp"),
        (":method", "GET"),
        ("content-type", "text/plain"),
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EXTRA_HEADERS, max_size=8), st.randoms(use_true_random=False))
def test_parse_request_matches_purerpc(extra: list[tuple[str, str]], rnd: Any) -> None:
    """Our one-pass request parser gives purerpc's event, or fails where purerpc does."""
    from purerpc.grpclib.headers import HeaderDict

    from ggap.rpc.frontdoor import parse_request

    headers = list(_REQUEST_BASE) + extra
    regular = headers[4:]
    rnd.shuffle(regular)
    headers = headers[:4] + regular
    try:
        theirs = RequestReceived.parse_from_stream_id_and_headers_destructive(1, HeaderDict(headers))
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - purerpc raises several kinds
            parse_request(1, headers)
        return
    ours = parse_request(1, headers)
    fields = (
        "stream_id scheme service_name method_name content_type authority timeout message_type "
        "message_encoding message_accept_encoding user_agent custom_metadata"
    ).split()
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
