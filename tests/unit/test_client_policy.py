"""The client's shared policy (endpoint order, backoff, session numbers, revisions) and
its Txn builder: pure code, tested without a server."""

from __future__ import annotations

import random

import pytest

from ggap.client import Compare, Op
from ggap.client._ops import prefix_end, txn_request
from ggap.client._policy import Backoff, Endpoints, Revisions, SessionNumbers, normalise_endpoints
from ggap.pb import kv_pb2 as pb
from ggap.types import NotLeader, Unavailable


def test_endpoint_order_prefers_a_known_leader_and_skips_failed_ones() -> None:
    e = Endpoints(("a", "b", "c"), penalty_s=1.0)
    assert e.order(0.0, prefer_leader=True) == ["a", "b", "c"]
    assert e.order(0.0, prefer_leader=False) == ["b", "c", "a"]  # reads rotate
    e.answered("b", member_id=2, leader_id=3)
    e.answered("c", member_id=3, leader_id=3)
    assert e.leader == "c"
    assert e.order(0.0, prefer_leader=True)[0] == "c"
    e.failed("c", now=10.0, error=Unavailable("gone"))
    assert e.leader is None  # the leader's endpoint failed: not known any more
    assert e.order(10.5, prefer_leader=True)[-1] == "c"  # tried last while penalised
    e.failed("a", now=20.0, error=NotLeader("no", leader_id=2))
    assert e.leader == "b"  # a refusal names the leader


def test_backoff_is_bounded_full_jitter() -> None:
    b = Backoff(initial_s=0.05, max_s=1.0)
    rng = random.Random(1)
    for attempt in range(1, 12):
        d = b.delay(attempt, rng)
        assert 0 <= d <= min(1.0, 0.05 * 2 ** (attempt - 1))


def test_session_numbers_report_the_lowest_unanswered() -> None:
    s = SessionNumbers(session_id=7)
    a, b, c = s.begin(), s.begin(), s.begin()
    assert (a, b, c) == (1, 2, 3) and s.lowest_unacked() == 1
    s.end(1)
    assert s.metadata(3) == ("ggap-session", "7:3:2")
    s.end(3)
    s.end(2)
    assert s.lowest_unacked() == 4  # nothing in flight: the next number


def test_revisions_only_go_up() -> None:
    r = Revisions()
    for rev in (3, 9, 4):
        r.saw(rev)
    assert r.highest == 9


def test_endpoint_lists() -> None:
    assert normalise_endpoints(" a:1, b:2 ,") == ("a:1", "b:2")
    assert normalise_endpoints(["a:1"]) == ("a:1",)
    with pytest.raises(ValueError):
        normalise_endpoints(" , ")


def test_prefix_end() -> None:
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff") == ""
    assert prefix_end("") == ""
    assert prefix_end("a\ud7ff") == "a\ue000"  # surrogates are skipped


def test_txn_builder() -> None:
    c = Compare.value("k") == "v"
    assert (c.key, c.target, c.op, c.value) == ("k", pb.COMPARE_TARGET_VALUE, pb.COMPARE_OP_EQUAL, b"v")
    c = Compare.version("k") > 2
    assert (c.target, c.op, c.number) == (pb.COMPARE_TARGET_VERSION, pb.COMPARE_OP_GREATER, 2)
    c = Compare.mod_revision("k") < 9
    assert (c.target, c.op, c.number) == (pb.COMPARE_TARGET_MOD_REVISION, pb.COMPARE_OP_LESS, 9)
    assert (Compare.create_revision("k") != 1).op == pb.COMPARE_OP_NOT_EQUAL
    assert Compare.exists("k").number == 1 and Compare.exists("k", False).number == 0
    with pytest.raises(TypeError):
        _ = Compare.version("k") == "two"
    with pytest.raises(TypeError):
        _ = Compare.value("k") == 3
    req = txn_request(
        [Compare.exists("k")], [Op.put("k", "v", ttl=1.5)], [Op.get("k")], pb.WRITE_QUORUM_MAJORITY
    )
    assert req.success[0].put.ttl_ms == 1500 and req.failure[0].get.key == "k"
    with pytest.raises(TypeError):
        txn_request([("k", "v")], [], [], pb.WRITE_QUORUM_MAJORITY)  # type: ignore[list-item]


def test_leaving_a_client_with_a_session_while_the_cluster_is_down_is_clean() -> None:
    """Closing the session is best effort: with no endpoint reachable the exit still
    returns promptly and raises nothing (a regression: the exit once dropped its task
    group before closing the session and raised RuntimeError)."""
    import socket

    import trio

    from ggap.client import AsyncClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here

    async def main() -> None:
        with trio.fail_after(10):
            async with AsyncClient(f"127.0.0.1:{port}", timeout=1.0, attempt_timeout=0.2) as client:
                client._session = SessionNumbers(session_id=7)
                client._session.begin()

    trio.run(main)
