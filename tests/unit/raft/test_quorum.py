"""Majority arithmetic, checked by hand and against a dumb alternative on random inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ggap.consensus.raft.quorum import VoteResult, committed_index, has_quorum, vote_result


def test_committed_index_examples() -> None:
    assert committed_index([1], {1: 5}) == 5
    assert committed_index([1, 2, 3], {1: 5, 2: 3, 3: 1}) == 3
    assert committed_index([1, 2, 3], {1: 5}) == 0
    assert committed_index([1, 2, 3, 4], {1: 9, 2: 9, 3: 4, 4: 1}) == 4  # 3 of 4 needed
    with pytest.raises(ValueError):
        committed_index([], {})


def test_vote_result_examples() -> None:
    assert vote_result([1, 2, 3], {1: True}) is VoteResult.PENDING
    assert vote_result([1, 2, 3], {1: True, 2: True}) is VoteResult.WON
    assert vote_result([1, 2, 3], {1: True, 2: False, 3: False}) is VoteResult.LOST
    assert vote_result([1, 2, 3, 4], {1: True, 2: True, 3: False}) is VoteResult.PENDING
    assert vote_result([1, 2, 3, 4], {3: False, 4: False}) is VoteResult.LOST
    assert vote_result([1, 2, 3], {7: True, 8: True, 1: True}) is VoteResult.PENDING  # non-voters


def dumb_committed(voters: set[int], match: dict[int, int]) -> int:
    """The largest index held by more than half of the voters, by trying every candidate."""
    best = 0
    for cand in {0, *match.values()}:
        holders = sum(1 for v in voters if match.get(v, 0) >= cand)
        if 2 * holders > len(voters):
            best = max(best, cand)
    return best


def dumb_vote(voters: set[int], votes: dict[int, bool]) -> VoteResult:
    yes = sum(1 for v in voters if votes.get(v) is True)
    no = sum(1 for v in voters if votes.get(v) is False)
    if 2 * yes > len(voters):
        return VoteResult.WON
    if 2 * (len(voters) - no) <= len(voters):
        return VoteResult.LOST
    return VoteResult.PENDING


ids = st.integers(min_value=1, max_value=9)


@settings(max_examples=300, deadline=None)
@given(st.sets(ids, min_size=1, max_size=7), st.dictionaries(ids, st.integers(0, 20)))
def test_committed_index_matches_dumb(voters: set[int], match: dict[int, int]) -> None:
    assert committed_index(voters, match) == dumb_committed(voters, match)


@settings(max_examples=300, deadline=None)
@given(st.sets(ids, min_size=1, max_size=7), st.dictionaries(ids, st.booleans()))
def test_vote_result_matches_dumb(voters: set[int], votes: dict[int, bool]) -> None:
    assert vote_result(voters, votes) is dumb_vote(voters, votes)


@settings(max_examples=200, deadline=None)
@given(st.sets(ids, min_size=1, max_size=7), st.sets(ids))
def test_has_quorum_matches_dumb(voters: set[int], present: set[int]) -> None:
    assert has_quorum(voters, present) == (2 * len(voters & present) > len(voters))
