"""The simulator's replicated state machine: a dict with client sessions.

Deliberately not ggap's MVCC store: the simulator tests the consensus layer, and a tiny
state machine keeps a run fast and its failures about Raft. Client sessions are the real
ones (ggap.sessions: the same table kv.db uses): a client opens a session, numbers its
writes, and a write retried on another node is applied at most once (Raft dissertation
§6.3); the leader's clock entries expire idle sessions and a bounded table evicts.
"""

from __future__ import annotations

import attrs

from ggap.consensus.raft.types import Entry, EntryKind
from ggap.sessions import Admission, SessionTable
from ggap.types import GgapError, Membership, OpenSession, SessionClock, SessionExpired

# Keys and values are short ASCII tokens chosen by the simulator: never contain SEP, never
# equal ABSENT.
SEP = "|"
ABSENT = "~"


@attrs.frozen(slots=True)
class Command:
    client: int
    req: int  # the write's sequence number in its session
    kind: str  # put / delete / cas; open (a session) / clock (the leader's)
    key: str
    value: str | None = None  # put/cas: the new value; open: "max_sessions.max_unacked"; clock: "now.idle"
    expected: str | None = None  # cas: required current value (None = key must be absent)
    session: int = 0  # 0: outside any session (open, clock)
    low: int = 0  # the client's lowest unacknowledged sequence number

    def encode(self) -> bytes:
        fields = (
            self.kind,
            str(self.client),
            str(self.req),
            self.key,
            ABSENT if self.value is None else self.value,
            ABSENT if self.expected is None else self.expected,
            str(self.session),
            str(self.low),
        )
        return SEP.join(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        kind, client, req, key, value, expected, session, low = data.decode().split(SEP)
        return cls(
            client=int(client),
            req=int(req),
            kind=kind,
            key=key,
            value=None if value == ABSENT else value,
            expected=None if expected == ABSENT else expected,
            session=int(session),
            low=int(low),
        )


@attrs.frozen(slots=True)
class Refused:
    """A session write the table refused (nothing applied): why, as the client sees it."""

    error: str
    expired: bool


@attrs.frozen(slots=True)
class Opened:
    session: int


def _pair(value: str | None) -> tuple[int, int]:
    assert value is not None
    a, b = value.split(".")
    return int(a), int(b)


def evaluate(data: dict[str, str], cmd: Command) -> object:
    """Apply `cmd` to `data` in place and return the client-visible result."""
    if cmd.kind == "put":
        assert cmd.value is not None
        data[cmd.key] = cmd.value
        return None
    if cmd.kind == "delete":
        return data.pop(cmd.key, None) is not None
    if cmd.kind == "cas":
        if data.get(cmd.key) != cmd.expected:
            return False
        assert cmd.value is not None
        data[cmd.key] = cmd.value
        return True
    raise ValueError(f"unknown command kind {cmd.kind!r}")


class KVStateMachine:
    """Volatile: lost on a crash and rebuilt from the node's last checkpoint (or from
    scratch) plus the log. `applied_cmds` rides along in checkpoints and snapshots so the
    final "every acknowledged write was applied everywhere" check still sees them."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0
        self.sessions = SessionTable()
        self.results: dict[tuple[int, int], object] = {}  # (session, seq) -> kept result
        self.applied_cmds: set[tuple[int, int]] = set()  # first applications, for final checks
        self.membership: Membership | None = None  # None: the bootstrap members
        self.double_applied: tuple[int, int] | None = None  # set if a write applied twice

    def apply(self, entry: Entry) -> tuple[int, int, object] | None:
        """Apply one committed entry; return (client, req, result) for a client command."""
        self.applied = entry.index
        if entry.kind != EntryKind.NORMAL or not entry.data:
            return None
        cmd = Command.decode(entry.data)
        table = self.sessions
        if cmd.kind == "clock":
            now, idle = _pair(cmd.value)
            self._drop(table.advance(SessionClock(now_ms=now, idle_timeout_ms=idle)))
            return None
        if cmd.kind == "open":
            max_sessions, max_unacked = _pair(cmd.value)
            session, evicted = table.open(entry.index, OpenSession(max_sessions, max_unacked))
            self._drop(evicted)
            return (cmd.client, cmd.req, Opened(session))
        try:
            admitted = table.admit(cmd.session, cmd.req, cmd.low)
        except GgapError as exc:
            refused = Refused(f"{type(exc).__name__}: {exc}", expired=isinstance(exc, SessionExpired))
            return (cmd.client, cmd.req, refused)
        for q in admitted.forgotten:
            del self.results[(cmd.session, q)]
        if admitted.verdict is Admission.DUPLICATE:
            return (cmd.client, cmd.req, self.results[(cmd.session, cmd.req)])
        result = evaluate(self.data, cmd)
        table.save(cmd.session, cmd.req)
        self.results[(cmd.session, cmd.req)] = result
        if (cmd.client, cmd.req) in self.applied_cmds and self.double_applied is None:
            self.double_applied = (cmd.client, cmd.req)
        self.applied_cmds.add((cmd.client, cmd.req))
        return (cmd.client, cmd.req, result)

    def _drop(self, sessions: list[int]) -> None:
        if sessions:
            gone = set(sessions)
            self.results = {k: v for k, v in self.results.items() if k[0] not in gone}

    def copy(self) -> KVStateMachine:
        """A deep enough copy to serve as a checkpoint or a snapshot's data."""
        c = KVStateMachine()
        c.data = dict(self.data)
        c.applied = self.applied
        c.sessions = self.sessions.copy()
        c.results = dict(self.results)
        c.applied_cmds = set(self.applied_cmds)
        c.membership = self.membership
        c.double_applied = self.double_applied
        return c

    def get(self, key: str) -> str | None:
        return self.data.get(key)
