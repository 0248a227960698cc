"""Serving purerpc services under trio, with the guarantees purerpc itself lacks.

purerpc 0.8.0 binds every interface with SO_REUSEPORT, enforces no deadline, turns
unexpected exceptions into CANCELLED with the traceback repr as message, never closes
its sockets and starves the event loop while streaming (see PITFALLS.md §1). This module
keeps purerpc's HTTP/2 and dispatch code (`ConnectionHandler.request_received`) but owns
the listening socket, the connection lifetime and a wrapper around every handler.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import math
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, cast

import anyio
import anyio.abc
import attrs
import purerpc
import trio
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSStream
from google.protobuf.message import DecodeError
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.exceptions import RpcFailedError, StreamClosedError
from purerpc.grpclib.status import Status
from purerpc.grpclib.status import StatusCode as PurerpcStatusCode
from purerpc.rpc import RPCSignature
from purerpc.server import ConnectionHandler

from ggap import tracing
from ggap.rpc.errors import rpc_error, to_rpc_error
from ggap.rpc.frontdoor import ConnectionLimits, GuardedSocket, GuardedStream, HandshakeTimeout, run_request
from ggap.rpc.metrics import RpcMetrics, grpc_type
from ggap.tls import RefusalLog, describe_handshake_error
from ggap.types.errors import GgapError, StatusCode
from ggap.types.helpers import format_addr as _format_addr
from ggap.types.helpers import positive as _positive

__all__ = [
    "BindError",
    "RpcPolicy",
    "ServerTls",
    "current_deadline",
    "current_peer",
    "guarded_service",
    "serve_grpc",
]

log = logging.getLogger(__name__)
_refusals = RefusalLog(log)

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("ggap_rpc_deadline", default=math.inf)
_peer: contextvars.ContextVar[str | None] = contextvars.ContextVar("ggap_rpc_peer", default=None)


def current_deadline() -> float:
    """The running request's deadline on trio's clock (`math.inf` if none).

    Deeper code bounds its own waits with it (`trio.move_on_at(current_deadline())`)
    instead of each layer inventing a timeout.
    """
    return _deadline.get()


def current_peer() -> str | None:
    """The client's "host:port" for the running request; None outside a request."""
    return _peer.get()


class BindError(GgapError, OSError):
    """The client address cannot be listened on (in use, not local, unresolvable).

    An OSError so callers that handle socket errors keep working; errno is the cause's.
    """

    code = StatusCode.UNAVAILABLE

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"cannot listen on {_format_addr(host, port)}: {reason}")
        self.errno = cause.errno
        self.strerror = reason
        self.host = host
        self.port = port

    def __str__(self) -> str:
        # OSError's own __str__ would show "[Errno 98] ..." and drop the address.
        return self.message


