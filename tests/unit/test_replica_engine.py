"""The replica engine alone (ggap/replica/engine.py), driven by hand: rules that the
simulator found broken, each pinned down in one Ready."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from ggap.consensus.raft import (
    CoreConfig,
    Entry,
    EntryKind,
    Message,
    MessageType,
    SnapshotMeta,
    encode_conf_change,
)
from ggap.replica.engine import ApplyOutput, MembershipChanges, Outcome, ReplicaEngine, TakenSnapshot
from ggap.replica.membership import to_conf_change
from ggap.sim.storage import SimStorage
from ggap.types import ChangeKind, Member, MemberChange, Membership

MT = MessageType


class Machine:
    """A state machine that only keeps the applied index and the membership."""

    def __init__(self, voters: Sequence[int]) -> None:
        self.applied_index = 0
        self.membership = Membership(members=tuple(Member(i) for i in voters), index=0)

    @property
    def revision(self) -> int:
        return self.applied_index

    def apply(self, entries: Sequence[Entry], changes: MembershipChanges) -> ApplyOutput:
        outcomes: list[Outcome] = []
        for e in entries:
            if e.index <= self.applied_index:
                outcomes.append(None)
                continue
            self.applied_index = e.index
            decided = changes.get(e.index) if e.kind is EntryKind.CONF_CHANGE else None
            if isinstance(decided, Membership):
                self.membership = decided
            outcomes.append(decided)
        return ApplyOutput(outcomes=outcomes, revision=self.applied_index)

    def take_snapshot(self) -> TakenSnapshot:
        return TakenSnapshot(index=self.applied_index, membership=self.membership)

    def restore(self, meta: SnapshotMeta) -> None:
        self.applied_index = meta.index
        members = [Member(i) for i in meta.voters] + [Member(i, learner=True) for i in meta.learners]
        self.membership = Membership(members=tuple(members), index=meta.index)


class Transport:
    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.members: list[Membership] = []

    def send(self, msgs: Iterable[Message]) -> None:
        self.sent += [m for m in msgs if m.type is not MT.APPLIED_REPORT]

    def send_snapshot(self, msg: Message) -> None:
        self.sent.append(msg)

    def unreachable(self) -> Iterable[int]:
        return ()

    def set_members(self, membership: Membership) -> None:
        self.members.append(membership)


def engine(node_id: int, voters: Sequence[int]) -> tuple[ReplicaEngine, Machine, Transport]:
    machine, transport = Machine(voters), Transport()
    e = ReplicaEngine(
        config=CoreConfig(id=node_id, voters=tuple(voters), election_tick=10, heartbeat_tick=1),
        storage=SimStorage(node_id),
        state_machine=machine,
        transport=transport,
        rng=random.Random(0),
    )
    return e, machine, transport


def handle(e: ReplicaEngine) -> None:
    """Every pending Ready, through all the engine's steps."""
    while (work := e.take_ready()) is not None:
        e.finish(work, e.durable(work))


def test_a_snapshot_and_a_later_change_in_one_ready() -> None:
    """Found by the simulator (seed 34 of the first membership sweep): a joining node took a
    snapshot (which predates its own addition) and the APPEND right behind it (which carries
    that addition, committed) in one Ready. The engine compared the core, still on the
    snapshot's configuration, with the state machine, already past the addition, and
    stopped with Internal."""
    e, machine, transport = engine(4, (1, 2, 3))
    add = to_conf_change(MemberChange(ChangeKind.ADD_LEARNER, Member(4, "c4", "p4", learner=True)))
    snap = SnapshotMeta(index=5, term=1, voters=(1, 2, 3))
    change = Entry(index=6, term=1, kind=EntryKind.CONF_CHANGE, data=encode_conf_change(add))
    e.step(Message(MT.SNAPSHOT, to=4, frm=1, term=1, snapshot=snap))
    e.step(Message(MT.APPEND, to=4, frm=1, term=1, index=5, log_term=1, entries=(change,), commit=6))
    work = e.take_ready()
    assert work is not None and work.ready.snapshot == snap and [x.index for x in work.ready.committed] == [6]
    e.finish(work, e.durable(work))
    want = Membership(members=(Member(1), Member(2), Member(3), Member(4, "c4", "p4", learner=True)), index=6)
    assert machine.membership == want and e.membership == want
    assert e.node.conf_state.voters == (1, 2, 3) and e.node.conf_state.learners == (4,)
    assert transport.members[-1] == want


def test_reads_waiting_for_a_leader_are_asked_in_arrival_order() -> None:
    """They were kept in a set, so the READ_INDEX messages left in hash order, which differs
    between processes (PYTHONHASHSEED): a simulator seed would not replay exactly."""
    e, _, transport = engine(1, (1, 2, 3))
    contexts = [f"read-{i}".encode() for i in range(30)]
    for ctx in contexts:
        e.read_index(ctx, lambda index, error: None)
    handle(e)
    assert not [m for m in transport.sent if m.type is MT.READ_INDEX]  # no leader known yet
    e.step(Message(MT.HEARTBEAT, to=1, frm=2, term=1))
    e.tick()  # asks the waiting reads again, now that a leader is known
    work = e.take_ready()
    assert work is not None
    asked = [m.context for m in work.ready.messages if m.type is MT.READ_INDEX]
    assert asked == contexts
