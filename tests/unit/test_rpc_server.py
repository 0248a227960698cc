"""serve_grpc + guarded_service against a real grpcio client, on 127.0.0.1 and port 0.

grpcio's sync client blocks, so every call runs in a worker thread and carries its own
timeout (a thread cannot be cancelled); every test also has an absolute trio.fail_after.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs
import grpc
import pytest
import trio

from ggap.pb import kv_grpc, kv_pb2, kv_pb2_grpc
from ggap.rpc import BindError, RpcPolicy, current_deadline, current_peer, guarded_service, serve_grpc
from ggap.types import errors as E

MAX_MESSAGE = 1 << 20
# No proxy, and a connection per channel: closing a channel must really disconnect.
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]
T = TypeVar("T")


class Toy(kv_grpc.KvServiceServicer):
    """Put's key picks a behaviour ("action:arg"); Watch streams revisions 1, 2, 3, ..."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.cancelled = trio.Event()
        self.watch_closed = trio.Event()
        self.remaining: float | None = None
        self.peer: str | None = None
        self.sent = 0

    async def Put(self, msg: kv_pb2.PutRequest, request: Any) -> kv_pb2.PutResponse:
        self.peer = current_peer()
        self.remaining = current_deadline() - trio.current_time()
        action, _, arg = msg.key.partition(":")
        if action == "raise":
            raise getattr(E, arg)(f"boom {arg}")
        if action == "leader":
            raise E.Unavailable("no leader", leader_id=int(arg))
        if action == "bug":
            raise ValueError("secret-detail-1234")
        if action == "sleep":
            try:
                await trio.sleep(float(arg))
            except trio.Cancelled:
                self.cancelled.set()
                raise
        if action == "block":
            await self.gate.wait()
        if action == "deep":
            # Deeper code bounding its wait by the request deadline (a bit earlier than ours).
            with trio.fail_at(current_deadline() - 0.05):
                await trio.sleep_forever()
        return kv_pb2.PutResponse(header=kv_pb2.ResponseHeader(revision=len(msg.value)))

    async def Watch(self, msg: kv_pb2.WatchRequest) -> Any:
        try:
            if msg.key == "idle":
                yield kv_pb2.WatchResponse(header=kv_pb2.ResponseHeader(revision=1))
                await trio.sleep_forever()
            while True:
                # No await here on purpose: the guard must add the checkpoint.
                self.sent += 1
                yield kv_pb2.WatchResponse(header=kv_pb2.ResponseHeader(revision=self.sent))
        finally:
            self.watch_closed.set()


@attrs.define
class Served:
    toy: Toy
    policy: RpcPolicy
    port: int


async def serve_toy(nursery: trio.Nursery, policy: RpcPolicy | None = None) -> Served:
    toy = Toy()
    policy = policy or RpcPolicy(default_timeout_s=3.0, max_in_flight=8, max_message_bytes=MAX_MESSAGE)
    service = guarded_service(toy, policy)
    port = await nursery.start(
        functools.partial(serve_grpc, [service], "127.0.0.1", 0, max_message_bytes=MAX_MESSAGE)
    )
    return Served(toy, policy, port)


@pytest.fixture
async def served(nursery: trio.Nursery) -> Served:
    return await serve_toy(nursery)


@contextmanager
def channel(port: int) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        yield ch
    finally:
        ch.close()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


async def put(
    port: int, key: str, value: bytes = b"", client_timeout: float | None = 5.0
) -> kv_pb2.PutResponse:
    """One Put from grpcio; client_timeout None sends no grpc-timeout at all."""
    with channel(port) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        request = kv_pb2.PutRequest(key=key, value=value)
        return await in_thread(lambda: stub.Put(request, timeout=client_timeout))


async def put_error(
    port: int, key: str, value: bytes = b"", client_timeout: float | None = 5.0
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        await put(port, key, value, client_timeout)
    return info.value


async def wait_until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


def _grpc_code(code: E.StatusCode) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == int(code))


