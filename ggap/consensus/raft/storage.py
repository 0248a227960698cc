"""The one storage interface, in the etcd style, split in two.

`LogStorage` is the log (entries, terms, bounds); `StateStorage` is what is not the log
(hard state, the latest state-machine snapshot's metadata). The core reads both through
`Storage`; the replica engine writes through `DurableStorage`. The SQLite store
(`ggap.storage.log.LogStore`) and the simulator's disk (`ggap.sim.storage.SimStorage`)
implement `DurableStorage`, and one contract suite (tests/unit/test_storage_contract.py)
runs against both.

Two positions matter and may differ: the *compaction point* C (entries <= C are gone;
`first_index() == C + 1`, `term(C)` is still known) and the *snapshot* S (the newest
state-machine snapshot, `snapshot().index`). C <= S always holds: entries are dropped only
behind a snapshot, and a snapshot may run ahead of compaction so that slow followers can
still be served entries between C and S.

Error values, as the core expects them:
- `LogCompactedError`: the index is at or below the compaction point (send a snapshot);
  `term(C)` itself never raises it.
- `LogUnavailableError`: the index is past the last entry.
- `SnapshotTemporarilyUnavailableError`: `snapshot()` cannot answer right now (one is being
  taken); the core retries later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ggap.consensus.raft.types import Entry, HardState, SnapshotMeta


class LogCompactedError(LookupError):
    """The requested index is at or below the compaction point (send a snapshot instead)."""


class LogUnavailableError(LookupError):
    """The requested index is beyond the last entry."""


class SnapshotTemporarilyUnavailableError(Exception):
    """No snapshot can be handed out right now; ask again later."""


class LogStorage(Protocol):
    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi): at least one if lo < hi, then stop before exceeding max_bytes.

        LogCompactedError if lo <= compaction point; LogUnavailableError if hi > last + 1."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at `index`; at the compaction point, the term recorded for it."""
        ...

    def first_index(self) -> int:
        """Compaction point + 1 (1 on a new log)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry; first_index() - 1 when the log holds no entries."""
        ...


class StateStorage(Protocol):
    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        """What a restarting node begins from: the durable hard state and snapshot."""
        ...

    def snapshot(self) -> SnapshotMeta:
        """The newest snapshot's metadata (index 0 if none); may raise
        SnapshotTemporarilyUnavailableError. Its voters/learners are the configuration as of
        its index (a leader sends it as is; the follower switches to it)."""
        ...


class Storage(LogStorage, StateStorage, Protocol):
    """Everything the core reads."""


class DurableStorage(Storage, Protocol):
    """The engine's write side. Reads reflect a write as soon as `save` returns; the write
    is durable once `sync` returns (the SQLite store is durable at `save` already and its
    `sync` does nothing; the simulator's disk loses unsynced writes on a crash)."""

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """One batch, applied in this order: `snapshot` (drops every entry it covers, or the
        whole log if the entry at its index has another term, and moves the compaction
        point to it), then `entries` (contiguous; an existing suffix from entries[0].index
        on is replaced; entries at or below the compaction point are skipped), then
        `hard_state`."""
        ...

    def sync(self) -> None:
        """Make every save so far durable."""
        ...

    def compact(self, upto: int) -> None:
        """Drop entries <= upto (upto <= snapshot().index); durable when it returns."""
        ...

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record that a state-machine snapshot at meta.index exists (taken locally, at or
        below the applied index; meta.voters/learners: the configuration as of meta.index);
        the log is not touched. Durable when it returns."""
        ...
