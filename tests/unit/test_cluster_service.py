"""ClusterService's membership RPCs through real purerpc servers and ggap.client, over fake
consensus: every node of a small cluster is a real ClusterServicer with its own Forwarder,
and the fakes share one `Shared` state (who leads, the membership, the leader's view of
progress), so forwarding, leader changes and the remove-the-leader sequence run for real.

Also the MemberManager's auto-promotion loop on its own (fake clock), including
cancellation in the middle of a change.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import attrs
import pytest
import trio

from ggap.client import ClientError, open_connection
from ggap.config import Config
from ggap.pb import kv_pb2 as pb
from ggap.replica.api import RoleInfo
from ggap.rpc import RpcPolicy, guarded_service, serve_grpc
from ggap.server.cluster_service import ClusterServicer
from ggap.server.forward import Forwarder
from ggap.server.kv_service import NodeState
from ggap.server.members import MemberManager
from ggap.types import (
    ChangeKind,
    FailedPrecondition,
    GgapError,
    Member,
    MemberChange,
    MemberProgress,
    Membership,
    NotLeader,
    StatusCode,
)

COMMIT = 5000
LIMIT = Config().server.promote_max_lag_entries  # 1000


def member(i: int, *, learner: bool = False) -> Member:
    return Member(i, f"10.0.0.{i}:17000", f"10.0.0.{i}:17001", learner)


@attrs.define
class Shared:
    """One cluster's truth as every fake node's consensus sees it."""

    membership: Membership
    leader: int = 1
    term: int = 2
    commit: int = COMMIT
    # The leader's view of every other member; `behind`/`active` adjust it.
    progress: dict[int, MemberProgress] = attrs.field(factory=dict)
    addrs: dict[int, str] = attrs.field(factory=dict)  # served client endpoints
    changes: list[tuple[int, MemberChange]] = attrs.field(factory=list)  # (proposer, change)
    attempts: int = 0
    transfers: list[tuple[int, int]] = attrs.field(factory=list)  # (from, to)
    reads: list[int] = attrs.field(factory=list)  # nodes that ran read_index
    refuse: GgapError | None = None  # the core's refusal of the next change
    block: trio.Event | None = None  # changes wait for it (cancellation tests)
    read_blocks: bool = False  # no quorum: read_index never answers

    def __attrs_post_init__(self) -> None:
        for m in self.membership.members:
            self.set_progress(m.id)

    def set_progress(self, i: int, *, behind: int = 0, active: bool = True) -> None:
        m = self.membership.get(i)
        learner = m.learner if m is not None else True
        self.progress[i] = MemberProgress(i, learner, self.commit - behind, self.commit - behind, active)


def apply_change(membership: Membership, change: MemberChange) -> Membership:
    others = [m for m in membership.members if m.id != change.member.id]
    if change.kind is ChangeKind.ADD_LEARNER:
        others.append(change.member)
    elif change.kind is ChangeKind.PROMOTE:
        others.append(attrs.evolve(membership.get(change.member.id), learner=False))  # type: ignore[arg-type]
    return Membership(tuple(others), membership.index + 1)


@attrs.define
class FakeConsensus:
    me: int
    shared: Shared
    believes: int | None = None  # a stale view of who leads (None: the truth)

    def _leader(self) -> int:
        return self.shared.leader if self.believes is None else self.believes

    def role(self) -> RoleInfo:
        s = self.shared
        role = "leader" if s.leader == self.me else "follower"
        if self.me in s.membership.learners:
            role = "learner"
        return RoleInfo(
            member_id=self.me,
            leader_id=self._leader(),
            term=s.term,
            role=role,
            commit_index=s.commit,
            applied_index=s.commit,
        )

    def leader_client_addr(self) -> str | None:
        return self.shared.addrs.get(self._leader())

    async def read_index(self) -> int:
        self.shared.reads.append(self.me)
        if self.shared.read_blocks:
            await trio.sleep_forever()
        return self.shared.commit

    async def wait_applied(self, index: int) -> None:
        await trio.lowlevel.checkpoint()

    def membership(self) -> Membership:
        return self.shared.membership

    def member_progress(self) -> dict[int, MemberProgress]:
        return dict(self.shared.progress) if self.shared.leader == self.me else {}

    def _check_leader(self) -> None:
        if self.shared.leader != self.me:
            raise NotLeader("this node is not the leader", leader_id=self.shared.leader)

    async def change_membership(self, change: MemberChange) -> Membership:
        s = self.shared
        self._check_leader()
        s.attempts += 1
        if s.block is not None:
            await s.block.wait()
        if s.refuse is not None:
            err, s.refuse = s.refuse, None
            raise err
        s.changes.append((self.me, change))
        s.membership = apply_change(s.membership, change)
        if change.kind is ChangeKind.ADD_LEARNER:
            s.set_progress(change.member.id, behind=s.commit)  # it joins with nothing
        elif change.kind is ChangeKind.PROMOTE:
            s.progress[change.member.id] = attrs.evolve(s.progress[change.member.id], learner=False)
        return s.membership

    async def transfer_leader(self, target: int) -> None:
        self._check_leader()
        self.shared.transfers.append((self.me, target))
        self.shared.leader = target
        self.shared.term += 1


@attrs.define
class FakeKv:
    revision: int = 7
    compact_revision: int = 0


@attrs.define
class FakeSpace:
    total_bytes: int = 8192
    in_use_bytes: int = 4096

    async def refresh(self) -> FakeSpace:
        return self

    def check_quota(self) -> None:
        pass


class CountingForwarder(Forwarder):
    def __init__(self) -> None:
        super().__init__(connect_timeout_s=1.0, retry_pause_s=0.02, answer_margin_s=0.05)
        self.forwards = 0

    async def forward(self, addr: str, epoch: tuple[int, int], call: Any) -> Any:
        self.forwards += 1
        return await super().forward(addr, epoch, call)


@attrs.define
class Node:
    endpoint: str
    consensus: FakeConsensus
    members: MemberManager
    forwarder: CountingForwarder


async def serve(nursery: trio.Nursery, shared: Shared, me: int, *, default_timeout_s: float = 10.0) -> Node:
    """One node: a real ClusterServicer (guarded, on 127.0.0.1:0) and its own Forwarder."""
    config = Config()
    consensus = FakeConsensus(me, shared)
    forwarder = CountingForwarder()
    await nursery.start(forwarder.run)
    state = NodeState(
        config=config,
        consensus=consensus,  # type: ignore[arg-type]
        readers=None,  # type: ignore[arg-type]
        hub=None,  # type: ignore[arg-type]
        expirer=None,  # type: ignore[arg-type]
        forwarder=forwarder,
        space=FakeSpace(),  # type: ignore[arg-type]
    )
    members = MemberManager(
        consensus,  # type: ignore[arg-type]
        max_lag_entries=config.server.promote_max_lag_entries,
        auto_promote_interval_s=config.server.auto_promote_interval_ms / 1000,
    )
    servicer = ClusterServicer(state, FakeKv(), None, members)  # type: ignore[arg-type]
    policy = RpcPolicy(default_timeout_s=default_timeout_s)
    port = await nursery.start(
        functools.partial(
            serve_grpc, [guarded_service(servicer, policy)], "127.0.0.1", 0, max_message_bytes=1 << 20
        )
    )
    endpoint = f"127.0.0.1:{port}"
    shared.addrs[me] = endpoint
    return Node(endpoint, consensus, members, forwarder)


@attrs.define
class Cluster:
    shared: Shared
    nodes: dict[int, Node]

    async def call(self, node: int, method: str, **fields: Any) -> Any:
        with trio.fail_after(10):
            async with open_connection(self.nodes[node].endpoint, timeout_s=5) as client:
                return await getattr(client, method)(**fields)

    async def refused(self, node: int, method: str, **fields: Any) -> ClientError:
        with pytest.raises(ClientError) as info:
            await self.call(node, method, **fields)
        return info.value


async def start_cluster(nursery: trio.Nursery, members: Iterable[Member], served: Iterable[int]) -> Cluster:
    shared = Shared(Membership(tuple(members)))
    nodes = {i: await serve(nursery, shared, i) for i in served}
    return Cluster(shared, nodes)


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> Cluster:
    """Voters 1, 2, 3 (1 leads) and learner 4, all served."""
    return await start_cluster(
        nursery, [member(1), member(2), member(3), member(4, learner=True)], served=[1, 2, 3, 4]
    )


def ids(resp: Any) -> list[tuple[int, bool]]:
    return [(m.id, m.learner) for m in resp.members]


# --- MemberList ------------------------------------------------------------------------------


async def test_member_list_is_the_same_on_every_node_and_linearizable(cluster: Cluster) -> None:
    answers = [ids(await cluster.call(i, "member_list")) for i in (1, 2, 4)]
    assert answers == [[(1, False), (2, False), (3, False), (4, True)]] * 3
    assert cluster.shared.reads == [1, 2, 4]  # each ran the ReadIndex barrier first
    resp = await cluster.call(2, "member_list")
    assert resp.members[3] == pb.Member(
        id=4, client_addr="10.0.0.4:17000", cluster_addr="10.0.0.4:17001", learner=True
    )
    assert resp.header.member_id == 2 and resp.header.leader_id == 1


async def test_member_list_eventual_skips_the_barrier(cluster: Cluster) -> None:
    cluster.shared.read_blocks = True  # no quorum: a linearizable list could not answer
    resp = await cluster.call(3, "member_list", read_mode=pb.READ_MODE_EVENTUAL)
    assert len(resp.members) == 4 and cluster.shared.reads == []
    err = await cluster.refused(3, "member_list", read_mode=99)
    assert err.code == StatusCode.INVALID_ARGUMENT


async def test_member_list_without_a_quorum_is_unavailable(nursery: trio.Nursery) -> None:
    shared = Shared(Membership((member(1),)), read_blocks=True)
    node = await serve(nursery, shared, 1, default_timeout_s=0.5)
    with pytest.raises(ClientError) as info, trio.fail_after(5):
        async with open_connection(node.endpoint) as client:
            await client.member_list()
    assert info.value.code == StatusCode.UNAVAILABLE
    assert "no leader confirmed the read" in info.value.message


# --- MemberAdd -------------------------------------------------------------------------------

NEW = {"id": 5, "client_addr": "10.0.0.5:17000", "cluster_addr": "10.0.0.5:17001"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**NEW, "id": 0}, "id must be 1..9223372036854775807, got 0"),
        ({**NEW, "id": 1 << 63}, "id must be 1..9223372036854775807"),
        ({**NEW, "client_addr": ""}, "client_addr: expected host:port, got ''"),
        ({**NEW, "client_addr": "10.0.0.5"}, "client_addr: expected host:port"),
        ({**NEW, "cluster_addr": "10.0.0.5:0"}, "cluster_addr: port must be 1..65535"),
        ({**NEW, "cluster_addr": "::1:17001"}, "IPv6 hosts need brackets"),
        ({**NEW, "cluster_addr": "h :1"}, "cluster_addr: expected host:port"),
        ({**NEW, "cluster_addr": NEW["client_addr"]}, "client_addr and cluster_addr must differ"),
    ],
)
async def test_member_add_bad_input_is_invalid_argument_before_any_forwarding(
    cluster: Cluster, fields: dict[str, Any], message: str
) -> None:
    err = await cluster.refused(2, "member_add", **fields)
    assert err.code == StatusCode.INVALID_ARGUMENT and message in err.message
    assert cluster.nodes[2].forwarder.forwards == 0 and cluster.shared.attempts == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({**NEW, "id": 3}, "3 is already a member"),
        ({**NEW, "client_addr": "10.0.0.2:17000"}, "10.0.0.2:17000 is already used by member 2"),
        ({**NEW, "cluster_addr": "10.0.0.4:17000"}, "10.0.0.4:17000 is already used by member 4"),
        ({**NEW, "cluster_addr": "10.0.0.3:17001"}, "is already used by member 3"),
    ],
)
async def test_member_add_of_an_existing_id_or_address_is_refused(
    cluster: Cluster, fields: dict[str, Any], message: str
) -> None:
    err = await cluster.refused(1, "member_add", **fields)
    assert err.code == StatusCode.FAILED_PRECONDITION and message in err.message
    assert cluster.shared.attempts == 0


async def test_member_add_of_a_client_address_only_its_member_reports_is_refused(
    nursery: trio.Nursery,
) -> None:
    """Bootstrap members have no client address in the membership (--peers names cluster
    addresses only); the leader knows the one each reports of itself and refuses it too."""
    bootstrap = [Member(i, "", f"10.0.0.{i}:17001") for i in (1, 2, 3)]
    cluster = await start_cluster(nursery, bootstrap, served=[1, 2])
    shared = cluster.shared
    shared.progress[2] = attrs.evolve(shared.progress[2], client_addr="10.0.0.2:17000")
    err = await cluster.refused(2, "member_add", **{**NEW, "client_addr": "10.0.0.2:17000"})
    assert err.code == StatusCode.FAILED_PRECONDITION
    assert err.message == "10.0.0.2:17000 is already used by member 2"
    # Member 3 reported nothing yet: its client address cannot be checked.
    await cluster.call(1, "member_add", **{**NEW, "client_addr": "10.0.0.3:17000"})
    assert [c.member.id for _, c in shared.changes] == [5]


async def test_member_add_always_adds_a_learner(cluster: Cluster) -> None:
    resp = await cluster.call(1, "member_add", **NEW, learner=True)
    assert (5, True) in ids(resp) and not resp.auto_promote
    added = Member(5, NEW["client_addr"], NEW["cluster_addr"], learner=True)  # type: ignore[arg-type]
    assert cluster.shared.changes == [(1, MemberChange(ChangeKind.ADD_LEARNER, added))]
    assert cluster.nodes[1].members.auto_promote == frozenset()
    # learner=false: still a learner now, promoted by the leader once it caught up.
    resp = await cluster.call(1, "member_add", id=6, client_addr="h6:1", cluster_addr="h6:2", learner=False)
    assert (6, True) in ids(resp) and resp.auto_promote
    assert cluster.nodes[1].members.auto_promote == frozenset({6})


async def test_member_add_from_a_follower_is_forwarded_to_the_leader(cluster: Cluster) -> None:
    resp = await cluster.call(3, "member_add", **NEW)  # learner=False: the leader keeps the wish
    assert [who for who, _ in cluster.shared.changes] == [1]
    assert cluster.nodes[3].forwarder.forwards == 1
    assert resp.header.member_id == 1 and resp.auto_promote  # the leader's answer
    assert cluster.nodes[1].members.auto_promote == frozenset({5})
    assert cluster.nodes[3].members.auto_promote == frozenset()


async def test_a_forwarded_request_is_never_forwarded_again(cluster: Cluster) -> None:
    """Node 3 thinks 2 leads; 2 (a follower that knows better) refuses instead of passing
    the request on; 3 retries the refusal once it learns the truth."""
    cluster.nodes[3].consensus.believes = 2

    async def learn_later() -> None:
        await trio.sleep(0.2)
        cluster.nodes[3].consensus.believes = None

    async with trio.open_nursery() as nursery:
        nursery.start_soon(learn_later)
        resp = await cluster.call(3, "member_promote", id=4)
    assert (4, False) in ids(resp) and [who for who, _ in cluster.shared.changes] == [1]
    assert cluster.nodes[2].forwarder.forwards == 0 and cluster.nodes[3].forwarder.forwards >= 2


async def test_a_core_refusal_is_failed_precondition_and_not_retried(cluster: Cluster) -> None:
    cluster.shared.refuse = FailedPrecondition("another membership change is in progress")
    err = await cluster.refused(2, "member_add", **NEW)
    assert err.code == StatusCode.FAILED_PRECONDITION
    assert err.message == "another membership change is in progress"
    assert cluster.shared.attempts == 1 and cluster.shared.changes == []


# --- MemberPromote ---------------------------------------------------------------------------


async def test_promote_refuses_a_lagging_learner_saying_how_far_behind(cluster: Cluster) -> None:
    cluster.shared.set_progress(4, behind=1234)
    err = await cluster.refused(2, "member_promote", id=4)
    assert err.code == StatusCode.FAILED_PRECONDITION
    assert err.message == "learner 4 is 1234 entries behind the leader (limit 1000)"
    cluster.shared.set_progress(4, behind=LIMIT)  # at the limit: caught up enough
    resp = await cluster.call(2, "member_promote", id=4)
    assert (4, False) in ids(resp)
    assert cluster.shared.changes == [(1, MemberChange(ChangeKind.PROMOTE, Member(4)))]


async def test_promote_refusals(cluster: Cluster) -> None:
    err = await cluster.refused(1, "member_promote", id=3)
    assert (err.code, err.message) == (StatusCode.FAILED_PRECONDITION, "member 3 is already a voter")
    err = await cluster.refused(1, "member_promote", id=9)
    assert (err.code, err.message) == (StatusCode.FAILED_PRECONDITION, "9 is not a member")
    cluster.shared.set_progress(4, active=False)
    err = await cluster.refused(1, "member_promote", id=4)
    assert err.code == StatusCode.FAILED_PRECONDITION and "has not answered the leader" in err.message
    err = await cluster.refused(1, "member_promote", id=0)
    assert err.code == StatusCode.INVALID_ARGUMENT
    assert cluster.shared.attempts == 0


# --- MemberRemove ----------------------------------------------------------------------------


async def test_remove_a_learner_and_a_voter(cluster: Cluster) -> None:
    resp = await cluster.call(3, "member_remove", id=4)
    assert ids(resp) == [(1, False), (2, False), (3, False)]
    resp = await cluster.call(3, "member_remove", id=3)  # a node may remove itself
    assert ids(resp) == [(1, False), (2, False)]
    assert [(who, c.kind, c.member.id) for who, c in cluster.shared.changes] == [
        (1, ChangeKind.REMOVE, 4),
        (1, ChangeKind.REMOVE, 3),
    ]
    err = await cluster.refused(1, "member_remove", id=4)
    assert (err.code, err.message) == (StatusCode.FAILED_PRECONDITION, "4 is not a member")


async def test_remove_without_a_live_quorum_is_refused_unless_forced(cluster: Cluster) -> None:
    cluster.shared.set_progress(3, active=False)
    err = await cluster.refused(2, "member_remove", id=2)
    assert err.code == StatusCode.FAILED_PRECONDITION
    assert err.message == (
        "removing voter 2 would leave 1 live of 2 voters, fewer than the 2 a quorum needs "
        "(force removes it anyway)"
    )
    assert cluster.shared.attempts == 0
    # A learner never counts: removing it is fine even so.
    await cluster.call(2, "member_remove", id=4)
    resp = await cluster.call(2, "member_remove", id=2, force=True)
    assert ids(resp) == [(1, False), (3, False)]


async def test_the_last_voter_cannot_be_removed_even_by_force(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, [member(1), member(2, learner=True)], served=[1])
    err = await cluster.refused(1, "member_remove", id=1, force=True)
    assert err.code == StatusCode.FAILED_PRECONDITION and "last voter" in err.message
    assert cluster.shared.attempts == 0


@pytest.mark.parametrize("via", [1, 2])
async def test_removing_the_leader_transfers_leadership_first(cluster: Cluster, via: int) -> None:
    """Voter 3 is the most caught up: it gets leadership, then removes 1 (the request goes
    to it on the forwarding path, whichever node it reached first)."""
    cluster.shared.set_progress(2, behind=10)
    resp = await cluster.call(via, "member_remove", id=1)
    assert cluster.shared.transfers == [(1, 3)]
    assert cluster.shared.changes == [(3, MemberChange(ChangeKind.REMOVE, Member(1)))]
    assert ids(resp) == [(2, False), (3, False), (4, True)]
    assert resp.header.member_id == 3 and resp.header.leader_id == 3


async def test_removing_the_leader_without_a_caught_up_voter(cluster: Cluster) -> None:
    """No live voter to hand over to: refused for want of a live quorum; forced, the leader
    proposes its own removal (it steps down once it applied it)."""
    cluster.shared.set_progress(2, active=False)
    cluster.shared.set_progress(3, behind=LIMIT + 1)
    err = await cluster.refused(1, "member_remove", id=1)
    assert err.code == StatusCode.FAILED_PRECONDITION and "fewer than the 2 a quorum needs" in err.message
    await cluster.call(1, "member_remove", id=1, force=True)
    assert cluster.shared.transfers == []
    assert cluster.shared.changes == [(1, MemberChange(ChangeKind.REMOVE, Member(1)))]


# --- TransferLeader --------------------------------------------------------------------------


async def test_transfer_leader(cluster: Cluster) -> None:
    resp = await cluster.call(3, "transfer_leader", target_id=2)  # forwarded to 1
    assert cluster.shared.transfers == [(1, 2)] and resp.header.leader_id == 2
    await cluster.call(3, "transfer_leader", target_id=2)  # already leads: nothing to do
    assert cluster.shared.transfers == [(1, 2)]
    for target, message in [(4, "member 4 is a learner"), (9, "9 is not a member")]:
        err = await cluster.refused(1, "transfer_leader", target_id=target)
        assert err.code == StatusCode.FAILED_PRECONDITION and message in err.message
    cluster.shared.set_progress(3, active=False)
    err = await cluster.refused(1, "transfer_leader", target_id=3)
    assert err.code == StatusCode.FAILED_PRECONDITION and "voter 3 has not answered" in err.message
    err = await cluster.refused(1, "transfer_leader", target_id=0)
    assert err.code == StatusCode.INVALID_ARGUMENT and "target_id" in err.message
    assert cluster.shared.transfers == [(1, 2)]


# --- Status ----------------------------------------------------------------------------------


async def test_status_shows_progress_on_the_leader_only(cluster: Cluster) -> None:
    await cluster.call(1, "member_add", **NEW)  # auto-promote wish
    cluster.shared.set_progress(2, behind=3, active=False)
    st = await cluster.call(1, "status")
    assert st.role == "leader" and st.commit_index == COMMIT
    by_id = {p.id: p for p in st.progress}
    assert sorted(by_id) == [1, 2, 3, 4, 5]
    assert by_id[2] == pb.MemberStatus(
        id=2, learner=False, match_index=COMMIT - 3, applied_index=COMMIT - 3, recent_active=False
    )
    assert by_id[5].learner and by_id[5].auto_promote and by_id[5].match_index == 0
    assert not by_id[4].auto_promote
    follower = await cluster.call(2, "status")
    assert follower.role == "follower" and list(follower.progress) == []


# --- auto-promotion (MemberManager.run) -------------------------------------------------------


def manager(shared: Shared, me: int = 1) -> MemberManager:
    return MemberManager(
        FakeConsensus(me, shared),  # type: ignore[arg-type]
        max_lag_entries=LIMIT,
        auto_promote_interval_s=0.5,
    )


async def test_auto_promotion_waits_until_the_learner_caught_up(autojump_clock: trio.abc.Clock) -> None:
    shared = Shared(Membership((member(1), member(2), member(3))))
    mgr = manager(shared)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mgr.run)
        await mgr.add_learner(member(4), auto_promote=True)  # joins with nothing: far behind
        await trio.sleep(5)
        assert shared.membership.get(4) == member(4, learner=True) and mgr.auto_promote == {4}
        shared.set_progress(4, behind=LIMIT + 1)
        await trio.sleep(5)
        assert shared.membership.get(4) == member(4, learner=True)
        shared.set_progress(4, behind=20)
        await trio.sleep(1)
        assert shared.membership.get(4) == member(4) and mgr.auto_promote == frozenset()
        nursery.cancel_scope.cancel()
    assert [c.kind for _, c in shared.changes] == [ChangeKind.ADD_LEARNER, ChangeKind.PROMOTE]


async def test_auto_promotion_only_on_the_leader_and_survives_refusals(
    autojump_clock: trio.abc.Clock,
) -> None:
    shared = Shared(Membership((member(1), member(2), member(3))))
    mgr = manager(shared)
    await mgr.add_learner(member(4), auto_promote=True)
    shared.set_progress(4)
    shared.leader = 2  # leadership moved: this node's wish waits (the new leader has none)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mgr.run)
        await trio.sleep(3.25)
        assert shared.membership.get(4) == member(4, learner=True) and shared.attempts == 1
        shared.leader = 1  # leads again; the core refuses once (another change pending)
        shared.refuse = FailedPrecondition("another membership change is in progress")
        await trio.sleep(0.6)
        assert shared.attempts == 2 and shared.membership.get(4) == member(4, learner=True)
        await trio.sleep(0.6)
        assert shared.membership.get(4) == member(4)
        nursery.cancel_scope.cancel()


async def test_a_wish_for_a_removed_learner_is_forgotten(autojump_clock: trio.abc.Clock) -> None:
    shared = Shared(Membership((member(1), member(2), member(3))))
    mgr = manager(shared)
    await mgr.add_learner(member(4), auto_promote=True)
    shared.membership = apply_change(shared.membership, MemberChange(ChangeKind.REMOVE, Member(4)))
    assert await mgr.promote_caught_up() is None
    assert mgr.auto_promote == frozenset()


async def test_auto_promotion_is_cancelled_cleanly_mid_change(autojump_clock: trio.abc.Clock) -> None:
    shared = Shared(Membership((member(1), member(2), member(3))))
    mgr = manager(shared)
    await mgr.add_learner(member(4), auto_promote=True)
    shared.set_progress(4)
    shared.block = trio.Event()  # the promotion never completes
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mgr.run)
            while shared.attempts < 2:  # the add was attempt 1
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()  # e.g. the node shuts down
    assert shared.changes[-1][1].kind is ChangeKind.ADD_LEARNER  # the promotion never applied
    assert mgr.auto_promote == {4}  # and the wish is kept for a later round


def test_manager_knobs_are_checked() -> None:
    shared = Shared(Membership((member(1),)))
    with pytest.raises(ValueError, match="max_lag_entries"):
        MemberManager(FakeConsensus(1, shared), max_lag_entries=-1, auto_promote_interval_s=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auto_promote_interval_s"):
        MemberManager(FakeConsensus(1, shared), max_lag_entries=0, auto_promote_interval_s=0)  # type: ignore[arg-type]
