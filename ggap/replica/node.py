"""The trio face of the replica engine: the `Consensus` the server talks to.

One task (the raft loop) owns the `ReplicaEngine`. Everything else reaches it through one
bounded `Mailbox` of typed events (peer messages, ticks, proposals, read requests, snapshot
reports); each loop turn steps everything queued, then takes every Ready and hands the
durable part of it (save, fsync, apply) to ONE dedicated writer thread in one hop:
everything that arrived during one loop turn shares that fsync (group commit).

The node is handed its transport (the peer transport; none only for a group of one that
was started without one, which then cannot grow) and its mailbox, which the transport posts
received messages into. Membership changes go through the engine like writes; the
transport follows the applied membership.
"""

from __future__ import annotations

import itertools
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import trio

from ggap import codec, tracing
from ggap.config.model import RaftConfig as RaftKnobs
from ggap.consensus.raft import CoreConfig, DurableStorage, Message, ProposalDropped, Role
from ggap.logs import EveryInterval
from ggap.replica.api import AppliedBatch, RoleInfo
from ggap.replica.engine import ApplyOutput, ReplicaEngine, Retention, TakenSnapshot, Work
from ggap.replica.kv_machine import KvStateMachine
from ggap.replica.progress import AppliedProgress
from ggap.replica.stats import ReplicaStats
from ggap.replica.transfer import SnapshotTransferError, receive_snapshot, send_snapshot
from ggap.storage import KvStore
from ggap.transport import PeerTransport
from ggap.transport.peer import SnapshotStream
from ggap.types import (
    ApplyResult,
    Command,
    FailedPrecondition,
    MemberChange,
    MemberProgress,
    Membership,
    NotLeader,
    Unavailable,
)
from ggap.types.errors import CodecError

log = logging.getLogger(__name__)

T = TypeVar("T")


# -- events -----------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class _Tick:
    pass


@attrs.frozen(slots=True)
class _Messages:
    msgs: list[Message]


