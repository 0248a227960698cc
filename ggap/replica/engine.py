"""The replica engine: what happens to a Ready, written once.

`ReplicaEngine` wraps the sans-I/O `RawNode` and owns every rule between the core and the
outside world: persist before acknowledging, send, apply, match proposals to results,
answer reads, decide compaction and snapshots. It does no I/O of its own: it is handed a
`DurableStorage` (the log), a `StateMachine` and a `Transport`, and it is driven
synchronously. The trio node (`ggap.replica.node`) and the deterministic simulator
(`ggap.sim.node`) both run this same code; they differ only in what they plug in and in
how they spread one Ready's handling over time:

    work = engine.take_ready()           # 1. soft/hard state, send `messages`
    engine.write(work)                   # 2. save entries, hard state, a received
                                         #    snapshot's metadata
    engine.sync(work)                    #    ... durable once this returns
    output = engine.apply(work)          # 3. install that snapshot, apply committed
    engine.finish(work, output)          # 4. send `messages_after_persist`, answer
                                         #    proposals and reads, publish, advance

The trio node runs 2-3 in one writer-thread hop (`engine.durable(work)`); the simulator runs
`write` at once and the rest after a simulated disk latency, with crashes in between.

A proposal is matched to its result by (index, term): the leader learns the index when it
appends; when that index is applied, the same term means our entry won, another term
means a new leader overwrote it and the write never happened. A follower may forward a
proposal to the leader inside Raft (`propose(..., forward=True)`): it cannot learn the
index, so it stamps the entry with its origin (ggap.codec.origin) and recognises it when
it applies it; a leader that will not take it refuses it by name (PROPOSE_REFUSED).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

import attrs

from ggap import codec
from ggap.consensus.raft import (
    ConfChangeRefused,
    CoreConfig,
    DurableStorage,
    Entry,
    EntryKind,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    RawNode,
    Ready,
    Role,
    SnapshotMeta,
    decode_conf_change,
)
from ggap.replica.api import AppliedBatch
from ggap.replica.membership import conf_state, next_membership, to_conf_change
from ggap.types import (
    Event,
    FailedPrecondition,
    GgapError,
    Internal,
    MemberChange,
    Membership,
    NotLeader,
    Unavailable,
)

log = logging.getLogger(__name__)

# What a state machine gives back for one applied entry: the client-visible result, the
# GgapError the command failed with (having changed nothing), or None (no result: a no-op,
# or an entry at or below the applied index replayed after a crash).
Outcome = object
ProposalCallback = Callable[[int, object, BaseException | None], None]  # (index, result, error)
ReadCallback = Callable[[int, BaseException | None], None]


@attrs.frozen(slots=True)
class ApplyOutput:
    """What applying one Ready's committed entries produced."""

    outcomes: Sequence[Outcome]  # one per committed entry, in order
    revision: int  # the state machine's revision after the batch
    events: Sequence[Event] = ()  # published to subscribers (watchers) in order


#: What the engine decided for each CONF_CHANGE entry of an apply batch, by index: the
#: membership it makes, or why it changes nothing.
MembershipChanges = Mapping[int, Membership | FailedPrecondition]


@attrs.frozen(slots=True)
class TakenSnapshot:
    index: int  # the log index the snapshot holds
    membership: Membership  # as of that index


class StateMachine(Protocol):
    """The replicated state. `apply` must be idempotent for indexes at or below
    `applied_index` (a restarted node may be handed them again). Membership is part of
    it: recorded atomically with the applied index, carried by snapshots."""

    @property
    def applied_index(self) -> int: ...

    @property
    def revision(self) -> int: ...

    @property
    def membership(self) -> Membership:
        """As of applied_index (the bootstrap members while no change was applied)."""
        ...

    def apply(self, entries: Sequence[Entry], changes: MembershipChanges) -> ApplyOutput:
        """Apply committed entries; a CONF_CHANGE entry's outcome is `changes[index]`
        (a Membership is recorded, an error changes nothing)."""
        ...

    def take_snapshot(self) -> TakenSnapshot:
        """Record a consistent snapshot of the state (durably). May run beside `apply`
        (the trio node runs it on its own thread)."""
        ...

    def restore(self, meta: SnapshotMeta) -> None:
        """Replace the state with the received snapshot staged for `meta` (durably)."""
        ...


class Transport(Protocol):
    def send(self, msgs: Iterable[Message]) -> None:
        """Best effort: Raft tolerates loss, duplication and reordering."""
        ...

    def send_snapshot(self, msg: Message) -> None:
        """Deliver a SNAPSHOT message together with the snapshot's data; the transport
        calls `ReplicaEngine.report_snapshot(to, ok)` when it is done or gave up."""
        ...

    def unreachable(self) -> Iterable[int]:
        """Peers whose connection is known broken right now."""
        ...

    def set_members(self, membership: Membership) -> None:
        """The members changed (an applied change, an installed snapshot): reach these."""
        ...


