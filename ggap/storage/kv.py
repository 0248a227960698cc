"""kv.db: the MVCC key-value state machine that committed commands are applied to.

Every version of every key is one row of `kv_versions`. `kv_meta` holds applied_index,
revision, compact_revision and live_keys (how many keys exist) and is updated in the same
transaction as the rows a batch writes, so after a crash the file reflects a prefix of the
log exactly and re-applying from the log is idempotent (entries at or below applied_index
are skipped). That is why this file can run with synchronous=NORMAL: a lost tail is
re-applied from raft.db.

Conventions (etcd v3 unless noted):
- Delete and TTL expiry write a tombstone version: value b"", version 0,
  create_revision 0, expires_at_ms 0, tombstone 1 (plus expired 1 for expiry).
- Results carry the store revision after the command; a command that writes nothing
  (Noop, Compact, a Delete of a missing key, an Expire that expired nothing, a Txn whose
  branch changed nothing) reports the unchanged current revision.

Threading: one KvStore is used by one thread at a time (the apply loop); readers have
their own connections (see `reader()`), so reads never wait for apply.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ggap.config.model import MvccConfig, StorageConfig
from ggap.sessions import Admission
from ggap.storage import _reads, _sessions
from ggap.storage._reads import Row, check_int, live_kv, make_event, read_membership, read_state
from ggap.storage._schema import KV_KNOWN, KV_MIGRATIONS
from ggap.storage._sqlite import (
    connect,
    connect_readonly,
    file_size,
    migrate,
    read_txn,
    reclaim_pages,
    write_txn,
)
from ggap.storage.snapshot import install_snapshot
from ggap.types.commands import (
    CloseSession,
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    Expire,
    Noop,
    OpenSession,
    Prune,
    Put,
    SessionClock,
    SessionWrite,
    Txn,
    TxnGet,
    TxnOp,
    TxnRange,
)
from ggap.types.errors import GgapError, InvalidArgument, OutOfRange
from ggap.types.kv import (
    ApplyResult,
    CompactResult,
    DeleteResult,
    Event,
    ExpireResult,
    GetResult,
    KeyValue,
    NoopResult,
    PruneResult,
    PutResult,
    RangeResult,
    SessionResult,
    TxnOpResult,
    TxnResult,
    check_key,
)
from ggap.types.members import Membership

__all__ = ["Applied", "KvReader", "KvStore"]

_SQL_INSERT = (
    "INSERT INTO kv_versions (shard, key, mod_revision, create_revision, version, expires_at_ms, "
    "tombstone, expired, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_TTL_ADD = "INSERT INTO kv_ttl (shard, expires_at_ms, key, mod_revision) VALUES (?, ?, ?, ?)"
_SQL_TTL_DEL = "DELETE FROM kv_ttl WHERE shard=? AND expires_at_ms=? AND key=?"
_SQL_META_INIT = (
    "INSERT OR IGNORE INTO kv_meta (shard, applied_index, revision, compact_revision) VALUES (?, 0, 0, 0)"
)
_SQL_META_SET = (
    "UPDATE kv_meta SET applied_index=?, revision=?, compact_revision=?, live_keys=? WHERE shard=?"
)
_SQL_LIVE_KEYS = "SELECT live_keys FROM kv_meta WHERE shard=?"
_SQL_MEMBERS_CLEAR = "DELETE FROM kv_members WHERE shard=?"
_SQL_MEMBER_ADD = (
    "INSERT INTO kv_members (shard, id, client_addr, cluster_addr, learner) VALUES (?, ?, ?, ?, ?)"
)
_SQL_MEMBERSHIP_INDEX_SET = "UPDATE kv_meta SET membership_index=? WHERE shard=?"
# Compaction from C0 to C: a version at or below C that is not its key's newest there has a
# newer version in (C0, C] (the previous compaction left one version per key at or below
# C0), so the work is proportional to what was written since C0, not to the whole store.
_SQL_COMPACT_NEWEST = (
    "SELECT key, max(mod_revision) FROM kv_versions WHERE shard=? AND mod_revision>? AND mod_revision<=? "
    "GROUP BY key"
)
_SQL_DELETE_OLDER = "DELETE FROM kv_versions WHERE shard=? AND key=? AND mod_revision<?"
# Then tombstones below C (a deleted key has nothing left to show). A tombstone exactly at
# C stays, so a watch may still start at the compacted revision, as in etcd; one at C0 is
# the previous compaction's and goes now.
_SQL_COMPACT_TOMBSTONES = (
    "DELETE FROM kv_versions WHERE shard=? AND tombstone=1 AND mod_revision>=? AND mod_revision<?"
)
# A prune floor at or below the compact revision can no longer refuse anything.
_SQL_PRUNED_GC = "DELETE FROM kv_pruned WHERE shard=? AND floor_revision<=?"
_SQL_NTH_NEWEST = (
    "SELECT mod_revision FROM kv_versions WHERE shard=? AND key=? ORDER BY mod_revision DESC LIMIT 1 OFFSET ?"
)
_SQL_PRUNED_SET = (
    "INSERT INTO kv_pruned (shard, key, floor_revision) VALUES (?, ?, ?) "
    "ON CONFLICT (shard, key) DO UPDATE SET floor_revision=max(floor_revision, excluded.floor_revision)"
)
# Prune candidates: the next keys after a cursor, then which of them hold more versions
# than the depth (both walk the primary key; run on a reader).
_SQL_KEYS_AFTER = "SELECT DISTINCT key FROM kv_versions WHERE shard=? AND key>? ORDER BY key LIMIT ?"
# The revision of the (N+1)-th version written after a compaction point: where a
# compaction visiting at most N versions must stop. Served by the (shard, mod_revision, key) index.
_SQL_NTH_VERSION_AFTER = (
    "SELECT mod_revision FROM kv_versions WHERE shard=? AND mod_revision>? AND mod_revision<=? "
    "ORDER BY mod_revision LIMIT 1 OFFSET ?"
)
_SQL_DEEP_KEYS = (
    "SELECT key FROM kv_versions WHERE shard=? AND key>=? AND key<=? "
    "GROUP BY key HAVING count(*)>? ORDER BY key"
)


@attrs.frozen(slots=True)
class Applied:
    """What one applied command produced: its result, or the error it failed with (having
    changed nothing), and the events to publish to watchers in (revision, key) order."""

    result: ApplyResult | GgapError
    events: list[Event] = attrs.Factory(list)


@attrs.define(slots=True)
class _State:
    applied_index: int
    revision: int
    compact_revision: int
    # Keys whose newest version is not a tombstone: +1 when a put creates a key (or
    # re-creates one after its tombstone), -1 per tombstone (delete, TTL expiry).
    # Compaction and pruning never remove a key's newest version, so they leave it alone.
    live_keys: int


class KvStore:
    """The writer side of kv.db. Open with `KvStore.open`."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        *,
        mvcc: MvccConfig,
        storage: StorageConfig,
        schema_version: int,
        shard: int = 0,
    ) -> None:
        self._path = path
        self._conn = conn
        self._mvcc = mvcc
        self._storage = storage
        self._shard = shard
        self.schema_version = schema_version
        self._state = _read_state(conn, shard)
        self._membership = read_membership(conn, shard)
        self._sessions = _sessions.load(conn, shard)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, mvcc: MvccConfig, storage: StorageConfig) -> KvStore:
        if mvcc.history_depth < 1:
            raise ValueError(f"mvcc.history_depth must be >= 1, got {mvcc.history_depth}")
        p = os.fspath(path)
        version = migrate(p, KV_MIGRATIONS, KV_KNOWN, busy_timeout_ms=storage.busy_timeout_ms)
        conn = connect(
            p,
            synchronous=storage.kv_synchronous,
            busy_timeout_ms=storage.busy_timeout_ms,
            wal_keep_bytes=storage.wal_keep_bytes,
        )
        try:
            conn.execute(_SQL_META_INIT, (0,))
            return cls(p, conn, mvcc=mvcc, storage=storage, schema_version=version)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Close the writer connection; readers handed out stay open until closed."""
        self._conn.close()

    @property
    def path(self) -> str:
        return self._path

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    @property
    def revision(self) -> int:
        return self._state.revision

    @property
    def compact_revision(self) -> int:
        return self._state.compact_revision

    @property
    def live_keys(self) -> int:
        """Keys that exist as of applied_index (not deleted or expired). Cheap, and safe to
        read from any thread: the state is replaced whole after each commit."""
        return self._state.live_keys

    def db_size_bytes(self) -> int:
        return file_size(self._path)

    def checkpoint(self) -> None:
        """Make everything applied so far durable in the main database file.

        With synchronous=NORMAL a commit is not fsynced, but a WAL checkpoint syncs the WAL
        before copying it and the database after: once this returns, the log entries up to
        `applied_index` are no longer needed to rebuild the state (the caller may compact
        the log). Raises if readers keep the checkpoint from completing.
        """
        busy, _log_frames, _done = self._conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy:
            raise sqlite3.OperationalError("wal_checkpoint(FULL) could not complete: database busy")

    def install_snapshot(self, source: str | os.PathLike[str]) -> None:
        """Replace the whole state with the snapshot file `source`, durably (see
        ggap/storage/snapshot.py); readers see the old state or the new, never a mix.

        The file carries its own schema version: one taken by an older ggap is migrated in
        place (which, for instance, counts its live keys once)."""
        install_snapshot(self._conn, Path(source))
        migrate(self._path, KV_MIGRATIONS, KV_KNOWN, busy_timeout_ms=self._storage.busy_timeout_ms)
        self._conn.execute(_SQL_META_INIT, (self._shard,))
        self._state = _read_state(self._conn, self._shard)
        self._membership = read_membership(self._conn, self._shard)
        self._sessions = _sessions.load(self._conn, self._shard)

    @property
    def sessions(self) -> int:
        """How many client sessions exist as of applied_index."""
        return len(self._sessions)

    @property
    def membership(self) -> Membership | None:
        """As of applied_index: the last applied membership change; None while none was
        (the bootstrap members hold)."""
        return self._membership

    def reset_membership(self) -> None:
        """Forget recorded membership (a restore seeding a new cluster: its --peers hold)."""
        with write_txn(self._conn):
            self._conn.execute(_SQL_MEMBERS_CLEAR, (self._shard,))
            self._conn.execute(_SQL_MEMBERSHIP_INDEX_SET, (0, self._shard))
        self._membership = None

    def reader(self) -> KvReader:
        """A new read-only connection; the caller owns it (and closes it)."""
        conn = connect_readonly(self._path, busy_timeout_ms=self._storage.busy_timeout_ms)
        return KvReader(conn, self._shard)

    # --- apply -----------------------------------------------------------------------------

    def apply(self, entries: Sequence[tuple[int, Command | Membership]]) -> list[Applied | None]:
        """Apply committed entries in ONE transaction (group commit). A `Membership` is a
        membership change already decided by the replica engine: it is recorded (a no-op
        for the key space).

        Entries at or below applied_index give None (replay after a crash is harmless). A
        command that fails validation gives an Applied holding the error and changes
        nothing; the others still apply and applied_index moves past it. Any other
        exception (I/O, a bug) rolls the whole batch back and propagates.
        """
        if not entries:
            return []
        st = attrs.evolve(self._state)
        out: list[Applied | None] = []
        conn = self._conn
        membership = self._membership
        try:
            with write_txn(conn):
                for index, cmd in entries:
                    if index <= st.applied_index:
                        out.append(None)
                        continue
                    st.applied_index = index
                    if isinstance(cmd, Membership):
                        membership = cmd
                        out.append(Applied(NoopResult(revision=st.revision), []))
                    elif isinstance(cmd, SessionWrite):
                        out.append(self._session_write(st, cmd))
                    else:
                        out.append(self._apply_one(st, cmd))
                if membership is not self._membership and membership is not None:
                    self._write_membership(membership)
                if self._sessions.changed:
                    _sessions.persist(conn, self._shard, self._sessions.changes())
                if st.applied_index != self._state.applied_index:
                    meta = (st.applied_index, st.revision, st.compact_revision, st.live_keys, self._shard)
                    conn.execute(_SQL_META_SET, meta)
        except BaseException:
            # The batch rolled back: so must the session table's changes.
            self._sessions = _sessions.load(conn, self._shard)
            raise
        self._state = st
        self._membership = membership
        return out

    def _write_membership(self, membership: Membership) -> None:
        conn, shard = self._conn, self._shard
        conn.execute(_SQL_MEMBERS_CLEAR, (shard,))
        conn.executemany(
            _SQL_MEMBER_ADD,
            [(shard, m.id, m.client_addr, m.cluster_addr, int(m.learner)) for m in membership.members],
        )
        conn.execute(_SQL_MEMBERSHIP_INDEX_SET, (membership.index, shard))

    def _apply_one(self, st: _State, cmd: Command) -> Applied:
        # A savepoint per command: whatever a failing command wrote is undone, so an error
        # result always means "changed nothing", even if validation missed something.
        conn = self._conn
        revision, compact, live = st.revision, st.compact_revision, st.live_keys
        conn.execute("SAVEPOINT cmd")
        try:
            applied = self._dispatch(st, cmd)
        except GgapError as exc:
            conn.execute("ROLLBACK TO cmd")
            conn.execute("RELEASE cmd")
            st.revision, st.compact_revision, st.live_keys = revision, compact, live
            return Applied(exc, [])
        conn.execute("RELEASE cmd")
        return applied

    def _session_write(self, st: _State, write: SessionWrite) -> Applied:
        """Apply a session's write once: a retry is answered with the first outcome."""
        table, conn, shard = self._sessions, self._conn, self._shard
        try:
            admitted = table.admit(write.session, write.seq, write.lowest_unacked)
        except GgapError as exc:
            return Applied(exc, [])
        if admitted.forgotten:
            _sessions.forget(conn, shard, write.session, admitted.forgotten)
        if admitted.verdict is Admission.DUPLICATE:
            return Applied(_sessions.saved(conn, shard, write.session, write.seq), [])
        applied = self._apply_one(st, write.command)
        result = applied.result
        if not isinstance(result, (PutResult, DeleteResult, TxnResult, CompactResult, GgapError)):
            raise InvalidArgument(f"a session write applied as {type(result).__name__}")
        _sessions.save(conn, shard, write.session, write.seq, result)
        table.save(write.session, write.seq)
        return applied

    def _dispatch(self, st: _State, cmd: Command) -> Applied:
        if isinstance(cmd, Put):
            return self._put(st, cmd)
        if isinstance(cmd, Delete):
            return self._delete(st, cmd)
        if isinstance(cmd, Txn):
            return self._txn(st, cmd)
        if isinstance(cmd, Expire):
            return self._expire(st, cmd)
        if isinstance(cmd, Compact):
            return self._compact(st, cmd)
        if isinstance(cmd, Prune):
            return self._prune(st, cmd)
        if isinstance(cmd, Noop):
            return Applied(NoopResult(revision=st.revision), [])
        if isinstance(cmd, OpenSession):
            session, evicted = self._sessions.open(st.applied_index, cmd)
            return Applied(SessionResult(revision=st.revision, session=session, evicted=tuple(evicted)), [])
        if isinstance(cmd, CloseSession):
            closed = self._sessions.close(cmd.session)
            return Applied(SessionResult(revision=st.revision, session=cmd.session, closed=closed), [])
        if isinstance(cmd, SessionClock):
            expired = self._sessions.advance(cmd)
            return Applied(SessionResult(revision=st.revision, expired=tuple(expired)), [])
        if isinstance(cmd, SessionWrite):
            raise InvalidArgument("a session write cannot be nested")
        raise InvalidArgument(f"unknown command type {type(cmd).__name__}")

    def _latest(self, key: str) -> Row | None:
        row: Row | None = self._conn.execute(_reads.SQL_LATEST, (self._shard, key)).fetchone()
        return row

    def _write_put(self, st: _State, put: Put, rev: int, prev: Row | None) -> Event:
        live = prev is not None and not prev[5]
        if prev is not None and live:
            create, version = prev[2], prev[3] + 1
        else:
            create, version = rev, 1
            st.live_keys += 1
        sh = self._shard
        self._conn.execute(
            _SQL_INSERT, (sh, put.key, rev, create, version, put.expires_at_ms, 0, 0, put.value)
        )
        if prev is not None and live and prev[4] > 0:
            self._conn.execute(_SQL_TTL_DEL, (sh, prev[4], put.key))
        if put.expires_at_ms > 0:
            self._conn.execute(_SQL_TTL_ADD, (sh, put.expires_at_ms, put.key, rev))
        row = (put.key, rev, create, version, put.expires_at_ms, 0, put.value, 0)
        return make_event(row, prev)

    def _write_tombstone(self, st: _State, key: str, rev: int, prev: Row, *, expired: bool) -> Event:
        """`prev`: the key's live newest version."""
        sh = self._shard
        st.live_keys -= 1
        self._conn.execute(_SQL_INSERT, (sh, key, rev, 0, 0, 0, 1, int(expired), b""))
        if prev[4] > 0:
            self._conn.execute(_SQL_TTL_DEL, (sh, prev[4], key))
        return make_event((key, rev, 0, 0, 0, 1, b"", int(expired)), prev)

    def _put(self, st: _State, cmd: Put) -> Applied:
        put = _checked_put(cmd)
        rev = st.revision + 1
        ev = self._write_put(st, put, rev, self._latest(put.key))
        st.revision = rev
        return Applied(PutResult(revision=rev, prev_kv=ev.prev_kv), [ev])

    def _delete(self, st: _State, cmd: Delete) -> Applied:
        key = check_key(cmd.key)
        prev = self._latest(key)
        if prev is None or prev[5]:
            return Applied(DeleteResult(revision=st.revision, deleted=False, prev_kv=None), [])
        rev = st.revision + 1
        ev = self._write_tombstone(st, key, rev, prev, expired=False)
        st.revision = rev
        return Applied(DeleteResult(revision=rev, deleted=True, prev_kv=ev.prev_kv), [ev])

    def _expire(self, st: _State, cmd: Expire) -> Applied:
        items = cmd.items
        if not isinstance(items, tuple | list):
            raise InvalidArgument("expire items must be a sequence of (key, mod_revision)")
        todo: list[tuple[str, Row]] = []
        seen: set[str] = set()
        for item in items:
            if not isinstance(item, tuple | list) or len(item) != 2:
                raise InvalidArgument("expire items must be (key, mod_revision) pairs")
            key = check_key(item[0])
            mod = check_int(item[1], "mod_revision")
            if key in seen:
                continue
            prev = self._latest(key)
            # Only the version the proposer saw: a key re-written since then stays.
            if prev is not None and not prev[5] and prev[1] == mod:
                seen.add(key)
                todo.append((key, prev))
        if not todo:
            return Applied(ExpireResult(revision=st.revision, expired=()), [])
        rev = st.revision + 1
        todo.sort(key=lambda kp: kp[0])
        events = [self._write_tombstone(st, k, rev, prev, expired=True) for k, prev in todo]
        st.revision = rev
        return Applied(ExpireResult(revision=rev, expired=tuple(k for k, _ in todo)), events)

    def _compact(self, st: _State, cmd: Compact) -> Applied:
        """Cost: the versions written since the previous compaction (revision index), one
        primary-key range delete per key among them, all inside the apply transaction: the
        automatic compactor keeps each step small (see ggap/server/maintenance.py)."""
        rev = check_int(cmd.revision, "compact revision")
        if rev > st.revision:
            raise OutOfRange(
                f"cannot compact to revision {rev}: the current revision is {st.revision}",
                compact_revision=st.compact_revision,
                current_revision=st.revision,
            )
        if rev <= st.compact_revision:
            raise OutOfRange(
                f"revision {rev} has already been compacted (compacted revision {st.compact_revision})",
                compact_revision=st.compact_revision,
                current_revision=st.revision,
            )
        conn, sh = self._conn, self._shard
        newest = conn.execute(_SQL_COMPACT_NEWEST, (sh, st.compact_revision, rev)).fetchall()
        conn.executemany(_SQL_DELETE_OLDER, [(sh, key, mod) for key, mod in newest])
        conn.execute(_SQL_COMPACT_TOMBSTONES, (sh, st.compact_revision, rev))
        conn.execute(_SQL_PRUNED_GC, (sh, rev))
        st.compact_revision = rev
        return Applied(CompactResult(revision=st.revision), [])

    def _txn(self, st: _State, cmd: Txn) -> Applied:
        compares = _checked_compares(cmd.compare)
        success = _checked_ops(cmd.success, "success")
        failure = _checked_ops(cmd.failure, "failure")
        cache: dict[str, Row | None] = {}

        def latest(key: str) -> Row | None:
            if key not in cache:
                cache[key] = self._latest(key)
            return cache[key]

        succeeded = all(_compare(c, latest(c.key)) for c in compares)
        ops = success if succeeded else failure
        # Reads first: they must see the state before this Txn's writes, and a failing
        # read (compacted revision...) must fail the Txn before anything is written.
        reads: dict[int, TxnOpResult] = {}
        conn, sh = self._conn, self._shard
        for i, op in enumerate(ops):
            if isinstance(op, TxnGet):
                kv = _reads.get_at(conn, sh, op.key, op.revision, st.revision, st.compact_revision)
                reads[i] = GetResult(kv=kv)
            elif isinstance(op, TxnRange):
                reads[i] = _reads.range_at(
                    conn,
                    sh,
                    prefix=op.prefix,
                    start=op.start,
                    end=op.end,
                    limit=op.limit,
                    revision=op.revision,
                    keys_only=op.keys_only,
                    current=st.revision,
                    compact=st.compact_revision,
                )
        changes = any(
            isinstance(op, Put) or (isinstance(op, Delete) and live_kv(latest(op.key)) is not None)
            for op in ops
        )
        rev = st.revision + 1 if changes else st.revision
        responses: list[TxnOpResult] = []
        events: list[Event] = []
        for i, op in enumerate(ops):
            if isinstance(op, Put):
                ev = self._write_put(st, op, rev, latest(op.key))
                events.append(ev)
                responses.append(PutResult(revision=rev, prev_kv=ev.prev_kv))
            elif isinstance(op, Delete):
                prev = latest(op.key)
                if prev is None or prev[5]:
                    responses.append(DeleteResult(revision=rev, deleted=False, prev_kv=None))
                else:
                    ev = self._write_tombstone(st, op.key, rev, prev, expired=False)
                    events.append(ev)
                    responses.append(DeleteResult(revision=rev, deleted=True, prev_kv=ev.prev_kv))
            else:
                responses.append(reads[i])
        events.sort(key=lambda e: e.kv.key)
        st.revision = rev
        return Applied(TxnResult(revision=rev, succeeded=succeeded, responses=tuple(responses)), events)

    def _prune(self, st: _State, cmd: Prune) -> Applied:
        """Applied on every replica from the same state, so all keep the same versions and
        the same per-key floors (kv_pruned) that refuse reads below them."""
        depth = check_int(cmd.depth, "prune depth", minimum=1)
        keys = cmd.keys
        if not isinstance(keys, tuple | list):
            raise InvalidArgument("prune keys must be a sequence")
        conn, sh = self._conn, self._shard
        removed = 0
        for key in sorted({check_key(k) for k in keys}):
            row = conn.execute(_SQL_NTH_NEWEST, (sh, key, depth - 1)).fetchone()
            if row is None:
                continue
            n = conn.execute(_SQL_DELETE_OLDER, (sh, key, row[0])).rowcount
            if n > 0:
                removed += n
                conn.execute(_SQL_PRUNED_SET, (sh, key, row[0]))
        return Applied(PruneResult(revision=st.revision, removed=removed), [])

    # --- space --------------------------------------------------------------------------------

    def reclaim(self, max_pages: int) -> int:
        """Give up to `max_pages` free pages back to the file system (incremental vacuum);
        returns how many went. One short write transaction: call it between applies."""
        if max_pages <= 0:
            return 0
        return reclaim_pages(self._conn, max_pages)


