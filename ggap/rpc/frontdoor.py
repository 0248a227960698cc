"""The client port's gRPC connection, hardened where purerpc 0.8.0 is not (see DESIGN.md).

purerpc turns every per-stream fault into a connection fault: a message over its limit, a
body that does not decompress, an unsupported `grpc-encoding`, request headers it cannot
parse or request trailers all raise out of its event loop and drop every other call on
the connection. It ignores a client's RST_STREAM, so a cancelled call keeps running and
holds its slot; it never times out a connection that sends nothing or stops mid-frame; it
decompresses without bound and lets a client open 65536 streams.

This module subclasses purerpc's connection and socket classes (no copy of its code, no
monkeypatching), puts them on our own HTTP/2 (http2.py, in place of h2), and so that:

- a stream whose message declares (or decompresses to) more than `max_message_bytes` is
  answered RESOURCE_EXHAUSTED and reset (RST_STREAM NO_ERROR) from the 5-byte gRPC prefix
  alone; its later DATA is acknowledged and dropped, never buffered;
- any other per-stream fault ends that stream alone with a status (INTERNAL, UNIMPLEMENTED);
- a client's RST_STREAM cancels that call's handler at once (its in-flight slot is freed);
- each stream's received-but-unread bytes are given back to the connection window when the
  stream ends, so abandoned streams cannot starve the connection;
- inbound frames are at most 16 KiB (SETTINGS_MAX_FRAME_SIZE), streams per connection are
  bounded (SETTINGS_MAX_CONCURRENT_STREAMS; a stream over it is refused with
  REFUSED_STREAM, the connection lives on), and a connection that has not completed its
  preface, or has a frame half-received, for `handshake_timeout_s` is closed;
- the bytes a connection holds for its handlers (received, not yet read) are bounded by
  `connection_buffer_bytes`: past it, the stream holding the largest unfinished message
  is answered RESOURCE_EXHAUSTED and reset, and its bytes dropped; a message not complete
  `message_timeout_s` after its first byte ends its stream with DEADLINE_EXCEEDED;
- a connection with no open stream for `idle_timeout_s` is sent GOAWAY and closed, and
  accepted sockets use TCP keepalive, so vanished clients do not hold connection slots.
"""

from __future__ import annotations

import datetime
import logging
import math
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import trio
from purerpc.grpc_proto import GRPCProtoSocket, GRPCProtoStream
from purerpc.grpc_socket import GRPCStreamState, SocketWrapper
from purerpc.grpclib.buffers import MessageReadBuffer
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.connection import GRPCConnection
from purerpc.grpclib.events import RequestEnded, RequestReceived, WindowUpdated
from purerpc.grpclib.exceptions import MessageTooLargeError, StreamClosedError
from purerpc.grpclib.headers import HeaderDict, b64decode
from purerpc.grpclib.status import Status

from ggap.rpc import http2
from ggap.rpc.errors import rpc_error
from ggap.types.errors import StatusCode
from ggap.types.helpers import positive as _positive

__all__ = ["ConnectionLimits", "GuardedSocket", "GuardedStream", "run_request"]

log = logging.getLogger(__name__)

# The RFC 9113 default. h2 buffers a whole frame before parsing it, so this bounds what one
# connection holds unparsed; it is also the granularity at which an oversized message is
# noticed (its 5-byte prefix arrives in the first frame).
MAX_INBOUND_FRAME_SIZE = 16_384

# Encodings we can decode (bounded); anything else is answered UNIMPLEMENTED up front.
_ENCODINGS = {None, "identity", "gzip", "deflate"}


