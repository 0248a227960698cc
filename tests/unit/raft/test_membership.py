"""Single-server membership changes (Raft thesis ch. 4), taking effect when applied.

Changes go through learners: ADD_LEARNER, then PROMOTE, or REMOVE. One change at a time; a
new leader waits until everything from before its term is applied. See DESIGN.md,
"Membership changes", for the argument.
"""

from __future__ import annotations

import logging
import random

import pytest

from ggap.consensus.raft import (
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    ProgressState,
    ProposalDropped,
    RawNode,
    Role,
    SnapshotMeta,
    changed_conf,
    conf_change_error,
    decode_conf_change,
    encode_conf_change,
    live_quorum_after,
)
from ggap.types import CodecError
from tests.unit.raft.harness import Cluster, cfg, persist

MT = MessageType
ADD = ConfChangeType.ADD_LEARNER
PROMOTE = ConfChangeType.PROMOTE
REMOVE = ConfChangeType.REMOVE


def cc(type: ConfChangeType, node: int, context: bytes = b"") -> ConfChange:
    return ConfChange(type=type, node_id=node, context=context)


def add_learner(c: Cluster, leader: int, node: int) -> None:
    """What a server does for MemberAdd: start the new node (empty, bootstrap config), add it."""
    c.add_node(node)
    c.change(leader, cc(ADD, node))


def tick_until_leader(c: Cluster, ids: list[int], want: int, limit: int = 200) -> None:
    for _ in range(limit):
        c.tick(ids)
        if c[want].role is Role.LEADER:
            return
    raise AssertionError(f"{want} did not become leader: {[c[i].status() for i in ids]}")


def data_applied(c: Cluster, i: int) -> list[bytes]:
    return [e.data for e in c.applied[i] if e.kind == EntryKind.NORMAL and e.data]


def conf_entries(c: Cluster, i: int) -> list[ConfChange]:
    return [decode_conf_change(e.data) for e in c.applied[i] if e.kind == EntryKind.CONF_CHANGE]


# ---- the pure rules ------------------------------------------------------------------------


def test_conf_change_rules() -> None:
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    assert conf_change_error(conf, cc(ADD, 5)) is None
    assert conf_change_error(conf, cc(ADD, 4)) == "4 is already a learner"
    assert conf_change_error(conf, cc(ADD, 1)) == "1 is already a voter"
    assert conf_change_error(conf, cc(PROMOTE, 4)) is None
    assert conf_change_error(conf, cc(PROMOTE, 1)) == "1 is not a learner"
    assert conf_change_error(conf, cc(PROMOTE, 9)) == "9 is not a learner"
    assert conf_change_error(conf, cc(REMOVE, 9)) == "9 is not a member"
    assert conf_change_error(conf, cc(REMOVE, 0)) == "invalid node id 0"
    assert conf_change_error(ConfState(voters=(1,), learners=(2,)), cc(REMOVE, 1)) == "1 is the last voter"
    assert conf_change_error(ConfState(voters=(1,), learners=(2,)), cc(REMOVE, 2)) is None

    assert changed_conf(conf, cc(ADD, 5)) == ConfState(voters=(1, 2, 3), learners=(4, 5))
    assert changed_conf(conf, cc(PROMOTE, 4)) == ConfState(voters=(1, 2, 3, 4))
    assert changed_conf(conf, cc(REMOVE, 2)) == ConfState(voters=(1, 3), learners=(4,))
    assert changed_conf(conf, cc(REMOVE, 4)) == ConfState(voters=(1, 2, 3))
    with pytest.raises(ValueError, match="already a learner"):
        changed_conf(conf, cc(ADD, 4))
    # ConfState is normalised, so configurations compare by content.
    assert ConfState(voters=[3, 1, 1, 2], learners=(5, 4)) == ConfState(voters=(1, 2, 3), learners=(4, 5))


