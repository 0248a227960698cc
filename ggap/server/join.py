"""`ggap node --join`: seed an empty data dir from a running cluster.

A joining node never replays the cluster's log from index 1: it does not know the
bootstrap members that log's membership changes apply to. Instead it

1. asks a member to add it as a learner (MemberAdd; or finds that an operator already
   did, with the same addresses),
2. downloads a snapshot (ClusterService.Snapshot) taken after that change was applied, so
   the membership inside it lists this node, and
3. builds raft.db at the snapshot's index, term and configuration, records the cluster's
   id, and starts like any restarted node: the leader appends from there (or sends a newer
   snapshot over the peer port if it compacted past it).

A learner neither votes nor counts for a quorum, so a node that joins with no data never
weakens the cluster; `--auto-promote` (see AutoPromoter) asks for its promotion once it
has caught up.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from ggap.client import ClientError, Connection, open_connection
from ggap.config.model import Config
from ggap.storage.restore import seed_joiner
from ggap.types import FailedPrecondition, Membership, StatusCode, Unavailable

log = logging.getLogger(__name__)

_RETRY_S = 0.5
_COPY_TIMEOUT_S = 600.0
# Refusals worth waiting out: another change in progress, no leader yet, a slow member.
_RETRYABLE = {StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED, StatusCode.FAILED_PRECONDITION}


class StartupMismatch(FailedPrecondition):
    """Not worth retrying: the cluster knows this node id with other addresses."""


def needs_join(config: Config) -> bool:
    """--join was given and the data dir holds no log yet (a restarted joiner does not
    join again: it starts from what it has)."""
    return bool(config.node.join) and not (Path(config.node.data_dir) / "raft.db").exists()


async def join_cluster(config: Config, *, ssl_context: ssl.SSLContext | None = None) -> Membership:
    """Steps 1-3 of the module docstring, retried until `server.join_timeout_ms`.

    `ssl_context`: the node's own client credentials when the client ports serve TLS."""
    timeout_s = config.server.join_timeout_ms / 1000
    last: BaseException | None = None
    with trio.move_on_after(timeout_s):
        while True:
            try:
                return await _join_once(config, ssl_context)
            except StartupMismatch:
                raise
            except ClientError as exc:
                if exc.code not in _RETRYABLE:
                    raise FailedPrecondition(
                        f"cannot join the cluster at {config.node.join}: {exc}"
                    ) from None
                last = exc
            except (FailedPrecondition, Unavailable) as exc:
                last = exc
            log.info("joining: %s; retrying", last)
            await trio.sleep(_RETRY_S)
    raise Unavailable(f"could not join the cluster at {config.node.join} within {timeout_s:g}s: {last}")


async def _join_once(config: Config, ssl_context: ssl.SSLContext | None) -> Membership:
    node = config.node
    async with open_connection(
        node.join, timeout_s=config.server.default_timeout_ms / 1000, ssl_context=ssl_context
    ) as client:
        listed = await client.member_list()
        mine = next((m for m in listed.members if m.id == node.id), None)
        if mine is None:
            log.info("asking %s to add node %d as a learner", client.endpoint, node.id)
            await client.member_add(
                id=node.id, client_addr=node.client_addr, cluster_addr=node.cluster_addr, learner=True
            )
        elif (mine.client_addr, mine.cluster_addr) != (node.client_addr, node.cluster_addr):
            raise StartupMismatch(
                f"node {node.id} is already a member with client address {mine.client_addr} and cluster "
                f"address {mine.cluster_addr}; start it with those, or remove it first"
            )
        return await _seed_from_snapshot(client, config)


async def _seed_from_snapshot(client: Connection, config: Config) -> Membership:
    data_dir = Path(config.node.data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    part = data_dir.parent / f".{data_dir.name}.join.db.part"
    part.unlink(missing_ok=True)
    try:
        info = await _download(client, part)
        if not info.cluster_id:
            raise FailedPrecondition(f"{client.endpoint} did not say its cluster id (an older ggap?)")
        membership = await trio.to_thread.run_sync(
            lambda: seed_joiner(
                part,
                data_dir,
                node_id=config.node.id,
                term=info.applied_term,
                cluster_id=info.cluster_id,
                storage=config.storage,
                mvcc=config.mvcc,
            )
        )
    finally:
        part.unlink(missing_ok=True)
    log.info(
        "joined cluster %s from a snapshot at index %d (term %d) from %s; members %s",
        info.cluster_id,
        info.applied_index,
        info.applied_term,
        client.endpoint,
        [f"{m.id}{'(learner)' if m.learner else ''}" for m in membership.members],
    )
    return membership


async def _download(client: Connection, dest: Path) -> _Info:
    """The snapshot's bytes into `dest`, checked against its announced size and sha256."""
    digest = hashlib.sha256()
    info: _Info | None = None
    remaining = 0
    done = False
    with dest.open("xb") as out:
        # The server copies its whole database before the first message: allow for it.
        async for msg in client.snapshot(first_timeout_s=_COPY_TIMEOUT_S):
            if info is None:
                if not msg.HasField("info"):
                    raise Unavailable("the snapshot stream did not start with its description")
                i = msg.info
                info = _Info(i.applied_index, i.applied_term, i.size_bytes, i.cluster_id)
                remaining = i.size_bytes
                continue
            if len(msg.blob) > remaining:
                raise Unavailable("the snapshot stream sent more than it announced")
            await trio.to_thread.run_sync(out.write, msg.blob)
            digest.update(msg.blob)
            remaining -= len(msg.blob)
            if msg.sha256:
                if remaining or msg.sha256 != digest.hexdigest():
                    raise Unavailable("the snapshot did not match its checksum")
                done = True
        await trio.to_thread.run_sync(out.flush)
    if info is None or not done:
        raise Unavailable("the snapshot stream ended early")
    return info


@attrs.frozen(slots=True)
class _Info:
    applied_index: int
    applied_term: int
    size: int
    cluster_id: str


async def auto_promote(
    config: Config,
    membership: Callable[[], Membership],
    interval_s: float = 1.0,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """`--auto-promote`: while this node is a learner, ask the cluster to promote it; the
    leader refuses (FAILED_PRECONDITION, naming the lag) until it has caught up, so asking
    again every `interval_s` is the whole protocol. Returns once it is a voter, or at
    once if it is not a member."""
    me = config.node.id
    endpoints = config.node.join or config.node.client_addr
    while True:
        current = membership().get(me)
        if current is None or not current.learner:
            return
        try:
            async with open_connection(
                endpoints, timeout_s=config.server.default_timeout_ms / 1000, ssl_context=ssl_context
            ) as client:
                await client.member_promote(id=me)
            log.info("node %d promoted to voter", me)
        except ClientError as exc:
            log.debug("promotion of node %d not yet: %s", me, exc)
        await trio.sleep(interval_s)
