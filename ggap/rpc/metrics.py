"""What the guarded services record per gRPC method (go-grpc-prometheus' server metrics).

`RpcMetrics` is handed to `RpcPolicy(metrics=...)`; `guarded_service` then wraps each
method once more, outermost, so a call refused by the in-flight limit or the size limit is
counted with the code it got. Per call: two int increments and one histogram bisect; the
per-method record is resolved when the service is built, never per call. The Prometheus
side (`ggap.server.metrics`) reads `methods` on scrape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import purerpc
import trio
from purerpc.grpclib.exceptions import RpcFailedError

from ggap.instruments import LATENCY_BUCKETS, Histogram
from ggap.types.errors import StatusCode

__all__ = ["MethodStats", "RpcMetrics", "grpc_type"]

_OK = int(StatusCode.OK)
_CANCELLED = int(StatusCode.CANCELLED)
_UNKNOWN = int(StatusCode.UNKNOWN)


def grpc_type(cardinality: purerpc.Cardinality) -> str:
    """go-grpc-prometheus' grpc_type label."""
    return {
        purerpc.Cardinality.UNARY_UNARY: "unary",
        purerpc.Cardinality.UNARY_STREAM: "server_stream",
        purerpc.Cardinality.STREAM_UNARY: "client_stream",
        purerpc.Cardinality.STREAM_STREAM: "bidi_stream",
    }[cardinality]


class MethodStats:
    """One method's counters: calls started, calls handled by status code, handling time."""

    __slots__ = ("handled", "handling", "method", "service", "started", "type")

    def __init__(self, service: str, method: str, type_: str) -> None:
        self.service = service
        self.method = method
        self.type = type_
        self.started = 0
        self.handled: dict[int, int] = {}  # status code (int) -> calls
        self.handling = Histogram(LATENCY_BUCKETS)

    def done(self, code: int, seconds: float) -> None:
        handled = self.handled
        handled[code] = handled.get(code, 0) + 1
        self.handling.observe(seconds)


def _code_of(exc: BaseException) -> int:
    if isinstance(exc, RpcFailedError):
        return int(exc.status.int_value)
    if isinstance(exc, trio.Cancelled | GeneratorExit):
        return _CANCELLED  # the client reset the stream or the connection went away
    return _UNKNOWN


class RpcMetrics:
    """Every guarded method's `MethodStats`, keyed by (service, method)."""

    def __init__(self) -> None:
        self.methods: dict[tuple[str, str], MethodStats] = {}

    def method(self, service: str, method: str, type_: str) -> MethodStats:
        key = (service, method)
        stats = self.methods.get(key)
        if stats is None:
            stats = self.methods[key] = MethodStats(service, method, type_)
        return stats

    def wrap_unary(
        self, fn: Callable[[Any, Any], Awaitable[Any]], stats: MethodStats
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        clock = time.perf_counter

        async def observed(arg: Any, request: Any) -> Any:
            stats.started += 1
            t0 = clock()
            code = _OK
            try:
                return await fn(arg, request)
            except BaseException as exc:
                code = _code_of(exc)
                raise
            finally:
                stats.done(code, clock() - t0)

        return observed

    def wrap_streaming(
        self, fn: Callable[[Any, Any], AsyncIterator[Any]], stats: MethodStats
    ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        clock = time.perf_counter

        async def observed(arg: Any, request: Any) -> AsyncIterator[Any]:
            stats.started += 1
            t0 = clock()
            code = _OK
            inner = fn(arg, request)
            try:
                async for item in inner:
                    yield item
            except BaseException as exc:
                code = _code_of(exc)
                raise
            finally:
                try:
                    aclose = getattr(inner, "aclose", None)
                    if aclose is not None:
                        await aclose()
                finally:
                    stats.done(code, clock() - t0)

        return observed
