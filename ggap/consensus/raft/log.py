"""The core's view of the log: durable storage plus what has not been persisted yet.

Entries (and a snapshot) the core accepted but the driver has not yet persisted live in
`Unstable`. `ready()` hands them out ("in progress", so they are not handed out twice) and
`advance()` marks them stable: from then on storage holds them and the unstable copy is
dropped. A follower may have to overwrite entries that are already in storage; the unstable
suffix then starts below storage's last index and shadows it until the driver overwrites it.

`committed` only grows; `applying` is the last index handed to the driver to apply and
`applied` the last one it confirmed through `advance`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ggap.consensus.raft.storage import (
    LogCompactedError,
    LogUnavailableError,
    Storage,
)
from ggap.consensus.raft.types import (
    Entry,
    SnapshotMeta,
)


def entry_size(e: Entry) -> int:
    """What a byte budget counts: the entry's payload."""
    return len(e.data)


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix within `max_bytes`, but always at least one entry (so progress is made)."""
    if not entries:
        return entries
    total = entry_size(entries[0])
    for i in range(1, len(entries)):
        total += entry_size(entries[i])
        if total > max_bytes:
            return entries[:i]
    return entries


class Unstable:
    """Entries from `offset` on (and maybe a snapshot at offset-1) not yet known durable."""

    def __init__(self, offset: int) -> None:
        self.snapshot: SnapshotMeta | None = None
        self.entries: list[Entry] = []
        self.offset = offset
        # Handed to the driver by ready() but not yet advanced.
        self.snapshot_in_progress = False
        self.in_progress = offset - 1  # last entry index handed out

    def last_index(self) -> int | None:
        if self.entries:
            return self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            return self.snapshot.index
        return None

    def term(self, index: int) -> int | None:
        if self.offset <= index < self.offset + len(self.entries):
            return self.entries[index - self.offset].term
        if self.snapshot is not None and index == self.snapshot.index:
            return self.snapshot.term
        return None

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        after = entries[0].index
        if after == self.offset + len(self.entries):
            self.entries.extend(entries)
        elif after <= self.offset:
            # Replaces everything unstable (and shadows storage from `after` on).
            self.offset = after
            self.entries = list(entries)
        else:
            del self.entries[after - self.offset :]
            self.entries.extend(entries)
        self.in_progress = min(self.in_progress, after - 1)

    def restore(self, snap: SnapshotMeta) -> None:
        self.snapshot = snap
        self.entries = []
        self.offset = snap.index + 1
        self.snapshot_in_progress = False
        self.in_progress = snap.index

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to `index` are durable, unless they were overwritten meanwhile."""
        if self.term(index) != term or index < self.offset:
            return  # overwritten since that ready, or already stable
        if self.snapshot is not None and index <= self.snapshot.index:
            return
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1
        self.in_progress = max(self.in_progress, index)

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.index == index:
            self.snapshot = None
            self.snapshot_in_progress = False

    def pending_entries(self) -> list[Entry]:
        start = self.in_progress + 1 - self.offset
        return self.entries[max(start, 0) :]

    def has_pending_entries(self) -> bool:
        return bool(self.entries) and self.in_progress < self.offset + len(self.entries) - 1

    def accept_in_progress(self) -> None:
        if self.entries:
            self.in_progress = self.offset + len(self.entries) - 1
        if self.snapshot is not None:
            self.snapshot_in_progress = True


class RaftLog:
    def __init__(self, storage: Storage, max_apply_bytes: int, applied: int = 0) -> None:
        self.storage = storage
        self.max_apply_bytes = max_apply_bytes
        first = storage.first_index()
        self.unstable = Unstable(storage.last_index() + 1)
        # Everything at or below the storage snapshot is already reflected in the state machine.
        self.committed = first - 1
        self.applied = max(first - 1, applied)
        self.applying = self.applied

    # ---- reading -------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        u = self.unstable.last_index()
        return u if u is not None else self.storage.last_index()

    def persisted_last_index(self) -> int:
        """Last index known durable (what the leader may count for itself)."""
        if self.unstable.snapshot is not None:
            return self.storage.last_index()
        return self.unstable.offset - 1

    def term(self, index: int) -> int:
        t = self.unstable.term(index)
        if t is not None:
            return t
        if index > self.last_index():
            raise LogUnavailableError(index)
        if self.unstable.snapshot is not None and index < self.unstable.snapshot.index:
            raise LogCompactedError(index)
        return self.storage.term(index)

    def last_term(self) -> int:
        return self.term(self.last_index())

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except LookupError:
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi) within `max_bytes` (at least one if lo < hi)."""
        if lo < self.first_index():
            raise LogCompactedError(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailableError(hi - 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        u = self.unstable
        if lo < u.offset:
            stop = min(hi, u.offset)
            out = list(self.storage.entries(lo, stop, max_bytes))
            if len(out) < stop - lo:
                return limit_size(out, max_bytes)  # storage stopped at the byte budget
        if hi > u.offset:
            start = max(lo, u.offset)
            out.extend(u.entries[start - u.offset : hi - u.offset])
        return limit_size(out, max_bytes)

    def entries_from(self, lo: int, max_bytes: int) -> list[Entry]:
        return self.slice(lo, self.last_index() + 1, max_bytes)

    def snapshot(self) -> SnapshotMeta:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Index of the first entry we lack or hold with another term; 0 if we hold them all."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= `term`, with that term.

        Every entry in (i, index] has a greater term, so none of them can match a log whose
        entry at `index` (or later) has `term`: a whole term is skipped per round trip.
        Stops at the first retained entry if the rest is compacted (term 0 = unknown).
        """
        while index > 0:
            try:
                t = self.term(index)
            except LogCompactedError:
                return index, 0
            except LogUnavailableError:
                index = self.last_index()
                continue
            if t <= term:
                return index, t
            index -= 1
        return 0, 0

    # ---- writing -------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        if entries:
            if entries[0].index - 1 < self.committed:
                raise AssertionError(
                    f"append at {entries[0].index} would overwrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(self, index: int, log_term: int, commit: int, entries: Sequence[Entry]) -> int | None:
        """Follower side of APPEND (Raft §5.3); returns the last index it matched, None on mismatch."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        ci = self.find_conflict(entries)
        if ci:
            if ci <= self.committed:
                raise AssertionError(f"entry {ci} conflicts with committed entry (commit {self.committed})")
            self.append(entries[ci - index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit `index` only if it is from `term` (Raft §5.4.2: never commit old terms by counting)."""
        if index > self.committed and self.match_term(index, term):
            self.commit_to(index)
            return True
        return False

    def restore(self, snap: SnapshotMeta) -> None:
        self.committed = snap.index
        self.applying = max(self.applying, snap.index)
        self.unstable.restore(snap)

    # ---- handing work to the driver ------------------------------------------------------

    def has_next_committed(self) -> bool:
        return self.committed > self.applying

    def next_committed(self) -> list[Entry]:
        lo = self.applying + 1
        hi = min(self.committed, self.last_index()) + 1
        if lo >= hi:
            return []
        return self.slice(lo, hi, self.max_apply_bytes)

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise AssertionError(f"applied {index} beyond commit {self.committed}")
        if index > self.applied:
            self.applied = index
        self.applying = max(self.applying, self.applied)

    def accept_applying(self, index: int) -> None:
        self.applying = max(self.applying, index)
