"""KvService: validate, pick the read barrier, call consensus or a reader, convert."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ggap import tracing
from ggap.client import Connection, call_metadata
from ggap.config import Config
from ggap.pb import kv_grpc
from ggap.pb import kv_pb2 as pb
from ggap.replica import Consensus
from ggap.rpc import current_deadline
from ggap.server import convert
from ggap.server.forward import Forwarder, RetryElsewhere, is_forwarded
from ggap.server.maintenance import SpaceKeeper
from ggap.server.reads import ReaderPool
from ggap.server.sessions import SessionStamp, in_session, parse_stamp
from ggap.server.ttl import Expirer, is_expired
from ggap.server.watch import Watcher, WatchHub
from ggap.types import (
    CloseSession,
    Command,
    Compact,
    CompactResult,
    DeleteResult,
    Event,
    InvalidArgument,
    KeyValue,
    NotLeader,
    OpenSession,
    Put,
    PutResult,
    RangeResult,
    ReadMode,
    SessionResult,
    SessionWrite,
    Txn,
    TxnResult,
    Unavailable,
    check_key,
)

# A linearizable read that keeps finding keys past their TTL retries this often before
# answering with what it has (each retry first makes the expiry durable).
_EXPIRY_RETRIES = 3

_R = TypeVar("_R")  # what consensus returns for a write
_Resp = TypeVar("_Resp")  # the protobuf response to it


@attrs.define
class NodeState:
    """What handlers share: the node's parts and its draining flag."""

    config: Config
    consensus: Consensus
    readers: ReaderPool
    hub: WatchHub
    expirer: Expirer
    forwarder: Forwarder
    space: SpaceKeeper
    draining: bool = False

    def header(self, revision: int) -> pb.ResponseHeader:
        role = self.consensus.role()
        return pb.ResponseHeader(
            revision=revision, raft_term=role.term, member_id=role.member_id, leader_id=role.leader_id
        )

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("node is shutting down")

    def revision(self) -> int:
        return self.hub.published_revision

    async def confirm_read(self) -> None:
        """The linearizable read barrier: ReadIndex, then wait until it is applied here, so
        local state reflects every write acknowledged before the call.

        The wait ends a little before the request's deadline (`server.answer_margin_ms`)
        with UNAVAILABLE (no leader or no quorum confirmed the read), so that answer still
        reaches the client."""
        consensus = self.consensus
        margin_s = self.config.server.answer_margin_ms / 1000
        span = tracing.start_span("raft.read_index") if tracing.ENABLED and tracing.recording() else None
        try:
            with trio.move_on_at(current_deadline() - margin_s):
                index = await consensus.read_index()
                if span is not None:
                    span.add_event("read index confirmed", {"ggap.read_index": index})
                await consensus.wait_applied(index)
                return
            leader = consensus.role().leader_id
            raise Unavailable(
                "no leader confirmed the read within the deadline (no leader or no quorum)",
                leader_id=leader or None,
            )
        except BaseException as exc:
            if span is not None:
                tracing.failed(span, exc)
            raise
        finally:
            if span is not None:
                span.end()

    async def on_leader(
        self,
        request: Any,
        here: Callable[[], Awaitable[_Resp]],
        forward: Callable[[Connection, float], Awaitable[_Resp]],
    ) -> _Resp:
        """The one forwarding path, for writes and membership requests alike: run `here`
        (which raises NotLeader unless this node leads) and return its answer; on NotLeader
        `forward` the request to the leader and return the leader's response, retrying
        refusals across leader changes until the deadline (ggap/server/forward.py).

        A request that was itself forwarded is never forwarded again: its NotLeader goes
        back to the node that forwarded it, which retries against whoever leads now."""
        consensus = self.consensus
        while True:
            self.check_open()
            try:
                return await here()
            except NotLeader as exc:
                if is_forwarded(request):
                    raise
                leader_id = exc.leader_id or 0
            addr = consensus.leader_client_addr()
            role = consensus.role()
            if addr is not None and leader_id != role.member_id:
                epoch = (role.leader_id, role.term)
                try:
                    return await self.forwarder.forward(addr, epoch, forward)
                except RetryElsewhere:
                    pass
            await self.forwarder.pause_or_give_up(leader_id)


