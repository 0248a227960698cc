"""The trio replica node around the engine: races between messages and proposals in one
loop turn, and a group of one voter."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from ggap import codec
from ggap.config import load_config
from ggap.consensus.raft.types import Entry, EntryKind, Message, MessageType, Role
from ggap.replica import ClusterSpec, Mailbox, RaftReplica
from ggap.replica.kv_machine import KvStateMachine
from ggap.replica.membership import bootstrap_membership
from ggap.replica.node import _Proposal
from ggap.storage import KvStore, LogStore
from ggap.storage.snapshot import snapshot_dir
from ggap.types import NotLeader, Put


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_proposal_in_the_batch_that_deposes_the_leader_is_refused(tmp_path: Path) -> None:
    """Node 1 of three (peers 2 and 3 are simulated by injecting their messages): a client
    proposal stepped right after the message that deposes us must be refused, never matched
    to the new leader's entry at the same index."""
    knobs = {"raft.tick_ms": 10, "raft.election_tick": 100, "raft.pre_vote": "false"}
    cfg = load_config(env={}, overrides=knobs)
    log_store = LogStore.open(tmp_path / "raft.db", cfg.storage)
    kv = KvStore.open(tmp_path / "kv.db", mvcc=cfg.mvcc, storage=cfg.storage)
    peers = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    mailbox = Mailbox(cfg.raft.event_queue)
    # No transport: peers 2 and 3 exist only as the messages this test posts.
    c = RaftReplica(
        spec=ClusterSpec(1, peers, "127.0.0.1:1", "test"),
        raft=cfg.raft,
        storage=log_store,
        kv=kv,
        mailbox=mailbox,
        transport=None,
        machine=KvStateMachine(kv, snapshot_dir(tmp_path), bootstrap=bootstrap_membership(peers)),
    )
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(c.run)
                node = c.engine.node
                while node.role is not Role.CANDIDATE:
                    await trio.sleep(0.01)
                term = node.term
                mailbox.post_messages([Message(type=MessageType.VOTE_RESP, to=1, frm=2, term=term)])
                while c.role().role != "leader":
                    await trio.sleep(0.01)
                last = node.log.last_index()
                ack = Message(type=MessageType.APPEND_RESP, to=1, frm=2, term=term, index=last)
                mailbox.post_messages([ack])
                await c.wait_applied(last)

                theirs = Entry(
                    index=last + 1,
                    term=term + 1,
                    kind=EntryKind.NORMAL,
                    data=codec.encode_command(Put(key="theirs", value=b"t")),
                )
                append = Message(
                    type=MessageType.APPEND,
                    to=1,
                    frm=2,
                    term=term + 1,
                    index=last,
                    log_term=term,
                    entries=(theirs,),
                    commit=last,
                )
                mine = _Proposal(command=Put(key="mine", value=b"v"))
                mailbox.post_messages([append])
                mailbox.post_request(mine)
                heartbeat = Message(type=MessageType.HEARTBEAT, to=1, frm=2, term=term + 1, commit=last + 1)
                mailbox.post_messages([heartbeat])
                await mine.done.wait()
                assert isinstance(mine.error, NotLeader), (mine.result, mine.error)
                await c.wait_applied(last + 1)
                reader = kv.reader()
                try:
                    assert reader.get("mine", 0)[0] is None
                    assert reader.get("theirs", 0)[0] is not None
                finally:
                    reader.close()
                nursery.cancel_scope.cancel()
    finally:
        kv.close()
        log_store.close()


async def test_a_group_of_one_elects_itself_commits_and_restarts(tmp_path: Path) -> None:
    """A node without peers runs the same engine as a one-voter group: it leads at once,
    group-commits concurrent proposals, serves read_index, and after a restart replays
    what it had not applied."""
    cfg = load_config(env={}, overrides={"raft.tick_ms": 10})
    spec = ClusterSpec(1, {1: "127.0.0.1:1"}, "127.0.0.1:2", "one")

    async def run_once(puts: int) -> list[int]:
        log_store = LogStore.open(tmp_path / "raft.db", cfg.storage)
        kv = KvStore.open(tmp_path / "kv.db", mvcc=cfg.mvcc, storage=cfg.storage)
        revisions: list[int] = []
        try:
            c = RaftReplica(
                spec=spec,
                raft=cfg.raft,
                storage=log_store,
                kv=kv,
                mailbox=Mailbox(cfg.raft.event_queue),
                transport=None,
                machine=KvStateMachine(
                    kv, snapshot_dir(tmp_path), bootstrap=bootstrap_membership(spec.peers)
                ),
            )
            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    await nursery.start(c.run)
                    while c.role().role != "leader":
                        await trio.sleep(0.01)

                    async def put(i: int) -> None:
                        result = await c.propose(Put(key=f"k{i}", value=b"v"))
                        revisions.append(result.revision)  # type: ignore[attr-defined]

                    async with trio.open_nursery() as puts_nursery:
                        for i in range(puts):
                            puts_nursery.start_soon(put, i)
                    index = await c.read_index()
                    await c.wait_applied(index)
                    assert c.role().applied_index >= index
                    nursery.cancel_scope.cancel()
        finally:
            kv.close()
            log_store.close()
        return revisions

    first = await run_once(50)
    assert sorted(first) == list(range(min(first), min(first) + 50))  # distinct, gapless
    second = await run_once(5)
    assert min(second) > max(first)  # the restart kept every applied write