@attrs.frozen
class ConnectionLimits:
    """Per-connection bounds of the client port (limits.* knobs)."""

    # Largest request message, compressed or not; a larger one ends its stream only.
    max_message_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    # Streams open at once on one connection (advertised as SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = attrs.field(default=1024, validator=_positive)
    # Time for the HTTP/2 preface and SETTINGS, and for finishing any frame once begun.
    handshake_timeout_s: float = attrs.field(default=5.0, validator=_positive)
    # Connections served at once; more are closed on accept (None: no bound).
    max_connections: int | None = None
    # A connection with no open stream for this long is sent GOAWAY and closed.
    idle_timeout_s: float = attrs.field(default=300.0, validator=_positive)
    # Bytes one connection may hold received but not yet read by handlers (unfinished
    # messages, mostly); never less than one largest message plus a frame.
    connection_buffer_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    # A request message begun must be complete this long after its first byte arrived.
    message_timeout_s: float = attrs.field(default=60.0, validator=_positive)

    @property
    def buffer_budget(self) -> int:
        return max(self.connection_buffer_bytes, self.max_message_bytes + MAX_INBOUND_FRAME_SIZE)


# TCP keepalive on accepted sockets (a client that vanished without FIN, with a stream
# open, is found within about IDLE + INTVL * CNT = 2 minutes).
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 10
KEEPALIVE_COUNT = 6


class HandshakeTimeout(Exception):
    """The client sent no complete preface, or stalled mid-frame, for too long."""


@attrs.define
class _StreamFinished:
    """Internal event: the connection ended this stream (refused, or reset by the client)."""

    stream_id: int
    status: Status


def _status(code: StatusCode, message: str) -> Status:
    return rpc_error(code, message).status


_TIMEOUT_UNITS = {"H": "hours", "M": "minutes", "S": "seconds", "m": "milliseconds", "u": "microseconds"}
_REQUEST_FIELDS = frozenset(
    (
        ":method",
        ":scheme",
        ":path",
        ":authority",
        "te",
        "content-type",
        "grpc-timeout",
        "grpc-encoding",
        "grpc-accept-encoding",
        "user-agent",
        "grpc-message-type",
    )
)


def parse_request(stream_id: int, headers: list[tuple[str, str]]) -> RequestReceived:
    """purerpc's RequestReceived from a request's header list, in one pass.

    The same event, checks and metadata as purerpc's
    `RequestReceived.parse_from_stream_id_and_headers_destructive` (tests hold the two
    equal), which builds an ordered dict of lists first and was a tenth of a unary call's
    CPU in the front door."""
    fields: dict[str, str] = {}
    custom: list[tuple[str, str]] = []
    for name, value in headers:
        if name in _REQUEST_FIELDS:
            if name in fields:
                return RequestReceived.parse_from_stream_id_and_headers_destructive(
                    stream_id, HeaderDict(headers)
                )  # a repeated field: purerpc's rules, whatever they are
            fields[name] = value
        else:
            custom.append((name, value))
    if fields.get(":method") != "POST":
        raise ValueError("unsupported method")
    scheme = fields[":scheme"]
    if scheme not in ("http", "https"):
        raise ValueError("scheme is neither http nor https")
    path = fields[":path"]
    if not path.startswith("/"):
        raise ValueError("path is not /<service>/<method>")
    service_name, method_name = path[1:].split("/")
    if fields.get("te") != "trailers":
        raise ValueError("te is not trailers")
    content_type = fields["content-type"]
    if not content_type.startswith("application/grpc"):
        raise ValueError("content type is not application/grpc")
    event = RequestReceived(stream_id, scheme, service_name, method_name, content_type)
    event.authority = fields.get(":authority")
    timeout = fields.get("grpc-timeout")
    if timeout is not None:
        amount, unit = int(timeout[:-1]), timeout[-1:]
        if unit == "n":
            event.timeout = datetime.timedelta(microseconds=amount / 1000)
        else:
            event.timeout = datetime.timedelta(**{_TIMEOUT_UNITS[unit]: amount})
    event.message_encoding = fields.get("grpc-encoding")
    accept = fields.get("grpc-accept-encoding")
    if accept is not None:
        event.message_accept_encoding = accept.split(",")
    event.user_agent = fields.get("user-agent")
    event.message_type = fields.get("grpc-message-type")
    if custom:
        event.custom_metadata = _custom_metadata(custom)
    return event