def test_conf_change_encoding_round_trips_and_is_strict() -> None:
    for change in (cc(ADD, 7, b"host:7"), cc(PROMOTE, 2**63 - 1), cc(REMOVE, 1)):
        data = encode_conf_change(change)
        assert decode_conf_change(data) == change
        assert type(decode_conf_change(data).type) is ConfChangeType
    with pytest.raises(CodecError):
        decode_conf_change(b"")
    with pytest.raises(CodecError):
        decode_conf_change(encode_conf_change(cc(ADD, 7)) + b"\x00")


def test_live_quorum_after() -> None:
    conf = ConfState(voters=(1, 2, 3), learners=(4,))
    # Removing 3 leaves {1, 2}: both must be up.
    assert live_quorum_after(conf, 3, {1, 2})
    assert not live_quorum_after(conf, 3, {1, 3, 4})  # a learner does not make a quorum
    # Removing a dead node from 5 leaves 4 voters, whose majority is 3.
    five = ConfState(voters=(1, 2, 3, 4, 5))
    assert live_quorum_after(five, 5, {1, 2, 3})
    assert not live_quorum_after(five, 5, {1, 2, 5})
    # Removing a learner changes no quorum.
    assert live_quorum_after(conf, 4, {1, 2})
    assert not live_quorum_after(ConfState(voters=(1,)), 1, {1})  # nothing would be left


# ---- adding learners, promoting ------------------------------------------------------------


def test_added_learner_gets_the_log_and_never_counts_for_commit() -> None:
    c = Cluster([1, 2], seed=1)
    c.elect(1)
    c.propose(1, b"a")
    add_learner(c, 1, 3)
    assert c[3].role is Role.LEARNER and c[3].leader == 1
    assert c.log_of(3) == c.log_of(1)
    assert c.conf(3) == c.conf(1) == ConfState(voters=(1, 2), learners=(3,))
    assert data_applied(c, 3) == [b"a"]
    st = c[1].status()
    assert st.progress[3].is_learner and st.progress[3].match == st.last_index

    # With 2 down, the entry is on 1 and the learner 3: two of three members, but only one
    # of the two voters. Counting the learner would commit it.
    c.isolate(2)
    c.cut -= {(1, 3), (3, 1)}
    c.propose(1, b"b")
    st = c[1].status()
    assert st.progress[3].match == st.last_index  # the learner has it...
    assert st.commit == st.last_index - 1  # ...but it does not count
    c.tick(n=3)
    assert c[1].status().commit == st.last_index - 1
    c.heal()
    c.tick(n=2)
    assert data_applied(c, 3) == [b"a", b"b"] == data_applied(c, 2)


def test_learners_do_not_make_a_majority_even_when_they_outnumber_the_voters() -> None:
    c = Cluster([1, 2, 3], seed=2)
    c.elect(1)
    add_learner(c, 1, 4)
    add_learner(c, 1, 5)
    c.isolate(2)
    c.isolate(3)
    c.cut -= {(1, 4), (4, 1), (1, 5), (5, 1), (4, 5), (5, 4)}
    c.propose(1, b"x")
    st = c[1].status()
    assert st.progress[4].match == st.progress[5].match == st.last_index
    assert st.commit < st.last_index  # 3 of 5 nodes hold it, 1 of 3 voters


def test_promoted_learner_counts_and_keeps_its_match() -> None:
    c = Cluster([1, 2], seed=3)
    c.elect(1)
    add_learner(c, 1, 3)
    c.change(1, cc(PROMOTE, 3))
    assert c[3].role is Role.FOLLOWER
    assert c.conf(1) == c.conf(2) == c.conf(3) == ConfState(voters=(1, 2, 3))
    st = c[1].status()
    assert not st.progress[3].is_learner and st.progress[3].match == st.last_index
    assert st.progress[3].state is ProgressState.REPLICATE
    # Now {1, 3} is a majority of three: it commits without 2.
    c.isolate(2)
    c.cut -= {(1, 3), (3, 1)}
    c.propose(1, b"with 3")
    assert c[1].status().commit == c[1].status().last_index
    assert data_applied(c, 3) == [b"with 3"]
    # And 3 can lead.
    c[1].transfer_leader(3)
    c.stabilize()
    assert c.leaders() == [3]