def _listening_sockets(port: int) -> int | None:
    """Sockets in LISTEN state on `port` (None where /proc/net is not available)."""
    if not Path("/proc/net/tcp").exists():
        return None
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "0A":
                count += 1
    return count


async def test_unary_roundtrip_sees_peer_and_default_deadline(served: Served) -> None:
    with trio.fail_after(10):
        # No client deadline (the server's 3 s default still bounds the call).
        reply = await put(served.port, "ok", b"abc", client_timeout=None)
        assert reply.header.revision == 3
        assert served.toy.peer is not None and served.toy.peer.startswith("127.0.0.1:")
        # grpcio sent no deadline: the policy default applies.
        assert served.toy.remaining is not None and 2.0 < served.toy.remaining <= 3.0
        assert served.policy.in_flight == 0


async def test_every_ggap_error_maps_to_its_status(served: Served) -> None:
    classes = [
        c
        for c in vars(E).values()
        if isinstance(c, type) and issubclass(c, E.GgapError) and c is not E.GgapError
    ]
    assert len(classes) >= 10
    with trio.fail_after(20):
        for cls in classes:
            err = await put_error(served.port, f"raise:{cls.__name__}")
            assert err.code() == _grpc_code(cls.code), cls
            expected = cls(f"boom {cls.__name__}").message
            if cls is E.NotLeader:  # names itself: UNAVAILABLE alone could be any Unavailable
                expected += " (ggap-reason=NOT_LEADER)"
            if cls is E.SessionExpired:  # likewise among FAILED_PRECONDITIONs
                expected += " (ggap-reason=SESSION_EXPIRED)"
            assert err.details() == expected


async def test_leader_id_travels_in_the_message(served: Served) -> None:
    with trio.fail_after(10):
        err = await put_error(served.port, "leader:3")
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
        assert err.details() == "no leader (ggap-leader-id=3)"


