"""Leader election (Raft §5.2, §5.4.1), PreVote and CheckQuorum (thesis §9.6), persistence."""

from __future__ import annotations

import random

import pytest

from ggap.consensus.raft import (
    CAMPAIGN_TRANSFER,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Role,
)
from ggap.consensus.raft.types import Entry
from tests.unit.raft.harness import Cluster, cfg, drain

MT = MessageType


def test_single_node_becomes_leader_only_after_its_vote_is_durable() -> None:
    st = MemoryStorage()
    n = RawNode(cfg(1, [1]), st, random.Random(0))
    n.campaign()
    assert n.role is Role.CANDIDATE  # pre-vote passed at once; its own vote is not durable yet
    rd = n.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0) and rd.must_sync
    n.advance(rd)
    assert n.role is Role.LEADER
    readies = drain(n, st)
    assert n.status().commit == 1
    committed = [e for rd in readies for e in rd.committed]
    assert [(e.index, e.term, e.kind) for e in committed] == [(1, 1, EntryKind.NOOP)]


def test_three_nodes_elect_exactly_one_leader_by_ticking() -> None:
    c = Cluster([1, 2, 3], seed=7)
    for _ in range(40):
        c.tick()
        if c.leaders():
            break
    assert len(c.leaders()) == 1
    leader = c.leaders()[0]
    assert {n.term for n in c.nodes.values()} == {1}
    assert all(n.leader == leader for n in c.nodes.values())


@pytest.mark.parametrize("seed", range(8))
def test_randomized_election_timeout_is_within_range(seed: int) -> None:
    """§5.2: a follower waits a random time in [election_tick, 2*election_tick) before campaigning."""
    e = 10
    n = RawNode(cfg(1, [1, 2, 3], election_tick=e), MemoryStorage(), random.Random(seed))
    for t in range(1, 3 * e):
        n.tick()
        if n.has_ready() and any(m.type is MT.PRE_VOTE for m in n.ready().messages):
            assert e <= t < 2 * e
            return
    pytest.fail("never campaigned")


def test_randomized_timeouts_differ_across_seeds() -> None:
    seen = set()
    for seed in range(20):
        n = RawNode(cfg(1, [1, 2, 3]), MemoryStorage(), random.Random(seed))
        t = 0
        while n.role is Role.FOLLOWER:
            n.tick()
            t += 1
        seen.add(t)
    assert len(seen) > 3


def test_split_vote_resolves() -> None:
    c = Cluster([1, 2, 3, 4, 5], seed=3, pre_vote=False)
    for i in c.nodes:
        c[i].campaign()  # everyone at term 1 votes for itself before any request is delivered
    c.stabilize()
    assert c.leaders() == []
    assert {n.term for n in c.nodes.values()} == {1}
    for _ in range(60):
        c.tick()
        if c.leaders():
            break
    assert len(c.leaders()) == 1
    terms = {n.term for n in c.nodes.values()}
    assert len(terms) == 1 and terms.pop() >= 2


def test_vote_denied_to_a_less_up_to_date_log() -> None:
    """§5.4.1: a voter refuses a candidate whose log is behind its own."""
    st = MemoryStorage([Entry(1, 1), Entry(2, 2)], HardState(term=2))
    n = RawNode(cfg(2, [1, 2, 3], pre_vote=False), st, random.Random(0))
    n.step(Message(MT.VOTE, to=2, frm=1, term=3, index=5, log_term=1))
    rd = n.ready()
    assert rd.messages_after_persist == (Message(MT.VOTE_RESP, to=1, frm=2, term=3, reject=True),)
    n.advance(rd)
    n.step(Message(MT.VOTE, to=2, frm=3, term=3, index=2, log_term=2))
    (resp,) = n.ready().messages_after_persist
    assert not resp.reject and n.status().vote == 3


def test_prevote_keeps_a_partitioned_node_from_bumping_the_term() -> None:
    c = Cluster([1, 2, 3], seed=1)
    c.elect(1)
    c.isolate(3)
    c.tick(n=100)
    assert c[3].term == 1  # pre-votes failed, so it never became a candidate
    assert c[3].role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    c.heal()
    c.tick(n=30)
    assert c.leaders() == [1] and {n.term for n in c.nodes.values()} == {1}
    assert c[3].leader == 1


