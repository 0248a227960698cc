"""Membership operations with real `ggap node` processes, under client load.

Every test runs tests/load.py's `Load` (client threads over grpcio, retrying UNAVAILABLE
and DEADLINE_EXCEEDED on another node for a while) during the whole operation, records
every attempt, and checks the history linearizable at the end. Processes come from
tests/procs.py (free 127.0.0.1 ports, stopped by PID in `finally`/fixture teardown).

1. Replacing a follower: remove, stop, the old data dir is refused (exit 2), wipe, join
   again with the same id (allowed: the id is free once removed), promoted by
   --auto-promote; MemberList the same on every node.
2. Growing 1 -> 3 -> 5 by --join and shrinking to 3 by MemberRemove, the leader one of the
   removed; removed processes keep running a while and do not disturb the term.
3. A rolling restart by SIGTERM: no request fails beyond the client's retries, and every
   leader change is a hand-off (TIMEOUT_NOW), never an election after a timeout. The
   longest write gap per step is printed, not asserted.
4. Refusals through grpcio: a stopped, lagging learner, removals leaving no live quorum,
   the last voter, MemberAdd of a taken id or address. MemberList is unchanged after each.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import FAST_RAFT_ENV, LIN, Cluster, wait_until
from tests.conftest import NodeFactory, _failed
from tests.load import Load
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

#: 50 ms ticks (elections after 0.5-1 s of silence): these tests assert that leadership
#: moves only by hand-off and stays put otherwise, and on a shared 2-core machine a node
#: can be starved of the CPU for a few hundred ms (FAST_RAFT_ENV's 200-400 ms election
#: timeout would then call spurious elections).
ENV = {**FAST_RAFT_ENV, "GINNUNGAGAP_RAFT__TICK_MS": "50"}

_LAUNCH_MARKER = "=== ggap test harness "

Row = tuple[int, str, str, bool]


# -- helpers ------------------------------------------------------------------------------


def member_list(node: NodeProcess, mode: pb.ReadMode = LIN, timeout: float = 5.0) -> list[Row]:
    resp = node.cluster_stub().MemberList(pb.MemberListRequest(read_mode=mode), timeout=timeout)
    return [(m.id, m.client_addr, m.cluster_addr, m.learner) for m in resp.members]


def status(node: NodeProcess, timeout: float = 2.0) -> pb.StatusResponse:
    return node.cluster_stub().Status(pb.StatusRequest(), timeout=timeout)


def the_leader(nodes: Sequence[NodeProcess], timeout: float = 20.0) -> NodeProcess:
    """The node every one of `nodes` names as leader (and which says it leads)."""
    by_id = {n.node_id: n for n in nodes}

    def agreed() -> NodeProcess | None:
        sts = [status(n) for n in nodes]
        leaders = {s.leader_id for s in sts}
        if len(leaders) != 1 or len({s.raft_term for s in sts}) != 1:
            return None
        leader = by_id.get(leaders.pop())
        return leader if leader is not None and status(leader).role == "leader" else None

    return wait_until(agreed, timeout, f"one leader among {sorted(by_id)}")


def lists_agree(nodes: Sequence[NodeProcess], timeout: float = 20.0) -> list[Row]:
    """MemberList (linearizable) on every node of `nodes`, once they all give the same one."""

    seen: dict[int, list[Row]] = {}

    def same() -> list[Row] | None:
        seen.update({n.node_id: member_list(n) for n in nodes})
        lists = list(seen.values())
        return lists[0] if all(x == lists[0] for x in lists) else None

    try:
        return wait_until(same, timeout, f"the same MemberList on nodes {[n.node_id for n in nodes]}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast lists: {seen}") from None


def wait_caught_up(node: NodeProcess, leader: NodeProcess, timeout: float = 30.0) -> None:
    """`node` has applied everything the leader had committed when this was called."""
    target = status(leader).commit_index
    wait_until(
        lambda: status(node).applied_index >= target, timeout, f"node {node.node_id} to apply index {target}"
    )


def wait_voter(nodes: Sequence[NodeProcess], member_id: int, timeout: float = 60.0) -> None:
    wait_until(
        lambda: any(r[0] == member_id and not r[3] for r in member_list(nodes[0])),
        timeout,
        f"member {member_id} to be a voter",
    )


def refusal(
    method: Callable[..., Any], request: Any, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
) -> str:
    """The unary `method(request)` must fail with `code`; returns the status message."""
    try:
        resp = method(request, timeout=10)
    except grpc.RpcError as err:
        assert err.code() == code, f"expected {code.name}, got {err.code().name}: {err.details()}"
        return str(err.details())
    raise AssertionError(f"expected {code.name}, got an answer: {resp!r}")


def launch_log(node: NodeProcess) -> str:
    """The log of the node's current (last) launch."""
    text = node.log_path.read_text(errors="replace")
    return text[text.rfind(_LAUNCH_MARKER) :]


