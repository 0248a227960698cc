"""OpenTelemetry tracing of client requests (README "Tracing").

Only the OpenTelemetry *API* is a runtime dependency; the SDK (and the OTLP exporter) are
loaded by `setup` when `tracing.exporter` is not "none". With "none" nothing is set up and
`ENABLED` stays False: every instrumented place tests that flag first, so the hot path
pays one module-attribute read (no span objects, no context switches).

Spans of one Put (names as exported):

    <service>/<Method>      SERVER, child of the caller's W3C `traceparent` (gRPC metadata)
      forward               CLIENT, on a follower that hands the request to the leader's
                            client port (a TTL, quorum=all, membership, or a write the
                            leader refused inside Raft; one per attempt); its traceparent
                            goes to the leader, whose server span is its child
      raft.propose          from the proposal entering the raft loop's mailbox until the
                            engine answers it (applied, refused or overwritten). A write a
                            follower forwards inside Raft has `ggap.forwarded_to`; its
                            traceparent rides on the PROPOSE message, and the leader's own
                            raft.propose (`ggap.forwarded_from`, with the persist / commit /
                            apply children below) is its child
        raft.persist        the writer-thread hop that saved (and fsynced) the entry, from
                            the hand-off to the writer thread (`ggap.queued_ms` waiting
                            for it) to durable (`ggap.fsync_ms` save + fsync)
        raft.commit         from the entry being durable here until a Ready showed it
                            committed (the quorum's acknowledgements)
        raft.apply          the writer-thread apply of the batch that held the entry
      raft.read_index       a linearizable read's barrier: ReadIndex, then the wait until
                            this node applied that index

persist/commit/apply are batched by the engine (one fsync, one apply transaction for
everything that arrived in a loop turn): each traced proposal in a batch gets its own child
span with the batch's start and end times, and attributes saying how many entries shared it
(`ggap.batch.entries`), so one slow Put shows which step was slow and whether it was slow
for everyone in its batch. The raft core (sans-I/O) knows nothing of this: the trio driver
(ggap/replica/node.py) records the times around its writer-thread hop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import trio
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)
span_log = logging.getLogger("ggap.spans")

CLIENT = SpanKind.CLIENT

#: True once `setup` installed a tracer; read before doing any tracing work.
ENABLED = False
EXPORTERS = ("none", "console", "otlp")

_propagator = TraceContextTextMapPropagator()
_tracer: trace.Tracer = trace.NoOpTracer()
_provider: Any = None


class TracingSetupError(Exception):
    """The configured exporter cannot be used (a package is missing); exit status 2."""


# -- setup ----------------------------------------------------------------------------------


def setup(
    exporter: str,
    *,
    sampling_ratio: float = 1.0,
    otlp_endpoint: str = "",
    node_id: int = 0,
    structured_logs: bool = False,
    span_exporter: Any = None,
    batch: bool = True,
) -> None:
    """Install a tracer for `exporter` ("none" does nothing). `span_exporter` replaces the
    configured exporter (tests: an in-memory one); `batch=False` exports each span as it
    ends (tests), else a background thread exports in batches."""
    global ENABLED, _tracer, _provider
    if exporter not in EXPORTERS:
        raise TracingSetupError(f"tracing.exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter == "none" and span_exporter is None:
        return
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise TracingSetupError(
            f"tracing.exporter = {exporter!r} needs the OpenTelemetry SDK ({exc}); "
            'install it with `pip install ginnungagap[tracing]`, or set tracing.exporter = "none"'
        ) from None
    if span_exporter is None:
        span_exporter = _make_exporter(exporter, otlp_endpoint, structured_logs)
    resource = Resource.create({"service.name": "ggap", "service.instance.id": str(node_id)})
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(sampling_ratio)))
    processor = (
        BatchSpanProcessor(span_exporter, schedule_delay_millis=500)
        if batch
        else SimpleSpanProcessor(span_exporter)
    )
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("ggap")
    ENABLED = True


def _make_exporter(exporter: str, otlp_endpoint: str, structured_logs: bool) -> Any:
    if exporter == "console":
        return LogSpanExporter(structured=structured_logs)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise TracingSetupError(
            f'tracing.exporter = "otlp" needs the OTLP exporter package ({exc}); install it with '
            "`pip install ginnungagap[otlp]` (opentelemetry-exporter-otlp-proto-http), "
            'or choose tracing.exporter = "console" or "none"'
        ) from None
    return OTLPSpanExporter(endpoint=otlp_endpoint)


def shutdown() -> None:
    """Export what is buffered and stop (the node calls it on the way out)."""
    global ENABLED, _tracer, _provider
    provider, _provider = _provider, None
    ENABLED = False
    _tracer = trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


class LogSpanExporter:
    """The "console" exporter: each finished span as one line of the node's log (logger
    `ggap.spans`, INFO), so spans land where the node's logs go. With JSON logs the span is
    the line's `span` field; with text logs the message carries it as compact JSON."""

    def __init__(self, *, structured: bool) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._ok = SpanExportResult.SUCCESS
        self._structured = structured
        span_log.setLevel(logging.INFO)  # spans are asked for: the node's level does not hide them

    def export(self, spans: Sequence[Any]) -> Any:
        for span in spans:
            data = span_dict(span)
            if self._structured:
                span_log.info("span %s", span.name, extra={"span": data})
            else:
                span_log.info("span %s", json.dumps(data, separators=(",", ":")))
        return self._ok

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _iso_ns(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:06d}Z"


