"""The simulated operator: membership changes and leader transfers at random times.

Why: membership bugs live in the interleavings of a change with crashes, partitions,
snapshots and elections, which only a random schedule explores. Like an operator using the
cluster API, the schedule asks the node that currently leads, one request at a time:

- add a learner: a spare id (outside the initial cluster, empty disk) is started and added;
  it gets the log from the leader, or a snapshot when it is behind the compacted log;
- promote a learner (usually once it caught up, like the server's auto-promotion; sometimes
  not, which is safe but slows commits);
- remove a member: a learner, a voter or the leader itself (usually only when the voters
  left still have a live majority, like the server's check; sometimes regardless);
- transfer leadership to another voter.

Removed nodes stay up, quiet (a removed node never campaigns but still answers), until the
operator shuts them down: once every voter of the configuration without them has applied the
removal (as `ggap members` shows), plus a random delay in the safety phase. Not before: when
a leader removes itself from a cluster of two, the other voter may not yet know the removal
committed, and then only the removed node's vote (or the commit index it tells) lets it
elect itself; had it gone, the survivor would wait for it forever (seed 8 of the first
sweep, when removed nodes stopped as soon as they applied their removal). A removed id is
never reused, so a node never comes back with its old data.

Every choice is drawn from the schedule's own RNG stream (`SimConfig.members_seed`), so
turning membership on or off shifts no other component's draws; crashes of spare nodes come
from a stream of their own too.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from ggap.consensus.raft import ConfState, Role
from ggap.consensus.raft.membership import live_quorum_after
from ggap.types import ChangeKind, Member, MemberChange, Membership

if TYPE_CHECKING:
    from ggap.sim.node import SimNode
    from ggap.sim.simulator import Simulator

# Relative weights of the operator's actions (when each is possible).
_WEIGHTS = {"add": 3.0, "promote": 3.0, "remove": 2.0, "transfer": 1.0}
_CAREFUL = 0.8  # probability of the server's safety checks (caught-up learner, live quorum)
_KEEP_TWO = 0.75  # probability of refusing to remove a voter of a configuration of two


class MemberSchedule:
    def __init__(self, sim: Simulator, spares: tuple[int, ...], rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.crash_rng = random.Random(rng.getrandbits(64))  # crashes of spare nodes
        self.fresh = list(spares)  # never started
        self.joining: list[int] = []  # started, not (yet) known to be members
        self.removed: set[int] = set()  # a committed change removed them; never reused
        self._busy = 0  # token of the request in flight (0: none)
        self._token = 0
        self.stats = {"proposed": 0, "applied": 0, "refused": 0, "transfers": 0, "retired": 0}

    def start(self) -> None:
        if self.sim.cfg.member_probability:
            self.sim.schedule(self.sim.now + self.sim.cfg.tick_ms, self._tick)

    # --- the schedule ---

    def _tick(self) -> None:
        sim = self.sim
        if not sim.faulty:
            return  # liveness phase: no new changes
        if not self._busy and self.rng.random() < sim.cfg.member_probability:
            self._act()
        sim.schedule(sim.now + sim.cfg.tick_ms, self._tick)

    def _leader(self) -> SimNode | None:
        sim = self.sim
        leaders = [
            n
            for n in sim.nodes.values()
            if n.up and n.engine is not None and n.engine.node.role is Role.LEADER and not n.engine.removed
        ]
        if not leaders:
            return None
        return max(leaders, key=lambda n: (n.engine.node.term if n.engine else 0, n.id))

    def _act(self) -> None:
        leader = self._leader()
        if leader is None or leader.engine is None:
            return
        engine = leader.engine
        m = engine.membership
        status = engine.node.status()
        options: dict[str, float] = {}
        if self.fresh or self.joining:
            options["add"] = _WEIGHTS["add"]
        if m.learners:
            options["promote"] = _WEIGHTS["promote"]
        if len(m.ids) > 1:
            options["remove"] = _WEIGHTS["remove"]
        if len(m.voters) > 1:
            options["transfer"] = _WEIGHTS["transfer"]
        if not options:
            return
        kinds = sorted(options)
        kind = self.rng.choices(kinds, [options[k] for k in kinds])[0]
        careful = self.rng.random() < _CAREFUL
        if kind == "add":
            pool = self.joining or self.fresh
            nid = self.rng.choice(pool)
            if nid in self.fresh:
                self.fresh.remove(nid)
                self.joining.append(nid)
                self.sim.nodes[nid].start()
            self._propose(leader, ChangeKind.ADD_LEARNER, nid)
        elif kind == "promote":
            learners = list(m.learners)
            if careful:
                prs = status.progress
                learners = [i for i in learners if i in prs and prs[i].match >= status.commit]
            if learners:
                self._propose(leader, ChangeKind.PROMOTE, self.rng.choice(learners))
        elif kind == "remove":
            nid = self.rng.choice(m.ids)
            if nid in m.voters and len(m.voters) <= 2 and self.rng.random() < _KEEP_TWO:
                return  # mostly keep two voters or more: elections stay interesting
            if careful and nid in m.voters:
                active = [pid for pid, pr in status.progress.items() if pid == leader.id or pr.recent_active]
                if not live_quorum_after(ConfState(voters=m.voters, learners=m.learners), nid, active):
                    return
            self._propose(leader, ChangeKind.REMOVE, nid)
        else:
            target = self.rng.choice([v for v in m.voters if v != leader.id])
            self.stats["transfers"] += 1
            leader.submit_transfer(target)

    def _propose(self, leader: SimNode, kind: ChangeKind, nid: int) -> None:
        sim = self.sim
        self._token += 1
        token = self._busy = self._token
        self.stats["proposed"] += 1
        sim.trace(leader, f"operator: {kind.value} n{nid}")
        change = MemberChange(kind=kind, member=Member(nid, f"c{nid}", f"p{nid}", learner=True))

        def done(result: object) -> None:
            if self._busy != token:
                return
            self._busy = 0
            if isinstance(result, Membership):
                self.stats["applied"] += 1
                sim.trace(leader, f"operator: {kind.value} n{nid} applied at {result.index}")
            else:
                self.stats["refused"] += 1
                sim.trace(leader, f"operator: {kind.value} n{nid} failed: {result}")

        leader.submit_membership(change, done)
        # Give up waiting after a client's timeout: the change may still commit later.
        sim.schedule(sim.now + sim.cfg.request_timeout_ms, lambda: done("timed out"))

    # --- removed nodes ---

    def on_applied_removal(self, nid: int, index: int) -> None:
        """The model saw the committed REMOVE of `nid` at `index` applied somewhere: the
        operator will shut that node down once the rest have applied it."""
        sim = self.sim
        self.removed.add(nid)
        if nid in self.joining:
            self.joining.remove(nid)
        timeout = sim.cfg.election_tick * sim.cfg.tick_ms
        delay = self.rng.randint(0, 4 * timeout)
        sim.schedule(sim.now + delay, self._retire_when_applied, nid, index)

    def _retire_when_applied(self, nid: int, index: int) -> None:
        """Retire `nid` once every voter of the latest configuration applied its removal
        (the voters as of the removal itself may be gone by then: seed 2024)."""
        sim = self.sim
        _, conf = sim.inv.conf_at(len(sim.inv.applied) - 1)
        if all(sim.nodes[v].up and sim.nodes[v].kv.applied >= index for v in conf.voters if v != nid):
            self.retire(nid)
        else:
            sim.schedule(sim.now + sim.cfg.tick_ms, self._retire_when_applied, nid, index)

    def retire(self, nid: int) -> None:
        node = self.sim.nodes[nid]
        if node.retired:
            return
        self.stats["retired"] += 1
        node.retire("removed from the cluster")

    def joined(self, nid: int) -> None:
        """`nid` is a member now (a node applied its addition)."""
        if nid in self.joining:
            self.joining.remove(nid)