def _has_ttl(cmd: Command) -> bool:
    if isinstance(cmd, SessionWrite):
        cmd = cmd.command
    if isinstance(cmd, Put):
        return cmd.expires_at_ms != 0
    if isinstance(cmd, Txn):
        return any(isinstance(op, Put) and op.expires_at_ms for op in (*cmd.success, *cmd.failure))
    return False


def _with_stamp(
    forward: Callable[[Connection, float], Awaitable[_Resp]], stamp: SessionStamp
) -> Callable[[Connection, float], Awaitable[_Resp]]:
    """A forward to the leader's client port carries the session on."""

    async def call(leader: Connection, timeout_s: float) -> _Resp:
        with call_metadata([stamp.metadata()]):
            return await forward(leader, timeout_s)

    return call


class KvServicer(kv_grpc.KvServiceServicer):
    def __init__(self, node: NodeState) -> None:
        self._node = node
        self._limits = node.config.limits
        self._max_ttl = node.config.ttl.max_ttl_ms
        self._default_mode = ReadMode(node.config.reads.default_mode)  # config spells it as a string

    # -- reads -----------------------------------------------------------------------------

    async def _barrier(self, mode: ReadMode, min_revision: int) -> None:
        """Linearizable: the ReadIndex barrier (`NodeState.confirm_read`, UNAVAILABLE just
        before the deadline). Any mode: wait for min_revision; one this node never reaches
        runs into the deadline itself (DEADLINE_EXCEEDED), as the client asked to wait."""
        self._node.check_open()
        if mode is ReadMode.LINEARIZABLE:
            await self._node.confirm_read()
        if min_revision:
            await self._node.consensus.wait_revision(min_revision)

    async def _expire_visible(self, mode: ReadMode, revision: int, kvs: Sequence[KeyValue]) -> bool:
        """True when the read must be redone because it saw keys past their TTL (the leader
        first makes their expiry durable). Only a leader can expire: elsewhere such keys are
        hidden from the answer instead (see `_past_ttl`)."""
        stale = self._past_ttl(mode, revision, kvs)
        if not stale or self._node.consensus.role().role != "leader":
            return False
        await self._node.expirer.expire_now(stale)
        return True

    def _past_ttl(self, mode: ReadMode, revision: int, kvs: Sequence[KeyValue]) -> list[KeyValue]:
        """Keys a linearizable read of the latest state must not return: past their TTL by
        the clock, even if the Expire write has not been applied yet."""
        if mode is not ReadMode.LINEARIZABLE or revision:
            return []
        now = self._node.expirer.now_ms()
        return [kv for kv in kvs if is_expired(kv, now)]

    async def Get(self, msg: pb.GetRequest) -> pb.GetResponse:
        check_key(msg.key, max_bytes=self._limits.max_key_bytes)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        convert.revision(msg.revision)
        await self._barrier(mode, msg.min_revision)
        for _ in range(_EXPIRY_RETRIES):
            kv, rev = self._node.readers.inline(lambda r: r.get(msg.key, msg.revision))
            if not (kv and await self._expire_visible(mode, msg.revision, [kv])):
                break
        if kv is not None and self._past_ttl(mode, msg.revision, [kv]):
            kv = None
        return convert.get_pb(kv, self._node.header(rev))

    async def Range(self, msg: pb.RangeRequest) -> pb.RangeResponse:
        convert.range_bounds(msg.prefix, msg.start, msg.end, self._limits)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        limit = convert.non_negative(msg.limit, "limit")
        convert.revision(msg.revision)
        await self._barrier(mode, msg.min_revision)
        for _ in range(_EXPIRY_RETRIES):
            res, rev = await self._node.readers.run(
                lambda r: r.range(
                    prefix=msg.prefix,
                    start=msg.start,
                    end=msg.end,
                    limit=limit,
                    revision=msg.revision,
                    keys_only=msg.keys_only,
                )
            )
            if not await self._expire_visible(mode, msg.revision, list(res.kvs)):
                break
        hidden = self._past_ttl(mode, msg.revision, res.kvs)
        if hidden:
            kept = tuple(kv for kv in res.kvs if kv not in hidden)
            res = RangeResult(kvs=kept, more=res.more, count=res.count - len(hidden))
        return convert.range_pb(res, self._node.header(rev), msg.keys_only)

    async def History(self, msg: pb.HistoryRequest) -> pb.HistoryResponse:
        check_key(msg.key, max_bytes=self._limits.max_key_bytes)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        limit = convert.non_negative(msg.limit, "limit")
        await self._barrier(mode, 0)
        versions, rev = await self._node.readers.run(lambda r: r.history(msg.key, limit))
        return pb.HistoryResponse(
            header=self._node.header(rev), versions=[convert.kv_pb(kv) for kv in versions]
        )

    # -- writes ----------------------------------------------------------------------------

    async def _write(
        self,
        cmd: Command,
        request: Any,
        *,
        all_replicas: bool,
        result: type[_R],
        answer: Callable[[_R], _Resp],
        forward: Callable[[Connection, float], Awaitable[_Resp]],
    ) -> _Resp:
        """The one write path: propose `cmd` here when leader and `answer` its `result`.
        On a follower, a majority write without a TTL goes to the leader inside Raft (a
        PROPOSE message on the peer transport) and is answered when it is applied here.
        Otherwise, and whenever the leader refused it, `forward` the request to the
        leader's client port (the leader's response is the answer), retrying refusals
        across leader changes until the deadline (`NodeState.on_leader`).

        Why not everything inside Raft: a TTL's expiry time is taken from the clock of the
        node that builds the command, and that must be the leader's (it expires keys by
        it); a WRITE_QUORUM_ALL waiter needs every voter's applied index, which only the
        leader hears at once."""
        consensus = self._node.consensus
        stamp = parse_stamp(request)
        cmd = in_session(cmd, stamp)
        in_raft = not all_replicas and not is_forwarded(request) and not _has_ttl(cmd)

        async def here() -> _Resp:
            if all_replicas:
                res = await consensus.propose_all(cmd)
            else:
                res = await consensus.propose(cmd, forward=in_raft)
            if not isinstance(res, result):
                raise TypeError(f"{type(cmd).__name__} applied as {type(res).__name__}")
            return answer(res)

        if stamp is not None:
            forward = _with_stamp(forward, stamp)
        return await self._node.on_leader(request, here, forward)

    async def Put(self, msg: pb.PutRequest, request: Any = None) -> pb.PutResponse:
        self._node.check_open()
        cmd = convert.put_command(msg, self._limits, self._node.expirer.now_ms(), self._max_ttl)
        self._node.space.check_quota()
        return await self._write(
            cmd,
            request,
            all_replicas=convert.quorum_all(msg.quorum),
            result=PutResult,
            answer=lambda res: convert.put_pb(res, self._node.header(res.revision), msg.prev_kv),
            forward=lambda leader, timeout_s: leader.put(msg, timeout_s=timeout_s),
        )

    async def Delete(self, msg: pb.DeleteRequest, request: Any = None) -> pb.DeleteResponse:
        self._node.check_open()
        cmd = convert.delete_command(msg, self._limits)
        return await self._write(
            cmd,
            request,
            all_replicas=convert.quorum_all(msg.quorum),
            result=DeleteResult,
            answer=lambda res: convert.delete_pb(res, self._node.header(res.revision), msg.prev_kv),
            forward=lambda leader, timeout_s: leader.delete(msg, timeout_s=timeout_s),
        )

    async def Txn(self, msg: pb.TxnRequest, request: Any = None) -> pb.TxnResponse:
        self._node.check_open()
        cmd = convert.txn_command(msg, self._limits, self._node.expirer.now_ms(), self._max_ttl)
        if any(isinstance(op, Put) for op in (*cmd.success, *cmd.failure)):
            self._node.space.check_quota()  # a Txn that only reads or deletes always goes
        return await self._write(
            cmd,
            request,
            all_replicas=convert.quorum_all(msg.quorum),
            result=TxnResult,
            answer=lambda res: convert.txn_pb(res, msg, self._node.header(res.revision)),
            forward=lambda leader, timeout_s: leader.txn(msg, timeout_s=timeout_s),
        )

    async def Compact(self, msg: pb.CompactRequest, request: Any = None) -> pb.CompactResponse:
        self._node.check_open()
        if msg.revision == 0:
            raise InvalidArgument("compact revision must be greater than 0")
        convert.revision(msg.revision, "compact revision")
        return await self._write(
            Compact(revision=msg.revision),
            request,
            all_replicas=False,
            result=CompactResult,
            answer=lambda res: pb.CompactResponse(header=self._node.header(res.revision)),
            forward=lambda leader, timeout_s: leader.compact(msg, timeout_s=timeout_s),
        )

    # -- sessions ------------------------------------------------------------------------

    async def OpenSession(self, msg: pb.OpenSessionRequest, request: Any = None) -> pb.OpenSessionResponse:
        self._node.check_open()
        cfg = self._node.config.sessions
        return await self._write(
            OpenSession(max_sessions=cfg.max, max_unacked=cfg.max_unacked),
            request,
            all_replicas=False,
            result=SessionResult,
            answer=lambda res: pb.OpenSessionResponse(
                header=self._node.header(res.revision),
                session_id=res.session,
                idle_timeout_ms=cfg.idle_timeout_ms,
            ),
            forward=lambda leader, timeout_s: leader.open_session(msg, timeout_s=timeout_s),
        )

    async def CloseSession(self, msg: pb.CloseSessionRequest, request: Any = None) -> pb.CloseSessionResponse:
        self._node.check_open()
        if msg.session_id == 0:
            raise InvalidArgument("session_id must be given")
        return await self._write(
            CloseSession(session=msg.session_id),
            request,
            all_replicas=False,
            result=SessionResult,
            answer=lambda res: pb.CloseSessionResponse(
                header=self._node.header(res.revision), closed=res.closed
            ),
            forward=lambda leader, timeout_s: leader.close_session(msg, timeout_s=timeout_s),
        )

    # -- watch -----------------------------------------------------------------------------

    async def Watch(self, msg: pb.WatchRequest) -> AsyncIterator[pb.WatchResponse]:
        self._node.check_open()
        prefix: str | None = None
        key: str | None = None
        if msg.prefix:
            check_key(msg.prefix, "prefix", max_bytes=self._limits.max_key_bytes)
            prefix = msg.prefix
        else:
            check_key(msg.key, max_bytes=self._limits.max_key_bytes)
            key = msg.key
        hub = self._node.hub
        cfg = self._node.config.watch
        start = msg.start_revision or hub.published_revision + 1
        watcher = Watcher(key=key, prefix=prefix, start_revision=start, max_events=cfg.buffer_events)
        idle = cfg.progress_interval_ms / 1000
        hub.streams += 1
        try:
            # Replay stored history until caught up with what the hub has published.
            while True:
                events, snapshot = await self._node.readers.run(
                    lambda r: r.events(watcher.next_revision, key=key, prefix=prefix, limit=cfg.replay_batch)
                )
                if events:
                    watcher.next_revision = events[-1].kv.mod_revision + 1
                    yield self._watch_response(events, msg.prev_kv)
                if len(events) < cfg.replay_batch:
                    watcher.next_revision = max(watcher.next_revision, snapshot + 1)
                    if hub.published_revision <= snapshot:
                        hub.join(watcher)  # no await between the check and joining
                        break
            # Live. An empty response after `idle` is a progress notice, and doubles as
            # the probe that notices a client that went away (purerpc does not tell us).
            while True:
                events = await watcher.next_events(idle)
                self._node.check_open()
                yield self._watch_response(events, msg.prev_kv)
        finally:
            hub.streams -= 1
            hub.leave(watcher)

    def _watch_response(self, events: list[Event], with_prev: bool) -> pb.WatchResponse:
        self._node.hub.events_sent += len(events)
        return pb.WatchResponse(
            header=self._node.header(self._node.hub.published_revision),
            events=[convert.event_pb(ev, with_prev) for ev in events],
        )