@attrs.define(eq=False, slots=True)
class _Proposal:
    command: Command | MemberChange
    # A follower hands it to the leader inside Raft (ReplicaEngine.propose(forward=True)).
    forward: bool = False
    done: trio.Event = attrs.field(factory=trio.Event)
    index: int = 0
    result: object = None
    error: BaseException | None = None
    # Tracing only (None otherwise): the raft.propose span, ended when the engine answers,
    # and when the entry became durable here (time.time_ns()).
    span: Any = None
    persisted_ns: int = 0

    def finish(self, index: int, result: object, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.index, self.result, self.error = index, result, error
            self.done.set()
            if self.span is not None:
                self._end_span()

    def _end_span(self) -> None:
        span, self.span = self.span, None
        span.set_attribute("ggap.index", self.index)
        if self.error is not None:
            tracing.failed(span, self.error)
        span.end()


@attrs.define(eq=False, slots=True)
class _ForwardedTrace:
    """On the leader: the raft.propose span of a traced write a follower forwarded inside
    Raft (its parent is the follower's span); ended once this node applied its index."""

    span: Any
    persisted_ns: int = 0


@attrs.frozen(slots=True)
class _HopTimes:
    """time.time_ns() stamps of one writer-thread hop (`RaftReplica._durable`)."""

    start: int
    written: int
    synced: int
    applied: int


@attrs.define(eq=False, slots=True)
class _Read:
    context: bytes
    done: trio.Event = attrs.field(factory=trio.Event)
    index: int = 0
    error: BaseException | None = None

    def finish(self, index: int, error: BaseException | None) -> None:
        if not self.done.is_set():
            self.index, self.error = index, error
            self.done.set()


@attrs.frozen(slots=True)
class _SnapshotReport:
    peer: int
    ok: bool


@attrs.frozen(slots=True)
class _SnapshotTaken:
    taken: TakenSnapshot | None  # None: taking it failed


@attrs.define(eq=False, slots=True)
class _Transfer:
    target: int
    done: trio.Event = attrs.field(factory=trio.Event)
    error: BaseException | None = None


_Event = _Tick | _Messages | _Proposal | _Read | _SnapshotReport | _SnapshotTaken | _Transfer
_TICK = _Tick()
_TRANSFER_ERRORS = (
    SnapshotTransferError,
    ConnectionError,
    OSError,
    trio.BrokenResourceError,
    trio.TooSlowError,
)


class Mailbox:
    """The raft loop's one bounded inbox. Posting never blocks: a full mailbox drops peer
    messages and ticks (Raft tolerates that) and refuses client requests with UNAVAILABLE."""

    def __init__(self, capacity: int) -> None:
        self._send, self._recv = trio.open_memory_channel[_Event](capacity)

    def post_messages(self, msgs: list[Message]) -> None:
        try:
            self._send.send_nowait(_Messages(msgs))
        except trio.WouldBlock:
            pass  # the sender retransmits

    def post_tick(self) -> None:
        try:
            self._send.send_nowait(_TICK)
        except trio.WouldBlock:
            pass

    def post_snapshot_report(self, peer: int, ok: bool) -> None:
        try:
            self._send.send_nowait(_SnapshotReport(peer, ok))
        except trio.WouldBlock:
            pass  # the core probes the peer again on its own

    async def post_internal(self, event: _SnapshotTaken) -> None:
        """For events that must not be lost: waits for room."""
        await self._send.send(event)

    def post_request(self, event: _Proposal | _Read | _Transfer) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            raise Unavailable("raft loop overloaded; try again") from None

    async def receive_batch(self, limit: int) -> list[_Event]:
        events = [await self._recv.receive()]
        while len(events) < limit:
            try:
                events.append(self._recv.receive_nowait())
            except trio.WouldBlock:
                break
        return events


# -- the engine's transport ------------------------------------------------------------------


class _EngineTransport:
    """The engine's Transport over the peer transport (or over nothing, for a group of one)."""

    def __init__(self, peers: PeerTransport | None, start_snapshot_send: Callable[[Message], None]) -> None:
        self._peers = peers
        self._start_snapshot_send = start_snapshot_send

    def send(self, msgs: Iterable[Message]) -> None:
        if self._peers is not None:
            self._peers.send(msgs)

    def send_snapshot(self, msg: Message) -> None:
        self._start_snapshot_send(msg)

    def unreachable(self) -> Iterable[int]:
        if self._peers is None:
            return ()
        return [pid for pid, st in self._peers.statistics().peers.items() if not st.connected]

    def set_members(self, membership: Membership) -> None:
        if self._peers is None:
            if len(membership.members) > 1:
                log.error(
                    "membership now has %d members but this node runs no peer transport",
                    len(membership.members),
                )
            return
        self._peers.update_peers(
            {m.id: _address(m.cluster_addr) for m in membership.members if m.cluster_addr}
        )


def _address(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host.strip("[]"), int(port)


@attrs.frozen
class ClusterSpec:
    node_id: int
    peers: dict[int, str]  # voter id -> cluster address (this node included)
    client_addr: str
    cluster_id: str


class SnapshotReceiver:
    """Serves inbound snapshot connections for the peer transport: receive, verify, stage
    the file with the state machine, then hand the SNAPSHOT message to the raft loop."""

    def __init__(
        self,
        machine: KvStateMachine,
        mailbox: Mailbox,
        *,
        io_timeout_s: float,
        stats: ReplicaStats | None = None,
    ) -> None:
        self._machine = machine
        self._mailbox = mailbox
        self._io_timeout_s = io_timeout_s
        self.stats = stats if stats is not None else ReplicaStats()

    async def __call__(self, peer: int, stream: SnapshotStream) -> None:
        started = time.monotonic()
        try:
            directory = self._machine.directory
            msg, path = await receive_snapshot(stream, directory, io_timeout_s=self._io_timeout_s)
        except SnapshotTransferError as exc:
            self.stats.snapshot_receive_failures += 1
            log.warning("%s", exc)
            return
        except BaseException:
            self.stats.snapshot_receive_failures += 1
            raise
        self.stats.snapshot_receive.observe(time.monotonic() - started)
        if msg.frm != peer:
            log.warning("snapshot connection from node %d carried a message from %d; dropped", peer, msg.frm)
            path.unlink(missing_ok=True)
            return
        assert msg.snapshot is not None
        self._machine.stage(msg.snapshot.index, path)
        self._mailbox.post_messages([msg])


class RaftReplica:
    """The Consensus protocol (ggap/replica/api.py) over one Raft group."""

    def __init__(
        self,
        *,
        spec: ClusterSpec,
        raft: RaftKnobs,
        storage: DurableStorage,
        kv: KvStore,
        mailbox: Mailbox,
        transport: PeerTransport | None,
        machine: KvStateMachine,
        write_all_timeout_s: float = 5.0,
        snapshot_io_timeout_s: float = 2.0,
        rng: random.Random | None = None,
        stats: ReplicaStats | None = None,
        slow_fsync_s: float = 0.1,
    ) -> None:
        self._spec = spec
        self.stats = stats if stats is not None else ReplicaStats()
        self._knobs = raft
        self._kv = kv
        self._mailbox = mailbox
        self._write_all_timeout_s = write_all_timeout_s
        self._writer = trio.CapacityLimiter(1)
        voters = tuple(sorted(spec.peers))
        self._machine = machine
        self._peers = transport
        self._snapshot_io_timeout_s = snapshot_io_timeout_s
        self._sending_snapshot: set[int] = set()
        self._snapshot_wanted = False
        self._engine = ReplicaEngine(
            config=CoreConfig(
                id=spec.node_id,
                voters=voters,
                election_tick=raft.election_tick,
                heartbeat_tick=raft.heartbeat_tick,
                pre_vote=raft.pre_vote,
                check_quorum=raft.check_quorum,
                max_inflight_msgs=raft.max_inflight_msgs,
            ),
            storage=storage,
            state_machine=self._machine,
            transport=_EngineTransport(transport, self._start_snapshot_send),
            rng=rng or random.Random(),
            retention=Retention(
                snapshot_entries=raft.snapshot_entries,
                log_retain=raft.log_retain,
                max_lag=raft.log_retain,
                compact_step_entries=raft.compact_step_entries,
            ),
            logger=log,
            report_context=spec.client_addr.encode(),
            # Never the seeded rng: two runs of a node must not share an incarnation.
            incarnation=secrets.randbits(64),
        )
        # The file that matches the log's snapshot is the one followers get.
        machine.settle(storage.snapshot().index)
        self._engine.subscribe(self._on_applied)
        self._engine.on_peer_applied(self._on_peer_applied)
        self._engine.on_forwarded_append(self._trace_forwarded)
        self._progress = AppliedProgress(kv.applied_index, kv.revision)
        self._read_ids = itertools.count(1)
        self._applied_changed = trio.Event()
        self._closed = False
        self._nursery: trio.Nursery | None = None
        self._slow_fsync_ns = int(slow_fsync_s * 1e9)
        self._slow_fsync_log = EveryInterval(1.0)
        # Traced proposals by entry index, while the engine has not answered them.
        self._traced: dict[int, _Proposal | _ForwardedTrace] = {}

    @property
    def engine(self) -> ReplicaEngine:
        return self._engine

    # -- the Consensus protocol ------------------------------------------------------------

    async def _propose(self, command: Command | MemberChange, *, forward: bool = False) -> _Proposal:
        if self._closed:
            raise Unavailable("node is shutting down")
        engine = self._engine
        if engine.role is not Role.LEADER and not (forward and engine.leader):
            raise NotLeader("this node is not the leader", leader_id=engine.leader or None)
        proposal = _Proposal(command=command, forward=forward)
        if tracing.ENABLED and tracing.recording():
            proposal.span = tracing.start_span(
                "raft.propose", attributes={"ggap.command": type(command).__name__}
            )
        stats = self.stats
        try:
            self._mailbox.post_request(proposal)
        except Unavailable as exc:
            stats.proposals_failed += 1
            proposal.finish(0, None, exc)
            raise
        stats.proposals_pending += 1
        try:
            await proposal.done.wait()
        finally:
            stats.proposals_pending -= 1
        if proposal.error is not None:
            stats.proposals_failed += 1
            raise proposal.error
        return proposal

    async def propose(self, command: Command, *, forward: bool = False) -> ApplyResult:
        return (await self._propose(command, forward=forward)).result  # type: ignore[return-value]

    async def propose_all(self, command: Command) -> ApplyResult:
        """WRITE_QUORUM_ALL: committed, then durable and applied on every voter."""
        proposal = await self._propose(command)
        result = proposal.result
        index = proposal.index
        with trio.move_on_after(self._write_all_timeout_s):
            while not self._all_applied(index):
                await self._applied_changed.wait()
            return result  # type: ignore[return-value]
        applied = self._engine.peer_applied
        missing = sorted(p for p in self._others() if applied.get(p, 0) < index)
        raise Unavailable(
            f"write committed at revision {getattr(result, 'revision', 0)} but not applied on "
            f"all members within {self._write_all_timeout_s:g}s (missing: {missing})"
        )

    def _others(self) -> list[int]:
        """The other voters (learners never count, not even for WRITE_QUORUM_ALL)."""
        return [p for p in self._engine.voters if p != self._spec.node_id]

    def _all_applied(self, index: int) -> bool:
        applied = self._engine.peer_applied
        return all(applied.get(p, 0) >= index for p in self._others())

    async def read_index(self) -> int:
        if self._closed:
            raise Unavailable("node is shutting down")
        read = _Read(context=next(self._read_ids).to_bytes(8, "big"))
        self._mailbox.post_request(read)
        try:
            await read.done.wait()
        finally:
            if not read.done.is_set():
                self._engine.cancel_read(read.context)
        if read.error is not None:
            raise read.error
        return read.index

    async def wait_applied(self, index: int) -> None:
        await self._progress.wait_applied(index)

    async def wait_revision(self, revision: int) -> None:
        await self._progress.wait_revision(revision)

    def role(self) -> RoleInfo:
        e = self._engine
        role = e.role if e.role is not Role.PRE_CANDIDATE else Role.CANDIDATE
        return RoleInfo(
            member_id=self._spec.node_id,
            leader_id=e.leader,
            term=e.term,
            role=role.value,
            commit_index=e.commit,
            applied_index=self._progress.applied,
        )

    def leader_client_addr(self) -> str | None:
        e = self._engine
        if e.leader == self._spec.node_id:
            return self._spec.client_addr
        ctx = e.peer_context.get(e.leader)
        return ctx.decode("utf-8", "replace") if ctx else None

    def subscribe(self, callback: Callable[[AppliedBatch], None]) -> None:
        self._engine.subscribe(callback)

    def membership(self) -> Membership:
        return self._engine.membership

    async def change_membership(self, change: MemberChange) -> Membership:
        result = (await self._propose(change)).result
        assert isinstance(result, Membership)
        return result

    def member_progress(self) -> dict[int, MemberProgress]:
        e = self._engine
        progress = e.node.status().progress if e.role is Role.LEADER else {}
        # The core's recent_active is reset at every CheckQuorum round (it reads False for
        # everyone just after one); a live peer connection says "reachable" steadily.
        connected = (
            {pid for pid, st in self._peers.statistics().peers.items() if st.connected}
            if self._peers is not None
            else set()
        )
        out: dict[int, MemberProgress] = {}
        for m in e.membership.members:
            pr = progress.get(m.id)
            own = m.id == self._spec.node_id
            reported = e.peer_context.get(m.id, b"").decode("utf-8", "replace")
            out[m.id] = MemberProgress(
                id=m.id,
                learner=m.learner,
                match_index=pr.match if pr is not None else 0,
                applied_index=self._progress.applied if own else e.peer_applied.get(m.id, 0),
                recent_active=own or (pr is not None and (pr.recent_active or m.id in connected)),
                client_addr=self._spec.client_addr if own else reported,
            )
        return out

    def handoff_target(self) -> int | None:
        """The voter to hand leadership to before stopping: the most caught-up active one
        (lowest id on ties); None if this node does not lead or no other voter is active."""
        if self._engine.role is not Role.LEADER:
            return None
        me = self._spec.node_id
        candidates = [
            p for p in self.member_progress().values() if p.id != me and not p.learner and p.recent_active
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda p: (-p.match_index, p.id)).id

    async def hand_off_leadership(self) -> None:
        """Graceful shutdown: transfer leadership first, so the cluster does not wait an
        election timeout for a new leader. Best effort: failures are logged."""
        target = self.handoff_target()
        if target is None:
            return
        log.info("handing leadership to node %d before stopping", target)
        try:
            await self.transfer_leader(target)
        except (NotLeader, FailedPrecondition, Unavailable) as exc:
            log.warning("leadership hand-off to node %d failed: %s", target, exc)

    async def transfer_leader(self, target: int) -> None:
        if self._closed:
            raise Unavailable("node is shutting down")
        engine = self._engine
        if engine.leader == target and engine.role is not Role.LEADER:
            return
        if engine.role is not Role.LEADER:
            raise NotLeader("this node is not the leader", leader_id=engine.leader or None)
        if target == self._spec.node_id:
            return
        request = _Transfer(target)
        self._mailbox.post_request(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        timeout = 2 * self._knobs.election_tick * self._knobs.tick_ms / 1000
        with trio.move_on_after(timeout):
            while engine.leader != target:
                await self._applied_changed.wait()
            return
        raise Unavailable(f"node {target} did not take over leadership within {timeout:g}s")

    def release_readers(self) -> None:
        self._closed = True
        self._progress.close()
        self._engine.close(Unavailable("node is shutting down"))

    async def maintain(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._writer)

    @property
    def revision(self) -> int:
        return self._progress.revision

    # -- the loop ----------------------------------------------------------------------------

    def _on_applied(self, batch: AppliedBatch) -> None:
        self._progress.advance(batch.applied_index, batch.revision)

    def _on_peer_applied(self) -> None:
        # Wake every WRITE_QUORUM_ALL waiter; later ones wait on a fresh event.
        self._applied_changed.set()
        self._applied_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._ticker)
                if self._engine.voters == (self._spec.node_id,):
                    self._engine.campaign()
                await self._handle_readies()
                task_status.started()
                await self._loop()
        finally:
            self._closed = True
            self._engine.close(Unavailable("node is shutting down"))
            self._progress.close()

    async def _ticker(self) -> None:
        interval = self._knobs.tick_ms / 1000
        while True:
            await trio.sleep(interval)
            self._mailbox.post_tick()

    async def _loop(self) -> None:
        limit = self._knobs.max_events_per_turn
        while True:
            for event in await self._mailbox.receive_batch(limit):
                if isinstance(event, _SnapshotTaken):
                    await self._record_snapshot(event.taken)
                else:
                    self._step(event)
            await self._handle_readies()

    def _step(self, event: _Event) -> None:
        engine = self._engine
        if isinstance(event, _Messages):
            for msg in event.msgs:
                engine.step(msg)
        elif isinstance(event, _Tick):
            engine.tick()
        elif isinstance(event, _Proposal):
            if isinstance(event.command, MemberChange):
                index = engine.propose_membership(event.command, event.finish)
            else:
                context = b""
                if event.span is not None and event.forward and engine.role is not Role.LEADER:
                    event.span.set_attribute("ggap.forwarded_to", engine.leader)
                    context = tracing.traceparent(event.span)
                index = engine.propose(
                    codec.encode_command(event.command), event.finish, forward=event.forward, context=context
                )
            if event.span is not None and index and not event.done.is_set():
                self._traced[index] = event
        elif isinstance(event, _Transfer):
            try:
                engine.transfer_leader(event.target)
            except ProposalDropped as exc:
                event.error = NotLeader(f"cannot transfer leadership: {exc}", leader_id=engine.leader or None)
            except ValueError as exc:
                event.error = FailedPrecondition(f"cannot transfer leadership: {exc}")
            event.done.set()
        elif isinstance(event, _Read):
            engine.read_index(event.context, event.finish)
        elif isinstance(event, _SnapshotReport):
            engine.report_snapshot(event.peer, event.ok)

    async def _handle_readies(self) -> None:
        engine = self._engine
        while (work := engine.take_ready()) is not None:
            if work.persist or work.ready.committed:
                handed = time.time_ns()
                output, times = await trio.to_thread.run_sync(self._durable, work, limiter=self._writer)
                stats = self.stats
                if work.persist:
                    stats.log_save.observe((times.synced - times.start) / 1e9)
                if work.ready.snapshot is not None:
                    stats.snapshot_install.observe((times.applied - times.synced) / 1e9)
                elif work.ready.committed:
                    stats.apply_commit.observe((times.applied - times.synced) / 1e9)
                self._check_fsync(work, times)
                if self._traced:
                    self._trace_hop(work, handed, times)
            else:
                output = ApplyOutput(outcomes=(), revision=engine.revision)
            engine.finish(work, output)
            if self._traced:
                self._prune_traced()
            if engine.snapshot_due(force=self._snapshot_wanted):
                self._snapshot_wanted = False
                engine.snapshot_started()
                assert self._nursery is not None
                self._nursery.start_soon(self._take_snapshot)

    def _durable(self, work: Work) -> tuple[ApplyOutput, _HopTimes]:
        """`engine.durable(work)` (on the writer thread), timing each step: four clock
        reads per batch, whatever the batch holds."""
        engine = self._engine
        start = time.time_ns()
        engine.write(work)
        written = time.time_ns()
        engine.sync(work)
        synced = time.time_ns()
        output = engine.apply(work)
        return output, _HopTimes(start, written, synced, time.time_ns())

    def _check_fsync(self, work: Work, times: _HopTimes) -> None:
        """A slow fsync is one event, logged once (at most one line a second). Timed from
        the start of the save: LogStore's transaction is durable when it returns (the fsync
        is its commit) and `sync` has nothing left to do."""
        took = times.synced - times.start
        if not work.persist or took < self._slow_fsync_ns:
            return
        suppressed = self._slow_fsync_log.due()
        if suppressed is None:
            return
        ms = took / 1e6
        log.warning(
            "slow fsync of the raft log: %.1f ms for %d entries (over log.slow_fsync_ms%s)",
            ms,
            len(work.ready.entries),
            f"; {suppressed} more slow fsyncs since the last line" if suppressed else "",
            extra={"fsync_ms": round(ms, 3), "entries": len(work.ready.entries)},
        )

    def _trace_forwarded(self, index: int, frm: int, context: bytes) -> None:
        """This leader appended a write node `frm` forwarded with a traceparent: trace its
        persist, commit and apply here, under the follower's span."""
        if not tracing.ENABLED:
            return
        span = tracing.start_remote_span(
            context, "raft.propose", attributes={"ggap.forwarded_from": frm, "ggap.index": index}
        )
        if span is not None:
            self._traced[index] = _ForwardedTrace(span)

    def _prune_traced(self) -> None:
        """Drop answered proposals; end forwarded writes' spans once their index is applied
        (or overwritten: either way nothing more happens to it here)."""
        applied = self._engine.applied
        kept: dict[int, _Proposal | _ForwardedTrace] = {}
        for i, p in self._traced.items():
            if isinstance(p, _ForwardedTrace):
                if i <= applied:
                    p.span.end()
                    continue
            elif p.done.is_set():
                continue
            kept[i] = p
        self._traced = kept

    def _trace_hop(self, work: Work, handed: int, times: _HopTimes) -> None:
        """Give each traced proposal in this Ready its share of the batch: a raft.persist
        child span when its entry was saved in this hop, raft.commit and raft.apply when it
        was committed and applied in it. Each carries the whole batch's times and size."""
        traced = self._traced
        rd = work.ready
        if rd.entries:
            attributes = {
                "ggap.batch.entries": len(rd.entries),
                "ggap.fsync_ms": (times.synced - times.start) / 1e6,  # save + fsync
                "ggap.queued_ms": (times.start - handed) / 1e6,
            }
            for entry in rd.entries:
                p = traced.get(entry.index)
                if p is not None and p.span is not None:
                    tracing.child_span(p.span, "raft.persist", handed, times.synced, attributes)
                    p.persisted_ns = times.synced
        if rd.committed:
            applied = {"ggap.batch.entries": len(rd.committed)}
            for entry in rd.committed:
                p = traced.get(entry.index)
                if p is None or p.span is None:
                    continue
                if p.persisted_ns:
                    # Durable here at persisted_ns; this Ready (taken just before `handed`)
                    # is the first to show it committed: the wait for the quorum.
                    tracing.child_span(
                        p.span, "raft.commit", p.persisted_ns, handed, {"ggap.commit_index": entry.index}
                    )
                tracing.child_span(p.span, "raft.apply", times.synced, times.applied, applied)

    def _start_snapshot_send(self, msg: Message) -> None:
        """The core wants `msg.to` to get our snapshot: one transfer per follower at a time
        (the core sends nothing else to it until `report_snapshot`)."""
        if msg.to in self._sending_snapshot:
            return
        assert self._nursery is not None
        self._sending_snapshot.add(msg.to)
        self._nursery.start_soon(self._send_snapshot, msg)

    async def _send_snapshot(self, msg: Message) -> None:
        ok = False
        try:
            snap = self._machine.latest
            meta = msg.snapshot
            if self._peers is None or snap is None or meta is None or snap.index != meta.index:
                log.warning("no snapshot file for index %s to send to node %d", meta and meta.index, msg.to)
                self._snapshot_wanted = True  # take a fresh one now rather than after more entries
                return
            log.info("sending snapshot %d (%d bytes) to node %d", snap.index, snap.size, msg.to)
            started = time.monotonic()
            await send_snapshot(
                self._peers,
                msg,
                snap,
                io_timeout_s=self._snapshot_io_timeout_s,
                verdict_timeout_s=30 + snap.size / (20 << 20),
            )
            ok = True
            self.stats.snapshot_send.observe(time.monotonic() - started)
            log.info("node %d has snapshot %d (%.1fs)", msg.to, snap.index, time.monotonic() - started)
        except _TRANSFER_ERRORS as exc:
            log.warning("sending snapshot to node %d failed: %s", msg.to, exc)
        except CodecError as exc:
            log.warning("sending snapshot to node %d failed: bad verdict: %s", msg.to, exc)
        finally:
            if not ok:
                self.stats.snapshot_send_failures += 1
            self._sending_snapshot.discard(msg.to)
            self._mailbox.post_snapshot_report(msg.to, ok)

    async def _take_snapshot(self) -> None:
        """Off the raft loop and off the writer thread: a read transaction on kv.db."""
        taken: TakenSnapshot | None = None
        started = time.monotonic()
        try:
            taken = await trio.to_thread.run_sync(self._machine.take_snapshot)
            self.stats.snapshot_save.observe(time.monotonic() - started)
            log.info(
                "snapshot at index %d (off the raft loop) took %.2fs", taken.index, time.monotonic() - started
            )
        except Exception:
            self.stats.snapshot_save_failures += 1
            log.exception("taking a snapshot failed; will retry after more entries")
        await self._mailbox.post_internal(_SnapshotTaken(taken))

    async def _record_snapshot(self, taken: TakenSnapshot | None) -> None:
        engine = self._engine
        upto: int | None = None
        try:
            if taken is not None and taken.index:
                await trio.to_thread.run_sync(engine.record_snapshot, taken, limiter=self._writer)
                self._machine.settle(engine.storage.snapshot().index)
                upto = engine.compaction_point()
        finally:
            if upto is None:
                engine.snapshot_finished()
        if upto is not None:
            assert self._nursery is not None
            self._nursery.start_soon(self._compact_log, upto)

    async def _compact_log(self, upto: int) -> None:
        """Beside the raft loop: each step takes its turn on the writer thread, so the
        log's appends go in between and a big deletion never stalls writes. The next
        snapshot waits until this is done (`snapshot_finished`)."""
        engine = self._engine
        try:
            reached = 0
            while reached < upto:
                reached = await trio.to_thread.run_sync(engine.compact_log, upto, limiter=self._writer)
            log.info("log compacted through %d (snapshot %d)", upto, engine.storage.snapshot().index)
        finally:
            engine.snapshot_finished()


__all__ = ["ClusterSpec", "Mailbox", "RaftReplica", "SnapshotReceiver"]