def _custom_metadata(custom: list[tuple[str, str]]) -> tuple[tuple[str, Any], ...]:
    """Metadata in purerpc's shape: grouped by name in first-seen order, grpc-* dropped,
    -bin values base64-decoded (comma-separated values split)."""
    groups: dict[str, list[str]] = {}
    for name, value in custom:
        groups.setdefault(name, []).append(value)
    out: list[tuple[str, Any]] = []
    for name, values in groups.items():
        if name.startswith("grpc-"):
            continue
        if name.endswith("-bin"):
            out.extend((name, b64decode(part)) for value in values for part in value.split(","))
        else:
            out.extend((name, value) for value in values)
    return tuple(out)


class _BoundedReadBuffer(MessageReadBuffer):
    """purerpc's message parser with decompression bounded by the same limit."""

    def decompress(self, data: bytes) -> bytes:
        if self._message_encoding not in ("gzip", "deflate"):
            raise _BadMessage("a compressed message without a supported grpc-encoding")
        d = zlib.decompressobj(wbits=47)  # zlib or gzip header, detected
        try:
            out = d.decompress(data, self._max_message_length + 1)
        except zlib.error:
            raise _BadMessage("the request message does not decompress") from None
        if len(out) > self._max_message_length:
            raise _DecompressedTooLarge()
        if not d.eof:
            raise _BadMessage("the request message does not decompress")
        return out

    def unfinished(self) -> bool:
        """A message has begun (some of its prefix or body arrived) and is not complete."""
        return self._message_length is not None or len(self._buffer) > 0

    def pending_bytes(self) -> int:
        """Bytes of a message begun and not finished (its 5-byte prefix aside)."""
        return len(self._buffer)


class _BadMessage(Exception):
    pass


class _DecompressedTooLarge(MessageTooLargeError):
    pass


@attrs.define
class _Ledger:
    received: int = 0  # flow-controlled bytes h2 counted for this stream
    acked: int = 0  # of those, given back (purerpc acknowledges as messages are read)


