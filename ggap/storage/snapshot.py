"""State-machine snapshots of kv.db as files: take, verify, install.

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

import attrs

from ggap.storage._reads import read_state
from ggap.storage._sqlite import connect_readonly
from ggap.types.errors import StorageCorrupt

SNAPSHOT_DIR = "snap"
_CHUNK = 1 << 20


@attrs.frozen(slots=True)
class SnapshotFile:
    path: Path
    index: int  # the log index it holds (kv_meta.applied_index inside it)
    revision: int
    size: int
    sha256: str


def snapshot_dir(data_dir: str | os.PathLike[str]) -> Path:
    d = Path(data_dir) / SNAPSHOT_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def snapshot_path(directory: Path, index: int) -> Path:
    return directory / f"snapshot-{index:020d}.db"


def take_snapshot(kv_path: str | os.PathLike[str], directory: Path, *, busy_timeout_ms: int) -> SnapshotFile:
    """Write a consistent copy of kv.db into `directory`; durable when this returns."""
    tmp = directory / f"tmp-{uuid.uuid4().hex}.db"
    conn = connect_readonly(kv_path, busy_timeout_ms=busy_timeout_ms)
    try:
        conn.execute("VACUUM INTO ?", (str(tmp),))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        conn.close()
    try:
        index, _revision = read_snapshot_state(tmp)
        _fsync(tmp)
        final = snapshot_path(directory, index)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return describe(final)


def read_snapshot_state(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(applied index, revision) recorded inside a snapshot file; StorageCorrupt if it is not
    a kv.db snapshot."""
    try:
        conn = connect_readonly(path, busy_timeout_ms=0)
    except sqlite3.Error as exc:
        raise StorageCorrupt(f"{path}: not a readable snapshot: {exc}") from exc
    try:
        ok = conn.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise StorageCorrupt(f"{path}: integrity check failed: {ok}")
        applied, revision, _compact = read_state(conn, 0)
        return applied, revision
    except (sqlite3.Error, LookupError) as exc:
        raise StorageCorrupt(f"{path}: not a kv.db snapshot: {exc}") from exc
    finally:
        conn.close()


def describe(path: Path) -> SnapshotFile:
    index, revision = read_snapshot_state(path)
    size = path.stat().st_size
    return SnapshotFile(path=path, index=index, revision=revision, size=size, sha256=sha256_of(path))


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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
