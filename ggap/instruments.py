"""Plain-Python instruments for hot paths: what the code records, not how it is exported.

Recording is an attribute increment or one `bisect` (well under a microsecond); nothing here
takes a lock or knows about Prometheus. `ggap.server.metrics` reads these on scrape and
turns them into metric families, so the layers below the server (rpc, replica, transport)
record without importing prometheus_client, and a node without `--metrics-addr` pays almost
nothing. Everything is meant for one thread (the trio thread): durations measured on the
writer thread are handed back and recorded on the trio side.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["DISK_BUCKETS", "LATENCY_BUCKETS", "NETWORK_BUCKETS", "SNAPSHOT_BUCKETS", "Histogram"]

# Upper bounds in seconds (the +Inf bucket is implicit), etcd's choices where it has one.
# etcd_disk_wal_fsync_duration_seconds / backend_commit: 1 ms .. ~8 s, doubling.
DISK_BUCKETS: tuple[float, ...] = tuple(0.001 * 2**i for i in range(14))
# etcd_network_peer_round_trip_time_seconds: 0.1 ms .. ~0.8 s, doubling.
NETWORK_BUCKETS: tuple[float, ...] = tuple(0.0001 * 2**i for i in range(14))
# Request handling (go-grpc-prometheus uses Prometheus' defaults; these start lower).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Snapshot save / send / receive / install: 10 ms .. ~82 s, doubling.
SNAPSHOT_BUCKETS: tuple[float, ...] = tuple(0.01 * 2**i for i in range(14))


class Histogram:
    """Counts of observations per bucket (non-cumulative), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError("histogram bounds must be sorted")
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, +Inf last (Prometheus' form)."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
