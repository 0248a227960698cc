"""The driver around the core: races between messages and proposals in one loop turn."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from ggap import codec
from ggap.config import load_config
from ggap.consensus.raft.types import Entry, EntryKind, Message, MessageType, Role
from ggap.consensus.raft_driver import ClusterSpec, RaftConsensus, _Pending
from ggap.storage import KvStore, LogStore
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
    c = RaftConsensus(
        spec=ClusterSpec(1, peers, "127.0.0.1:1", "test"), raft=cfg.raft, log_store=log_store, kv=kv
    )
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(c.run)
                node = c._node
                while node.role is not Role.CANDIDATE:
                    await trio.sleep(0.01)
                term = node.term
                c._on_messages([Message(type=MessageType.VOTE_RESP, to=1, frm=2, term=term)])
                while c.role().role != "leader":
                    await trio.sleep(0.01)
                last = node.log.last_index()
                c._on_messages([Message(type=MessageType.APPEND_RESP, to=1, frm=2, term=term, index=last)])
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
                mine = _Pending(command=Put(key="mine", value=b"v"))
                c._send.send_nowait(("msgs", [append]))
                c._send.send_nowait(("propose", mine))
                heartbeat = Message(type=MessageType.HEARTBEAT, to=1, frm=2, term=term + 1, commit=last + 1)
                c._on_messages([heartbeat])
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
