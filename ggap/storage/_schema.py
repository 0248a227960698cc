"""Schema migrations of kv.db and raft.db.

Append new steps to the lists; never edit an applied one. Every table has a
`shard INTEGER NOT NULL` column (always 0 today) so several Raft groups can later share
a file without a schema rewrite.
"""

from __future__ import annotations

import sqlite_utils

from ggap.storage._sqlite import Migration, build_migrations

KV_MIGRATION_SET = "ggap.kv"
LOG_MIGRATION_SET = "ggap.log"


def _kv_0001_initial(db: sqlite_utils.Database) -> None:
    # One row per version. The primary key orders a key's versions newest first, so a
    # point-in-time read is one index seek and a range scan comes out in exactly the
    # (key asc, mod_revision desc) order that visible_versions expects, with no sort.
    # key TEXT under the default BINARY collation compares UTF-8 bytes.
    db.execute(
        """
        CREATE TABLE kv_versions (
            shard INTEGER NOT NULL,
            key TEXT NOT NULL,
            mod_revision INTEGER NOT NULL,
            create_revision INTEGER NOT NULL,
            version INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            tombstone INTEGER NOT NULL,
            expired INTEGER NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (shard, key, mod_revision DESC)
        ) WITHOUT ROWID, STRICT
        """
    )
    # Watch replay and compaction walk versions by revision.
    db.execute("CREATE INDEX kv_versions_by_revision ON kv_versions (shard, mod_revision, key)")
    # Written in the same transaction as the data: a crash never applies a command twice.
    db.execute(
        """
        CREATE TABLE kv_meta (
            shard INTEGER NOT NULL PRIMARY KEY,
            applied_index INTEGER NOT NULL,
            revision INTEGER NOT NULL,
            compact_revision INTEGER NOT NULL
        ) STRICT
        """
    )
    # Live latest versions that carry a TTL, ordered by expiry: the expirer's index.
    db.execute(
        """
        CREATE TABLE kv_ttl (
            shard INTEGER NOT NULL,
            expires_at_ms INTEGER NOT NULL,
            key TEXT NOT NULL,
            mod_revision INTEGER NOT NULL,
            PRIMARY KEY (shard, expires_at_ms, key)
        ) WITHOUT ROWID, STRICT
        """
    )
    # Keys whose old versions were removed by history pruning: reads below floor_revision
    # of that key would need a removed version and answer OUT_OF_RANGE instead.
    db.execute(
        """
        CREATE TABLE kv_pruned (
            shard INTEGER NOT NULL,
            key TEXT NOT NULL,
            floor_revision INTEGER NOT NULL,
            PRIMARY KEY (shard, key)
        ) WITHOUT ROWID, STRICT
        """
    )
    db.execute("CREATE INDEX kv_pruned_by_floor ON kv_pruned (shard, floor_revision)")


