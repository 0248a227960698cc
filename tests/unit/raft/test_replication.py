"""Log replication and commitment (Raft §5.3, §5.4.2), flow control, learners, snapshots."""

from __future__ import annotations

import random

import pytest

from ggap.consensus.raft import (
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    RawNode,
    Role,
)
from tests.unit.raft.harness import Cluster, cfg, drain, persist

MT = MessageType


def log_with_terms(terms: list[int]) -> list[Entry]:
    return [Entry(index=i, term=t, data=b"%d" % i) for i, t in enumerate(terms, 1)]


def test_noop_is_appended_and_committed_on_election() -> None:
    c = Cluster([1, 2, 3], seed=1)
    c.elect(1)
    for i in (1, 2, 3):
        assert [(e.index, e.term, e.kind) for e in c.applied[i]] == [(1, 1, EntryKind.NOOP)]


def test_entries_commit_on_a_majority_and_laggards_catch_up() -> None:
    c = Cluster([1, 2, 3, 4, 5], seed=2)
    c.elect(1)
    c.isolate(4)
    c.isolate(5)
    c.propose(1, b"a")
    assert c[1].status().commit == 2  # 3 of 5
    c.isolate(3)
    c.propose(1, b"b")
    assert c[1].status().commit == 2  # 2 of 5 is not enough
    c.heal()
    c.tick(n=2)
    assert c[1].status().commit == 3
    for i in c.nodes:
        assert c.log_of(i) == c.log_of(1)
        assert [e.data for e in c.applied[i]] == [b"", b"a", b"b"]


def test_leader_counts_its_own_entry_only_once_durable() -> None:
    c = Cluster([1, 2, 3], seed=3)
    c.elect(1)
    leader = c[1]
    leader.propose(b"x")
    rd = leader.ready()
    (to2,) = [m for m in rd.messages if m.type is MT.APPEND and m.to == 2]
    c[2].step(to2)
    (ack,) = drain(c[2], c.storages[2])[0].messages_after_persist
    leader.step(ack)
    assert leader.status().commit == 1  # 2 has it, but our own copy is not durable yet
    persist(c.storages[1], rd)
    leader.advance(rd)
    assert leader.status().commit == 2
    assert [e.data for e in leader.ready().committed] == [b"x"]


def test_old_term_entries_are_not_committed_by_counting() -> None:
    """§5.4.2 / Figure 8: an entry from an earlier term commits only under one of ours."""
    st = MemoryStorage([Entry(1, 1), Entry(2, 2)], HardState(term=2, commit=1))
    n = RawNode(cfg(1, [1, 2, 3], pre_vote=False), st, random.Random(0))
    n.campaign()
    drain(n, st)
    n.step(Message(MT.VOTE_RESP, to=1, frm=2, term=3))
    assert n.role is Role.LEADER
    drain(n, st)  # the NOOP at index 3 (term 3) is durable here
    n.step(Message(MT.APPEND_RESP, to=1, frm=2, term=3, index=2))
    n.step(Message(MT.APPEND_RESP, to=1, frm=3, term=3, index=2))
    assert n.status().commit == 1  # index 2 is on all three, but it is from term 2
    n.step(Message(MT.APPEND_RESP, to=1, frm=2, term=3, index=3))
    assert n.status().commit == 3


# Raft paper Figure 7: the leader's log and six followers that missed, or have extra, entries.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIG7_FOLLOWERS))
def test_divergent_follower_logs_converge_to_the_leaders(name: str) -> None:
    follower = FIG7_FOLLOWERS[name]
    storages = {
        1: MemoryStorage(log_with_terms(FIG7_LEADER), HardState(term=7)),
        2: MemoryStorage(log_with_terms(follower), HardState(term=max(follower))),
        3: MemoryStorage(log_with_terms(FIG7_LEADER), HardState(term=7)),
    }
    c = Cluster([1, 2, 3], seed=4, storages=storages)
    c.elect(1)
    assert c[1].term == 8
    c.propose(1, b"last")
    assert c.log_of(2) == c.log_of(1) == [(i, t) for i, t in enumerate([*FIG7_LEADER, 8, 8], 1)]
    assert [e.data for e in c.applied[2]] == [e.data for e in c.applied[1]]
    assert c[2].status().commit == 12


@pytest.mark.parametrize(
    ("follower_terms", "what"),
    [
        ([1] * 5 + [2] * 50, "same length, other term"),
        ([1] * 5, "shorter"),
        ([1] * 5 + [2] * 150, "longer"),
    ],
)
def test_backtracking_by_term_takes_one_round_trip(follower_terms: list[int], what: str) -> None:
    leader_terms = [1] * 5 + [3] * 50
    storages = {
        1: MemoryStorage(log_with_terms(leader_terms), HardState(term=3)),
        2: MemoryStorage(log_with_terms(follower_terms), HardState(term=3)),
        3: MemoryStorage(log_with_terms(leader_terms), HardState(term=3)),
    }
    c = Cluster([1, 2, 3], seed=5, storages=storages)
    c.elect(1)
    rejections = [m for m in c.sent_of(MT.APPEND_RESP, frm=2) if m.reject]
    # Going back one index per round trip would take up to 50 rejections.
    assert len(rejections) == 1, what
    assert c.log_of(2) == c.log_of(1)


