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
    CoreConfig,
    Entry,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    ReadState,
    Ready,
    Role,
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


def persist(st: MemoryStorage, rd: Ready) -> None:
    if rd.snapshot is not None:
        st.apply_snapshot(rd.snapshot)
    st.append(list(rd.entries))
    if rd.hard_state is not None:
        st.set_hard_state(rd.hard_state)


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
        self.seed = seed
        self.config = config
        self.storages = storages or {}
        self.nodes: dict[int, RawNode] = {}
        self.queue: deque[Message] = deque()
        self.sent: list[Message] = []  # every message handed to the network, in order
        self.cut: set[tuple[int, int]] = set()  # directed links that drop everything
        self.drop: Callable[[Message], bool] = lambda m: False
        self.report_snapshots = True  # tell the sender how each SNAPSHOT went, as a driver does
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list[ReadState]] = {}
        self.readies: list[tuple[int, Ready]] = []  # every Ready handled, in order
        for i in (*self.voters, *self.learners):
            self.storages.setdefault(i, MemoryStorage())
            self.start(i)

    def start(self, i: int) -> RawNode:
        """(Re)create node i from its storage, as after a crash that kept everything persisted."""
        c = cfg(i, self.voters, learners=self.learners, **self.config)
        applied = self.nodes[i].status().applied if i in self.nodes else 0
        self.nodes[i] = RawNode(c, self.storages[i], random.Random(f"{self.seed}/{i}"), applied=applied)
        self.applied.setdefault(i, [])
        self.read_states.setdefault(i, [])
        return self.nodes[i]

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
        while node.has_ready():
            rd = node.ready()
            self.emit(rd.messages)  # may leave before the write is durable
            persist(st, rd)
            self.emit(rd.messages_after_persist)
            if rd.snapshot is not None:
                # The state arrives out of band; stand in for it with whoever applied the most
                # (every applied sequence starts at index 1 and they agree: State Machine Safety).
                donor = max(self.applied.values(), key=len)
                assert len(donor) >= rd.snapshot.index
                self.applied[i] = list(donor[: rd.snapshot.index])
            self.applied[i].extend(rd.committed)
            self.read_states[i].extend(rd.read_states)
            node.advance(rd)
            out.append(rd)
            self.readies.append((i, rd))
        return out

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
