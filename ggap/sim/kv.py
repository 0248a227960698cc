"""The simulator's replicated state machine: a dict with client sessions.

Deliberately not ggap's MVCC store: the simulator tests the consensus layer, and a tiny
state machine keeps a run fast and its failures about Raft. Commands carry (client, request
id) so a write retried on another node is applied at most once (Raft dissertation §6.3):
clients issue one request at a time with increasing ids, so anything at or below the
client's last applied id is a duplicate.
"""

from __future__ import annotations

import attrs

from ggap.consensus.raft.types import Entry, EntryKind
from ggap.types import Membership

# Keys and values are short ASCII tokens chosen by the simulator: never contain SEP, never
# equal ABSENT.
SEP = "|"
ABSENT = "~"


@attrs.frozen(slots=True)
class Command:
    client: int
    req: int
    kind: str  # put / delete / cas
    key: str
    value: str | None = None  # put/cas: the new value
    expected: str | None = None  # cas: required current value (None = key must be absent)

    def encode(self) -> bytes:
        fields = (
            self.kind,
            str(self.client),
            str(self.req),
            self.key,
            ABSENT if self.value is None else self.value,
            ABSENT if self.expected is None else self.expected,
        )
        return SEP.join(fields).encode()

    @classmethod
    def decode(cls, data: bytes) -> Command:
        kind, client, req, key, value, expected = data.decode().split(SEP)
        return cls(
            client=int(client),
            req=int(req),
            kind=kind,
            key=key,
            value=None if value == ABSENT else value,
            expected=None if expected == ABSENT else expected,
        )


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
        self.sessions: dict[int, tuple[int, object]] = {}  # client -> (last req, its result)
        self.applied_cmds: set[tuple[int, int]] = set()  # first applications, for final checks
        self.membership: Membership | None = None  # None: the bootstrap members

    def apply(self, entry: Entry) -> tuple[int, int, object] | None:
        """Apply one committed entry; return (client, req, result) for a client command."""
        self.applied = entry.index
        if entry.kind != EntryKind.NORMAL or not entry.data:
            return None
        cmd = Command.decode(entry.data)
        last = self.sessions.get(cmd.client)
        if last is not None and cmd.req <= last[0]:
            # A retry of something already applied: answer with the cached result if it is
            # the latest request; an older one has no waiter left.
            return (cmd.client, cmd.req, last[1]) if cmd.req == last[0] else None
        result = evaluate(self.data, cmd)
        self.sessions[cmd.client] = (cmd.req, result)
        self.applied_cmds.add((cmd.client, cmd.req))
        return (cmd.client, cmd.req, result)

    def copy(self) -> KVStateMachine:
        """A deep enough copy to serve as a checkpoint or a snapshot's data."""
        c = KVStateMachine()
        c.data = dict(self.data)
        c.applied = self.applied
        c.sessions = dict(self.sessions)
        c.applied_cmds = set(self.applied_cmds)
        c.membership = self.membership
        return c

    def get(self, key: str) -> str | None:
        return self.data.get(key)
