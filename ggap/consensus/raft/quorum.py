"""Majority arithmetic, kept apart from the protocol so it can be checked on its own.

Only voters count. Learners never appear in the sets passed here; the caller filters them.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"  # neither side has a majority yet
    WON = "won"
    LOST = "lost"


def majority(n_voters: int) -> int:
    """Smallest number of voters that is more than half of them."""
    return n_voters // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """Largest index that a majority of voters have (a voter missing from `match` has 0).

    Sort the acknowledged indexes in descending order: the majority-th one is held by at
    least a majority (itself and everything before it) and no larger index is.
    """
    if not voters:
        raise ValueError("a configuration without voters has no commit index")
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> VoteResult:
    """Tally an election: votes from non-voters are ignored, missing voters are undecided."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[int], ids: Iterable[int]) -> bool:
    """Whether `ids` contains a majority of `voters` (used for CheckQuorum and ReadIndex acks)."""
    present = set(ids)
    return sum(1 for v in voters if v in present) >= majority(len(voters))
