"""SimNode: one simulated replica running the production `ReplicaEngine`.

Only the I/O is the simulator's: the disk (`SimStorage`, which loses unsynced writes on a
crash), the network (`SimNetwork`), time, and a small replicated dict as the state
machine. Persisting, sending, applying, proposal matching, read serving, compaction and
snapshot install are the engine's, exactly as the trio node runs them. A durable write
takes simulated time: the engine's `write` runs at once and `sync` + `apply` + `finish`
run when the simulated disk latency has passed. While a write is in flight, everything
addressed to the node (messages, ticks, client requests) waits in its inbox, as it would
wait in the trio node's mailbox. A crash can land anywhere, including inside that window.

The planted bugs (`--plant-bug`, ggap/sim/bugs.py) are engine subclasses that break one
rule each, so the simulator's checks are shown to catch a bug in the engine itself.
"""

from __future__ import annotations

import heapq
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ggap.codec import read_origin
from ggap.consensus.raft import (
    ConfState,
    CoreConfig,
    Entry,
    EntryKind,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
)
from ggap.replica.engine import (
    ApplyOutput,
    ForwardCounts,
    MembershipChanges,
    Outcome,
    ProposalCallback,
    ReadCallback,
    ReplicaEngine,
    Retention,
    TakenSnapshot,
    Work,
)
from ggap.sim.invariants import InvariantViolation
from ggap.sim.kv import Command, KVStateMachine, Opened, Refused, evaluate
from ggap.sim.storage import SimStorage
from ggap.types import Member, MemberChange, Membership

if TYPE_CHECKING:
    from ggap.sim.simulator import Simulator

_TICK, _MSG, _PROPOSE, _READ, _TRANSFER, _SNAP_REPORT, _MEMBER = range(7)
_QUIET = logging.getLogger("ggap.sim.engine")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # the trace (--log=short) says what matters
_LEADER_MSGS = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)

OnResult = Callable[[object], None]
OnMember = Callable[[object], None]  # the resulting Membership, or why it failed (a str)
OnError = Callable[[str], None]


@attrs.frozen(slots=True)
class Reply:
    """A client-visible result (a put's is None, which the engine would read as "no result")."""

    value: object


