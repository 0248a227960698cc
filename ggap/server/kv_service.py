"""KvService: validate, pick the read barrier, call consensus or a reader, convert."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs

from ggap.config import Config
from ggap.consensus import Consensus
from ggap.pb import kv_grpc
from ggap.pb import kv_pb2 as pb
from ggap.server import convert
from ggap.server.reads import ReaderPool
from ggap.server.ttl import Expirer, is_expired
from ggap.server.watch import Watcher, WatchHub
from ggap.types import (
    Compact,
    DeleteResult,
    Event,
    InvalidArgument,
    KeyValue,
    PutResult,
    TxnResult,
    Unavailable,
)

# A linearizable read that keeps finding keys past their TTL retries this often before
# answering with what it has (each retry first makes the expiry durable).
_EXPIRY_RETRIES = 3


@attrs.define
class NodeState:
    """What handlers share: the node's parts and its draining flag."""

    config: Config
    consensus: Consensus
    readers: ReaderPool
    hub: WatchHub
    expirer: Expirer
    draining: bool = False

    def header(self, revision: int) -> pb.ResponseHeader:
        role = self.consensus.role()
        return pb.ResponseHeader(
            revision=revision, raft_term=role.term, member_id=role.member_id, leader_id=role.leader_id
        )

    def check_open(self) -> None:
        if self.draining:
            raise Unavailable("node is shutting down")


class KvServicer(kv_grpc.KvServiceServicer):
    def __init__(self, node: NodeState) -> None:
        self._node = node
        self._limits = node.config.limits
        self._max_ttl = node.config.ttl.max_ttl_ms
        self._default_mode = node.config.reads.default_mode

    # -- reads -----------------------------------------------------------------------------

    async def _barrier(self, mode: str, min_revision: int) -> None:
        """Linearizable: ReadIndex, then wait to apply it. Any mode: wait for min_revision."""
        self._node.check_open()
        consensus = self._node.consensus
        if mode == "linearizable":
            await consensus.wait_applied(await consensus.read_index())
        if min_revision:
            await consensus.wait_revision(min_revision)

    async def _expire_visible(self, mode: str, revision: int, kvs: list[KeyValue]) -> bool:
        """True when the read must be redone because it saw keys past their TTL."""
        if mode != "linearizable" or revision:
            return False
        now = self._node.expirer.now_ms()
        stale = [kv for kv in kvs if is_expired(kv, now)]
        if not stale:
            return False
        await self._node.expirer.expire_now(stale)
        return True

    async def Get(self, msg: pb.GetRequest) -> pb.GetResponse:
        convert.check_key(msg.key, self._limits)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        await self._barrier(mode, msg.min_revision)
        for _ in range(_EXPIRY_RETRIES):
            kv, rev = self._node.readers.inline(lambda r: r.get(msg.key, msg.revision))
            if not (kv and await self._expire_visible(mode, msg.revision, [kv])):
                break
        return convert.get_pb(kv, self._node.header(rev))

    async def Range(self, msg: pb.RangeRequest) -> pb.RangeResponse:
        convert.range_bounds(msg.prefix, msg.start, msg.end, self._limits)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        limit = convert.non_negative(msg.limit, "limit")
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
        return convert.range_pb(res, self._node.header(rev), msg.keys_only)

    async def History(self, msg: pb.HistoryRequest) -> pb.HistoryResponse:
        convert.check_key(msg.key, self._limits)
        mode = convert.read_mode(msg.read_mode, self._default_mode)
        limit = convert.non_negative(msg.limit, "limit")
        await self._barrier(mode, 0)
        versions, rev = await self._node.readers.run(lambda r: r.history(msg.key, limit))
        return pb.HistoryResponse(
            header=self._node.header(rev), versions=[convert.kv_pb(kv) for kv in versions]
        )

    # -- writes ----------------------------------------------------------------------------

    async def Put(self, msg: pb.PutRequest) -> pb.PutResponse:
        self._node.check_open()
        cmd = convert.put_command(msg, self._limits, self._node.expirer.now_ms(), self._max_ttl)
        res = await self._node.consensus.propose(cmd)
        assert isinstance(res, PutResult)
        return convert.put_pb(res, self._node.header(res.revision), msg.prev_kv)

    async def Delete(self, msg: pb.DeleteRequest) -> pb.DeleteResponse:
        self._node.check_open()
        cmd = convert.delete_command(msg, self._limits)
        res = await self._node.consensus.propose(cmd)
        assert isinstance(res, DeleteResult)
        return convert.delete_pb(res, self._node.header(res.revision), msg.prev_kv)

    async def Txn(self, msg: pb.TxnRequest) -> pb.TxnResponse:
        self._node.check_open()
        cmd = convert.txn_command(msg, self._limits, self._node.expirer.now_ms(), self._max_ttl)
        res = await self._node.consensus.propose(cmd)
        assert isinstance(res, TxnResult)
        header = self._node.header(res.revision)
        ops = msg.success if res.succeeded else msg.failure
        return pb.TxnResponse(
            header=header,
            succeeded=res.succeeded,
            responses=[convert.txn_op_pb(op, r, header) for op, r in zip(ops, res.responses, strict=True)],
        )

    async def Compact(self, msg: pb.CompactRequest) -> pb.CompactResponse:
        self._node.check_open()
        if msg.revision == 0:
            raise InvalidArgument("compact revision must be greater than 0")
        res = await self._node.consensus.propose(Compact(revision=msg.revision))
        return pb.CompactResponse(header=self._node.header(res.revision))

    # -- watch -----------------------------------------------------------------------------

    async def Watch(self, msg: pb.WatchRequest) -> AsyncIterator[pb.WatchResponse]:
        self._node.check_open()
        prefix: str | None = None
        key: str | None = None
        if msg.prefix:
            convert.check_key(msg.prefix, self._limits, "prefix")
            prefix = msg.prefix
        else:
            convert.check_key(msg.key, self._limits)
            key = msg.key
        hub = self._node.hub
        cfg = self._node.config.watch
        start = msg.start_revision or hub.published_revision + 1
        watcher = Watcher(key=key, prefix=prefix, start_revision=start, max_events=cfg.buffer_events)
        idle = cfg.progress_interval_ms / 1000
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
            hub.leave(watcher)

    def _watch_response(self, events: list[Event], with_prev: bool) -> pb.WatchResponse:
        return pb.WatchResponse(
            header=self._node.header(self._node.hub.published_revision),
            events=[convert.event_pb(ev, with_prev) for ev in events],
        )
