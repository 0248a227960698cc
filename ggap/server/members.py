"""Membership requests on the leader: the checks the Raft core cannot make, and auto-promotion.

The core refuses a change that is invalid in its configuration or that overlaps another
(one change at a time, FailedPrecondition from `Consensus.change_membership`). It cannot
tell whether a learner has caught up, or whether the voters left after a removal still
have a live quorum: `MemberManager` checks those against the leader's view
(`Consensus.member_progress()`) before it proposes anything. Each of its request methods
raises NotLeader unless this node leads, because that view means something only there;
ClusterService forwards such a request to the leader (`NodeState.on_leader`).

The leader's "last index" is taken to be its commit index (`RoleInfo.commit_index`): the
Consensus protocol does not expose the last log index, and the two differ only by what is
in flight, so a learner's lag is `commit_index - match_index`.

Auto-promotion (MemberAdd with `learner = false`): the leader that accepted the addition
remembers the wish in memory and `run` promotes the learner once it is caught up. The wish
is not replicated: if leadership moves first, the new leader does not know it, and the
learner stays a learner until someone runs `ggap members promote ID` (a node started with
`ggap node --join ... --auto-promote` asks again by itself). It is honest about that
rather than clever: Status marks the learners this leader will promote (`auto_promote`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs
import trio

from ggap.config.peers import addr_problem, split_addr
from ggap.consensus.raft.quorum import has_quorum, majority
from ggap.replica import Consensus
from ggap.replica.api import RoleInfo
from ggap.types import (
    MAX_MEMBER_ID,
    ChangeKind,
    FailedPrecondition,
    GgapError,
    InvalidArgument,
    Member,
    MemberChange,
    MemberProgress,
    Membership,
    NotLeader,
)

log = logging.getLogger(__name__)


def check_member_id(value: int, field: str = "id") -> int:
    """A member id the whole stack can carry (1..2**63-1); INVALID_ARGUMENT otherwise."""
    if not 0 < value <= MAX_MEMBER_ID:
        raise InvalidArgument(f"{field} must be 1..{MAX_MEMBER_ID}, got {value}")
    return value


def check_member_addr(value: str, field: str) -> str:
    """An address other nodes dial: host:port with port 1..65535; INVALID_ARGUMENT otherwise."""
    problem = addr_problem(value, min_port=1)
    if problem is not None:
        raise InvalidArgument(f"{field}: {problem}")
    return value


def _same_addr(a: str, b: str) -> bool:
    """Both are host:port and name the same endpoint (host case and IPv6 brackets aside)."""
    if not a or not b:  # a bootstrap member's client address may be unknown ("")
        return False
    (ha, pa), (hb, pb) = split_addr(a), split_addr(b)
    return pa == pb and ha.lower() == hb.lower()


def address_clash(
    membership: Membership, new: Member, reported: Mapping[int, str] | None = None
) -> str | None:
    """Why `new` cannot join `membership` (its id or an address is taken), or None.

    `reported`: member id -> the client address that member reports of itself. It covers
    the members whose client address the membership does not record (the bootstrap ones)."""
    if membership.get(new.id) is not None:
        return f"{new.id} is already a member"
    reported = reported or {}
    for m in membership.members:
        taken = (m.client_addr, reported.get(m.id, ""), m.cluster_addr)
        for addr in (new.client_addr, new.cluster_addr):
            if any(_same_addr(addr, used) for used in taken):
                return f"{addr} is already used by member {m.id}"
    return None


@attrs.frozen
class LeaderView:
    """What the leader knows when it decides: its role, the applied membership and every
    member's replication progress."""

    role: RoleInfo
    membership: Membership
    progress: dict[int, MemberProgress]

    def behind(self, member_id: int) -> int:
        """Entries `member_id` lacks of the leader's commit index (see the module docstring)."""
        if member_id == self.role.member_id:
            return 0
        p = self.progress.get(member_id)
        return max(self.role.commit_index - (p.match_index if p is not None else 0), 0)

    def active(self, member_id: int) -> bool:
        """Heard from within the last election timeout; the leader always counts itself."""
        if member_id == self.role.member_id:
            return True
        p = self.progress.get(member_id)
        return p is not None and p.recent_active


