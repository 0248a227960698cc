"""ClusterService: status, snapshots, and membership from any node.

Input is validated where the request arrives (INVALID_ARGUMENT needs no leader); every
decision about the membership is the leader's (`MemberManager`), and a request reaching a
follower is forwarded to the leader on the same path as writes (`NodeState.on_leader`:
`ggap-forwarded` metadata, retried only on refusals). Refusals are GgapErrors, mapped to
gRPC statuses in one place (ggap/rpc/errors.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ggap import __version__
from ggap.pb import kv_grpc
from ggap.pb import kv_pb2 as pb
from ggap.server import convert
from ggap.server.kv_service import NodeState
from ggap.server.members import MemberManager, check_member_addr, check_member_id
from ggap.server.snapshots import SnapshotStreams
from ggap.storage import KvStore
from ggap.types import InvalidArgument, Member, Membership, ReadMode


class ClusterServicer(kv_grpc.ClusterServiceServicer):
    def __init__(
        self, node: NodeState, kv: KvStore, snapshots: SnapshotStreams, members: MemberManager
    ) -> None:
        self._node = node
        self._kv = kv
        self._snapshots = snapshots
        self._members = members

    async def Status(self, msg: pb.StatusRequest) -> pb.StatusResponse:
        consensus = self._node.consensus
        role = consensus.role()
        space = await self._node.space.refresh()
        progress: list[pb.MemberStatus] = []
        if role.role == "leader":  # elsewhere progress means nothing (see Consensus.member_progress)
            waiting = self._members.auto_promote
            progress = [
                convert.member_status_pb(p, auto_promote=p.id in waiting)
                for p in sorted(consensus.member_progress().values(), key=lambda p: p.id)
            ]
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
            progress=progress,
        )

    def Snapshot(self, msg: pb.SnapshotRequest) -> AsyncIterator[pb.SnapshotResponse]:
        """Not a generator itself: the RPC guard iterates and closes the streamer's own
        generator, so its cleanup runs as soon as the stream ends (ggap/server/snapshots.py)."""
        self._node.check_open()
        return self._snapshots.stream(self._node.header)

    async def MemberList(self, msg: pb.MemberListRequest) -> pb.MemberListResponse:
        """Linearizable unless the request asks otherwise, as etcd's MemberList: after the
        ReadIndex barrier the local applied membership reflects every change acknowledged
        before the call, so every node gives the same answer. SEQUENTIAL/EVENTUAL answer
        from the local applied membership at once (it works without a leader)."""
        self._node.check_open()
        mode = convert.read_mode(msg.read_mode, ReadMode.LINEARIZABLE)
        if mode is ReadMode.LINEARIZABLE:
            await self._node.confirm_read()
        return pb.MemberListResponse(
            header=self._header(), members=convert.members_pb(self._node.consensus.membership())
        )

    async def MemberAdd(self, msg: pb.MemberAddRequest, request: Any = None) -> pb.MemberAddResponse:
        self._node.check_open()
        member = Member(
            id=check_member_id(msg.id),
            client_addr=check_member_addr(msg.client_addr, "client_addr"),
            cluster_addr=check_member_addr(msg.cluster_addr, "cluster_addr"),
            learner=True,
        )
        if member.client_addr == member.cluster_addr:
            raise InvalidArgument(f"client_addr and cluster_addr must differ, both are {member.client_addr}")
        auto_promote = not msg.learner

        async def here() -> pb.MemberAddResponse:
            after = await self._members.add_learner(member, auto_promote=auto_promote)
            return pb.MemberAddResponse(
                header=self._header(), members=convert.members_pb(after), auto_promote=auto_promote
            )

        return await self._node.on_leader(
            request, here, lambda leader, timeout_s: leader.member_add(msg, timeout_s=timeout_s)
        )

    async def MemberPromote(
        self, msg: pb.MemberPromoteRequest, request: Any = None
    ) -> pb.MemberPromoteResponse:
        self._node.check_open()
        member_id = check_member_id(msg.id)

        async def here() -> pb.MemberPromoteResponse:
            return pb.MemberPromoteResponse(**self._answer(await self._members.promote(member_id)))

        return await self._node.on_leader(
            request, here, lambda leader, timeout_s: leader.member_promote(msg, timeout_s=timeout_s)
        )

    async def MemberRemove(self, msg: pb.MemberRemoveRequest, request: Any = None) -> pb.MemberRemoveResponse:
        self._node.check_open()
        member_id = check_member_id(msg.id)

        async def here() -> pb.MemberRemoveResponse:
            after = await self._members.remove(member_id, force=msg.force)
            return pb.MemberRemoveResponse(**self._answer(after))

        return await self._node.on_leader(
            request, here, lambda leader, timeout_s: leader.member_remove(msg, timeout_s=timeout_s)
        )

    async def TransferLeader(
        self, msg: pb.TransferLeaderRequest, request: Any = None
    ) -> pb.TransferLeaderResponse:
        self._node.check_open()
        target = check_member_id(msg.target_id, "target_id")

        async def here() -> pb.TransferLeaderResponse:
            await self._members.transfer(target)
            return pb.TransferLeaderResponse(header=self._header())

        return await self._node.on_leader(
            request, here, lambda leader, timeout_s: leader.transfer_leader(msg, timeout_s=timeout_s)
        )

    def _header(self) -> pb.ResponseHeader:
        return self._node.header(self._kv.revision)

    def _answer(self, membership: Membership) -> dict[str, Any]:
        return {"header": self._header(), "members": convert.members_pb(membership)}