def test_a_joining_node_replays_earlier_changes_from_the_bootstrap_configuration() -> None:
    c = Cluster([1, 2, 3], seed=4)
    c.elect(1)
    c.change(1, cc(REMOVE, 3))
    c.stop(3)
    add_learner(c, 1, 4)  # replays REMOVE 3 from index 1, then its own addition
    assert [ch.type for ch in conf_entries(c, 4)] == [REMOVE, ADD]
    assert c.conf(4) == c.conf(1) == ConfState(voters=(1, 2), learners=(4,))
    c.change(1, cc(PROMOTE, 4))
    assert c[4].role is Role.FOLLOWER and c.conf(4) == ConfState(voters=(1, 2, 4))


# ---- removing ------------------------------------------------------------------------------


def test_removed_follower_leaves_a_smaller_majority() -> None:
    c = Cluster([1, 2, 3, 4, 5], seed=5)
    c.elect(1)
    c.change(1, cc(REMOVE, 5))
    c.change(1, cc(REMOVE, 4))
    assert c.conf(1) == c.conf(2) == c.conf(3) == ConfState(voters=(1, 2, 3))
    assert set(c[1].status().progress) == {1, 2, 3}
    c.isolate(3)
    c.isolate(4)
    c.isolate(5)
    c.cut -= {(1, 2), (2, 1)}
    c.propose(1, b"two of three")  # two of five would not do
    assert data_applied(c, 2)[-1] == b"two of three"


def test_applying_a_removal_commits_what_the_smaller_majority_holds() -> None:
    c = Cluster([1, 2, 3, 4], seed=6)
    c.elect(1)
    c.isolate(4)
    removal = c[1].propose_conf_change(cc(REMOVE, 4))
    c.process(1)  # the APPEND carrying the removal is out
    c[1].propose(b"E")
    # 3 never gets E: E is then on {1, 2} only, not a majority of {1, 2, 3, 4}...
    c.drop = lambda m: m.to == 3 and any(e.index == removal + 1 for e in m.entries)
    c.stabilize()
    # ...but it is one of {1, 2, 3} once the removal is applied, and it commits then.
    (apply_rd,) = [rd for i, rd in c.readies if i == 1 and any(e.index == removal for e in rd.committed)]
    assert apply_rd.hard_state is not None and apply_rd.hard_state.commit == removal
    assert c[1].status().commit == removal + 1
    assert data_applied(c, 2) == [b"E"]


def test_leader_removing_itself_hands_over_and_steps_down() -> None:
    c = Cluster([1, 2, 3], seed=7)
    c.elect(1)
    for k in range(3):
        c.propose(1, b"%d" % k)
    c.change(1, cc(REMOVE, 1))
    (timeout_now,) = c.sent_of(MT.TIMEOUT_NOW, frm=1)
    assert timeout_now.to in (2, 3)
    assert c[1].role is Role.FOLLOWER and c.conf(1) == ConfState(voters=(2, 3))
    assert c.leaders() == [timeout_now.to]
    new = timeout_now.to
    assert c[new].term == 2 and c.conf(new) == ConfState(voters=(2, 3))
    # Nothing committed was lost.
    for i in (2, 3):
        assert data_applied(c, i)[:3] == [b"0", b"1", b"2"]
    c.propose(new, b"after")
    assert data_applied(c, 2)[-1] == data_applied(c, 3)[-1] == b"after"
    assert b"after" not in data_applied(c, 1)  # no longer replicated to
    # The removed node never campaigns again and its status says it is out.
    before = len(c.sent)
    c.isolate(1)
    c.tick([1], n=50)
    assert not [m for m in c.sent[before:] if m.frm == 1 and m.type in (MT.PRE_VOTE, MT.VOTE)]
    c[1].campaign()
    assert c[1].role is Role.FOLLOWER
    assert 1 not in c[1].status().conf_state.voters