def test_without_prevote_a_rejoining_node_disrupts_the_leader() -> None:
    """The control for the test above: the same partition, pre_vote off, forces a new term."""
    c = Cluster([1, 2, 3], seed=1, pre_vote=False, check_quorum=False)
    c.elect(1)
    c.isolate(3)
    c.tick(n=100)
    assert c[3].term > 1
    c.heal()
    c.tick(n=30)
    assert c[1].term > 1  # the old leader was deposed by the higher term


def test_check_quorum_steps_an_isolated_leader_down() -> None:
    c = Cluster([1, 2, 3], seed=2)
    c.elect(1)
    c.isolate(1)
    c.tick([1], n=10)  # the first check starts a fresh window: everyone was active then
    assert c[1].role is Role.LEADER
    c.tick([1], n=10)
    assert c[1].role is Role.FOLLOWER and c[1].leader == 0


def test_check_quorum_keeps_a_connected_leader() -> None:
    c = Cluster([1, 2, 3], seed=2)
    c.elect(1)
    c.isolate(3)
    c.tick(n=50)
    assert c[1].role is Role.LEADER and c[1].term == 1


def test_leader_stickiness_ignores_votes_while_a_leader_is_fresh() -> None:
    c = Cluster([1, 2, 3], seed=4, pre_vote=False)
    c.elect(1)
    f = c[2]
    n_sent = len(c.sent)
    f.step(Message(MT.VOTE, to=2, frm=3, term=5, index=100, log_term=9))
    assert not f.has_ready() and f.term == 1 and len(c.sent) == n_sent
    # A transfer's campaign is the deliberate exception.
    f.step(Message(MT.VOTE, to=2, frm=3, term=5, index=100, log_term=9, context=CAMPAIGN_TRANSFER))
    (resp,) = f.ready().messages_after_persist
    assert f.term == 5 and not resp.reject


def test_stickiness_ends_after_an_election_timeout_without_the_leader() -> None:
    c = Cluster([1, 2, 3], seed=0, pre_vote=False)
    c.elect(1)
    c.isolate(1)
    c.tick([2], n=10)
    assert c[2].role is Role.FOLLOWER  # with this seed its randomized timeout is above 10
    c[2].step(Message(MT.VOTE, to=2, frm=3, term=2, index=100, log_term=9))
    (resp,) = c[2].ready().messages_after_persist
    assert not resp.reject and c[2].term == 2


def test_prevote_does_not_change_the_voters_term() -> None:
    st = MemoryStorage([Entry(1, 1)], HardState(term=3))
    n = RawNode(cfg(2, [1, 2, 3]), st, random.Random(0))
    n.step(Message(MT.PRE_VOTE, to=2, frm=3, term=2, index=1, log_term=1))  # stale
    (resp,) = n.ready().messages_after_persist
    assert resp == Message(MT.PRE_VOTE_RESP, to=3, frm=2, term=3, reject=True)
    n.step(Message(MT.PRE_VOTE, to=2, frm=3, term=4, index=1, log_term=1))
    rd = n.ready()
    (resp,) = rd.messages_after_persist
    assert resp == Message(MT.PRE_VOTE_RESP, to=3, frm=2, term=4)  # granted, echoing term 4
    assert n.term == 3 and n.status().vote == 0 and rd.hard_state is None


def test_stale_leader_is_told_the_new_term_and_steps_down() -> None:
    c = Cluster([1, 2, 3], seed=5)
    c.elect(1)
    c.isolate(1)
    c.tick([2, 3], n=40)
    (new,) = [i for i in c.leaders() if i != 1]
    assert c[new].term == 2 and c[1].role is Role.LEADER and c[1].term == 1
    c.heal()
    c.tick([1])  # its heartbeat at term 1 is answered with term 2
    assert c[1].role is Role.FOLLOWER and c[1].term == 2
    c.tick([new])
    assert c[1].leader == new


