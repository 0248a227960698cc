"""What the leader knows about each follower's log, and how fast it may send to it.

A follower is in one of three states:

- PROBE: we do not know where its log matches ours. Send one APPEND, then wait for the answer
  (or the next heartbeat response) before sending another: a rejected probe moves `next` back.
- REPLICATE: its log matches up to `match`. Pipeline APPENDs optimistically (advance `next` as
  soon as one is sent), bounded by `Inflights` so a slow follower cannot take unbounded memory.
- SNAPSHOT: `next` is below our first retained entry. A snapshot was sent; send nothing else
  until it is acknowledged (APPEND_RESP) or the driver reports it done or failed.
"""

from __future__ import annotations

import enum
from collections import deque

import attrs


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """APPENDs sent but not acknowledged, as (last index, entry bytes), oldest first.

    Acknowledging index i frees every message whose last entry is <= i: followers ack in
    log order, so one ack covers everything before it.
    """

    def __init__(self, max_count: int, max_bytes: int = 0) -> None:
        if max_count < 1:
            raise ValueError("max_count must be at least 1")
        self.max_count = max_count
        self.max_bytes = max_bytes  # 0 = no byte bound
        self._q: deque[tuple[int, int]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._q)

    def add(self, index: int, nbytes: int) -> None:
        if self._q and index <= self._q[-1][0]:
            raise ValueError(f"inflight index {index} not above {self._q[-1][0]}")
        self._q.append((index, nbytes))
        self.bytes += nbytes

    def free_le(self, index: int) -> None:
        while self._q and self._q[0][0] <= index:
            self.bytes -= self._q.popleft()[1]

    def free_first_one(self) -> None:
        if self._q:
            self.bytes -= self._q.popleft()[1]

    def full(self) -> bool:
        return len(self._q) >= self.max_count or (self.max_bytes > 0 and self.bytes >= self.max_bytes)

    def reset(self) -> None:
        self._q.clear()
        self.bytes = 0


@attrs.define(eq=False)
class Progress:
    match: int
    next: int
    inflights: Inflights
    is_learner: bool = False
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False  # PROBE: an APPEND is outstanding, wait before the next one
    pending_snapshot: int = 0  # SNAPSHOT: index of the snapshot sent
    recent_active: bool = False  # heard from it since the last CheckQuorum round

    def _enter(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflights.reset()

    def become_probe(self) -> None:
        """Start probing from just after what we know it has (or the snapshot it got)."""
        if self.state is ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._enter(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._enter(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._enter(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._enter(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.next = index + 1

    def is_paused(self) -> bool:
        """Whether an APPEND may be sent now (heartbeats are always allowed)."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def maybe_update(self, index: int) -> bool:
        """An ack of `index`: returns whether `match` moved (a stale ack changes nothing)."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the APPEND whose previous entry was `rejected`; returns False if stale.

        `hint` is the largest index that may still match (already narrowed by term on both
        sides), so a whole run of divergent entries is skipped in one round trip.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False  # answers an APPEND sent before we learned `match`
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False  # not the probe we are waiting for
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def reset_to(self, last_index: int) -> None:
        """The follower's log ends at `last_index`, below `match`: forget the match, probe."""
        self.match = last_index
        self.become_probe()
        self.next = last_index + 1

    def sent_entries(self, last_index: int | None, nbytes: int) -> None:
        """Record an APPEND just sent; `last_index` is its last entry (None when it had none)."""
        if self.state is ProgressState.REPLICATE:
            if last_index is not None:
                self.next = last_index + 1
                self.inflights.add(last_index, nbytes)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True