def test_leader_removing_itself_without_a_caught_up_voter_just_steps_down() -> None:
    c = Cluster([1, 2, 3], seed=8)
    c.elect(1)
    c.isolate(3)
    removal = c[1].propose_conf_change(cc(REMOVE, 1))
    c.process(1)
    c[1].propose(b"tail")  # never reaches anyone: no voter is caught up when 1 applies
    c.drop = lambda m: m.frm == 1 and any(e.index > removal for e in m.entries)
    c.stabilize()
    assert c.conf(1) == ConfState(voters=(2, 3))
    assert c[1].role is Role.FOLLOWER and not c.sent_of(MT.TIMEOUT_NOW)
    c.drop = lambda m: False
    c.heal()
    for _ in range(60):
        c.tick()
        if c.leaders():
            break
    (leader,) = c.leaders()
    assert leader in (2, 3)
    c.propose(leader, b"next")
    assert b"tail" not in data_applied(c, 2)  # it was never committed
    assert data_applied(c, 2)[-1] == data_applied(c, 3)[-1] == b"next"


def test_removed_node_that_keeps_campaigning_does_not_disturb_a_stable_leader() -> None:
    for pre_vote in (True, False):
        c = Cluster([1, 2, 3], seed=9, pre_vote=pre_vote)
        c.elect(1)
        c.isolate(3)
        c.change(1, cc(REMOVE, 3))  # 3 never hears of it: it still thinks it votes
        assert c.conf(3) == ConfState(voters=(1, 2, 3))
        c.heal()
        term = c[1].term
        for _ in range(60):
            c.tick()
        campaigns = [m for m in c.sent if m.frm == 3 and m.type in (MT.PRE_VOTE, MT.VOTE)]
        assert campaigns  # it tried, and kept trying...
        assert c.leaders() == [1] and c[1].term == c[2].term == term  # ...to no effect
        assert c[3].role is not Role.LEADER
        c.propose(1, b"still fine")
        assert data_applied(c, 2)[-1] == b"still fine"


# ---- one at a time -------------------------------------------------------------------------


def test_one_change_at_a_time() -> None:
    c = Cluster([1, 2, 3], seed=10)
    c.elect(1)
    c.add_node(4)
    c.add_node(5)
    index = c[1].propose_conf_change(cc(ADD, 4))
    assert c[1].status().pending_conf_index == index
    with pytest.raises(ConfChangeRefused) as err:
        c[1].propose_conf_change(cc(ADD, 5))
    assert err.value.retryable and "not applied yet" in err.value.reason
    c[1].propose(b"ordinary proposals are fine meanwhile")
    c.stabilize()
    assert c[1].status().applied >= index
    c.change(1, cc(ADD, 5))
    assert c.conf(1) == ConfState(voters=(1, 2, 3), learners=(4, 5))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (cc(ADD, 2), "2 is already a voter"),
        (cc(ADD, 4), "4 is already a learner"),
        (cc(PROMOTE, 2), "2 is not a learner"),
        (cc(PROMOTE, 9), "9 is not a learner"),
        (cc(REMOVE, 9), "9 is not a member"),
        (cc(ADD, 0), "invalid node id 0"),
    ],
)
def test_invalid_changes_are_refused(change: ConfChange, reason: str) -> None:
    c = Cluster([1, 2, 3], learners=[4], seed=11)
    c.elect(1)
    last = c[1].status().last_index
    with pytest.raises(ConfChangeRefused) as err:
        c[1].propose_conf_change(change)
    assert err.value.reason == reason and not err.value.retryable
    assert c[1].status().last_index == last


def test_the_last_voter_cannot_be_removed_and_non_leaders_cannot_propose() -> None:
    c = Cluster([1], learners=[2], seed=12)
    c.elect(1)
    with pytest.raises(ConfChangeRefused, match="last voter"):
        c[1].propose_conf_change(cc(REMOVE, 1))
    with pytest.raises(ProposalDropped, match="not the leader"):
        c[2].propose_conf_change(cc(PROMOTE, 2))
    c.change(1, cc(PROMOTE, 2))  # a single voter commits alone
    c.change(1, cc(REMOVE, 1))
    assert c.leaders() == [2] and c.conf(2) == ConfState(voters=(2,))


