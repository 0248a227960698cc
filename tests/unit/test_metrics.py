"""The metrics building blocks without a node: histograms, the /healthz judge, code names,
the HTTP side served in-process."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from prometheus_client.core import GaugeMetricFamily, Metric

from ggap.config.model import MetricsConfig
from ggap.instruments import DISK_BUCKETS, Histogram
from ggap.server.metrics import ApplyHealth, MetricsEndpoint, _code_name, serve_metrics
from ggap.types.errors import StatusCode


def test_histogram_buckets_are_cumulative_with_inf_last() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 5)]
    assert h.count == 5
    assert h.sum == pytest.approx(5.65)
    assert len(Histogram(DISK_BUCKETS).cumulative()) == len(DISK_BUCKETS) + 1


def test_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        Histogram((1.0, 0.1))


class FakeConsensus:
    def __init__(self) -> None:
        self.leader_id = 1
        self.applied = 0
        self.engine = SimpleNamespace(node=SimpleNamespace(log=SimpleNamespace(committed=0)))

    def commit(self, index: int) -> None:
        self.engine.node.log.committed = index

    def role(self) -> Any:
        return SimpleNamespace(leader_id=self.leader_id, applied_index=self.applied)


def judge(c: FakeConsensus, max_lag: int = 100) -> ApplyHealth:
    return ApplyHealth(cast(Any, c), stall_s=5.0, max_lag=max_lag)


def test_healthy_when_caught_up_and_unhealthy_without_leader() -> None:
    c = FakeConsensus()
    h = judge(c)
    h.sample(0.0)
    assert h.problem(0.0) is None
    c.leader_id = 0
    assert h.problem(0.0) == "no leader"
    c.leader_id = 1
    h.draining = True
    assert h.problem(0.0) == "shutting down"


def test_apply_that_stops_moving_behind_commit_is_stalled() -> None:
    c = FakeConsensus()
    h = judge(c)
    c.commit(10)
    c.applied = 5
    for t in range(5):
        h.sample(float(t))
        assert h.problem(float(t)) is None
    h.sample(6.0)
    problem = h.problem(6.0)
    assert problem is not None and problem.startswith("apply stalled: applied index 5 unchanged"), problem
    c.applied = 10  # caught up: healthy at once
    h.sample(7.0)
    assert h.problem(7.0) is None


def test_moving_but_far_behind_for_long_is_stalled() -> None:
    c = FakeConsensus()
    h = judge(c, max_lag=100)
    for t in range(8):
        c.applied = 1000 * t
        c.commit(1000 * t + 500)  # always 500 behind, though applying
        h.sample(float(t))
    problem = h.problem(7.0)
    assert problem is not None and "more than 100 entries behind" in problem, problem


def test_catching_up_quickly_stays_healthy() -> None:
    c = FakeConsensus()
    h = judge(c, max_lag=100)
    c.commit(5000)
    for t in range(5):
        c.applied = 1000 * (t + 1)
        h.sample(t * 0.9)
        assert h.problem(t * 0.9) is None


def test_grpc_code_names_are_go_names() -> None:
    assert _code_name(int(StatusCode.OK)) == "OK"
    assert _code_name(int(StatusCode.NOT_FOUND)) == "NotFound"
    assert _code_name(int(StatusCode.RESOURCE_EXHAUSTED)) == "ResourceExhausted"
    assert _code_name(int(StatusCode.CANCELLED)) == "Canceled"
    assert _code_name(int(StatusCode.DEADLINE_EXCEEDED)) == "DeadlineExceeded"
    assert _code_name(int(StatusCode.UNAUTHENTICATED)) == "Unauthenticated"
    assert _code_name(99) == "Code(99)"


# -- the HTTP side, served in-process --------------------------------------------------------


class FlakyCollector:
    """A collector that raises while `broken`."""

    def __init__(self) -> None:
        self.broken = True

    def collect(self) -> Iterator[Metric]:
        if self.broken:
            raise RuntimeError("collector bug")
        yield GaugeMetricFamily("ggap_test_gauge", "A test gauge.", 1)


async def _get(port: int, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while chunk := await stream.receive_some(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_a_raising_collector_answers_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    collector = FlakyCollector()
    health = judge(FakeConsensus())
    endpoint = MetricsEndpoint(cast(Any, collector), health, MetricsConfig())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                partial(serve_metrics, endpoint, "127.0.0.1", 0, health_interval_s=1.0)
            )
            for _ in range(3):
                answer = await _get(port, "/metrics")
                assert answer.startswith(b"HTTP/1.1 500 "), answer
            assert endpoint.failed == 3
            # Logged once for the episode, not once per request.
            assert sum("answering GET /metrics failed" in r.getMessage() for r in caplog.records) == 1
            assert (await _get(port, "/healthz")).startswith(b"HTTP/1.1 200 ")
            collector.broken = False
            answer = await _get(port, "/metrics")
            assert answer.startswith(b"HTTP/1.1 200 ") and b"ggap_test_gauge 1.0" in answer, answer
            nursery.cancel_scope.cancel()


class CountingCollector:
    def __init__(self) -> None:
        self.renders = 0

    def collect(self) -> Iterator[Metric]:
        self.renders += 1
        yield GaugeMetricFamily("ggap_test_renders", "Renders so far.", self.renders)


async def test_the_rendered_body_is_reused_for_cache_ms(autojump_clock: trio.testing.MockClock) -> None:
    collector = CountingCollector()
    health = judge(FakeConsensus())
    endpoint = MetricsEndpoint(cast(Any, collector), health, MetricsConfig(cache_ms=1000))
    bodies = [endpoint.answer("GET", "/metrics")[2] for _ in range(16)]
    assert collector.renders == 1 and len(set(bodies)) == 1
    await trio.sleep(0.9)
    assert endpoint.answer("GET", "/metrics")[2] == bodies[0]
    await trio.sleep(0.2)
    assert b"ggap_test_renders 2.0" in endpoint.answer("GET", "/metrics")[2]
    assert collector.renders == 2
    uncached = MetricsEndpoint(cast(Any, CountingCollector()), health, MetricsConfig(cache_ms=0))
    assert uncached.answer("GET", "/metrics")[2] != uncached.answer("GET", "/metrics")[2]
