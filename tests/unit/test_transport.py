"""The peer transport: wire format (sans-I/O, fuzzed) and real transports on 127.0.0.1.

Charter: localhost only, port 0 (or a port just freed) only, an absolute `trio.fail_after`
on every I/O test, short timeouts so a failure costs seconds, and every transport runs in
a nursery that the test closes, so nothing outlives a test.
"""

from __future__ import annotations

import gc
import logging
import random
import socket
import struct
import time
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggap.codec import pack
from ggap.config import load_config
from ggap.config.model import TransportConfig
from ggap.consensus.raft.types import Entry, EntryKind, Message, MessageType, SnapshotMeta
from ggap.transport import PeerBindError, PeerTransport
from ggap.transport.wire import (
    FRAME_HEADER_SIZE,
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    decode_frame,
    decode_handshake,
    decode_messages,
    decode_reply,
    encode_frame,
    encode_handshake,
    encode_messages,
    encode_reply,
    estimate_size,
)
from ggap.types.errors import CodecError
from tests.faultproxy import LinkTable

LOCAL = "127.0.0.1"
CLUSTER = "test-cluster"

# --- strategies -------------------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=(1 << 63) - 1)
small = st.integers(min_value=0, max_value=1000)
ids = st.integers(min_value=1, max_value=(1 << 63) - 1)

entries = st.builds(
    Entry,
    index=u64,
    term=u64,
    kind=st.sampled_from(EntryKind),
    data=st.binary(max_size=64),
)
snapshots = st.none() | st.builds(
    SnapshotMeta,
    index=u64,
    term=u64,
    voters=st.lists(ids, max_size=5).map(tuple),
    learners=st.lists(ids, max_size=5).map(tuple),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=u64,
    frm=u64,
    term=u64,
    log_term=u64,
    index=u64,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=u64,
    reject=st.booleans(),
    reject_hint=u64,
    context=st.binary(max_size=16),
    snapshot=snapshots,
)


def msg(to: int, frm: int, **kw: Any) -> Message:
    kw.setdefault("type", MessageType.APPEND)
    return Message(to=to, frm=frm, **kw)


# --- wire: messages ---------------------------------------------------------------------


@given(st.lists(messages, max_size=8))
@settings(max_examples=200, deadline=None)
def test_messages_round_trip(batch: list[Message]) -> None:
    payload = encode_messages(batch)
    assert decode_messages(payload) == batch
    assert decode_frame(encode_frame(payload)) == payload
    # The size estimate is an upper bound (batches rely on it to respect their budget).
    for m in batch:
        assert len(encode_messages([m])) <= estimate_size(m)


def test_messages_golden_bytes() -> None:
    """Pins the wire format: a change here breaks mixed-version clusters."""
    m = Message(
        type=MessageType.APPEND,
        to=2,
        frm=1,
        term=3,
        log_term=2,
        index=7,
        entries=(Entry(index=8, term=3, kind=EntryKind.NORMAL, data=b"x"),),
        commit=6,
        context=b"c",
        snapshot=SnapshotMeta(index=5, term=1, voters=(1, 2), learners=()),
    )
    frame = encode_frame(encode_messages([m]))
    assert frame.hex() == (
        "000000337d1bc13b"  # payload length 51, crc32 over the length and the payload
        "0601"  # a batch (list) of one message
        "060c"
        "0302"
        "0304"
        "0302"
        "0306"
        "0304"
        "030e"  # 12 fields; type to frm term log_term index
        "0601"
        "0604"
        "0310"
        "0306"
        "0302"
        "040178"  # entries: ((8, 3, NORMAL, b"x"),)
        "030c"
        "01"
        "0300"
        "040163"  # commit 6, reject False, reject_hint 0, context b"c"
        "0604"
        "030a"
        "0302"
        "0602"
        "0302"
        "0304"
        "0600"  # snapshot (5, 1, (1, 2), ())
    )
    assert decode_messages(decode_frame(frame)) == [m]


