"""The metrics building blocks without a node: histograms, the /healthz judge, code names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from ggap.instruments import DISK_BUCKETS, Histogram
from ggap.server.metrics import ApplyHealth, _code_name
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
    assert _code_name(99) == "Code(99)"