def _log_0001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE log_entries (
            shard INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            term INTEGER NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (shard, idx)
        ) WITHOUT ROWID, STRICT
        """
    )
    # compacted_index/term: the last entry dropped by compaction (Raft needs its term for
    # the consistency check of the next append).
    db.execute(
        """
        CREATE TABLE log_state (
            shard INTEGER NOT NULL PRIMARY KEY,
            compacted_index INTEGER NOT NULL,
            compacted_term INTEGER NOT NULL,
            term INTEGER NOT NULL,
            vote INTEGER NOT NULL,
            commit_index INTEGER NOT NULL
        ) STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE log_meta (
            shard INTEGER NOT NULL,
            name TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (shard, name)
        ) WITHOUT ROWID, STRICT
        """
    )


def _log_0002_snapshot(db: sqlite_utils.Database) -> None:
    # The newest state-machine snapshot S, kept apart from the compaction point C
    # (compacted_index/term), C <= S. voters/learners are JSON arrays of member ids. Files
    # written before this step had no snapshot of their own: S starts at C.
    for column, decl in (
        ("snapshot_index", "INTEGER NOT NULL DEFAULT 0"),
        ("snapshot_term", "INTEGER NOT NULL DEFAULT 0"),
        ("snapshot_voters", "TEXT NOT NULL DEFAULT '[]'"),
        ("snapshot_learners", "TEXT NOT NULL DEFAULT '[]'"),
    ):
        db.execute(f"ALTER TABLE log_state ADD COLUMN {column} {decl}")
    db.execute("UPDATE log_state SET snapshot_index=compacted_index, snapshot_term=compacted_term")


def _kv_0002_members(db: sqlite_utils.Database) -> None:
    # Cluster membership is replicated state: written by the apply transaction of each
    # membership change, with the applied index, and carried by every snapshot. While
    # membership_index is 0 no change was ever applied: the members are the bootstrap ones
    # (raft.db's), and kv_members is empty.
    db.execute(
        """
        CREATE TABLE kv_members (
            shard INTEGER NOT NULL,
            id INTEGER NOT NULL,
            client_addr TEXT NOT NULL,
            cluster_addr TEXT NOT NULL,
            learner INTEGER NOT NULL,
            PRIMARY KEY (shard, id)
        ) WITHOUT ROWID, STRICT
        """
    )
    db.execute("ALTER TABLE kv_meta ADD COLUMN membership_index INTEGER NOT NULL DEFAULT 0")


def _kv_0003_live_keys(db: sqlite_utils.Database) -> None:
    # How many keys exist (newest version not a tombstone): kept exact by every apply
    # transaction from now on (ggap_mvcc_keys_total reads it), counted once here. SQLite
    # takes the bare `tombstone` of a max() aggregate from the row holding the max.
    db.execute("ALTER TABLE kv_meta ADD COLUMN live_keys INTEGER NOT NULL DEFAULT 0")
    db.execute(
        """
        UPDATE kv_meta SET live_keys = (
            SELECT count(*) FROM (
                SELECT tombstone, max(mod_revision) FROM kv_versions v
                WHERE v.shard = kv_meta.shard GROUP BY key
            ) WHERE tombstone = 0
        )
        """
    )


def _kv_0004_sessions(db: sqlite_utils.Database) -> None:
    # Client sessions (ggap.sessions): replicated state like the keys, written by the apply
    # transaction and carried by snapshots. A session's saved results live until the
    # client acknowledges them or the session ends.
    db.execute(
        """
        CREATE TABLE kv_sessions (
            shard INTEGER NOT NULL,
            id INTEGER NOT NULL,
            last_active_ms INTEGER NOT NULL,
            lowest_unacked INTEGER NOT NULL,
            max_unacked INTEGER NOT NULL,
            PRIMARY KEY (shard, id)
        ) WITHOUT ROWID, STRICT
        """
    )
    db.execute(
        """
        CREATE TABLE kv_session_results (
            shard INTEGER NOT NULL,
            session INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            outcome BLOB NOT NULL,
            PRIMARY KEY (shard, session, seq)
        ) WITHOUT ROWID, STRICT
        """
    )
    # Log time: the newest SessionClock applied (0: none yet).
    db.execute("ALTER TABLE kv_meta ADD COLUMN session_clock_ms INTEGER NOT NULL DEFAULT 0")


_KV_STEPS: list[tuple[str, Migration]] = [
    ("0001_initial", _kv_0001_initial),
    ("0002_members", _kv_0002_members),
    ("0003_live_keys", _kv_0003_live_keys),
    ("0004_sessions", _kv_0004_sessions),
]
_LOG_STEPS: list[tuple[str, Migration]] = [
    ("0001_initial", _log_0001_initial),
    ("0002_snapshot", _log_0002_snapshot),
]

KV_MIGRATIONS = build_migrations(KV_MIGRATION_SET, _KV_STEPS)
LOG_MIGRATIONS = build_migrations(LOG_MIGRATION_SET, _LOG_STEPS)
KV_KNOWN = [name for name, _ in _KV_STEPS]
LOG_KNOWN = [name for name, _ in _LOG_STEPS]
KV_SCHEMA_VERSION = len(KV_KNOWN)
LOG_SCHEMA_VERSION = len(LOG_KNOWN)

# File names inside a node's data directory.
KV_DB_NAME = "kv.db"
LOG_DB_NAME = "raft.db"