class KvReader:
    """Reads on a read-only connection of its own. Each call is one read transaction and
    returns the store revision it reflects alongside the answer. Not thread-safe: one
    thread at a time (the server keeps a pool)."""

    def __init__(self, conn: sqlite3.Connection, shard: int = 0) -> None:
        self._conn = conn
        self._shard = shard

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> KvReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state(self) -> tuple[int, int, int]:
        """(applied_index, revision, compact_revision) as stored."""
        with read_txn(self._conn):
            return read_state(self._conn, self._shard)

    def get(self, key: str, revision: int = 0) -> tuple[KeyValue | None, int]:
        with read_txn(self._conn):
            _, current, compact = read_state(self._conn, self._shard)
            return _reads.get_at(self._conn, self._shard, key, revision, current, compact), current

    def range(
        self,
        prefix: str = "",
        start: str = "",
        end: str = "",
        limit: int = 0,
        revision: int = 0,
        keys_only: bool = False,
    ) -> tuple[RangeResult, int]:
        with read_txn(self._conn):
            _, current, compact = read_state(self._conn, self._shard)
            result = _reads.range_at(
                self._conn,
                self._shard,
                prefix=prefix,
                start=start,
                end=end,
                limit=limit,
                revision=revision,
                keys_only=bool(keys_only),
                current=current,
                compact=compact,
            )
            return result, current

    def history(self, key: str, limit: int = 0) -> tuple[list[KeyValue], int]:
        """Retained versions, newest first, tombstones included (deleted=True)."""
        with read_txn(self._conn):
            _, current, _ = read_state(self._conn, self._shard)
            return _reads.history(self._conn, self._shard, key, limit), current

    def events(
        self, start_revision: int, *, key: str | None = None, prefix: str | None = None, limit: int
    ) -> tuple[list[Event], int]:
        """Events with revision >= start_revision, in (revision, key) order, each with
        prev_kv. At most `limit` (<= 0: all), except that a revision is never split: if
        its events alone exceed the limit they all come back together."""
        with read_txn(self._conn):
            _, current, compact = read_state(self._conn, self._shard)
            evs = _reads.events_from(
                self._conn,
                self._shard,
                start_revision,
                key=key,
                prefix=prefix,
                limit=limit,
                current=current,
                compact=compact,
            )
            return evs, current

    def prune_candidates(self, after: str | None, scan_keys: int, depth: int) -> tuple[list[str], str | None]:
        """Among the next `scan_keys` keys after `after` (None: from the start), those
        holding more than `depth` versions; and where the next scan starts (None: wrapped
        around). Bounded work per call, whatever the store's size."""
        with read_txn(self._conn):
            # Keys are never empty, so key > "" is every key.
            params = (self._shard, after or "", max(1, scan_keys))
            rows = self._conn.execute(_SQL_KEYS_AFTER, params).fetchall()
            if not rows:
                return [], None
            first, last = rows[0][0], rows[-1][0]
            deep = [r[0] for r in self._conn.execute(_SQL_DEEP_KEYS, (self._shard, first, last, depth))]
        return deep, (last if len(rows) >= scan_keys else None)

    def compaction_step(self, compact: int, target: int, max_versions: int) -> int:
        """How far past `compact` (towards `target`) a compaction may go visiting at most
        `max_versions` versions; at least one revision, so every step makes progress."""
        if target <= compact:
            return target
        with read_txn(self._conn):
            row = self._conn.execute(
                _SQL_NTH_VERSION_AFTER, (self._shard, compact, target, max(1, max_versions))
            ).fetchone()
        if row is None:
            return target  # fewer than that many versions up to target
        return max(compact + 1, int(row[0]) - 1)

    def expiring(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """(key, mod_revision) of live keys whose TTL ran out by now_ms, soonest first."""
        with read_txn(self._conn):
            return _reads.expiring(self._conn, self._shard, now_ms, limit)

    def next_expiry_ms(self) -> int | None:
        with read_txn(self._conn):
            return _reads.next_expiry(self._conn, self._shard)


def _read_state(conn: sqlite3.Connection, shard: int) -> _State:
    applied, revision, compact = read_state(conn, shard)
    (live,) = conn.execute(_SQL_LIVE_KEYS, (shard,)).fetchone()
    return _State(applied, revision, compact, int(live))


# --- command validation (field types and ranges; request shape is the server's job) ------


def _checked_put(put: Any) -> Put:
    check_key(put.key)
    value = put.value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"value must be bytes, got {type(value).__name__}")
    check_int(put.expires_at_ms, "expires_at_ms")
    if type(value) is not bytes:
        return Put(key=put.key, value=bytes(value), expires_at_ms=put.expires_at_ms)
    return put  # type: ignore[no-any-return]