@attrs.frozen(slots=True)
class Retention:
    """When to snapshot and compact: a snapshot once `snapshot_entries` entries were applied
    since the last one; then the log behind it is dropped except the last `log_retain`
    entries. A leader also keeps what a follower within `max_lag` entries still needs, so
    that follower catches up from the log rather than by snapshot. The log is dropped
    `compact_step_entries` entries per storage transaction."""

    snapshot_entries: int = 10_000
    log_retain: int = 5000
    max_lag: int = 5000
    compact_step_entries: int = 500


@attrs.define(eq=False, slots=True)
class Proposal:
    data: bytes
    done: ProposalCallback
    index: int = 0
    term: int = 0


@attrs.define(eq=False, slots=True)
class _Forwarded:
    """A write this follower handed to the leader, waiting to be applied here."""

    done: ProposalCallback
    tick: int  # the engine's tick count when it was forwarded
    term: int  # this node's term then (the leader it went to led in it)
    refused_by: int = 0  # a node that answered PROPOSE_REFUSED for it (0: none)


@attrs.define(slots=True)
class ForwardCounts:
    """Writes this node forwarded to the leader inside Raft, by how they ended."""

    applied: int = 0  # applied here and answered with their result
    refused: int = 0  # the leader refused them (not applied)
    unknown: int = 0  # expired or covered by an installed snapshot (outcome unknown)


# A forwarded write not applied here within this many election timeouts is answered
# "outcome unknown" (its PROPOSE, or the leader that took it, was lost). Drivers' callers
# normally give up first, at their own deadline; this bounds what the engine holds.
FORWARD_EXPIRY_ELECTIONS = 10


@attrs.frozen(slots=True)
class Work:
    """One Ready on its way through the steps of the module docstring."""

    ready: Ready
    persist: bool  # something to save (and, with must_sync, to fsync)

    @property
    def must_sync(self) -> bool:
        return self.persist and self.ready.must_sync


