"""raft.db: the replicated log, the Raft hard state and a little node metadata.

Runs with synchronous=FULL by default: when `append` or `set_hard_state` returns, the
data is on disk, which is what Raft needs before it answers a vote or an append.
Entries are stored as the codec frames them (with a CRC) and checked on every read, so
a rotten entry stops the node (StorageCorrupt) instead of being replicated or applied.

Threading: one thread at a time (the raft loop's storage worker).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from ggap.codec import decode_command_entry, decode_entry
from ggap.config.model import StorageConfig
from ggap.storage._schema import LOG_KNOWN, LOG_MIGRATIONS
from ggap.storage._sqlite import connect, file_size, migrate, write_txn
from ggap.types.commands import Command
from ggap.types.errors import CodecError, StorageCorrupt

__all__ = ["LogCompacted", "LogStore", "LogUnavailable"]

_SQL_STATE_INIT = (
    "INSERT OR IGNORE INTO log_state (shard, compacted_index, compacted_term, term, vote, commit_index) "
    "VALUES (?, 0, 0, 0, 0, 0)"
)
_SQL_STATE = "SELECT compacted_index, compacted_term, term, vote, commit_index FROM log_state WHERE shard=?"
_SQL_LAST = "SELECT idx, term FROM log_entries WHERE shard=? ORDER BY idx DESC LIMIT 1"
_SQL_TRUNCATE = "DELETE FROM log_entries WHERE shard=? AND idx>=?"
_SQL_INSERT = "INSERT INTO log_entries (shard, idx, term, data) VALUES (?, ?, ?, ?)"
_SQL_HARD = "UPDATE log_state SET term=?, vote=?, commit_index=? WHERE shard=?"
_SQL_ENTRIES = "SELECT idx, term, data FROM log_entries WHERE shard=? AND idx>=? AND idx<? ORDER BY idx"
_SQL_TERM = "SELECT term FROM log_entries WHERE shard=? AND idx=?"
_SQL_COMPACT = "DELETE FROM log_entries WHERE shard=? AND idx<=?"
_SQL_COMPACTED = "UPDATE log_state SET compacted_index=?, compacted_term=? WHERE shard=?"
_SQL_META_GET = "SELECT value FROM log_meta WHERE shard=? AND name=?"
_SQL_META_SET = (
    "INSERT INTO log_meta (shard, name, value) VALUES (?, ?, ?) "
    "ON CONFLICT (shard, name) DO UPDATE SET value=excluded.value"
)


class LogCompacted(LookupError):
    """The requested index was dropped by log compaction (Raft then sends a snapshot)."""


class LogUnavailable(LookupError):
    """The requested index is past the end of the log."""


class LogStore:
    """The log of one Raft group. Indexes start at 1; `compact` moves `first_index` up."""

    def __init__(self, path: str, conn: sqlite3.Connection, *, schema_version: int, shard: int = 0) -> None:
        self._path = path
        self._conn = conn
        self._shard = shard
        self.schema_version = schema_version
        conn.execute(_SQL_STATE_INIT, (shard,))
        row = conn.execute(_SQL_STATE, (shard,)).fetchone()
        self._compacted_index, self._compacted_term = int(row[0]), int(row[1])
        self._hard = (int(row[2]), int(row[3]), int(row[4]))
        last = conn.execute(_SQL_LAST, (shard,)).fetchone()
        if last is None:
            self._last_index, self._last_term = self._compacted_index, self._compacted_term
        else:
            self._last_index, self._last_term = int(last[0]), int(last[1])

    @classmethod
    def open(cls, path: str | os.PathLike[str], storage: StorageConfig) -> LogStore:
        p = os.fspath(path)
        version = migrate(p, LOG_MIGRATIONS, LOG_KNOWN, busy_timeout_ms=storage.busy_timeout_ms)
        conn = connect(p, synchronous=storage.log_synchronous, busy_timeout_ms=storage.busy_timeout_ms)
        try:
            return cls(p, conn, schema_version=version)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self._conn.close()

    @property
    def path(self) -> str:
        return self._path

    @property
    def first_index(self) -> int:
        return self._compacted_index + 1

    @property
    def last_index(self) -> int:
        """Index of the last entry; equals first_index - 1 when the log is empty."""
        return self._last_index

    @property
    def last_term(self) -> int:
        return self._last_term

    @property
    def compacted(self) -> tuple[int, int]:
        """(index, term) of the last entry dropped by compaction, (0, 0) if none."""
        return self._compacted_index, self._compacted_term

    def db_size_bytes(self) -> int:
        return file_size(self._path)

    # --- writes ------------------------------------------------------------------------------

    def append(
        self,
        entries: Sequence[tuple[int, int, bytes]],
        *,
        hard_state: tuple[int, int, int] | None = None,
    ) -> None:
        """Append contiguous entries (index, term, framed bytes) durably, in one transaction.

        If the first index already exists, the existing entries from there on are dropped
        first (Raft's conflict rule: the caller has decided they lose). `hard_state`, when
        given, is saved in the same transaction.
        """
        batch = [_checked_entry(self._shard, e) for e in entries]
        if not batch and hard_state is None:
            return
        if batch:
            first = batch[0][1]
            for pos, (_, idx, _, _) in enumerate(batch):
                if idx != first + pos:
                    raise ValueError(f"entries are not contiguous: index {idx} at position {pos}")
            if first <= self._compacted_index:
                raise ValueError(f"cannot append at index {first}: compacted through {self._compacted_index}")
            if first > self._last_index + 1:
                raise ValueError(f"cannot append at index {first}: the log ends at {self._last_index}")
        hard = _checked_hard_state(hard_state) if hard_state is not None else None
        sh = self._shard
        with write_txn(self._conn):
            if batch:
                if batch[0][1] <= self._last_index:
                    self._conn.execute(_SQL_TRUNCATE, (sh, batch[0][1]))
                self._conn.executemany(_SQL_INSERT, batch)
            if hard is not None:
                self._conn.execute(_SQL_HARD, (*hard, sh))
        if batch:
            self._last_index, self._last_term = batch[-1][1], batch[-1][2]
        if hard is not None:
            self._hard = hard

    def set_hard_state(self, term: int, vote: int, commit: int) -> None:
        self.append((), hard_state=(term, vote, commit))

    def hard_state(self) -> tuple[int, int, int]:
        """(term, vote, commit); (0, 0, 0) on a new log."""
        return self._hard

    def compact(self, upto_index: int) -> None:
        """Drop entries <= upto_index, remembering the term of the last one dropped."""
        if upto_index <= self._compacted_index:
            return
        if upto_index > self._last_index:
            raise ValueError(f"cannot compact through {upto_index}: the log ends at {self._last_index}")
        term = self.term(upto_index)
        with write_txn(self._conn):
            self._conn.execute(_SQL_COMPACT, (self._shard, upto_index))
            self._conn.execute(_SQL_COMPACTED, (upto_index, term, self._shard))
        self._compacted_index, self._compacted_term = upto_index, term

    def get_meta(self, name: str) -> bytes | None:
        row = self._conn.execute(_SQL_META_GET, (self._shard, name)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"meta value must be bytes, got {type(value).__name__}")
        with write_txn(self._conn):
            self._conn.execute(_SQL_META_SET, (self._shard, name, value))

    # --- reads ---------------------------------------------------------------------------------

    def term(self, index: int) -> int:
        """Term of the entry at `index` (also of the last compacted one)."""
        if index == self._compacted_index:
            return self._compacted_term
        self._check_bounds(index, index + 1)
        row = self._conn.execute(_SQL_TERM, (self._shard, index)).fetchone()
        if row is None:
            raise StorageCorrupt(f"raft.db: log entry {index} is missing")
        return int(row[0])

    def entries(self, lo: int, hi: int) -> list[tuple[int, int, bytes]]:
        """Entries with lo <= index < hi, each verified (frame, CRC, index and term)."""
        self._check_bounds(lo, hi)
        rows = self._conn.execute(_SQL_ENTRIES, (self._shard, lo, hi)).fetchall()
        if len(rows) != hi - lo:
            raise StorageCorrupt(f"raft.db: log entries [{lo}, {hi}) have gaps ({len(rows)} found)")
        out: list[tuple[int, int, bytes]] = []
        for idx, term, data in rows:
            try:
                index, eterm, _, _ = decode_entry(data)
            except CodecError as exc:
                raise StorageCorrupt(f"raft.db: log entry {idx} is corrupt: {exc}") from exc
            _check_header(idx, term, index, eterm)
            out.append((idx, term, data))
        return out

    def commands(self, lo: int, hi: int) -> list[tuple[int, int, Command]]:
        """Like entries() but decoded to commands (one decode, for the apply path)."""
        self._check_bounds(lo, hi)
        rows = self._conn.execute(_SQL_ENTRIES, (self._shard, lo, hi)).fetchall()
        if len(rows) != hi - lo:
            raise StorageCorrupt(f"raft.db: log entries [{lo}, {hi}) have gaps ({len(rows)} found)")
        out: list[tuple[int, int, Command]] = []
        for idx, term, data in rows:
            try:
                index, eterm, cmd = decode_command_entry(data)
            except CodecError as exc:
                raise StorageCorrupt(f"raft.db: log entry {idx} is corrupt: {exc}") from exc
            _check_header(idx, term, index, eterm)
            out.append((idx, term, cmd))
        return out

    def _check_bounds(self, lo: int, hi: int) -> None:
        if lo > hi:
            raise ValueError(f"bad entry range [{lo}, {hi})")
        if lo <= self._compacted_index:
            raise LogCompacted(f"log index {lo} is compacted (first index {self.first_index})")
        if hi > self._last_index + 1:
            raise LogUnavailable(f"log index {hi - 1} is past the last index {self._last_index}")


def _checked_entry(shard: int, entry: tuple[int, int, bytes]) -> tuple[int, int, int, bytes]:
    """-> the (shard, idx, term, data) row to insert."""
    idx, term, data = entry
    if type(idx) is not int or idx < 1:
        raise ValueError(f"log index must be a positive int, got {idx!r}")
    if type(term) is not int or term < 0:
        raise ValueError(f"log term must be a non-negative int, got {term!r}")
    if not isinstance(data, bytes):
        raise TypeError(f"log entry data must be bytes, got {type(data).__name__}")
    return (shard, idx, term, data)


def _checked_hard_state(hard: tuple[int, int, int]) -> tuple[int, int, int]:
    term, vote, commit = hard
    for name, v in (("term", term), ("vote", vote), ("commit", commit)):
        if type(v) is not int or v < 0:
            raise ValueError(f"hard state {name} must be a non-negative int, got {v!r}")
    return term, vote, commit


def _check_header(idx: int, term: int, index: int, eterm: int) -> None:
    if index != idx or eterm != term:
        raise StorageCorrupt(
            f"raft.db: log entry {idx} (term {term}) holds a frame for index {index}, term {eterm}"
        )