def test_replicate_state_pipelines_up_to_max_inflight_msgs() -> None:
    c = Cluster([1, 2, 3], seed=6, max_inflight_msgs=3)
    c.elect(1)
    assert c[1].status().progress[2].state is ProgressState.REPLICATE
    c.cut.add((2, 1))  # 2 receives everything, its acks are lost
    before = len(c.sent_of(MT.APPEND, frm=1, to=2))
    for k in range(10):
        c.propose(1, b"%d" % k)
    sent = [m for m in c.sent_of(MT.APPEND, frm=1, to=2)[before:] if m.entries]
    assert [len(m.entries) for m in sent] == [1, 1, 1]  # (plus entry-less commit updates)
    assert c[1].status().commit == 11  # 1 and 3 are a majority
    c.heal()
    c.tick(n=3)
    assert c.log_of(2) == c.log_of(1)


def test_inflight_bytes_bound_the_pipeline() -> None:
    c = Cluster([1, 2, 3], seed=6, max_inflight_bytes=250, max_size_per_msg=100)
    c.elect(1)
    c.cut.add((2, 1))
    before = len(c.sent_of(MT.APPEND, frm=1, to=2))
    for k in range(10):
        c.propose(1, bytes([k]) * 100)
    sent = [m for m in c.sent_of(MT.APPEND, frm=1, to=2)[before:] if m.entries]
    assert len(sent) == 3  # 300 bytes >= 250


def test_probe_state_sends_one_append_per_heartbeat() -> None:
    c = Cluster([1, 2, 3], seed=7)
    c.elect(1)
    c.isolate(3)
    c[1].report_unreachable(3)
    assert c[1].status().progress[3].state is ProgressState.PROBE
    before = len(c.sent_of(MT.APPEND, frm=1, to=3))
    for k in range(5):
        c.propose(1, b"%d" % k)
    assert len(c.sent_of(MT.APPEND, frm=1, to=3)) - before == 1
    c.tick([1], n=3)  # no heartbeat response comes back, so no further probe
    assert len(c.sent_of(MT.APPEND, frm=1, to=3)) - before == 1
    c.heal()
    c.tick([1])
    assert c[1].status().progress[3].state is ProgressState.REPLICATE
    assert c.log_of(3) == c.log_of(1)


def test_appends_are_batched_up_to_max_size_per_msg() -> None:
    c = Cluster([1, 2, 3], seed=8, max_size_per_msg=250)
    c.elect(1)
    c.isolate(3)
    for k in range(10):
        c.propose(1, bytes([k]) * 100)
    c.heal()
    before = len(c.sent)
    c.tick(n=3)
    to3 = [m for m in c.sent[before:] if m.type is MT.APPEND and m.to == 3 and m.entries]
    assert to3 and all(len(m.entries) <= 2 for m in to3)
    assert c.log_of(3) == c.log_of(1)


def test_learner_gets_the_log_but_does_not_count() -> None:
    c = Cluster([1, 2, 3], learners=[4], seed=9)
    c.elect(1)
    c.propose(1, b"a")
    assert c.log_of(4) == c.log_of(1)
    assert [e.data for e in c.applied[4]] == [b"", b"a"]
    assert c[4].role is Role.LEARNER and c[4].leader == 1
    c.isolate(2)
    c.isolate(3)
    c.cut -= {(1, 4), (4, 1)}
    c.propose(1, b"b")
    status = c[1].status()
    assert status.progress[4].match == 3  # the learner has it...
    assert status.commit == 2  # ...but only voters make a majority


def test_snapshot_is_sent_to_a_follower_behind_the_compacted_log() -> None:
    c = Cluster([1, 2, 3], seed=10)
    c.elect(1)
    c.isolate(3)
    for k in range(10):
        c.propose(1, b"%d" % k)
    assert c[1].status().applied == 11
    c.compact(1, 11)
    c.heal()
    mark = len(c.readies)
    c.tick(n=3)
    (snap,) = c.sent_of(MT.SNAPSHOT, frm=1, to=3)
    assert snap.snapshot is not None and (snap.snapshot.index, snap.snapshot.term) == (11, 1)
    assert any(rd.snapshot == snap.snapshot for i, rd in c.readies if i == 3)
    st3 = c.storages[3]
    assert st3.first_index() == 12 and c[3].status().applied == 11 and c[3].status().commit == 11
    assert len(c.applied[3]) == 11 and not any(rd.committed for i, rd in c.readies[mark:] if i == 3)
    assert c[1].status().progress[3].state is ProgressState.REPLICATE
    c.propose(1, b"after")
    assert c.log_of(3) == c.log_of(1)[-1:] == [(12, 1)]
    assert c.applied[3][-1].data == b"after"


