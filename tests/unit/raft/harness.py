"""A tiny in-test network for RawNodes: persist-then-send, FIFO delivery, cut links.

Deliberately small: the seeded, fault-injecting cluster simulator lives in ggap/sim. Here
every step is explicit so a test reads as a scenario.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ggap.consensus.raft import (
    ConfChange,
    ConfState,
    CoreConfig,
    Entry,
    EntryKind,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    decode_conf_change,
)


def cfg(id: int, voters: Sequence[int], **kw: Any) -> CoreConfig:
    base: dict[str, Any] = {"election_tick": 10, "heartbeat_tick": 1}
    base.update(kw)
    return CoreConfig(id=id, voters=tuple(voters), **base)


def drain(node: RawNode, storage: MemoryStorage) -> list[Ready]:
    """Handle every Ready of a lone node the way a driver must (persist, then advance)."""
    out = []
    while node.has_ready():
        rd = node.ready()
        persist(storage, rd)
        node.advance(rd)
        out.append(rd)
    return out


def persist(st: MemoryStorage, rd: Ready, *, commit_only: bool = True) -> None:
    """Write what `rd` asks for. `commit_only=False` skips a hard state that only moved the
    commit index (must_sync False, nothing else to write), as the replica engine does."""
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    st.append(list(rd.entries))
    if rd.hard_state is not None and (commit_only or rd.must_sync or rd.entries or rd.snapshot):
        st.set_hard_state(rd.hard_state)


def new_storage(conf: ConfState) -> MemoryStorage:
    """An empty log whose configuration as of index 0 is `conf` (the bootstrap one)."""
    return MemoryStorage(snapshot=SnapshotMeta(voters=conf.voters, learners=conf.learners))


class Cluster:
    def __init__(
        self,
        voters: Sequence[int],
        *,
        learners: Sequence[int] = (),
        seed: int = 0,
        storages: dict[int, MemoryStorage] | None = None,
        **config: Any,
    ) -> None:
        self.voters = tuple(voters)
        self.learners = tuple(learners)
        self.bootstrap = ConfState(voters=self.voters, learners=self.learners)
        self.seed = seed
        self.config = config
        self.storages = storages or {}
        # Each node's applied configurations as (index it took effect at, conf): what its
        # driver stores with the state machine. A restart builds the core with the last one.
        self.confs: dict[int, list[tuple[int, ConfState]]] = {}
        self.nodes: dict[int, RawNode] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []  # every message handed to the network, in order
        self.cut: set[tuple[int, int]] = set()  # directed links that drop everything
        self.drop: Callable[[Message], bool] = lambda m: False
        self.report_snapshots = True  # tell the sender how each SNAPSHOT went, as a driver does
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.readies: list[tuple[int, Ready]] = []  # every Ready handled, in order
        # Drivers that keep one Ready in flight: its apply (and advance) waits until the node
        # is processed again, and messages are stepped meanwhile (as the trio node's writer
        # thread allows). Ticks and votes then meet committed-but-unapplied entries.
        self.pipelined: set[int] = set()
        self.held: dict[int, Ready] = {}
        self.persist_commit_only = True  # False: skip commit-only hard states, like the engine
        # Called after each Ready is persisted (before it is applied): invariant checks.
        self.on_persist: Callable[[int, Ready], None] | None = None
        for i in (*self.voters, *self.learners):
            self.storages.setdefault(i, new_storage(self.bootstrap))
            self.start(i)

    def start(self, i: int) -> RawNode:
        """(Re)create node i from its storage, as after a crash that kept everything persisted
        (the state machine included: `applied`, with the configuration as of it)."""
        self.held.pop(i, None)  # persisted, never applied: the crash lost it
        applied = self.applied.setdefault(i, [])
        snap = self.storages[i].snapshot()
        if snap.index > len(applied):
            # The log recorded a received snapshot the state machine never installed (a crash
            # in between): install it first, as the replica engine's recovery does.
            self._install(i, snap)
        conf = self.conf(i)
        c = cfg(i, conf.voters, learners=conf.learners, **self.config)
        rng = random.Random(f"{self.seed}/{i}")
        self.nodes[i] = RawNode(c, self.storages[i], rng, applied=len(self.applied[i]))
        self.read_states.setdefault(i, [])
        return self.nodes[i]

    def add_node(self, i: int) -> RawNode:
        """Start a brand-new node i (empty log, the bootstrap configuration as of index 0),
        as a joining node's driver does before the leader adds it."""
        assert i not in self.nodes and i not in self.storages
        self.storages[i] = new_storage(self.bootstrap)
        return self.start(i)

    def stop(self, i: int) -> None:
        """Shut node i down for good (its messages in flight are lost)."""
        del self.nodes[i]
        self.held.pop(i, None)

    def conf(self, i: int) -> ConfState:
        """Node i's applied configuration."""
        return self.confs.setdefault(i, [(0, self.bootstrap)])[-1][1]

    def conf_at(self, i: int, index: int) -> ConfState:
        """Node i's configuration as of applied index `index`."""
        hist = self.confs.setdefault(i, [(0, self.bootstrap)])
        return [conf for at, conf in hist if at <= index][-1]

    def compact(self, i: int, upto: int | None = None) -> None:
        """Snapshot node i at `upto` (default: its applied index) and drop the log behind it."""
        upto = self.nodes[i].status().applied if upto is None else upto
        self.storages[i].compact(upto, self.conf_at(i, upto))

    def __getitem__(self, i: int) -> RawNode:
        return self.nodes[i]

    # ---- network ------------------------------------------------------------------------

    def isolate(self, i: int) -> None:
        for j in self.nodes:
            if j != i:
                self.cut |= {(i, j), (j, i)}

    def heal(self) -> None:
        self.cut.clear()

    def emit(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.sent.append(m)
            self.queue.append(m)

    def deliver_one(self) -> Message | None:
        return self.deliver(self.queue.popleft())

    def deliver(self, m: Message, lost: bool = False) -> Message | None:
        """Step `m` into its target unless cut/dropped; report snapshot outcomes as a driver must."""
        lost = lost or (m.frm, m.to) in self.cut or self.drop(m) or m.to not in self.nodes
        if not lost:
            self.nodes[m.to].step(m)
        if m.type is MessageType.SNAPSHOT and self.report_snapshots:
            self.nodes[m.frm].report_snapshot(m.to, ok=not lost)
            self.process(m.frm)
        return None if lost else m

    # ---- driving ------------------------------------------------------------------------

    def process(self, i: int) -> list[Ready]:
        node, st = self.nodes[i], self.storages[i]
        out = []
        held = self.held.pop(i, None)
        if held is not None:
            self._apply(i, held)
            out.append(held)
        while node.has_ready():
            rd = node.ready()
            self.emit(rd.messages)  # may leave before the write is durable
            persist(st, rd, commit_only=self.persist_commit_only)
            self.emit(rd.messages_after_persist)
            if self.on_persist is not None:
                self.on_persist(i, rd)
            if i in self.pipelined:
                self.held[i] = rd
                break
            self._apply(i, rd)
            out.append(rd)
        return out

    def _apply(self, i: int, rd: Ready) -> None:
        """Apply `rd` (install its snapshot, apply its committed entries) and advance."""
        node = self.nodes[i]
        if rd.snapshot is not None:
            self._install(i, rd.snapshot)
        for e in rd.committed:
            # Apply membership changes in log order, as a driver must.
            if e.kind == EntryKind.CONF_CHANGE:
                conf = node.apply_conf_change(decode_conf_change(e.data))
                self.confs.setdefault(i, [(0, self.bootstrap)]).append((e.index, conf))
        self.applied[i].extend(rd.committed)
        self.read_states[i].extend(rd.read_states)
        node.advance(rd)
        self.readies.append((i, rd))

    def _install(self, i: int, snap: SnapshotMeta) -> None:
        # The state arrives out of band; stand in for it with whoever applied the most
        # (every applied sequence starts at index 1 and they agree: State Machine Safety).
        donor = max(self.applied.values(), key=len)
        assert len(donor) >= snap.index
        self.applied[i] = list(donor[: snap.index])
        self.confs[i] = [(snap.index, ConfState(voters=snap.voters, learners=snap.learners))]

    def process_all(self) -> None:
        for i in self.nodes:
            self.process(i)

    def stabilize(self, max_steps: int = 100_000) -> None:
        """Process readies and deliver messages until nothing moves."""
        for _ in range(max_steps):
            self.process_all()
            if not self.queue:
                return
            while self.queue:
                m = self.deliver_one()
                if m is not None:
                    self.process(m.to)
        raise AssertionError("cluster did not stabilize")

    def tick(self, ids: Iterable[int] | None = None, n: int = 1) -> None:
        for _ in range(n):
            for i in ids if ids is not None else list(self.nodes):
                self.nodes[i].tick()
            self.stabilize()

    def elect(self, i: int) -> None:
        self.nodes[i].campaign()
        self.stabilize()
        assert self.nodes[i].role is Role.LEADER, self.nodes[i].status()

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.role is Role.LEADER]

    def sent_of(self, type: MessageType, frm: int | None = None, to: int | None = None) -> list[Message]:
        return [
            m
            for m in self.sent
            if m.type is type and (frm is None or m.frm == frm) and (to is None or m.to == to)
        ]

    def log_of(self, i: int) -> list[tuple[int, int]]:
        """(index, term) of every entry node i holds durably."""
        st = self.storages[i]
        return [(e.index, e.term) for e in st.entries(st.first_index(), st.last_index() + 1, 1 << 62)]

    def propose(self, i: int, data: bytes) -> None:
        self.nodes[i].propose(data)
        self.stabilize()

    def change(self, i: int, cc: ConfChange) -> int:
        """Propose a membership change at node i and let the cluster settle; returns its index."""
        index = self.nodes[i].propose_conf_change(cc)
        self.stabilize()
        return index
