"""The rules of client sessions, written once for every state machine (kv.db, the simulator).

A pure, deterministic table: it holds which sessions exist, the log time, and which of each
session's writes have a saved result; the state machine that owns it keeps the results
themselves (kv.db in a table, the simulator in a dict) and persists what `changes()`
reports. Every decision depends only on the commands applied, in log order, so every
replica makes the same one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from ggap.types.commands import OpenSession, SessionClock
from ggap.types.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, SessionExpired


@attrs.define(slots=True)
class SessionState:
    id: int  # the log index of its OpenSession
    last_active_ms: int  # log time of the last command of this session
    lowest_unacked: int  # results below this sequence number are forgotten
    max_unacked: int  # results it may keep at once
    saved: set[int] = attrs.field(factory=set)  # sequence numbers with a kept result


class Admission(enum.Enum):
    APPLY = "apply"  # first time: apply the command, then `save` its outcome
    DUPLICATE = "duplicate"  # applied before: answer with the kept result, apply nothing


@attrs.frozen(slots=True)
class Admitted:
    verdict: Admission
    forgotten: tuple[int, ...] = ()  # sequence numbers whose kept results may be deleted now


@attrs.frozen(slots=True)
class Changes:
    """What changed since the last `changes()`: sessions to write (whole rows) and to
    delete (with all their results)."""

    clock_ms: int
    upserted: tuple[SessionState, ...]
    removed: tuple[int, ...]


class SessionTable:
    def __init__(self, sessions: Iterable[SessionState] = (), clock_ms: int = 0) -> None:
        self._sessions: dict[int, SessionState] = {s.id: s for s in sessions}
        self.clock_ms = clock_ms
        self._persisted_clock_ms = clock_ms
        self._dirty: set[int] = set()
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session: int) -> SessionState | None:
        return self._sessions.get(session)

    def sessions(self) -> list[SessionState]:
        return [self._sessions[i] for i in sorted(self._sessions)]

    def copy(self) -> SessionTable:
        """An independent table with the same state (and no pending changes)."""
        return SessionTable(
            (attrs.evolve(s, saved=set(s.saved)) for s in self._sessions.values()), self.clock_ms
        )

    # -- commands -----------------------------------------------------------------------

    def open(self, index: int, cmd: OpenSession) -> tuple[int, list[int]]:
        """The session opened at log `index`, and the sessions evicted to make room: the
        least recently active first (ties: the older id), until one more fits."""
        if cmd.max_sessions < 1 or cmd.max_unacked < 1:
            raise InvalidArgument("OpenSession bounds must be >= 1")
        evicted: list[int] = []
        while len(self._sessions) >= cmd.max_sessions:
            oldest = min(self._sessions.values(), key=lambda s: (s.last_active_ms, s.id))
            self._remove(oldest.id)
            evicted.append(oldest.id)
        self._sessions[index] = SessionState(
            id=index, last_active_ms=self.clock_ms, lowest_unacked=1, max_unacked=cmd.max_unacked
        )
        self._dirty.add(index)
        self._removed.discard(index)
        return index, evicted

    def close(self, session: int) -> bool:
        if session not in self._sessions:
            return False
        self._remove(session)
        return True

    def advance(self, cmd: SessionClock) -> list[int]:
        """Move log time forward to `cmd.now_ms` (never back: a new leader's clock may be
        behind) and expire the sessions idle for more than `cmd.idle_timeout_ms` of it.
        Before the first clock no log time has passed, so sessions opened then count as
        active at the first one."""
        if cmd.idle_timeout_ms < 1:
            raise InvalidArgument("SessionClock.idle_timeout_ms must be >= 1")
        first = self.clock_ms == 0
        if cmd.now_ms > self.clock_ms:
            self.clock_ms = cmd.now_ms
        if first:
            for s in self._sessions.values():
                s.last_active_ms = self.clock_ms
                self._dirty.add(s.id)
            return []
        cutoff = self.clock_ms - cmd.idle_timeout_ms
        expired = sorted(s.id for s in self._sessions.values() if s.last_active_ms < cutoff)
        for session in expired:
            self._remove(session)
        return expired

    def admit(self, session: int, seq: int, lowest_unacked: int) -> Admitted:
        """Decide write `seq` of `session` before it is applied. Raises (nothing applied,
        nothing saved) for a session that does not exist, numbers that make no sense, a
        sequence number the client already acknowledged, or a full session."""
        s = self._sessions.get(session)
        if s is None:
            raise SessionExpired(
                f"session {session} does not exist (expired, evicted, closed or never opened); "
                "open a new one. The write was not applied",
                session=session,
            )
        if seq < 1 or not 1 <= lowest_unacked <= seq:
            raise InvalidArgument(
                f"session sequence numbers must satisfy 1 <= lowest_unacked <= seq, got "
                f"seq={seq} lowest_unacked={lowest_unacked}"
            )
        s.last_active_ms = self.clock_ms
        self._dirty.add(s.id)
        if seq < s.lowest_unacked:
            raise FailedPrecondition(
                f"session {s.id}: write {seq} was acknowledged already (lowest unacknowledged "
                f"is {s.lowest_unacked}); its result is no longer kept"
            )
        forgotten: tuple[int, ...] = ()
        if lowest_unacked > s.lowest_unacked:
            s.lowest_unacked = lowest_unacked
            gone = sorted(q for q in s.saved if q < s.lowest_unacked)
            s.saved.difference_update(gone)
            forgotten = tuple(gone)
        if seq in s.saved:
            return Admitted(Admission.DUPLICATE, forgotten)
        if len(s.saved) >= s.max_unacked:
            raise ResourceExhausted(
                f"session {s.id} has {len(s.saved)} writes without acknowledgement (at most "
                f"{s.max_unacked}); the write was not applied"
            )
        return Admitted(Admission.APPLY, forgotten)

    def save(self, session: int, seq: int) -> None:
        """The outcome of an admitted write is kept (by the owner) from now on."""
        self._sessions[session].saved.add(seq)

    # -- persistence ------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._dirty or self._removed or self.clock_ms != self._persisted_clock_ms)

    def changes(self) -> Changes:
        """What to persist since the last call (then forgotten)."""
        upserted = tuple(self._sessions[i] for i in sorted(self._dirty) if i in self._sessions)
        out = Changes(clock_ms=self.clock_ms, upserted=upserted, removed=tuple(sorted(self._removed)))
        self._persisted_clock_ms = self.clock_ms
        self._dirty.clear()
        self._removed.clear()
        return out

    def _remove(self, session: int) -> None:
        del self._sessions[session]
        self._dirty.discard(session)
        self._removed.add(session)
