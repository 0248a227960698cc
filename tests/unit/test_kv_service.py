"""KvService's one write path, with a fake consensus and a fake forwarder (no node, no network).

A write is proposed here when this node leads and answered from the typed result; otherwise
it goes to the leader and the leader's response is the answer, whatever the RPC. The
Forwarder retries elsewhere only when the leader's status says NotLeader.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

from ggap.client import ClientError
from ggap.config import Config
from ggap.pb import kv_pb2 as pb
from ggap.replica.api import RoleInfo
from ggap.rpc.errors import status_from_rpc_error, to_rpc_error
from ggap.server import forward as forward_mod
from ggap.server.forward import FORWARDED, Forwarder, RetryElsewhere
from ggap.server.kv_service import KvServicer, NodeState
from ggap.types import (
    Command,
    CompactResult,
    DeleteResult,
    GgapError,
    InvalidArgument,
    KeyValue,
    NotLeader,
    PutResult,
    ResourceExhausted,
    TxnResult,
    Unavailable,
)

MEMBER, LEADER, TERM = 2, 1, 3


@attrs.define
class FakeConsensus:
    """Answers proposals from `outcomes` in order (a result, or an exception to raise)."""

    outcomes: list[Any]
    proposed: list[tuple[str, Command]] = attrs.field(factory=list)

    async def _next(self, how: str, cmd: Command) -> Any:
        self.proposed.append((how, cmd))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def propose(self, cmd: Command, *, forward: bool = False) -> Any:
        return await self._next("majority", cmd)

    async def propose_all(self, cmd: Command) -> Any:
        return await self._next("all", cmd)

    def leader_client_addr(self) -> str:
        return "leader:2379"

    def role(self) -> RoleInfo:
        return RoleInfo(
            member_id=MEMBER, leader_id=LEADER, term=TERM, role="follower", commit_index=0, applied_index=0
        )


@attrs.define
class FakeLeader:
    """Stands in for the `ggap.client.Client` connected to the leader."""

    response: Any
    sent: list[tuple[str, Any, float]] = attrs.field(factory=list)

    def __getattr__(self, method: str) -> Any:
        async def call(msg: Any, *, timeout_s: float) -> Any:
            self.sent.append((method, msg, timeout_s))
            return self.response

        return call


@attrs.define
class FakeForwarder:
    """Each forward takes the next of `leaders` (a FakeLeader, or an exception to raise)."""

    leaders: list[Any]
    calls: list[tuple[str, tuple[int, int]]] = attrs.field(factory=list)

    async def forward(self, addr: str, epoch: tuple[int, int], call: Any) -> Any:
        self.calls.append((addr, epoch))
        leader = self.leaders.pop(0)
        if isinstance(leader, BaseException):
            raise leader
        return await call(leader, 1.5)

    async def pause_or_give_up(self, leader_id: int) -> None:
        await _REAL.pause_or_give_up(leader_id)  # waits a little, or gives up at the deadline


_REAL = Forwarder(connect_timeout_s=1.0, retry_pause_s=0.05, answer_margin_s=0.05)


class FakeExpirer:
    def now_ms(self) -> int:
        return 1_000


@attrs.define
class FakeSpace:
    full: bool = False

    def check_quota(self) -> None:
        if self.full:
            raise ResourceExhausted("database space quota exceeded: storage.quota_bytes is 1")


class ForwardedRequest:
    custom_metadata = ((FORWARDED, "1"),)


def servicer(
    consensus: FakeConsensus, forwarder: FakeForwarder | None = None, space: FakeSpace | None = None
) -> KvServicer:
    node = NodeState(
        config=Config(),
        consensus=consensus,  # type: ignore[arg-type]
        readers=None,  # type: ignore[arg-type]
        hub=None,  # type: ignore[arg-type]
        expirer=FakeExpirer(),  # type: ignore[arg-type]
        forwarder=forwarder or FakeForwarder([]),  # type: ignore[arg-type]
        space=space or FakeSpace(),  # type: ignore[arg-type]
    )
    return KvServicer(node)


PREV = KeyValue("k", b"old", create_revision=1, mod_revision=1, version=1)


async def test_a_leader_answers_from_the_typed_result() -> None:
    consensus = FakeConsensus([PutResult(revision=7, prev_kv=PREV)])
    resp = await servicer(consensus).Put(pb.PutRequest(key="k", value=b"new", prev_kv=True))
    assert consensus.proposed[0][0] == "majority"
    assert resp.header.revision == 7 and resp.header.member_id == MEMBER and resp.header.raft_term == TERM
    assert resp.prev_kv.value == b"old"


async def test_quorum_all_proposes_to_every_replica() -> None:
    consensus = FakeConsensus([DeleteResult(revision=4, deleted=True, prev_kv=None)])
    resp = await servicer(consensus).Delete(pb.DeleteRequest(key="k", quorum=pb.WRITE_QUORUM_ALL))
    assert consensus.proposed[0][0] == "all" and resp.deleted and resp.header.revision == 4


@pytest.mark.parametrize(
    ("method", "request_msg", "response"),
    [
        ("put", pb.PutRequest(key="k", value=b"v"), pb.PutResponse(header=pb.ResponseHeader(revision=9))),
        ("delete", pb.DeleteRequest(key="k"), pb.DeleteResponse(deleted=True)),
        ("txn", pb.TxnRequest(), pb.TxnResponse(succeeded=True)),
        ("compact", pb.CompactRequest(revision=3), pb.CompactResponse(header=pb.ResponseHeader(revision=5))),
    ],
)
async def test_a_follower_answers_with_the_leaders_response(
    method: str, request_msg: Any, response: Any
) -> None:
    leader = FakeLeader(response)
    forwarder = FakeForwarder([leader])
    kv = servicer(FakeConsensus([NotLeader("not me", leader_id=LEADER)]), forwarder)
    got = await getattr(kv, method.capitalize())(request_msg)
    assert got is response
    assert forwarder.calls == [("leader:2379", (LEADER, TERM))]
    assert leader.sent == [(method, request_msg, 1.5)]


async def test_refusals_are_retried_until_a_leader_answers(autojump_clock: trio.abc.Clock) -> None:
    response = pb.PutResponse(header=pb.ResponseHeader(revision=2))
    forwarder = FakeForwarder([RetryElsewhere("not leader"), FakeLeader(response)])
    consensus = FakeConsensus([NotLeader("not me"), NotLeader("still not me")])
    assert await servicer(consensus, forwarder).Put(pb.PutRequest(key="k", value=b"v")) is response
    assert len(consensus.proposed) == 2 and len(forwarder.calls) == 2


async def test_a_forwarded_write_is_never_forwarded_again() -> None:
    forwarder = FakeForwarder([])
    kv = servicer(FakeConsensus([NotLeader("moved on", leader_id=3)]), forwarder)
    with pytest.raises(NotLeader):
        await kv.Put(pb.PutRequest(key="k", value=b"v"), ForwardedRequest())
    assert forwarder.calls == []


async def test_a_result_of_the_wrong_type_is_a_bug_not_an_answer() -> None:
    kv = servicer(FakeConsensus([CompactResult(revision=1)]))
    with pytest.raises(TypeError, match="Txn applied as CompactResult"):
        await kv.Txn(pb.TxnRequest())
    ok = await servicer(FakeConsensus([TxnResult(revision=2, succeeded=False, responses=())])).Txn(
        pb.TxnRequest()
    )
    assert ok.header.revision == 2 and not ok.succeeded


async def test_without_a_leader_the_write_gives_up_at_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    from ggap.rpc import server as rpc_server

    token = rpc_server._deadline.set(trio.current_time() + 1.0)
    try:
        consensus = FakeConsensus([NotLeader("no leader")] * 100)
        with pytest.raises(Unavailable, match="no leader accepted the write within the deadline"):
            await servicer(consensus, FakeForwarder([RetryElsewhere("x")] * 100)).Put(
                pb.PutRequest(key="k", value=b"v")
            )
    finally:
        rpc_server._deadline.reset(token)


# -- the Forwarder's reading of the leader's answer ----------------------------------------


def leader_fails_with(err: GgapError) -> Any:
    """A forwarded call that fails as the leader's status for `err` reaches the client."""
    code, text = status_from_rpc_error(to_rpc_error(err))

    async def call(client: Any, timeout_s: float) -> Any:
        raise ClientError(code, text)

    return call


