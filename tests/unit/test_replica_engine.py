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


# --- writes a follower forwards to the leader inside Raft --------------------------------


class ResultMachine(Machine):
    """Answers every plain entry with ("done", its data), and keeps the data it applied."""

    def __init__(self, voters: Sequence[int]) -> None:
        super().__init__(voters)
        self.seen: list[bytes] = []

    def apply(self, entries: Sequence[Entry], changes: MembershipChanges) -> ApplyOutput:
        out = super().apply(entries, changes)
        outcomes = list(out.outcomes)
        for i, e in enumerate(entries):
            if e.kind is EntryKind.NORMAL and e.data and outcomes[i] is None:
                self.seen.append(e.data)
                outcomes[i] = ("done", e.data)
        return ApplyOutput(outcomes=outcomes, revision=out.revision)


class Group:
    """Three engines wired by hand: `pump` runs every Ready and delivers every message
    (except those `drop` says to lose) until the group is quiet."""

    def __init__(self, incarnations: dict[int, int] | None = None) -> None:
        self.ids = (1, 2, 3)
        self.machines = {i: ResultMachine(self.ids) for i in self.ids}
        self.transports = {i: Transport() for i in self.ids}
        self.storages = {i: SimStorage(i) for i in self.ids}
        self.engines = {i: self._engine(i, (incarnations or {}).get(i, 1)) for i in self.ids}
        self.drop = lambda m: False
        self.engines[1].campaign()
        self.pump()
        assert self.engines[1].role.value == "leader"

    def _engine(self, i: int, incarnation: int) -> ReplicaEngine:
        return ReplicaEngine(
            config=CoreConfig(id=i, voters=self.ids, election_tick=10, heartbeat_tick=1),
            storage=self.storages[i],
            state_machine=self.machines[i],
            transport=self.transports[i],
            rng=random.Random(i),
            incarnation=incarnation,
        )

    def restart(self, i: int, incarnation: int) -> None:
        """The node comes back with its log and state machine, as a new run."""
        self.engines[i] = self._engine(i, incarnation)

    def pump(self) -> None:
        for _ in range(100):
            for e in self.engines.values():
                handle(e)
            moved = False
            for t in self.transports.values():
                sent, t.sent = t.sent, []
                for m in sent:
                    moved = True
                    if not self.drop(m):
                        self.engines[m.to].step(m)
            if not moved:
                return
        raise AssertionError("the group never went quiet")


def answers() -> tuple[list[tuple[int, object, BaseException | None]], object]:
    got: list[tuple[int, object, BaseException | None]] = []
    return got, lambda index, result, error: got.append((index, result, error))


def test_a_forwarded_write_is_answered_by_the_follower_once_applied_there() -> None:
    g = Group()
    got, done = answers()
    assert g.engines[2].propose(b"put x", done, forward=True) == 0  # the index is the leader's
    g.pump()
    [(index, result, error)] = got
    assert error is None and result == ("done", b"put x") and index > 0
    # Every state machine applied the data as proposed (the stamp is the engine's business).
    assert all(m.seen == [b"put x"] for m in g.machines.values())
    assert g.engines[2].forward_counts.applied == 1
    # Without `forward` a follower still refuses at once.
    plain, done2 = answers()
    g.engines[2].propose(b"put y", done2)
    assert type(plain[0][2]).__name__ == "NotLeader"


def test_a_leader_handing_over_refuses_forwarded_writes_by_name() -> None:
    """The refusal is remembered, and answered "not applied" once the next leader's term
    commits (until then a duplicate of the PROPOSE could still be appended in this term)."""
    g = Group()
    g.drop = lambda m: m.type is MT.TIMEOUT_NOW  # the transfer stays in progress
    g.engines[1].transfer_leader(3)
    g.pump()
    assert g.engines[1].node.transferring
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    g.pump()
    assert got == [] and g.engines[2]._forwarded[1].refused_by == 1
    g.drop = lambda m: False
    for _ in range(30):  # the stalled transfer times out
        g.engines[1].tick()
        g.pump()
    assert not g.engines[1].node.transferring and got == []
    _transfer(g, 1, 3)  # again, and this time it goes through
    [(_, result, error)] = got
    assert type(error).__name__ == "NotLeader" and "was not applied" in str(error) and result is None
    assert "node 1 refused it" in str(error)
    assert all(m.seen == [] for m in g.machines.values())
    assert g.engines[2].forward_counts.refused == 1 and not g.engines[2]._forwarded


def test_a_refused_duplicate_does_not_hide_the_copy_that_was_appended() -> None:
    """A network that duplicates: one copy of the PROPOSE is appended, the other reaches a
    node that does not lead and is refused. The write was applied, and is answered so."""
    g = Group()
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    handle(g.engines[2])
    [propose] = [m for m in g.transports[2].sent if m.type is MT.PROPOSE]
    g.engines[3].step(propose)  # the duplicate, at a follower: PROPOSE_REFUSED
    g.pump()
    [(index, result, error)] = got
    assert error is None and result == ("done", b"put x") and index > 0
    assert g.engines[2].forward_counts.refused == 0


