"""Offline look at a data directory (for `ggap inspect`): what is there and how far it got:
kv.db (revisions, keys), raft.db (log range first..last, snapshot metadata, hard state)
and the latest state-machine snapshot file in snap/ (index, term, size).

Read-only: opens every file with mode=ro, so it is safe next to a running node (it then
shows the last committed state) and never migrates or repairs anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from ggap.storage._reads import read_state
from ggap.storage._schema import (
    KV_DB_NAME,
    KV_MIGRATION_SET,
    KV_SCHEMA_VERSION,
    LOG_DB_NAME,
    LOG_MIGRATION_SET,
    LOG_SCHEMA_VERSION,
)
from ggap.storage._sqlite import connect_readonly, file_size, schema_version
from ggap.storage.snapshot import SNAPSHOT_DIR, latest_snapshot
from ggap.types.errors import FailedPrecondition, NotFound

__all__ = ["inspect_data_dir"]

_BUSY_MS = 2000

_SQL_LIVE_KEYS = (
    "SELECT count(*) FROM kv_versions AS v WHERE v.shard=? AND v.tombstone=0 AND v.mod_revision=("
    "SELECT max(w.mod_revision) FROM kv_versions AS w WHERE w.shard=v.shard AND w.key=v.key)"
)


def inspect_data_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of kv.db and raft.db in `path` as a JSON-friendly dict.

    Raises NotFound when the directory holds neither file, FailedPrecondition when a file
    is there but is not a ggap database.
    """
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"{root} is not a directory")
    kv_path, log_path = root / KV_DB_NAME, root / LOG_DB_NAME
    if not kv_path.is_file() and not log_path.is_file():
        raise NotFound(f"{root} holds no ggap data (neither {KV_DB_NAME} nor {LOG_DB_NAME})")
    log = _inspect_log(log_path) if log_path.is_file() else None
    return {
        "path": str(root.absolute()),
        "kv": _inspect_kv(kv_path) if kv_path.is_file() else None,
        "log": log,
        "snapshot_file": _inspect_snapshot_file(root / SNAPSHOT_DIR, log),
    }


def _open(path: Path, migration_set: str) -> tuple[sqlite3.Connection, int]:
    try:
        conn = connect_readonly(path, busy_timeout_ms=_BUSY_MS)
        version = schema_version(conn, migration_set)
    except sqlite3.DatabaseError as exc:
        raise FailedPrecondition(f"{path} is not a readable SQLite database: {exc}") from None
    if version == 0:
        conn.close()
        raise FailedPrecondition(f"{path} is not a ggap database (no {migration_set} schema)")
    return conn, version


def _inspect_kv(path: Path) -> dict[str, Any]:
    conn, version = _open(path, KV_MIGRATION_SET)
    try:
        conn.execute("BEGIN")
        meta = conn.execute(
            "SELECT applied_index, revision, compact_revision FROM kv_meta WHERE shard=0"
        ).fetchone() or (0, 0, 0)
        one = conn.execute
        info = {
            "file": str(path),
            "size_bytes": file_size(path),
            "schema_version": version,
            "schema_version_supported": KV_SCHEMA_VERSION,
            "applied_index": meta[0],
            "revision": meta[1],
            "compact_revision": meta[2],
            "live_keys": one(_SQL_LIVE_KEYS, (0,)).fetchone()[0],
            "version_rows": one("SELECT count(*) FROM kv_versions WHERE shard=0").fetchone()[0],
            "keys_with_ttl": one("SELECT count(*) FROM kv_ttl WHERE shard=0").fetchone()[0],
            "pruned_keys": one("SELECT count(*) FROM kv_pruned WHERE shard=0").fetchone()[0],
        }
        conn.execute("COMMIT")
        return info
    finally:
        conn.close()


def _inspect_log(path: Path) -> dict[str, Any]:
    conn, version = _open(path, LOG_MIGRATION_SET)
    try:
        conn.execute("BEGIN")
        state = conn.execute(
            "SELECT compacted_index, compacted_term, term, vote, commit_index FROM log_state WHERE shard=0"
        ).fetchone() or (0, 0, 0, 0, 0)
        # Files from before migration 0002 have no snapshot columns: their snapshot is the
        # compaction point (which is what opening them with LogStore migrates it to).
        snap: tuple[int, int, str, str] = (state[0], state[1], "[]", "[]")
        if version >= 2:
            snap = (
                conn.execute(
                    "SELECT snapshot_index, snapshot_term, snapshot_voters, snapshot_learners "
                    "FROM log_state WHERE shard=0"
                ).fetchone()
                or snap
            )
        bounds = conn.execute("SELECT min(idx), max(idx), count(*) FROM log_entries WHERE shard=0").fetchone()
        last = conn.execute("SELECT term FROM log_entries WHERE shard=0 ORDER BY idx DESC LIMIT 1").fetchone()
        meta = [r[0] for r in conn.execute("SELECT name FROM log_meta WHERE shard=0 ORDER BY name")]
        conn.execute("COMMIT")
    finally:
        conn.close()
    compacted_index, compacted_term = state[0], state[1]
    return {
        "file": str(path),
        "size_bytes": file_size(path),
        "schema_version": version,
        "schema_version_supported": LOG_SCHEMA_VERSION,
        "first_index": compacted_index + 1,
        "last_index": bounds[1] if bounds[1] is not None else compacted_index,
        "last_term": last[0] if last is not None else compacted_term,
        "entries": bounds[2],
        "compacted_index": compacted_index,
        "compacted_term": compacted_term,
        "snapshot": {
            "index": snap[0],
            "term": snap[1],
            "voters": json.loads(snap[2]),
            "learners": json.loads(snap[3]),
        },
        "hard_state": {"term": state[2], "vote": state[3], "commit": state[4]},
        "meta_names": meta,
    }


def _inspect_snapshot_file(directory: Path, log: dict[str, Any] | None) -> dict[str, Any] | None:
    """The newest `snap/snapshot-*.db` (the one a leader sends followers), or None. Its
    index and revision come from its own kv_meta (no integrity check: that reads the whole
    file); its term from raft.db's snapshot metadata when that names the same index. An
    unreadable file is reported, not raised: the databases may still be worth a look."""
    if not directory.is_dir():
        return None
    path = latest_snapshot(directory)
    if path is None:
        return None
    info: dict[str, Any] = {
        "file": str(path),
        "size_bytes": file_size(path),
        "files": sum(1 for _ in directory.glob("snapshot-*.db")),
    }
    try:
        conn = connect_readonly(path, busy_timeout_ms=_BUSY_MS)
        try:
            index, revision, compact = read_state(conn, 0)
        finally:
            conn.close()
    except (sqlite3.DatabaseError, LookupError) as exc:
        info["error"] = f"not a readable kv.db snapshot: {exc}"
        return info
    recorded = log["snapshot"] if log is not None else None
    info.update(
        index=index,
        term=recorded["term"] if recorded is not None and recorded["index"] == index else None,
        revision=revision,
        compact_revision=compact,
    )
    return info
