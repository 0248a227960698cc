"""SimStorage: an in-memory DurableStorage that knows what has been fsynced.

`save` lands in the *live* view at once (the core reads it as soon as the driver has
written) and in a journal of unsynced writes. `sync()` replays the journal into the
*durable* state. `crash()` throws the live view away and restarts from the durable state,
optionally keeping a random prefix of the unsynced writes first (a torn batch: the OS may
have flushed some of it), which is what real disks do and what Raft must tolerate.

Within one save the order is snapshot, entries, hard state, so a torn write can never
leave a durable commit index that points past the durable log.

The compaction point C and the snapshot S are kept apart (C <= S). `compact` and
`set_snapshot` are durable at once, so they are not journaled but applied to both views:
they only concern entries the state machine has applied, which the driver synced before
applying them. On the durable view compaction never passes the durable snapshot (an
unsynced `save` may have moved the live one further), so the durable state is consistent
whenever a crash happens, and replaying the journal onto it later gives the live view.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from ggap.consensus.raft.log import limit_size
from ggap.consensus.raft.storage import (
    DurableStorage,
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
    """Hard state + snapshot + compaction point + the entries after it; one per view."""

    __slots__ = ("compacted", "entries", "hard_state", "snap")

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snap = SnapshotMeta()
        self.compacted = (0, 0)  # (index, term) of the compaction point
        self.entries: list[Entry] = []  # entries[k].index == compacted[0] + 1 + k

    def copy(self) -> _LogState:
        c = _LogState()
        c.hard_state, c.snap, c.compacted, c.entries = (
            self.hard_state,
            self.snap,
            self.compacted,
            list(self.entries),
        )
        return c

    def last_index(self) -> int:
        return self.compacted[0] + len(self.entries)

    def term(self, index: int) -> int:
        off = index - self.compacted[0]
        if off == 0:
            return self.compacted[1]
        if off < 0 or off > len(self.entries):
            raise IndexError(index)
        return self.entries[off - 1].term

    def check(self, w: _Write) -> None:
        """ValueError if `w` cannot be applied (then nothing of it may be)."""
        for a, b in itertools.pairwise(w.entries):
            if b.index != a.index + 1:
                raise ValueError(f"non-contiguous entries {a.index} -> {b.index}")
        first, last = self.compacted[0] + 1, self.last_index()
        snap = w.snapshot
        if snap is not None and snap.index >= first:
            keep = snap.index <= last and self.term(snap.index) == snap.term
            first, last = snap.index + 1, (last if keep else snap.index)
        ents = [e for e in w.entries if e.index >= first]
        if ents and ents[0].index > last + 1:
            raise ValueError(f"append at {ents[0].index} leaves a gap after last index {last}")

    def append(self, entries: tuple[Entry, ...]) -> tuple[tuple[Entry, ...], int, list[Entry]] | None:
        """Truncate at entries[0].index and append; return what was written, the term before
        it and the entries it replaced."""
        first = self.compacted[0] + 1
        ents = entries
        if ents and ents[0].index < first:
            ents = tuple(e for e in ents if e.index >= first)
        if not ents:
            return None
        start = ents[0].index
        if start > self.last_index() + 1:
            raise ValueError(f"append at {start} leaves a gap after last index {self.last_index()}")
        replaced = self.entries[start - first :]
        del self.entries[start - first :]
        self.entries.extend(ents)
        return ents, self.term(start - 1), replaced

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """A snapshot saved with the log (installed from the leader): it becomes the
        compaction point, keeping the entries after it only if the log holds its entry."""
        ci = self.compacted[0]
        if meta.index <= ci:
            return
        if meta.index <= self.last_index() and self.term(meta.index) == meta.term:
            self.entries = self.entries[meta.index - ci :]
        else:
            self.entries = []
        self.compacted = (meta.index, meta.term)
        if meta.index > self.snap.index:
            self.snap = meta

    def compact(self, upto: int, term: int) -> None:
        ci = self.compacted[0]
        if upto <= ci:
            return
        del self.entries[: upto - ci]
        self.compacted = (upto, term)


class SimStorage:
    """DurableStorage for one simulated node's disk (it outlives the node's crashes)."""

    def __init__(self, node_id: int, on_durable: DurableListener | None = None) -> None:
        self.node_id = node_id
        self._live = _LogState()
        self._durable = _LogState()
        self._journal: list[_Write] = []
        self._on_durable = on_durable
        self.syncs = 0

    # --- Storage (the core's read side; always the live view) ---

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        return self._live.hard_state, self._live.snap

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        live = self._live
        if lo > hi:
            raise ValueError(f"bad entry range [{lo}, {hi})")
        if lo <= live.compacted[0]:
            raise LogCompactedError(lo)
        if hi > live.last_index() + 1:
            raise LogUnavailableError(hi - 1)
        base = live.compacted[0] + 1
        return limit_size(live.entries[lo - base : hi - base], max_bytes)

    def term(self, index: int) -> int:
        live = self._live
        if index < live.compacted[0]:
            raise LogCompactedError(index)
        if index > live.last_index():
            raise LogUnavailableError(index)
        return live.term(index)

    def first_index(self) -> int:
        return self._live.compacted[0] + 1

    def last_index(self) -> int:
        return self._live.last_index()

    def snapshot(self) -> SnapshotMeta:
        return self._live.snap

    # --- DurableStorage (the driver's write side) ---

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Buffered write: visible to reads now, durable only after `sync()`."""
        w = _Write(hard_state, snapshot, tuple(entries))
        self._live.check(w)
        self._apply(self._live, w)
        self._journal.append(w)

    write = save  # the simulator's node calls it by its old name

    def sync(self) -> None:
        """fsync: everything written so far becomes durable."""
        self.syncs += 1
        for w in self._journal:
            self._apply(self._durable, w, notify=True)
        self._journal.clear()

    def compact(self, upto: int) -> None:
        """Drop entries <= upto (<= snapshot().index); durable at once."""
        live = self._live
        if upto <= live.compacted[0]:
            return
        if upto > live.snap.index:
            raise ValueError(f"cannot compact through {upto}: the newest snapshot is at {live.snap.index}")
        if upto <= live.last_index():
            term = live.term(upto)
        elif upto == live.snap.index:
            term = live.snap.term
        else:
            raise ValueError(f"cannot compact through {upto}: the log ends at {live.last_index()}")
        live.compact(upto, term)
        durable = self._durable
        target = min(upto, durable.snap.index)
        durable.compact(target, term if target == upto else durable.snap.term)

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record a local state-machine snapshot (snapshot().index <= meta.index <=
        last_index(), matching the log's term there); the log is untouched. Durable at once."""
        live = self._live
        if meta.index < live.snap.index:
            raise ValueError(f"snapshot {meta.index} is older than the current one at {live.snap.index}")
        if meta.index > live.last_index():
            raise ValueError(f"snapshot {meta.index} is beyond the last entry {live.last_index()}")
        term = live.term(meta.index)
        if term != meta.term:
            raise ValueError(f"snapshot {meta.index}@t{meta.term} does not match the log (term {term} there)")
        live.snap = meta
        self._durable.snap = meta  # live's snapshot is never older than the durable one

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

    def durably_holds(self, index: int, term: int) -> bool:
        """Whether the durable log has entry `index` of `term` (or compacted it: applied)."""
        d = self._durable
        if index <= d.compacted[0]:
            return index > 0
        return index <= d.last_index() and d.term(index) == term

    def durable_compacted(self) -> tuple[int, int]:
        """(index, term) of the durable compaction point; durable_entries() follow it."""
        return self._durable.compacted

    def _apply(self, state: _LogState, w: _Write, notify: bool = False) -> None:
        if w.snapshot is not None:
            state.apply_snapshot(w.snapshot)
        if w.entries:
            written = state.append(w.entries)
            if notify and written is not None and self._on_durable is not None:
                self._on_durable(self.node_id, *written)
        if w.hard_state is not None:
            state.hard_state = w.hard_state


if TYPE_CHECKING:

    def _implements_durable_storage(s: SimStorage) -> DurableStorage:
        return s  # mypy checks the protocol here
