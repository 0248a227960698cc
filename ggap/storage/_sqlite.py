"""Connections and migrations shared by kv.db and raft.db.

Two kinds of connection, never mixed: sqlite-utils gets a short-lived one for schema
migrations at open (it auto-commits and uses deferred BEGIN, which is fine there), and the
hot path gets raw `sqlite3` with `isolation_level=None` and explicit `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import sqlite_utils

from ggap.types.errors import FailedPrecondition, StorageCorrupt

# PRAGMA values cannot be bound as parameters, so the allowed ones are spelled out here
# and anything else is refused before it reaches an f-string.
_SYNC_MODES = {"OFF": "OFF", "NORMAL": "NORMAL", "FULL": "FULL", "EXTRA": "EXTRA"}

# Large enough that every constant SQL string of a store stays prepared.
_CACHED_STATEMENTS = 256

_AUTO_VACUUM_INCREMENTAL = 2

log = logging.getLogger(__name__)


def sync_mode(value: str) -> str:
    mode = _SYNC_MODES.get(str(value).upper())
    if mode is None:
        raise ValueError(f"synchronous must be one of {sorted(_SYNC_MODES)}, got {value!r}")
    return mode


def connect(
    path: str | os.PathLike[str], *, synchronous: str, busy_timeout_ms: int, wal_keep_bytes: int = -1
) -> sqlite3.Connection:
    """A read-write hot-path connection.

    `synchronous` and `wal_keep_bytes` (journal_size_limit: the WAL is truncated to it after
    a checkpoint; -1 = never) are per connection, not stored in the file, so they are set
    on every connect.
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
        conn.execute(f"PRAGMA journal_size_limit={int(wal_keep_bytes)}").fetchall()
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
        _use_incremental_vacuum(conn, path)
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


def reclaim_pages(conn: sqlite3.Connection, max_pages: int) -> int:
    """Incremental vacuum of up to `max_pages` free pages on a writer connection (files made
    with auto_vacuum=INCREMENTAL, see `migrate`); returns how many it released. The file
    shrinks at the next WAL checkpoint."""
    if conn.in_transaction:
        raise RuntimeError("reclaim_pages needs a connection outside a transaction")
    before = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    if before == 0:
        return 0
    # Each sqlite3_step of incremental_vacuum frees one page and it returns no rows, so the
    # sqlite3 module's execute() (one step for a statement without columns) frees exactly
    # one page; executescript runs it to completion (it would COMMIT an open transaction
    # first, hence the check above).
    conn.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
    return before - int(conn.execute("PRAGMA freelist_count").fetchone()[0])


@attrs.frozen(slots=True)
class DbSpace:
    """One database file's footprint: bytes on disk (file + WAL) and bytes in pages that
    hold data (free pages excluded: they are reused, or reclaimed by incremental vacuum)."""

    file_bytes: int
    in_use_bytes: int
    free_bytes: int


def db_space(path: str | os.PathLike[str], *, busy_timeout_ms: int) -> DbSpace:
    """Read from the file header through a read-only connection of its own (cheap)."""
    conn = connect_readonly(path, busy_timeout_ms=busy_timeout_ms)
    try:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    finally:
        conn.close()
    return DbSpace(
        file_bytes=file_size(path), in_use_bytes=(pages - free) * page_size, free_bytes=free * page_size
    )


def dir_size(path: str | os.PathLike[str]) -> int:
    """Bytes of every regular file under `path` (a node's data dir: databases, WALs, snapshots)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                pass  # removed meanwhile (a snapshot being replaced)
    return total


def _use_incremental_vacuum(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Free pages go back to the file system only with auto_vacuum=INCREMENTAL, which is
    stored in the file and fixed at creation: a new file gets it before its first table; a
    file made before ggap set it is rebuilt once with VACUUM (time and space ~ its size).
    Snapshots carry it along (VACUUM INTO and the backup API copy the header)."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == _AUTO_VACUUM_INCREMENTAL:
        return
    # Read before setting: on an empty file the pragma itself writes page 1.
    existing = int(conn.execute("PRAGMA page_count").fetchone()[0]) > 0
    conn.execute(f"PRAGMA auto_vacuum={_AUTO_VACUUM_INCREMENTAL}")
    if existing:
        log.info("%s: switching to incremental vacuum (a one-time VACUUM)", path)
        conn.execute("VACUUM")


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