def test_failed_snapshot_is_retried_after_report_snapshot() -> None:
    c = Cluster([1, 2, 3], seed=11)
    c.elect(1)
    c.isolate(3)
    for k in range(5):
        c.propose(1, b"%d" % k)
    c.compact(1, 6)
    c.heal()
    c.drop = lambda m: m.type is MT.SNAPSHOT
    c.report_snapshots = False  # the driver has not finished sending it
    c.tick(n=3)
    assert len(c.sent_of(MT.SNAPSHOT, to=3)) == 1  # then paused in SNAPSHOT state
    assert c[1].status().progress[3].state is ProgressState.SNAPSHOT
    c.drop = lambda m: False
    c[1].report_snapshot(3, ok=False)
    assert c[1].status().progress[3].state is ProgressState.PROBE
    c.report_snapshots = True
    c.tick(n=3)
    assert len(c.sent_of(MT.SNAPSHOT, to=3)) == 2
    assert c[3].status().commit == 6 and c[1].status().progress[3].state is ProgressState.REPLICATE


def test_restart_keeps_log_commit_and_skips_applied_entries() -> None:
    c = Cluster([1, 2, 3], seed=12)
    c.elect(1)
    c.propose(1, b"a")
    for i in (1, 2, 3):
        applied = c[i].status().applied
        c.nodes[i] = RawNode(cfg(i, [1, 2, 3]), c.storages[i], random.Random(i), applied=applied)
        assert c[i].status().commit == 2 and c[i].term == 1
        assert not c[i].ready().committed
    c.tick(n=40)
    (leader,) = c.leaders()
    c.propose(leader, b"b")
    assert [e.data for e in c.applied[2] if e.kind is EntryKind.NORMAL] == [b"a", b"b"]


def test_stepping_between_ready_and_advance_hands_out_each_entry_once() -> None:
    st = MemoryStorage()
    n = RawNode(cfg(2, [1, 2]), st, random.Random(0))
    n.step(Message(MT.APPEND, to=2, frm=1, term=1, index=0, log_term=0, entries=(Entry(1, 1),)))
    rd1 = n.ready()
    n.step(Message(MT.APPEND, to=2, frm=1, term=1, index=1, log_term=1, entries=(Entry(2, 1),), commit=2))
    assert n.has_ready()
    rd2 = n.ready()
    assert [e.index for e in rd1.entries] == [1] and [e.index for e in rd2.entries] == [2]
    assert [e.index for e in rd2.committed] == [1, 2]  # durable once rd1 and rd2 are written
    for rd in (rd1, rd2):
        persist(st, rd)
        n.advance(rd)
    assert not n.has_ready() and n.status().applied == 2 and st.last_index() == 2


def test_follower_overwrites_an_uncommitted_in_progress_suffix() -> None:
    st = MemoryStorage()
    n = RawNode(cfg(2, [1, 2, 3]), st, random.Random(0))
    n.step(Message(MT.APPEND, to=2, frm=1, term=1, index=0, entries=(Entry(1, 1), Entry(2, 1))))
    rd1 = n.ready()
    # A new leader at term 2 replaces entry 2 before rd1 is durable.
    n.step(Message(MT.APPEND, to=2, frm=3, term=2, index=1, log_term=1, entries=(Entry(2, 2),)))
    rd2 = n.ready()
    assert [(e.index, e.term) for e in rd2.entries] == [(2, 2)]
    for rd in (rd1, rd2):
        persist(st, rd)
        n.advance(rd)
    assert [(e.index, e.term) for e in st.entries(1, 3, 1 << 20)] == [(1, 1), (2, 2)]
    assert not n.has_ready()


def test_restart_trusts_applied_over_a_lagging_stored_commit() -> None:
    """The commit index needs no fsync of its own, so after a crash it may lag the state machine."""
    st = MemoryStorage([Entry(1, 1), Entry(2, 1), Entry(3, 1)], HardState(term=1, vote=1, commit=1))
    n = RawNode(cfg(1, [1, 2, 3]), st, random.Random(0), applied=3)
    assert n.status().commit == 3 and n.status().applied == 3
    assert not n.ready().committed
    with pytest.raises(ValueError):
        RawNode(cfg(1, [1, 2, 3]), st, random.Random(0), applied=4)


def test_a_follower_that_lost_its_log_is_probed_again_and_repaired() -> None:
    """A follower restarted with a wiped data dir holds less than it acknowledged; with no
    new writes the leader would never notice (heartbeats say nothing of the log) unless
    heartbeat responses carry the follower's last index."""
    c = Cluster([1, 2, 3], seed=3)
    c.elect(1)
    for data in (b"a", b"b", b"c"):
        c.propose(1, data)
    c.stabilize()
    assert c[1].status().progress[3].match == 4
    c.storages[3] = MemoryStorage()  # wiped
    c.applied[3] = []
    c.nodes.pop(3)
    c.start(3)
    c.tick(n=3)
    c.stabilize()
    assert c.log_of(3) == c.log_of(1)
    assert [e.data for e in c.applied[3]] == [b"", b"a", b"b", b"c"]