class ReplicaEngine:
    def __init__(
        self,
        *,
        config: CoreConfig,
        storage: DurableStorage,
        state_machine: StateMachine,
        transport: Transport,
        rng: random.Random,
        retention: Retention | None = None,
        logger: logging.Logger | None = None,
        report_context: bytes = b"",
        incarnation: int = 0,
    ) -> None:
        """`report_context` rides on every APPLIED_REPORT (the node's client address, so
        followers learn where to forward writes). `incarnation` must differ between runs
        of the same node (a random number, or a restart count): it is part of the stamp on
        forwarded writes, so one stamped before a restart never answers one after it."""
        self.id = config.id
        self.storage = storage
        self.state_machine = state_machine
        self.transport = transport
        self.retention = retention or Retention()
        self._log = logger or log
        self._report_context = report_context
        self._recover(storage, state_machine)
        # The configuration as of the state machine's applied index, whatever `config`
        # says (its voters are the bootstrap ones): the core must start from the one the
        # state it will apply on top of holds.
        self.membership = state_machine.membership
        self.voters, self.learners = self.membership.voters, self.membership.learners
        config = attrs.evolve(config, voters=self.voters, learners=self.learners)
        applied = min(state_machine.applied_index, storage.last_index())
        self.node = self._new_core(config, storage, rng, applied)
        self.removed = False  # applied its own removal: it only answers, never leads
        hs, _snap = storage.initial_state()
        self.term = hs.term
        self.commit = max(hs.commit, applied)
        self.leader = 0
        # Times this node saw leadership move to a (different) known leader, etcd's
        # leader_changes_seen: a counter for metrics.
        self.leader_changes = 0
        self.role = Role.FOLLOWER
        self.applied = state_machine.applied_index
        self.revision = state_machine.revision
        self.peer_applied: dict[int, int] = {}
        self.peer_context: dict[int, bytes] = {}
        self._proposals: dict[int, Proposal] = {}
        # Forwarded writes by sequence number (insertion order is forwarding order).
        self._incarnation = incarnation
        self._forward_seq = 0
        self._forwarded: dict[int, _Forwarded] = {}
        self.forward_counts = ForwardCounts()
        self._ticks = 0
        self._forward_expiry_ticks = FORWARD_EXPIRY_ELECTIONS * config.election_tick
        self._reads: dict[bytes, ReadCallback] = {}
        # Insertion-ordered (a dict, not a set): they are asked again in this order, and the
        # order of the messages that go out must not depend on hash randomisation (the
        # simulator replays a seed exactly).
        self._reads_without_leader: dict[bytes, None] = {}
        self._subscribers: list[Callable[[AppliedBatch], None]] = []
        self._peer_applied_listeners: list[Callable[[], None]] = []
        self._forwarded_append_listeners: list[Callable[[int, int, bytes], None]] = []
        self._forward_refused_listeners: list[Callable[[codec.Origin], None]] = []
        self._membership_listeners: list[Callable[[Membership], None]] = []
        self._snapshotting = False
        self.closed = False

    def _recover(self, storage: DurableStorage, state_machine: StateMachine) -> None:
        """A state machine behind the log's snapshot: a crash came between the log recording
        a received snapshot and the state machine installing it (or a power loss rolled an
        unsynced state machine back past the compaction point). Install it now."""
        snap = storage.snapshot()
        if state_machine.applied_index < snap.index:
            self._log.warning(
                "node %d: state machine at %d is behind the snapshot at %d; installing it",
                self.id,
                state_machine.applied_index,
                snap.index,
            )
            state_machine.restore(snap)

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        self.node.tick()
        if self._forwarded:
            self._expire_forwarded()
        self.report_applied()
        self._report_unreachable()
        if self._reads_without_leader:
            self._request_reads(list(self._reads_without_leader))

    def step(self, msg: Message) -> None:
        if msg.type is MessageType.APPLIED_REPORT:
            self.peer_applied[msg.frm] = max(self.peer_applied.get(msg.frm, 0), msg.index)
            if msg.context:
                self.peer_context[msg.frm] = msg.context
            for listener in self._peer_applied_listeners:
                listener()
        elif msg.type is MessageType.PROPOSE:
            node = self.node
            # A PROPOSE names the term it was sent in (0: a node before that rule); taken in
            # another term it could commit after its proposer was told it never will
            # (_refuse_superseded), so it is refused instead.
            in_term = msg.term in (0, node.term)
            if node.role is Role.LEADER and not node.transferring and not self.closed and in_term:
                if msg.context and self._forwarded_append_listeners:
                    before = node.log.last_index()
                    node.step(msg)
                    for index in range(before + 1, node.log.last_index() + 1):
                        for on_append in self._forwarded_append_listeners:
                            on_append(index, msg.frm, msg.context)
                else:
                    node.step(msg)
            else:
                self._refuse_forwarded(msg)
        elif msg.type is MessageType.PROPOSE_REFUSED:
            self._forward_refused(msg)
        else:
            self.node.step(msg)

    def campaign(self) -> None:
        self.node.campaign()

    def propose(
        self, data: bytes, done: ProposalCallback, *, forward: bool = False, context: bytes = b""
    ) -> int:
        """Append `data` if this node leads; `done(index, result, error)` runs once it is applied
        (or failed). Never raises: refusals go to `done` at once. Returns the entry's index
        (0 when refused or forwarded), so a driver can follow the entry through persist and
        apply.

        With `forward`, a follower (or learner) that knows the leader hands the entry to it
        as a PROPOSE message, stamped with its origin; `done` runs when this node applies
        it, or with NotLeader if the leader refuses it (definitely not applied), or with
        Unavailable "outcome unknown" after FORWARD_EXPIRY_ELECTIONS election timeouts or
        a snapshot install (it may have been applied, or may still be). `context` rides
        on the PROPOSE (`on_forwarded_append` hands it to the leader's driver)."""
        node = self.node
        # The core's role, not our copy: a message stepped earlier in this same batch may
        # have deposed us, and a follower core would forward the entry instead of appending
        # it (then last_index would belong to someone else's entry).
        if self.closed:
            done(0, None, Unavailable("node is shutting down"))
            return 0
        if node.role is not Role.LEADER:
            if forward and node.leader and not self.removed and node.role in (Role.FOLLOWER, Role.LEARNER):
                self._forward(data, done, context)
            else:
                done(0, None, NotLeader("this node is not the leader", leader_id=node.leader or None))
            return 0
        before = node.log.last_index()
        try:
            node.propose(data)
        except ProposalDropped as exc:
            done(0, None, NotLeader(f"proposal dropped: {exc}", leader_id=node.leader or None))
            return 0
        if node.log.last_index() != before + 1:
            done(0, None, Internal("proposal was not appended locally"))
            return 0
        proposal = Proposal(data=data, done=done, index=before + 1, term=node.term)
        self._proposals[proposal.index] = proposal
        self._proposed(proposal)
        return proposal.index

    def propose_membership(self, change: MemberChange, done: ProposalCallback) -> int:
        """Like `propose`, for a membership change; `done` gets the resulting Membership.
        The core's refusals (one change at a time, an invalid change) are
        FailedPrecondition. Returns the entry's index (0 when refused)."""
        node = self.node
        if self.closed:
            done(0, None, Unavailable("node is shutting down"))
            return 0
        if node.role is not Role.LEADER:
            done(0, None, NotLeader("this node is not the leader", leader_id=node.leader or None))
            return 0
        cc = to_conf_change(change)
        try:
            index = node.propose_conf_change(cc)
        except ProposalDropped as exc:
            done(0, None, NotLeader(f"proposal dropped: {exc}", leader_id=node.leader or None))
            return 0
        except ConfChangeRefused as exc:
            done(0, None, FailedPrecondition(f"membership change refused: {exc.reason}"))
            return 0
        proposal = Proposal(data=b"", done=done, index=index, term=node.term)
        self._proposals[index] = proposal
        self._proposed(proposal)
        return index

    def on_membership(self, listener: Callable[[Membership], None]) -> None:
        """`listener` runs on each change of the applied membership."""
        self._membership_listeners.append(listener)

    def read_index(self, context: bytes, done: ReadCallback) -> None:
        """Ask for a linearizable read index; `done(index, None)` once a quorum confirmed
        it (then wait for applied >= index), or `done(0, error)`."""
        if self.closed:
            done(0, Unavailable("node is shutting down"))
            return
        self._reads[context] = done
        self._request_reads([context])

    def _request_reads(self, contexts: Sequence[bytes]) -> None:
        """Ask the core (the leader, or this node if it leads) for a read index. With no
        leader known the request waits here and is asked again on every tick and every
        leadership change, until answered or cancelled (the caller's deadline)."""
        waiting = self._reads_without_leader
        for ctx in contexts:
            if ctx not in self._reads or self.node.read_index(ctx):
                waiting.pop(ctx, None)
            else:
                waiting[ctx] = None

    def cancel_read(self, context: bytes) -> None:
        self._reads.pop(context, None)
        self._reads_without_leader.pop(context, None)

    def transfer_leader(self, target: int) -> None:
        self.node.transfer_leader(target)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.node.report_snapshot(peer, ok)

    def subscribe(self, callback: Callable[[AppliedBatch], None]) -> None:
        """`callback` runs after each applied batch, before proposers are answered."""
        self._subscribers.append(callback)

    def on_forwarded_append(self, listener: Callable[[int, int, bytes], None]) -> None:
        """`listener(index, from_node, context)` runs when this leader appends a write a
        follower forwarded with a `context` (the trio node: a traceparent)."""
        self._forwarded_append_listeners.append(listener)

    def on_forward_refused(self, listener: Callable[[codec.Origin], None]) -> None:
        """`listener(origin)` runs when this node answers a write it forwarded as definitely
        not applied (the simulator checks that such a write is never applied anywhere)."""
        self._forward_refused_listeners.append(listener)

    def on_peer_applied(self, listener: Callable[[], None]) -> None:
        self._peer_applied_listeners.append(listener)

    def close(self, error: BaseException) -> None:
        """Fail every waiting proposal and read with `error`; refuse new ones."""
        self.closed = True
        proposals, self._proposals = list(self._proposals.values()), {}
        forwarded, self._forwarded = list(self._forwarded.values()), {}
        reads, self._reads = list(self._reads.values()), {}
        self._reads_without_leader.clear()
        for p in proposals:
            p.done(p.index, None, error)
        for f in forwarded:
            f.done(0, None, error)
        for done in reads:
            done(0, error)

    # -- the Ready, step by step ------------------------------------------------------------

    def take_ready(self) -> Work | None:
        node = self.node
        if not node.has_ready():
            return None
        rd = node.ready()
        if rd.soft_state is not None:
            self._on_soft_state(rd)
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        self._send_messages(rd.messages)
        persist = bool(rd.entries) or rd.snapshot is not None or (rd.hard_state is not None and rd.must_sync)
        return Work(ready=rd, persist=persist)

    def write(self, work: Work) -> None:
        """Save the Ready's log changes. A hard state that only moved the commit index is
        not written (must_sync is False): after a crash the core recovers commit from the
        applied index. (A Ready that applies a membership change has must_sync set, so its
        commit is written.)"""
        if work.persist:
            rd = work.ready
            self.storage.save(rd.hard_state, rd.entries, rd.snapshot)

    def sync(self, work: Work) -> None:
        if work.must_sync:
            self.storage.sync()

    def apply(self, work: Work) -> ApplyOutput:
        """Install a received snapshot, then apply the committed entries (once the Ready is
        durable).

        The log records a snapshot before the state machine installs it, and the snapshot's
        data is durable (staged with the state machine) before either: a crash in between
        leaves a state machine behind the log's snapshot, which `recover` installs again at
        the next start. The other order is not recoverable: a state machine ahead of a log
        whose uncommitted tail conflicts with what it applied makes the core count that
        tail as committed (ggap/sim/bugs.py InstallBeforeLog shows the simulator catch it).
        """
        rd = work.ready
        sm = self.state_machine
        if rd.snapshot is not None and rd.snapshot.index > sm.applied_index:
            sm.restore(rd.snapshot)
        if not rd.committed:
            return ApplyOutput(outcomes=(), revision=sm.revision)
        committed: Sequence[Entry] = rd.committed
        if any(codec.is_stamped(e.data) for e in committed):
            # The state machine gets each entry's data as proposed, without the stamp.
            committed = [
                attrs.evolve(e, data=codec.strip_origin(e.data)) if codec.is_stamped(e.data) else e
                for e in committed
            ]
        return sm.apply(committed, self._membership_changes(committed))

    def _membership_changes(self, committed: Sequence[Entry]) -> dict[int, Membership | FailedPrecondition]:
        """Decide each CONF_CHANGE entry from the state machine's membership, in log order
        (the core decides alike when `finish` hands it the same changes)."""
        sm = self.state_machine
        current = sm.membership
        changes: dict[int, Membership | FailedPrecondition] = {}
        for e in committed:
            if e.kind is not EntryKind.CONF_CHANGE or e.index <= sm.applied_index:
                continue
            decided = next_membership(current, decode_conf_change(e.data), e.index)
            changes[e.index] = decided
            if isinstance(decided, Membership):
                current = decided
        return changes

    def durable(self, work: Work) -> ApplyOutput:
        """Steps 2-3 in one go: what the trio node runs on its writer thread."""
        self.write(work)
        self.sync(work)
        return self.apply(work)

    def finish(self, work: Work, output: ApplyOutput) -> None:
        rd = work.ready
        if rd.hard_state is not None:
            self.commit = max(self.commit, rd.hard_state.commit)
        self._send_after_persist(rd)
        if rd.snapshot is not None:
            self.commit = max(self.commit, rd.snapshot.index)
            self.applied = max(self.applied, self.state_machine.applied_index)
            self.revision = self.state_machine.revision
            self._fail_unknown(rd.snapshot.index)
            self._fail_forwarded_unknown("a snapshot replaced the log here")
            if not rd.committed:
                # Otherwise after the core applied the batch's changes too: the state machine
                # already holds the membership of the snapshot *and* of any change after it.
                self._membership_applied()
            jump = AppliedBatch(
                applied_index=self.applied, revision=self.revision, events=(), snapshot_installed=True
            )
            for callback in self._subscribers:
                callback(jump)
        if rd.committed:
            self._finish_applied(rd.committed, output, snapshot_installed=rd.snapshot is not None)
        for rs in rd.read_states:
            self._reads_without_leader.pop(rs.context, None)
            done = self._reads.pop(rs.context, None)
            if done is not None:
                done(rs.index, None)
        self.node.advance(rd)
        if rd.committed or rd.snapshot is not None:
            self.report_applied(leader_only=True)

    # -- snapshots and compaction -----------------------------------------------------------

    def snapshot_due(self, *, force: bool = False) -> bool:
        """The log has grown by `snapshot_entries` since the last snapshot (or `force`, and
        anything was applied since): take one (with `state_machine.take_snapshot`, off the
        raft loop), then `record_snapshot`."""
        if self._snapshotting:
            return False
        grown = self.applied - self.storage.snapshot().index
        return grown >= self.retention.snapshot_entries or (force and grown > 0)

    def snapshot_started(self) -> None:
        self._snapshotting = True

    def snapshot_finished(self) -> None:
        self._snapshotting = False

    def record_snapshot(self, taken: TakenSnapshot) -> None:
        """A state-machine snapshot exists: make it the storage's snapshot (with the
        configuration as of its index, which a follower installing it adopts). Then
        `compaction_point` says how much log it frees and `compact_log` drops that in
        steps. Runs where storage writes run (the trio node's writer thread)."""
        storage = self.storage
        index = taken.index
        if index > storage.snapshot().index:
            term = storage.term(index)
            m = taken.membership
            meta = SnapshotMeta(index=index, term=term, voters=m.voters, learners=m.learners)
            storage.set_snapshot(meta)

    def compaction_point(self) -> int | None:
        """How far the log behind the storage's snapshot may go now; None: nothing to drop.
        Reads the core (followers' progress), so it runs beside the core, not on a thread."""
        return self._compaction_point(self.storage.snapshot().index)

    def compact_log(self, upto: int) -> int:
        """Drop at most `retention.compact_step_entries` more entries, towards `upto` (from
        `compaction_point`); returns the index compacted through. A step is one storage
        transaction: the trio node interleaves its steps with the log's appends, so a
        snapshot of a big log never stalls writes for the whole deletion (5000 entries of
        16 KiB took 0.6-0.9 s in one go). No checkpoint of the state machine first: should
        it lose unsynced applies (kv.db runs synchronous=NORMAL), the snapshot file,
        durable before the log recorded it, covers everything compacted away, and
        `_recover` installs it at the next start. (A WAL checkpoint here stalled the writer
        thread for seconds on a 1M-key store.)"""
        storage = self.storage
        step = min(upto, storage.first_index() - 1 + max(1, self.retention.compact_step_entries))
        storage.compact(step)
        return step

    def _compaction_point(self, snap_index: int) -> int | None:
        retention = self.retention
        upto = snap_index - retention.log_retain
        if self.role is Role.LEADER:
            matches = [pr.match for peer, pr in self.node.status().progress.items() if peer != self.id]
            if matches:
                # Keep what a follower within max_lag still needs: it catches up from the log.
                upto = min(upto, max(min(matches), self.applied - retention.max_lag))
        return upto if upto >= self.storage.first_index() else None

    # -- internals ----------------------------------------------------------------------------

    def _send_messages(self, msgs: Sequence[Message]) -> None:
        if not msgs:
            return
        snapshots = [m for m in msgs if m.type is MessageType.SNAPSHOT]
        if snapshots:
            for m in snapshots:
                self.transport.send_snapshot(m)
            msgs = [m for m in msgs if m.type is not MessageType.SNAPSHOT]
        self.transport.send(msgs)

    def _send_after_persist(self, rd: Ready) -> None:
        """Votes and append acks promise what was just written: only now may they leave."""
        self._send_messages(rd.messages_after_persist)

    def _on_soft_state(self, rd: Ready) -> None:
        soft = rd.soft_state
        assert soft is not None
        was_leader = self.role is Role.LEADER
        old_leader, old_role = self.leader, self.role
        if soft.leader and soft.leader != self.leader:
            self.leader_changes += 1
        self.leader, self.role = soft.leader, soft.role
        # One line per event: the core itself logs "became leader" (at info), so that is
        # not repeated here; elections and a follower's new leader are logged here, once.
        term = self.node.term
        if soft.role is Role.LEADER and not was_leader:
            self._log.debug("node %d is now leader (term %d)", self.id, term)
        elif was_leader and soft.role is not Role.LEADER:
            self._log.info("node %d lost leadership at term %d; leader now %d", self.id, term, soft.leader)
        elif soft.role is Role.CANDIDATE and old_role is not Role.CANDIDATE:
            self._log.info("node %d starting an election at term %d", self.id, term)
        if soft.leader not in (0, old_leader, self.id):
            self._log.info("node %d: leader is now %d (term %d)", self.id, soft.leader, term)
        if self._reads:
            # Reads queued on a deposed leader, or sent to a leader that changed, may never
            # be answered: ask again (whichever answer comes first is a valid read index,
            # since each was confirmed by a quorum after the read began).
            self._request_reads(list(self._reads))

    def _finish_applied(
        self, committed: Sequence[Entry], output: ApplyOutput, *, snapshot_installed: bool = False
    ) -> None:
        outcomes = output.outcomes
        if len(outcomes) != len(committed):
            raise Internal(f"state machine gave {len(outcomes)} outcomes for {len(committed)} entries")
        last = committed[-1].index
        self.commit = max(self.commit, last)
        self.applied = max(self.applied, last)
        self.revision = output.revision
        changed = snapshot_installed
        for entry, outcome in zip(committed, outcomes, strict=True):
            if entry.kind is EntryKind.CONF_CHANGE and isinstance(outcome, Membership):
                # The state machine recorded it; now the core (before `advance`, in log order).
                self.node.apply_conf_change(decode_conf_change(entry.data))
                changed = True
        if changed:
            self._membership_applied()
        batch = AppliedBatch(applied_index=last, revision=output.revision, events=list(output.events))
        for callback in self._subscribers:
            callback(batch)
        for entry, outcome in zip(committed, outcomes, strict=True):
            proposal = self._proposals.pop(entry.index, None)
            if proposal is not None:
                self._answer(proposal, entry, outcome)
        if self._forwarded:
            self._answer_forwarded(committed, outcomes)
        self._fail_overwritten(last)

    def _membership_applied(self) -> None:
        """The state machine's membership moved (applied changes, an installed snapshot):
        follow it, and check the core agrees (a divergence is a bug: stop loudly)."""
        m = self.state_machine.membership
        core = self.node.conf_state
        if core != conf_state(m):
            raise Internal(
                f"node {self.id}: core configuration {core} differs from the applied membership {m}"
            )
        if m == self.membership:
            return
        was_member = self.id in self.membership.ids
        self.membership = m
        self.voters, self.learners = m.voters, m.learners
        self.transport.set_members(m)
        self._log.info(
            "node %d: membership at index %d: voters %s, learners %s", self.id, m.index, m.voters, m.learners
        )
        if was_member and self.id not in m.ids and not self.removed:
            self.removed = True
            self._log.warning("node %d was removed from the cluster at index %d", self.id, m.index)
        for listener in self._membership_listeners:
            listener(m)

    def _answer(self, proposal: Proposal, entry: Entry, outcome: Outcome) -> None:
        i = proposal.index
        if proposal.term != entry.term:
            proposal.done(
                i, None, Unavailable("leadership changed before the write committed; it was not applied")
            )
        elif outcome is None:
            proposal.done(i, None, Internal(f"entry {entry.index} was skipped at apply"))
        elif isinstance(outcome, GgapError):
            proposal.done(i, None, outcome)
        else:
            proposal.done(i, outcome, None)

    # -- forwarded proposals ----------------------------------------------------------------

    def _forward(self, data: bytes, done: ProposalCallback, context: bytes) -> None:
        self._forward_seq += 1
        seq = self._forward_seq
        stamped = codec.stamp_origin(codec.Origin(self.id, self._incarnation, seq), data)
        try:
            self.node.propose(stamped, context)  # a follower core sends it as PROPOSE
        except ProposalDropped as exc:
            done(0, None, NotLeader(f"proposal dropped: {exc}", leader_id=self.node.leader or None))
            return
        self._forwarded[seq] = _Forwarded(done=done, tick=self._ticks, term=self.node.term)

    def _answer_forwarded(self, committed: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        for entry, outcome in zip(committed, outcomes, strict=True):
            if entry.kind is not EntryKind.NORMAL or not codec.is_stamped(entry.data):
                continue
            origin = codec.read_origin(entry.data)
            if origin is None or not self._forwarded_here(origin):
                continue
            waiting = self._forwarded.pop(origin.seq, None)
            if waiting is None:
                continue  # its caller was answered already (expired), or a duplicate
            self.forward_counts.applied += 1
            if outcome is None:
                waiting.done(entry.index, None, Internal(f"entry {entry.index} was skipped at apply"))
            elif isinstance(outcome, GgapError):
                waiting.done(entry.index, None, outcome)
            else:
                waiting.done(entry.index, outcome, None)
        if committed and self._forwarded:
            self._refuse_superseded(committed[-1].term)

    def _refuse_superseded(self, applied_term: int) -> None:
        """Forwards sent in a term below `applied_term` were definitely not applied, and
        never will be: a leader of a later term committed an entry, and its log at that
        point holds every older entry that can still commit, all of which are applied here
        by now (in log order, answered above). So refuse them at once, as not applied (the
        server then sends them to the new leader), instead of waiting out the expiry: after
        a leader crash this is what bounds a forwarded write's failover by the election."""
        superseded = []
        for seq, waiting in self._forwarded.items():
            if waiting.term >= applied_term:
                break  # forwarding order is term order
            superseded.append(seq)
        self.forward_counts.refused += len(superseded)
        leader = self.node.leader or None
        for seq in superseded:
            for listener in self._forward_refused_listeners:
                listener(codec.Origin(self.id, self._incarnation, seq))
            waiting = self._forwarded.pop(seq)
            refused = f"node {waiting.refused_by} refused it, and " if waiting.refused_by else ""
            waiting.done(
                0,
                None,
                NotLeader(
                    f"{refused}the leader of term {applied_term} committed without this forwarded "
                    "write; it was not applied",
                    leader_id=leader,
                ),
            )

    def _refuse_forwarded(self, msg: Message) -> None:
        """A PROPOSE this node will not append (it does not lead, or is handing leadership
        over, or is closing): tell the proposer which writes, so they fail at once as
        definitely not applied (the core would drop them silently)."""
        origins = []
        for e in msg.entries:
            try:
                origin = codec.read_origin(e.data)
            except codec.CodecError:
                continue
            if origin is not None and origin.node == msg.frm:
                origins.append(origin)
        if not origins:
            return
        self.transport.send(
            [
                Message(
                    type=MessageType.PROPOSE_REFUSED,
                    to=msg.frm,
                    frm=self.id,
                    term=self.term,
                    context=codec.encode_refusals(origins),
                )
            ]
        )

    def _forward_refused(self, msg: Message) -> None:
        try:
            origins = codec.decode_refusals(self.id, msg.context)
        except codec.CodecError:
            self._log.warning("node %d: unreadable PROPOSE_REFUSED from %d", self.id, msg.frm)
            return
        for origin in origins:
            if origin.incarnation != self._incarnation:
                continue
            waiting = self._forwarded.get(origin.seq)
            if waiting is not None:
                # Not an answer yet: another copy of the same PROPOSE (a network may
                # duplicate) may have been appended in that term before, or may be after.
                # Once a later term commits, _refuse_superseded answers it as not applied,
                # unless it was applied first.
                waiting.refused_by = msg.frm

    def _expire_forwarded(self) -> None:
        cutoff = self._ticks - self._forward_expiry_ticks
        expired = []
        for seq, waiting in self._forwarded.items():
            if waiting.tick > cutoff:
                break  # forwarding order is tick order
            expired.append(seq)
        self.forward_counts.unknown += len(expired)
        for seq in expired:
            self._forwarded.pop(seq).done(
                0,
                None,
                Unavailable(
                    f"the forwarded write was not applied here within {FORWARD_EXPIRY_ELECTIONS} "
                    "election timeouts; its outcome is unknown"
                ),
            )

    def _fail_forwarded_unknown(self, why: str) -> None:
        if not self._forwarded:
            return
        waiting, self._forwarded = list(self._forwarded.values()), {}
        self.forward_counts.unknown += len(waiting)
        for f in waiting:
            f.done(0, None, Unavailable(f"{why}: the forwarded write's outcome is unknown"))

    def _fail_overwritten(self, upto: int) -> None:
        """Any proposal at or below `upto` still waiting was overwritten without reaching
        apply (or was covered by an installed snapshot)."""
        for index in [i for i in self._proposals if i <= upto]:
            self._proposals.pop(index).done(index, None, Unavailable("write was overwritten by a new leader"))

    def _fail_unknown(self, upto: int) -> None:
        """A snapshot replaced the log through `upto`: whether a deposed leader's proposal
        below it won is not known here, so say exactly that."""
        for index in [i for i in self._proposals if i <= upto]:
            self._proposals.pop(index).done(
                index, None, Unavailable("leadership changed; the write's outcome is unknown")
            )

    def report_applied(self, *, leader_only: bool = False) -> None:
        """Tell peers our applied index (and `report_context`).

        After an apply only the leader hears it at once (its WRITE_QUORUM_ALL waiters
        need it); everyone else, and the leader again, at the next tick. At one write in
        flight, reporting every apply to every peer was two frames per write per node,
        a third of all peer traffic."""
        if leader_only:
            leader = self.leader
            if leader == 0 or leader == self.id:
                return
            peers: tuple[int, ...] = (leader,)
        else:
            peers = tuple(p for p in self.voters + self.learners if p != self.id)
        self.transport.send(
            Message(
                type=MessageType.APPLIED_REPORT,
                to=peer,
                frm=self.id,
                term=self.term,
                index=self.applied,
                context=self._report_context,
            )
            for peer in peers
        )

    def _report_unreachable(self) -> None:
        """Appends sent into a broken connection are lost; tell the core so it probes the
        peer again instead of waiting on acknowledgments that will never come."""
        if self.role is not Role.LEADER:
            return
        progress = self.node.status().progress
        for peer in self.transport.unreachable():
            pr = progress.get(peer)
            if pr is not None and pr.state is ProgressState.REPLICATE:
                self.node.report_unreachable(peer)

    # Hooks for the planted bugs (ggap/sim/bugs.py).

    def _forwarded_here(self, origin: codec.Origin) -> bool:
        """This run of this node forwarded the entry stamped `origin`."""
        return origin.node == self.id and origin.incarnation == self._incarnation

    def _new_core(
        self, config: CoreConfig, storage: DurableStorage, rng: random.Random, applied: int
    ) -> RawNode:
        return RawNode(config, storage, rng, self._log, applied=applied)

    def _proposed(self, proposal: Proposal) -> None:
        pass


__all__ = [
    "ApplyOutput",
    "ForwardCounts",
    "MembershipChanges",
    "Outcome",
    "Proposal",
    "ProposalCallback",
    "ReadCallback",
    "ReplicaEngine",
    "Retention",
    "StateMachine",
    "TakenSnapshot",
    "Transport",
    "Work",
]