def wait_removed(node: NodeProcess, timeout: float = 20.0) -> None:
    """The node applied its own removal (it then never campaigns)."""
    wait_until(
        lambda: "was removed from the cluster" in launch_log(node),
        timeout,
        f"node {node.node_id} to learn it was removed",
    )


def join_args(endpoints: Sequence[NodeProcess], *extra: str) -> list[str]:
    """`ggap node` arguments to join the cluster through the client ports of `endpoints`."""
    return ["--join", ",".join(n.client_addr for n in endpoints), *extra]


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A started 3-voter cluster, direct peer links; logs dumped when the test fails."""
    env = getattr(request, "param", ENV)
    c = Cluster(tmp_path, 3, proxied=False, env=env)
    try:
        c.start()
        c.wait_leader()
        yield c
        if _failed(request):
            c.dump_logs(80)
    finally:
        c.close()


def finish(load: Load, nodes: Sequence[NodeProcess]) -> None:
    """After `load` stopped: no logical request failed, nothing unexpected, the final state
    read on every node closes a linearizable history."""
    load.final_reads(nodes)
    load.check()
    assert not load.unexpected, f"errors the workload should never cause: {load.unexpected}"
    assert not load.failures, f"requests that failed despite retries: {load.failures}"
    counts = load.counts
    assert counts["put ok"] + counts["cas ok"] > 0 and counts["get ok"] > 0, counts


# -- 1. replace a node ----------------------------------------------------------------------


def test_replace_a_follower_under_load(cluster: Cluster) -> None:
    c = cluster
    serving = list(c.nodes.values())
    leader = the_leader(serving)
    old = next(n for n in serving if n is not leader)
    rest = [n for n in serving if n is not old]
    with Load(lambda: serving) as load:
        time.sleep(1.0)
        # Out of the clients' rotation first: a removed node does not serve.
        serving.remove(old)
        resp = leader.cluster_stub().MemberRemove(pb.MemberRemoveRequest(id=old.node_id), timeout=10)
        assert old.node_id not in [m.id for m in resp.members]
        wait_removed(old)
        assert old.stop() == 0
        # Its old data dir is refused: it records a membership without it (exit 2).
        old.start()
        assert old.wait(timeout=30) == 2
        assert "was removed from the cluster" in launch_log(old)
        # Wiped, it joins again with the same id and addresses: the id is free once removed.
        shutil.rmtree(old.data_dir)
        old.extra_args = join_args(rest, "--auto-promote")
        old.start_and_wait(timeout=90)
        serving.append(old)
        wait_voter(rest, old.node_id)
        wait_caught_up(old, the_leader(serving))
        time.sleep(1.0)
    final = lists_agree(serving)
    assert [(r[0], r[3]) for r in final] == [(i, False) for i in c.ids]
    assert next(r for r in final if r[0] == old.node_id)[1:3] == (old.client_addr, old.cluster_addr)
    finish(load, serving)


# -- 2. grow 1 -> 3 -> 5 -> 3 ---------------------------------------------------------------


def test_grow_from_one_to_five_and_shrink_to_three_under_load(
    tmp_path: Path, node_factory: NodeFactory
) -> None:
    env = ENV
    first = node_factory(node_id=1, env=env)
    serving = [first]
    t0 = time.monotonic()
    steps: list[tuple[str, float, float]] = []  # (what, start, end)
    with Load(lambda: serving) as load:
        time.sleep(0.5)
        for i in range(2, 6):
            start = time.monotonic()
            node = node_factory(
                node_id=i,
                env=env,
                extra_args=join_args(serving, "--auto-promote"),
                timeout=90,
            )
            wait_voter(serving, i)
            wait_caught_up(node, the_leader(serving))
            serving.append(node)
            steps.append((f"join node {i}", start, time.monotonic()))
        assert [(r[0], r[3]) for r in lists_agree(serving)] == [(i, False) for i in range(1, 6)]

        # Shrink: the leader first (it hands leadership off, then the new leader removes it),
        # then a follower.
        leader = the_leader(serving)
        term = status(leader).raft_term
        removed: list[NodeProcess] = []
        for victim in (leader, next(n for n in reversed(serving) if n is not leader)):
            start = time.monotonic()
            serving.remove(victim)
            removed.append(victim)
            via = serving[0]  # a member that stays: it forwards to the leader
            resp = via.cluster_stub().MemberRemove(pb.MemberRemoveRequest(id=victim.node_id), timeout=15)
            assert victim.node_id not in [m.id for m in resp.members]
            wait_removed(victim)
            steps.append((f"remove node {victim.node_id}", start, time.monotonic()))
        new_leader = the_leader(serving)
        assert new_leader is not leader
        # Exactly one term up: the hand-off (TIMEOUT_NOW), no election after a timeout.
        handed_term = status(new_leader).raft_term
        assert handed_term == term + 1, (term, handed_term)
        # The removed processes keep running for many election timeouts: they never
        # campaign, so the members' term and leader do not move.
        quiet_until = time.monotonic() + 3.0
        while time.monotonic() < quiet_until:
            for gone in removed:
                st = status(gone)
                assert st.role not in ("leader", "candidate") and st.raft_term <= handed_term, st
            time.sleep(0.2)
        assert the_leader(serving) is new_leader and status(new_leader).raft_term == handed_term
    for gone in removed:
        assert gone.stop() == 0
    final = lists_agree(serving)
    assert [(r[0], r[3]) for r in final] == [
        (n.node_id, False) for n in sorted(serving, key=lambda n: n.node_id)
    ]
    print(f"\ngrow/shrink, longest write gap per step (s) over {time.monotonic() - t0:.1f}s:")
    for what, start, end in steps:
        print(f"  {what:<16} {load.longest_gap(start, end):6.3f}  (step took {end - start:.1f}s)")
        for slow in load.slow_attempts(start, end):
            print(f"      {slow.describe(start)}")
    finish(load, serving)


# -- 3. rolling restart ---------------------------------------------------------------------

_BECAME_LEADER = re.compile(r"(\d+) became leader at term (\d+)")


def _elections(node: NodeProcess) -> list[tuple[int, bool]]:
    """(term, by hand-off) for every term this node won, over all its launches: by hand-off
    when the line before "became leader" is its TIMEOUT_NOW campaign for that term."""
    won: list[tuple[int, bool]] = []
    campaigned_on_timeout_now: set[int] = set()
    for line in node.log_path.read_text(errors="replace").splitlines():
        m = re.search(r"(\d+) campaigning at term (\d+) on TIMEOUT_NOW", line)
        if m and int(m.group(1)) == node.node_id:
            campaigned_on_timeout_now.add(int(m.group(2)) + 1)
        m = _BECAME_LEADER.search(line)
        if m and int(m.group(1)) == node.node_id:
            term = int(m.group(2))
            won.append((term, term in campaigned_on_timeout_now))
    return won


def test_rolling_restart_costs_no_election_timeout(cluster: Cluster) -> None:
    c = cluster
    nodes = list(c.nodes.values())
    by_id = {n.node_id: n for n in nodes}
    first_term = status(the_leader(nodes)).raft_term
    pending = set(by_id)
    handoffs = 0
    steps: list[tuple[str, float, float]] = []
    with Load(lambda: nodes) as load:
        time.sleep(1.0)
        while pending:
            leader = the_leader(nodes)
            term = status(leader).raft_term
            # The leader whenever it has not been restarted yet, so most steps hand off.
            victim = leader if leader.node_id in pending else by_id[min(pending)]
            pending.discard(victim.node_id)
            start = time.monotonic()
            assert victim.stop() == 0
            others = [n for n in nodes if n is not victim]
            new_leader = the_leader(others)
            if victim is leader:
                handoffs += 1
                handed = re.search(r"handing leadership to node (\d+) before stopping", launch_log(victim))
                assert handed is not None, launch_log(victim)[-3000:]
                assert new_leader.node_id == int(handed.group(1))
                assert status(new_leader).raft_term == term + 1
            else:
                assert new_leader is leader and status(leader).raft_term == term
            victim.start_and_wait(timeout=60)
            wait_caught_up(victim, new_leader)
            role = "leader" if victim is leader else "follower"
            steps.append((f"restart node {victim.node_id} ({role})", start, time.monotonic()))
        time.sleep(0.5)
    final_term = status(the_leader(nodes)).raft_term
    print(f"\nrolling restart, longest write gap per step (s), {handoffs} hand-offs:")
    for what, start, end in steps:
        print(f"  {what:<28} {load.longest_gap(start, end):6.3f}  (step took {end - start:.1f}s)")
        for slow in load.slow_attempts(start, end):
            print(f"      {slow.describe(start)}")
    assert handoffs >= 1
    # No election timeout was spent: the term moved once per hand-off, and every term won
    # after the first was won by a TIMEOUT_NOW campaign.
    assert final_term == first_term + handoffs, (first_term, handoffs, final_term)
    won = {n.node_id: [w for w in _elections(n) if w[0] > first_term] for n in nodes}
    assert all(by_handoff for ws in won.values() for _, by_handoff in ws), won
    assert sum(len(ws) for ws in won.values()) == handoffs, won
    finish(load, nodes)


# -- 4. refusals ----------------------------------------------------------------------------

#: A small promotion bound, so a stopped learner is "far behind" after a second of load.
LAG_LIMIT = 30


@pytest.mark.parametrize(
    "cluster",
    [{**ENV, "GINNUNGAGAP_SERVER__PROMOTE_MAX_LAG_ENTRIES": str(LAG_LIMIT)}],
    indirect=True,
)
def test_refusals_through_grpc_leave_the_membership_unchanged(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    voters = list(c.nodes.values())
    serving = list(voters)
    leader = the_leader(voters)
    follower, other = (n for n in voters if n is not leader)
    learner = NodeProcess(tmp_path / "node4", node_id=4, extra_args=join_args(voters), env=c.env)
    try:
        with Load(lambda: serving) as load:
            before = lists_agree(voters)

            def unchanged() -> None:
                assert lists_agree(serving) == before

            # MemberAdd: a taken id, or an address a member uses (client or cluster side,
            # the leader's own or a follower's), through the leader and through a follower.
            for via in (leader, follower):
                add = via.cluster_stub().MemberAdd
                free = ("127.0.0.1:1", "127.0.0.1:2")
                for req, says in [
                    (pb.MemberAddRequest(id=other.node_id, client_addr=free[0], cluster_addr=free[1]),
                     f"{other.node_id} is already a member"),
                    (pb.MemberAddRequest(id=9, client_addr=other.client_addr, cluster_addr=free[1]),
                     f"{other.client_addr} is already used by member {other.node_id}"),
                    (pb.MemberAddRequest(id=9, client_addr=leader.client_addr, cluster_addr=free[1]),
                     f"{leader.client_addr} is already used by member {leader.node_id}"),
                    (pb.MemberAddRequest(id=9, client_addr=free[0], cluster_addr=other.cluster_addr),
                     f"{other.cluster_addr} is already used by member {other.node_id}"),
                    (pb.MemberAddRequest(id=9, client_addr=follower.cluster_addr, cluster_addr=free[1]),
                     f"{follower.cluster_addr} is already used by member {follower.node_id}"),
                ]:  # fmt: skip
                    assert says in refusal(add, req), req
                unchanged()

            # A learner that is stopped and falls behind cannot be promoted; the refusal
            # says how far behind it is.
            learner.start_and_wait(timeout=90)
            wait_until(lambda: any(r[0] == 4 and r[3] for r in member_list(leader)), 20, "learner 4")
            with_learner = lists_agree(serving)
            before = with_learner
            assert learner.stop() == 0

            def far_behind() -> bool:
                st = status(leader)
                p = next(p for p in st.progress if p.id == 4)
                return st.commit_index - p.match_index > LAG_LIMIT

            wait_until(far_behind, 20, "learner 4 to fall behind")
            for via in (leader, follower):
                says = refusal(via.cluster_stub().MemberPromote, pb.MemberPromoteRequest(id=4))
                m = re.fullmatch(rf"learner 4 is (\d+) entries behind the leader \(limit {LAG_LIMIT}\)", says)
                assert m is not None and int(m.group(1)) > LAG_LIMIT, says
            unchanged()

            # A voter's removal that would leave no live quorum: stop one follower, then
            # neither the other follower nor the leader may go (without force).
            serving.remove(follower)
            assert follower.stop() == 0

            def follower_silent() -> bool:
                st = status(leader)
                return not next(p for p in st.progress if p.id == follower.node_id).recent_active

            wait_until(follower_silent, 20, f"the leader to notice node {follower.node_id} is gone")
            for gone in (other, leader):
                says = refusal(other.cluster_stub().MemberRemove, pb.MemberRemoveRequest(id=gone.node_id))
                assert says == (
                    f"removing voter {gone.node_id} would leave 1 live of 2 voters, fewer than the 2 a "
                    "quorum needs (force removes it anyway)"
                ), says
            unchanged()
            assert the_leader(serving) is leader
            follower.start_and_wait(timeout=60)
            serving.append(follower)
            wait_caught_up(follower, leader)
        assert lists_agree(voters) == with_learner
        finish(load, voters)
    finally:
        learner.close()


def test_the_last_voter_cannot_be_removed(node_factory: NodeFactory) -> None:
    node = node_factory(node_id=1, env=ENV)
    before = member_list(node)
    with Load(lambda: [node], retry_for=5.0) as load:
        time.sleep(0.3)
        for force in (False, True):
            says = refusal(node.cluster_stub().MemberRemove, pb.MemberRemoveRequest(id=1, force=force))
            assert says == "member 1 is the last voter; a cluster cannot lose it", says
        time.sleep(0.3)
    assert member_list(node) == before
    finish(load, [node])