async def test_unexpected_error_is_internal_and_leaks_nothing(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(10):
        with caplog.at_level(logging.ERROR, logger="ggap.rpc"):
            err = await put_error(served.port, "bug")
        assert err.code() == grpc.StatusCode.INTERNAL
        assert err.details() == "internal error"
        for leak in ("secret", "Traceback", "ValueError", "exc_info"):
            assert leak not in (err.debug_error_string() or "")
        # The traceback is in the server log instead.
        assert "secret-detail-1234" in caplog.text


async def test_unimplemented_method(served: Served) -> None:
    with trio.fail_after(10), channel(served.port) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            await in_thread(lambda: stub.Get(kv_pb2.GetRequest(key="a"), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_client_deadline_cancels_the_handler(served: Served) -> None:
    with trio.fail_after(10):
        start = time.monotonic()
        err = await put_error(served.port, "sleep:5", client_timeout=0.2)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 1.5
        with trio.fail_after(1.5):
            await served.toy.cancelled.wait()
        # The handler saw the client's deadline, not the 3 s default.
        assert served.toy.remaining is not None and 0 < served.toy.remaining <= 0.21
        await wait_until(lambda: served.policy.in_flight == 0)


async def test_default_deadline_is_enforced_by_the_server(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        s = await serve_toy(nursery, RpcPolicy(default_timeout_s=0.2, max_in_flight=8))
        start = time.monotonic()
        # The client sets no deadline, so the DEADLINE_EXCEEDED can only come from the server.
        err = await put_error(s.port, "sleep:5", client_timeout=None)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.details() == "deadline exceeded"
        assert time.monotonic() - start < 2
        assert s.toy.cancelled.is_set()


async def test_deeper_timeout_at_the_deadline_is_deadline_exceeded(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        s = await serve_toy(nursery, RpcPolicy(default_timeout_s=0.3, max_in_flight=8))
        err = await put_error(s.port, "deep", client_timeout=None)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_in_flight_limit_rejects_with_resource_exhausted(nursery: trio.Nursery) -> None:
    with trio.fail_after(15):
        s = await serve_toy(nursery, RpcPolicy(default_timeout_s=10, max_in_flight=2))
        results: list[int] = []

        async def blocked() -> None:
            results.append((await put(s.port, "block", b"xy", client_timeout=8)).header.revision)

        async with trio.open_nursery() as calls:
            calls.start_soon(blocked)
            calls.start_soon(blocked)
            await wait_until(lambda: s.policy.in_flight == 2)
            err = await put_error(s.port, "ok")
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert err.details() == "too many requests in flight"
            s.toy.gate.set()
        assert results == [2, 2]
        assert s.policy.in_flight == 0
        # Capacity is back.
        assert (await put(s.port, "ok", b"z")).header.revision == 1


async def test_open_streams_do_not_use_up_unary_capacity(nursery: trio.Nursery) -> None:
    with trio.fail_after(15):
        s = await serve_toy(nursery, RpcPolicy(default_timeout_s=5, max_in_flight=1, max_streams=1))
        ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
        try:
            stub = kv_pb2_grpc.KvServiceStub(ch)
            call = stub.Watch(kv_pb2.WatchRequest(key="a"), timeout=10)
            assert (await in_thread(lambda: next(call))).header.revision == 1
            assert s.policy.in_flight_streams == 1
            # The stream limit is reached, the unary one is not.
            assert (await put(s.port, "ok", b"abc")).header.revision == 3
            second = stub.Watch(kv_pb2.WatchRequest(key="b"), timeout=10)
            with pytest.raises(grpc.RpcError) as info:
                await in_thread(lambda: next(second))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            call.cancel()
        finally:
            ch.close()


async def test_port_in_use_raises_bind_error_and_listens_once(served: Served) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as second:
            with pytest.raises(BindError) as info:
                await second.start(
                    functools.partial(serve_grpc, [], "127.0.0.1", served.port, max_message_bytes=MAX_MESSAGE)
                )
        err = info.value
        assert isinstance(err, OSError)
        assert err.errno == errno.EADDRINUSE
        assert f"127.0.0.1:{served.port}" in str(err)
        assert _listening_sockets(served.port) in (1, None)
        assert (await put(served.port, "ok")).header.revision == 0


async def test_port_held_by_another_program_raises_bind_error() -> None:
    with trio.fail_after(10):
        other = socket.socket()
        try:
            other.bind(("127.0.0.1", 0))
            other.listen()
            port = other.getsockname()[1]
            with pytest.raises(BindError) as info:
                await serve_grpc([], "127.0.0.1", port, max_message_bytes=MAX_MESSAGE)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            other.close()


async def test_non_local_address_raises_bind_error() -> None:
    with trio.fail_after(10):
        with pytest.raises(BindError) as info:
            await serve_grpc([], "192.0.2.1", 0, max_message_bytes=MAX_MESSAGE)  # TEST-NET-1
        assert info.value.errno == errno.EADDRNOTAVAIL


async def test_bad_arguments_are_rejected() -> None:
    with trio.fail_after(5):
        with pytest.raises(ValueError, match="host"):
            await serve_grpc([], "", 0, max_message_bytes=MAX_MESSAGE)
        service = guarded_service(Toy(), RpcPolicy())
        with pytest.raises(ValueError, match="twice"):
            await serve_grpc([service, service], "127.0.0.1", 0, max_message_bytes=MAX_MESSAGE)
        with pytest.raises(ValueError):
            RpcPolicy(max_in_flight=0)
        with pytest.raises(ValueError):
            RpcPolicy(default_timeout_s=0)
        assert RpcPolicy(default_timeout_s=math.inf).default_timeout_s == math.inf


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


async def _send_and_wait_for_close(port: int, payload: bytes) -> None:
    """Send payload and expect the server to close the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(payload)
        with trio.fail_after(3):
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return  # reset by the server: closed too
                if not data:
                    return
    finally:
        await stream.aclose()


async def test_garbage_only_ends_that_connection(served: Served) -> None:
    rng = random.Random(1234)
    with trio.fail_after(20):
        # A half preface left open must not block anyone else.
        lingering = await trio.open_tcp_stream("127.0.0.1", served.port)
        await lingering.send_all(PREFACE[:10])
        await _send_and_wait_for_close(served.port, rng.randbytes(4096))
        # After a valid preface, random bytes read as a frame header (announcing a frame
        # over our 16 KiB SETTINGS_MAX_FRAME_SIZE, or waiting for the rest of one).
        framed_junk = await trio.open_tcp_stream("127.0.0.1", served.port)
        await framed_junk.send_all(PREFACE + rng.randbytes(4096))
        # Valid preface and SETTINGS, then a HEADERS frame full of garbage.
        settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
        headers = len(junk := rng.randbytes(64)).to_bytes(3, "big") + b"\x01\x05\x00\x00\x00\x01" + junk
        await _send_and_wait_for_close(served.port, PREFACE + settings + headers)
        # A truncated preface, then the client just disconnects.
        short = await trio.open_tcp_stream("127.0.0.1", served.port)
        await short.send_all(PREFACE[:7])
        await short.aclose()
        assert (await put(served.port, "ok", b"1234")).header.revision == 4
        await lingering.aclose()
        await framed_junk.aclose()
        assert (await put(served.port, "ok", b"12345")).header.revision == 5


async def test_oversized_message_is_refused_per_call(served: Served) -> None:
    with trio.fail_after(10):
        err = await put_error(served.port, "ok", b"x" * (MAX_MESSAGE + 1), client_timeout=5)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert f"over the limit of {MAX_MESSAGE}" in err.details()
        assert (await put(served.port, "ok", b"x" * 1000)).header.revision == 1000


async def test_grossly_oversized_message_is_refused_per_call_too(served: Served) -> None:
    with trio.fail_after(10):
        # Past purerpc's own transport limit too: the front door refuses it from its prefix
        # (purerpc alone would drop the whole connection; tests/unit/test_rpc_frontdoor.py).
        err = await put_error(served.port, "ok", b"x" * (4 * MAX_MESSAGE + 1), client_timeout=5)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert (await put(served.port, "ok", b"x" * 1000)).header.revision == 1000


async def test_malformed_request_bytes_get_invalid_argument(served: Served) -> None:
    def call(payload: bytes) -> grpc.RpcError:
        ch = grpc.insecure_channel(f"127.0.0.1:{served.port}", options=GRPC_OPTIONS)
        try:
            raw = ch.unary_unary("/ginnungagap.v1.KvService/Put")
            with pytest.raises(grpc.RpcError) as info:
                raw(payload, timeout=5)
            return info.value  # type: ignore[return-value]
        finally:
            ch.close()

    with trio.fail_after(10):
        for payload in (b"\x0a\x05bad\xff\xfe\x12\x01v", b"\x0a\x10abc"):
            err = await in_thread(lambda p=payload: call(p))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert "malformed request" in err.details()
            assert "Traceback" not in err.details() and "<class" not in err.details()
        assert (await put(served.port, "ok", b"fine")).header.revision == 4


async def test_client_disconnect_mid_stream_stops_the_handler(served: Served) -> None:
    with trio.fail_after(15):
        ch = grpc.insecure_channel(f"127.0.0.1:{served.port}", options=GRPC_OPTIONS)
        try:
            stub = kv_pb2_grpc.KvServiceStub(ch)

            def read_three() -> list[int]:
                call = stub.Watch(kv_pb2.WatchRequest(key="a"), timeout=10)
                return [next(call).header.revision for _ in range(3)]

            assert await in_thread(read_three) == [1, 2, 3]
        finally:
            ch.close()  # the TCP connection goes away with the stream still open
        with trio.fail_after(3):
            await served.toy.watch_closed.wait()
        await wait_until(lambda: served.policy.in_flight == 0)
        assert (await put(served.port, "ok", b"ab")).header.revision == 2


async def test_idle_stream_ends_when_the_client_goes_away(nursery: trio.Nursery) -> None:
    with trio.fail_after(15):
        # The default deadline is for unary calls only: a quiet watch outlives it.
        s = await serve_toy(nursery, RpcPolicy(default_timeout_s=0.2, max_in_flight=8))
        ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
        try:
            stub = kv_pb2_grpc.KvServiceStub(ch)
            call = stub.Watch(kv_pb2.WatchRequest(key="idle"), timeout=10)
            assert (await in_thread(lambda: next(call))).header.revision == 1
            await trio.sleep(0.6)
            assert s.policy.in_flight_streams == 1
            assert not s.toy.watch_closed.is_set()
        finally:
            ch.close()
        with trio.fail_after(3):
            await s.toy.watch_closed.wait()
        await wait_until(lambda: s.policy.in_flight == 0)


async def test_stream_honours_an_explicit_client_deadline(served: Served) -> None:
    with trio.fail_after(15), channel(served.port) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)

        def watch() -> grpc.StatusCode:
            call = stub.Watch(kv_pb2.WatchRequest(key="idle"), timeout=0.3)
            try:
                for _ in call:
                    pass
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert await in_thread(watch) == grpc.StatusCode.DEADLINE_EXCEEDED
        # The channel stays open: only our deadline can stop the quiet handler.
        with trio.fail_after(2):
            await served.toy.watch_closed.wait()


async def test_client_cancel_mid_stream_stops_the_handler(served: Served) -> None:
    with trio.fail_after(15), channel(served.port) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)

        def read_and_cancel() -> None:
            call = stub.Watch(kv_pb2.WatchRequest(key="a"), timeout=10)
            for _ in range(3):
                next(call)
            call.cancel()

        await in_thread(read_and_cancel)
        with trio.fail_after(5):
            await served.toy.watch_closed.wait()
        await wait_until(lambda: served.policy.in_flight == 0)


async def test_streaming_does_not_starve_the_event_loop(served: Served) -> None:
    lateness: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = trio.current_time()
            await trio.sleep(0.01)
            lateness.append(trio.current_time() - start - 0.01)

    with trio.fail_after(20), channel(served.port) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)

        def consume() -> int:
            call = stub.Watch(kv_pb2.WatchRequest(key="a"), timeout=15)
            last = 0
            for _ in range(3000):
                last = next(call).header.revision
            call.cancel()
            return last

        async with trio.open_nursery() as inner:
            inner.start_soon(ticker)
            assert await in_thread(consume) == 3000
            done.set()
    assert len(lateness) > 5
    # Without a checkpoint per message this was seconds (PITFALLS §1.3).
    assert max(lateness) < 0.25, max(lateness)


async def test_cancelling_the_nursery_stops_the_server_quietly(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(15):
        with caplog.at_level(logging.INFO):
            async with trio.open_nursery() as server_nursery:
                s = await serve_toy(server_nursery)
                ch = grpc.insecure_channel(f"127.0.0.1:{s.port}", options=GRPC_OPTIONS)
                try:
                    stub = kv_pb2_grpc.KvServiceStub(ch)
                    call = stub.Watch(kv_pb2.WatchRequest(key="idle"), timeout=10)
                    assert (await in_thread(lambda: next(call))).header.revision == 1
                    call_error = trio.Event()

                    async def unary_in_flight() -> None:
                        await put_error(s.port, "sleep:5")
                        call_error.set()

                    async with trio.open_nursery() as calls:
                        calls.start_soon(unary_in_flight)
                        await wait_until(lambda: s.policy.in_flight_unary == 1)
                        server_nursery.cancel_scope.cancel()
                    assert call_error.is_set()
                finally:
                    ch.close()
        assert s.toy.watch_closed.is_set() and s.toy.cancelled.is_set()
        assert s.policy.in_flight == 0
        # Nothing listens any more, and shutdown did not spam warnings.
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", s.port)
        noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert noisy == [], [r.getMessage() for r in noisy]
