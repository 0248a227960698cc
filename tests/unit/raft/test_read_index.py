"""ReadIndex (Raft thesis §6.4): batched heartbeat rounds, leader-only, term-committed first."""

from __future__ import annotations

import random

from ggap.consensus.raft import MemoryStorage, MessageType, RawNode, ReadState, Role
from tests.unit.raft.harness import Cluster, cfg, drain

MT = MessageType


def read_rounds(c: Cluster, since: int = 0) -> set[bytes]:
    return {m.context for m in c.sent[since:] if m.type is MT.HEARTBEAT and m.context}


def test_queued_reads_share_one_heartbeat_round() -> None:
    c = Cluster([1, 2, 3], seed=1)
    c.elect(1)
    c.propose(1, b"x")
    before = len(c.sent)
    for k in range(5):
        assert c[1].read_index(b"r%d" % k)
    c.stabilize()
    assert len(read_rounds(c, before)) == 1
    assert len([m for m in c.sent[before:] if m.type is MT.HEARTBEAT]) == 2  # one per follower
    assert c.read_states[1] == [ReadState(index=2, context=b"r%d" % k) for k in range(5)]


def test_reads_arriving_during_a_round_join_the_next_one() -> None:
    c = Cluster([1, 2, 3], seed=2)
    c.elect(1)
    before = len(c.sent)
    c[1].read_index(b"a")
    c.process(1)  # round 1 is on the wire
    c[1].read_index(b"b")
    c[1].read_index(b"c")
    c.stabilize()
    rounds = [m.context for m in c.sent[before:] if m.type is MT.HEARTBEAT and m.context]
    assert len(set(rounds)) == 2 and len(rounds) == 4
    assert [r.context for r in c.read_states[1]] == [b"a", b"b", b"c"]


def test_no_read_before_the_leader_commits_in_its_term() -> None:
    c = Cluster([1, 2, 3], seed=3, check_quorum=False)
    c.elect(1)
    c.propose(1, b"x")
    c.drop = lambda m: m.type is MT.APPEND  # the next leader's NOOP cannot commit
    c.elect(2)
    assert c[2].status().commit == 2  # committed in term 1, which proves nothing about term 2
    before = len(c.sent)
    assert c[2].read_index(b"early")
    c.tick([2], n=3)
    assert c.read_states[2] == []
    assert not read_rounds(c, before)  # not even a round was started
    c.drop = lambda m: False
    c.tick([2], n=2)
    (rs,) = c.read_states[2]
    assert rs == ReadState(index=3, context=b"early")  # NOOP 1, "x" 2, the new NOOP 3


def test_follower_read_goes_through_the_leader() -> None:
    c = Cluster([1, 2, 3], seed=4)
    c.elect(1)
    c.propose(1, b"x")
    assert c[2].read_index(b"f")
    c.stabilize()
    assert c.sent_of(MT.READ_INDEX, frm=2, to=1)
    assert c.read_states[2] == [ReadState(index=2, context=b"f")]
    assert c.read_states[1] == []


def test_read_without_a_leader_is_dropped() -> None:
    c = Cluster([1, 2, 3], seed=5)
    assert not c[2].read_index(b"lost")
    c.stabilize()
    assert c.sent == []


def test_deposed_leaders_pending_reads_never_complete() -> None:
    c = Cluster([1, 2, 3], seed=6)
    c.elect(1)
    c.isolate(1)
    assert c[1].read_index(b"stale")
    c.tick([1], n=20)  # CheckQuorum makes it step down
    assert c[1].role is Role.FOLLOWER
    c.tick([2, 3], n=40)
    c.heal()
    c.tick(n=5)
    assert all(rs.context != b"stale" for rs in c.read_states[1])
    assert c.read_states[1] == []


def test_learner_acks_do_not_confirm_a_read() -> None:
    c = Cluster([1, 2, 3], learners=[4], seed=7)
    c.elect(1)
    c.isolate(2)
    c.isolate(3)
    c.cut -= {(1, 4), (4, 1)}
    c[1].read_index(b"r")
    c.stabilize()
    c.tick([1, 4], n=3)
    assert c.read_states[1] == []


def test_single_voter_answers_at_once_after_its_first_commit() -> None:
    st = MemoryStorage()
    n = RawNode(cfg(1, [1]), st, random.Random(0))
    n.campaign()
    n.advance(n.ready())  # leader now; the NOOP is not committed yet
    assert n.role is Role.LEADER
    assert n.read_index(b"early")
    readies = drain(n, st)
    assert [rs for rd in readies for rs in rd.read_states] == [ReadState(index=1, context=b"early")]
    n.read_index(b"now")
    rd = n.ready()
    assert rd.read_states == (ReadState(index=1, context=b"now"),) and not rd.messages