@pytest.mark.parametrize(
    "bad",
    [
        msg(2, 1, term=-1),
        msg(2, -1, term=1),
        msg(2, 1, term=True),
        msg(2, 1, reject=1),
        msg(2, 1, context="text"),
        msg(2, 1, entries=(Entry(index=-1, term=1),)),
        msg(2, 1, entries=(Entry(index=1, term=1, data="text"),)),  # type: ignore[arg-type]
        msg(2, 1, snapshot=SnapshotMeta(index=1, term=1, voters=(-3,))),
        msg(2, 1, index=1 << 64),
    ],
)
def test_encode_rejects_values_the_wire_cannot_carry(bad: Message) -> None:
    with pytest.raises(CodecError):
        encode_messages([bad])


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(CodecError):
        encode_messages(["not a message"])  # type: ignore[list-item]


GOOD = (1, 2, 1, 3, 2, 7, ((8, 3, 1, b"x"),), 6, False, 0, b"c", (5, 1, (1, 2), ()))


def _with(i: int, v: object) -> tuple[object, ...]:
    fields = list(GOOD)
    fields[i] = v
    return (tuple(fields),)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(None, id="not-a-list"),
        pytest.param(b"x", id="bytes-batch"),
        pytest.param((GOOD[:-1],), id="too-few-fields"),
        pytest.param(((*GOOD, None),), id="too-many-fields"),
        pytest.param(_with(0, 99), id="unknown-type"),
        pytest.param(_with(0, 0), id="type-zero"),
        pytest.param(_with(1, -2), id="negative-to"),
        pytest.param(_with(3, "3"), id="str-term"),
        pytest.param(_with(3, True), id="bool-term"),
        pytest.param(_with(8, 0), id="int-reject"),
        pytest.param(_with(10, "c"), id="str-context"),
        pytest.param(_with(6, ((8, 3, 9, b"x"),)), id="unknown-entry-kind"),
        pytest.param(_with(6, ((8, -3, 1, b"x"),)), id="negative-entry-term"),
        pytest.param(_with(6, ((8, 3, 1),)), id="short-entry"),
        pytest.param(_with(6, (8, 3, 1, b"x")), id="entry-not-nested"),
        pytest.param(_with(11, (5, 1, (1, 2))), id="short-snapshot"),
        pytest.param(_with(11, (5, 1, (1, -2), ())), id="negative-voter"),
        pytest.param(_with(11, (5, 1, 1, ())), id="voters-not-list"),
        pytest.param(_with(11, b""), id="bytes-snapshot"),
    ],
)
def test_decode_rejects_malformed(value: object) -> None:
    assert decode_messages(pack((GOOD,)))  # the baseline is valid
    with pytest.raises(CodecError):
        decode_messages(pack(value))


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_decode_random_bytes_never_crashes(data: bytes) -> None:
    try:
        out = decode_messages(data)
    except CodecError:
        return
    assert all(isinstance(m, Message) for m in out)
    assert encode_messages(out) == data  # the codec has one encoding per value