def _checked_compares(compares: object) -> list[Compare]:
    if not isinstance(compares, tuple | list):
        raise InvalidArgument("txn compare must be a sequence")
    out: list[Compare] = []
    for c in compares:
        if not isinstance(c, Compare):
            raise InvalidArgument(f"txn compare must be a Compare, got {type(c).__name__}")
        check_key(c.key, "compare key")
        try:
            target, op = CompareTarget(c.target), CompareOp(c.op)
        except ValueError:
            raise InvalidArgument(f"unknown compare target/op {c.target!r}/{c.op!r}") from None
        if target == CompareTarget.VALUE:
            if not isinstance(c.value, bytes):
                raise InvalidArgument("compare value must be bytes")
        else:
            check_int(c.number, "compare number", minimum=-(1 << 63))
            if target == CompareTarget.EXISTS and c.number not in (0, 1):
                raise InvalidArgument(f"EXISTS compares against 1 or 0, got {c.number}")
        out.append(Compare(key=c.key, target=target, op=op, value=c.value, number=c.number))
    return out


def _checked_ops(ops: object, branch: str) -> list[TxnOp]:
    if not isinstance(ops, tuple | list):
        raise InvalidArgument(f"txn {branch} must be a sequence")
    out: list[TxnOp] = []
    written: set[str] = set()
    for op in ops:
        if isinstance(op, Put | Delete):
            if isinstance(op, Put):
                op = _checked_put(op)
            else:
                check_key(op.key)
            if op.key in written:
                raise InvalidArgument(f"txn {branch} writes key {op.key!r} more than once")
            written.add(op.key)
        elif isinstance(op, TxnGet):
            check_key(op.key)
            check_int(op.revision, "revision")
        elif isinstance(op, TxnRange):
            # The branch not taken is checked too, so validity never depends on state.
            _reads.key_bounds(op.prefix, op.start, op.end)
            check_int(op.limit, "limit")
            check_int(op.revision, "revision")
            if type(op.keys_only) is not bool:
                raise InvalidArgument("keys_only must be a bool")
        else:
            raise InvalidArgument(f"unknown txn op {type(op).__name__}")
        out.append(op)
    return out


def _compare(c: Compare, row: Row | None) -> bool:
    """Against current state; a missing (or deleted) key has version, create and mod
    revision 0, exists 0, and a value unequal to every value (only NOT_EQUAL holds)."""
    live = row is not None and not row[5]
    a: Any
    b: Any
    if c.target == CompareTarget.VALUE:
        if row is None or not live:
            return c.op == CompareOp.NOT_EQUAL
        a, b = row[6], c.value
    elif c.target == CompareTarget.EXISTS:
        a, b = int(live), c.number
    else:
        b = c.number
        if row is None or not live:
            a = 0
        elif c.target == CompareTarget.VERSION:
            a = row[3]
        elif c.target == CompareTarget.CREATE_REVISION:
            a = row[2]
        else:
            a = row[1]
    if c.op == CompareOp.EQUAL:
        return bool(a == b)
    if c.op == CompareOp.NOT_EQUAL:
        return bool(a != b)
    if c.op == CompareOp.GREATER:
        return bool(a > b)
    return bool(a < b)