def span_dict(span: Any) -> dict[str, Any]:
    """A finished SDK span as a dict shaped like the SDK's own `to_json` (the resource left
    out: it is the same on every span of a node, and the node id is on every log line).
    Built directly: going through `to_json` and back cost about 5x more per span."""
    ctx = span.context
    parent = span.parent
    status = span.status
    out: dict[str, Any] = {
        "name": span.name,
        "context": {"trace_id": f"0x{ctx.trace_id:032x}", "span_id": f"0x{ctx.span_id:016x}"},
        "kind": str(span.kind),
        "parent_id": f"0x{parent.span_id:016x}" if parent is not None else None,
        "start_time": _iso_ns(span.start_time),
        "end_time": _iso_ns(span.end_time),
        "status": {"status_code": status.status_code.name},
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "timestamp": _iso_ns(e.timestamp), "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }
    if status.description:
        out["status"]["description"] = status.description
    if span.links:
        out["links"] = [
            {"trace_id": f"0x{link.context.trace_id:032x}", "span_id": f"0x{link.context.span_id:016x}"}
            for link in span.links
        ]
    return out


# -- spans ----------------------------------------------------------------------------------


def recording() -> bool:
    """The span current in this task is sampled: worth adding children to. Spans of an
    unsampled request are skipped altogether (the SDK would make non-recording ones, at
    some microseconds each)."""
    return trace.get_current_span().is_recording()


def start_span(
    name: str, *, kind: SpanKind = SpanKind.INTERNAL, attributes: Mapping[str, Any] | None = None
) -> Span:
    """A span, child of the span current in this task (end it yourself)."""
    return _tracer.start_span(name, kind=kind, attributes=attributes)


def child_span(parent: Span, name: str, start_ns: int, end_ns: int, attributes: Mapping[str, Any]) -> None:
    """A finished child of `parent` over [start_ns, end_ns] (time.time_ns() stamps)."""
    span = _tracer.start_span(
        name, context=trace.set_span_in_context(parent), attributes=attributes, start_time=start_ns
    )
    span.end(end_time=max(end_ns, start_ns))


def failed(span: Span, exc: BaseException) -> None:
    """Mark `span` as failed with `exc`."""
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def use_span(span: Span) -> contextlib.AbstractContextManager[Any]:
    """Make `span` current in this block (does not end it)."""
    return trace.use_span(span, end_on_exit=False)


def inject_metadata() -> list[tuple[str, str]]:
    """The current span's W3C trace context as gRPC metadata (`traceparent`, `tracestate`)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return list(carrier.items())


def traceparent(span: Span) -> bytes:
    """`span`'s W3C traceparent, to carry where gRPC metadata cannot go (a forwarded
    write's PROPOSE message on the peer transport)."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "").encode("ascii")


def start_remote_span(
    parent: bytes, name: str, *, attributes: Mapping[str, Any] | None = None
) -> Span | None:
    """A span whose parent is the W3C traceparent `parent` (from `traceparent` on another
    node); None when it does not parse or its trace is not sampled."""
    try:
        context = _propagator.extract({"traceparent": parent.decode("ascii")})
    except (UnicodeDecodeError, ValueError):
        return None
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    span = _tracer.start_span(name, context=context, attributes=attributes)
    return span if span.is_recording() else None


def _status_code(exc: BaseException) -> int:
    """The gRPC status code an exception from a handler will be answered with."""
    if isinstance(exc, trio.Cancelled):
        return 1  # CANCELLED: the deadline, the client's RST_STREAM or the node stopping
    code = getattr(exc, "code", None)
    if code is not None and hasattr(code, "value"):
        return int(code.value)
    status = getattr(exc, "status", None)
    status_code = getattr(status, "status_code", None)
    if status_code is not None:
        return int(getattr(status_code, "value", status_code))
    return 2  # UNKNOWN (cancelled, internal: the guard maps it)


@contextlib.contextmanager
def _server_span(path: str, metadata: Sequence[tuple[str, Any]] | None) -> Iterator[Span]:
    carrier = {k: v for k, v in metadata or () if isinstance(v, str)}
    parent = _propagator.extract(carrier) if carrier else None
    service, _, method = path.lstrip("/").partition("/")
    with _tracer.start_as_current_span(
        f"{service}/{method}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def traced_service(name: str) -> bool:
    """Health checks and reflection are not traced: probes would flood the traces."""
    return not name.startswith("grpc.")


def traced_unary(fn: Callable[[Any, Any], Awaitable[Any]], path: str) -> Callable[[Any, Any], Awaitable[Any]]:
    """`fn(msg, request)` inside a SERVER span for `path`, the child of the `traceparent`
    the request carries (if any); the span records the answer's gRPC status code. At debug
    level one line per request is logged inside the span (so it carries the trace id)."""

    async def handler(msg: Any, request: Any) -> Any:
        started = time.perf_counter()
        with _server_span(path, getattr(request, "custom_metadata", None)) as span:
            code = 0
            try:
                return await fn(msg, request)
            except BaseException as exc:
                code = _status_code(exc)
                failed(span, exc)
                raise
            finally:
                span.set_attribute("rpc.grpc.status_code", code)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "%s answered status %d in %.2f ms", path, code, (time.perf_counter() - started) * 1e3
                    )

    return handler


__all__ = [
    "CLIENT",
    "ENABLED",
    "EXPORTERS",
    "LogSpanExporter",
    "TracingSetupError",
    "child_span",
    "failed",
    "inject_metadata",
    "recording",
    "setup",
    "shutdown",
    "start_remote_span",
    "start_span",
    "traced_service",
    "traced_unary",
    "traceparent",
    "use_span",
]
