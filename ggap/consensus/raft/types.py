"""The vocabulary of the sans-I/O Raft core: plain frozen values, no behaviour.

Everything the core consumes (messages, entries, storage state) and produces (Ready) is
defined here, so the driver, the transport codec and the simulator share one definition.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs


class EntryKind(enum.IntEnum):
    # Values match ggap.codec's entry kinds, so a log entry frame stores the kind as is.
    NORMAL = 1  # data is an encoded ggap command (ggap.codec.encode_command)
    CONF_CHANGE = 2  # data is an encoded ConfChange (ggap.consensus.raft.membership)
    NOOP = 3  # appended by a new leader; data is b""


@attrs.frozen(slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@attrs.frozen(slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the node."""

    term: int = 0
    vote: int = 0  # 0 = voted for nobody in `term`
    commit: int = 0


def _ids(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(set(ids)))


class ConfChangeType(enum.IntEnum):
    # Values match ggap.codec's CONF_CHANGE_* ints (checked by tests/unit/test_codec.py).
    ADD_LEARNER = 1  # a new node joins as a learner: it gets the log, never counts
    PROMOTE = 2  # a learner becomes a voter
    REMOVE = 3  # a voter or learner leaves


@attrs.frozen(slots=True)
class ConfChange:
    """One single-server membership change, the payload of a CONF_CHANGE entry."""

    type: ConfChangeType
    node_id: int
    context: bytes = b""  # opaque to Raft: the driver's (e.g. the node's addresses)


@attrs.frozen(slots=True)
class ConfState:
    """A configuration: who votes and who only receives the log (sorted, no duplicates)."""

    voters: tuple[int, ...] = attrs.field(converter=_ids)
    learners: tuple[int, ...] = attrs.field(default=(), converter=_ids)


@attrs.frozen(slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    # The configuration as of `index` (after applying every entry up to it).
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class MessageType(enum.IntEnum):
    APPEND = 1
    APPEND_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    READ_INDEX = 9  # follower -> leader: "give me a read index" (context identifies it)
    READ_INDEX_RESP = 10
    SNAPSHOT = 11  # leader -> follower: install the snapshot in `snapshot` (+ opaque data)
    TIMEOUT_NOW = 12  # leadership transfer: campaign now, ignoring the election timer
    PROPOSE = 13  # follower -> leader: forwarded proposal (entries carry the data)
    # Driver-level, never stepped into the core: a node tells its peers how far it has
    # applied (index) and its client address (context), for WRITE_QUORUM_ALL and forwarding.
    APPLIED_REPORT = 14
    # Driver-level too: a node that will not take forwarded proposals (PROPOSE) tells the
    # proposer which (context: ggap.codec.encode_refusals), so it fails them at once.
    PROPOSE_REFUSED = 15


@attrs.frozen(slots=True)
class Message:
    type: MessageType
    to: int
    frm: int
    term: int = 0
    # APPEND: index/log_term of the entry preceding `entries`; *_RESP: the index acked/rejected.
    # VOTE_RESP / PRE_VOTE_RESP: `commit` is the voter's commit index and `log_term` that
    # entry's term (a candidate holding it learns it is committed).
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    # On a rejected APPEND: the follower's hint for fast backtracking (last index it may match).
    reject_hint: int = 0
    # READ_INDEX / HEARTBEAT round: the request id the leader echoes back.
    context: bytes = b""
    snapshot: SnapshotMeta | None = None


@attrs.frozen(slots=True)
class ReadState:
    """A read index granted to `context`: once applied >= index, local reads are linearizable."""

    index: int
    context: bytes


class Role(enum.Enum):
    # A voter that follows, or a node outside its own configuration (joining, or removed),
    # which never campaigns.
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    PRE_CANDIDATE = "pre-candidate"
    LEADER = "leader"
    LEARNER = "learner"  # in the configuration as a learner: gets the log, never campaigns


@attrs.frozen(slots=True)
class SoftState:
    leader: int
    role: Role


@attrs.frozen(slots=True)
class Ready:
    """One batch of work for the driver. Handle it in this order, then call `advance(ready)`:

    1. Persist `hard_state` (if not None), `snapshot` (if not None) and `entries` — in one
       durable write (fsync) when `must_sync`.
    2. Send `messages` — these may go out before or in parallel with step 1 (a leader's
       appends to followers are safe to send before its own write is durable).
    3. After step 1 is durable, send `messages_after_persist` (votes, append responses:
       anything that promises what was just written).
    4. Apply `committed` entries in order to the state machine; hand `read_states` to the
       reads waiting on them.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: SnapshotMeta | None = None
    committed: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    messages_after_persist: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False


@attrs.frozen(slots=True)
class CoreConfig:
    id: int
    # The configuration as of the `applied` index the core is started with (see DESIGN.md,
    # "Membership changes"); `id` need not be in it (a node that joins or was removed).
    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    election_tick: int = 10  # ticks without a leader before campaigning (randomised to [e, 2e))
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_msgs: int = 256  # unacknowledged APPENDs per follower in replicate state
    max_size_per_msg: int = 1 << 20  # bytes of entry data per APPEND
    max_inflight_bytes: int = 16 << 20