class MemberManager:
    """Decides membership requests on the leader and promotes caught-up learners.

    `run` must be started in the node's nursery; it only acts while this node leads and
    some learner is waiting for auto-promotion."""

    def __init__(self, consensus: Consensus, *, max_lag_entries: int, auto_promote_interval_s: float) -> None:
        """
        Args:
            max_lag_entries: a learner is caught up when it lacks at most this many entries
                of the leader's commit index (`server.promote_max_lag_entries`).
            auto_promote_interval_s: how often `run` looks at the waiting learners
                (`server.auto_promote_interval_ms`).
        """
        if max_lag_entries < 0 or not auto_promote_interval_s > 0:
            raise ValueError(
                "max_lag_entries must be >= 0 and auto_promote_interval_s positive; got "
                f"{max_lag_entries!r}, {auto_promote_interval_s!r}"
            )
        self._consensus = consensus
        self.max_lag_entries = max_lag_entries
        self.auto_promote_interval_s = auto_promote_interval_s
        self._wishes: set[int] = set()
        self._deferring = False  # the last auto-promotion round was deferred (logged once)

    @property
    def auto_promote(self) -> frozenset[int]:
        """Learners this node will promote once caught up, while it leads."""
        return frozenset(self._wishes)

    def leader_view(self) -> LeaderView:
        """This node's view for a decision; NotLeader (so the request is forwarded) unless it leads."""
        role = self._consensus.role()
        if role.role != "leader":
            raise NotLeader("this node is not the leader", leader_id=role.leader_id or None)
        return LeaderView(role, self._consensus.membership(), self._consensus.member_progress())

    # -- the requests ----------------------------------------------------------------------

    async def add_learner(self, member: Member, *, auto_promote: bool) -> Membership:
        """Add `member` as a learner, whatever it asks: a voter with no data would count
        towards every quorum without being able to help one. With `auto_promote` this
        leader promotes it once it has caught up (`run`)."""
        view = self.leader_view()
        reported = {p.id: p.client_addr for p in view.progress.values() if p.client_addr}
        clash = address_clash(view.membership, member, reported)
        if clash is not None:
            raise FailedPrecondition(clash)
        learner = attrs.evolve(member, learner=True)
        after = await self._consensus.change_membership(MemberChange(ChangeKind.ADD_LEARNER, learner))
        if auto_promote:
            # Only after the addition applied: `run` drops wishes for ids that are not learners.
            self._wishes.add(member.id)
        return after

    async def promote(self, member_id: int) -> Membership:
        """Learner -> voter, refused (FailedPrecondition saying how far behind it is) while
        it lags or has gone quiet: a voter that cannot keep up weakens every quorum."""
        self._check_promotable(self.leader_view(), member_id)
        after = await self._consensus.change_membership(MemberChange(ChangeKind.PROMOTE, Member(member_id)))
        self._wishes.discard(member_id)
        return after

    async def remove(self, member_id: int, *, force: bool) -> Membership:
        """Remove a learner, or a voter if the voters left still have a live quorum (or
        `force`). Removing the leader itself first hands leadership to the most caught-up
        live voter, when there is one, and then raises NotLeader so the removal is
        forwarded to the new leader (the caller's forwarding path does that); without such
        a voter the leader proposes its own removal and steps down once it applies it."""
        view = self.leader_view()
        member = view.membership.get(member_id)
        if member is None:
            raise FailedPrecondition(f"{member_id} is not a member")
        remaining = [v for v in view.membership.voters if v != member_id]
        if not member.learner:
            if not remaining:
                raise FailedPrecondition(f"member {member_id} is the last voter; a cluster cannot lose it")
            live = [v for v in remaining if view.active(v)]
            if not force and not has_quorum(remaining, live):
                raise FailedPrecondition(
                    f"removing voter {member_id} would leave {len(live)} live of {len(remaining)} "
                    f"voters, fewer than the {majority(len(remaining))} a quorum needs "
                    "(force removes it anyway)"
                )
        if member_id == view.role.member_id:
            successor = self._successor(view, remaining)
            if successor is not None:
                await self._consensus.transfer_leader(successor)
                raise NotLeader(
                    f"handed leadership to {successor} before removing member {member_id}",
                    leader_id=successor,
                )
        after = await self._consensus.change_membership(MemberChange(ChangeKind.REMOVE, Member(member_id)))
        self._wishes.discard(member_id)
        return after

    async def transfer(self, target: int) -> None:
        """Hand leadership to voter `target` (a no-op when this node is `target`)."""
        view = self.leader_view()
        if target == view.role.member_id:
            return
        member = view.membership.get(target)
        if member is None:
            raise FailedPrecondition(f"{target} is not a member")
        if member.learner:
            raise FailedPrecondition(
                f"member {target} is a learner; only a voter can lead (promote it first)"
            )
        if not view.active(target):
            raise FailedPrecondition(f"voter {target} has not answered the leader within an election timeout")
        await self._consensus.transfer_leader(target)

    def _check_promotable(self, view: LeaderView, member_id: int) -> None:
        member = view.membership.get(member_id)
        if member is None:
            raise FailedPrecondition(f"{member_id} is not a member")
        if not member.learner:
            raise FailedPrecondition(f"member {member_id} is already a voter")
        behind = view.behind(member_id)
        if behind > self.max_lag_entries:
            raise FailedPrecondition(
                f"learner {member_id} is {behind} entries behind the leader (limit {self.max_lag_entries})"
            )
        if not view.active(member_id):
            raise FailedPrecondition(
                f"learner {member_id} has not answered the leader within an election timeout"
            )

    def _successor(self, view: LeaderView, voters: list[int]) -> int | None:
        """Who should lead before this leader leaves: a live voter within the promotion lag
        bound, the most caught up (lowest id on ties); None if there is none."""
        ready = [v for v in voters if view.active(v) and view.behind(v) <= self.max_lag_entries]
        return min(ready, key=lambda v: (view.behind(v), v), default=None)

    # -- auto-promotion --------------------------------------------------------------------

    async def run(self) -> None:
        """Every `auto_promote_interval_s`, while this node leads and learners wait: promote
        the first caught-up one. A refusal (another change in progress, leadership lost, a
        learner still behind) waits for the next round; nothing here is fatal."""
        while True:
            await trio.sleep(self.auto_promote_interval_s)
            if not self._wishes or self._consensus.role().role != "leader":
                continue
            try:
                await self.promote_caught_up()
            except GgapError as exc:
                # Once per episode, not every round: a learner catching up is one event.
                log.log(
                    logging.DEBUG if self._deferring else logging.INFO, "auto-promotion deferred: %s", exc
                )
                self._deferring = True
            else:
                self._deferring = False

    async def promote_caught_up(self) -> int | None:
        """One round: forget wishes for ids that are no longer learners (promoted by hand,
        removed); promote the first caught-up learner, one change at a time. Returns its id."""
        view = self.leader_view()
        for member_id in sorted(self._wishes):
            member = view.membership.get(member_id)
            if member is None or not member.learner:
                self._wishes.discard(member_id)
                continue
            try:
                self._check_promotable(view, member_id)
            except FailedPrecondition:
                continue
            await self.promote(member_id)
            log.info("auto-promoted learner %d to voter", member_id)
            return member_id
        return None