def test_a_deposed_leader_refuses_a_forward_that_reaches_it_late() -> None:
    """A PROPOSE that reaches a node which no longer leads is refused, never dropped silently:
    the write is answered "not applied" once a later term commits."""
    g = Group()
    got, done = answers()
    g.engines[3].propose(b"put x", done, forward=True)
    handle(g.engines[3])
    [propose] = [m for m in g.transports[3].sent if m.type is MT.PROPOSE]
    g.transports[3].sent.clear()
    g.engines[2].step(propose)  # as if it were sent to node 2, a follower
    g.pump()
    assert got == []
    _transfer(g, 1, 2)
    [(_, _, error)] = got
    assert type(error).__name__ == "NotLeader"
    assert all(m.seen == [] for m in g.machines.values())


def test_a_lost_forward_is_answered_outcome_unknown_after_the_expiry() -> None:
    from ggap.replica.engine import FORWARD_EXPIRY_ELECTIONS

    g = Group()
    g.drop = lambda m: m.type is MT.PROPOSE
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    g.pump()
    for _ in range(FORWARD_EXPIRY_ELECTIONS * 10 - 1):
        g.engines[2].tick()
    assert not got
    g.engines[2].tick()
    [(_, _, error)] = got
    assert type(error).__name__ == "Unavailable" and "outcome is unknown" in str(error)
    assert g.engines[2].forward_counts.unknown == 1


def test_an_entry_forwarded_before_a_restart_never_answers_a_write_after_it() -> None:
    """Sequence numbers start again at each run: the incarnation in the stamp keeps an
    old entry, committed only after the restart, from answering the new run's write."""
    g = Group()
    held: list[Message] = []
    g.drop = lambda m: m.type is MT.PROPOSE and (held.append(m) or True)
    old, done_old = answers()
    g.engines[2].propose(b"old", done_old, forward=True)  # seq 1 of run 1, held back
    g.pump()
    g.restart(2, incarnation=2)
    g.drop = lambda m: m.type is MT.PROPOSE  # the new run's forward is lost for now
    g.engines[1].tick()  # a heartbeat: the new run learns the leader
    g.pump()
    new, done_new = answers()
    g.engines[2].propose(b"new", done_new, forward=True)  # seq 1 again, of run 2
    g.pump()
    g.drop = lambda m: False
    g.engines[1].step(held[0])  # the old run's write arrives and commits now
    g.pump()
    assert all(m.seen == [b"old"] for m in g.machines.values())
    assert new == [] and old == []  # neither caller hears of it: the old one is gone


def _lose_leader(g: Group, dead: int) -> int:
    """Node `dead` goes silent; the others time out and elect one of them."""
    g.drop = lambda m: m.frm == dead or m.to == dead
    for _ in range(100):
        for i in g.ids:
            if i != dead:
                g.engines[i].tick()
        g.pump()
        leaders = [i for i in g.ids if i != dead and g.engines[i].role.value == "leader"]
        if leaders:
            return leaders[0]
    raise AssertionError("no new leader")


def _transfer(g: Group, frm: int, to: int) -> None:
    g.engines[frm].transfer_leader(to)
    g.pump()
    assert g.engines[to].role.value == "leader"


def test_a_forward_lost_with_its_leader_is_refused_once_a_later_term_commits() -> None:
    """The PROPOSE never reaches the leader (it died): as soon as a leader of a later term
    commits (its first entry applies here), the write is answered "not applied" — it can
    never commit now — instead of waiting for the expiry."""
    g = Group()
    g.drop = lambda m: m.type is MT.PROPOSE
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    g.pump()
    assert not got
    _lose_leader(g, 1)  # a new term; its leader's first entry commits and applies on node 2
    [(_, result, error)] = got
    assert type(error).__name__ == "NotLeader" and "was not applied" in str(error) and result is None
    assert g.engines[2].forward_counts.refused == 1 and not g.engines[2]._forwarded
    assert all(m.seen == [] for m in g.machines.values())


def test_a_forward_the_old_leader_replicated_is_answered_with_its_result_after_the_election() -> None:
    """The other side of that rule: a write the old leader appended and replicated, but did
    not commit before the term ended, commits under the new leader (before its first
    entry) and the follower answers it with its result, not "not applied"."""
    g = Group()
    # Node 1 appends and replicates the forwarded write to node 3, but no ack comes back.
    g.drop = lambda m: m.type is MT.APPEND_RESP or (m.type is MT.APPEND and m.to == 2)
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    g.pump()
    assert not got
    _lose_leader(g, 1)  # node 3 has the entry, so only it can win
    [(index, result, error)] = got
    assert error is None and result == ("done", b"put x") and index > 0


def test_a_leader_refuses_a_propose_sent_in_another_term() -> None:
    """A PROPOSE names the term it was sent in; a node that leads in another term (it
    was elected again meanwhile) refuses it, so the rule above stays true."""
    g = Group()
    got, done = answers()
    g.engines[2].propose(b"put x", done, forward=True)
    handle(g.engines[2])
    [propose] = [m for m in g.transports[2].sent if m.type is MT.PROPOSE]
    g.transports[2].sent.clear()
    assert propose.term == g.engines[1].node.term
    _transfer(g, 1, 3)
    _transfer(g, 3, 1)  # node 1 leads again, in a later term; the old PROPOSE arrives only now
    g.engines[1].step(propose)
    g.pump()
    [(_, _, error)] = got
    assert type(error).__name__ == "NotLeader"
    assert all(m.seen == [] for m in g.machines.values())
