"""What the trio driver records for metrics (read on scrape by ggap.server.metrics).

Recorded on the trio thread only; durations measured on the writer thread travel back
with the hop's result. Per loop turn (not per request): at most two histogram bisects.
"""

from __future__ import annotations

import attrs

from ggap.instruments import DISK_BUCKETS, SNAPSHOT_BUCKETS, Histogram


def _disk() -> Histogram:
    return Histogram(DISK_BUCKETS)


def _snapshot() -> Histogram:
    return Histogram(SNAPSHOT_BUCKETS)


@attrs.define(eq=False)
class ReplicaStats:
    # raft.db: saving a Ready's entries / hard state, fsync included ("wal fsync").
    log_save: Histogram = attrs.field(factory=_disk)
    # kv.db: applying a Ready's committed entries, one transaction ("backend commit").
    apply_commit: Histogram = attrs.field(factory=_disk)
    # Proposals (writes, membership changes) waiting for their outcome now.
    proposals_pending: int = 0
    # Proposals handed to the raft loop that failed (not leader any more, overwritten,
    # loop overloaded, shutting down).
    proposals_failed: int = 0
    # Snapshots this node took (VACUUM INTO), and how long each took.
    snapshot_save: Histogram = attrs.field(factory=_snapshot)
    snapshot_save_failures: int = 0
    # Snapshots sent to followers: whole transfers, verdict included.
    snapshot_send: Histogram = attrs.field(factory=_snapshot)
    snapshot_send_failures: int = 0
    # Snapshots received from the leader (transfer and verification).
    snapshot_receive: Histogram = attrs.field(factory=_snapshot)
    snapshot_receive_failures: int = 0
    # Installing a received snapshot into kv.db (the apply step of its Ready).
    snapshot_install: Histogram = attrs.field(factory=_snapshot)
