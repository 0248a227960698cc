"""SimNode: the driver of one RawNode, i.e. the simulator's version of the raft loop.

It follows the Ready contract (ggap.consensus.raft.types.Ready) the way the real trio driver
must: `messages` go out at once, the write takes simulated time, `messages_after_persist`
leave only once it is durable, then committed entries are applied and reads released, then
`advance`. While a write is in flight, everything addressed to the node (messages, ticks,
client requests) waits in its inbox, exactly as it would wait in the raft task's channel.

A crash can land anywhere, including inside a write's latency window, and loses what was
not synced. The planted bugs (`--plant-bug`) live here and in the client read path, each
behind one `if`, so what they break is easy to see.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ggap.consensus.raft.core import ProposalDropped, RawNode
from ggap.consensus.raft.types import (
    CoreConfig,
    Message,
    MessageType,
    Ready,
    Role,
)
from ggap.sim.kv import Command, KVStateMachine, evaluate
from ggap.sim.storage import SimStorage

if TYPE_CHECKING:
    from ggap.sim.simulator import Simulator

_TICK, _MSG, _PROPOSE, _READ, _TRANSFER = range(5)
_LEADER_MSGS = (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT)

OnResult = Callable[[object], None]
OnError = Callable[[str], None]


class SimNode:
    def __init__(self, sim: Simulator, node_id: int) -> None:
        self.sim = sim
        self.id = node_id
        self.storage = SimStorage(node_id, sim.inv.durable_append)
        self.raw: RawNode | None = None
        self.up = False
        self.incarnation = 0
        self.inbox: deque[tuple[Any, ...]] = deque()
        self.persisting: Ready | None = None
        self.kv = KVStateMachine()
        self.role = Role.FOLLOWER
        self.leader = 0
        self.term = 0
        self.commit = 0
        self.voted = (0, 0)  # (term, vote) of the last hard state written
        self.led_terms: set[int] = set()  # terms in which this node's log was checked as leader's
        self.write_waiters: dict[tuple[int, int], OnResult] = {}
        self.read_waiters: dict[bytes, Callable[[], None]] = {}
        self.pending_reads: list[tuple[int, int, Callable[[], None]]] = []
        self._read_seq = 0
        self.crashes = 0
        self.readies = 0
        self._may_have_ready = False

    # --- lifecycle ---

    def start(self) -> None:
        """Boot (or reboot) from whatever the disk durably holds."""
        sim, cfg = self.sim, self.sim.cfg
        self.incarnation += 1
        self.up = True
        self.inbox.clear()
        self.persisting = None
        self.kv = KVStateMachine()
        hs, snap = self.storage.initial_state()
        self.kv.applied = snap.index
        self.term, self.commit = hs.term, hs.commit
        self.voted = (hs.term, hs.vote)
        self.role, self.leader = Role.FOLLOWER, 0
        raft_cfg = CoreConfig(
            id=self.id,
            voters=sim.ids,
            election_tick=cfg.election_tick,
            heartbeat_tick=cfg.heartbeat_tick,
            pre_vote=cfg.pre_vote,
            check_quorum=cfg.check_quorum,
        )
        self.raw = RawNode(raft_cfg, self.storage, random.Random(sim.node_rng.getrandbits(64)))
        self._may_have_ready = True
        sim.trace(self, f"start (incarnation {self.incarnation}) hs={hs.term}/{hs.vote}/{hs.commit}")
        sim.schedule(sim.now + sim.node_rng.randint(1, cfg.tick_ms), self._tick, self.incarnation)

    def crash(self, why: str) -> None:
        sim = self.sim
        self.up = False
        self.raw = None
        self.incarnation += 1
        self.crashes += 1
        in_write = self.persisting is not None
        self.persisting = None
        self.inbox.clear()
        self.write_waiters.clear()
        self.read_waiters.clear()
        self.pending_reads.clear()
        lost = self.storage.unsynced
        kept = self.storage.crash(sim.disk_rng, sim.cfg.torn_write if sim.faulty else 0.0)
        self.kv = KVStateMachine()
        self.role, self.leader = Role.FOLLOWER, 0
        sim.trace(
            self,
            f"CRASH ({why}{', mid-write' if in_write else ''}): {lost} unsynced writes, {kept} survived",
        )

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

    def submit_transfer(self, target: int) -> None:
        """An operator's "move leadership to `target`" (exercises TIMEOUT_NOW)."""
        if self.up:
            self.inbox.append((_TRANSFER, target))

    # --- the raft loop ---

    def drive(self) -> None:
        """Run until blocked on a write or out of work."""
        if not self.inbox and not self._may_have_ready:
            return  # RawNode output only changes after an input or an advance
        while self.up and self.persisting is None:
            raw = self.raw
            assert raw is not None
            if self.inbox:
                while self.inbox:
                    item = self.inbox.popleft()
                    kind = item[0]
                    if kind == _TICK:
                        raw.tick()
                    elif kind == _MSG:
                        if self.sim.tracing:
                            self.sim.trace(self, f"recv {_fmt_msg(item[1])}")
                        raw.step(item[1])
                    elif kind == _PROPOSE:
                        _, cmd, on_ok, on_err = item
                        try:
                            raw.propose(cmd.encode())
                        except ProposalDropped as e:
                            on_err(f"dropped: {e}")
                            continue
                        if self.sim.cfg.plant_bug == "ack-before-commit":
                            # PLANTED BUG: acknowledge when proposed, not when applied.
                            on_ok(evaluate(dict(self.kv.data), cmd))
                        else:
                            self.write_waiters[(cmd.client, cmd.req)] = on_ok
                    elif kind == _TRANSFER:
                        try:
                            raw.transfer_leader(item[1])
                        except ProposalDropped:
                            continue  # no longer the leader: nothing to transfer
                        self.sim.trace(self, f"transfer leadership to n{item[1]}")
                    else:
                        _, ctx, key, on_ok, on_err = item
                        if not raw.read_index(ctx):
                            on_err("read dropped: no leader known")
                            continue
                        self.read_waiters[ctx] = self._reader(key, on_ok)
            elif raw.has_ready():
                self._handle_ready(raw.ready())
            else:
                self._may_have_ready = False
                return

    def _reader(self, key: str, on_ok: OnResult) -> Callable[[], None]:
        return lambda: on_ok(self.kv.get(key))

    def _handle_ready(self, rd: Ready) -> None:
        sim = self.sim
        self.readies += 1
        if sim.tracing:
            sim.trace(self, "ready " + _fmt_ready(rd))
        if rd.hard_state is not None:
            self.term = rd.hard_state.term
        if rd.soft_state is not None:
            self.role, self.leader = rd.soft_state.role, rd.soft_state.leader
        for m in rd.messages:
            self._send(m)
        if rd.hard_state is not None or rd.entries or rd.snapshot is not None:
            self.storage.write(rd.hard_state, rd.entries, rd.snapshot)
        if rd.hard_state is not None and rd.hard_state.commit > self.commit:
            self.commit = rd.hard_state.commit
            sim.inv.commit(self.id, self.commit, self.storage.term)
        if self.role == Role.LEADER:
            self._became_leader("ready")
        if sim.cfg.plant_bug == "skip-persist-before-vote":
            # PLANTED BUG: votes and append acks leave before the write they promise is
            # durable, so a crash inside the write's latency window breaks the promise.
            for m in rd.messages_after_persist:
                self._send(m)
        if rd.must_sync:
            cfg = sim.cfg
            latency = sim.disk_rng.randint(cfg.persist_min_ms, cfg.persist_max_ms)
            self.persisting = rd
            sim.schedule(sim.now + latency, self._persisted, self.incarnation)
            p = cfg.crash_in_persist
            hs = rd.hard_state
            if hs is not None:
                if hs.vote and (hs.term, hs.vote) != self.voted:
                    p = max(p, cfg.crash_in_vote)  # this write records a new vote
                self.voted = (hs.term, hs.vote)
            if sim.faulty and p and latency > 0 and sim.disk_rng.random() < p:
                at = sim.now + sim.disk_rng.randint(0, max(0, latency - 1))
                sim.schedule(at, sim.crash_node, self.id, self.incarnation, "during write")
        else:
            self._finish(rd)

    def _persisted(self, incarnation: int) -> None:
        if incarnation != self.incarnation or self.persisting is None:
            return
        rd = self.persisting
        self.storage.sync()
        self.persisting = None
        self._finish(rd)

    def _finish(self, rd: Ready) -> None:
        sim = self.sim
        if sim.cfg.plant_bug != "skip-persist-before-vote":
            for m in rd.messages_after_persist:
                self._send(m)
        if rd.committed:
            kv, inv, waiters, first_applied = self.kv, sim.inv, self.write_waiters, sim.first_applied
            for e in rd.committed:
                inv.apply(self.id, kv.applied, e)
                out = kv.apply(e)
                if out is not None:
                    first_applied.setdefault((out[0], out[1]), (sim.now, out[2]))
                    cb = waiters.pop((out[0], out[1]), None)
                    if cb is not None:
                        cb(out[2])
            pending = self.pending_reads
            while pending and pending[0][0] <= kv.applied:
                heapq.heappop(pending)[2]()
        for rs in rd.read_states:
            serve = self.read_waiters.pop(rs.context, None)
            if serve is None:
                continue
            if self.kv.applied >= rs.index:
                serve()
            else:
                self._read_seq += 1
                heapq.heappush(self.pending_reads, (rs.index, self._read_seq, serve))
        assert self.raw is not None
        self.raw.advance(rd)
        self._may_have_ready = True

    def _send(self, m: Message) -> None:
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
        if st.snapshot().index == 0:
            self.sim.inv.leader_log(self.id, term, [0] + [st.term(i) for i in range(1, st.last_index() + 1)])
        self.sim.trace(self, f"LEADER of t{term} (via {how}), last index {st.last_index()}")

    # --- introspection ---

    def status_line(self) -> str:
        if not self.up:
            return f"n{self.id} DOWN  durable hs={self.storage.durable_hard_state()}"
        return (
            f"n{self.id} {self.role.value:13} t{self.term} leader={self.leader} commit={self.commit} "
            f"applied={self.kv.applied} last={self.storage.last_index()} inbox={len(self.inbox)}"
            f"{' writing' if self.persisting is not None else ''}"
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