class GuardedConnection(GRPCConnection):
    """purerpc's sans-I/O gRPC connection on our HTTP/2 (http2.py), with every per-stream
    fault kept per stream."""

    def __init__(self, config: GRPCConfiguration, limits: ConnectionLimits) -> None:
        # Not GRPCConnection.__init__: it builds an h2 connection, which we do not use.
        self.config = config
        self.limits = limits
        self.message_read_buffers: dict[int, MessageReadBuffer] = {}
        self._ledgers: dict[int, _Ledger] = {}
        self._started: set[int] = set()
        # Sum over streams of received - acked: what handlers have not read yet.
        self.buffered = 0
        # purerpc's choice: a stream window fits two messages of the transport limit.
        self.h2_connection = http2.ServerConnection(
            max_concurrent_streams=limits.max_concurrent_streams,
            initial_window_size=min(2 * config.max_message_length, http2.MAX_WINDOW),
            max_frame_size=MAX_INBOUND_FRAME_SIZE,
            max_header_list_size=self.MAX_HEADER_LIST_SIZE,
        )

    @property
    def settled(self) -> bool:
        """The client's preface and SETTINGS arrived."""
        return self.h2_connection.settings_received

    @property
    def open_streams(self) -> int:
        """Requests received and not yet ended (answered, reset or refused)."""
        return len(self._ledgers)

    def partial_frame_pending(self) -> bool:
        """A frame, or a header block awaiting CONTINUATION, is half received."""
        return self.h2_connection.partial_frame_pending()

    # -- inbound ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Any]:
        # http2.ProtocolError (a connection error, GOAWAY queued) ends the connection, as
        # RFC 9113 says; anything a stream's event raises ends that stream alone.
        h2c = self.h2_connection
        events = h2c.receive_data(data)
        out: list[Any] = []
        for event in events:
            try:
                out.extend(self._dispatch(event))
            except Exception as exc:
                sid = getattr(event, "stream_id", 0)
                if not sid:
                    raise
                out.append(self._fail_stream(sid, self._status_for(exc, sid)))
        if h2c.refused_streams:
            log.debug(
                "refused streams %s: over %d per connection",
                h2c.refused_streams,
                self.limits.max_concurrent_streams,
            )
            h2c.refused_streams.clear()
        if self.buffered > self.limits.buffer_budget:
            out.extend(self._shed_buffered())
        return out

    def unfinished_streams(self) -> list[int]:
        """Streams with a request message begun and not complete."""
        return [
            sid
            for sid, buf in self.message_read_buffers.items()
            if sid in self._ledgers and isinstance(buf, _BoundedReadBuffer) and buf.unfinished()
        ]

    def fail_slow(self, sids: list[int]) -> list[_StreamFinished]:
        """End these streams: their message took longer than limits.message_timeout_ms."""
        status = _status(
            StatusCode.DEADLINE_EXCEEDED,
            f"request message not complete within {self.limits.message_timeout_s:g} s "
            "of its first byte (limits.message_timeout_ms)",
        )
        return [self._fail_stream(sid, status) for sid in sids if sid in self._ledgers]

    def _shed_buffered(self) -> list[_StreamFinished]:
        """Over the connection's budget: end the streams holding the most unfinished bytes
        (complete messages a handler has yet to read count only when nothing is partial)."""
        budget = self.limits.buffer_budget
        out = []
        while self.buffered > budget and self._ledgers:

            def weight(sid: int) -> tuple[int, int]:
                buf = self.message_read_buffers.get(sid)
                partial = buf.pending_bytes() if isinstance(buf, _BoundedReadBuffer) else 0
                ledger = self._ledgers[sid]
                return partial, ledger.received - ledger.acked

            sid = max(self._ledgers, key=weight)
            held = self._ledgers[sid].received - self._ledgers[sid].acked
            log.debug("stream %d dropped: connection holds %d unread bytes", sid, self.buffered)
            status = _status(
                StatusCode.RESOURCE_EXHAUSTED,
                f"this connection holds {self.buffered} bytes of unfinished requests, over "
                f"{budget} (limits.connection_buffer_bytes); this call's {held} were dropped",
            )
            out.append(self._fail_stream(sid, status))
        return out

    def _dispatch(self, event: http2.Event) -> list[Any]:
        if isinstance(event, http2.DataReceived):
            return self._data_received(event)
        if isinstance(event, http2.RequestReceived):
            return self._request_received(event)
        if isinstance(event, http2.StreamEnded):
            return self._stream_ended(event)  # type: ignore[no-any-return]
        if isinstance(event, http2.WindowUpdated):
            return [WindowUpdated(stream_id=event.stream_id, delta=event.delta)]
        if isinstance(event, http2.StreamReset):
            return self._stream_reset(event)
        if isinstance(event, http2.SettingsChanged):
            return [WindowUpdated(stream_id=0, delta=1)]  # windows may have changed: recheck
        # Request trailers (the StreamEnded after them is what counts), the client's GOAWAY.
        return []

    def _status_for(self, exc: Exception, sid: int) -> Status:
        limit = f"the limit of {self.limits.max_message_bytes} bytes (limits.max_message_bytes)"
        if isinstance(exc, _DecompressedTooLarge):
            return _status(StatusCode.RESOURCE_EXHAUSTED, f"request message decompresses to over {limit}")
        if isinstance(exc, MessageTooLargeError):
            declared = getattr(self.message_read_buffers.get(sid), "_message_length", None)
            return _status(
                StatusCode.RESOURCE_EXHAUSTED, f"request message is {declared} bytes, over {limit}"
            )
        if isinstance(exc, _BadMessage):
            return _status(StatusCode.INTERNAL, str(exc))
        log.debug("stream %d failed in the gRPC layer: %r", sid, exc)
        return _status(StatusCode.INTERNAL, "malformed request")

    def _request_received(self, event: Any) -> list[Any]:
        sid = event.stream_id
        if event.malformed is not None:
            raise _BadMessage(f"malformed request headers: {event.malformed}")
        if event.stream_ended:
            raise _BadMessage("the request has no message")
        try:
            request = parse_request(sid, event.headers)
        except Exception:
            raise _BadMessage("malformed request headers") from None
        if request.message_encoding not in _ENCODINGS:
            return [
                self._fail_stream(
                    sid,
                    _status(
                        StatusCode.UNIMPLEMENTED,
                        f"message encoding {request.message_encoding!r} is not supported "
                        "(identity, gzip, deflate are)",
                    ),
                )
            ]
        self.message_read_buffers[sid] = _BoundedReadBuffer(
            request.message_encoding, self.limits.max_message_bytes
        )
        self._ledgers[sid] = _Ledger()
        return [request]

    def _data_received(self, event: Any) -> list[Any]:
        sid = event.stream_id
        ledger = self._ledgers.get(sid)
        buf = self.message_read_buffers.get(sid)
        if ledger is None or buf is None:
            # A stream we already ended: its bytes still count against the connection window.
            if event.flow_controlled_length:
                self.h2_connection.acknowledge_received_data(event.flow_controlled_length, sid)
            return []
        ledger.received += event.flow_controlled_length
        self.buffered += event.flow_controlled_length
        return super()._data_received(event)  # type: ignore[no-any-return]

    def _stream_reset(self, event: Any) -> list[Any]:
        sid = event.stream_id
        if sid not in self._ledgers:
            return []
        self.release(sid)
        if event.remote:
            return [_StreamFinished(sid, _status(StatusCode.CANCELLED, "cancelled by the client"))]
        code = http2.ErrorCode(event.error_code).name
        status = _status(StatusCode.INTERNAL, f"stream reset for a client error ({code})")
        return [_StreamFinished(sid, status)]

    def acknowledge_received_data(self, stream_id: int, flow_controlled_length: int) -> None:
        ledger = self._ledgers.get(stream_id)
        if ledger is None:
            return  # already given back when the stream ended
        ledger.acked += flow_controlled_length
        self.buffered -= flow_controlled_length
        if flow_controlled_length:
            super().acknowledge_received_data(stream_id, flow_controlled_length)

    # -- ending streams --------------------------------------------------------------------

    def start_response(
        self, stream_id: int, content_type_suffix: str = "", custom_metadata: Any = ()
    ) -> None:
        super().start_response(stream_id, content_type_suffix, custom_metadata)
        self._started.add(stream_id)

    def release(self, sid: int) -> None:
        """Forget a stream: its unread bytes go back to the connection window."""
        ledger = self._ledgers.pop(sid, None)
        self.message_read_buffers.pop(sid, None)
        self._started.discard(sid)
        if ledger is not None:
            self.buffered -= ledger.received - ledger.acked
        if ledger is not None and ledger.received > ledger.acked:
            self.h2_connection.acknowledge_received_data(ledger.received - ledger.acked, sid)

    def stop_reading(self, sid: int) -> None:
        """After our final status: ask the client to stop sending (RFC 9113 §8.1) and drop
        whatever it still sends on this stream."""
        self.h2_connection.reset_stream(sid, http2.ErrorCode.NO_ERROR)
        self.release(sid)

    def _fail_stream(self, sid: int, status: Status) -> _StreamFinished:
        """Answer `status` on this stream now (trailers, or a trailers-only response) and
        stop reading it. The handler, if any, is told through the returned event."""
        try:
            if sid in self._started:
                self.end_response(sid, status)
            else:
                self.respond_status(sid, status, "+proto")
        except StreamClosedError:
            pass  # the stream is already closed our way: nothing more can be said on it
        self.stop_reading(sid)
        return _StreamFinished(sid, status)


