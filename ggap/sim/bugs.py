"""Planted bugs: engine subclasses that each break one rule of the production engine.

They exist to prove that the simulator's checks catch a bug in `ReplicaEngine` itself
(tests/unit/test_sim.py pins a seed for each). Each overrides the one method that owns
the rule it breaks, so the override reads as the bug.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from ggap.codec import Origin
from ggap.consensus.raft import ConfChange, ConfState, CoreConfig, DurableStorage, Entry, RawNode, Ready
from ggap.consensus.raft.membership import changed_conf, conf_change_error
from ggap.consensus.raft.quorum import majority
from ggap.replica.engine import Outcome, Proposal, ReplicaEngine, Work
from ggap.sim.node import SimMachine
from ggap.types import FailedPrecondition, Membership


class SkipPersistBeforeVote(ReplicaEngine):
    """Votes and append acks leave when the write starts, not once it is durable: a crash
    inside the write breaks the promise they made."""

    def take_ready(self) -> Work | None:
        work = super().take_ready()
        if work is not None:
            self._send_messages(work.ready.messages_after_persist)
        return work

    def _send_after_persist(self, rd: Ready) -> None:
        pass


class AckBeforeCommit(ReplicaEngine):
    """A write is acknowledged when proposed, before it is committed."""

    def _proposed(self, proposal: Proposal) -> None:
        if not proposal.data:
            return  # a membership change: only writes are acknowledged early
        machine = self.state_machine
        assert isinstance(machine, SimMachine)
        proposal.done(proposal.index, machine.preview(proposal.data, proposal.index), None)


class MatchByIndex(ReplicaEngine):
    """A proposal is matched to whatever entry lands at its index, whatever its term: a
    write overwritten by a new leader is acknowledged with someone else's result."""

    def _answer(self, proposal: Proposal, entry: Entry, outcome: Outcome) -> None:
        super()._answer(proposal, Entry(index=entry.index, term=proposal.term), outcome)


class ForwardMatchBySeq(ReplicaEngine):
    """A forwarded write is matched by its sequence number alone, not by who forwarded it
    in which run: a follower answers its client with the result of another node's write
    that happens to carry the same number."""

    def _forwarded_here(self, origin: Origin) -> bool:
        return True


class RefuseForwardsOfThisTerm(ReplicaEngine):
    """Writes forwarded in the current term are answered "not applied" as soon as an entry
    of that term applies (an off-by-one of the superseded rule), although the leader of
    this term may still commit them."""

    def _refuse_superseded(self, applied_term: int) -> None:
        super()._refuse_superseded(applied_term + 1)


class InstallBeforeLog(ReplicaEngine):
    """A received snapshot goes into the state machine before the log records it: a crash
    in between leaves the state machine ahead of a log whose uncommitted tail conflicts
    with what it applied, and the restarted core counts that tail as committed."""

    def write(self, work: Work) -> None:
        rd = work.ready
        if rd.snapshot is not None and rd.snapshot.index > self.state_machine.applied_index:
            self.state_machine.restore(rd.snapshot)
        super().write(work)


class _LearnerAckCore(RawNode):
    """The core's commit rule counting learners' acks toward the voters' majority."""

    def _maybe_commit(self) -> bool:
        acked = sorted((pr.match for pr in self._prs.values()), reverse=True)
        return self.log.maybe_commit(acked[majority(len(self._voters)) - 1], self._term)


class LearnerQuorum(ReplicaEngine):
    """A learner's ack counts toward the commit majority (a core-level bug, planted through
    the engine's `_new_core` hook): with one voter down, the leader commits on its own
    ack plus a learner's, which no later leader need hold."""

    def _new_core(
        self, config: CoreConfig, storage: DurableStorage, rng: random.Random, applied: int
    ) -> RawNode:
        return _LearnerAckCore(config, storage, rng, self._log, applied=applied)


class MembershipWrongIndex(ReplicaEngine):
    """Each membership is recorded as taking effect at the last entry of its apply batch
    rather than at its own CONF_CHANGE entry: right only when the change ends the batch."""

    def _membership_changes(self, committed: Sequence[Entry]) -> dict[int, Membership | FailedPrecondition]:
        last = committed[-1].index
        return {
            i: attrs.evolve(m, index=last) if isinstance(m, Membership) else m
            for i, m in super()._membership_changes(committed).items()
        }


class _ConfIgnoringCore(RawNode):
    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        conf = self.conf_state
        return conf if conf_change_error(conf, cc) is not None else changed_conf(conf, cc)


class SkipCoreConfChange(ReplicaEngine):
    """The state machine records each applied change, but the core never switches to it
    (as if the engine skipped `core.apply_conf_change`): it keeps counting votes and acks
    with the configuration it started with."""

    def _new_core(
        self, config: CoreConfig, storage: DurableStorage, rng: random.Random, applied: int
    ) -> RawNode:
        return _ConfIgnoringCore(config, storage, rng, self._log, applied=applied)


class BootstrapCoreConfig(ReplicaEngine):
    """The core is built from the bootstrap configuration (the one the node was configured
    with), not from the membership the state machine holds as of its applied index: a
    node restarting from a snapshot past some change runs with the wrong voters."""

    def __init__(self, *, config: CoreConfig, **kw: Any) -> None:
        self._bootstrap = (config.voters, config.learners)
        super().__init__(config=config, **kw)

    def _new_core(
        self, config: CoreConfig, storage: DurableStorage, rng: random.Random, applied: int
    ) -> RawNode:
        voters, learners = self._bootstrap
        return super()._new_core(
            attrs.evolve(config, voters=voters, learners=learners), storage, rng, applied
        )


ENGINE_BUGS: dict[str, type[ReplicaEngine]] = {
    "learner-quorum": LearnerQuorum,
    "membership-wrong-index": MembershipWrongIndex,
    "skip-core-conf-change": SkipCoreConfChange,
    "bootstrap-core-config": BootstrapCoreConfig,
    "install-before-log": InstallBeforeLog,
    "skip-persist-before-vote": SkipPersistBeforeVote,
    "ack-before-commit": AckBeforeCommit,
    "match-by-index": MatchByIndex,
    "forward-match-by-seq": ForwardMatchBySeq,
    "refuse-forwards-of-this-term": RefuseForwardsOfThisTerm,
}
