"""ClusterService. Membership changes need Raft; until it lands they answer UNIMPLEMENTED
rather than pretending to succeed."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ggap import __version__
from ggap.config import Config
from ggap.pb import kv_grpc
from ggap.pb import kv_pb2 as pb
from ggap.server.kv_service import NodeState
from ggap.server.snapshots import SnapshotStreams
from ggap.storage import KvStore
from ggap.types import Unimplemented

_NO_MEMBERSHIP = "membership changes need Raft replication, which this build does not have yet"


class ClusterServicer(kv_grpc.ClusterServiceServicer):
    def __init__(self, node: NodeState, kv: KvStore, snapshots: SnapshotStreams) -> None:
        self._node = node
        self._kv = kv
        self._snapshots = snapshots

    async def Status(self, msg: pb.StatusRequest) -> pb.StatusResponse:
        role = self._node.consensus.role()
        space = await self._node.space.refresh()
        return pb.StatusResponse(
            member_id=role.member_id,
            leader_id=role.leader_id,
            raft_term=role.term,
            role=role.role,
            commit_index=role.commit_index,
            applied_index=role.applied_index,
            revision=self._kv.revision,
            compact_revision=self._kv.compact_revision,
            db_size_bytes=space.total_bytes,
            db_size_in_use_bytes=space.in_use_bytes,
            version=__version__,
        )

    def Snapshot(self, msg: pb.SnapshotRequest) -> AsyncIterator[pb.SnapshotResponse]:
        """Not a generator itself: the RPC guard iterates and closes the streamer's own
        generator, so its cleanup runs as soon as the stream ends (ggap/server/snapshots.py)."""
        self._node.check_open()
        return self._snapshots.stream(self._node.header)

    async def MemberList(self, msg: pb.MemberListRequest) -> pb.MemberListResponse:
        return pb.MemberListResponse(
            header=self._node.header(self._kv.revision), members=[_self_member(self._node.config)]
        )

    async def MemberAdd(self, msg: pb.MemberAddRequest) -> pb.MemberAddResponse:
        raise Unimplemented(_NO_MEMBERSHIP)

    async def MemberPromote(self, msg: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        raise Unimplemented(_NO_MEMBERSHIP)

    async def MemberRemove(self, msg: pb.MemberRemoveRequest) -> pb.MemberRemoveResponse:
        raise Unimplemented(_NO_MEMBERSHIP)

    async def TransferLeader(self, msg: pb.TransferLeaderRequest) -> pb.TransferLeaderResponse:
        raise Unimplemented(_NO_MEMBERSHIP)


def _self_member(config: Config) -> pb.Member:
    return pb.Member(
        id=config.node.id,
        client_addr=config.node.client_addr,
        cluster_addr=config.node.cluster_addr,
        learner=False,
    )