def test_forwarded_proposals_cannot_smuggle_a_conf_change() -> None:
    c = Cluster([1, 2, 3], seed=13)
    c.elect(1)
    last = c[1].status().last_index
    bad = Entry(index=0, term=0, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(REMOVE, 3)))
    c[1].step(Message(MT.PROPOSE, to=1, frm=2, entries=(bad, Entry(index=0, term=0, data=b"ok"))))
    c.stabilize()
    assert c[1].status().last_index == last + 1
    assert data_applied(c, 1)[-1] == b"ok" and not conf_entries(c, 1)


def test_new_leader_refuses_a_change_until_the_earlier_terms_are_applied() -> None:
    c = Cluster([1, 2, 3], seed=14)
    c.elect(1)
    c.add_node(4)
    c.add_node(5)
    # 1 appends ADD 4 and replicates it to 2, but nobody learns that it commits.
    c.isolate(3)
    old = c[1].propose_conf_change(cc(ADD, 4))
    c.drop = lambda m: m.type is MT.APPEND_RESP and m.frm == 2
    c.stabilize()
    assert c[2].status().last_index == old and c[1].status().commit < old
    # 2 wins a new term with 3's vote (3 cannot win: its log is shorter); its NOOP does not
    # get out yet.
    c.isolate(1)
    c.cut -= {(2, 3), (3, 2)}
    c.drop = lambda m: m.type is MT.APPEND and m.frm == 2
    tick_until_leader(c, [2, 3], 2)
    assert c[2].status().pending_conf_index == old
    # Its log ends with 1's uncommitted ADD 4: a change now could be two steps from a
    # configuration still in effect somewhere (Ongaro's single-server bug).
    with pytest.raises(ConfChangeRefused, match="not applied yet") as err:
        c[2].propose_conf_change(cc(ADD, 5))
    assert err.value.retryable
    c.drop = lambda m: False
    c.tick([2, 3], n=2)
    # Its NOOP committed the old change, which is now in effect; the next one may follow.
    assert c.conf(2) == c.conf(3) == ConfState(voters=(1, 2, 3), learners=(4,))
    with pytest.raises(ConfChangeRefused, match="already a learner"):
        c[2].propose_conf_change(cc(ADD, 4))
    c.change(2, cc(ADD, 5))
    assert c.conf(2) == ConfState(voters=(1, 2, 3), learners=(4, 5))


def test_conf_change_refused_during_a_transfer_and_transfer_allowed_during_a_change() -> None:
    c = Cluster([1, 2, 3], seed=15)
    c.elect(1)
    c.add_node(4)
    c.isolate(2)
    c[1].transfer_leader(2)
    c.stabilize()  # its TIMEOUT_NOW is lost
    with pytest.raises(ConfChangeRefused, match="transfer") as err:
        c[1].propose_conf_change(cc(ADD, 4))
    assert err.value.retryable
    c[1].transfer_leader(1)  # cancel
    c.heal()
    # A transfer while a change is pending is allowed: the next leader treats the change
    # like any entry of an earlier term.
    c[1].propose_conf_change(cc(ADD, 4))
    c[1].transfer_leader(2)
    c.stabilize()
    assert c.leaders() == [2]
    assert c.conf(1) == c.conf(2) == c.conf(3) == c.conf(4) == ConfState(voters=(1, 2, 3), learners=(4,))
    c.change(2, cc(PROMOTE, 4))
    assert c.conf(4) == ConfState(voters=(1, 2, 3, 4))


def test_transfer_to_a_node_being_removed_is_abandoned_when_the_removal_applies() -> None:
    c = Cluster([1, 2, 3], seed=16)
    c.elect(1)
    c.isolate(3)  # so the transfer cannot complete before the removal
    c[1].propose_conf_change(cc(REMOVE, 3))
    c[1].transfer_leader(3)
    assert c[1].status().lead_transferee == 3
    c.stabilize()
    assert c.conf(1) == ConfState(voters=(1, 2))
    assert c[1].role is Role.LEADER and c[1].status().lead_transferee == 0
    c.propose(1, b"proposals flow again")
    with pytest.raises(ValueError, match="not a voter"):
        c[1].transfer_leader(3)


