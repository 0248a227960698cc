"""The trio driver around the sans-I/O Raft core.

One task owns the RawNode. Everything else reaches it through one bounded channel of
events (peer messages, ticks, proposals, read requests); the loop drains whatever is
queued, steps it all into the core, then handles every Ready in the one place where the
rule is enforced:

    1. send `messages` (a leader's appends go out while its own write is in flight),
    2. persist hard state + entries to raft.db (one transaction, one fsync) and, in the same
       thread hop, apply `committed` entries to kv.db,
    3. only then send `messages_after_persist` (votes, append acks),
    4. answer proposers and readers, publish events, advance.

Everything that arrived during one loop turn shares step 2: group commit.

A proposal is matched to its result by (index, term): the leader learns the index when it
appends; when that index is applied, the same term means our entry won, another term
means a new leader overwrote it and the write never happened.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ggap import codec
from ggap.config.model import RaftConfig as RaftKnobs
from ggap.config.peers import split_addr
from ggap.consensus.api import AppliedBatch, RoleInfo
from ggap.consensus.applied import AppliedProgress
from ggap.consensus.raft import MemoryStorage, ProgressState, ProposalDropped, RawNode
from ggap.consensus.raft.types import (
    CoreConfig,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    Ready,
    Role,
    SnapshotMeta,
)
from ggap.storage import Applied, KvStore, LogStore
from ggap.transport import PeerTransport
from ggap.types import ApplyResult, Command, GgapError, Internal, Noop, NotLeader, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_EVENT_QUEUE = 16_384


@attrs.define(eq=False)
class _Pending:
    """A proposal or read waiting for the loop."""

    command: Command | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    index: int = 0
    term: int = 0
    result: Any = None
    error: BaseException | None = None

    def finish(self, result: Any, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@attrs.frozen
class ClusterSpec:
    node_id: int
    peers: dict[int, str]  # voter id -> cluster address (this node included)
    client_addr: str
    cluster_id: str


def entry_command(entry: Entry) -> Command:
    if entry.kind is EntryKind.NORMAL:
        return codec.decode_command(entry.data)
    return Noop()  # NOOP entries (and, until membership changes exist, conf changes)


class RaftConsensus:
    """The Consensus protocol (ggap/consensus/api.py) over a Raft group."""

    def __init__(
        self,
        *,
        spec: ClusterSpec,
        raft: RaftKnobs,
        log_store: LogStore,
        kv: KvStore,
        write_all_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._spec = spec
        self._knobs = raft
        self._log = log_store
        self._kv = kv
        self._write_all_timeout_s = write_all_timeout_s
        self._writer = trio.CapacityLimiter(1)
        self._send, self._recv = trio.open_memory_channel[tuple[str, Any]](_EVENT_QUEUE)
        self._mem = MemoryStorage()
        self._load_storage()
        voters = tuple(sorted(spec.peers))
        self._node = RawNode(
            CoreConfig(
                id=spec.node_id,
                voters=voters,
                election_tick=raft.election_tick,
                heartbeat_tick=raft.heartbeat_tick,
                pre_vote=raft.pre_vote,
                check_quorum=raft.check_quorum,
                max_inflight_msgs=raft.max_inflight_msgs,
            ),
            self._mem,
            rng or random.Random(),
            log,
            applied=min(kv.applied_index, self._mem.last_index()),
        )
        self._transport = PeerTransport(
            node_id=spec.node_id,
            cluster_id=spec.cluster_id,
            listen=split_addr(spec.peers[spec.node_id]),
            peers={i: split_addr(a) for i, a in spec.peers.items() if i != spec.node_id},
            on_messages=self._on_messages,
        )
        self._progress = AppliedProgress(kv.applied_index, kv.revision)
        self._leader = 0
        self._role = Role.FOLLOWER
        self._term = self._mem.initial_state()[0].term
        self._commit = self._mem.initial_state()[0].commit
        self._proposals: dict[int, _Pending] = {}
        self._reads: dict[bytes, _Pending] = {}
        self._read_ids = itertools.count(1)
        self._subscribers: list[Callable[[AppliedBatch], None]] = []
        self._peer_applied: dict[int, int] = {}
        self._peer_client_addr: dict[int, str] = {}
        self._applied_changed = trio.Event()
        self._closed = False

    # -- storage ---------------------------------------------------------------------------

    def _load_storage(self) -> None:
        """Mirror raft.db into the in-memory storage the core reads (the core never touches
        SQLite, so the writer thread and the loop never share a connection)."""
        term, vote, commit = self._log.hard_state()
        ci, ct = self._log.compacted
        voters = tuple(sorted(self._spec.peers))
        if ci:
            self._mem.apply_snapshot(SnapshotMeta(index=ci, term=ct, voters=voters))
        entries = []
        for index, eterm, data in self._log.entries(self._log.first_index, self._log.last_index + 1):
            _i, _t, kind, payload = codec.decode_entry(data)
            entries.append(Entry(index=index, term=eterm, kind=EntryKind(kind), data=payload))
        if entries:
            self._mem.append(entries)
        self._mem.set_hard_state(HardState(term=term, vote=vote, commit=min(commit, self._log.last_index)))

    def _write(
        self, ready: Ready, committed: Sequence[tuple[int, Command]]
    ) -> tuple[list[Applied | None], int]:
        """Writer thread: make the ready durable, then apply what is committed."""
        # A hard state that only moved the commit index needs no fsync of its own (must_sync
        # is False): after a crash the core recovers commit from the applied index.
        if ready.entries or (ready.hard_state is not None and ready.must_sync):
            hs = ready.hard_state
            self._log.append(
                [
                    (e.index, e.term, codec.encode_entry(e.index, e.term, int(e.kind), e.data))
                    for e in ready.entries
                ],
                hard_state=(hs.term, hs.vote, hs.commit) if hs is not None else None,
            )
        applied: list[Applied | None] = []
        if committed:
            applied = self._kv.apply(committed)
        return applied, self._kv.revision

    def _compact_log(self, upto: int) -> None:
        self._kv.checkpoint()
        self._log.compact(upto)

    # -- the Consensus protocol --------------------------------------------------------------

    async def _propose(self, command: Command) -> _Pending:
        if self._closed:
            raise Unavailable("node is shutting down")
        if self._role is not Role.LEADER:
            raise NotLeader("this node is not the leader", leader_id=self._leader or None)
        pending = _Pending(command=command)
        self._submit(("propose", pending))
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending

    async def propose(self, command: Command) -> ApplyResult:
        return (await self._propose(command)).result  # type: ignore[no-any-return]

    async def propose_all(self, command: Command) -> ApplyResult:
        """WRITE_QUORUM_ALL: committed, then durable and applied on every voter."""
        pending = await self._propose(command)
        result, index = pending.result, pending.index
        with trio.move_on_after(self._write_all_timeout_s):
            while not self._all_applied(index):
                await self._applied_changed.wait()
            return result
        missing = sorted(
            p for p in self._spec.peers if p != self._spec.node_id and self._peer_applied.get(p, 0) < index
        )
        raise Unavailable(
            f"write committed at revision {getattr(result, 'revision', 0)} but not applied on "
            f"all members within {self._write_all_timeout_s:g}s (missing: {missing})"
        )

    def _all_applied(self, index: int) -> bool:
        return all(
            self._peer_applied.get(p, 0) >= index for p in self._spec.peers if p != self._spec.node_id
        )

    async def read_index(self) -> int:
        if self._closed:
            raise Unavailable("node is shutting down")
        pending = _Pending()
        ctx = next(self._read_ids).to_bytes(8, "big")
        self._reads[ctx] = pending
        try:
            self._submit(("read", ctx))
            await pending.done.wait()
        finally:
            self._reads.pop(ctx, None)
        if pending.error is not None:
            raise pending.error
        return int(pending.result)

    async def wait_applied(self, index: int) -> None:
        await self._progress.wait_applied(index)

    async def wait_revision(self, revision: int) -> None:
        await self._progress.wait_revision(revision)

    def role(self) -> RoleInfo:
        return RoleInfo(
            member_id=self._spec.node_id,
            leader_id=self._leader,
            term=self._term,
            role=self._role.value if self._role is not Role.PRE_CANDIDATE else "candidate",
            commit_index=self._commit,
            applied_index=self._progress.applied,
        )

    def leader_client_addr(self) -> str | None:
        if self._leader == self._spec.node_id:
            return self._spec.client_addr
        return self._peer_client_addr.get(self._leader)

    def subscribe(self, callback: Callable[[AppliedBatch], None]) -> None:
        self._subscribers.append(callback)

    def release_readers(self) -> None:
        self._closed = True
        self._progress.close()
        for pending in list(self._reads.values()):
            pending.finish(None, Unavailable("node is shutting down"))

    async def maintain(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._writer)

    @property
    def revision(self) -> int:
        return self._progress.revision

    # -- the loop ----------------------------------------------------------------------------

    def _submit(self, event: tuple[str, Any]) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            raise Unavailable("raft loop overloaded; try again") from None

    def _on_messages(self, msgs: list[Message]) -> None:
        try:
            self._send.send_nowait(("msgs", msgs))
        except trio.WouldBlock:
            pass  # Raft tolerates lost messages; the sender retries

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._transport.run)
                nursery.start_soon(self._ticker)
                if len(self._spec.peers) == 1:
                    self._node.campaign()
                await self._handle_readies()
                task_status.started()
                await self._loop()
        finally:
            self._closed = True
            err = Unavailable("node is shutting down")
            for pending in list(self._proposals.values()) + list(self._reads.values()):
                pending.finish(None, err)
            self._progress.close()

    async def _ticker(self) -> None:
        interval = self._knobs.tick_ms / 1000
        while True:
            await trio.sleep(interval)
            try:
                self._send.send_nowait(("tick", None))
            except trio.WouldBlock:
                pass

    async def _loop(self) -> None:
        while True:
            events = [await self._recv.receive()]
            while len(events) < 4096:
                try:
                    events.append(self._recv.receive_nowait())
                except trio.WouldBlock:
                    break
            for kind, payload in events:
                self._step_event(kind, payload)
            await self._handle_readies()

    def _step_event(self, kind: str, payload: Any) -> None:
        node = self._node
        if kind == "msgs":
            for msg in payload:
                if msg.type is MessageType.APPLIED_REPORT:
                    self._peer_applied[msg.frm] = max(self._peer_applied.get(msg.frm, 0), msg.index)
                    if msg.context:
                        self._peer_client_addr[msg.frm] = msg.context.decode("utf-8", "replace")
                    # Wake every WRITE_QUORUM_ALL waiter; later ones wait on a fresh event.
                    self._applied_changed.set()
                    self._applied_changed = trio.Event()
                else:
                    node.step(msg)
        elif kind == "tick":
            node.tick()
            self._report_applied()
            self._report_unreachable()
        elif kind == "propose":
            pending: _Pending = payload
            # The core's role, not our copy: a message stepped earlier in this same batch
            # may have deposed us, and a follower core would forward the entry instead of
            # appending it (then last_index would belong to someone else's entry).
            if node.role is not Role.LEADER:
                pending.finish(None, NotLeader("leadership moved", leader_id=node.leader or None))
                return
            before = node.log.last_index()
            try:
                node.propose(codec.encode_command(pending.command))  # type: ignore[arg-type]
            except ProposalDropped:
                pending.finish(None, NotLeader("proposal dropped", leader_id=node.leader or None))
                return
            if node.log.last_index() != before + 1:
                pending.finish(None, Internal("proposal was not appended locally"))
                return
            pending.index, pending.term = before + 1, node.term
            self._proposals[pending.index] = pending
        elif kind == "read":
            if payload in self._reads:
                node.read_index(payload)

    def _report_unreachable(self) -> None:
        """Appends sent into a broken connection are lost; tell the core so it probes the
        peer again instead of waiting on acknowledgments that will never come."""
        if self._role is not Role.LEADER:
            return
        progress = self._node.status().progress
        for peer, st in self._transport.statistics().peers.items():
            state = progress.get(peer)
            if not st.connected and state is not None and state[2] is ProgressState.REPLICATE:
                self._node.report_unreachable(peer)

    def _report_applied(self) -> None:
        addr = self._spec.client_addr.encode()
        self._transport.send(
            Message(
                type=MessageType.APPLIED_REPORT,
                to=peer,
                frm=self._spec.node_id,
                term=self._term,
                index=self._progress.applied,
                context=addr,
            )
            for peer in self._spec.peers
            if peer != self._spec.node_id
        )

    async def _handle_readies(self) -> None:
        node = self._node
        while node.has_ready():
            ready = node.ready()
            if ready.snapshot is not None:
                # Stopping is the only safe answer: advancing without the leader's state
                # would leave this replica's state machine silently behind its log.
                raise Internal(
                    f"the leader sent a snapshot (index {ready.snapshot.index}): this node is behind "
                    "the leader's compacted log, and installing snapshots is not supported yet"
                )
            if ready.soft_state is not None:
                self._on_soft_state(ready)
            if ready.hard_state is not None:
                self._term = ready.hard_state.term
            self._transport.send(ready.messages)
            committed = [(e.index, entry_command(e)) for e in ready.committed]
            if ready.entries or (ready.hard_state is not None and ready.must_sync) or committed:
                applied, revision = await trio.to_thread.run_sync(
                    self._write, ready, committed, limiter=self._writer
                )
            else:
                applied, revision = [], self._progress.revision
            # Durable now: mirror it for the core, then let acks go.
            if ready.entries:
                self._mem.append(list(ready.entries))
            if ready.hard_state is not None:
                self._mem.set_hard_state(ready.hard_state)
                self._commit = max(self._commit, ready.hard_state.commit)
            self._transport.send(ready.messages_after_persist)
            self._finish_applied(ready.committed, applied, revision)
            for rs in ready.read_states:
                pending = self._reads.get(rs.context)
                if pending is not None:
                    pending.finish(rs.index, None)
            node.advance(ready)
            await self._maybe_compact()

    def _on_soft_state(self, ready: Ready) -> None:
        soft = ready.soft_state
        assert soft is not None
        was_leader = self._role is Role.LEADER
        self._leader, self._role = soft.leader, soft.role
        if soft.role is Role.LEADER and not was_leader:
            log.info("node %d is now leader (term %d)", self._spec.node_id, self._term)
        elif was_leader and soft.role is not Role.LEADER:
            log.info("node %d lost leadership; leader now %d", self._spec.node_id, soft.leader)
        if soft.role is not Role.LEADER:
            # Reads queued on a deposed leader never complete; fail them now.
            for pending in list(self._reads.values()):
                pending.finish(
                    None, Unavailable("leadership changed; read not confirmed", leader_id=soft.leader or None)
                )

    def _finish_applied(
        self, committed: Sequence[Entry], applied: Sequence[Applied | None], revision: int
    ) -> None:
        if not committed:
            return
        events = []
        for entry, item in zip(committed, applied, strict=True):
            pending = self._proposals.pop(entry.index, None)
            if item is not None and not isinstance(item.result, GgapError):
                events.extend(item.events)
            if pending is None:
                continue
            if pending.term != entry.term:
                pending.finish(
                    None, Unavailable("leadership changed before the write committed; it was not applied")
                )
            elif item is None:
                pending.finish(None, Internal(f"entry {entry.index} was skipped at apply"))
            elif isinstance(item.result, GgapError):
                pending.finish(None, item.result)
            else:
                pending.finish(item.result, None)
        # Any older proposal still waiting was overwritten without reaching apply.
        last = committed[-1].index
        for index in [i for i in self._proposals if i <= last]:
            self._proposals.pop(index).finish(None, Unavailable("write was overwritten by a new leader"))
        self._commit = max(self._commit, last)
        self._progress.advance(last, revision)
        batch = AppliedBatch(applied_index=last, revision=revision, events=events)
        for callback in self._subscribers:
            callback(batch)
        self._report_applied()

    async def _maybe_compact(self) -> None:
        retain = self._knobs.log_retain
        first = self._log.first_index
        if self._progress.applied - first < 2 * retain:
            return
        upto = self._progress.applied - retain
        if self._role is Role.LEADER:
            # Keep what a lagging follower still needs: this build cannot send it a snapshot
            # instead. A follower more than 10x log_retain behind no longer holds it back.
            matches = [m for (m, _next, _state) in self._node.status().progress.values()]
            if matches:
                upto = max(min(upto, min(matches)), self._progress.applied - 10 * retain)
        if upto <= first:
            return
        await trio.to_thread.run_sync(self._compact_log, upto, limiter=self._writer)
        self._mem.compact(upto)


__all__ = ["ClusterSpec", "RaftConsensus", "entry_command"]
