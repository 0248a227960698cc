"""bench.stats: exact percentiles, merging worker results, the summary and its table."""

from __future__ import annotations

import math
import pickle
import random
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import LatencySamples, OpStats, RunStats, format_table, merge_runs


def samples(values: list[int]) -> LatencySamples:
    rec = LatencySamples()
    for v in values:
        rec.record(v)
    return rec


def test_percentiles_of_one_to_hundred() -> None:
    data = list(range(1, 101))
    random.Random(7).shuffle(data)
    rec = samples(data)
    assert rec.percentile(50) == 50
    assert rec.percentile(90) == 90
    assert rec.percentile(99) == 99
    assert rec.percentile(100) == rec.max() == 100
    assert rec.percentile(0) == rec.min() == 1
    # 0.29 * 100 is 28.999... in floating point: the rank must still be exactly 29.
    assert rec.percentile(29) == 29
    assert rec.percentile(0.5) == 1
    assert rec.percentile(1.5) == 2
    assert rec.mean() == 50.5


def test_nearest_rank_rounds_up_and_never_interpolates() -> None:
    rec = samples([10, 20, 30, 40])
    assert rec.percentile(25) == 10
    assert rec.percentile(26) == 20
    assert rec.percentile(50) == 20
    assert rec.percentile(51) == 30
    assert rec.percentile(99.9) == 40
    thousand = samples(list(range(1000)))
    assert thousand.percentile(99.9) == 998


def test_single_sample_and_duplicates() -> None:
    assert samples([5]).percentile(1) == 5
    assert samples([5]).percentile(99) == 5
    rec = samples([3, 3, 3, 9])
    assert rec.percentile(75) == 3
    assert rec.percentile(76) == 9


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        LatencySamples().percentile(50)
    with pytest.raises(ValueError, match="no samples"):
        LatencySamples().mean()
    with pytest.raises(ValueError, match="percentile"):
        samples([1]).percentile(100.5)
    with pytest.raises(ValueError, match="percentile"):
        samples([1]).percentile(-1)
    with pytest.raises(ValueError, match="negative"):
        LatencySamples().record(-1)


def test_recording_after_a_percentile_invalidates_the_sorted_cache() -> None:
    rec = samples([1, 2, 3])
    assert rec.max() == 3
    rec.record(10)
    assert rec.max() == 10
    other = samples([20])
    rec.extend(other)
    assert rec.max() == 20 and len(rec) == 5


@given(
    st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=300),
    st.floats(min_value=0, max_value=100, allow_nan=False),
)
def test_percentile_matches_the_nearest_rank_definition(data: list[int], p: float) -> None:
    value = samples(data).percentile(p)
    assert value in data
    n = len(data)
    # p is read as the decimal it prints as (what a user typed), not its binary approximation.
    rank = max(1, math.ceil(Fraction(str(p)) * n / 100))
    at_or_below = sum(1 for x in data if x <= value)
    below = sum(1 for x in data if x < value)
    # The smallest observed value with at least `rank` samples at or below it.
    assert at_or_below >= rank
    assert below < rank


def _run_with(values: dict[str, list[int]], errors: dict[str, list[str]] | None = None) -> RunStats:
    run = RunStats()
    for op, lat in values.items():
        for v in lat:
            run.op(op).record_ok(v)
    for op, codes in (errors or {}).items():
        for code in codes:
            run.op(op).record_error(code)
    return run


def test_merging_worker_runs_equals_one_run_of_all_samples() -> None:
    rng = random.Random(3)
    puts = [rng.randrange(100_000, 50_000_000) for _ in range(3000)]
    gets = [rng.randrange(50_000, 9_000_000) for _ in range(2000)]
    whole = _run_with({"put": puts, "get": gets}, {"put": ["UNAVAILABLE"] * 3})
    # Three "worker processes", each result shipped through pickle like a multiprocessing queue.
    parts = [
        _run_with({"put": puts[:1000], "get": gets[:500]}, {"put": ["UNAVAILABLE"]}),
        _run_with({"put": puts[1000:1001]}, {"put": ["UNAVAILABLE", "UNAVAILABLE"]}),
        _run_with({"put": puts[1001:], "get": gets[500:]}),
    ]
    merged = merge_runs(pickle.loads(pickle.dumps(part)) for part in parts)
    assert merged.op("put").latencies == whole.op("put").latencies
    assert merged.op("get").latencies == whole.op("get").latencies
    assert merged.summary(2.0) == whole.summary(2.0)
    for p in (50, 90, 99, 100):
        assert merged.op("put").latencies.percentile(p) == samples(puts).percentile(p)


def test_op_summary_numbers() -> None:
    stats = OpStats()
    for ms in (1, 2, 3, 4):
        stats.record_ok(ms * 1_000_000)
    stats.record_ok(10_500_000, outcome="not_found")
    stats.record_error("DEADLINE_EXCEEDED")
    stats.record_error("UNAVAILABLE")
    stats.record_error("UNAVAILABLE")
    summary = stats.summary(seconds=2.0)
    assert summary["count"] == 5
    assert summary["ops_per_s"] == 2.5
    assert summary["errors"] == 3
    assert summary["errors_by_code"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2}
    assert summary["outcomes"] == {"not_found": 1}
    assert summary["latency_ms"] == {"p50": 3.0, "p90": 10.5, "p99": 10.5, "max": 10.5, "mean": 4.1}


def test_summary_of_an_op_that_never_succeeded() -> None:
    stats = OpStats()
    stats.record_error("UNIMPLEMENTED")
    summary = stats.summary(1.0)
    assert summary["count"] == 0
    assert summary["ops_per_s"] == 0.0
    assert set(summary["latency_ms"].values()) == {None}


def test_total_combines_every_op() -> None:
    run = _run_with({"put": [1, 2], "get": [3]}, {"get": ["INTERNAL"]})
    total = run.total()
    assert total.count == 3
    assert total.errors == {"INTERNAL": 1}
    summary = run.summary(1.0)
    assert list(summary["ops"]) == ["get", "put"]
    assert summary["total"]["count"] == 3 and summary["total"]["errors"] == 1


def test_table_shows_each_op_total_and_errors() -> None:
    run = _run_with({"put": [2_000_000, 4_000_000], "get": []}, {"get": ["UNAVAILABLE"]})
    text = format_table(run.summary(1.0))
    lines = text.splitlines()
    assert lines[0].split() == [
        "op",
        "count",
        "ops/s",
        "p50",
        "ms",
        "p90",
        "ms",
        "p99",
        "ms",
        "max",
        "ms",
        "errors",
    ]
    assert lines[1].split() == ["get", "0", "0.0", "-", "-", "-", "-", "1"]
    assert lines[2].split() == ["put", "2", "2.0", "2.00", "4.00", "4.00", "4.00", "0"]
    assert lines[3].split()[:3] == ["total", "2", "2.0"]
    assert "errors get: UNAVAILABLE=1" in lines
