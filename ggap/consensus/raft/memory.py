"""An in-memory `LogStorage`, for tests and the simulator.

It is the reference for what the core expects of storage: entries are contiguous, a snapshot
(here only its metadata: the state lives with the driver) replaces everything at or below its
index, and writes happen only through the methods the driver calls while handling a Ready.
The snapshot's voters/learners are the configuration as of its index: a new MemoryStorage
should be given the bootstrap configuration (`snapshot=SnapshotMeta(voters=...)`) and
`compact` the configuration as of the index it compacts to, as a driver tracks it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from ggap.consensus.raft.log import limit_size
from ggap.consensus.raft.storage import (
    LogCompactedError,
    LogUnavailableError,
)
from ggap.consensus.raft.types import (
    ConfState,
    Entry,
    HardState,
    SnapshotMeta,
)


class MemoryStorage:
    def __init__(
        self,
        entries: Iterable[Entry] = (),
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        self._hard_state = hard_state or HardState()
        self._snapshot = snapshot or SnapshotMeta()
        # _ents[0] is a placeholder standing for the snapshot: it carries the index and term
        # that APPEND consistency checks need at first_index - 1.
        self._ents: list[Entry] = [Entry(index=self._snapshot.index, term=self._snapshot.term)]
        self.append(list(entries))

    # ---- LogStorage ----------------------------------------------------------------------

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        return self._hard_state, self._snapshot

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset:
            raise LogCompactedError(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailableError(hi - 1)
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._ents[0].index
        if index < offset:
            raise LogCompactedError(index)
        if index - offset >= len(self._ents):
            raise LogUnavailableError(index)
        return self._ents[index - offset].term

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def snapshot(self) -> SnapshotMeta:
        return self._snapshot

    # ---- the driver's writes -------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = hs

    def append(self, entries: list[Entry]) -> None:
        """Append, overwriting any existing suffix from entries[0].index on.

        Entries at or below the snapshot are skipped (already covered by it); a gap after
        the last index is a driver bug.
        """
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        for prev, e in itertools.pairwise(entries):
            if e.index != prev.index + 1:
                raise ValueError(f"non-contiguous entries: {prev.index} then {e.index}")
        offset = self._ents[0].index
        start = entries[0].index
        if start > self.last_index() + 1:
            raise ValueError(f"gap: appending {start} after last index {self.last_index()}")
        del self._ents[start - offset :]
        self._ents.extend(entries)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replace the whole log with `meta` (a follower installing a leader's snapshot)."""
        if meta.index < self._snapshot.index:
            raise ValueError(f"snapshot {meta.index} older than current {self._snapshot.index}")
        self._snapshot = meta
        self._ents = [Entry(index=meta.index, term=meta.term)]

    def compact(self, index: int, conf_state: ConfState | None = None) -> None:
        """Discard entries up to `index`, which becomes the snapshot point (state is applied
        there). `conf_state` is the configuration as of `index` (None: unchanged since the
        current snapshot, i.e. no conf change was applied in between)."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self.last_index():
            raise LogUnavailableError(index)
        term = self._ents[index - offset].term
        if conf_state is None:
            conf_state = ConfState(voters=self._snapshot.voters, learners=self._snapshot.learners)
        self._snapshot = SnapshotMeta(
            index=index, term=term, voters=conf_state.voters, learners=conf_state.learners
        )
        del self._ents[: index - offset]
        self._ents[0] = Entry(index=index, term=term)
