"""`ggap snapshot restore`: build a node's data dir from a backup file, offline.

What a node needs to start from a backup, and what this writes (ggap/storage/DESIGN.md,
"Backups"):

- `kv.db`: the backup's state (installed into a freshly migrated kv.db with the same
  backup-API path a follower uses for a received snapshot);
- `snap/snapshot-<index>.db`: the same bytes as the node's own latest snapshot, so it can
  send them to a follower that needs them;
- `raft.db`: an empty log whose snapshot (and compaction point) is the backup's index at
  term 1, the voters from `--peers` (or this node alone), hard state term 1, no vote,
  commit = index; and the node metadata start-up checks (node id, members) plus the
  cluster token.

Every node of a new cluster is restored from the same file with its own node id and the
same peers: they then hold identical logs and state at that index, and the first leader
(term 2 or later) appends after it.

Nothing is touched until every check passed (the file's footer and checksum, the target
empty or absent, the arguments), and the data dir is built beside the target and renamed
into place at the end: a failure at any step leaves no partial directory behind.

Threading: blocks; offline use only (the CLI), never next to a running node on DIR.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import attrs

from ggap.config.model import MvccConfig, StorageConfig
from ggap.consensus.raft.types import HardState, SnapshotMeta
from ggap.storage._schema import KV_DB_NAME, LOG_DB_NAME
from ggap.storage.backup import TOKEN_RE, BackupMeta, copy_database, verify_backup
from ggap.storage.kv import KvStore
from ggap.storage.log import (
    META_CLUSTER_ID,
    META_CLUSTER_TOKEN,
    META_MEMBERS,
    META_NODE_ID,
    LogStore,
    encode_members,
)
from ggap.storage.snapshot import (
    SNAPSHOT_DIR,
    fsync_dir,
    fsync_path,
    snapshot_path,
    snapshot_state,
    take_snapshot,
)
from ggap.types.errors import FailedPrecondition, InvalidArgument, StorageCorrupt
from ggap.types.members import Membership

__all__ = ["RESTORED_TERM", "Restored", "restore_data_dir", "seed_joiner"]

# The term a restored cluster's log starts in (the backup's own term belongs to the old
# cluster and means nothing to the new one).
RESTORED_TERM = 1


@attrs.frozen
class Restored:
    data_dir: Path
    node_id: int
    voters: tuple[int, ...]
    members: dict[int, str]  # empty: a cluster of one, started without --peers
    cluster_token: str
    backup: BackupMeta


def _check_target(data_dir: Path) -> None:
    if data_dir.is_symlink() or (data_dir.exists() and not data_dir.is_dir()):
        raise FailedPrecondition(f"{data_dir} exists and is not a directory; nothing was changed")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        raise FailedPrecondition(
            f"{data_dir} is not empty; restore only into a new or empty directory (nothing was changed)"
        )


def restore_data_dir(
    backup: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    node_id: int,
    peers: dict[int, str],
    cluster_token: str | None = None,
    mvcc: MvccConfig | None = None,
    storage: StorageConfig | None = None,
) -> Restored:
    """Build `data_dir` for node `node_id` from `backup` (see the module docstring).

    `peers` are the new cluster's voters (id -> cluster address), this node included, as
    `ggap node --peers` takes them; empty makes a cluster of one. `cluster_token` defaults
    to the backup's id, so every node restored from one file agrees on it.

    Raises InvalidArgument for bad arguments, StorageCorrupt / FailedPrecondition for a
    damaged or unusable backup or a target that exists and is not empty; in every case
    nothing has been written.
    """
    target = Path(data_dir).absolute()
    if node_id < 1:
        raise InvalidArgument(f"node id must be >= 1, got {node_id}")
    if peers and node_id not in peers:
        raise InvalidArgument(f"node {node_id} is not one of the peers {sorted(peers)}")
    if cluster_token is not None and not TOKEN_RE.fullmatch(cluster_token):
        raise InvalidArgument(f"a cluster token is 1-64 of [A-Za-z0-9._-], got {cluster_token!r}")
    _check_target(target)
    meta = verify_backup(backup)
    token = cluster_token if cluster_token is not None else meta.backup_id
    voters = tuple(sorted(peers)) if peers else (node_id,)

    created = [p for p in target.parents if not p.exists()]  # to remove again on failure
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restore-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        _build(staging, Path(backup), meta, node_id, voters, peers, token, mvcc or MvccConfig(), storage)
        _check_target(target)  # still empty? (a restore racing another one)
        # rename() replaces an empty directory atomically and refuses a non-empty one.
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # innermost first
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    fsync_dir(target.parent)
    return Restored(target, node_id, voters, dict(peers), token, meta)


def _build(
    root: Path,
    backup: Path,
    meta: BackupMeta,
    node_id: int,
    voters: tuple[int, ...],
    peers: dict[int, str],
    token: str,
    mvcc: MvccConfig,
    storage: StorageConfig | None,
) -> None:
    store_cfg = storage or StorageConfig()
    snap_dir = root / SNAPSHOT_DIR
    snap_dir.mkdir()
    copied = root / "backup.db"
    copy_database(backup, copied)
    state = snapshot_state(copied)
    if (state.index, state.revision, state.compact_revision) != (
        meta.index,
        meta.revision,
        meta.compact_revision,
    ):
        raise StorageCorrupt(
            f"{backup}: its database holds index {state.index}, revision {state.revision}, compact "
            f"revision {state.compact_revision}, but its footer says {meta.index}, {meta.revision}, "
            f"{meta.compact_revision}"
        )

    kv = KvStore.open(root / KV_DB_NAME, mvcc=mvcc, storage=store_cfg)
    try:
        kv.install_snapshot(copied)
        # The new cluster's members are its --peers, not those the backup's cluster had.
        kv.reset_membership()
    finally:
        kv.close()
    copied.unlink()
    # Open again as the node will: runs any migration the backup's schema lacks, and
    # refuses a backup from a newer ggap (FailedPrecondition) before anything is renamed.
    kv = KvStore.open(root / KV_DB_NAME, mvcc=mvcc, storage=store_cfg)
    try:
        if kv.applied_index != meta.index:
            raise StorageCorrupt(
                f"{backup}: installed, kv.db is at index {kv.applied_index}, not {meta.index}"
            )
        # The node's own latest snapshot: the restored state (members reset), sendable as
        # is; taken while the writer is open, so its close removes the WAL files.
        taken = take_snapshot(root / KV_DB_NAME, snap_dir, busy_timeout_ms=store_cfg.busy_timeout_ms)
        if taken.index != meta.index:
            raise StorageCorrupt(
                f"{backup}: the restored snapshot holds index {taken.index}, not {meta.index}"
            )
    finally:
        kv.close()

    log = LogStore.open(root / LOG_DB_NAME, store_cfg)
    try:
        snapshot = SnapshotMeta(index=meta.index, term=RESTORED_TERM, voters=voters) if meta.index else None
        log.save(HardState(term=RESTORED_TERM, vote=0, commit=meta.index), [], snapshot)
        log.set_meta(META_NODE_ID, str(node_id).encode())
        if peers:
            log.set_meta(META_MEMBERS, encode_members(peers))
        log.set_meta(META_CLUSTER_TOKEN, token.encode())
    finally:
        log.close()
    for path in (root / KV_DB_NAME, root / LOG_DB_NAME):
        fsync_path(path)
    fsync_dir(snap_dir)
    fsync_dir(root)


def seed_joiner(
    source: Path,
    data_dir: Path,
    *,
    node_id: int,
    term: int,
    cluster_id: str,
    storage: StorageConfig,
    mvcc: MvccConfig,
) -> Membership:
    """Build the data dir of a node joining a running cluster from `source`, a snapshot of
    a member's kv.db taken after this node was added (as a learner), so the membership
    inside it includes this node. raft.db starts at the snapshot's index and `term` (the
    cluster's term of that entry: the leader's next append is checked against it), with
    the configuration the snapshot holds, and records the cluster's id (a joiner cannot
    derive it: it never saw the bootstrap members). Returns that membership.
    Built beside `data_dir` and renamed into place, like a restore."""
    target = data_dir.absolute()
    _check_target(target)
    state = snapshot_state(source)
    membership = state.membership
    if membership is None or membership.get(node_id) is None:
        raise FailedPrecondition(
            f"the snapshot at index {state.index} does not list node {node_id} as a member"
        )
    if not state.index or term < 1:
        raise FailedPrecondition(f"the snapshot at index {state.index} (term {term}) cannot seed a log")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.join-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        snap_dir = staging / SNAPSHOT_DIR
        snap_dir.mkdir()
        snap = snapshot_path(snap_dir, state.index)
        shutil.copyfile(source, snap)
        fsync_path(snap)
        kv = KvStore.open(staging / KV_DB_NAME, mvcc=mvcc, storage=storage)
        try:
            kv.install_snapshot(snap)
        finally:
            kv.close()
        log = LogStore.open(staging / LOG_DB_NAME, storage)
        try:
            meta = SnapshotMeta(
                index=state.index, term=term, voters=membership.voters, learners=membership.learners
            )
            log.save(HardState(term=term, vote=0, commit=state.index), [], meta)
            log.set_meta(META_NODE_ID, str(node_id).encode())
            log.set_meta(META_CLUSTER_ID, cluster_id.encode())
        finally:
            log.close()
        for path in (staging / KV_DB_NAME, staging / LOG_DB_NAME):
            fsync_path(path)
        fsync_dir(snap_dir)
        fsync_dir(staging)
        _check_target(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    return membership
