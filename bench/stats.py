"""Latency and error accounting for the load generator.

Samples are kept exactly (integer nanoseconds) instead of in buckets: a minute at a few
thousand ops/s is a few hundred thousand integers, cheap to keep, to pickle across worker
processes and to sort once, and exact percentiles are easy to check in tests.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import attrs

#: Percentiles shown in every summary, besides max and mean.
REPORTED_PERCENTILES: tuple[float, ...] = (50, 90, 99)

_NS_PER_MS = 1_000_000


class LatencySamples:
    """Every recorded latency, in nanoseconds; sorted lazily when a percentile is asked."""

    def __init__(self, ns: Iterable[int] = ()) -> None:
        self._ns: array[int] = array("q", ns)
        self._sorted: list[int] | None = None

    def record(self, ns: int) -> None:
        if ns < 0:
            raise ValueError(f"latency cannot be negative: {ns}")
        self._ns.append(ns)
        self._sorted = None

    def extend(self, other: LatencySamples) -> None:
        """Merge another recorder's samples in (e.g. one per worker process)."""
        self._ns.extend(other._ns)
        self._sorted = None

    def __len__(self) -> int:
        return len(self._ns)

    def _sorted_samples(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self._ns)
        return self._sorted

    def percentile(self, p: float) -> int:
        """Nearest-rank percentile: the smallest sample with at least p% of samples <= it.

        Always an observed value (no interpolation), so p100 is the max and p0 the min.
        The rank is computed with exact decimal arithmetic so that e.g. p29 of 100 samples
        is the 29th, not the 30th, despite 0.29 * 100 being 28.999... in floating point.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {p}")
        data = self._sorted_samples()
        if not data:
            raise ValueError("no samples")
        rank = math.ceil(Fraction(str(p)) * len(data) / 100)
        return data[max(rank, 1) - 1]

    def max(self) -> int:
        return self.percentile(100)

    def min(self) -> int:
        return self.percentile(0)

    def mean(self) -> float:
        if not self._ns:
            raise ValueError("no samples")
        return sum(self._ns) / len(self._ns)

    def __getstate__(self) -> dict[str, Any]:
        # The sorted cache is derived data: do not ship it between processes.
        return {"ns": self._ns}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._ns = state["ns"]
        self._sorted = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencySamples):
            return NotImplemented
        return self._sorted_samples() == other._sorted_samples()

    __hash__ = None  # type: ignore[assignment]


def _ms(ns: float) -> float:
    return round(ns / _NS_PER_MS, 3)


@attrs.define
class OpStats:
    """Successes (with latency), errors by gRPC status name and outcomes of one op type.

    `outcomes` counts notable successful answers that are not errors, such as a get
    that found nothing or a compare-and-swap whose compare failed.
    """

    latencies: LatencySamples = attrs.field(factory=LatencySamples)
    errors: Counter[str] = attrs.field(factory=Counter)
    outcomes: Counter[str] = attrs.field(factory=Counter)

    @property
    def count(self) -> int:
        """Successful operations."""
        return len(self.latencies)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def record_ok(self, latency_ns: int, outcome: str | None = None) -> None:
        self.latencies.record(latency_ns)
        if outcome is not None:
            self.outcomes[outcome] += 1

    def record_error(self, code: str) -> None:
        self.errors[code] += 1

    def merge(self, other: OpStats) -> None:
        self.latencies.extend(other.latencies)
        self.errors.update(other.errors)
        self.outcomes.update(other.outcomes)

    def summary(self, seconds: float) -> dict[str, Any]:
        """JSON-ready numbers; latencies in ms, None when nothing succeeded."""
        latency: dict[str, float | None]
        if self.count:
            latency = {f"p{p:g}": _ms(self.latencies.percentile(p)) for p in REPORTED_PERCENTILES}
            latency["max"] = _ms(self.latencies.max())
            latency["mean"] = _ms(self.latencies.mean())
        else:
            latency = {f"p{p:g}": None for p in REPORTED_PERCENTILES}
            latency["max"] = None
            latency["mean"] = None
        return {
            "count": self.count,
            "ops_per_s": round(self.count / seconds, 1) if seconds > 0 else 0.0,
            "latency_ms": latency,
            "errors": self.error_count,
            "errors_by_code": dict(sorted(self.errors.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
        }


@attrs.define
class RunStats:
    """Per-op statistics of one run (or one worker's share of it)."""

    ops: dict[str, OpStats] = attrs.field(factory=dict)

    def op(self, name: str) -> OpStats:
        stats = self.ops.get(name)
        if stats is None:
            stats = self.ops[name] = OpStats()
        return stats

    def merge(self, other: RunStats) -> None:
        for name, stats in other.ops.items():
            self.op(name).merge(stats)

    def total(self) -> OpStats:
        combined = OpStats()
        for stats in self.ops.values():
            combined.merge(stats)
        return combined

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "ops": {name: self.ops[name].summary(seconds) for name in sorted(self.ops)},
            "total": self.total().summary(seconds),
        }


def merge_runs(runs: Iterable[RunStats]) -> RunStats:
    """One RunStats holding every sample of `runs` (worker processes of one benchmark)."""
    merged = RunStats()
    for run in runs:
        merged.merge(run)
    return merged


def format_table(summary: Mapping[str, Any]) -> str:
    """The human-readable table of a `RunStats.summary()`: one row per op, then total."""
    header = f"{'op':<8}{'count':>10}{'ops/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
    header += f"{'max ms':>10}{'errors':>8}"
    lines = [header]
    rows = [*summary["ops"].items(), ("total", summary["total"])]
    for name, row in rows:
        lat = row["latency_ms"]

        def cell(key: str, lat: Mapping[str, float | None] = lat) -> str:
            value = lat[key]
            return f"{'-':>10}" if value is None else f"{value:>10.2f}"

        lines.append(
            f"{name:<8}{row['count']:>10}{row['ops_per_s']:>10.1f}"
            f"{cell('p50')}{cell('p90')}{cell('p99')}{cell('max')}{row['errors']:>8}"
        )
    for name, row in rows[:-1]:
        if row["errors_by_code"]:
            codes = ", ".join(f"{code}={n}" for code, n in row["errors_by_code"].items())
            lines.append(f"errors {name}: {codes}")
        if row["outcomes"]:
            notes = ", ".join(f"{what}={n}" for what, n in row["outcomes"].items())
            lines.append(f"outcomes {name}: {notes}")
    return "\n".join(lines)