def test_transfer_refuses_a_learner() -> None:
    c = Cluster([1, 2], seed=17)
    c.elect(1)
    add_learner(c, 1, 3)
    with pytest.raises(ValueError, match="not a voter"):
        c[1].transfer_leader(3)


# ---- durability, crashes, lost tails ---------------------------------------------------------


def test_a_committed_change_survives_the_leaders_crash() -> None:
    c = Cluster([1, 2, 3], seed=18)
    c.elect(1)
    removal = c[1].propose_conf_change(cc(REMOVE, 3))
    # 1 commits and applies it, then crashes before telling anyone it committed.
    c.drop = lambda m: m.frm == 1 and m.commit >= removal and m.type in (MT.APPEND, MT.HEARTBEAT)
    c.stabilize()
    assert c.conf(1) == ConfState(voters=(1, 2))
    assert c[2].status().commit < removal and c.conf(2) == ConfState(voters=(1, 2, 3))
    c.start(1)  # restarts with the configuration it applied
    assert c[1].status().conf_state == ConfState(voters=(1, 2))
    c.isolate(1)
    c.drop = lambda m: False
    # 2 or 3 (both still on the old configuration) wins with the other's vote; committing
    # its NOOP commits the removal, which then takes effect on 2 and 3 (if 3 won, it steps
    # down at once and hands over to 2).
    tick_until_leader(c, [2, 3], 2)
    assert c.conf(2) == c.conf(3) == ConfState(voters=(1, 2))
    c.heal()
    c.propose(2, b"x")
    c.tick(n=2)  # 1 is probed again on the next heartbeat round
    assert data_applied(c, 1) == [b"x"] and b"x" not in data_applied(c, 3)
    for i in (1, 2):  # every member restarts into the same configuration
        c.start(i)
        assert c[i].status().conf_state == ConfState(voters=(1, 2))


def test_an_uncommitted_change_is_lost_with_the_leaders_tail() -> None:
    c = Cluster([1, 2, 3], seed=19)
    c.elect(1)
    c.add_node(4)
    c.isolate(1)
    c[1].propose_conf_change(cc(ADD, 4))  # only 1 has it
    c.stabilize()
    for _ in range(60):
        c.tick([2, 3])
        if c[2].role is Role.LEADER or c[3].role is Role.LEADER:
            break
    (leader,) = [i for i in (2, 3) if c[i].role is Role.LEADER]
    c.propose(leader, b"new term")
    c.heal()
    c.tick(n=3)
    assert c[1].leader == leader and c.log_of(1) == c.log_of(leader)
    for i in (1, 2, 3, 4):
        assert c.conf(i) == ConfState(voters=(1, 2, 3)) and not conf_entries(c, i)
    assert c[4].role is Role.FOLLOWER  # never a member: it got nothing
    c.change(leader, cc(ADD, 4))
    assert c.conf(4) == ConfState(voters=(1, 2, 3), learners=(4,))


def test_conf_change_entries_always_carry_the_hard_state() -> None:
    c = Cluster([1, 2, 3], seed=20)
    c.elect(1)
    c.propose(1, b"x")
    c.tick(n=2)  # followers learn the commit from heartbeats (commit-only readies)
    c.add_node(4)
    c.change(1, cc(ADD, 4))
    carrying = [(i, rd) for i, rd in c.readies if any(e.kind == EntryKind.CONF_CHANGE for e in rd.entries)]
    assert {i for i, _ in carrying} == {1, 2, 3, 4}
    for _i, rd in carrying:
        assert rd.hard_state is not None and rd.must_sync
        # The commit persisted with the entry covers everything before the last change.
        assert rd.hard_state.commit >= 2


