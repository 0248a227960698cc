"""One connection to one node that never hangs: the layer under AsyncClient and Client, also
used by the server (forwarding) and the CLI.

purerpc 0.8.0 sends no grpc-timeout, never notices a dead connection and wraps errors in
exception groups (PITFALLS.md 1.3), so this module owns three things for every caller:
an `anyio.fail_after` around every call, one error type (`ClientError` with a gRPC code),
and unwrapping of the groups purerpc's task groups produce when an `open_connection`
block ends. It is written on anyio, so it runs under trio and asyncio alike.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio
import h2.exceptions
import purerpc
from google.protobuf.message import Message
from purerpc.grpclib.events import ResponseEnded
from purerpc.grpclib.exceptions import GRPCError, RpcFailedError, raise_status
from purerpc.grpclib.status import StatusCode as PurerpcStatusCode

from ggap.pb import health_grpc, health_pb2, kv_grpc, kv_pb2
from ggap.rpc.errors import status_from_rpc_error
from ggap.types.errors import StatusCode

_T = TypeVar("_T")
# Metadata added to every unary call made in this context (`call_metadata`), after the
# connection's own: per-call values on a shared connection (a forwarded request's
# traceparent).
_call_metadata: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("ggap_call_metadata", default=())
_Req = TypeVar("_Req", bound=Message)

DEFAULT_TIMEOUT_S = 5.0
# Bounds closing a channel: purerpc's __aexit__ can hang when the peer stops reading.
_CLOSE_TIMEOUT_S = 1.0
_KV_SERVICE = "ginnungagap.v1.KvService"
_CLUSTER_SERVICE = "ginnungagap.v1.ClusterService"

# Errors that mean the connection itself is broken, not that the server said no.
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    h2.exceptions.H2Error,
    GRPCError,
)


class ClientError(Exception):
    """Any failed call: `code` is the gRPC status (from the server, or chosen locally for
    connection failures and timeouts), `message` says what happened."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """host:port (IPv6 as [addr]:port) -> (host, port); ValueError says what is wrong."""
    text = endpoint.strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"invalid endpoint {endpoint!r}: expected host:port with port 1..65535")
    return host, int(port)


def parse_endpoints(endpoints: str) -> list[tuple[str, int]]:
    """A comma-separated endpoint list, in the order to try them."""
    parts = [p for p in endpoints.split(",") if p.strip()]
    if not parts:
        raise ValueError("no endpoint given")
    return [parse_endpoint(p) for p in parts]


def _error_from_rpc(error: RpcFailedError) -> ClientError:
    code, message = status_from_rpc_error(error)
    return ClientError(code, message or code.name.lower())


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def _collapse(
    group: BaseExceptionGroup[BaseException], endpoint: str, body_exc: BaseException | None
) -> BaseException:
    """The one exception a caller should see for a group coming out of purerpc's task groups:
    the single real error (the caller's own unchanged; a purerpc transport error becomes
    UNAVAILABLE), or the group unchanged when several things really failed at once."""
    leaves = _leaves(group)
    cancelled = anyio.get_cancelled_exc_class()
    real = [e for e in leaves if not isinstance(e, cancelled)] or leaves
    if len(real) != 1:
        return group
    (exc,) = real
    if exc is body_exc:
        return exc
    if isinstance(exc, RpcFailedError):
        return _error_from_rpc(exc)
    if isinstance(exc, _TRANSPORT_ERRORS):
        return ClientError(StatusCode.UNAVAILABLE, f"connection to {endpoint} lost: {exc!r}")
    return exc


@contextmanager
def call_metadata(items: Sequence[tuple[str, str]]) -> Iterator[None]:
    """Unary calls made inside this block (by this task) also send `items` as metadata."""
    token = _call_metadata.set((*_call_metadata.get(), *items))
    try:
        yield
    finally:
        _call_metadata.reset(token)


class Connection:
    """Calls on one connection. Each method takes a request message, or its fields as keyword
    arguments, and returns the response message. `timeout_s` overrides the default per call."""

    def __init__(
        self,
        channel: Any,
        endpoint: str,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        tls: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.tls = tls
        self._calls_answered = 0
        self.timeout_s = timeout_s
        self._metadata = list(metadata)
        self._channel = channel
        self._kv = kv_grpc.KvServiceStub(channel)
        self._cluster = kv_grpc.ClusterServiceStub(channel)
        self._health = health_grpc.HealthStub(channel)
        self._raw = purerpc.Client(_KV_SERVICE, channel)
        self._raw_cluster = purerpc.Client(_CLUSTER_SERVICE, channel)

    async def _call(
        self,
        method: Callable[[Message], Awaitable[_T]],
        request: Message,
        timeout_s: float | None,
    ) -> _T:
        limit = self.timeout_s if timeout_s is None else timeout_s
        extra = _call_metadata.get()
        metadata = [*self._metadata, *extra] if extra else self._metadata
        try:
            with anyio.fail_after(limit):
                if metadata:
                    result = await method(request, metadata=metadata)  # type: ignore[call-arg]
                else:
                    result = await method(request)
            self._calls_answered += 1
            return result
        except TimeoutError:
            hint = ""
            if self.tls and self._calls_answered == 0:
                # TLS 1.3 ends the client's handshake before the server checks our
                # certificate; purerpc then never notices the connection was refused.
                hint = " (over TLS: the server may have refused this client's certificate)"
            raise ClientError(
                StatusCode.DEADLINE_EXCEEDED, f"no answer from {self.endpoint} within {limit:g}s{hint}"
            ) from None
        except RpcFailedError as e:
            self._calls_answered += 1
            raise _error_from_rpc(e) from None
        except _TRANSPORT_ERRORS as e:
            raise ClientError(StatusCode.UNAVAILABLE, f"call to {self.endpoint} failed: {e!r}") from None

    @staticmethod
    def _request(cls: type[_Req], request: _Req | None, fields: dict[str, Any]) -> _Req:
        if request is not None and fields:
            raise TypeError("pass a request message or keyword fields, not both")
        if request is not None:
            return request
        try:
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise ClientError(StatusCode.INVALID_ARGUMENT, f"bad {cls.__name__}: {e}") from None

    async def put(
        self, request: kv_pb2.PutRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.PutResponse:
        req = self._request(kv_pb2.PutRequest, request, fields)
        return await self._call(self._kv.Put, req, timeout_s)

    async def get(
        self, request: kv_pb2.GetRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.GetResponse:
        req = self._request(kv_pb2.GetRequest, request, fields)
        return await self._call(self._kv.Get, req, timeout_s)

    async def delete(
        self, request: kv_pb2.DeleteRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.DeleteResponse:
        req = self._request(kv_pb2.DeleteRequest, request, fields)
        return await self._call(self._kv.Delete, req, timeout_s)

    async def range(
        self, request: kv_pb2.RangeRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.RangeResponse:
        req = self._request(kv_pb2.RangeRequest, request, fields)
        return await self._call(self._kv.Range, req, timeout_s)

    async def txn(
        self, request: kv_pb2.TxnRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.TxnResponse:
        req = self._request(kv_pb2.TxnRequest, request, fields)
        return await self._call(self._kv.Txn, req, timeout_s)

    async def history(
        self, request: kv_pb2.HistoryRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.HistoryResponse:
        req = self._request(kv_pb2.HistoryRequest, request, fields)
        return await self._call(self._kv.History, req, timeout_s)

    async def compact(
        self, request: kv_pb2.CompactRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.CompactResponse:
        req = self._request(kv_pb2.CompactRequest, request, fields)
        return await self._call(self._kv.Compact, req, timeout_s)

    async def open_session(
        self,
        request: kv_pb2.OpenSessionRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.OpenSessionResponse:
        req = self._request(kv_pb2.OpenSessionRequest, request, fields)
        return await self._call(self._kv.OpenSession, req, timeout_s)

    async def close_session(
        self,
        request: kv_pb2.CloseSessionRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.CloseSessionResponse:
        req = self._request(kv_pb2.CloseSessionRequest, request, fields)
        return await self._call(self._kv.CloseSession, req, timeout_s)

    async def status(self, *, timeout_s: float | None = None) -> kv_pb2.StatusResponse:
        return await self._call(self._cluster.Status, kv_pb2.StatusRequest(), timeout_s)

    async def health(
        self, service: str = "", *, timeout_s: float | None = None
    ) -> health_pb2.HealthCheckResponse:
        """grpc.health.v1 Check; "" is the whole server (SERVING = it knows a leader)."""
        return await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout_s)

    async def member_list(
        self,
        request: kv_pb2.MemberListRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.MemberListResponse:
        req = self._request(kv_pb2.MemberListRequest, request, fields)
        return await self._call(self._cluster.MemberList, req, timeout_s)

    async def member_add(
        self, request: kv_pb2.MemberAddRequest | None = None, *, timeout_s: float | None = None, **fields: Any
    ) -> kv_pb2.MemberAddResponse:
        req = self._request(kv_pb2.MemberAddRequest, request, fields)
        return await self._call(self._cluster.MemberAdd, req, timeout_s)

    async def member_promote(
        self,
        request: kv_pb2.MemberPromoteRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.MemberPromoteResponse:
        req = self._request(kv_pb2.MemberPromoteRequest, request, fields)
        return await self._call(self._cluster.MemberPromote, req, timeout_s)

    async def member_remove(
        self,
        request: kv_pb2.MemberRemoveRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.MemberRemoveResponse:
        req = self._request(kv_pb2.MemberRemoveRequest, request, fields)
        return await self._call(self._cluster.MemberRemove, req, timeout_s)

    async def transfer_leader(
        self,
        request: kv_pb2.TransferLeaderRequest | None = None,
        *,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> kv_pb2.TransferLeaderResponse:
        req = self._request(kv_pb2.TransferLeaderRequest, request, fields)
        return await self._call(self._cluster.TransferLeader, req, timeout_s)

    async def watch(
        self,
        request: kv_pb2.WatchRequest | None = None,
        *,
        idle_timeout_s: float | None = None,
        timeout_s: float | None = None,
        **fields: Any,
    ) -> AsyncGenerator[kv_pb2.WatchResponse, None]:
        """Yield watch responses until the server ends the stream. Opening the stream is
        bounded by `timeout_s`; each wait for the next response by `idle_timeout_s` (None:
        wait forever). Nothing needs closing: purerpc cannot cancel a stream, so stopping
        the iteration simply stops reading it."""
        req = self._request(kv_pb2.WatchRequest, request, fields)
        stream = await self._call(self._open_watch, req, timeout_s)
        idle = math.inf if idle_timeout_s is None else idle_timeout_s
        while (msg := await self._receive(stream, idle, "watch")) is not None:
            yield msg

    async def snapshot(
        self,
        *,
        first_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[kv_pb2.SnapshotResponse, None]:
        """Yield the messages of ClusterService.Snapshot until the server ends the stream.

        Opening it is bounded by `timeout_s`; the wait for the first message, while the
        server copies its database, by `first_timeout_s`; each later wait by
        `idle_timeout_s` (both default to the call timeout). Checking what arrives (sizes,
        checksum) is the caller's business: see ggap/cli/_snapshot.py."""
        stream = await self._call(self._open_snapshot, kv_pb2.SnapshotRequest(), timeout_s)
        default = self.timeout_s if timeout_s is None else timeout_s
        limit = default if first_timeout_s is None else first_timeout_s
        idle = default if idle_timeout_s is None else idle_timeout_s
        while (msg := await self._receive(stream, limit, "snapshot")) is not None:
            yield msg
            limit = idle

    async def _receive(self, stream: Any, limit: float, what: str) -> Any:
        """The next message of a server stream within `limit` seconds; None once the server
        ended it with OK; ClientError for an error status, a broken connection or silence."""
        try:
            with anyio.fail_after(limit):
                msg = await stream.receive_message()
        except TimeoutError:
            raise ClientError(
                StatusCode.DEADLINE_EXCEEDED, f"no {what} response from {self.endpoint} within {limit:g}s"
            ) from None
        except _TRANSPORT_ERRORS as e:
            raise ClientError(StatusCode.UNAVAILABLE, f"{what} on {self.endpoint} failed: {e!r}") from None
        if msg is None:
            event = stream.end_stream_event
            if isinstance(event, ResponseEnded) and event.status.status_code != PurerpcStatusCode.OK:
                try:
                    raise_status(event.status)
                except RpcFailedError as e:
                    raise _error_from_rpc(e) from None
        return msg

    async def _open_watch(self, request: Message, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        return await _open_server_stream(
            self._raw, "Watch", kv_pb2.WatchRequest, kv_pb2.WatchResponse, request, metadata
        )

    async def _open_snapshot(self, request: Message, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        return await _open_server_stream(
            self._raw_cluster, "Snapshot", kv_pb2.SnapshotRequest, kv_pb2.SnapshotResponse, request, metadata
        )


async def _open_server_stream(
    raw: purerpc.Client,
    method: str,
    request_type: type[Message],
    response_type: type[Message],
    request: Message,
    metadata: Sequence[tuple[str, str]],
) -> Any:
    """Start a server-streaming call by hand, so sending the request is bounded (by the
    caller's `_call`) apart from the waits for what comes back."""
    stream = await raw.rpc(method, request_type, response_type, metadata=list(metadata) or None)
    try:
        await stream.send_message(request)
    finally:
        await stream.close()
    return stream


def _describe_connect_error(error: OSError) -> str:
    """anyio reports "All connection attempts failed" and hides the reasons in __cause__."""
    causes = [error]
    cause = error.__cause__
    if isinstance(cause, BaseExceptionGroup):
        causes = [e for e in _leaves(cause) if isinstance(e, OSError)] or causes
    elif isinstance(cause, OSError):
        causes = [cause]
    reasons = dict.fromkeys(e.strerror or str(e) for e in causes)
    return "; ".join(reasons)


async def _close_socket(channel: Any) -> None:
    """purerpc never closes its sockets (PITFALLS 1.3); without this the server keeps the
    connection until garbage collection. Reaches into purerpc 0.8.0 internals (pinned)."""
    stream = getattr(getattr(getattr(channel, "_grpc_socket", None), "_socket", None), "_stream", None)
    if stream is not None:
        await anyio.aclose_forcefully(stream)


@asynccontextmanager
async def open_connection(
    endpoint: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    metadata: Sequence[tuple[str, str]] = (),
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Connection]:
    """Connect to the first endpoint of a comma-separated list that accepts a connection.

    With `ssl_context` (see `ggap.tls.client_context`: it sets ALPN h2 and verifies the
    server's chain and host name) the connection is TLS; a failed handshake counts as that
    endpoint not connecting, and the reason is in the UNAVAILABLE message.

    Every call on the yielded Connection is bounded by `timeout_s`, and so is each connect.
    Raises ClientError: UNAVAILABLE when no endpoint connects, INVALID_ARGUMENT for a
    malformed endpoint list. Errors leaving the block come out as the single exception
    that caused them, not wrapped in purerpc's exception groups.
    """
    try:
        targets = parse_endpoints(endpoint)
    except ValueError as e:
        raise ClientError(StatusCode.INVALID_ARGUMENT, str(e)) from None
    failures: list[str] = []
    for host, port in targets:
        name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        connected = False
        body_exc: BaseException | None = None
        channel = (
            purerpc.secure_channel(host, port, ssl_context)
            if ssl_context is not None
            else purerpc.insecure_channel(host, port)
        )
        # One scope around the whole channel lifetime (cancel scopes must nest): its deadline
        # bounds the connect, is lifted while the caller works, then bounds the close.
        with anyio.CancelScope(deadline=anyio.current_time() + timeout_s) as scope:
            try:
                async with channel:
                    connected = True
                    scope.deadline = math.inf
                    try:
                        yield Connection(channel, name, timeout_s, metadata, tls=ssl_context is not None)
                    except BaseException as e:
                        body_exc = e
                        raise
                    finally:
                        scope.deadline = anyio.current_time() + _CLOSE_TIMEOUT_S
            except OSError as e:
                if connected:
                    if e is body_exc:
                        raise
                    raise ClientError(StatusCode.UNAVAILABLE, f"connection to {name} lost: {e}") from None
                failures.append(f"{name}: {_describe_connect_error(e)}")
                continue
            except BaseExceptionGroup as group:
                raise _collapse(group, name, body_exc) from None
            finally:
                with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _CLOSE_TIMEOUT_S):
                    await _close_socket(channel)
        if connected:
            return
        failures.append(f"{name}: connect timed out after {timeout_s:g}s")
    raise ClientError(StatusCode.UNAVAILABLE, "cannot connect: " + "; ".join(failures))
