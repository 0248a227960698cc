"""RawNode: the Raft protocol as a synchronous state machine with no I/O (thread-unsafe).

Inputs are `tick()` (logical time), `step(msg)` (a message from a peer) and the local requests
(`campaign`, `propose`, `propose_conf_change`, `read_index`, `transfer_leader`); the output is
a `Ready` batch the driver persists, sends and applies before calling `advance` (see `Ready`'s
docstring). A committed CONF_CHANGE entry takes effect when the driver applies it and calls
`apply_conf_change` (DESIGN.md, "Membership changes").

Shape: `step` does term bookkeeping once, for every message, then calls the step function of
the current role; a role change swaps `_step_fn` and `_tick_fn` rather than branching on the
role everywhere. Nothing here reads a clock or a global RNG: the same inputs and the same seed
give the same outputs.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ggap.consensus.raft.log import RaftLog, entry_size
from ggap.consensus.raft.membership import (
    changed_conf,
    conf_change_error,
    conf_state_of,
    encode_conf_change,
)
from ggap.consensus.raft.progress import Inflights, Progress, ProgressState
from ggap.consensus.raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from ggap.consensus.raft.readonly import ReadOnly, ReadRequest
from ggap.consensus.raft.storage import (
    LogCompactedError,
    Storage,
)
from ggap.consensus.raft.types import (
    ConfChange,
    ConfState,
    CoreConfig,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

MT = MessageType

# VOTE context of a campaign started by TIMEOUT_NOW: it may disturb a leader we still follow.
CAMPAIGN_TRANSFER = b"transfer"

# Responses that promise durable state: they leave only after the Ready is persisted.
_AFTER_PERSIST = frozenset({MT.APPEND_RESP, MT.VOTE_RESP, MT.PRE_VOTE_RESP})

# What the protocol consumes; anything else in MessageType is the driver's own business.
_PROTOCOL = frozenset(
    {
        MT.APPEND, MT.APPEND_RESP, MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP,
        MT.HEARTBEAT, MT.HEARTBEAT_RESP, MT.READ_INDEX, MT.READ_INDEX_RESP, MT.SNAPSHOT,
        MT.TIMEOUT_NOW, MT.PROPOSE,
    }
)  # fmt: skip


class ProposalDropped(Exception):
    """The request was not taken: no known leader, an election or a leadership transfer is
    under way, or (for transfer_leader and propose_conf_change) this node is not the leader.
    Retry later (at the leader)."""


class ConfChangeRefused(Exception):
    """The leader will not append this membership change. `retryable`: another change (or
    an entry from before this leader's term) is not applied yet, or a leadership transfer is
    under way; the same change may be proposed again later. Otherwise the change is invalid
    for the current configuration (adding a member, promoting a non-learner, removing a
    non-member or the last voter) and always will be until the configuration changes."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@attrs.frozen(slots=True)
class PeerProgress:
    """What the leader knows of one member's log (see progress.py)."""

    match: int  # highest index known to be in its log
    next: int  # next index to send
    state: ProgressState
    # Heard from since the last CheckQuorum round (every election_tick ticks, when
    # check_quorum is on; without it, ever since this node became leader). Just after a
    # round it is False for everyone until they answer the next heartbeat.
    recent_active: bool
    is_learner: bool


@attrs.frozen(slots=True)
class RaftStatus:
    id: int
    term: int
    vote: int
    commit: int
    applied: int
    last_index: int
    leader: int  # 0 = unknown
    role: Role
    conf_state: ConfState  # the configuration in effect here (as of the applied conf changes)
    # Leader only: member -> its progress, this node included. Empty elsewhere.
    progress: dict[int, PeerProgress]
    lead_transferee: int = 0  # leader only: target of a transfer in progress
    # Leader only: no membership change may be proposed until `applied` reaches this (the
    # index of the last change it appended, or its last index when it was elected).
    pending_conf_index: int = 0


class _Campaign(enum.Enum):
    PRE = "pre-vote"
    ELECT = "election"


class RawNode:
    def __init__(
        self,
        config: CoreConfig,
        storage: Storage,
        rng: random.Random,
        logger: logging.Logger | None = None,
        *,
        applied: int = 0,
    ) -> None:
        """Restore from `storage`; `applied` is how far the state machine already is (the
        driver's applied index), so those entries are not handed out again."""
        _validate(config)
        self._cfg = config
        self._id = config.id
        self._voters: tuple[int, ...] = tuple(sorted(set(config.voters)))
        self._learners: tuple[int, ...] = tuple(sorted(set(config.learners)))
        self._rng = rng
        self._logger = logger if logger is not None else logging.getLogger(__name__)

        hs, snap = storage.initial_state()
        self.log = RaftLog(storage, config.max_size_per_msg, applied)
        if hs.commit > self.log.last_index():
            raise ValueError(f"stored commit {hs.commit} beyond last index {self.log.last_index()}")
        if applied > self.log.last_index():
            raise ValueError(f"applied {applied} beyond last index {self.log.last_index()}")
        # Applied entries were committed even if the commit index in the hard state (which
        # needs no fsync of its own) lags behind them after a crash.
        self.log.committed = max(hs.commit, snap.index, applied, self.log.committed)

        self._term = hs.term
        self._vote = hs.vote
        self._lead = 0
        self._role = Role.FOLLOWER
        self._prs: dict[int, Progress] = {}
        self._votes: dict[int, bool] = {}
        self._msgs: list[Message] = []
        self._msgs_after_persist: list[Message] = []
        self._read_states: list[ReadState] = []
        self._readonly = ReadOnly()
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = config.election_tick
        self._transferee = 0
        self._pending_conf_index = 0
        self._step_fn: Callable[[Message], None] = self._step_follower
        self._tick_fn: Callable[[], None] = self._tick_election
        self._become_follower(self._term, 0)
        self._prev_soft = self._soft_state()
        self._prev_hard = hs

    # ---- read-only views -----------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._id

    @property
    def term(self) -> int:
        return self._term

    @property
    def role(self) -> Role:
        return self._role

    @property
    def leader(self) -> int:
        return self._lead

    @property
    def transferring(self) -> bool:
        """Leader only: a leadership transfer is in progress (proposals are dropped)."""
        return self._transferee != 0

    @property
    def conf_state(self) -> ConfState:
        return ConfState(voters=self._voters, learners=self._learners)

    def status(self) -> RaftStatus:
        progress: dict[int, PeerProgress] = {}
        leader = self._role is Role.LEADER
        if leader:
            progress = {
                pid: PeerProgress(
                    match=pr.match,
                    next=pr.next,
                    state=pr.state,
                    recent_active=pr.recent_active,
                    is_learner=pr.is_learner,
                )
                for pid, pr in self._prs.items()
            }
        return RaftStatus(
            id=self._id,
            term=self._term,
            vote=self._vote,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            leader=self._lead,
            role=self._role,
            conf_state=self.conf_state,
            progress=progress,
            lead_transferee=self._transferee,
            pending_conf_index=self._pending_conf_index if leader else 0,
        )

    # ---- inputs --------------------------------------------------------------------------

    def tick(self) -> None:
        self._tick_fn()

    def campaign(self) -> None:
        """Start an election now (with a pre-vote first if enabled). No-op on a leader, on a
        node that is not a voter in its configuration, and while a committed membership change
        is not applied yet."""
        if self._role is Role.LEADER or not self._promotable():
            return
        self._hup(transfer=False)

    def propose(self, data: bytes, context: bytes = b"") -> None:
        """Append `data` (a leader), or send it to the leader as PROPOSE (a follower or
        learner; `context` rides on that message, opaque to the core: the driver's)."""
        if self._role is Role.LEADER:
            if self._transferee:
                raise ProposalDropped("leadership transfer in progress")
            self._append_and_broadcast([Entry(index=0, term=0, kind=EntryKind.NORMAL, data=data)])
        elif self._role in (Role.FOLLOWER, Role.LEARNER):
            if not self._lead:
                raise ProposalDropped("no leader known")
            # The term it is meant for: a leader appends it only in that term (the engine
            # refuses it otherwise), so the proposer knows it can never commit once an entry
            # of a later term has.
            self._send(
                MT.PROPOSE,
                self._lead,
                term=self._term,
                entries=(Entry(index=0, term=0, data=data),),
                context=context,
            )
        else:
            raise ProposalDropped("election in progress")

    def propose_conf_change(self, cc: ConfChange) -> int:
        """Append a CONF_CHANGE entry for `cc`; returns its index (in the current term).

        Leader only (ProposalDropped elsewhere: forward the request to the leader). Refused
        with ConfChangeRefused while an earlier change, or any entry from before this
        leader's term, is not applied yet (one change at a time), during a leadership
        transfer, or when `cc` is invalid for the current configuration. The change takes
        effect on each node when that node applies the entry (`apply_conf_change`).
        """
        if self._role is not Role.LEADER:
            raise ProposalDropped("not the leader")
        if self._transferee:
            raise ConfChangeRefused("leadership transfer in progress", retryable=True)
        if self._pending_conf_index > self.log.applied:
            raise ConfChangeRefused(
                f"entry {self._pending_conf_index} (a membership change, or the last entry from "
                f"before this leader's term) is not applied yet (applied {self.log.applied})",
                retryable=True,
            )
        reason = conf_change_error(self.conf_state, cc)
        if reason is not None:
            raise ConfChangeRefused(reason, retryable=False)
        self._append_and_broadcast(
            [Entry(index=0, term=0, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc))]
        )
        self._pending_conf_index = self.log.last_index()
        self._logger.info(
            "%d proposed %s of %d at index %d (term %d)",
            self._id,
            cc.type.name,
            cc.node_id,
            self._pending_conf_index,
            self._term,
        )
        return self._pending_conf_index

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """The driver applies a committed CONF_CHANGE entry carrying `cc`: switch to the new
        configuration and return it (to be stored with the state machine, atomically with
        the applied index: a restarted core is built with it).

        Call it for every committed CONF_CHANGE entry, in log order, while applying the
        Ready that carried it (before `advance`). A change that is invalid for the current
        configuration (which a correct leader never commits) changes nothing and is logged.
        """
        conf = self.conf_state
        reason = conf_change_error(conf, cc)
        if reason is not None:
            self._logger.warning(
                "%d ignoring committed %s of %d at voters=%s learners=%s: %s",
                self._id,
                getattr(cc.type, "name", cc.type),
                cc.node_id,
                conf.voters,
                conf.learners,
                reason,
            )
            return conf
        new = changed_conf(conf, cc)
        self._logger.info(
            "%d applied %s of %d: voters=%s learners=%s",
            self._id,
            cc.type.name,
            cc.node_id,
            new.voters,
            new.learners,
        )
        self._switch_to(new)
        return new

    def read_index(self, context: bytes) -> bool:
        """Ask for a linearizable read index; a `ReadState` with `context` comes in a later
        Ready. Returns False when it was dropped at once (no leader known): retry later.
        A request taken here may still never be answered (leader deposed): time it out."""
        if self._role is Role.LEADER:
            self._leader_read(ReadRequest(context=context, frm=self._id))
            return True
        if self._role in (Role.FOLLOWER, Role.LEARNER) and self._lead:
            self._send(MT.READ_INDEX, self._lead, term=0, context=context)
            return True
        return False

    def transfer_leader(self, target: int) -> None:
        """Hand leadership to `target` (a voter); transferring to ourselves cancels a transfer.

        Proposals are refused until it completes or is abandoned after an election timeout.
        """
        if self._role is not Role.LEADER:
            raise ProposalDropped("not the leader")
        if target not in self._voters:
            raise ValueError(f"{target} is not a voter")  # learners and non-members cannot lead
        if target == self._id:
            self._transferee = 0
            return
        if self._transferee == target:
            return
        self._logger.info("%d transferring leadership to %d at term %d", self._id, target, self._term)
        self._transferee = target
        self._election_elapsed = 0  # the transfer gets one election timeout
        if self._prs[target].match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, target)
        else:
            self._send_append(target)

    def report_unreachable(self, peer: int) -> None:
        """The transport failed to deliver to `peer`: stop pipelining, probe it again."""
        pr = self._prs.get(peer)
        if self._role is Role.LEADER and pr is not None and peer != self._id:
            if pr.state is ProgressState.REPLICATE:
                pr.become_probe()

    def report_snapshot(self, peer: int, ok: bool) -> None:
        """The driver finished (or gave up) sending the snapshot to `peer`.

        The driver must call this for every SNAPSHOT message it takes: until then (or until
        the follower's APPEND_RESP arrives) nothing but heartbeats goes to `peer`.
        """
        pr = self._prs.get(peer)
        if self._role is not Role.LEADER or pr is None or pr.state is not ProgressState.SNAPSHOT:
            return
        if not ok:
            pr.pending_snapshot = 0
        pr.become_probe()
        # Wait for its APPEND_RESP (success) or the next heartbeat response (failure).
        pr.probe_sent = True

    def step(self, m: Message) -> None:
        """Handle one message from a peer: term rules here, the rest in the role's step function."""
        if m.type not in _PROTOCOL:
            return
        if m.type in (MT.VOTE_RESP, MT.PRE_VOTE_RESP):
            self._learn_commit(m)
        if m.type in (MT.PROPOSE, MT.READ_INDEX):
            pass  # forwarded requests are not bound to a term
        elif m.term > self._term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self._cfg.check_quorum
                    and self._lead != 0
                    and self._election_elapsed < self._cfg.election_tick
                )
                if in_lease and not forced:
                    # Leader stickiness: we heard from a live leader within the election timeout,
                    # so a (pre-)candidate is more likely partitioned than the leader dead.
                    return
            if m.type is MT.PRE_VOTE:
                pass  # a pre-vote carries the term it would use; it changes nothing here
            elif m.type is MT.PRE_VOTE_RESP and not m.reject:
                pass  # a granted pre-vote echoes that future term; handled by the pre-candidate
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self._term:
            if m.type in (MT.APPEND, MT.HEARTBEAT):
                # A deposed leader that missed the newer term: tell it, so it steps down.
                self._send(MT.APPEND_RESP, m.frm)
            elif m.type is MT.PRE_VOTE:
                self._send_vote_resp(MT.PRE_VOTE_RESP, m.frm, reject=True)
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        else:
            self._step_fn(m)

    # ---- the Ready / advance contract ----------------------------------------------------

    def has_ready(self) -> bool:
        u = self.log.unstable
        return bool(
            self._msgs
            or self._msgs_after_persist
            or self._read_states
            or (u.snapshot is not None and not u.snapshot_in_progress)
            or u.has_pending_entries()
            or self.log.has_next_committed()
            or self._soft_state() != self._prev_soft
            or self._hard_state() != self._prev_hard
            or self._read_round_startable()
        )

    def ready(self) -> Ready:
        """Take the pending work. What it hands out is not handed out again, so stepping
        between ready() and advance() is allowed."""
        if self._read_round_startable():
            self._start_read_round()
        soft = self._soft_state()
        hard = self._hard_state()
        u = self.log.unstable
        snap = u.snapshot if u.snapshot is not None and not u.snapshot_in_progress else None
        entries = tuple(u.pending_entries())
        committed = tuple(self.log.next_committed())
        # Entries that carry a conf change always travel with the hard state, so that the
        # commit index covering the previous change is durable with them (DESIGN.md,
        # "Membership changes": a node that holds a change knows the one before is committed).
        # A Ready that applies a conf change makes its commit index durable first (must_sync),
        # even when only the commit moved: a node whose state machine is lost (a power loss
        # rolls it back) must not forget that a change it acted on committed. Otherwise a
        # voter left alone by a removal restarts into the configuration before it and waits
        # forever for the removed node's vote.
        applies_change = any(e.kind == EntryKind.CONF_CHANGE for e in committed)
        hard_changed = (
            hard != self._prev_hard or applies_change or any(e.kind == EntryKind.CONF_CHANGE for e in entries)
        )
        must_sync = (
            bool(entries)
            or snap is not None
            or applies_change
            or (hard_changed and (hard.term, hard.vote) != (self._prev_hard.term, self._prev_hard.vote))
        )
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard_changed else None,
            entries=entries,
            snapshot=snap,
            committed=committed,
            messages=tuple(self._msgs),
            messages_after_persist=tuple(self._msgs_after_persist),
            read_states=tuple(self._read_states),
            must_sync=must_sync,
        )
        self._prev_soft, self._prev_hard = soft, hard
        u.accept_in_progress()
        if committed:
            self.log.accept_applying(committed[-1].index)
        self._msgs, self._msgs_after_persist, self._read_states = [], [], []
        return rd

    def advance(self, rd: Ready) -> None:
        """`rd` is durable in storage and its committed entries are applied."""
        u = self.log.unstable
        if rd.snapshot is not None:
            u.stable_snap_to(rd.snapshot.index)
            self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            u.stable_to(last.index, last.term)
        if rd.committed:
            self.log.applied_to(rd.committed[-1].index)
        hs = rd.hard_state
        if (
            self._role is Role.CANDIDATE
            and hs is not None
            and (hs.term, hs.vote) == (self._term, self._id)
            and self._id not in self._votes
        ):
            self._record_vote(self._id, True)  # our own vote counts only once it is durable
        if self._role is Role.LEADER:
            me = self._prs[self._id]
            if me.maybe_update(self.log.persisted_last_index()) and self._maybe_commit():
                self._on_commit_advanced()

    # ---- role changes --------------------------------------------------------------------

    def _promotable(self) -> bool:
        return self._id in self._voters

    def _reset(self, term: int) -> None:
        if term != self._term:
            self._term = term
            self._vote = 0
        self._lead = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._cfg.election_tick + self._rng.randrange(self._cfg.election_tick)
        self._transferee = 0
        self._votes = {}
        self._readonly.reset()
        last = self.log.last_index()
        self._prs = {}
        for pid in sorted({*self._voters, *self._learners}):
            pr = Progress(
                match=0,
                next=last + 1,
                inflights=Inflights(self._cfg.max_inflight_msgs, self._cfg.max_inflight_bytes),
                is_learner=pid in self._learners,
            )
            if pid == self._id:
                pr.match = self.log.persisted_last_index()
            self._prs[pid] = pr

    def _follower_role(self) -> Role:
        return Role.LEARNER if self._id in self._learners else Role.FOLLOWER

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self._lead = lead
        self._role = self._follower_role()
        self._step_fn = self._step_follower
        self._tick_fn = self._tick_election
        self._logger.debug("%d became %s at term %d (leader %d)", self._id, self._role.value, term, lead)

    def _become_pre_candidate(self) -> None:
        # Changes neither term nor vote: a pre-vote that fails leaves no trace.
        self._role = Role.PRE_CANDIDATE
        self._lead = 0
        self._votes = {}
        self._election_elapsed = 0
        self._randomized_timeout = self._cfg.election_tick + self._rng.randrange(self._cfg.election_tick)
        self._step_fn = self._step_candidate
        self._tick_fn = self._tick_election
        self._logger.debug("%d became pre-candidate at term %d", self._id, self._term)

    def _become_candidate(self) -> None:
        self._reset(self._term + 1)
        self._vote = self._id
        self._role = Role.CANDIDATE
        self._step_fn = self._step_candidate
        self._tick_fn = self._tick_election
        self._logger.debug("%d became candidate at term %d", self._id, self._term)

    def _become_leader(self) -> None:
        self._reset(self._term)
        self._lead = self._id
        self._role = Role.LEADER
        self._step_fn = self._step_leader
        self._tick_fn = self._tick_heartbeat
        for pr in self._prs.values():
            pr.recent_active = True  # a quorum just voted for us; give everyone a full timeout
        self._prs[self._id].become_replicate()
        # No membership change until everything from before this term is applied: there may
        # be an unapplied change in that tail (and scanning it could be expensive).
        self._pending_conf_index = self.log.last_index()
        # Committing this entry commits everything before it (Raft §5.4.2) and unlocks reads.
        self._append_entries([Entry(index=0, term=0, kind=EntryKind.NOOP)])
        self._logger.info("%d became leader at term %d", self._id, self._term)

    # ---- elections -----------------------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self._has_unapplied_conf_change():
            # Votes are counted with the configuration in effect here: it must not lag behind
            # a change we know is committed (DESIGN.md, "Membership changes").
            self._logger.info(
                "%d not campaigning at term %d: a committed membership change is not applied yet",
                self._id,
                self._term,
            )
            return
        if self._cfg.pre_vote and not transfer:
            self._campaign(_Campaign.PRE, transfer=False)
        else:
            self._campaign(_Campaign.ELECT, transfer=transfer)

    def _campaign(self, kind: _Campaign, transfer: bool) -> None:
        if kind is _Campaign.PRE:
            self._become_pre_candidate()
            vtype, vterm = MT.PRE_VOTE, self._term + 1
            # A pre-vote promises nothing, so our own counts at once.
            if self._record_vote(self._id, True):
                return
        else:
            self._become_candidate()
            vtype, vterm = MT.VOTE, self._term
            # Our own vote is counted in advance(), once the Ready carrying it is durable.
        li, lt = self.log.last_index(), self.log.last_term()
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for v in self._voters:
            if v != self._id:
                self._send(vtype, v, term=vterm, index=li, log_term=lt, context=ctx)

    def _record_vote(self, frm: int, granted: bool) -> bool:
        """Count a vote; returns True if the election is decided (and acted on)."""
        self._votes.setdefault(frm, granted)
        result = vote_result(self._voters, self._votes)
        if result is VoteResult.WON:
            if self._role is Role.PRE_CANDIDATE:
                self._campaign(_Campaign.ELECT, transfer=False)
            else:
                self._become_leader()
                self._broadcast_append()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self._term, 0)
            return True
        return False

    def _handle_vote_request(self, m: Message) -> None:
        resp = MT.VOTE_RESP if m.type is MT.VOTE else MT.PRE_VOTE_RESP
        can_vote = (
            self._vote == m.frm  # a retransmitted request: answer the same
            or (self._vote == 0 and self._lead == 0)
            or (m.type is MT.PRE_VOTE and m.term > self._term)
        )
        # Learners and non-members vote too when asked: the candidate counts only the voters
        # of its own configuration, and it may know of a promotion we have not applied yet
        # (without our vote, a configuration that just promoted us could be stuck).
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send_vote_resp(resp, m.frm, term=m.term)
            if m.type is MT.VOTE:
                self._election_elapsed = 0
                self._vote = m.frm
        else:
            self._send_vote_resp(resp, m.frm, reject=True)

    def _send_vote_resp(self, type: MessageType, to: int, **fields: Any) -> None:
        """A (pre-)vote answer also tells our commit index, with the term of that entry.

        A candidate may lag behind a commit only we know of, a membership change above all:
        when a leader removes itself from a cluster of two, the other voter may never hear
        that the removal committed, and then it campaigns in the old configuration, which
        needs our vote, while we (removed, or simply ahead) refuse it forever. Learning our
        commit lets it apply the change and win in the new configuration."""
        commit = self.log.committed
        try:
            commit_term = self.log.term(commit) if commit else 0
        except LookupError:
            commit, commit_term = 0, 0
        self._send(type, to, commit=commit, log_term=commit_term, **fields)

    def _learn_commit(self, m: Message) -> None:
        """A (pre-)vote answer tells its sender's commit index `m.commit` of term
        `m.log_term`: if our log holds that entry, everything up to it matches the
        sender's log (Log Matching) and is committed."""
        if m.commit > self.log.committed and m.log_term and self.log.match_term(m.commit, m.log_term):
            self._logger.info("%d learns commit %d from %d's vote answer", self._id, m.commit, m.frm)
            self.log.commit_to(m.commit)

    # ---- ticks ---------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_heartbeat(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self._cfg.election_tick:
            self._election_elapsed = 0
            if self._cfg.check_quorum:
                active = [pid for pid, pr in self._prs.items() if pid == self._id or pr.recent_active]
                if not has_quorum(self._voters, active):
                    self._logger.info("%d stepping down: no quorum heard at term %d", self._id, self._term)
                    self._become_follower(self._term, 0)
                    return
                for pid, pr in self._prs.items():
                    pr.recent_active = pid == self._id
            if self._transferee:
                self._logger.info("%d abandons transfer to %d", self._id, self._transferee)
                self._transferee = 0
        if self._heartbeat_elapsed >= self._cfg.heartbeat_tick:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    # ---- role step functions -------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MT.APPEND:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_append(m)
        elif t is MT.HEARTBEAT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_heartbeat(m)
        elif t is MT.SNAPSHOT:
            self._election_elapsed = 0
            self._lead = m.frm
            self._handle_snapshot(m)
        elif t is MT.TIMEOUT_NOW:
            if self._promotable():
                self._logger.info("%d campaigning at term %d on TIMEOUT_NOW", self._id, self._term)
                self._hup(transfer=True)
        elif t is MT.READ_INDEX_RESP:
            self._read_states.append(ReadState(index=m.index, context=m.context))
        # PROPOSE / READ_INDEX reaching a non-leader are dropped, never re-forwarded (no loops).

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            # Someone won this term (only equal terms get here).
            self._become_follower(self._term, m.frm)
            self._step_follower(m)
        elif t is MT.VOTE_RESP and self._role is Role.CANDIDATE:
            self._record_vote(m.frm, not m.reject)
        elif t is MT.PRE_VOTE_RESP and self._role is Role.PRE_CANDIDATE:
            if not m.reject and m.term != self._term + 1:
                return  # a grant from an earlier pre-vote round
            self._record_vote(m.frm, not m.reject)

    def _step_leader(self, m: Message) -> None:
        t = m.type
        pr = self._prs.get(m.frm)
        if pr is None or m.frm == self._id:
            return
        if t is MT.PROPOSE:
            if self._transferee:
                return  # dropped; the proposer times out and retries at the new leader
            # Only plain entries are forwarded; a membership change goes through
            # propose_conf_change at the leader, which checks it.
            self._append_and_broadcast([e for e in m.entries if e.kind == EntryKind.NORMAL])
        elif t is MT.READ_INDEX:
            self._leader_read(ReadRequest(context=m.context, frm=m.frm))
        elif t is MT.APPEND_RESP:
            self._handle_append_resp(m, pr)
        elif t is MT.HEARTBEAT_RESP:
            self._handle_heartbeat_resp(m, pr)

    # ---- follower side of replication ----------------------------------------------------

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            # Everything up to our commit matches any leader's log; say so.
            self._send(MT.APPEND_RESP, m.frm, index=self.log.committed)
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(MT.APPEND_RESP, m.frm, index=last)
            return
        hint, hint_term = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(MT.APPEND_RESP, m.frm, index=m.index, reject=True, reject_hint=hint, log_term=hint_term)

    def _handle_heartbeat(self, m: Message) -> None:
        # The leader sends min(match, commit), so this never commits an unverified entry.
        self.log.commit_to(min(m.commit, self.log.last_index()))
        # Our last index lets the leader notice a follower that lost its log (restarted
        # with a wiped data dir) although it once acknowledged more.
        self._send(MT.HEARTBEAT_RESP, m.frm, context=m.context, index=self.log.last_index())

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        if not snap.voters or set(snap.voters) & set(snap.learners):
            self._logger.error(
                "%d ignoring snapshot %d from %d: invalid configuration voters=%s learners=%s",
                self._id,
                snap.index,
                m.frm,
                snap.voters,
                snap.learners,
            )
            return
        if self._restore(snap):
            self._logger.info("%d restoring snapshot at %d (term %d)", self._id, snap.index, snap.term)
            self._send(MT.APPEND_RESP, m.frm, index=self.log.last_index())
        else:
            self._send(MT.APPEND_RESP, m.frm, index=self.log.committed)

    def _restore(self, snap: SnapshotMeta) -> bool:
        if snap.index <= self.log.committed:
            return False
        if self.log.match_term(snap.index, snap.term):
            # We already hold that entry: the snapshot only tells us it is committed.
            self.log.commit_to(snap.index)
            return False
        self.log.restore(snap)
        # The snapshot's configuration is the one as of its index: it replaces ours.
        self._switch_to(conf_state_of(snap))
        return True

    # ---- membership --------------------------------------------------------------------

    def _has_unapplied_conf_change(self) -> bool:
        """Whether a CONF_CHANGE entry is committed here but not applied (advanced) yet."""
        lo = max(self.log.applied + 1, self.log.first_index())
        hi = self.log.committed + 1
        while lo < hi:
            ents = self.log.slice(lo, hi, self._cfg.max_size_per_msg)
            if any(e.kind == EntryKind.CONF_CHANGE for e in ents):
                return True
            lo = ents[-1].index + 1
        return False

    def _switch_to(self, conf: ConfState) -> None:
        """Make `conf` the configuration in effect, and act on what it changes for us."""
        self._voters, self._learners = conf.voters, conf.learners
        members = {*conf.voters, *conf.learners}
        for pid in [p for p in self._prs if p not in members]:
            del self._prs[pid]
        added = []
        for pid in sorted(members):
            pr = self._prs.get(pid)
            if pr is None:
                # A new member is probed from our last index. It counts as recently active,
                # so a CheckQuorum round right now does not hold its silence against us and
                # a snapshot may be sent to it at once.
                pr = Progress(
                    match=0,
                    next=self.log.last_index() + 1,
                    inflights=Inflights(self._cfg.max_inflight_msgs, self._cfg.max_inflight_bytes),
                    is_learner=pid in conf.learners,
                    recent_active=True,
                )
                self._prs[pid] = pr
                added.append(pid)
            pr.is_learner = pid in conf.learners  # a promoted learner keeps its match

        if self._role is Role.LEADER:
            if self._id not in conf.voters:
                self._step_down_removed()
                return
            if self._transferee and self._transferee not in conf.voters:
                self._logger.info("%d abandons transfer to removed node %d", self._id, self._transferee)
                self._transferee = 0
            # The new majority may already hold more entries: after a removal (fewer voters
            # to hear from), or a promotion of a learner that is ahead of some voter.
            if self._maybe_commit():
                self._on_commit_advanced()
            else:
                for pid in added:
                    if pid != self._id:
                        self._send_append(pid)
            rnd = self._readonly.round
            if rnd is not None and has_quorum(self._voters, rnd.acks | {self._id}):
                self._finish_read_round()
        elif self._role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            if not self._promotable():
                self._become_follower(self._term, 0)
        else:
            self._role = self._follower_role()  # e.g. a promoted learner now follows

    def _step_down_removed(self) -> None:
        """We lead, and just applied our own removal: hand over if we can, then step down."""
        last = self.log.last_index()
        others = [(pr.match, -pid) for pid, pr in self._prs.items() if pid in self._voters]
        target = 0
        if others:
            match, neg = max(others)
            if match == last:
                target = -neg
                self._send(MT.TIMEOUT_NOW, target)  # it has everything: let it campaign now
        self._logger.info(
            "%d removed from the configuration at term %d; stepping down%s",
            self._id,
            self._term,
            f" (TIMEOUT_NOW to {target})" if target else "",
        )
        self._become_follower(self._term, 0)

    # ---- leader side of replication ------------------------------------------------------

    def _append_entries(self, entries: Sequence[Entry]) -> None:
        li = self.log.last_index()
        self.log.append(
            [Entry(index=li + i, term=self._term, kind=e.kind, data=e.data) for i, e in enumerate(entries, 1)]
        )
        # Our own progress moves in advance(), once these are durable here.

    def _append_and_broadcast(self, entries: Sequence[Entry]) -> None:
        if entries:
            self._append_entries(entries)
            self._broadcast_append()

    def _broadcast_append(self) -> None:
        for pid in self._prs:
            if pid != self._id:
                self._send_append(pid)

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send what flow control allows to `to`; returns whether anything was sent."""
        pr = self._prs[to]
        if pr.is_paused():
            return False
        prev = pr.next - 1
        try:
            prev_term = self.log.term(prev)
            ents = self.log.entries_from(pr.next, self._cfg.max_size_per_msg)
        except LogCompactedError:
            return self._send_snapshot(to, pr)
        if not ents and not send_if_empty:
            return False
        nbytes = sum(entry_size(e) for e in ents)
        self._send(
            MT.APPEND, to, index=prev, log_term=prev_term, entries=tuple(ents), commit=self.log.committed
        )
        pr.sent_entries(ents[-1].index if ents else None, nbytes)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # it may be down; do not ship a snapshot into the void
        snap = self.log.snapshot()
        self._logger.info("%d sending snapshot %d to %d", self._id, snap.index, to)
        self._send(MT.SNAPSHOT, to, snapshot=snap)
        pr.become_snapshot(snap.index)
        return True

    def _broadcast_heartbeat(self, context: bytes | None = None) -> None:
        ctx = self._readonly.in_flight_context() if context is None else context
        for pid, pr in self._prs.items():
            if pid != self._id:
                self._send(MT.HEARTBEAT, pid, commit=min(pr.match, self.log.committed), context=ctx)

    def _handle_append_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                # Skip, on our side too, every entry whose term is above the follower's.
                hint, _ = self.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decr_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused()
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match + 1 >= self.log.first_index():
            pr.become_probe()
            pr.become_replicate()
        elif pr.state is ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._on_commit_advanced()
        elif was_paused:
            # It may have missed commit updates while we held back: send at least the index.
            self._send_append(m.frm)
        while self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self._transferee and pr.match == self.log.last_index():
            self._send(MT.TIMEOUT_NOW, m.frm)

    def _handle_heartbeat_resp(self, m: Message, pr: Progress) -> None:
        pr.recent_active = True
        pr.probe_sent = False
        if m.index < pr.match:
            # It holds less than it acknowledged: a wiped data dir, or a stale reply. Either
            # way probing again from what it says it has is safe (match only drives commit
            # forward, and the commit index never moves back).
            self._logger.warning(
                "%d: node %d reports last index %d below its match %d; probing it again",
                self._id,
                m.frm,
                m.index,
                pr.match,
            )
            pr.reset_to(m.index)
        if pr.state is ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()  # an ack may have been lost: let one more through
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        if m.context:
            rnd = self._readonly.ack(m.context, m.frm)
            if rnd is not None and has_quorum(self._voters, rnd.acks | {self._id}):
                self._finish_read_round()

    def _maybe_commit(self) -> bool:
        match = {pid: pr.match for pid, pr in self._prs.items() if not pr.is_learner}
        return self.log.maybe_commit(committed_index(self._voters, match), self._term)

    def _on_commit_advanced(self) -> None:
        self._broadcast_append()  # followers learn the new commit index

    # ---- ReadIndex -----------------------------------------------------------------------

    def _committed_in_term(self) -> bool:
        try:
            return self.log.term(self.log.committed) == self._term
        except LookupError:
            return False

    def _leader_read(self, req: ReadRequest) -> None:
        # Queued only: the round starts in ready(), so every read that arrives in the same
        # handling pass shares it.
        self._readonly.add(req)

    def _read_round_startable(self) -> bool:
        return (
            bool(self._readonly.pending)
            and (self._readonly.round is None or self._voters == (self._id,))
            and self._committed_in_term()
        )

    def _start_read_round(self) -> None:
        if self._voters == (self._id,):
            for req in self._readonly.take_pending():
                self._answer_read(req, self.log.committed)
            return
        rnd = self._readonly.start_round(self.log.committed)
        self._broadcast_heartbeat(rnd.context)

    def _finish_read_round(self) -> None:
        rnd = self._readonly.finish_round()
        for req in rnd.requests:
            self._answer_read(req, rnd.index)

    def _answer_read(self, req: ReadRequest, index: int) -> None:
        if req.frm == self._id:
            self._read_states.append(ReadState(index=index, context=req.context))
        else:
            self._send(MT.READ_INDEX_RESP, req.frm, index=index, context=req.context)

    # ---- plumbing ------------------------------------------------------------------------

    def _send(self, type: MessageType, to: int, **fields: Any) -> None:
        fields.setdefault("term", self._term)
        m = Message(type=type, to=to, frm=self._id, **fields)
        if type in _AFTER_PERSIST:
            self._msgs_after_persist.append(m)
        else:
            self._msgs.append(m)

    def _soft_state(self) -> SoftState:
        return SoftState(leader=self._lead, role=self._role)

    def _hard_state(self) -> HardState:
        return HardState(term=self._term, vote=self._vote, commit=self.log.committed)


def _validate(c: CoreConfig) -> None:
    if not c.voters:
        raise ValueError("at least one voter is required")
    if set(c.voters) & set(c.learners):
        raise ValueError("a node cannot be both voter and learner")
    # c.id may be outside the configuration: a node that joins (and learns of its own
    # addition from the log or a snapshot) or one that was removed. It never campaigns.
    if c.id <= 0 or 0 in c.voters or 0 in c.learners:
        raise ValueError("0 means 'nobody' and cannot be a node id")
    if c.heartbeat_tick < 1 or c.election_tick <= c.heartbeat_tick:
        raise ValueError("need 1 <= heartbeat_tick < election_tick")
    if c.max_inflight_msgs < 1:
        raise ValueError("max_inflight_msgs must be at least 1")