class SimMachine:
    """The engine's StateMachine over the node's volatile dict and its durable checkpoint."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    @property
    def applied_index(self) -> int:
        return self._node.kv.applied

    @property
    def revision(self) -> int:
        return self._node.kv.applied

    @property
    def membership(self) -> Membership:
        node = self._node
        if node.kv.membership is not None:
            return node.kv.membership
        return Membership(members=tuple(Member(i) for i in node.sim.ids), index=0)

    def apply(self, entries: Sequence[Entry], changes: MembershipChanges) -> ApplyOutput:
        node = self._node
        sim, kv = node.sim, node.kv
        outcomes: list[Outcome] = []
        for e in entries:
            if e.index <= kv.applied:
                outcomes.append(None)  # replayed after a snapshot put us ahead of the log
                continue
            sim.inv.apply(node.id, kv.applied, e)
            if e.kind is EntryKind.CONF_CHANGE:
                kv.apply(e)
                decided = changes.get(e.index)
                if isinstance(decided, Membership):
                    kv.membership = decided
                sim.inv.membership(node.id, e.index, self.membership, "applying a change")
                outcomes.append(decided)
                continue
            out = kv.apply(e)
            if kv.double_applied is not None:
                client, req = kv.double_applied
                raise InvariantViolation(
                    "exactly-once",
                    f"n{node.id} applied write {req} of client {client} a second time at {e.index}",
                )
            if out is None:
                outcomes.append(None)
                continue
            if not isinstance(out[2], (Refused, Opened)):
                sim.first_applied.setdefault((out[0], out[1]), (sim.now, out[2]))
            outcomes.append(Reply(out[2]))
        return ApplyOutput(outcomes=outcomes, revision=kv.applied)

    def take_snapshot(self) -> TakenSnapshot:
        node = self._node
        node.snap_kv = node.kv.copy()
        return TakenSnapshot(index=node.snap_kv.applied, membership=self.membership)

    def restore(self, meta: SnapshotMeta) -> None:
        node = self._node
        staged = node.staged.pop(meta.index, None)
        if staged is None and node.snap_kv is not None and node.snap_kv.applied == meta.index:
            staged = node.snap_kv  # recovering into our own (or an installed) snapshot
        if staged is None:
            raise RuntimeError(f"n{node.id}: snapshot {meta.index} was accepted but never received")
        node.staged = {i: d for i, d in node.staged.items() if i > meta.index}
        node.kv = staged.copy()
        node.disk_kv = staged.copy()
        node.snap_kv = staged.copy()
        node.sim.trace(node, f"installed snapshot {meta.index}@t{meta.term}")
        node.sim.inv.membership(node.id, meta.index, self.membership, "installing a snapshot")

    def preview(self, data: bytes, index: int) -> Reply:
        """What applying `data` now would answer (for the ack-before-commit planted bug)."""
        cmd = Command.decode(data)
        if cmd.kind == "open":
            return Reply(Opened(index))  # its id will be its index, if it ever commits
        if cmd.kind == "clock":
            return Reply(None)
        return Reply(evaluate(dict(self._node.kv.data), cmd))


class SimTransport:
    """The engine's Transport over the simulated network."""

    def __init__(self, node: SimNode) -> None:
        self._node = node

    def send(self, msgs: Iterable[Message]) -> None:
        node = self._node
        for m in msgs:
            if m.type is MessageType.APPLIED_REPORT:
                continue  # only the trio node uses them (WRITE_QUORUM_ALL, forwarding)
            node.sent(m)

    def send_snapshot(self, msg: Message) -> None:
        node = self._node
        assert msg.snapshot is not None
        data = node.snap_kv
        if data is None or data.applied != msg.snapshot.index:
            raise RuntimeError(
                f"n{node.id}: snapshot {msg.snapshot.index} has no matching checkpoint "
                f"({None if data is None else data.applied})"
            )
        node.sim.snapshot_data[(node.id, msg.snapshot.index)] = data.copy()
        node.sent(msg)
        # The transport has done its part: tell the core (on the next turn, like the trio
        # node's mailbox). If the message is lost, the core probes and sends it again.
        node.inbox.append((_SNAP_REPORT, msg.to, True))

    def unreachable(self) -> Iterable[int]:
        return ()

    def set_members(self, membership: Membership) -> None:
        pass  # every node can reach every other; the network decides what arrives