def test_vote_and_append_responses_leave_only_after_persist() -> None:
    c = Cluster([1, 2, 3], seed=6)
    c.elect(1)
    for k in range(3):
        c.propose(1, b"%d" % k)
    c.tick(n=3)
    after = {MT.VOTE_RESP, MT.PRE_VOTE_RESP, MT.APPEND_RESP}
    assert c.readies
    for _, rd in c.readies:
        assert not any(m.type in after for m in rd.messages)
        assert all(m.type in after for m in rd.messages_after_persist)
    # The leader's own appends go out without waiting for its write.
    assert any(m.type is MT.APPEND and rd.entries for i, rd in c.readies if i == 1 for m in rd.messages)


def test_restart_never_votes_twice_in_a_term() -> None:
    c = Cluster([1, 2, 3], seed=8, pre_vote=False, check_quorum=False)
    c.isolate(3)
    c.elect(1)  # node 2 voted for 1 at term 1
    assert c.storages[2].hard_state.vote == 1
    c.start(2)  # crash + restart from what was persisted
    assert c[2].status().vote == 1 and c[2].term == 1
    c[2].step(Message(MT.VOTE, to=2, frm=3, term=1, index=9, log_term=9))
    (resp,) = c[2].ready().messages_after_persist
    assert resp.reject
    c[2].step(Message(MT.VOTE, to=2, frm=1, term=1, index=1, log_term=1))  # a retransmission
    (resp,) = c[2].ready().messages_after_persist
    assert not resp.reject


def test_soft_state_and_must_sync_only_on_change() -> None:
    c = Cluster([1, 2, 3], seed=9)
    c.elect(1)
    c.readies.clear()
    c.tick(n=3)  # heartbeats only
    for _, rd in c.readies:
        assert rd.soft_state is None
        assert not rd.must_sync
        assert rd.hard_state is None
    c.propose(1, b"x")
    leader_readies = [rd for i, rd in c.readies if i == 1 and rd.entries]
    assert leader_readies and all(rd.must_sync for rd in leader_readies)


def test_learner_never_campaigns_but_votes_when_asked() -> None:
    c = Cluster([1, 2, 3], learners=[4], seed=10)
    assert c[4].role is Role.LEARNER
    c.isolate(1)
    c.isolate(2)
    c.isolate(3)
    c.tick([4], n=100)
    assert c[4].role is Role.LEARNER and c[4].term == 0 and not c.sent_of(MT.PRE_VOTE, frm=4)
    c[4].campaign()
    assert c[4].role is Role.LEARNER
    # A candidate asking a learner believes it is a voter (a promotion the learner has not
    # applied yet) and counts only its own voters' votes, so the learner answers like a voter
    # (as etcd's learners do): otherwise a just-promoted learner could block every election.
    c[4].step(Message(MT.VOTE, to=4, frm=1, term=3, index=5, log_term=5))
    (resp,) = c[4].ready().messages_after_persist
    assert not resp.reject and c[4].role is Role.LEARNER
    c[4].step(Message(MT.VOTE, to=4, frm=2, term=3, index=5, log_term=5))
    (resp,) = c[4].ready().messages_after_persist
    assert resp.reject  # one vote per term, as for any voter


@pytest.mark.parametrize("seed", [11, 12])
def test_same_seed_same_messages(seed: int) -> None:
    def run(s: int) -> list[Message]:
        c = Cluster([1, 2, 3, 4, 5], seed=s)
        c.tick(n=40)
        leader = c.leaders()[0]
        c.propose(leader, b"a")
        c.isolate(leader)
        c.tick(n=40)
        return c.sent

    assert run(seed) == run(seed)


def test_different_seeds_diverge() -> None:
    def first_candidate(s: int) -> int:
        c = Cluster([1, 2, 3, 4, 5], seed=s)
        c.tick(n=30)
        return c.sent_of(MT.PRE_VOTE)[0].frm

    assert len({first_candidate(s) for s in range(10)}) > 1


def test_driver_level_messages_are_not_protocol() -> None:
    c = Cluster([1, 2, 3], seed=13)
    c.elect(1)
    c[2].step(Message(MT.APPLIED_REPORT, to=2, frm=3, term=99, index=5))
    assert c[2].term == 1 and c[2].leader == 1 and not c[2].has_ready()
