"""`ggap members ...`, `ggap leader transfer` and the progress part of `ggap status` through
click's CliRunner, against real ClusterServicers over fake consensus (the cluster from
test_cluster_service.py: voters 1-3, 1 leads, learner 4). Exit codes, table and JSON output.
"""

from __future__ import annotations

import json

import pytest
import trio

from ggap.types import FailedPrecondition
from tests.unit.test_cli import arun, run
from tests.unit.test_client import refused_endpoint
from tests.unit.test_cluster_service import COMMIT, Cluster, member, start_cluster


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> Cluster:
    return await start_cluster(
        nursery, [member(1), member(2), member(3), member(4, learner=True)], served=[1, 2, 3, 4]
    )


def ep(cluster: Cluster, node: int) -> list[str]:
    return ["--endpoints", cluster.nodes[node].endpoint]


async def test_members_list_table_and_json(cluster: Cluster) -> None:
    result = await arun("members", "list", *ep(cluster, 2))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "ROLE", "CLIENT_ADDR", "CLUSTER_ADDR"]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["1", "leader"],
        ["2", "voter"],
        ["3", "voter"],
        ["4", "learner"],
    ]
    assert lines[1].split()[2:] == ["10.0.0.1:17000", "10.0.0.1:17001"]
    assert lines[-1] == "3 voters, 1 learner"
    result = await arun("members", "list", "-o", "json", *ep(cluster, 3))
    doc = json.loads(result.stdout)
    assert [(m["id"], m["learner"]) for m in doc["members"]] == [
        ("1", False),
        ("2", False),
        ("3", False),
        ("4", True),
    ]
    assert doc["members"][0]["cluster_addr"] == "10.0.0.1:17001"


async def test_members_list_eventual_answers_without_a_quorum(cluster: Cluster) -> None:
    cluster.shared.read_blocks = True
    result = await arun("members", "list", "--mode", "eventual", *ep(cluster, 3))
    assert result.exit_code == 0 and cluster.shared.reads == []


async def test_members_add_then_json(cluster: Cluster) -> None:
    result = await arun("members", "add", "5", "10.0.0.5:17000", "10.0.0.5:17001", *ep(cluster, 2))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        "member 5 added as a learner; the leader promotes it to voter once it caught up"
    )
    assert "5   learner  10.0.0.5:17000  10.0.0.5:17001" in result.stdout
    result = await arun("members", "add", "6", "h6:1", "h6:2", "--learner", "-o", "json", *ep(cluster, 2))
    doc = json.loads(result.stdout)
    assert (
        doc["auto_promote"] is False
        and {"id": "6", "client_addr": "h6:1", "cluster_addr": "h6:2", "learner": True} in doc["members"]
    )
    assert cluster.nodes[1].members.auto_promote == {5}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["add", "5", "nohost", "h:2"], "INVALID_ARGUMENT", "client_addr: expected host:port, got 'nohost'"),
        (["add", "2", "h:1", "h:2"], "FAILED_PRECONDITION", "2 is already a member"),
        (["promote", "3"], "FAILED_PRECONDITION", "member 3 is already a voter"),
        (["remove", "9"], "FAILED_PRECONDITION", "9 is not a member"),
    ],
)
async def test_refusals_exit_2_with_the_servers_message(
    cluster: Cluster, args: list[str], code: str, message: str
) -> None:
    result = await arun("members", *args, *ep(cluster, 3))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: {code}: {message}"
    assert result.stdout == ""


async def test_promote_a_lagging_then_caught_up_learner(cluster: Cluster) -> None:
    cluster.shared.set_progress(4, behind=1234)
    result = await arun("members", "promote", "4", *ep(cluster, 2))
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: FAILED_PRECONDITION: learner 4 is 1234 entries behind the leader (limit 1000)"
    )
    cluster.shared.set_progress(4, behind=3)
    result = await arun("members", "promote", "4", *ep(cluster, 2))
    assert result.exit_code == 0 and result.stdout.startswith("member 4 promoted to voter\n")
    assert "4   voter" in result.stdout


async def test_remove_needs_force_without_a_live_quorum(cluster: Cluster) -> None:
    cluster.shared.set_progress(3, active=False)
    result = await arun("members", "remove", "2", *ep(cluster, 1))
    assert result.exit_code == 2 and "fewer than the 2 a quorum needs" in result.stderr
    result = await arun("members", "remove", "2", "--force", "-o", "json", *ep(cluster, 1))
    assert result.exit_code == 0, result.output
    assert [m["id"] for m in json.loads(result.stdout)["members"]] == ["1", "3", "4"]


async def test_remove_the_leader_from_the_cli(cluster: Cluster) -> None:
    result = await arun("members", "remove", "1", *ep(cluster, 2))
    assert result.exit_code == 0, result.output
    assert cluster.shared.transfers == [(1, 2)]  # every voter caught up: the lowest id
    assert result.stdout.splitlines()[0] == "member 1 removed"
    assert "2   leader" in result.stdout


async def test_leader_transfer(cluster: Cluster) -> None:
    result = await arun("leader", "transfer", "3", *ep(cluster, 2))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "member 3 leads (term 3)"
    result = await arun("leader", "transfer", "3", "-o", "json", *ep(cluster, 2))
    assert json.loads(result.stdout)["header"]["leader_id"] == "3"
    result = await arun("leader", "transfer", "4", *ep(cluster, 2))
    assert result.exit_code == 2 and "member 4 is a learner" in result.stderr


async def test_a_change_in_progress_exits_2(cluster: Cluster) -> None:
    cluster.shared.refuse = FailedPrecondition("another membership change is in progress")
    result = await arun("members", "promote", "4", *ep(cluster, 3))
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: FAILED_PRECONDITION: another membership change is in progress"


async def test_status_shows_the_leaders_view_of_progress(cluster: Cluster) -> None:
    cluster.shared.set_progress(4, behind=1234, active=False)
    await arun("members", "add", "5", "h5:1", "h5:2", *ep(cluster, 1))
    endpoints = f"{cluster.nodes[2].endpoint},{cluster.nodes[1].endpoint}"
    result = await arun("status", "--endpoints", endpoints)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"progress as leader 1 sees it (commit index {COMMIT}):" in text
    rows = {line.split()[0]: line.split() for line in text.split("sees it")[1].splitlines()[2:]}
    assert rows["1"] == ["1", "leader", str(COMMIT), str(COMMIT), "0", "yes", "-"]
    assert rows["4"] == ["4", "learner", str(COMMIT - 1234), str(COMMIT - 1234), "1234", "no", "-"]
    assert rows["5"] == ["5", "learner", "0", "0", str(COMMIT), "yes", "yes"]
    result = await arun("status", "-o", "json", "--endpoints", endpoints)
    follower, leader = (json.loads(line) for line in result.stdout.splitlines())
    assert follower["progress"] == [] and len(leader["progress"]) == 5


@pytest.mark.parametrize(
    "args",
    [
        ["members", "add", "0", "h:1", "h:2"],
        ["members", "add", "5", "h:1"],
        ["members", "promote", "x"],
        ["members", "remove"],
        ["members", "remove", "9223372036854775808"],
        ["members", "list", "--mode", "strong"],
        ["leader", "transfer"],
        ["leader", "transfer", "-1"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output


def test_unreachable_exits_1() -> None:
    result = run("members", "list", "--endpoints", refused_endpoint(), "--timeout", "2")
    assert result.exit_code == 1 and result.stderr.startswith("Error: UNAVAILABLE: cannot connect")
