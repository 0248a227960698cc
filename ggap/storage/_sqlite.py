"""Connections and migrations shared by kv.db and raft.db.

Two kinds of connection, never mixed: sqlite-utils gets a short-lived one for schema
migrations at open (it auto-commits and uses deferred BEGIN, which is fine there), and the
hot path gets raw `sqlite3` with `isolation_level=None` and explicit `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from ggap.types.errors import FailedPrecondition, StorageCorrupt

# PRAGMA values cannot be bound as parameters, so the allowed ones are spelled out here
# and anything else is refused before it reaches an f-string.
_SYNC_MODES = {"OFF": "OFF", "NORMAL": "NORMAL", "FULL": "FULL", "EXTRA": "EXTRA"}

# Large enough that every constant SQL string of a store stays prepared.
_CACHED_STATEMENTS = 256


def sync_mode(value: str) -> str:
    mode = _SYNC_MODES.get(str(value).upper())
    if mode is None:
        raise ValueError(f"synchronous must be one of {sorted(_SYNC_MODES)}, got {value!r}")
    return mode


def connect(path: str | os.PathLike[str], *, synchronous: str, busy_timeout_ms: int) -> sqlite3.Connection:
    """A read-write hot-path connection.

    `synchronous` is per connection (not stored in the file), so it is set on every connect.
    check_same_thread is off because trio's thread cache hands us different threads; the
    owner serialises use instead.
    """
    conn = sqlite3.connect(
        os.fspath(path),
        isolation_level=None,
        check_same_thread=False,
        cached_statements=_CACHED_STATEMENTS,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        conn.execute(f"PRAGMA synchronous={sync_mode(synchronous)}")
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: str | os.PathLike[str], *, busy_timeout_ms: int) -> sqlite3.Connection:
    """A connection that cannot write even by mistake (mode=ro), for readers and inspect."""
    uri = Path(path).absolute().as_uri() + "?mode=ro"
    conn = sqlite3.connect(
        uri,
        uri=True,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=_CACHED_STATEMENTS,
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT: take the write lock up front so nothing upgrades later."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_txn(conn: sqlite3.Connection) -> Iterator[None]:
    """One snapshot for several SELECTs, so a result and its revision agree."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


Migration = Callable[[sqlite_utils.Database], None]


def build_migrations(set_name: str, steps: list[tuple[str, Migration]]) -> sqlite_utils.Migrations:
    migrations = sqlite_utils.Migrations(set_name)
    for name, fn in steps:
        migrations(name=name)(fn)
    return migrations


def migrate(
    path: str | os.PathLike[str],
    migrations: sqlite_utils.Migrations,
    known: list[str],
    *,
    busy_timeout_ms: int,
) -> int:
    """Bring the file to the newest schema; return its schema version (migrations applied).

    Refuses a file written by a newer ggap (a migration we do not know) rather than
    guessing at its layout.
    """
    conn = sqlite3.connect(os.fspath(path), isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        # journal_mode is stored in the file; it cannot change inside a transaction.
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageCorrupt(f"{path}: could not switch to WAL (journal_mode={mode})")
        db = sqlite_utils.Database(conn)
        applied = [m.name for m in migrations.applied(db)]
        unknown = [name for name in applied if name not in known]
        if unknown:
            raise FailedPrecondition(
                f"{path} has schema migrations this ggap does not know ({', '.join(unknown)}); "
                "it was written by a newer version"
            )
        migrations.apply(db)
        return len(migrations.applied(db))
    finally:
        conn.close()


def schema_version(conn: sqlite3.Connection, set_name: str) -> int:
    """Applied migration count, read without sqlite-utils so it works on a read-only handle."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='_sqlite_migrations'"
    ).fetchone()
    if exists is None:
        return 0
    row = conn.execute(
        "SELECT count(*) FROM _sqlite_migrations WHERE migration_set=?", (set_name,)
    ).fetchone()
    return int(row[0])


def file_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the database plus its WAL (the WAL can hold most of a busy db)."""
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(os.fspath(path) + suffix).st_size
        except FileNotFoundError:
            pass
    return total
