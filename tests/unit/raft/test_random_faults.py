"""Safety under seeded random faults: loss, reordering, duplication, partitions, restarts.

A small smoke-level cousin of the simulator (ggap/sim), kept here so the core's own test run
catches a safety bug. Restarts include crashing after a Ready's `messages` left but before its
write was durable (the ordering Ready allows). Invariants checked after every step:

- at most one leader per term (Raft §5.2, Election Safety);
- the applied sequences of any two nodes are prefixes of one another (State Machine Safety);
- a ReadState's index is at least every commit index known anywhere when the read was asked
  (what makes ReadIndex reads linearizable).

At the end the network heals and the cluster must converge on one log.
"""

from __future__ import annotations

import random

import pytest

from ggap.consensus.raft import ProposalDropped, Role
from tests.unit.raft.harness import Cluster

IDS = (1, 2, 3, 4, 5)


def pump(c: Cluster, rng: random.Random, loss: float) -> None:
    c.process_all()
    batch = list(c.queue)
    c.queue.clear()
    rng.shuffle(batch)
    for m in batch:
        if rng.random() < 0.02:
            c.queue.append(m)  # delivered again later
        if c.deliver(m, lost=rng.random() < loss) is not None:
            c.process(m.to)


def check(c: Cluster, leaders: dict[int, int], read_floor: dict[bytes, int]) -> None:
    for i, n in c.nodes.items():
        if n.role is Role.LEADER:
            assert leaders.setdefault(n.term, i) == i, f"two leaders in term {n.term}"
    seqs = [[(e.index, e.term, e.data) for e in c.applied[i]] for i in IDS]
    longest = max(seqs, key=len)
    for s in seqs:
        assert s == longest[: len(s)], "applied sequences diverge"
    for i in IDS:
        for rs in c.read_states[i]:
            assert rs.index >= read_floor[rs.context], "stale read index"
        c.read_states[i].clear()


@pytest.mark.parametrize("seed", range(12))
def test_safety_under_random_faults(seed: int) -> None:
    rng = random.Random(seed)
    c = Cluster(
        IDS,
        seed=seed,
        pre_vote=seed % 3 != 0,
        check_quorum=seed % 2 == 0,
        max_inflight_msgs=rng.choice([1, 2, 256]),
        max_size_per_msg=rng.choice([1, 10, 1 << 20]),
    )
    leaders: dict[int, int] = {}
    read_floor: dict[bytes, int] = {}
    nprop = 0
    for step in range(250):
        r = rng.random()
        if r < 0.04:
            c.isolate(rng.choice(IDS))
        elif r < 0.08:
            c.heal()
        elif r < 0.10:
            c.start(rng.choice(IDS))  # crash and restart from what was persisted
        elif r < 0.12:
            i = rng.choice(IDS)
            if c[i].has_ready():
                # Crash mid-write: `messages` may already be out, the rest is lost.
                c.emit(c[i].ready().messages)
            c.start(i)
        elif r < 0.40:
            lead_ids = [i for i in IDS if c[i].role is Role.LEADER]
            target = rng.choice(lead_ids or list(IDS))
            try:
                c[target].propose(b"p%d" % nprop)
                nprop += 1
            except ProposalDropped:
                pass
        elif r < 0.50:
            ctx = b"r%d" % step
            read_floor[ctx] = max(c[i].status().commit for i in IDS)
            c[rng.choice(IDS)].read_index(ctx)
        elif r < 0.52:
            lead_ids = [i for i in IDS if c[i].role is Role.LEADER]
            if lead_ids:
                c[lead_ids[0]].transfer_leader(rng.choice(IDS))
        elif r < 0.55:
            i = rng.choice(IDS)
            c.compact(i)  # a laggard may now need a snapshot
        for i in IDS:
            c[i].tick()
        pump(c, rng, loss=0.05)
        check(c, leaders, read_floor)

    c.heal()
    for _ in range(200):
        c.tick()
        leaders_now = c.leaders()
        if (
            len(leaders_now) == 1
            and not c[leaders_now[0]].status().lead_transferee
            and len({c[i].status().commit for i in IDS}) == 1
        ):
            break
    (leader,) = c.leaders()
    c.propose(leader, b"final")
    check(c, leaders, read_floor)
    final = [(e.index, e.data) for e in c.applied[leader]]
    assert final[-1][1] == b"final"
    for i in IDS:
        assert [(e.index, e.data) for e in c.applied[i]] == final
        assert c.log_of(i)[-1] == c.log_of(leader)[-1]
