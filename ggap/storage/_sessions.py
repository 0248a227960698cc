"""kv.db's side of client sessions: load the table at open, persist its changes and keep
each saved outcome, all inside the apply transaction (so a crash never separates a write
from the record that it was applied)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from ggap import codec
from ggap.codec import SessionOutcome
from ggap.sessions import Changes, SessionState, SessionTable
from ggap.types.errors import CodecError, StorageCorrupt

_SQL_LOAD = "SELECT id, last_active_ms, lowest_unacked, max_unacked FROM kv_sessions WHERE shard=?"
_SQL_LOAD_SAVED = "SELECT session, seq FROM kv_session_results WHERE shard=?"
_SQL_CLOCK = "SELECT session_clock_ms FROM kv_meta WHERE shard=?"
_SQL_CLOCK_SET = "UPDATE kv_meta SET session_clock_ms=? WHERE shard=?"
_SQL_UPSERT = (
    "INSERT INTO kv_sessions (shard, id, last_active_ms, lowest_unacked, max_unacked) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (shard, id) DO UPDATE SET last_active_ms=excluded.last_active_ms, "
    "lowest_unacked=excluded.lowest_unacked, max_unacked=excluded.max_unacked"
)
_SQL_DELETE = "DELETE FROM kv_sessions WHERE shard=? AND id=?"
_SQL_DELETE_RESULTS = "DELETE FROM kv_session_results WHERE shard=? AND session=?"
_SQL_FORGET = "DELETE FROM kv_session_results WHERE shard=? AND session=? AND seq=?"
_SQL_SAVE = "INSERT OR REPLACE INTO kv_session_results (shard, session, seq, outcome) VALUES (?, ?, ?, ?)"
_SQL_SAVED = "SELECT outcome FROM kv_session_results WHERE shard=? AND session=? AND seq=?"


def load(conn: sqlite3.Connection, shard: int) -> SessionTable:
    sessions = {
        sid: SessionState(id=sid, last_active_ms=active, lowest_unacked=low, max_unacked=cap)
        for sid, active, low, cap in conn.execute(_SQL_LOAD, (shard,))
    }
    for sid, seq in conn.execute(_SQL_LOAD_SAVED, (shard,)):
        s = sessions.get(sid)
        if s is None:
            raise StorageCorrupt(f"kv.db: a saved session result names session {sid}, which does not exist")
        s.saved.add(seq)
    row = conn.execute(_SQL_CLOCK, (shard,)).fetchone()
    return SessionTable(sessions.values(), clock_ms=row[0] if row else 0)


def persist(conn: sqlite3.Connection, shard: int, changes: Changes) -> None:
    conn.execute(_SQL_CLOCK_SET, (changes.clock_ms, shard))
    if changes.removed:
        conn.executemany(_SQL_DELETE, [(shard, sid) for sid in changes.removed])
        conn.executemany(_SQL_DELETE_RESULTS, [(shard, sid) for sid in changes.removed])
    if changes.upserted:
        conn.executemany(
            _SQL_UPSERT,
            [(shard, s.id, s.last_active_ms, s.lowest_unacked, s.max_unacked) for s in changes.upserted],
        )


def forget(conn: sqlite3.Connection, shard: int, session: int, seqs: Iterable[int]) -> None:
    conn.executemany(_SQL_FORGET, [(shard, session, q) for q in seqs])


def save(conn: sqlite3.Connection, shard: int, session: int, seq: int, outcome: SessionOutcome) -> None:
    conn.execute(_SQL_SAVE, (shard, session, seq, codec.encode_outcome(outcome)))


def saved(conn: sqlite3.Connection, shard: int, session: int, seq: int) -> SessionOutcome:
    row = conn.execute(_SQL_SAVED, (shard, session, seq)).fetchone()
    if row is None:
        raise StorageCorrupt(
            f"kv.db: session {session} lists write {seq} as saved, but its result is missing"
        )
    try:
        return codec.decode_outcome(row[0])
    except CodecError as exc:
        raise StorageCorrupt(
            f"kv.db: the saved result of session {session} write {seq} is unreadable: {exc}"
        ) from exc