@given(st.lists(messages, min_size=1, max_size=4), st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_mutated_payload_is_rejected_or_valid(batch: list[Message], data: st.DataObject) -> None:
    payload = bytearray(encode_messages(batch))
    pos = data.draw(st.integers(0, len(payload) - 1))
    payload[pos] = data.draw(st.integers(0, 255))
    try:
        out = decode_messages(bytes(payload))
    except CodecError:
        return
    assert encode_messages(out) == bytes(payload)


# --- wire: frames and handshake ---------------------------------------------------------


def test_frame_truncation_is_rejected_at_every_length() -> None:
    frame = encode_frame(encode_messages([msg(2, 1, context=b"abc")]))
    for n in range(len(frame)):
        with pytest.raises(CodecError):
            decode_frame(frame[:n])
    with pytest.raises(CodecError, match="trailing"):
        decode_frame(frame + b"\x00")


def test_frame_every_bit_flip_is_rejected() -> None:
    frame = encode_frame(encode_messages([msg(2, 1, entries=(Entry(1, 1, data=b"data"),))]))
    for bit in range(len(frame) * 8):
        corrupt = bytearray(frame)
        corrupt[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CodecError):
            decode_frame(bytes(corrupt))


def test_oversize_length_is_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(struct.pack(">II", 1025, 0))  # no payload fed at all
    with pytest.raises(CodecError, match="exceeds"):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(b"\xff" * FRAME_HEADER_SIZE)
    with pytest.raises(CodecError, match="exceeds"):
        decoder.next_frame()


@given(st.lists(st.binary(max_size=50), max_size=6), st.integers(1, 40))
@settings(max_examples=100, deadline=None)
def test_frame_decoder_reassembles_any_chunking(payloads: list[bytes], chunk: int) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        decoder.feed(stream[i : i + chunk])
        while (p := decoder.next_frame()) is not None:
            out.append(p)
    assert out == payloads
    assert decoder.buffered == 0


def test_handshake_round_trip_and_rejections() -> None:
    hs = Handshake(cluster_id="c1", from_id=1, to_id=2)
    assert decode_handshake(encode_handshake(hs)) == hs
    reply = HandshakeReply(accepted=False, reason="nope")
    assert decode_reply(encode_reply(reply)) == reply
    with pytest.raises(CodecError, match="not a ggap peer"):
        decode_handshake(pack(("http", 1, "c1", 1, 2)))
    with pytest.raises(CodecError, match="unsupported protocol version 99"):
        decode_handshake(pack(("ggap-peer", 99, "c1", 1, 2)))
    with pytest.raises(CodecError):
        decode_handshake(pack(("ggap-peer", PROTOCOL_VERSION, "c1", 1)))
    with pytest.raises(CodecError):
        decode_handshake(pack(("ggap-peer", PROTOCOL_VERSION, "c1", -1, 2)))
    with pytest.raises(CodecError):
        decode_handshake(encode_reply(reply))  # a reply is not a handshake
    with pytest.raises(CodecError):
        decode_handshake(b"\xff\x00")


# --- transports -------------------------------------------------------------------------


class Inbox:
    """Collects what a transport delivers; `wait(n)` returns once n messages arrived."""

    def __init__(self) -> None:
        self.batches: list[list[Message]] = []
        self._arrived = trio.Event()

    def __call__(self, msgs: list[Message]) -> None:
        self.batches.append(msgs)
        self._arrived.set()

    @property
    def messages(self) -> list[Message]:
        return [m for b in self.batches for m in b]

    async def wait(self, n: int) -> list[Message]:
        while len(self.messages) < n:
            await self._arrived.wait()
            self._arrived = trio.Event()
        return self.messages


async def wait_until(pred: Callable[[], bool]) -> None:
    """Poll a statistics predicate (counters have no event to wait on)."""
    while not pred():
        await trio.sleep(0.005)


#: Short timeouts and fast reconnects, so the failure tests run quickly.
FAST = TransportConfig(
    connect_timeout_ms=500,
    handshake_timeout_ms=500,
    send_timeout_ms=500,
    reconnect_backoff_initial_ms=10,
    reconnect_backoff_max_ms=100,
)


def make(
    node_id: int,
    inbox: Inbox | None = None,
    peers: dict[int, tuple[str, int]] | None = None,
    *,
    port: int = 0,
    config: TransportConfig | None = None,
    **knobs: int,
) -> PeerTransport:
    """A transport on LOCAL; `knobs` override TransportConfig fields of `config` (FAST)."""
    return PeerTransport(
        node_id=node_id,
        cluster_id=CLUSTER,
        listen=(LOCAL, port),
        peers=peers or {},
        on_messages=inbox if inbox is not None else Inbox(),
        config=attrs.evolve(config or FAST, **knobs),
        rng=random.Random(node_id),
    )


async def start(nursery: trio.Nursery, t: PeerTransport) -> tuple[str, int]:
    port: int = await nursery.start(t.run)
    return (LOCAL, port)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port: int = s.getsockname()[1]
    return port


async def port_is_closed(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream(LOCAL, port)
    except OSError:
        return True
    await stream.aclose()
    return False


async def test_two_transports_exchange_messages(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in1, in2 = Inbox(), Inbox()
        t1, t2 = make(1, in1), make(2, in2)
        a1, a2 = await start(nursery, t1), await start(nursery, t2)
        t1.update_peers({1: a1, 2: a2})  # its own entry is ignored
        t2.update_peers({1: a1, 2: a2})
        t1.send([msg(2, 1, term=5, entries=(Entry(1, 5, data=b"hello"),))])
        t2.send([msg(1, 2, type=MessageType.APPEND_RESP, term=5, index=1)])
        (got2,) = await in2.wait(1)
        (got1,) = await in1.wait(1)
        assert got2.entries[0].data == b"hello" and got2.frm == 1
        assert got1.type is MessageType.APPEND_RESP and got1.index == 1
        assert set(t1.statistics().peers) == {2}
        s = t1.statistics()
        assert s.peers[2].sent == 1 and s.peers[2].connected and s.received == 1 and s.inbound_open == 1


async def test_heartbeat_round_trips_are_measured_and_only_heartbeat_frames_looked_at(
    nursery: trio.Nursery,
) -> None:
    with trio.fail_after(10):
        in1, in2 = Inbox(), Inbox()
        t1, t2 = make(1, in1), make(2, in2)
        a1, a2 = await start(nursery, t1), await start(nursery, t2)
        t1.update_peers({2: a2})
        t2.update_peers({1: a1})
        # A follower's traffic (responses) never marks a heartbeat as queued.
        t2.send([msg(1, 2, type=MessageType.APPEND_RESP, term=1, index=i) for i in range(3)])
        await in1.wait(3)
        assert not t2._links[1].heartbeat_queued and t2.round_trips()[1].count == 0
        t1.send([msg(2, 1, type=MessageType.HEARTBEAT, term=1)])
        await in2.wait(1)
        assert t1._links[2].heartbeat_sent_at is not None and not t1._links[2].heartbeat_queued
        t2.send([msg(1, 2, type=MessageType.HEARTBEAT_RESP, term=1)])
        await wait_until(lambda: t1.round_trips()[2].count == 1)
        assert t1._links[2].heartbeat_sent_at is None


async def test_three_transports_all_pairs(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        inboxes = {i: Inbox() for i in (1, 2, 3)}
        ts = {i: make(i, inboxes[i]) for i in (1, 2, 3)}
        addrs = {i: await start(nursery, t) for i, t in ts.items()}
        for t in ts.values():
            t.update_peers(addrs)
        for i, t in ts.items():
            t.send([msg(j, i, term=i * 10 + j) for j in (1, 2, 3) if j != i])
        for i, inbox in inboxes.items():
            got = await inbox.wait(2)
            assert sorted((m.frm, m.term) for m in got) == [(j, j * 10 + i) for j in (1, 2, 3) if j != i]
        # A message for ourselves has nowhere to go.
        ts[1].send([msg(1, 1)])
        assert ts[1].statistics().unroutable == 1


async def test_sends_before_the_sender_runs_are_batched_in_order(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in2 = Inbox()
        t2 = make(2, in2)
        a2 = await start(nursery, t2)
        t1 = make(1, peers={2: a2})
        await start(nursery, t1)
        await wait_until(lambda: t1.statistics().peers[2].connected)
        for i in range(200):  # no checkpoint in between: the sender cannot run
            t1.send([msg(2, 1, index=i)])
        got = await in2.wait(200)
        assert [m.index for m in got] == list(range(200))
        await wait_until(lambda: t1.statistics().peers[2].sent == 200)
        s = t1.statistics().peers[2]
        assert s.sent == 200 and s.dropped == 0
        assert s.frames < 200 / 10, s
        assert len(in2.batches) == s.frames


async def test_batches_respect_max_batch_bytes(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in2 = Inbox()
        a2 = await start(nursery, make(2, in2))
        one = msg(2, 1, context=b"x" * 100)
        t1 = make(1, peers={2: a2}, max_batch_bytes=3 * estimate_size(one))
        t1.send([one] * 30)  # queued before run: all available to the first batch
        await start(nursery, t1)
        await in2.wait(30)
        # The receiver may see the last frame before the sender counts it.
        await wait_until(lambda: t1.statistics().peers[2].sent == 30)
        assert t1.statistics().peers[2].frames == 10
        assert max(len(b) for b in in2.batches) == 3


async def test_queue_overflow_drops_and_counts(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in2 = Inbox()
        a2 = await start(nursery, make(2, in2))
        t1 = make(1, peers={2: a2}, queue_messages=10)
        t1.send(msg(2, 1, index=i) for i in range(25))  # not running yet: nothing drains
        s = t1.statistics().peers[2]
        assert (s.queued, s.dropped) == (10, 15)
        await start(nursery, t1)
        got = await in2.wait(10)
        assert [m.index for m in got] == list(range(10))
        await trio.sleep(0.05)
        assert len(in2.messages) == 10


def test_queue_byte_limit_drops() -> None:
    big = msg(2, 1, context=b"x" * 400)
    small = msg(2, 1)
    t1 = make(1, peers={2: (LOCAL, 1)}, queue_bytes=estimate_size(big) + estimate_size(small))
    t1.send([big, big, small])
    s = t1.statistics().peers[2]
    assert (s.queued, s.dropped) == (2, 1)
    # A message bigger than the whole budget still goes alone, so it is never unsendable.
    t2 = make(1, peers={2: (LOCAL, 1)}, queue_bytes=10)
    t2.send([big])
    assert t2.statistics().peers[2].queued == 1


async def test_peer_down_drops_without_blocking_then_recovers(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        port = closed_port()
        t1 = make(1, peers={2: (LOCAL, port)}, queue_messages=100)
        await start(nursery, t1)
        before = time.perf_counter()
        for i in range(10_000):  # synchronous and bounded: never waits, never grows unbounded
            t1.send([msg(2, 1, index=i)])
        assert time.perf_counter() - before < 1.0
        assert t1.statistics().peers[2].queued == 100
        await wait_until(lambda: t1.statistics().peers[2].reconnects >= 3)
        s = t1.statistics().peers[2]
        assert s.dropped == 10_000 and s.queued == 0 and not s.connected and s.connects == 0
        assert "refused" in s.last_error.lower()

        in2 = Inbox()
        await start(nursery, make(2, in2, port=port))
        seq = 0
        while not in2.messages:
            seq += 1
            t1.send([msg(2, 1, index=10_000 + seq)])
            await trio.sleep(0.02)
        assert in2.messages[0].index > 10_000
        assert t1.statistics().peers[2].connected


async def test_a_peer_that_dials_in_ends_our_backoff_towards_it(nursery: trio.Nursery) -> None:
    """A restarted peer is dialled back at once, not after a backoff that grew while it was
    down (up to reconnect_backoff_max_ms: a restarted follower stayed leaderless that long)."""
    with trio.fail_after(10):
        port = closed_port()
        in1 = Inbox()
        slow = {"reconnect_backoff_initial_ms": 30_000, "reconnect_backoff_max_ms": 30_000}
        t1 = make(1, in1, peers={2: (LOCAL, port)}, **slow)
        a1 = await start(nursery, t1)
        await wait_until(lambda: t1.statistics().peers[2].last_error != "")  # now backing off
        in2 = Inbox()
        t2 = make(2, in2, peers={1: a1}, port=port)
        await start(nursery, t2)
        t2.send([msg(1, 2, index=1)])  # t2 dials t1: t1 learns that 2 is up
        await in1.wait(1)
        started = trio.current_time()
        while not in2.messages:
            t1.send([msg(2, 1, index=2)])
            await trio.sleep(0.02)
        assert trio.current_time() - started < 5  # not the 15-30 s backoff
        assert t1.statistics().peers[2].connected


async def _fake_peer(
    *, task_status: trio.TaskStatus[tuple[int, list[trio.SocketStream]]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accepts, answers the handshake, then never reads again (tiny receive buffer)."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.bind((LOCAL, 0))
    sock.listen(8)
    streams: list[trio.SocketStream] = []
    listener = trio.SocketListener(sock)
    try:
        task_status.started((sock.getsockname()[1], streams))
        while True:
            stream = await listener.accept()
            streams.append(stream)
            decoder = FrameDecoder()
            while (payload := decoder.next_frame()) is None:
                decoder.feed(await stream.receive_some(65536))
            decode_handshake(payload)
            await stream.send_all(encode_frame(encode_reply(HandshakeReply(accepted=True))))
    finally:
        for s in streams:
            await trio.aclose_forcefully(s)
        await trio.aclose_forcefully(listener)


async def test_peer_that_never_reads_times_out_and_is_recycled(nursery: trio.Nursery) -> None:
    with trio.fail_after(15):
        port, streams = await nursery.start(_fake_peer)
        t1 = make(1, peers={2: (LOCAL, port)}, send_timeout_ms=300, max_batch_bytes=1 << 20)
        await start(nursery, t1)
        chunk = msg(2, 1, entries=(Entry(1, 1, data=b"\0" * (512 << 10)),))
        while len(streams) < 2:
            if t1.statistics().peers[2].queued < 4:
                t1.send([chunk] * 4)
            await trio.sleep(0.02)
        await wait_until(lambda: t1.statistics().peers[2].connects >= 2)
        s = t1.statistics().peers[2]
        assert s.reconnects >= 1
        assert s.dropped >= 1  # the batch stuck in the dead connection was lost
        assert "timed out" in s.last_error


async def _raw_connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream(LOCAL, port)


async def _read_reply(stream: trio.SocketStream) -> HandshakeReply:
    decoder = FrameDecoder()
    while (payload := decoder.next_frame()) is None:
        data = await stream.receive_some(65536)
        assert data, "closed without a reply"
        decoder.feed(data)
    return decode_reply(payload)


async def _assert_closed_by_server(stream: trio.SocketStream) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass  # a reset is a close too
    await stream.aclose()


def _hello(cluster: str = CLUSTER, frm: int = 3, to: int = 2) -> bytes:
    return encode_frame(encode_handshake(Handshake(cluster_id=cluster, from_id=frm, to_id=to)))


async def test_bad_connections_are_rejected_without_affecting_others(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ggap.transport")
    with trio.fail_after(10):
        in2 = Inbox()
        t2 = make(2, in2)
        a2 = await start(nursery, t2)
        t1 = make(1, peers={2: a2})
        await start(nursery, t1)
        t1.send([msg(2, 1, index=1)])
        await in2.wait(1)

        garbage = await _raw_connect(a2[1])
        await garbage.send_all(b"GET / HTTP/1.1\r\n\r\n" + b"\xff" * 64)
        await _assert_closed_by_server(garbage)

        for hello, why in [
            (_hello(cluster="other"), "cluster id 'other'"),
            (_hello(to=9), "for node 9 reached node 2"),
            (_hello(frm=2), "invalid sender id 2"),
            (encode_frame(pack(("ggap-peer", 77, CLUSTER, 3, 2))), "unsupported protocol version 77"),
            (encode_frame(encode_messages([msg(2, 3)])), "bad handshake"),
        ]:
            s = await _raw_connect(a2[1])
            await s.send_all(hello)
            reply = await _read_reply(s)
            assert not reply.accepted and why in reply.reason
            await _assert_closed_by_server(s)
            assert why in caplog.text

        # A valid handshake, then messages not all from the handshake's node or to us.
        s = await _raw_connect(a2[1])
        await s.send_all(_hello(frm=3))
        assert (await _read_reply(s)).accepted
        batch = [msg(2, 3, index=100), msg(2, 1, index=101), msg(9, 3, index=102)]
        await s.send_all(encode_frame(encode_messages(batch)))
        await wait_until(lambda: t2.statistics().received_dropped == 2)
        await in2.wait(2)
        assert [m.index for m in in2.messages] == [1, 100]
        # Then a corrupt frame ends only that connection.
        frame = bytearray(encode_frame(encode_messages([msg(2, 3)])))
        frame[-1] ^= 0xFF
        await s.send_all(bytes(frame))
        await _assert_closed_by_server(s)

        stats = t2.statistics()
        assert stats.inbound_rejected == 6 and stats.inbound_accepted == 2
        t1.send([msg(2, 1, index=2)])
        await in2.wait(3)
        assert in2.messages[-1].index == 2
        assert t1.statistics().peers[2].connects == 1  # the good connection never broke


async def test_handshake_and_idle_timeouts(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in2 = Inbox()
        t2 = make(2, in2, handshake_timeout_ms=200, keepalive_interval_ms=50, idle_timeout_ms=300)
        a2 = await start(nursery, t2)
        silent = await _raw_connect(a2[1])  # never sends a handshake
        t0 = trio.current_time()
        await _assert_closed_by_server(silent)
        assert 0.15 < trio.current_time() - t0 < 2
        idle = await _raw_connect(a2[1])  # handshakes, then goes quiet
        await idle.send_all(_hello())
        assert (await _read_reply(idle)).accepted
        t0 = trio.current_time()
        await _assert_closed_by_server(idle)
        assert 0.25 < trio.current_time() - t0 < 2
        # A real sender keeps its idle connection alive with keepalives.
        t1 = make(1, peers={2: a2}, keepalive_interval_ms=50)
        await start(nursery, t1)
        await trio.sleep(1.0)
        s = t1.statistics().peers[2]
        assert s.connected and s.connects == 1 and s.keepalives >= 5 and s.sent == 0
        assert not in2.messages


async def test_update_peers_add_move_remove(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        in2, in2b = Inbox(), Inbox()
        a2 = await start(nursery, make(2, in2))
        a2b = await start(nursery, make(2, in2b))  # "node 2" restarted elsewhere
        t1 = make(1)
        await start(nursery, t1)
        t1.send([msg(2, 1)])
        assert t1.statistics().unroutable == 1
        t1.update_peers({2: a2})
        t1.send([msg(2, 1, index=1)])
        await in2.wait(1)
        t1.update_peers({2: a2b})
        t1.send([msg(2, 1, index=2)])
        (got,) = await in2b.wait(1)
        assert got.index == 2 and len(in2.messages) == 1
        t1.update_peers({})
        assert t1.statistics().peers == {}
        t1.send([msg(2, 1)])
        assert t1.statistics().unroutable == 2
        await wait_until(lambda: t1.statistics().inbound_open == 0)
        with pytest.raises(ValueError):
            t1.update_peers({0: a2})


async def test_bind_conflict_is_a_clear_error(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):
        _, port = await start(nursery, make(2))
        with pytest.raises(PeerBindError, match=f"cannot listen for peers on 127.0.0.1:{port}") as info:
            await nursery.start(make(3, port=port).run)
        assert isinstance(info.value, OSError) and info.value.errno is not None


async def test_cancelling_run_closes_every_socket() -> None:
    with trio.fail_after(10), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        in1, in2 = Inbox(), Inbox()
        async with trio.open_nursery() as outer:
            t1 = make(1, in1)
            a1 = await start(outer, t1)
            with trio.CancelScope() as scope2:
                async with trio.open_nursery() as n2:
                    t2 = make(2, in2, peers={1: a1})
                    a2 = await start(n2, t2)
                    t1.update_peers({2: a2})
                    t1.send([msg(2, 1)])
                    t2.send([msg(1, 2)])
                    await in1.wait(1)
                    await in2.wait(1)
                    raw = await _raw_connect(a2[1])
                    await raw.send_all(_hello())
                    assert (await _read_reply(raw)).accepted
                    scope2.cancel()
            # t2's listener, its accepted connections and its outbound one are all gone.
            assert await port_is_closed(a2[1])
            await _assert_closed_by_server(raw)
            await wait_until(lambda: t1.statistics().inbound_open == 0)
            await wait_until(lambda: not t1.statistics().peers[2].connected)
            outer.cancel_scope.cancel()
        assert await port_is_closed(a1[1])
        assert t1.statistics().peers[2].queued == 0
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        make(0)
    with pytest.raises(ValueError, match=r"transport\.queue_messages must be positive"):
        make(1, queue_messages=0)
    with pytest.raises(ValueError, match="reconnect_backoff_initial_ms"):
        make(1, reconnect_backoff_initial_ms=1000, reconnect_backoff_max_ms=500)
    with pytest.raises(ValueError, match="idle_timeout_ms"):
        make(1, keepalive_interval_ms=2000, idle_timeout_ms=1000)
    with pytest.raises(ValueError, match="max_batch_bytes"):
        make(1, max_batch_bytes=2048, max_frame_bytes=1024)
    with pytest.raises(ValueError, match="max_frame_bytes"):
        make(1, max_frame_bytes=1 << 32)


def test_every_config_field_reaches_the_transport() -> None:
    """Each [transport] knob lands where it is used, converted from ms to seconds."""
    cfg = TransportConfig(
        connect_timeout_ms=1100,
        handshake_timeout_ms=1200,
        send_timeout_ms=1300,
        keepalive_interval_ms=1400,
        idle_timeout_ms=15_000,
        reconnect_backoff_initial_ms=60,
        reconnect_backoff_max_ms=1700,
        queue_messages=18,
        queue_bytes=19_000,
        max_batch_bytes=20_000,
        max_frame_bytes=21_000,
    )
    t = make(1, config=cfg)
    assert t.config == cfg
    assert (t._connect_timeout, t._handshake_timeout, t._send_timeout) == (1.1, 1.2, 1.3)
    assert (t._keepalive_interval, t._idle_timeout, t._backoff) == (1.4, 15.0, (0.06, 1.7))
    assert (t._queue_limit, t._queue_bytes_limit) == (18, 19_000)
    assert (t._max_batch_bytes, t._max_frame) == (20_000, 21_000)


def test_loaded_config_bounds_the_peer_queue() -> None:
    """From the environment, through load_config, to what `send` drops."""
    cfg = load_config(env={"GINNUNGAGAP_TRANSPORT__QUEUE_MESSAGES": "2"}).transport
    t = make(1, peers={2: (LOCAL, 1)}, config=cfg)
    t.send([msg(2, 1, index=i) for i in range(5)])
    s = t.statistics().peers[2]
    assert (s.queued, s.dropped) == (2, 3)


async def test_configured_max_frame_limits_inbound_frames(nursery: trio.Nursery) -> None:
    with trio.fail_after(5):  # well under idle_timeout_ms: the close is the frame limit's
        in2 = Inbox()
        a2 = await start(nursery, make(2, in2, max_batch_bytes=512, max_frame_bytes=1024))
        raw = await _raw_connect(a2[1])
        await raw.send_all(_hello())
        assert (await _read_reply(raw)).accepted
        await raw.send_all(encode_frame(encode_messages([msg(2, 3, index=1)])))
        await in2.wait(1)
        big = [msg(2, 3, index=2, entries=(Entry(2, 1, data=b"x" * 2048),))]
        await raw.send_all(encode_frame(encode_messages(big)))
        await _assert_closed_by_server(raw)
        assert [m.index for m in in2.messages] == [1]


async def _keep_sending(t: PeerTransport, inbox: Inbox, m: Message) -> None:
    """Resend `m` until it arrives once (messages sent while a link reconnects are lost)."""
    start = len(inbox.messages)
    while len(inbox.messages) == start:
        t.send([m])
        with trio.move_on_after(0.05):
            await inbox.wait(start + 1)


async def test_transports_through_fault_proxies(nursery: trio.Nursery) -> None:
    with trio.fail_after(20):
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, in1, keepalive_interval_ms=50, idle_timeout_ms=500)
        t2 = make(2, in2, keepalive_interval_ms=50, idle_timeout_ms=500)
        addrs = {1: await start(nursery, t1), 2: await start(nursery, t2)}
        with LinkTable(addrs) as links:
            t1.update_peers(links.peers(1))
            t2.update_peers(links.peers(2))
            await _keep_sending(t1, in2, msg(2, 1, index=1))
            await _keep_sending(t2, in1, msg(1, 2, index=1))

            links.partition([1], [2])
            await wait_until(lambda: not t1.statistics().peers[2].connected)
            t1.send([msg(2, 1, index=2)])
            t2.send([msg(1, 2, index=2)])
            await trio.sleep(0.3)
            assert 2 not in {m.index for m in in1.messages + in2.messages}
            links.heal()
            await _keep_sending(t1, in2, msg(2, 1, index=3))
            await _keep_sending(t2, in1, msg(1, 2, index=3))

            links.one_way(1, 2)  # silent: 1's sender notices nothing
            t1.send([msg(2, 1, index=4)])
            await _keep_sending(t2, in1, msg(1, 2, index=4))
            await trio.sleep(0.2)
            assert 4 not in {m.index for m in in2.messages}
            assert t1.statistics().peers[2].connected
            links.heal()
            # The receiver dropped the silent connection (idle, or a broken frame once bytes
            # flow again); the sender reconnects and delivery resumes.
            await _keep_sending(t1, in2, msg(2, 1, index=5))
            assert in2.messages[-1].index == 5
