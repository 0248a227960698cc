"""raft.db: the replicated log, the Raft hard state, the snapshot metadata and a little
node metadata. `LogStore` implements `ggap.consensus.raft.storage.DurableStorage`.

Runs with synchronous=FULL by default: when `save`, `compact` or `set_snapshot` returns,
the data is on disk (one transaction, one fsync each), which is what Raft needs before it
answers a vote or an append; `sync` has nothing left to do.
Entries are stored as the codec frames them (with a CRC) and checked on every read from
the file, so a rotten entry stops the node (StorageCorrupt) instead of being replicated or
applied.

Threading: writes (`save`, `compact`, `set_snapshot`, `set_meta`) come from one thread at
a time (the writer thread) and are the only users of the writer connection. Reads
(`entries`, `term`, the bounds, `snapshot`, `initial_state`, `get_meta`) may run on another
thread at the same time: the in-memory state (bounds, hard state, snapshot, cache) changes
under a lock, only after the transaction committed, and rows that are not cached are read
through a second, read-only connection (`check_same_thread=False`, its own lock). A read
that overlaps a write which drops the rows it wanted answers LogCompactedError /
LogUnavailableError as the write's outcome dictates, never a false StorageCorrupt.

The cache holds the most recent entries (always a suffix of the log, bounded by count
and payload bytes): what followers and the apply path ask for is nearly always there.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from ggap.codec import ENTRY_HEADER_SIZE, decode_entry, encode_entry
from ggap.config.model import StorageConfig
from ggap.consensus.raft.storage import DurableStorage, LogCompactedError, LogUnavailableError
from ggap.consensus.raft.types import Entry, EntryKind, HardState, SnapshotMeta
from ggap.storage._schema import LOG_KNOWN, LOG_MIGRATIONS
from ggap.storage._sqlite import connect, connect_readonly, file_size, migrate, reclaim_pages, write_txn
from ggap.types.errors import CodecError, StorageCorrupt

__all__ = [
    "META_CLUSTER_ID",
    "META_CLUSTER_TOKEN",
    "META_MEMBERS",
    "META_NODE_ID",
    "CacheInfo",
    "LogStore",
    "decode_members",
    "encode_members",
]

DEFAULT_CACHE_ENTRIES = 4096
DEFAULT_CACHE_BYTES = 16 << 20

# Node metadata in log_meta, written at a data dir's first start (ggap/server/node.py) or
# by `ggap snapshot restore` (ggap/storage/restore.py), checked at every later start.
META_NODE_ID = "node_id"  # this node's id, decimal ASCII
META_MEMBERS = "members"  # the bootstrap voters, encode_members
META_CLUSTER_TOKEN = "cluster_token"  # mixed into the cluster id; set by a restore only
META_CLUSTER_ID = "cluster_id"  # the cluster's id as given to a node that joined (it never saw the bootstrap)

_SQL_STATE_INIT = (
    "INSERT OR IGNORE INTO log_state (shard, compacted_index, compacted_term, term, vote, commit_index) "
    "VALUES (?, 0, 0, 0, 0, 0)"
)
_SQL_STATE = (
    "SELECT compacted_index, compacted_term, term, vote, commit_index, "
    "snapshot_index, snapshot_term, snapshot_voters, snapshot_learners FROM log_state WHERE shard=?"
)
_SQL_BOUNDS = "SELECT min(idx), max(idx) FROM log_entries WHERE shard=?"
_SQL_TRUNCATE = "DELETE FROM log_entries WHERE shard=? AND idx>=?"
_SQL_INSERT = "INSERT INTO log_entries (shard, idx, term, data) VALUES (?, ?, ?, ?)"
_SQL_HARD = "UPDATE log_state SET term=?, vote=?, commit_index=? WHERE shard=?"
_SQL_ENTRIES = "SELECT idx, term, data FROM log_entries WHERE shard=? AND idx>=? AND idx<? ORDER BY idx"
_SQL_TERM = "SELECT term FROM log_entries WHERE shard=? AND idx=?"
_SQL_COMPACT = "DELETE FROM log_entries WHERE shard=? AND idx<=?"
_SQL_DROP_ALL = "DELETE FROM log_entries WHERE shard=?"
_SQL_COMPACTED = "UPDATE log_state SET compacted_index=?, compacted_term=? WHERE shard=?"
_SQL_SNAPSHOT = (
    "UPDATE log_state SET snapshot_index=?, snapshot_term=?, snapshot_voters=?, snapshot_learners=? "
    "WHERE shard=?"
)
_SQL_META_GET = "SELECT value FROM log_meta WHERE shard=? AND name=?"
_SQL_META_SET = (
    "INSERT INTO log_meta (shard, name, value) VALUES (?, ?, ?) "
    "ON CONFLICT (shard, name) DO UPDATE SET value=excluded.value"
)


@attrs.frozen(slots=True)
class CacheInfo:
    """What the entry cache holds: entries [first_index, first_index + entries)."""

    first_index: int
    entries: int
    bytes: int


class LogStore:
    """The log of one Raft group. Indexes start at 1; compaction moves `first_index()` up."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        reader: sqlite3.Connection,
        *,
        schema_version: int,
        shard: int = 0,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        if cache_entries < 0 or cache_bytes < 0:
            raise ValueError(f"cache bounds must be >= 0, got {cache_entries} entries, {cache_bytes} bytes")
        self._path = path
        self._conn = conn  # the writer thread's
        self._reader = reader
        self._shard = shard
        self.schema_version = schema_version
        self._lock = threading.Lock()  # the in-memory state below
        self._read_lock = threading.Lock()  # the reader connection
        conn.execute(_SQL_STATE_INIT, (shard,))
        ci, ct, term, vote, commit, si, st, sv, sl = conn.execute(_SQL_STATE, (shard,)).fetchone()
        self._compacted: tuple[int, int] = (int(ci), int(ct))
        self._hard = HardState(term=int(term), vote=int(vote), commit=int(commit))
        self._snap = SnapshotMeta(index=int(si), term=int(st), voters=_ids(sv), learners=_ids(sl))
        lo, hi = conn.execute(_SQL_BOUNDS, (shard,)).fetchone()
        if lo is not None and int(lo) <= self._compacted[0]:
            raise StorageCorrupt(f"raft.db: log entry {lo} is at or below the compaction point {ci}")
        if self._snap.index < self._compacted[0]:
            raise StorageCorrupt(f"raft.db: snapshot {si} is below the compaction point {ci}")
        self._last = self._compacted[0] if hi is None else int(hi)
        # (new compaction point, new last index) of a write in flight: a reader that finds
        # rows missing meanwhile tells "dropped by that write" from corruption with it.
        self._pending: tuple[int, int] | None = None
        # The cache: entries [_cache_lo, _last], a suffix of the log (empty when
        # _cache_lo == _last + 1). A dict keyed by index: O(1) trim at either end.
        self._cache_max_entries = cache_entries
        self._cache_max_bytes = cache_bytes
        self._cache: dict[int, Entry] = {}
        self._cache_lo = self._last + 1
        self._cache_bytes = 0

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        storage: StorageConfig,
        *,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> LogStore:
        p = os.fspath(path)
        version = migrate(p, LOG_MIGRATIONS, LOG_KNOWN, busy_timeout_ms=storage.busy_timeout_ms)
        conn = connect(
            p,
            synchronous=storage.log_synchronous,
            busy_timeout_ms=storage.busy_timeout_ms,
            wal_keep_bytes=storage.wal_keep_bytes,
        )
        try:
            reader = connect_readonly(p, busy_timeout_ms=storage.busy_timeout_ms)
        except BaseException:
            conn.close()
            raise
        try:
            return cls(
                p, conn, reader, schema_version=version, cache_entries=cache_entries, cache_bytes=cache_bytes
            )
        except BaseException:
            reader.close()
            conn.close()
            raise

    def close(self) -> None:
        try:
            self._reader.close()
        finally:
            self._conn.close()

    @property
    def path(self) -> str:
        return self._path

    def db_size_bytes(self) -> int:
        return file_size(self._path)

    def reclaim(self, max_pages: int) -> int:
        """Incremental vacuum of up to `max_pages` free pages (left by compaction); on the
        writer thread, between writes. Returns how many went."""
        return reclaim_pages(self._conn, max_pages) if max_pages > 0 else 0

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._cache_lo, len(self._cache), self._cache_bytes)

    # --- Storage (reads) -----------------------------------------------------------------------

    def first_index(self) -> int:
        return self._compacted[0] + 1

    def last_index(self) -> int:
        """Index of the last entry; first_index() - 1 when the log holds no entries."""
        return self._last

    def snapshot(self) -> SnapshotMeta:
        return self._snap

    def hard_state(self) -> HardState:
        return self._hard

    def initial_state(self) -> tuple[HardState, SnapshotMeta]:
        with self._lock:
            return self._hard, self._snap

    def term(self, index: int) -> int:
        """Term of the entry at `index`; at the compaction point, the one recorded for it."""
        with self._lock:
            ci, ct = self._compacted
            if index == ci:
                return ct
            if index < ci:
                raise LogCompactedError(index)
            if index > self._last:
                raise LogUnavailableError(index)
            e = self._cache.get(index)
            if e is not None:
                return e.term
        with self._read_lock:
            row = self._reader.execute(_SQL_TERM, (self._shard, index)).fetchone()
        if row is None:
            self._rows_missing(index, index + 1, index)
        return int(row[0])

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi): at least one if lo < hi, then stop before exceeding max_bytes
        of payload. Served from the cache where it reaches, else from the file (verified:
        frame, CRC, index and term)."""
        if lo > hi:
            raise ValueError(f"bad entry range [{lo}, {hi})")
        out: list[Entry] = []
        total = 0
        pos = lo
        while True:
            with self._lock:
                self._check_bounds(pos, hi)
                if pos == hi:
                    return out
                if pos >= self._cache_lo:
                    cache = self._cache
                    for i in range(pos, hi):
                        e = cache[i]
                        size = len(e.data)
                        if out and total + size > max_bytes:
                            break
                        out.append(e)
                        total += size
                    return out
                stop = min(hi, self._cache_lo)
            total, full = self._read_entries(pos, stop, max_bytes, out, total)
            if full:
                return out
            pos = stop

    def _read_entries(
        self, lo: int, hi: int, max_bytes: int, out: list[Entry], total: int
    ) -> tuple[int, bool]:
        """Append rows [lo, hi) from the file to `out` within the budget; (total, budget hit)."""
        expect = lo
        with self._read_lock:
            cur = self._reader.execute(_SQL_ENTRIES, (self._shard, lo, hi))
            try:
                for idx, term, data in cur:
                    if idx != expect:
                        break
                    size = len(data) - ENTRY_HEADER_SIZE
                    if out and total + size > max_bytes:
                        return total, True
                    out.append(_decode_row(idx, term, data))
                    total += size
                    expect += 1
            finally:
                cur.close()
        if expect != hi:
            self._rows_missing(lo, hi, expect)
        return total, False

    def _rows_missing(self, lo: int, hi: int, missing: int) -> None:
        """Rows of [lo, hi) the bounds promised are not in the file: dropped by a write
        that is committing right now, or corruption."""
        with self._lock:
            floor, ceiling = self._compacted[0], self._last
            if self._pending is not None:
                floor, ceiling = max(floor, self._pending[0]), min(ceiling, self._pending[1])
        if missing <= floor:
            raise LogCompactedError(missing)
        if missing > ceiling:
            raise LogUnavailableError(missing)
        raise StorageCorrupt(f"raft.db: log entries [{lo}, {hi}) have gaps (entry {missing} is missing)")

    def _check_bounds(self, lo: int, hi: int) -> None:
        if lo <= self._compacted[0]:
            raise LogCompactedError(lo)
        if hi > self._last + 1:
            raise LogUnavailableError(hi - 1)

    # --- DurableStorage (writes; one thread at a time) ---------------------------------------

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """snapshot, then entries, then hard state: one transaction, durable on return.

        A snapshot at or below the compaction point is ignored. Otherwise it becomes the
        compaction point: entries up to it go, and so does the rest of the log unless the
        entry at its index has its term; it becomes snapshot() unless that one is newer.
        Entries at or below the compaction point are skipped; the rest replace the log
        from their first index on (ValueError on a gap or a non-contiguous batch). Nothing
        changes if anything is refused."""
        ents = _checked_entries(entries)
        if hard_state is not None:
            _check_hard_state(hard_state)
        compacted, snap, last = self._compacted, self._snap, self._last
        new_snap: SnapshotMeta | None = None
        drop_all = False
        if snapshot is not None:
            _check_snapshot(snapshot)
            if snapshot.index > compacted[0]:
                new_snap = snapshot
                drop_all = not (snapshot.index <= last and self.term(snapshot.index) == snapshot.term)
                compacted = (snapshot.index, snapshot.term)
                if snapshot.index > snap.index:
                    snap = snapshot
                if drop_all:
                    last = snapshot.index
        ents = [e for e in ents if e.index > compacted[0]]
        start = ents[0].index if ents else 0
        if ents and start > last + 1:
            raise ValueError(f"cannot append at index {start}: the log ends at {last} (gap)")
        if not ents and new_snap is None and hard_state is None:
            return
        sh = self._shard
        rows = [(sh, e.index, e.term, encode_entry(e.index, e.term, int(e.kind), e.data)) for e in ents]
        new_last = ents[-1].index if ents else last
        with self._lock:
            self._pending = (compacted[0], new_last)
        try:
            with write_txn(self._conn):
                if new_snap is not None:
                    if drop_all:
                        self._conn.execute(_SQL_DROP_ALL, (sh,))
                    else:
                        self._conn.execute(_SQL_COMPACT, (sh, compacted[0]))
                    self._conn.execute(_SQL_COMPACTED, (*compacted, sh))
                    self._conn.execute(_SQL_SNAPSHOT, (*_snapshot_row(snap), sh))
                if rows:
                    if start <= last:
                        self._conn.execute(_SQL_TRUNCATE, (sh, start))
                    self._conn.executemany(_SQL_INSERT, rows)
                if hard_state is not None:
                    self._conn.execute(_SQL_HARD, (hard_state.term, hard_state.vote, hard_state.commit, sh))
        except BaseException:
            with self._lock:
                self._pending = None
            raise
        with self._lock:
            self._pending = None
            if new_snap is not None:
                if drop_all:
                    self._cache_clear(compacted[0] + 1)
                else:
                    self._cache_drop_through(compacted[0])
                self._compacted, self._snap, self._last = compacted, snap, last
            if ents:
                self._cache_truncate_from(start)
                for e in ents:
                    self._cache[e.index] = e
                    self._cache_bytes += len(e.data)
                self._last = new_last
                self._cache_trim()
            if hard_state is not None:
                self._hard = hard_state

    def sync(self) -> None:
        """Nothing to do: every write was durable when it returned."""

    def compact(self, upto: int) -> None:
        """Drop entries <= upto (upto <= snapshot().index), keeping term(upto); durable on
        return. A no-op at or below the compaction point."""
        compacted, last = self._compacted, self._last
        if upto <= compacted[0]:
            return
        if upto > self._snap.index:
            raise ValueError(f"cannot compact through {upto}: the newest snapshot is at {self._snap.index}")
        if upto <= last:
            term = self.term(upto)
        elif upto == self._snap.index:
            term = self._snap.term
        else:
            raise ValueError(f"cannot compact through {upto}: the log ends at {last}")
        new_last = max(last, upto)
        with self._lock:
            self._pending = (upto, new_last)
        try:
            with write_txn(self._conn):
                self._conn.execute(_SQL_COMPACT, (self._shard, upto))
                self._conn.execute(_SQL_COMPACTED, (upto, term, self._shard))
        except BaseException:
            with self._lock:
                self._pending = None
            raise
        with self._lock:
            self._pending = None
            self._compacted = (upto, term)
            self._last = new_last
            self._cache_drop_through(upto)

    def set_snapshot(self, meta: SnapshotMeta) -> None:
        """Record a local state-machine snapshot at meta.index (snapshot().index <=
        meta.index <= last_index(), meta.term == term(meta.index)); the log is untouched.
        Durable on return."""
        _check_snapshot(meta)
        if meta.index < self._snap.index:
            raise ValueError(f"snapshot {meta.index} is older than the current one at {self._snap.index}")
        if meta.index > self._last:
            raise ValueError(f"snapshot {meta.index} is beyond the last entry {self._last}")
        term = self.term(meta.index)
        if term != meta.term:
            raise ValueError(f"snapshot {meta.index}@t{meta.term} does not match the log (term {term} there)")
        with write_txn(self._conn):
            self._conn.execute(_SQL_SNAPSHOT, (*_snapshot_row(meta), self._shard))
        with self._lock:
            self._snap = meta

    # --- cache (callers hold self._lock) -----------------------------------------------------

    def _cache_clear(self, lo: int) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_lo = lo

    def _cache_drop_through(self, upto: int) -> None:
        """Forget cached entries <= upto (compaction)."""
        cache = self._cache
        while self._cache_lo <= upto and cache:
            self._cache_bytes -= len(cache.pop(self._cache_lo).data)
            self._cache_lo += 1
        self._cache_lo = max(self._cache_lo, upto + 1)

    def _cache_truncate_from(self, start: int) -> None:
        """Forget cached entries >= start (they are being replaced, or the log grows past
        entries that were never cached)."""
        if start <= self._cache_lo:
            self._cache_clear(start)
            return
        cache = self._cache
        for i in range(start, self._last + 1):
            e = cache.pop(i, None)
            if e is not None:
                self._cache_bytes -= len(e.data)

    def _cache_trim(self) -> None:
        cache = self._cache
        while cache and (len(cache) > self._cache_max_entries or self._cache_bytes > self._cache_max_bytes):
            self._cache_bytes -= len(cache.pop(self._cache_lo).data)
            self._cache_lo += 1

    # --- node metadata -------------------------------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        with self._read_lock:
            row = self._reader.execute(_SQL_META_GET, (self._shard, name)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"meta value must be bytes, got {type(value).__name__}")
        with write_txn(self._conn):
            self._conn.execute(_SQL_META_SET, (self._shard, name, value))


def encode_members(peers: dict[int, str]) -> bytes:
    """Voter id -> cluster address as stored in log_meta (a JSON object, ids in order)."""
    return json.dumps(peers, sort_keys=True).encode()


def decode_members(raw: bytes) -> dict[int, str]:
    try:
        doc = json.loads(raw)
        return {int(k): str(v) for k, v in doc.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise StorageCorrupt(f"raft.db: bad member list in the node metadata: {raw!r}") from exc


def _ids(text: str) -> tuple[int, ...]:
    try:
        ids = json.loads(text)
        return tuple(int(i) for i in ids)
    except (ValueError, TypeError) as exc:
        raise StorageCorrupt(f"raft.db: bad member list in the snapshot metadata: {text!r}") from exc


def _snapshot_row(meta: SnapshotMeta) -> tuple[int, int, str, str]:
    return meta.index, meta.term, json.dumps(list(meta.voters)), json.dumps(list(meta.learners))


def _non_negative(what: str, v: object) -> None:
    if type(v) is not int or v < 0:
        raise ValueError(f"{what} must be a non-negative int, got {v!r}")


def _checked_entries(entries: Sequence[Entry]) -> list[Entry]:
    ents = list(entries)
    for e in ents:
        if not isinstance(e, Entry):
            raise TypeError(f"log entries must be Entry, got {type(e).__name__}")
        if type(e.index) is not int or e.index < 1:
            raise ValueError(f"log index must be a positive int, got {e.index!r}")
        _non_negative("log term", e.term)
        if not isinstance(e.kind, EntryKind):
            raise ValueError(f"log entry kind must be an EntryKind, got {e.kind!r}")
        if not isinstance(e.data, bytes):
            raise TypeError(f"log entry data must be bytes, got {type(e.data).__name__}")
    for a, b in itertools.pairwise(ents):
        if b.index != a.index + 1:
            raise ValueError(f"entries are not contiguous: {a.index} then {b.index}")
    return ents


def _check_hard_state(hs: HardState) -> None:
    _non_negative("hard state term", hs.term)
    _non_negative("hard state vote", hs.vote)
    _non_negative("hard state commit", hs.commit)


def _check_snapshot(meta: SnapshotMeta) -> None:
    _non_negative("snapshot index", meta.index)
    _non_negative("snapshot term", meta.term)
    for i in (*meta.voters, *meta.learners):
        _non_negative("snapshot member id", i)


def _decode_row(idx: int, term: int, data: bytes) -> Entry:
    try:
        index, eterm, kind, payload = decode_entry(data)
        ekind = EntryKind(kind)
    except (CodecError, ValueError) as exc:
        raise StorageCorrupt(f"raft.db: log entry {idx} is corrupt: {exc}") from exc
    if index != idx or eterm != term:
        raise StorageCorrupt(
            f"raft.db: log entry {idx} (term {term}) holds a frame for index {index}, term {eterm}"
        )
    return Entry(index=idx, term=term, kind=ekind, data=payload)


if TYPE_CHECKING:

    def _implements_durable_storage(s: LogStore) -> DurableStorage:
        return s  # mypy checks the protocol here
