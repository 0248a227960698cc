"""`ggap members list|add|promote|remove` and `ggap leader transfer`: thin shells over the
ClusterService membership calls. Any node will do: the server forwards changes to the leader.

Exit status as for every client command: 0 done; 2 the request was refused as it stands
(INVALID_ARGUMENT, or FAILED_PRECONDITION: a learner that lags, a removal that would leave
no live quorum, an unknown id, another change in progress); 1 failures a retry may fix.
"""

from __future__ import annotations

import click

from ggap.cli import _output as out
from ggap.cli._common import READ_MODES, ClientOptions, client_command, read_mode, run_async
from ggap.client import open_connection
from ggap.pb import kv_pb2
from ggap.types import MAX_MEMBER_ID

_ID = click.IntRange(1, MAX_MEMBER_ID)
_MembersResponse = (
    kv_pb2.MemberListResponse
    | kv_pb2.MemberAddResponse
    | kv_pb2.MemberPromoteResponse
    | kv_pb2.MemberRemoveResponse
)


def _show(opts: ClientOptions, resp: _MembersResponse, line: str) -> None:
    """JSON: the response as is. Table: `line` (if any), then the members."""
    if opts.json:
        click.echo(out.to_json(resp))
        return
    if line:
        click.echo(line)
    click.echo(out.format_members(resp.members, resp.header.leader_id))


@click.group("members")
def members_group() -> None:
    """List and change the cluster's members, from any node.

    \b
    New members always join as learners (they get the log but no vote) and are
    promoted to voters once caught up; the cluster takes one change at a time.
    """


@members_group.command("list")
@click.option(
    "--mode",
    type=click.Choice(list(READ_MODES), case_sensitive=False),
    default=None,
    help="linearizable (default): reflects every change acknowledged before; "
    "eventual/sequential: the node's own view at once, also without a leader.",
)
@client_command
def list_cmd(mode: str | None, opts: ClientOptions) -> None:
    """Show every member: id, role (leader, voter, learner) and addresses."""
    req = kv_pb2.MemberListRequest(read_mode=read_mode(mode))

    async def body() -> None:
        async with open_connection(opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
            resp = await client.member_list(req)
        _show(opts, resp, "")

    run_async(body)


@members_group.command("add")
@click.argument("member_id", metavar="ID", type=_ID)
@click.argument("client_addr")
@click.argument("cluster_addr")
@click.option(
    "--learner",
    is_flag=True,
    help="Leave it a learner (promote it later with `ggap members promote`); "
    "by default the leader promotes it once it has caught up.",
)
@client_command
def add_cmd(member_id: int, client_addr: str, cluster_addr: str, learner: bool, opts: ClientOptions) -> None:
    """Add member ID, reachable by clients at CLIENT_ADDR and by peers at CLUSTER_ADDR
    (both host:port). It joins as a learner; start its node with `ggap node --join`."""
    req = kv_pb2.MemberAddRequest(
        id=member_id, client_addr=client_addr, cluster_addr=cluster_addr, learner=learner
    )

    async def body() -> None:
        async with open_connection(opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
            resp = await client.member_add(req)
        if resp.auto_promote:
            line = f"member {member_id} added as a learner; the leader promotes it to voter once it caught up"
        else:
            line = (
                f"member {member_id} added as a learner (promote it with `ggap members promote {member_id}`)"
            )
        _show(opts, resp, line)

    run_async(body)


@members_group.command("promote")
@click.argument("member_id", metavar="ID", type=_ID)
@client_command
def promote_cmd(member_id: int, opts: ClientOptions) -> None:
    """Make learner ID a voter. Refused (exit 2) while it is more than
    server.promote_max_lag_entries behind the leader; the message says how far."""

    async def body() -> None:
        async with open_connection(opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
            resp = await client.member_promote(id=member_id)
        _show(opts, resp, f"member {member_id} promoted to voter")

    run_async(body)


@members_group.command("remove")
@click.argument("member_id", metavar="ID", type=_ID)
@click.option(
    "--force",
    is_flag=True,
    help="Remove a voter even if the voters left would not have a live quorum.",
)
@client_command
def remove_cmd(member_id: int, force: bool, opts: ClientOptions) -> None:
    """Remove member ID (a learner, a voter, or the leader: it hands leadership to a
    caught-up voter first). Refused (exit 2) if the voters left would lack a live quorum,
    unless --force."""

    async def body() -> None:
        async with open_connection(opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
            resp = await client.member_remove(id=member_id, force=force)
        _show(opts, resp, f"member {member_id} removed")

    run_async(body)


@click.group("leader")
def leader_group() -> None:
    """The cluster's leadership."""


@leader_group.command("transfer")
@click.argument("member_id", metavar="ID", type=_ID)
@client_command
def transfer_cmd(member_id: int, opts: ClientOptions) -> None:
    """Hand leadership to voter ID (nothing happens if it already leads)."""

    async def body() -> None:
        async with open_connection(opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
            resp = await client.transfer_leader(target_id=member_id)
        if opts.json:
            click.echo(out.to_json(resp))
        else:
            click.echo(f"member {resp.header.leader_id} leads (term {resp.header.raft_term})")

    run_async(body)


MEMBER_COMMANDS = (members_group, leader_group)
