"""Leadership transfer (Raft thesis §3.10): catch the target up, then TIMEOUT_NOW."""

from __future__ import annotations

import pytest

from ggap.consensus.raft import MessageType, ProposalDropped, Role
from tests.unit.raft.harness import Cluster

MT = MessageType


def test_transfer_to_an_up_to_date_follower() -> None:
    c = Cluster([1, 2, 3], seed=1)
    c.elect(1)
    c.propose(1, b"x")
    c[1].transfer_leader(2)
    assert c[1].status().lead_transferee == 2
    with pytest.raises(ProposalDropped):
        c[1].propose(b"refused during the transfer")
    c.stabilize()
    assert c.sent_of(MT.TIMEOUT_NOW, frm=1, to=2)
    assert c.leaders() == [2] and c[2].term == 2
    assert c[1].role is Role.FOLLOWER and c[1].leader == 2
    c.propose(2, b"y")
    assert [e.data for e in c.applied[1] if e.data] == [b"x", b"y"]


def test_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    c = Cluster([1, 2, 3], seed=2)
    c.elect(1)
    c.isolate(3)
    for k in range(5):
        c.propose(1, b"%d" % k)
    c.heal()
    c[1].transfer_leader(3)
    c.process(1)
    assert not c.sent_of(MT.TIMEOUT_NOW)  # 3 is behind: first replicate
    c.stabilize()
    assert len(c.sent_of(MT.TIMEOUT_NOW, frm=1, to=3)) == 1
    assert c.leaders() == [3]
    assert c.log_of(3)[:6] == c.log_of(1)[:6]


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    c = Cluster([1, 2, 3], seed=3)
    c.elect(1)
    c.isolate(2)
    c[1].transfer_leader(2)
    with pytest.raises(ProposalDropped):
        c[1].propose(b"no")
    c.tick([1], n=10)
    assert c[1].role is Role.LEADER and c[1].status().lead_transferee == 0
    c.propose(1, b"yes")
    assert c[1].status().commit == 2


def test_transfer_argument_errors_and_cancel() -> None:
    c = Cluster([1, 2, 3], learners=[4], seed=4)
    c.elect(1)
    with pytest.raises(ValueError):
        c[1].transfer_leader(4)  # a learner cannot lead
    with pytest.raises(ProposalDropped):
        c[2].transfer_leader(3)  # only the leader transfers
    c.isolate(2)
    c[1].transfer_leader(2)
    c[1].transfer_leader(1)  # to ourselves: cancel
    assert c[1].status().lead_transferee == 0
    c.propose(1, b"ok")