class SimNode:
    def __init__(self, sim: Simulator, node_id: int) -> None:
        self.sim = sim
        self.id = node_id
        self.storage = SimStorage(node_id, sim.inv.durable_append)
        self.disk_kv: KVStateMachine | None = None  # the durable state-machine checkpoint
        self.snap_kv: KVStateMachine | None = None  # the durable snapshot (what is sent)
        self.engine: ReplicaEngine | None = None
        self.up = False
        self.retired = False  # shut down for good (removed from the cluster)
        self.prev_conf: ConfState | None = None  # the core's configuration before its last change
        self.incarnation = 0
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.persisting: Work | None = None
        self.kv = KVStateMachine()
        self.state_machine = SimMachine(self)
        # Received snapshot data, by index: on disk (it survives crashes), as the trio
        # node's verified files in <data dir>/snap/ do.
        self.staged: dict[int, KVStateMachine] = {}
        self.commit = 0
        self.voted = (0, 0)  # (term, vote) of the last hard state written
        self.led_terms: set[int] = set()  # terms in which this node's log was checked as leader's
        self.pending_reads: list[tuple[int, int, Callable[[], None]]] = []
        self._read_seq = 0
        self.crashes = 0
        # Writes forwarded inside Raft, over all incarnations (each engine counts into it).
        self.forwarded = ForwardCounts()
        self.readies = 0
        self.snapshots_installed = 0
        self.snapshots_taken = 0
        self.compactions = 0
        self._may_have_ready = False

    # --- views the simulator reads ---

    @property
    def role(self) -> Role:
        return self.engine.role if self.engine is not None else Role.FOLLOWER

    @property
    def leader(self) -> int:
        return self.engine.leader if self.engine is not None else 0

    @property
    def term(self) -> int:
        return self.engine.term if self.engine is not None else self.storage.durable_hard_state().term

    # --- lifecycle ---

    def start(self) -> None:
        """Boot (or reboot) from whatever the disk durably holds."""
        sim, cfg = self.sim, self.sim.cfg
        self.incarnation += 1
        self.up = True
        self.inbox.clear()
        self.persisting = None
        self.kv = self.disk_kv.copy() if self.disk_kv is not None else KVStateMachine()
        hs, snap = self.storage.initial_state()
        self.commit = hs.commit
        self.voted = (hs.term, hs.vote)
        config = CoreConfig(
            id=self.id,
            voters=sim.ids,
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            pre_vote=cfg.pre_vote,
            check_quorum=cfg.check_quorum,
        )
        self.engine = sim.engine_class(
            config=config,
            storage=self.storage,
            state_machine=self.state_machine,
            transport=SimTransport(self),
            rng=random.Random(sim.node_rng.getrandbits(64)),
            logger=_QUIET,
            retention=Retention(
                snapshot_entries=cfg.snapshot_entries, log_retain=cfg.log_retain, max_lag=cfg.max_lag
            ),
            incarnation=self.incarnation,
        )
        self.engine.forward_counts = self.forwarded
        self.engine.on_forward_refused(lambda origin: sim.inv.forward_refused(self.id, origin))
        self._may_have_ready = True
        self.prev_conf = None
        sim.trace(
            self,
            f"start (incarnation {self.incarnation}) hs={hs.term}/{hs.vote}/{hs.commit} "
            f"snap={snap.index} kv@{self.kv.applied}",
        )
        applied = self.kv.applied
        sim.inv.membership(self.id, applied, self.state_machine.membership, "starting")
        sim.inv.core_conf(self.id, applied, self.engine.node.conf_state, "starting")
        sim.schedule(sim.now + sim.node_rng.randint(1, cfg.tick_ms), self._tick, self.incarnation)

    def crash(self, why: str) -> None:
        sim = self.sim
        engine = self.engine
        self.up = False
        self.engine = None
        self.incarnation += 1
        self.crashes += 1
        in_write = self.persisting is not None
        self.persisting = None
        self.inbox.clear()
        self.pending_reads.clear()
        if engine is not None:
            engine.closed = True  # callbacks of the dead incarnation never fire
        lost = self.storage.unsynced
        kept = self.storage.crash(sim.disk_rng, sim.cfg.torn_write if sim.faulty else 0.0)
        self.kv = KVStateMachine()
        sim.trace(
            self,
            f"CRASH ({why}{', mid-write' if in_write else ''}): {lost} unsynced writes, {kept} survived",
        )

    def retire(self, why: str) -> None:
        """Shut down for good (the operator stops a removed node); the disk is kept, for
        the final log cross-check, but the node never starts again."""
        if self.up:
            self.crash(why)
        self.retired = True
        self.sim.trace(self, f"RETIRED ({why})")

    def _tick(self, incarnation: int) -> None:
        if incarnation != self.incarnation:
            return
        sim, cfg = self.sim, self.sim.cfg
        self.inbox.append((_TICK,))
        jitter = sim.node_rng.randint(-cfg.tick_jitter_ms, cfg.tick_jitter_ms)
        sim.schedule(sim.now + max(1, cfg.tick_ms + jitter), self._tick, incarnation)

    # --- inputs (from the network and the clients) ---

    def deliver(self, msg: Message) -> None:
        if self.up:
            self.inbox.append((_MSG, msg))

    def submit_write(self, cmd: Command, on_ok: OnResult, on_err: OnError) -> None:
        if not self.up:
            on_err("node down")
            return
        self.inbox.append((_PROPOSE, cmd, on_ok, on_err))

    def submit_read(self, ctx: bytes, key: str, on_ok: OnResult, on_err: OnError) -> None:
        if not self.up:
            on_err("node down")
            return
        if self.sim.cfg.plant_bug == "stale-read":
            # PLANTED BUG: serve the read from local state, skipping ReadIndex.
            on_ok(self.kv.get(key))
            return
        self.inbox.append((_READ, ctx, key, on_ok, on_err))

    def submit_membership(self, change: MemberChange, on_done: OnMember) -> None:
        """An operator's membership change, asked of this node (the leader, it hopes)."""
        if not self.up:
            on_done("node down")
            return
        self.inbox.append((_MEMBER, change, on_done))

    def submit_transfer(self, target: int) -> None:
        """An operator's "move leadership to `target`" (exercises TIMEOUT_NOW)."""
        if self.up:
            self.inbox.append((_TRANSFER, target))

    # --- the raft loop ---

    def drive(self) -> None:
        """Run until blocked on a write or out of work."""
        if not self.inbox and not self._may_have_ready:
            return  # engine output only changes after an input or a finished Ready
        while self.up and self.persisting is None:
            engine = self.engine
            assert engine is not None
            if self.inbox:
                while self.inbox:
                    self._step(engine, self.inbox.popleft())
            else:
                work = engine.take_ready()
                if work is None:
                    self._may_have_ready = False
                    return
                self._handle(engine, work)

    def _step(self, engine: ReplicaEngine, item: tuple[Any, ...]) -> None:
        kind = item[0]
        if kind == _TICK:
            engine.tick()
        elif kind == _MSG:
            msg: Message = item[1]
            if self.sim.tracing:
                self.sim.trace(self, f"recv {_fmt_msg(msg)}")
            if msg.type is MessageType.SNAPSHOT and msg.snapshot is not None:
                data = self.sim.snapshot_data.get((msg.frm, msg.snapshot.index))
                if data is None:
                    return  # its data never arrived: as if the transfer failed
                self.staged[msg.snapshot.index] = data
            engine.step(msg)
        elif kind == _PROPOSE:
            _, cmd, on_ok, on_err = item
            # Which writes a follower forwards is a function of the request (no RNG draw).
            forward = (cmd.client * 31 + cmd.req) % 100 < self.sim.cfg.forward_percent
            engine.propose(cmd.encode(), self._proposal_callback(on_ok, on_err), forward=forward)
        elif kind == _READ:
            _, ctx, key, on_ok, on_err = item
            engine.read_index(ctx, self._read_callback(key, on_ok, on_err))
        elif kind == _MEMBER:
            _, change, on_done = item
            engine.propose_membership(change, self._member_callback(on_done))
        elif kind == _TRANSFER:
            try:
                engine.transfer_leader(item[1])
            except Exception:  # not the leader any more, or not a voter
                return
            self.sim.trace(self, f"transfer leadership to n{item[1]}")
        else:
            engine.report_snapshot(item[1], item[2])

    def _proposal_callback(self, on_ok: OnResult, on_err: OnError) -> ProposalCallback:
        incarnation = self.incarnation
        answered = False

        def done(_index: int, result: object, error: BaseException | None) -> None:
            nonlocal answered
            if answered or incarnation != self.incarnation:
                return
            answered = True
            if error is not None:
                on_err(f"{type(error).__name__}: {error}")
            else:
                assert isinstance(result, Reply), result
                on_ok(result.value)

        return done

    def _member_callback(self, on_done: OnMember) -> ProposalCallback:
        incarnation = self.incarnation

        def done(_index: int, result: object, error: BaseException | None) -> None:
            if incarnation == self.incarnation:
                on_done(result if error is None else f"{type(error).__name__}: {error}")

        return done

    def _read_callback(self, key: str, on_ok: OnResult, on_err: OnError) -> ReadCallback:
        incarnation = self.incarnation

        def done(index: int, error: BaseException | None) -> None:
            if incarnation != self.incarnation:
                return
            if error is not None:
                on_err(f"read: {error}")
                return

            def serve() -> None:
                on_ok(self.kv.get(key))

            if self.kv.applied >= index:
                serve()
            else:
                self._read_seq += 1
                heapq.heappush(self.pending_reads, (index, self._read_seq, serve))

        return done

    def _handle(self, engine: ReplicaEngine, work: Work) -> None:
        sim = self.sim
        rd = work.ready
        self.readies += 1
        if sim.tracing:
            sim.trace(self, "ready " + _fmt_ready(rd))
        if rd.snapshot is not None:
            self.snapshots_installed += 1
        engine.write(work)
        if rd.hard_state is not None and rd.hard_state.commit > self.commit:
            self.commit = rd.hard_state.commit
            sim.inv.commit(self.id, self.commit, self.storage.term, self.storage.first_index())
            core = engine.node
            if core.role is Role.LEADER:
                confs = [core.conf_state] + ([self.prev_conf] if self.prev_conf is not None else [])
                nodes = sim.nodes
                sim.inv.commit_quorum(
                    self.id,
                    core.term,
                    self.commit,
                    confs,
                    lambda v, i, t: v in nodes and nodes[v].storage.durably_holds(i, t),
                )
        if engine.role == Role.LEADER:
            self._became_leader("ready")
        if work.must_sync:
            cfg = sim.cfg
            latency = sim.disk_rng.randint(cfg.persist_min_ms, cfg.persist_max_ms)
            self.persisting = work
            sim.schedule(sim.now + latency, self._persisted, self.incarnation)
            p = cfg.crash_in_persist
            hs = rd.hard_state
            if hs is not None:
                if hs.vote and (hs.term, hs.vote) != self.voted:
                    p = max(p, cfg.crash_in_vote)  # this write records a new vote
                self.voted = (hs.term, hs.vote)
            if rd.snapshot is not None:
                p = max(p, cfg.crash_in_vote)  # crash inside snapshot installs often too
            if sim.faulty and p and latency > 0 and sim.disk_rng.random() < p:
                at = sim.now + sim.disk_rng.randint(0, max(0, latency - 1))
                sim.schedule(at, sim.crash_node, self.id, self.incarnation, "during write")
        else:
            self._complete(engine, work)

    def _persisted(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.persisting is None or self.engine is None:
            return
        work, self.persisting = self.persisting, None
        self._complete(self.engine, work)

    def _complete(self, engine: ReplicaEngine, work: Work) -> None:
        engine.sync(work)
        sim = self.sim
        if (
            work.ready.snapshot is not None
            and sim.faulty
            and sim.cfg.crash_in_vote
            and sim.disk_rng.random() < sim.cfg.crash_in_vote
        ):
            # The log now records the snapshot; the state machine has not installed it.
            sim.crash_node(self.id, self.incarnation, "between recording and installing a snapshot")
            return
        for e in work.ready.committed:
            # The state machine sees entries without their origin stamp: check forwards here.
            origin = read_origin(e.data) if e.kind is EntryKind.NORMAL else None
            if origin is not None and e.index > self.kv.applied:
                sim.inv.forward_applied(origin, e.index)
        output = engine.apply(work)
        before = engine.node.conf_state
        engine.finish(work, output)
        after = engine.node.conf_state
        if after != before:
            self.prev_conf = before
        rd = work.ready
        if rd.snapshot is not None or any(e.kind is EntryKind.CONF_CHANGE for e in rd.committed):
            sim.inv.core_conf(self.id, self.kv.applied, after, "after applying")

        pending = self.pending_reads
        while pending and pending[0][0] <= self.kv.applied:
            heapq.heappop(pending)[2]()
        if engine.snapshot_due():
            # Taking it is instant here; the trio node does it on a thread meanwhile.
            engine.snapshot_started()
            taken = self.state_machine.take_snapshot()
            index = taken.index
            engine.record_snapshot(taken)
            upto = engine.compaction_point()
            if upto is not None:
                while engine.compact_log(upto) < upto:
                    pass
            engine.snapshot_finished()
            self.snapshots_taken += 1
            if upto is not None:
                self.compactions += 1
            self.sim.trace(self, f"snapshot at {index}, log compacted through {upto}")
        self._may_have_ready = True

    def sent(self, m: Message) -> None:
        if m.type in _LEADER_MSGS and m.term not in self.led_terms:
            self._became_leader(m.type.name, m.term)
        self.sim.net.send(m, self.sim.now)

    def _became_leader(self, how: str, term: int | None = None) -> None:
        term = self.term if term is None else term
        if term in self.led_terms:
            return
        self.sim.inv.leader(self.id, term, how)
        self.led_terms.add(term)
        st = self.storage
        first = st.first_index()
        self.sim.inv.leader_log(
            self.id, term, [st.term(i) for i in range(first - 1, st.last_index() + 1)], first=first - 1
        )
        self.sim.trace(self, f"LEADER of t{term} (via {how}), log {first}-{st.last_index()}")

    # --- introspection ---

    def status_line(self) -> str:
        if not self.up:
            return f"n{self.id} DOWN  durable hs={self.storage.durable_hard_state()}"
        return (
            f"n{self.id} {self.role.value:13} t{self.term} leader={self.leader} commit={self.commit} "
            f"applied={self.kv.applied} log={self.storage.first_index()}-{self.storage.last_index()} "
            f"inbox={len(self.inbox)}{' writing' if self.persisting is not None else ''}"
        )

    def short(self) -> str:
        """Compact per-event prefix for --log=short: role, term, commit, applied, log range."""
        if not self.up:
            return f"n{self.id} -  t{self.term:<3} down"
        r = {Role.LEADER: "L", Role.FOLLOWER: "F", Role.CANDIDATE: "C", Role.PRE_CANDIDATE: "P"}.get(
            self.role, "?"
        )
        return (
            f"n{self.id} {r} t{self.term:<3} c{self.commit:<4} a{self.kv.applied:<4} "
            f"log{self.storage.first_index()}-{self.storage.last_index()}"
        )


def _fmt_msg(m: Message) -> str:
    s = f"{m.type.name} {m.frm}->{m.to} t{m.term}"
    if m.type in (MessageType.APPEND, MessageType.PROPOSE):
        s += f" i{m.index}/t{m.log_term} n{len(m.entries)} c{m.commit}"
    elif m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
        s += f" last={m.index}/t{m.log_term}"
    elif m.type == MessageType.HEARTBEAT:
        s += f" c{m.commit}"
    elif m.type == MessageType.SNAPSHOT and m.snapshot is not None:
        s += f" snap={m.snapshot.index}/t{m.snapshot.term}"
    else:
        s += f" i{m.index}"
    if m.reject:
        s += f" REJECT hint={m.reject_hint}"
    return s


def _fmt_ready(rd: Ready) -> str:
    parts = []
    if rd.soft_state is not None:
        parts.append(f"ss={rd.soft_state.role.value}/{rd.soft_state.leader}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        parts.append(f"hs={hs.term}/{hs.vote}/{hs.commit}")
    if rd.snapshot is not None:
        parts.append(f"snap={rd.snapshot.index}/t{rd.snapshot.term}")
    if rd.entries:
        parts.append(f"ents={rd.entries[0].index}-{rd.entries[-1].index}")
    if rd.committed:
        parts.append(f"commit={rd.committed[0].index}-{rd.committed[-1].index}")
    if rd.messages:
        parts.append(f"msgs={len(rd.messages)}")
    if rd.messages_after_persist:
        parts.append("after=" + ",".join(f"{m.type.name}->{m.to}" for m in rd.messages_after_persist))
    if rd.read_states:
        parts.append(f"reads={len(rd.read_states)}")
    if rd.must_sync:
        parts.append("sync")
    return " ".join(parts)