@attrs.define(eq=False)
class RpcPolicy:
    """Limits shared by every service guarded with the same instance.

    One instance per listening port: its in-flight count is the port's load.
    """

    # Deadline for unary calls whose client sent none (math.inf: no default).
    default_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    # Unary requests served at once; more get RESOURCE_EXHAUSTED.
    max_in_flight: int = attrs.field(default=4096, validator=_positive)
    # Open streams (watches) at once, counted apart from unary calls: long-lived streams
    # must not lock unary callers out (a client's cancel frees a slot at once, frontdoor.py).
    max_streams: int = attrs.field(default=4096, validator=_positive)
    # Largest request message accepted; a larger one gets RESOURCE_EXHAUSTED.
    max_message_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    # Per-method call counts and handling times (grpc_server_* metrics); None: not recorded.
    metrics: RpcMetrics | None = attrs.field(default=None, kw_only=True)
    # Calls refused by max_in_flight / max_streams so far.
    rejected_unary: int = attrs.field(default=0, init=False)
    rejected_streams: int = attrs.field(default=0, init=False)
    _unary: int = attrs.field(default=0, init=False, repr=False)
    _streams: int = attrs.field(default=0, init=False, repr=False)

    @property
    def in_flight(self) -> int:
        """Requests being served now, streams included (what the limit counts)."""
        return self._unary + self._streams

    @property
    def in_flight_unary(self) -> int:
        """Unary requests being served: what a graceful shutdown waits for (streams never end)."""
        return self._unary

    @property
    def in_flight_streams(self) -> int:
        return self._streams

    def _enter(self, streaming: bool) -> None:
        if streaming:
            if self._streams >= self.max_streams:
                self.rejected_streams += 1
                raise rpc_error(StatusCode.RESOURCE_EXHAUSTED, "too many streams open")
            self._streams += 1
        else:
            if self._unary >= self.max_in_flight:
                self.rejected_unary += 1
                raise rpc_error(StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight")
            self._unary += 1

    def _exit(self, streaming: bool) -> None:
        if streaming:
            self._streams -= 1
        else:
            self._unary -= 1


class _RawRequest:
    """Stands in for the request type so purerpc hands us bytes: parsing in the guard lets a
    malformed or oversized message get a clean status (purerpc would answer CANCELLED with
    the exception's repr)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def ParseFromString(self, data: bytes) -> None:
        self.data = data


def _parse_request(raw: Any, message_type: Any, policy: RpcPolicy) -> Any:
    if not isinstance(raw, _RawRequest):
        return raw
    size = len(raw.data)
    if size > policy.max_message_bytes:
        raise rpc_error(
            StatusCode.RESOURCE_EXHAUSTED,
            f"request message is {size} bytes, over the limit of {policy.max_message_bytes}",
        )
    msg = message_type()
    try:
        msg.ParseFromString(raw.data)
    except DecodeError as exc:
        raise rpc_error(StatusCode.INVALID_ARGUMENT, f"malformed request: {exc}") from None
    return msg


def _client_deadline(request: Any) -> float | None:
    timeout = getattr(request, "timeout", None)  # purerpc parses grpc-timeout, never enforces it
    if timeout is None:
        return None
    return trio.current_time() + max(timeout.total_seconds(), 0.0)


def _deadline_exceeded() -> RpcFailedError:
    return rpc_error(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


def _map_error(exc: Exception, path: str) -> RpcFailedError:
    leaf: BaseException = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if isinstance(leaf, trio.TooSlowError):
        # A deeper fail_at(current_deadline()) fired before our own scope noticed.
        return _deadline_exceeded()
    return to_rpc_error(exc, where=path)


def _wrap_unary(
    fn: Callable[[Any, Any], Awaitable[Any]], policy: RpcPolicy, path: str, message_type: Any
) -> Any:
    async def guarded(arg: Any, request: Any) -> Any:
        deadline = _client_deadline(request)
        if deadline is None:
            deadline = trio.current_time() + policy.default_timeout_s
        policy._enter(False)
        token = _deadline.set(deadline)
        try:
            msg = _parse_request(arg, message_type, policy)
            with trio.move_on_at(deadline):
                return await fn(msg, request)
            raise _deadline_exceeded()
        except Exception as exc:
            raise _map_error(exc, path) from None
        finally:
            _deadline.reset(token)
            policy._exit(False)

    return guarded


def _wrap_streaming(
    fn: Callable[[Any, Any], AsyncIterator[Any]], policy: RpcPolicy, path: str, message_type: Any
) -> Any:
    # Streams (watches, reflection) are long-lived: only an explicit client deadline applies.
    async def guarded(arg: Any, request: Any) -> AsyncIterator[Any]:
        deadline = _client_deadline(request)
        if deadline is None:
            deadline = math.inf
        policy._enter(True)
        token = _deadline.set(deadline)
        inner: AsyncIterator[Any] | None = None
        try:
            inner = fn(_parse_request(arg, message_type, policy), request)
            while True:
                # The scope covers only the handler's own step, never our yield: a cancel
                # scope must not stay open while the consumer runs.
                with trio.move_on_at(deadline) as scope:
                    try:
                        item = await inner.__anext__()
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise _deadline_exceeded()
                yield item
                # purerpc sends without a checkpoint while the peer's window is open, which
                # would starve every other task (PITFALLS §1.3).
                await trio.lowlevel.checkpoint()
        except Exception as exc:
            raise _map_error(exc, path) from None
        finally:
            try:
                # Close the handler's generator now, in this task, so its cleanup runs
                # while the request context still exists.
                aclose = getattr(inner, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                policy._exit(True)
                try:
                    _deadline.reset(token)
                except ValueError:
                    pass  # finalised outside the request's context; nothing to restore

    return guarded


def guarded_service(target: purerpc.Servicer | purerpc.Service, policy: RpcPolicy) -> purerpc.Service:
    """The same service with every method behind `policy`, deadlines and error mapping.

    `target` is typically a servicer deriving from a generated `*Servicer` whose methods
    take `(self, msg)` or `(self, msg, request)`. Unary responses get the client's deadline
    or `policy.default_timeout_s`; streaming responses only the client's and a checkpoint
    after every message. GgapError keeps its code, anything else becomes INTERNAL.
    """
    inner = target.service if isinstance(target, purerpc.Servicer) else target
    outer = purerpc.Service(inner.name)
    for method_name, bound in inner.methods.items():
        signature = bound.signature
        path = f"/{inner.name}/{method_name}"
        message_type = signature.request_type
        if signature.cardinality in (purerpc.Cardinality.UNARY_UNARY, purerpc.Cardinality.UNARY_STREAM):
            # One request message: take it as bytes and parse it inside the guard.
            signature = RPCSignature(signature.cardinality, _RawRequest, signature.response_type)
        metrics = policy.metrics
        stats = metrics.method(inner.name, method_name, grpc_type(signature.cardinality)) if metrics else None
        if signature.cardinality in (purerpc.Cardinality.UNARY_STREAM, purerpc.Cardinality.STREAM_STREAM):
            wrapped = _wrap_streaming(bound.method_fn, policy, path, message_type)
            if metrics is not None and stats is not None:
                wrapped = metrics.wrap_streaming(wrapped, stats)
        else:
            fn = bound.method_fn
            if tracing.ENABLED and tracing.traced_service(inner.name):  # decided once, at start
                fn = tracing.traced_unary(fn, path)
            wrapped = _wrap_unary(fn, policy, path, message_type)
            if metrics is not None and stats is not None:
                wrapped = metrics.wrap_unary(wrapped, stats)
        outer.add_method(method_name, wrapped, signature)
    return outer


def _peer_of(stream: anyio.abc.SocketStream) -> str:
    try:
        addr = stream.extra(SocketAttribute.remote_address)
    except (anyio.TypedAttributeLookupError, OSError):
        return "?"
    if isinstance(addr, tuple):
        return _format_addr(str(addr[0]), int(addr[1]))
    return str(addr)


# Errors that only mean "the client went away"; expected, so not worth a warning.
_DISCONNECTS = (
    trio.Cancelled,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    StreamClosedError,
)


class _DemoteDisconnects(logging.Filter):
    """Turn purerpc.server's warnings about cancelled or reset streams into debug records
    (dropped unless debug logging is on for that logger).

    Its dispatcher catches everything, trio.Cancelled included, and warns: every client
    cancel and every server shutdown would otherwise fill the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]
        if isinstance(exc, BaseExceptionGroup):
            expected = exc.split(_DISCONNECTS)[1] is None
        else:
            expected = isinstance(exc, _DISCONNECTS)
        if not expected or record.levelno <= logging.DEBUG:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno = logging.DEBUG
        record.levelname = logging.getLevelName(logging.DEBUG)
        return True


