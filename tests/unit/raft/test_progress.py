"""Per-follower flow control: Inflights and the Probe/Replicate/Snapshot state machine."""

from __future__ import annotations

import pytest

from ggap.consensus.raft.progress import Inflights, Progress, ProgressState


def test_inflights_bound_count_and_bytes() -> None:
    f = Inflights(3, max_bytes=100)
    f.add(1, 10)
    f.add(2, 10)
    assert not f.full()
    f.add(5, 10)
    assert f.full() and len(f) == 3
    f.free_le(2)
    assert len(f) == 1 and f.bytes == 10 and not f.full()
    f.add(6, 95)
    assert f.full()  # 105 bytes
    f.free_first_one()
    assert len(f) == 1 and f.bytes == 95
    with pytest.raises(ValueError):
        f.add(6, 1)  # indexes only grow
    f.reset()
    assert len(f) == 0 and f.bytes == 0


def new(match: int = 0, next: int = 1) -> Progress:
    return Progress(match=match, next=next, inflights=Inflights(2))


def test_probe_pauses_after_one_append_until_an_answer() -> None:
    pr = new(0, 5)
    assert not pr.is_paused()
    pr.sent_entries(7, 10)
    assert pr.is_paused() and pr.next == 5  # a probe does not move next
    assert pr.maybe_update(4)
    assert not pr.is_paused() and pr.match == 4


def test_replicate_moves_next_optimistically_until_inflights_are_full() -> None:
    pr = new(4, 5)
    pr.become_replicate()
    pr.sent_entries(6, 1)
    pr.sent_entries(8, 1)
    assert pr.next == 9 and pr.is_paused()
    pr.sent_entries(None, 0)  # an entry-less append (commit update) takes no slot
    assert len(pr.inflights) == 2
    assert pr.maybe_update(6)
    pr.inflights.free_le(6)
    assert not pr.is_paused()


def test_decrement_in_replicate_falls_back_to_match() -> None:
    pr = new(4, 5)
    pr.become_replicate()
    pr.sent_entries(9, 1)
    assert not pr.maybe_decr_to(3, 0)  # stale: below match
    assert pr.maybe_decr_to(7, 0)
    assert pr.next == 5


def test_decrement_in_probe_uses_the_hint_but_not_below_match() -> None:
    pr = new(2, 10)
    assert not pr.maybe_decr_to(5, 3)  # not the outstanding probe (next - 1 == 9)
    assert pr.maybe_decr_to(9, 6)
    assert pr.next == 7
    assert pr.maybe_decr_to(6, 0)
    assert pr.next == 3  # match + 1


def test_snapshot_state_is_paused_and_probes_after_it() -> None:
    pr = new(2, 3)
    pr.become_snapshot(50)
    assert pr.state is ProgressState.SNAPSHOT and pr.is_paused() and pr.next == 51
    pr.become_probe()
    assert pr.state is ProgressState.PROBE and pr.next == 51 and pr.pending_snapshot == 0
    pr.become_snapshot(50)
    pr.pending_snapshot = 0  # failed
    pr.become_probe()
    assert pr.next == 3