async def test_forwarder_retries_elsewhere_only_when_the_leader_says_not_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forwarder = Forwarder(connect_timeout_s=1.0, retry_pause_s=0.05, answer_margin_s=0.05)
    conn = forward_mod._Conn(client=None, epoch=(LEADER, TERM))  # type: ignore[arg-type]

    async def connection(addr: str, epoch: tuple[int, int]) -> Any:
        return conn

    monkeypatch.setattr(forwarder, "_connection", connection)
    epoch = (LEADER, TERM)
    with pytest.raises(RetryElsewhere):
        await forwarder.forward("leader:2379", epoch, leader_fails_with(NotLeader("moved")))
    assert not conn.closed.is_set()  # a refusal came over a working connection
    # The leader's own errors come back rebuilt; words in a message decide nothing.
    with pytest.raises(InvalidArgument, match="bad key"):
        await forwarder.forward("leader:2379", epoch, leader_fails_with(InvalidArgument("bad key")))
    with pytest.raises(Unavailable) as info:
        await forwarder.forward("leader:2379", epoch, leader_fails_with(Unavailable("not leader: in words")))
    assert type(info.value) is Unavailable
    assert conn.closed.is_set()  # UNAVAILABLE may mean a dead connection: dial again next time


async def test_past_the_quota_puts_are_refused_but_deletes_and_compaction_go() -> None:
    consensus = FakeConsensus(
        [
            DeleteResult(revision=4, deleted=True, prev_kv=None),
            TxnResult(revision=5, succeeded=True, responses=(DeleteResult(5, True, None),)),
            CompactResult(revision=5),
        ]
    )
    svc = servicer(consensus, space=FakeSpace(full=True))
    with pytest.raises(ResourceExhausted, match="quota"):
        await svc.Put(pb.PutRequest(key="k", value=b"v"))
    put_op = pb.TxnOp(put=pb.PutRequest(key="k", value=b"v"))
    delete_op = pb.TxnOp(delete=pb.DeleteRequest(key="k"))
    with pytest.raises(ResourceExhausted, match="quota"):
        await svc.Txn(pb.TxnRequest(success=[delete_op], failure=[put_op]))
    assert consensus.proposed == []
    await svc.Delete(pb.DeleteRequest(key="k"))
    await svc.Txn(pb.TxnRequest(success=[delete_op]))
    await svc.Compact(pb.CompactRequest(revision=3))
    assert len(consensus.proposed) == 3
