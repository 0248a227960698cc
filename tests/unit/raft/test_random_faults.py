"""Safety under seeded random faults: loss, reordering, duplication, partitions, restarts,
and (in the second test) random membership changes.

A small smoke-level cousin of the simulator (ggap/sim), kept here so the core's own test run
catches a safety bug. Restarts include crashing after a Ready's `messages` left but before its
write was durable (the ordering Ready allows). Invariants checked after every step:

- at most one leader per term (Raft §5.2, Election Safety);
- two logs holding an entry with the same index and term agree up to it (Log Matching);
- the applied sequences of any two nodes are prefixes of one another (State Machine Safety);
- a ReadState's index is at least every commit index known anywhere when the read was asked
  (what makes ReadIndex reads linearizable);
- with membership changes: each node's configuration is the one its applied log gives when
  replayed from the bootstrap configuration (so a snapshot carried the right one), and the
  core and the driver agree on it; and the three rules DESIGN.md's safety argument rests on
  hold whenever they apply: a leader appends a change only when every earlier change in its
  log is applied; a node campaigns only when no committed change is unapplied; a node that
  persists a change has durably recorded a commit index covering the change before it.

Membership runs persist like the replica engine (commit-only hard states are not written)
and, on odd seeds, keep one Ready in flight per node (its apply waits while messages are
stepped and ticks fire), so elections meet committed-but-unapplied changes.

At the end the network heals (nodes no longer in the configuration are shut down, as their
driver would be) and the cluster must converge on one log.
"""

from __future__ import annotations

import random

import pytest

from ggap.consensus.raft import (
    ConfChange,
    ConfChangeRefused,
    ConfChangeType,
    ConfState,
    EntryKind,
    MessageType,
    ProposalDropped,
    Ready,
    Role,
    changed_conf,
    conf_change_error,
    decode_conf_change,
)
from tests.unit.raft.harness import Cluster

IDS = (1, 2, 3, 4, 5)
POOL = (1, 2, 3, 4, 5, 6, 7)  # ids that may join over a membership run


CANDIDATES = (Role.PRE_CANDIDATE, Role.CANDIDATE)


def pump(c: Cluster, rng: random.Random, loss: float) -> None:
    c.process_all()
    batch = list(c.queue)
    c.queue.clear()
    rng.shuffle(batch)
    for m in batch:
        if rng.random() < 0.02:
            c.queue.append(m)  # delivered again later
        was = c[m.to].role if m.to in c.nodes else None
        if c.deliver(m, lost=rng.random() < loss) is not None:
            if m.type is MessageType.TIMEOUT_NOW and was not in CANDIDATES:
                check_campaign(c, m.to)
            c.process(m.to)


def conf_indexes(c: Cluster, i: int, lo: int, hi: int) -> list[int]:
    """Indexes of the CONF_CHANGE entries in [lo, hi] of node i's log (what its core holds)."""
    log = c[i].log
    lo = max(lo, log.first_index())
    if lo > hi:
        return []
    return [e.index for e in log.slice(lo, hi + 1, 1 << 62) if e.kind == EntryKind.CONF_CHANGE]


def check_campaign(c: Cluster, i: int) -> None:
    """(Campaign) A node that just started a campaign has applied every committed change."""
    n = c[i]
    if n.role in CANDIDATES:
        st = n.status()
        unapplied = conf_indexes(c, i, st.applied + 1, st.commit)
        assert not unapplied, f"{i} campaigns with committed changes {unapplied} unapplied"


def check_persisted(c: Cluster, i: int, rd: Ready) -> None:
    """(Apply) and (Append), for a Ready that was just persisted."""
    n = c[i]
    for e in rd.entries:
        if e.kind != EntryKind.CONF_CHANGE:
            continue
        earlier = conf_indexes(c, i, 1, e.index - 1)
        if n.role is Role.LEADER and e.term == n.term:
            # Its own new change: every earlier one in its log is applied.
            applied = len(c.applied[i])
            assert all(j <= applied for j in earlier), f"leader {i} appended {e.index} over {earlier}"
        if earlier:
            commit = c.storages[i].hard_state.commit
            assert commit >= max(earlier), f"{i} persisted change {e.index} with commit {commit}"


def check_log_matching(c: Cluster) -> None:
    logs = {i: dict(c.log_of(i)) for i in c.nodes}
    ids = sorted(logs)
    for a_pos, a in enumerate(ids):
        for b in ids[a_pos + 1 :]:
            la, lb = logs[a], logs[b]
            common = sorted(set(la) & set(lb), reverse=True)
            matched = False
            for index in common:
                if la[index] == lb[index]:
                    matched = True
                elif matched:
                    raise AssertionError(f"logs of {a} and {b} match at a later index but not at {index}")


def replayed_conf(c: Cluster, i: int) -> ConfState:
    conf = c.bootstrap
    for e in c.applied[i]:
        if e.kind == EntryKind.CONF_CHANGE:
            change = decode_conf_change(e.data)
            if conf_change_error(conf, change) is None:
                conf = changed_conf(conf, change)
    return conf


