"""Cluster membership as the replicated state records it: who the members are, which of
them vote, and where to reach them."""

from __future__ import annotations

import enum

import attrs

# Member ids travel as uint64 in the API but as signed 64-bit integers in the log's
# conf-change encoding, so 1..2**63-1 is what every layer can carry.
MAX_MEMBER_ID = (1 << 63) - 1


@attrs.frozen(slots=True)
class Member:
    id: int
    client_addr: str = ""  # host:port for clients (where writes are forwarded)
    cluster_addr: str = ""  # host:port for Raft peers
    learner: bool = False


def _sorted(members: tuple[Member, ...] | list[Member]) -> tuple[Member, ...]:
    return tuple(sorted(members, key=lambda m: m.id))


@attrs.frozen(slots=True)
class Membership:
    """The configuration in effect after log index `index` (0: the bootstrap one)."""

    members: tuple[Member, ...] = attrs.field(converter=_sorted)
    index: int = 0

    @property
    def voters(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members if not m.learner)

    @property
    def learners(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members if m.learner)

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members)

    def get(self, member_id: int) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None


class ChangeKind(enum.Enum):
    ADD_LEARNER = "add_learner"  # a new member joins as a learner (no vote, no quorum)
    PROMOTE = "promote"  # a learner becomes a voter
    REMOVE = "remove"  # a member (voter or learner) leaves


@attrs.frozen(slots=True)
class MemberChange:
    """One single-server membership change, as a client asks for it. For ADD_LEARNER,
    `member` carries the new member's addresses; otherwise only its id counts."""

    kind: ChangeKind
    member: Member


@attrs.frozen(slots=True)
class MemberProgress:
    """How far a member is, as this node (the leader, to be meaningful) sees it."""

    id: int
    learner: bool
    match_index: int  # highest log index known replicated to it (leader's view)
    applied_index: int  # what it last reported applying (0: unknown)
    recent_active: bool  # heard from within the last election timeout (leader's view)
    # The client address the member reports of itself ("" not heard yet); the applied
    # membership may not know it (a bootstrap member: --peers names cluster addresses only).
    client_addr: str = ""
