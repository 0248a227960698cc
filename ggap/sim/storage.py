"""SimStorage: an in-memory LogStorage that knows what has been fsynced.

Writes land in the *live* view at once (the core reads it as soon as the driver has
written) and in a journal of unsynced writes. `sync()` replays the journal into the
*durable* state. `crash()` throws the live view away and restarts from the durable state,
optionally keeping a random prefix of the unsynced writes first (a torn batch: the OS may
have flushed some of it), which is what real disks do and what Raft must tolerate.

Within one write the order is snapshot, entries, hard state, so a torn write can never
leave a durable commit index that points past the durable log.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import attrs

from ggap.consensus.raft.log import limit_size
from ggap.consensus.raft.storage import (
    LogCompactedError,
    LogUnavailableError,
)
from ggap.consensus.raft.types import (
    Entry,
    HardState,
    SnapshotMeta,
)

# (node id, entries that just became durable (the log was truncated at entries[0].index),
#  term of the durable entry just before them, the durable entries they replaced)
DurableListener = Callable[[int, tuple[Entry, ...], int, list[Entry]], None]


@attrs.frozen(slots=True)
class _Write:
    hard_state: HardState | None
    snapshot: SnapshotMeta | None
    entries: tuple[Entry, ...]


class _LogState:
    """Hard state + snapshot + the entries after it; shared by the live and durable views."""

    __slots__ = ("entries", "hard_state", "snap")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snap = SnapshotMeta()
        self.entries: list[Entry] = []  # entries[k].index == snap.index + 1 + k

    def copy(self) -> _LogState:
        c = _LogState()
        c.hard_state, c.snap, c.entries = self.hard_state, self.snap, list(self.entries)
        return c

    def last_index(self) -> int:
        return self.snap.index + len(self.entries)

    def term(self, index: int) -> int:
        off = index - self.snap.index
        if off == 0:
            return self.snap.term
        if off < 0 or off > len(self.entries):
            raise IndexError(index)
        return self.entries[off - 1].term

    def append(self, entries: tuple[Entry, ...]) -> tuple[tuple[Entry, ...], int, list[Entry]] | None:
        """Truncate at entries[0].index and append; return what was written, the term before
        it and the entries it replaced."""
        first = self.snap.index + 1
        ents = entries
        if ents and ents[0].index < first:
            ents = tuple(e for e in ents if e.index >= first)
        if not ents:
            return None
        start = ents[0].index
        if start > self.last_index() + 1:
            raise ValueError(f"append at {start} leaves a gap after last index {self.last_index()}")
        for a, b in itertools.pairwise(ents):
            if b.index != a.index + 1:
                raise ValueError(f"non-contiguous entries {a.index} -> {b.index}")
        replaced = self.entries[start - first :]
        del self.entries[start - first :]
        self.entries.extend(ents)
        return ents, self.term(start - 1), replaced

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        if meta.index <= self.snap.index:
            return
        if meta.index <= self.last_index() and self.term(meta.index) == meta.term:
            self.entries = self.entries[meta.index - self.snap.index :]
        else:
            self.entries = []
        self.snap = meta
        if self.hard_state.commit < meta.index:
            self.hard_state = attrs.evolve(self.hard_state, commit=meta.index)


class SimStorage:
    """LogStorage for one simulated node's disk (it outlives the node's crashes)."""

    def __init__(self, node_id: int, on_durable: DurableListener | None = None) -> None:
        self.node_id = node_id
        self._live = _LogState()
        self._durable = _LogState()
        self._journal: list[_Write] = []
        self._on_durable = on_durable
        self.syncs = 0

    # --- LogStorage (the core's read side; always the live view) ---

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        return self._live.hard_state, self._live.snap

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        live = self._live
        if lo <= live.snap.index:
            raise LogCompactedError(lo)
        if hi > live.last_index() + 1:
            raise LogUnavailableError(hi)
        base = live.snap.index + 1
        return limit_size(live.entries[lo - base : hi - base], max_bytes)

    def term(self, index: int) -> int:
        live = self._live
        if index < live.snap.index:
            raise LogCompactedError(index)
        if index > live.last_index():
            raise LogUnavailableError(index)
        return live.term(index)

    def first_index(self) -> int:
        return self._live.snap.index + 1

    def last_index(self) -> int:
        return self._live.last_index()

    def snapshot(self) -> SnapshotMeta:
        return self._live.snap

    # --- the driver's write side ---

    def write(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Buffered write: visible to reads now, durable only after `sync()`."""
        w = _Write(hard_state, snapshot, tuple(entries))
        self._apply(self._live, w)
        self._journal.append(w)

    def sync(self) -> None:
        """fsync: everything written so far becomes durable."""
        self.syncs += 1
        for w in self._journal:
            self._apply(self._durable, w, notify=True)
        self._journal.clear()

    def crash(self, rng: random.Random | None = None, torn: float = 0.0) -> int:
        """Lose unsynced writes (keeping a random prefix with probability `torn`).

        Returns how many journal writes survived, for the trace."""
        kept = 0
        if rng is not None and self._journal and rng.random() < torn:
            kept = rng.randint(0, len(self._journal))
            for w in self._journal[:kept]:
                self._apply(self._durable, w, notify=True)
            if kept < len(self._journal):
                # The next write is torn: a prefix of its entries, and not its hard state.
                w = self._journal[kept]
                cut = rng.randint(0, len(w.entries))
                if w.snapshot is None and cut:
                    self._apply(self._durable, _Write(None, None, w.entries[:cut]), notify=True)
        self._journal.clear()
        self._live = self._durable.copy()
        return kept

    @property
    def unsynced(self) -> int:
        return len(self._journal)

    def durable_hard_state(self) -> HardState:
        return self._durable.hard_state

    def durable_entries(self) -> list[Entry]:
        return self._durable.entries

    def durable_snapshot(self) -> SnapshotMeta:
        return self._durable.snap

    def _apply(self, state: _LogState, w: _Write, notify: bool = False) -> None:
        if w.snapshot is not None:
            state.apply_snapshot(w.snapshot)
        if w.entries:
            written = state.append(w.entries)
            if notify and written is not None and self._on_durable is not None:
                self._on_durable(self.node_id, *written)
        if w.hard_state is not None:
            state.hard_state = w.hard_state