def check(c: Cluster, leaders: dict[int, int], read_floor: dict[bytes, int]) -> None:
    for i, n in c.nodes.items():
        if n.role is Role.LEADER:
            assert leaders.setdefault(n.term, i) == i, f"two leaders in term {n.term}"
    check_log_matching(c)
    seqs = [[(e.index, e.term, e.data) for e in c.applied[i]] for i in c.applied]
    longest = max(seqs, key=len)
    for s in seqs:
        assert s == longest[: len(s)], "applied sequences diverge"
    for i in c.nodes:
        for rs in c.read_states[i]:
            assert rs.index >= read_floor[rs.context], "stale read index"
        c.read_states[i].clear()
        assert c.conf(i) == replayed_conf(c, i), f"node {i} has the wrong configuration"
        if i not in c.held:  # (a held snapshot is in effect in the core, not yet applied)
            assert c[i].status().conf_state == c.conf(i), f"node {i}: core and driver disagree"


def random_conf_change(c: Cluster, rng: random.Random) -> None:
    """Ask a leader for a random change: add a learner, promote one, or remove a member."""
    lead_ids = [i for i, n in c.nodes.items() if n.role is Role.LEADER]
    if not lead_ids:
        return
    leader = c[max(lead_ids, key=lambda i: c[i].term)]
    conf = leader.status().conf_state
    members = [*conf.voters, *conf.learners]
    outsiders = [i for i in POOL if i not in members]
    r = rng.random()
    if r < 0.4 and outsiders:
        nid = rng.choice(outsiders)
        if nid not in c.nodes:
            c.add_node(nid)  # a new node starts empty, on the bootstrap configuration
        change = ConfChange(ConfChangeType.ADD_LEARNER, nid)
    elif r < 0.7 and conf.learners:
        change = ConfChange(ConfChangeType.PROMOTE, rng.choice(conf.learners))
    else:
        # Leaders too; refused (and so never committed) for the last voter.
        change = ConfChange(ConfChangeType.REMOVE, rng.choice(members))
    try:
        leader.propose_conf_change(change)
    except (ConfChangeRefused, ProposalDropped):
        pass


def run(seed: int, *, membership: bool) -> None:
    rng = random.Random(seed + (1000 if membership else 0))
    c = Cluster(
        (1, 2, 3) if membership else IDS,
        seed=seed,
        pre_vote=seed % 3 != 0,
        check_quorum=seed % 2 == 0,
        max_inflight_msgs=rng.choice([1, 2, 256]),
        max_size_per_msg=rng.choice([1, 10, 1 << 20]),
    )
    if membership:
        c.persist_commit_only = False
        c.on_persist = lambda i, rd: check_persisted(c, i, rd)
        if seed % 2:
            c.pipelined = set(POOL)
    leaders: dict[int, int] = {}
    read_floor: dict[bytes, int] = {}
    nprop = 0
    for step in range(300 if membership else 250):
        ids = list(c.nodes)
        r = rng.random()
        if r < 0.04:
            c.isolate(rng.choice(ids))
        elif r < 0.08:
            c.heal()
        elif r < 0.10:
            c.start(rng.choice(ids))  # crash and restart from what was persisted
        elif r < 0.12:
            i = rng.choice(ids)
            if c[i].has_ready():
                # Crash mid-write: `messages` may already be out, the rest is lost.
                c.emit(c[i].ready().messages)
            c.start(i)
        elif r < 0.40:
            lead_ids = [i for i in ids if c[i].role is Role.LEADER]
            target = rng.choice(lead_ids or ids)
            try:
                c[target].propose(b"p%d" % nprop)
                nprop += 1
            except ProposalDropped:
                pass
        elif r < 0.50:
            ctx = b"r%d" % step
            read_floor[ctx] = max(c[i].status().commit for i in ids)
            c[rng.choice(ids)].read_index(ctx)
        elif r < 0.52:
            lead_ids = [i for i in ids if c[i].role is Role.LEADER]
            if lead_ids:
                voters = c[lead_ids[0]].status().conf_state.voters
                c[lead_ids[0]].transfer_leader(rng.choice(voters))
        elif r < 0.55:
            c.compact(rng.choice(ids))  # a laggard may now need a snapshot
        elif r < 0.63 and membership:
            random_conf_change(c, rng)
        for i in ids:
            was = c[i].role
            c[i].tick()
            if was not in CANDIDATES:
                check_campaign(c, i)
        pump(c, rng, loss=0.05)
        check(c, leaders, read_floor)

    c.heal()
    c.pipelined.clear()
    members: list[int] = list(c.nodes)
    for _ in range(300):
        # The latest configuration is that of whoever applied the most; a node outside it
        # (removed, or added by a change that was lost) is shut down, as its driver would be.
        latest = c.conf(max(c.nodes, key=lambda i: len(c.applied[i])))
        members = [*latest.voters, *latest.learners]
        for i in [i for i in c.nodes if i not in members]:
            c.stop(i)
        c.tick()
        leaders_now = c.leaders()
        if (
            len(leaders_now) == 1
            and not c[leaders_now[0]].status().lead_transferee
            and c[leaders_now[0]].status().conf_state == latest
            and len({c[i].status().commit for i in members}) == 1
        ):
            break
    (leader,) = c.leaders()
    c.propose(leader, b"final")
    check(c, leaders, read_floor)
    final = [(e.index, e.data) for e in c.applied[leader]]
    assert final[-1][1] == b"final"
    for i in members:
        assert [(e.index, e.data) for e in c.applied[i]] == final
        assert c.log_of(i)[-1] == c.log_of(leader)[-1]


@pytest.mark.parametrize("seed", range(12))
def test_safety_under_random_faults(seed: int) -> None:
    run(seed, membership=False)


@pytest.mark.parametrize("seed", range(16))
def test_safety_under_random_faults_and_membership_changes(seed: int) -> None:
    run(seed, membership=True)