def _install_log_filter() -> None:
    purerpc_log = logging.getLogger("purerpc.server")
    if not any(isinstance(f, _DemoteDisconnects) for f in purerpc_log.filters):
        purerpc_log.addFilter(_DemoteDisconnects())


class _SanitizingStream(GuardedStream):
    """purerpc answers any exception that escapes a handler's plumbing (a request that does
    not parse, a cancelled read when the connection dies) with CANCELLED and repr(exc_info)
    as the message. `close` runs inside that except block, so it can see the exception and
    send a status that is right and leaks nothing instead."""

    async def close(
        self, status: Any = None, content_type_suffix: str = "", custom_metadata: Any = ()
    ) -> Any:
        if status is not None and status.status_code == PurerpcStatusCode.CANCELLED:
            exc = sys.exc_info()[1]
            # An RpcFailedError is a status we chose (the guard's): send it as it is.
            if exc is not None and not isinstance(exc, RpcFailedError):
                status = _leak_free_status(exc)
        return await super().close(status, content_type_suffix, custom_metadata)


def _leak_free_status(exc: BaseException) -> Status:
    if isinstance(exc, DecodeError):
        return Status(PurerpcStatusCode.INVALID_ARGUMENT, "malformed request message")
    if isinstance(exc, trio.Cancelled | anyio.get_cancelled_exc_class()):
        # Only the connection closing (or the server stopping) cancels a request here.
        return Status(PurerpcStatusCode.UNAVAILABLE, "connection closing; request abandoned")
    log.warning("request failed outside its handler: %r", exc)
    return Status(PurerpcStatusCode.INTERNAL, "internal error")


