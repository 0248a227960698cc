"""Tracing setup and structured logs, in process: config checks, the JSON formatter, the
traced handler wrapper with the SDK's in-memory exporter, exit status 2 for a bad setup."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ggap import logs, tracing
from ggap.cli import cli
from ggap.config import ConfigError, load_config
from ggap.types import NotLeader

REPO = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def memory_spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.setup("console", span_exporter=exporter, batch=False)
    try:
        yield exporter
    finally:
        tracing.shutdown()


# -- config ---------------------------------------------------------------------------------


def test_defaults_trace_nothing() -> None:
    cfg = load_config(env={})
    assert cfg.tracing.exporter == "none" and cfg.log.format == "text" and cfg.log.slow_fsync_ms == 100
    tracing.setup(cfg.tracing.exporter)
    assert not tracing.ENABLED


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tracing.exporter", "jaeger", "tracing.exporter: must be one of none, console, otlp, got 'jaeger'"),
        ("tracing.sampling_ratio", "1.5", "tracing.sampling_ratio: must be between 0 and 1, got 1.5"),
        ("tracing.sampling_ratio", "-0.1", "tracing.sampling_ratio: must be between 0 and 1, got -0.1"),
        ("log.format", "xml", "log.format: must be one of text, json, got 'xml'"),
    ],
)
def test_bad_observability_config_is_named(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, overrides={key: value})
    assert any(e.startswith(message) for e in info.value.errors), info.value.errors


def test_node_refuses_bad_log_format_and_ratio_with_exit_2() -> None:
    result = CliRunner().invoke(
        cli, ["node", "--log-format", "xml"], env={"GINNUNGAGAP_TRACING__SAMPLING_RATIO": "2"}
    )
    assert result.exit_code == 2
    assert "log.format: must be one of text, json, got 'xml' (from command line)" in result.stderr
    assert "tracing.sampling_ratio: must be between 0 and 1, got 2.0" in result.stderr


def _have_otlp() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ImportError:
        return False


@pytest.mark.skipif(_have_otlp(), reason="the OTLP exporter is installed here")
def test_otlp_without_its_package_exits_2_naming_it(tmp_path: Path) -> None:
    env = {"GINNUNGAGAP_TRACING__EXPORTER": "otlp", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ggap.cli",
            "node",
            "--data-dir",
            str(tmp_path / "d"),
            "--client-addr",
            "127.0.0.1:0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "opentelemetry-exporter-otlp-proto-http" in proc.stderr and "ginnungagap[otlp]" in proc.stderr
    assert not (tmp_path / "d").exists()  # refused before touching the data dir


def test_missing_otlp_package_is_a_setup_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(tracing.TracingSetupError, match="opentelemetry-exporter-otlp-proto-http"):
        tracing.setup("otlp", otlp_endpoint="http://127.0.0.1:1/v1/traces")
    assert not tracing.ENABLED


# -- JSON logs ------------------------------------------------------------------------------


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ggap.test", logging.WARNING, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_required_fields() -> None:
    logs.set_node_id(3)
    logs.set_term_source(lambda: 7)
    try:
        line = logs.JsonFormatter().format(_record("slow fsync: %.1f ms", 123.4, fsync_ms=123.4))
    finally:
        logs.set_node_id(None)
        logs.set_term_source(None)
    out = json.loads(line)
    assert out["level"] == "warning" and out["logger"] == "ggap.test"
    assert out["message"] == "slow fsync: 123.4 ms" and out["fsync_ms"] == 123.4
    assert out["node_id"] == 3 and out["term"] == 7
    assert out["time"].endswith("Z") and out["time"][10] == "T"
    assert "trace_id" not in out


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert logs.rfc3339(0.25) == "1970-01-01T00:00:00.250Z"


def test_json_line_inside_a_span_carries_its_ids(memory_spans: InMemorySpanExporter) -> None:
    span = tracing.start_span("work")
    with tracing.use_span(span):
        out = json.loads(logs.JsonFormatter().format(_record("inside")))
    span.end()
    ctx = span.get_span_context()
    assert out["trace_id"] == format(ctx.trace_id, "032x") and out["span_id"] == format(ctx.span_id, "016x")


def test_every_interval_counts_what_it_suppressed() -> None:
    limit = logs.EveryInterval(3600)
    assert limit.due() == 0
    assert limit.due() is None and limit.due() is None
    assert limit.suppressed == 2


# -- spans ----------------------------------------------------------------------------------


class _Request:
    def __init__(self, metadata: list[tuple[str, str]]) -> None:
        self.custom_metadata = tuple(metadata)


async def test_server_span_is_child_of_the_callers_traceparent(memory_spans: InMemorySpanExporter) -> None:
    async def put(msg: object, request: object) -> str:
        inner = tracing.start_span("raft.propose")
        inner.end()
        return "ok"

    handler = tracing.traced_unary(put, "/ginnungagap.v1.KvService/Put")
    assert await handler(None, _Request([("traceparent", TRACEPARENT)])) == "ok"
    spans = {s.name: s for s in memory_spans.get_finished_spans()}
    server, propose = spans["ginnungagap.v1.KvService/Put"], spans["raft.propose"]
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert server.kind.name == "SERVER" and server.attributes["rpc.grpc.status_code"] == 0
    assert propose.parent is not None and propose.parent.span_id == server.context.span_id


async def test_server_span_records_the_error_code(memory_spans: InMemorySpanExporter) -> None:
    async def put(msg: object, request: object) -> str:
        raise NotLeader("not me")

    handler = tracing.traced_unary(put, "/ginnungagap.v1.KvService/Put")
    with pytest.raises(NotLeader):
        await handler(None, _Request([]))
    (span,) = memory_spans.get_finished_spans()
    assert span.parent is None  # no traceparent: a new trace
    assert span.attributes["rpc.grpc.status_code"] == NotLeader.code.value
    assert span.status.status_code.name == "ERROR"


def test_inject_carries_the_current_span() -> None:
    exporter = InMemorySpanExporter()
    tracing.setup("console", span_exporter=exporter, batch=False)
    try:
        span = tracing.start_span("forward", kind=tracing.CLIENT)
        with tracing.use_span(span):
            (key, value), *_ = tracing.inject_metadata()
        span.end()
    finally:
        tracing.shutdown()
    ctx = span.get_span_context()
    assert key == "traceparent" and value.startswith(f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-")
    assert int(value[-2:], 16) & 1  # sampled


def test_ratio_zero_samples_new_traces_out_but_follows_a_sampled_parent() -> None:
    exporter = InMemorySpanExporter()
    tracing.setup("console", sampling_ratio=0.0, span_exporter=exporter, batch=False)
    try:

        async def ok(msg: object, request: object) -> None:
            return None

        handler = tracing.traced_unary(ok, "/s/M")
        trio.run(handler, None, _Request([]))
        trio.run(handler, None, _Request([("traceparent", TRACEPARENT)]))
    finally:
        tracing.shutdown()
    (span,) = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID


def test_console_exporter_logs_one_line_per_span(caplog: pytest.LogCaptureFixture) -> None:
    tracing.setup("console", structured_logs=True, batch=False)
    try:
        with caplog.at_level(logging.INFO, logger="ggap.spans"):
            tracing.start_span("raft.apply").end()
    finally:
        tracing.shutdown()
    (record,) = [r for r in caplog.records if r.name == "ggap.spans"]
    assert record.getMessage() == "span raft.apply"
    assert record.span["name"] == "raft.apply"  # type: ignore[attr-defined]


def test_refused_peer_connections_warn_once_per_host_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    from ggap.tls import RefusalLog

    refusals = RefusalLog(logging.getLogger("ggap.test.refusals"))
    with caplog.at_level(logging.DEBUG, logger="ggap.test.refusals"):
        for port in (1001, 1002, 1003):  # a misconfigured peer redialling
            refusals.refused("peer connection", f"10.0.0.9:{port}", "cluster id mismatch", kind="rejected")
        refusals.refused("peer connection", "10.0.0.9:1004", "node id 0", kind="rejected")
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels[0] == (
        "WARNING",
        "refused peer connection from 10.0.0.9:1001: rejected: cluster id mismatch",
    )
    assert [lv for lv, _ in levels] == ["WARNING", "DEBUG", "DEBUG", "WARNING"]
