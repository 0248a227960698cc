"""The MVCC store (`ggap.storage.KvStore`) as the engine's `StateMachine`, with its
snapshots as files in `<data dir>/snap/` (ggap/storage/snapshot.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ggap import codec
from ggap.consensus.raft import Entry, EntryKind, SnapshotMeta
from ggap.replica.engine import ApplyOutput, MembershipChanges, Outcome, TakenSnapshot
from ggap.storage import KvStore
from ggap.storage.snapshot import SnapshotFile, describe, latest_snapshot, prune_snapshots, take_snapshot
from ggap.types import Command, Event, GgapError, Internal, Membership, Noop

log = logging.getLogger(__name__)


def _index_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return 0


def entry_command(entry: Entry, changes: MembershipChanges) -> Command | Membership:
    if entry.kind is EntryKind.NORMAL:
        return codec.decode_command(entry.data)
    if entry.kind is EntryKind.CONF_CHANGE:
        decided = changes.get(entry.index)
        if isinstance(decided, Membership):
            return decided
    return Noop()  # NOOP entries, refused (or replayed) membership changes


class KvStateMachine:
    """apply/restore run on the writer thread; take_snapshot on a thread of its
    own (a read transaction, so writes go on meanwhile)."""

    def __init__(
        self, kv: KvStore, snapshot_dir: Path, *, bootstrap: Membership, busy_timeout_ms: int = 5000
    ) -> None:
        """`bootstrap`: the members before any change was applied (the initial --peers)."""
        self._kv = kv
        self._bootstrap = bootstrap
        self._dir = snapshot_dir
        self._busy_timeout_ms = busy_timeout_ms
        self.latest: SnapshotFile | None = None
        self.staged: dict[int, Path] = {}  # received snapshot files, verified, by index
        self._taken: SnapshotFile | None = None  # taken, not yet recorded by the log
        for leftover in snapshot_dir.glob("incoming-*.tmp"):
            leftover.unlink(missing_ok=True)  # an interrupted transfer: the leader sends again
        for received in snapshot_dir.glob("received-*.db"):
            # Verified and durable before the log could reference it: keep what the engine
            # may still have to install (see ReplicaEngine._recover); drop what is applied.
            if _index_of(received) <= kv.applied_index:
                received.unlink(missing_ok=True)
            else:
                self.staged[_index_of(received)] = received
        found = latest_snapshot(snapshot_dir)
        if found is not None:
            try:
                self.latest = describe(found)
            except GgapError as exc:
                log.warning("ignoring unreadable snapshot %s: %s", found, exc)

    @property
    def directory(self) -> Path:
        return self._dir

    def stage(self, index: int, path: Path) -> None:
        """A verified snapshot file received for `index`, waiting for the core to accept it."""
        old = self.staged.get(index)
        if old is not None and old != path:
            old.unlink(missing_ok=True)
        self.staged[index] = path

    @property
    def applied_index(self) -> int:
        return self._kv.applied_index

    @property
    def revision(self) -> int:
        return self._kv.revision

    @property
    def membership(self) -> Membership:
        return self._kv.membership or self._bootstrap

    def apply(self, entries: Sequence[Entry], changes: MembershipChanges) -> ApplyOutput:
        applied = self._kv.apply([(e.index, entry_command(e, changes)) for e in entries])
        outcomes: list[Outcome] = []
        events: list[Event] = []
        for entry, item in zip(entries, applied, strict=True):
            if item is None:
                outcomes.append(None)
            elif entry.kind is EntryKind.CONF_CHANGE and entry.index in changes:
                outcomes.append(changes[entry.index])  # the membership made, or why not
            elif isinstance(item.result, GgapError):
                outcomes.append(item.result)
            else:
                outcomes.append(item.result)
                events.extend(item.events)
        return ApplyOutput(outcomes=outcomes, revision=self._kv.revision, events=events)

    def take_snapshot(self) -> TakenSnapshot:
        """The file is kept beside the previous one until the log records it (`settle`):
        until then the log's snapshot is the previous one, which followers may be sent."""
        snap = take_snapshot(self._kv.path, self._dir, busy_timeout_ms=self._busy_timeout_ms)
        self._taken = snap
        log.info("snapshot at index %d (revision %d, %d bytes)", snap.index, snap.revision, snap.size)
        return TakenSnapshot(index=snap.index, membership=snap.membership or self._bootstrap)

    def settle(self, recorded: int) -> None:
        """The log's snapshot is at `recorded`: that file is the one to send; others go."""
        keep: SnapshotFile | None = None
        for candidate in (self._taken, self.latest):
            if candidate is not None and candidate.index == recorded and candidate.path.exists():
                keep = candidate
                break
        if keep is None:
            path = self._dir / f"snapshot-{recorded:020d}.db"
            if path.exists():
                try:
                    keep = describe(path)
                except GgapError as exc:
                    log.warning("ignoring unreadable snapshot %s: %s", path, exc)
        self.latest, self._taken = keep, None
        if keep is not None:
            prune_snapshots(self._dir, keep=keep.path)

    def restore(self, meta: SnapshotMeta) -> None:
        path = self.staged.pop(meta.index, None)
        if path is None and self.latest is not None and self.latest.index == meta.index:
            path = self.latest.path  # recovering into our own latest snapshot
        if path is None:
            raise Internal(f"snapshot {meta.index} was accepted but its data was never received")
        self._kv.install_snapshot(path)
        if self._kv.applied_index != meta.index:
            raise Internal(f"snapshot file {path} holds index {self._kv.applied_index}, not {meta.index}")
        # The installed file becomes this node's own latest snapshot (it may lead later).
        final = self._dir / f"snapshot-{meta.index:020d}.db"
        if path != final:
            path.replace(final)
        self.latest = describe(final)
        prune_snapshots(self._dir, keep=final)
        for index in [i for i in self.staged if i <= meta.index]:
            self.staged.pop(index).unlink(missing_ok=True)
        log.info("installed snapshot at index %d (term %d)", meta.index, meta.term)