class _SanitizingSocket(GuardedSocket):
    StreamClass = _SanitizingStream


@attrs.frozen
class ServerTls:
    """TLS for a gRPC port: the server context (ALPN h2 set) and the handshake bound."""

    context: ssl.SSLContext
    handshake_timeout_s: float = 5.0


async def _tls_handshake(
    stream: anyio.abc.SocketStream, tls: ServerTls, peer: str
) -> anyio.abc.ByteStream | None:
    """The TLS stream once the handshake succeeded; None (logged) if it failed or timed out.

    It runs in the connection's own task, so a slow or garbage handshake holds up no one
    else; with client_cert_auth the client's chain is verified here, before any gRPC."""
    try:
        with trio.fail_after(tls.handshake_timeout_s):
            return await TLSStream.wrap(
                stream, server_side=True, ssl_context=tls.context, standard_compatible=False
            )
    except Exception as exc:  # whatever a client sends must not take more than its connection
        _refusals.refused("client connection", peer, describe_handshake_error(exc))
        return None


async def _serve_connection(
    handler: ConnectionHandler,
    stream: anyio.abc.SocketStream,
    limits: ConnectionLimits,
    tls: ServerTls | None = None,
) -> None:
    """One client connection: its requests run as tasks of a nursery owned by it.

    Resource handling: the socket is always closed here, whatever happens.
    Error handling: a failed TLS handshake is logged (once per host and reason a minute)
    and ends this connection; anything else the connection raises (garbage, oversized
    message, reset) ends this connection only and is logged at debug level; cancellation
    propagates.
    """
    peer = _peer_of(stream)
    _peer.set(peer)  # this task's context is copied into every request task it spawns
    conn: anyio.abc.ByteStream = stream
    try:
        if tls is not None:
            wrapped = await _tls_handshake(stream, tls, peer)
            if wrapped is None:
                return
            conn = wrapped
        async with _SanitizingSocket(handler.config, conn, limits) as grpc_socket:
            async with trio.open_nursery() as requests:
                async for rpc_stream in grpc_socket.listen():
                    # Under the stream's own cancel scope: a client's RST_STREAM cancels it.
                    requests.start_soon(run_request, handler.request_received, rpc_stream)
                # EOF: the client is gone and will read nothing more, so stop its handlers
                # (a client's RST_STREAM cancels one request, see frontdoor.py).
                requests.cancel_scope.cancel()
    except* HandshakeTimeout as group:
        log.debug("closing connection from %s: %s", peer, group.exceptions[0])
    except* Exception as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        log.debug("connection from %s ended: %r", peer, first, exc_info=group)
    finally:
        await anyio.aclose_forcefully(stream)


_TRANSPORT_HEADROOM = 4

_RETRY_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@attrs.define
class _Admission:
    """Connections open now against limits.max_connections; refusals are logged once per
    episode of being full (a flood must not flood the log too)."""

    limit: int | None
    open: int = 0
    refused: int = 0
    _warned: bool = False

    def admit(self, peer: str) -> bool:
        if self.limit is None or self.open < self.limit:
            self._warned = False
            self.open += 1
            return True
        self.refused += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "refusing client connections (first from %s): %d open, the limit "
                "(limits.max_connections); logged once until a connection closes",
                peer,
                self.open,
            )
        return False


