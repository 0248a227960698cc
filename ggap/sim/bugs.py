"""Planted bugs: engine subclasses that each break one rule of the production engine.

They exist to prove that the simulator's checks catch a bug in `ReplicaEngine` itself
(tests/unit/test_sim.py pins a seed for each). Each overrides the one method that owns
the rule it breaks, so the override reads as the bug.
"""

from __future__ import annotations

from ggap.consensus.raft import Entry, Ready
from ggap.replica.engine import Outcome, Proposal, ReplicaEngine, Work
from ggap.sim.node import SimMachine


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
        machine = self.state_machine
        assert isinstance(machine, SimMachine)
        proposal.done(proposal.index, machine.preview(proposal.data), None)


class MatchByIndex(ReplicaEngine):
    """A proposal is matched to whatever entry lands at its index, whatever its term: a
    write overwritten by a new leader is acknowledged with someone else's result."""

    def _answer(self, proposal: Proposal, entry: Entry, outcome: Outcome) -> None:
        super()._answer(proposal, Entry(index=entry.index, term=proposal.term), outcome)


class InstallBeforeLog(ReplicaEngine):
    """A received snapshot goes into the state machine before the log records it: a crash
    in between leaves the state machine ahead of a log whose uncommitted tail conflicts
    with what it applied, and the restarted core counts that tail as committed."""

    def write(self, work: Work) -> None:
        rd = work.ready
        if rd.snapshot is not None and rd.snapshot.index > self.state_machine.applied_index:
            self.state_machine.restore(rd.snapshot)
        super().write(work)


ENGINE_BUGS: dict[str, type[ReplicaEngine]] = {
    "install-before-log": InstallBeforeLog,
    "skip-persist-before-vote": SkipPersistBeforeVote,
    "ack-before-commit": AckBeforeCommit,
    "match-by-index": MatchByIndex,
}
