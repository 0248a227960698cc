"""State-machine snapshots of kv.db as files: take, verify, install; and the fresh copies
the Snapshot RPC streams to backup clients.

Taking one is `VACUUM INTO` on a read-only connection: a read transaction on a WAL
database, so the writer keeps committing and readers keep reading while it runs, and the
output is a compact, consistent copy whose own `kv_meta` row says which log index it
holds. Installing one is SQLite's backup API from the file into the live kv.db through the
writer connection: one write transaction, so readers with an open read transaction keep
their old view and every later read sees the new state (WAL isolation), with no file
swaps or reconnects; a WAL checkpoint then makes it durable before the log is told.

Threading: every function here blocks; call them from a worker thread.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from pathlib import Path
from typing import BinaryIO

import attrs

from ggap.storage._reads import read_membership, read_state
from ggap.storage._sqlite import connect_readonly
from ggap.types.errors import StorageCorrupt
from ggap.types.members import Membership

SNAPSHOT_DIR = "snap"
# Temporary copies made for the Snapshot RPC (ggap/server/snapshots.py).
BACKUP_PREFIX = "backup-"
_CHUNK = 1 << 20


@attrs.frozen(slots=True)
class SnapshotFile:
    path: Path
    index: int  # the log index it holds (kv_meta.applied_index inside it)
    revision: int
    size: int
    sha256: str
    membership: Membership | None = None  # as of index; None: the bootstrap members


@attrs.frozen(slots=True)
class SnapshotState:
    """What a snapshot file's own kv_meta row says it holds."""

    index: int  # the log index applied into it
    revision: int
    compact_revision: int
    membership: Membership | None = None  # as of index; None: the bootstrap members


def snapshot_dir(data_dir: str | os.PathLike[str]) -> Path:
    d = Path(data_dir) / SNAPSHOT_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def snapshot_path(directory: Path, index: int) -> Path:
    return directory / f"snapshot-{index:020d}.db"


def _vacuum_into(kv_path: str | os.PathLike[str], dest: Path, *, busy_timeout_ms: int) -> None:
    """A compact, consistent copy of kv.db at `dest` (a read transaction: writers go on)."""
    conn = connect_readonly(kv_path, busy_timeout_ms=busy_timeout_ms)
    try:
        conn.execute("VACUUM INTO ?", (str(dest),))
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        conn.close()


def take_snapshot(kv_path: str | os.PathLike[str], directory: Path, *, busy_timeout_ms: int) -> SnapshotFile:
    """Write a consistent copy of kv.db into `directory`; durable when this returns."""
    tmp = directory / f"tmp-{uuid.uuid4().hex}.db"
    _vacuum_into(kv_path, tmp, busy_timeout_ms=busy_timeout_ms)
    try:
        index, _revision = read_snapshot_state(tmp)
        fsync_path(tmp)
        final = snapshot_path(directory, index)
        os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return describe(final)


def snapshot_state(path: str | os.PathLike[str]) -> SnapshotState:
    """The state recorded inside a snapshot file, after SQLite's quick_check of the whole
    file; StorageCorrupt if it is not a readable kv.db snapshot."""
    try:
        conn = connect_readonly(path, busy_timeout_ms=0)
    except sqlite3.Error as exc:
        raise StorageCorrupt(f"{path}: not a readable snapshot: {exc}") from exc
    try:
        ok = conn.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise StorageCorrupt(f"{path}: integrity check failed: {ok}")
        applied, revision, compact = read_state(conn, 0)
        membership = read_membership(conn, 0)
        return SnapshotState(
            index=applied, revision=revision, compact_revision=compact, membership=membership
        )
    except (sqlite3.Error, LookupError) as exc:
        raise StorageCorrupt(f"{path}: not a kv.db snapshot: {exc}") from exc
    finally:
        conn.close()


def read_snapshot_state(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(applied index, revision) recorded inside a snapshot file; StorageCorrupt if it is not
    a kv.db snapshot."""
    state = snapshot_state(path)
    return state.index, state.revision


def describe(path: Path) -> SnapshotFile:
    state = snapshot_state(path)
    size = path.stat().st_size
    return SnapshotFile(
        path=path,
        index=state.index,
        revision=state.revision,
        size=size,
        sha256=sha256_of(path),
        membership=state.membership,
    )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def latest_snapshot(directory: Path) -> Path | None:
    files = sorted(directory.glob("snapshot-*.db"))
    return files[-1] if files else None


def prune_snapshots(directory: Path, keep: Path) -> None:
    """Remove every snapshot file but `keep` (and leftovers of interrupted takes)."""
    for p in directory.glob("snapshot-*.db"):
        if p != keep:
            p.unlink(missing_ok=True)
    for p in directory.glob("tmp-*.db"):
        p.unlink(missing_ok=True)


def install_snapshot(conn: sqlite3.Connection, source: Path) -> None:
    """Replace the database behind the writer connection `conn` with `source`, durably."""
    src = sqlite3.connect(Path(source).absolute().as_uri() + "?mode=ro", uri=True)
    try:
        src.backup(conn)
    finally:
        src.close()
    busy, _frames, _done = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
    if busy:
        raise sqlite3.OperationalError("wal_checkpoint(FULL) after a snapshot install could not complete")


@attrs.define(eq=False)
class BackupCopy:
    """A fresh copy of kv.db for the Snapshot RPC, open for reading and already unlinked:
    its disk space goes back the moment `file` is closed, whoever closes it and however the
    stream ended, and a crash leaves at most a `backup-*.tmp` for the next start to remove."""

    file: BinaryIO
    state: SnapshotState
    size: int


def take_backup_copy(kv_path: str | os.PathLike[str], directory: Path, *, busy_timeout_ms: int) -> BackupCopy:
    """VACUUM INTO a temporary file in `directory`, check it, open it and unlink it.

    Named `backup-*.tmp` so that nothing managing the node's own snapshots (take, settle,
    prune, transfer) ever mistakes it for one of theirs, or removes it mid-stream."""
    tmp = directory / f"{BACKUP_PREFIX}{uuid.uuid4().hex}.tmp"
    _vacuum_into(kv_path, tmp, busy_timeout_ms=busy_timeout_ms)
    try:
        state = snapshot_state(tmp)
        f = tmp.open("rb", buffering=0)
    finally:
        tmp.unlink(missing_ok=True)
    return BackupCopy(file=f, state=state, size=os.fstat(f.fileno()).st_size)


def remove_backup_leftovers(directory: Path) -> int:
    """Remove copies left behind by a crash while a Snapshot RPC was copying; how many went."""
    gone = 0
    for p in directory.glob(f"{BACKUP_PREFIX}*.tmp"):
        p.unlink(missing_ok=True)
        gone += 1
    return gone


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