async def _serve_admitted(
    handler: ConnectionHandler,
    stream: anyio.abc.SocketStream,
    limits: ConnectionLimits,
    admission: _Admission,
    tls: ServerTls | None,
) -> None:
    try:
        await _serve_connection(handler, stream, limits, tls)
    finally:
        admission.open -= 1


async def _accept_loop(
    listener: anyio.abc.SocketListener,
    connections: trio.Nursery,
    handler: ConnectionHandler,
    tls: ServerTls | None,
    limits: ConnectionLimits,
    admission: _Admission,
) -> None:
    while True:
        try:
            stream = await listener.accept()
        except anyio.ClosedResourceError:
            return
        except (anyio.BrokenResourceError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
            if isinstance(cause, OSError) and cause.errno in _RETRY_ACCEPT_ERRNOS:
                log.warning("accept failed (%s); retrying in 100 ms", cause)
            else:
                log.debug("accept failed: %r", exc)
            await trio.sleep(0.1)
            continue
        if not admission.admit(_peer_of(stream)):
            await anyio.aclose_forcefully(stream)
            continue
        connections.start_soon(_serve_admitted, handler, stream, limits, admission, tls)


async def serve_grpc(
    services: Sequence[purerpc.Service],
    host: str,
    port: int,
    *,
    max_message_bytes: int,
    limits: ConnectionLimits | None = None,
    tls: ServerTls | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `services` on exactly `host:port` until cancelled.

    Args:
        services: purerpc services (usually from `guarded_service`); names must be unique.
        host: address to bind; use "0.0.0.0" or "::" explicitly for all interfaces.
        port: TCP port; 0 picks a free one, reported through `task_status.started(port)`
            once the socket is listening.
        max_message_bytes: the per-request limit: a larger request message ends its own
            call with RESOURCE_EXHAUSTED (ggap/rpc/frontdoor.py); responses may be 4x this.
        limits: per-connection bounds (concurrent streams, handshake timeout, connections);
            defaults apart from `max_message_bytes`, which always comes from the argument.
        tls: serve TLS (every connection's handshake first, each in its own task and
            bounded by `tls.handshake_timeout_s`); None: plaintext h2c.

    Resource handling: the listening socket and every accepted socket are closed on
    exit; cancelling the caller's scope stops accepting and cancels all requests.

    Error handling: a port in use (or any bind failure) raises `BindError` before
    `started`, never a second silent server. A connection's failure ends that connection
    only. Accept errors are logged and retried after 100 ms.
    """
    if not host:
        raise ValueError("host must be given; use 0.0.0.0 or :: for every interface")
    by_name: dict[str, purerpc.Service] = {}
    for service in services:
        if service.name in by_name:
            raise ValueError(f"service {service.name} given twice")
        by_name[service.name] = service
    # ConnectionHandler only uses `server` for counters in its __call__, which we replace.
    handler = ConnectionHandler(by_name, None)
    limits = attrs.evolve(limits or ConnectionLimits(), max_message_bytes=max_message_bytes)
    admission = _Admission(limits.max_connections)
    # purerpc's own limit bounds what we send (a Range answer may exceed a request's
    # limit); inbound messages are bounded per stream by the front door.
    handler.config = GRPCConfiguration(
        client_side=False, max_message_length=max_message_bytes * _TRANSPORT_HEADROOM
    )
    _install_log_filter()

    try:
        # reuse_port=False: a second server on the same port must fail, not share it.
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
    except OSError as exc:
        raise BindError(host, port, exc) from exc
    try:
        bound_port = int(listener.extra(SocketAttribute.local_port))
        log.info("serving gRPC%s on %s", " over TLS" if tls else "", _format_addr(host, bound_port))
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptors:
                for sub in listener.listeners:
                    sock_listener = cast(anyio.abc.SocketListener, sub)
                    acceptors.start_soon(
                        _accept_loop, sock_listener, connections, handler, tls, limits, admission
                    )
                task_status.started(bound_port)
    finally:
        await anyio.aclose_forcefully(listener)