def test_applying_a_change_makes_its_commit_durable_first() -> None:
    """Found by the simulator (seed 8 of the first membership sweep): the last voter of a
    cluster of two applied the removal of the other from a commit-only Ready, which the
    engine does not write; its state machine was lost in a crash, it restarted into the
    configuration before the removal and waited forever for the removed node's vote."""
    c = Cluster([1, 2], seed=21)
    c.persist_commit_only = False  # skip commit-only hard states, like the replica engine
    c.elect(1)
    removal = c.change(1, cc(REMOVE, 2))
    assert c.conf(1) == ConfState(voters=(1,))
    applying = [rd for i, rd in c.readies if i == 1 and any(e.index == removal for e in rd.committed)]
    assert len(applying) == 1 and applying[0].must_sync and applying[0].hard_state is not None
    assert c.storages[1].initial_state()[0].commit >= removal
    c.stop(2)  # the operator shuts the removed node down
    # A power loss takes node 1's state machine (and its configuration) back to nothing.
    c.applied[1], c.confs[1] = [], [(0, c.bootstrap)]
    c.start(1)
    c.process(1)  # replays through the removal: the durable commit covers it
    assert c.conf(1) == ConfState(voters=(1,))
    tick_until_leader(c, [1], 1)


def test_a_refused_vote_tells_the_candidate_what_is_committed() -> None:
    """Found by the simulator (seed 1042): leader 1 of {1, 2} removed itself, appended one
    more entry, committed the removal with 2's ack, applied it and stepped down before 2
    heard of the commit. 2 campaigned in {1, 2}, which needs 1's vote; 1, removed (so it
    never campaigns) and with a longer log, refused it, at every term, forever."""
    c = Cluster([1, 2], seed=22)
    c.elect(1)
    removal = c[1].propose_conf_change(cc(REMOVE, 1))
    c[1].propose(b"after the removal")
    c.drop = lambda m: m.frm == 1 and (m.commit >= removal or any(e.index > removal for e in m.entries))
    c.stabilize()
    assert c.conf(1) == ConfState(voters=(2,)) and c[1].role is Role.FOLLOWER
    assert c[2].status().commit < removal and c.conf(2) == ConfState(voters=(1, 2))
    c.drop = lambda m: False
    tick_until_leader(c, [1, 2], 2)
    assert c.conf(2) == ConfState(voters=(2,))
    refusals = c.sent_of(MT.PRE_VOTE_RESP, frm=1) + c.sent_of(MT.VOTE_RESP, frm=1)
    assert refusals and all(m.commit >= removal for m in refusals)


def test_no_campaign_while_a_committed_change_is_unapplied() -> None:
    change = Entry(index=2, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(ADD, 4)))
    st = MemoryStorage(
        [Entry(index=1, term=1, kind=EntryKind.NOOP), change],
        HardState(term=1, commit=2),
        SnapshotMeta(voters=(1, 2, 3)),
    )
    node = RawNode(cfg(1, [1, 2, 3]), st, random.Random(0))
    node.campaign()
    assert node.role is Role.FOLLOWER and node.term == 1
    for _ in range(40):
        node.tick()
    assert node.role is Role.FOLLOWER
    rd = node.ready()
    assert [e.index for e in rd.committed] == [1, 2] and not rd.messages
    persist(st, rd)
    assert node.apply_conf_change(decode_conf_change(change.data)) == ConfState(
        voters=(1, 2, 3), learners=(4,)
    )
    node.advance(rd)
    node.campaign()
    assert node.role is Role.PRE_CANDIDATE
    assert {m.to for m in node.ready().messages if m.type is MT.PRE_VOTE} == {2, 3}