class GuardedStream(GRPCProtoStream):
    """A purerpc stream that the connection can end: once finished, the handler's next
    read raises (with the status already sent) and its sends and close do nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancel_scope = trio.CancelScope()
        self.finished: Status | None = None
        self.waiting_for_window = False

    async def _wait_flow_control_update(self) -> None:
        # The read loop wakes only streams waiting (a connection WINDOW_UPDATE used to set an
        # event on every stream). No checkpoint between the window check and this flag.
        self.waiting_for_window = True
        try:
            await super()._wait_flow_control_update()
        finally:
            self.waiting_for_window = False

    def _finish(self, status: Status) -> None:
        self.finished = status
        self._state = GRPCStreamState.CLOSED
        self._incoming_events[0].close()
        self.cancel_scope.cancel()

    async def _receive(self) -> Any:
        try:
            return await super()._receive()
        except anyio.EndOfStream:
            assert self.finished is not None
            raise rpc_error(StatusCode.CANCELLED, self.finished.status_message or "") from None

    async def _send(self, message: bytes, compress: bool = False) -> None:
        if self.finished is not None:
            raise rpc_error(StatusCode.CANCELLED, "stream already ended")
        await super()._send(message, compress)

    async def start_response(self, content_type_suffix: str = "", custom_metadata: Any = ()) -> Any:
        """Queue the response headers without flushing: they leave with the first message
        or the status, in one write (purerpc sends them before the handler runs, so every
        unary call cost two socket writes and two wakeups of the writer task)."""
        if self.finished is not None:
            return None
        self._grpc_connection.start_response(
            self._stream_id, content_type_suffix or "+proto", custom_metadata
        )
        self._response_started = True
        return None

    async def close(
        self, status: Any = None, content_type_suffix: str = "", custom_metadata: Any = ()
    ) -> Any:
        if self.finished is not None or self._state in (
            GRPCStreamState.HALF_CLOSED_LOCAL,
            GRPCStreamState.CLOSED,
        ):
            return None
        await super().close(status, content_type_suffix, custom_metadata)
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        if self._state == GRPCStreamState.HALF_CLOSED_LOCAL:
            # We answered before the client finished its request: stop reading it.
            self._grpc_socket._streams.pop(self._stream_id, None)
            self._state = GRPCStreamState.CLOSED
            conn.stop_reading(self._stream_id)
        else:
            conn.release(self._stream_id)
        if isinstance(self._grpc_socket, GuardedSocket):
            self._grpc_socket.streams_changed()
        await self._socket.flush()


class GuardedSocket(GRPCProtoSocket):
    """purerpc's server-side connection with our connection class and read loop."""

    StreamClass = GuardedStream

    def __init__(self, config: GRPCConfiguration, sock: Any, limits: ConnectionLimits) -> None:
        super().__init__(config, sock)
        self.limits = limits
        self._grpc_connection = GuardedConnection(config, limits)
        self._socket = SocketWrapper(self._grpc_connection, sock)
        _set_keepalive(sock)
        self._opened = trio.current_time()
        self._partial_since: float | None = None
        self._idle_since: float | None = self._opened
        self._recv_scope: trio.CancelScope | None = None
        self._begun: dict[int, float] = {}  # stream -> when its unfinished message began

    def _deadline(self) -> float:
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        timeout = self.limits.handshake_timeout_s
        if not conn.settled:
            return self._opened + timeout
        deadline = math.inf
        if self._partial_since is not None:
            deadline = self._partial_since + timeout
        if self._idle_since is not None:
            deadline = min(deadline, self._idle_since + self.limits.idle_timeout_s)
        if self._begun:
            deadline = min(deadline, min(self._begun.values()) + self.limits.message_timeout_s)
        return deadline

    def _track_unfinished(self) -> None:
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        now = trio.current_time()
        self._begun = {sid: self._begun.get(sid, now) for sid in conn.unfinished_streams()}

    def streams_changed(self) -> None:
        """A stream began or ended: start or stop the idle clock."""
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        if conn.open_streams:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = trio.current_time()
        if self._recv_scope is not None:
            self._recv_scope.deadline = self._deadline()

    async def _go_away(self) -> None:
        """GOAWAY(NO_ERROR), then wait a little for the client to close (closing with its
        bytes unread would send RST, which may destroy the GOAWAY before it is read)."""
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        conn.h2_connection.close_connection()
        await self._socket.flush()
        with trio.move_on_after(min(1.0, self.limits.handshake_timeout_s)):
            try:
                while await self._socket.recv(self._receive_buffer_size):
                    pass  # streams past the GOAWAY's last id: the client retries them
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async def _listen(self) -> AsyncIterator[Any]:
        conn = self._grpc_connection
        assert isinstance(conn, GuardedConnection)
        while True:
            try:
                with trio.CancelScope(deadline=self._deadline()) as scope:
                    self._recv_scope = scope
                    data = await self._socket.recv(self._receive_buffer_size)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            finally:
                self._recv_scope = None
            if scope.cancelled_caught:
                now = trio.current_time()
                timeout = self.limits.handshake_timeout_s
                if not conn.settled or (
                    self._partial_since is not None and now >= self._partial_since + timeout
                ):
                    what = "completed no HTTP/2 preface" if not conn.settled else "stalled mid-frame"
                    raise HandshakeTimeout(f"{what} for {timeout:g} s (limits.handshake_timeout_ms)")
                limit = self.limits.message_timeout_s
                slow = [sid for sid, begun in self._begun.items() if now >= begun + limit]
                if slow:
                    log.debug("streams %s: request message not complete in %g s", slow, limit)
                    events: list[Any] = list(conn.fail_slow(slow))
                elif self._idle_since is not None and now >= self._idle_since + self.limits.idle_timeout_s:
                    log.debug(
                        "closing a connection with no stream for %g s (limits.idle_timeout_ms)",
                        self.limits.idle_timeout_s,
                    )
                    await self._go_away()
                    return
                else:
                    continue  # a deadline that no longer holds
            else:
                events = conn.receive_data(data)
                if conn.partial_frame_pending():
                    if self._partial_since is None:
                        self._partial_since = trio.current_time()
                else:
                    self._partial_since = None
            await self._socket.flush()
            for event in events:
                if isinstance(event, WindowUpdated):
                    targets = (
                        self._streams.values()
                        if event.stream_id == 0
                        else [self._streams.get(event.stream_id)]
                    )
                    for s in list(targets):
                        if isinstance(s, GuardedStream) and s.waiting_for_window:
                            await s._set_flow_control_update()
                    continue
                if isinstance(event, _StreamFinished):
                    finished = self._streams.pop(event.stream_id, None)
                    if isinstance(finished, GuardedStream):
                        finished._finish(event.status)
                    continue
                if isinstance(event, RequestReceived):
                    stream = self._allocate_stream(event.stream_id)
                    stream._incoming_events[0].send_nowait(event)
                    yield stream
                    continue
                target = self._streams.get(event.stream_id)
                if target is None:
                    continue
                target._incoming_events[0].send_nowait(event)
                if isinstance(event, RequestEnded):
                    target._close_remote()
            self._track_unfinished()
            self.streams_changed()


def _set_keepalive(sock: Any) -> None:
    """TCP keepalive with our timings (purerpc sets 300 s + 5 x 30 s), where the platform
    has the options; a stream without a socket (tests) is left alone."""
    try:
        raw = sock.extra(anyio.abc.SocketAttribute.raw_socket)
    except Exception:
        return
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            raw.setsockopt(socket.IPPROTO_TCP, option, value)


async def run_request(handler: Callable[[Any], Awaitable[None]], stream: Any) -> None:
    """Run one request's handler under its stream's cancel scope (a client's RST_STREAM
    cancels it, so the handler's `finally` blocks release its slot at once)."""
    scope = getattr(stream, "cancel_scope", None)
    if scope is None:
        await handler(stream)
        return
    with scope:
        await handler(stream)