def test_an_invalid_committed_change_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    # A correct leader never commits two additions of one node, but if a log holds them
    # (say, a bug elsewhere), applying the second must not corrupt the configuration.
    ents = [
        Entry(index=1, term=1, kind=EntryKind.NOOP),
        Entry(index=2, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(ADD, 4))),
        Entry(index=3, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(ADD, 4))),
        Entry(index=4, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(REMOVE, 1))),
        Entry(index=5, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(cc(REMOVE, 1))),
    ]
    st = MemoryStorage(ents, HardState(term=1, commit=5), SnapshotMeta(voters=(1, 2)))
    node = RawNode(cfg(2, [1, 2]), st, random.Random(0))
    rd = node.ready()
    confs = []
    with caplog.at_level(logging.WARNING):
        for e in rd.committed:
            if e.kind == EntryKind.CONF_CHANGE:
                confs.append(node.apply_conf_change(decode_conf_change(e.data)))
    node.advance(rd)
    assert confs == [
        ConfState(voters=(1, 2), learners=(4,)),
        ConfState(voters=(1, 2), learners=(4,)),  # the duplicate: nothing happened
        ConfState(voters=(2,), learners=(4,)),
        ConfState(voters=(2,), learners=(4,)),
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("4 is already a learner" in w for w in warnings)
    assert any("1 is not a member" in w for w in warnings)
    # Applying it directly on a member is the same no-op.
    assert node.apply_conf_change(cc(PROMOTE, 2)) == ConfState(voters=(2,), learners=(4,))
    assert node.status().conf_state == ConfState(voters=(2,), learners=(4,))


# ---- snapshots -----------------------------------------------------------------------------


def test_snapshot_carries_the_configuration_to_a_learner_far_behind() -> None:
    c = Cluster([1, 2, 3], seed=21)
    c.elect(1)
    c.change(1, cc(REMOVE, 3))
    c.stop(3)
    for k in range(10):
        c.propose(1, b"%d" % k)
    c.compact(1)  # the snapshot records the configuration as of its index
    assert c.storages[1].snapshot().voters == (1, 2)
    add_learner(c, 1, 4)
    (snap_msg,) = c.sent_of(MT.SNAPSHOT, frm=1, to=4)
    assert snap_msg.snapshot is not None
    assert (snap_msg.snapshot.voters, snap_msg.snapshot.learners) == ((1, 2), ())
    # 4 started on the bootstrap configuration; the snapshot replaced it, then its own
    # addition (after the snapshot) made it a learner.
    assert c.conf(4) == c.conf(1) == ConfState(voters=(1, 2), learners=(4,))
    assert c[4].role is Role.LEARNER
    assert data_applied(c, 4) == data_applied(c, 1)
    c.start(4)  # restarts into what it applied
    assert c[4].status().conf_state == ConfState(voters=(1, 2), learners=(4,))
    c.change(1, cc(PROMOTE, 4))
    c.propose(1, b"late")
    c.compact(1)
    assert (c.storages[1].snapshot().voters, c.storages[1].snapshot().learners) == ((1, 2, 4), ())
    # A second newcomer far behind gets the newer configuration from the snapshot alone.
    add_learner(c, 1, 5)
    assert c.conf(5) == ConfState(voters=(1, 2, 4), learners=(5,))
    assert data_applied(c, 5)[-1] == b"late"


def test_a_snapshot_without_voters_is_refused() -> None:
    st = MemoryStorage(snapshot=SnapshotMeta(voters=(1, 2)))
    node = RawNode(cfg(2, [1, 2]), st, random.Random(0))
    node.step(Message(MT.SNAPSHOT, to=2, frm=1, term=1, snapshot=SnapshotMeta(index=5, term=1)))
    assert node.status().commit == 0 and node.status().conf_state == ConfState(voters=(1, 2))


# ---- status --------------------------------------------------------------------------------


def test_status_shows_the_configuration_and_each_members_progress() -> None:
    c = Cluster([1, 2, 3], seed=22)
    c.elect(1)
    add_learner(c, 1, 4)
    c.isolate(3)
    c.propose(1, b"x")
    c.tick([1], n=10)  # a CheckQuorum round passes; 3 stays silent
    st = c[1].status()
    assert st.conf_state == ConfState(voters=(1, 2, 3), learners=(4,))
    assert set(st.progress) == {1, 2, 3, 4}
    assert st.progress[2].match == st.progress[4].match == st.last_index
    assert st.progress[3].match < st.last_index and not st.progress[3].recent_active
    assert st.progress[2].recent_active and st.progress[4].recent_active
    assert st.progress[4].is_learner and not st.progress[2].is_learner
    # Would removing 2 leave a live quorum? {1, 3} with 3 silent: no. Removing 3: yes.
    active = {pid for pid, pr in st.progress.items() if pr.recent_active}
    assert not live_quorum_after(st.conf_state, 2, active)
    assert live_quorum_after(st.conf_state, 3, active)
    follower = c[2].status()
    assert follower.progress == {} and follower.pending_conf_index == 0
    assert follower.conf_state == st.conf_state
