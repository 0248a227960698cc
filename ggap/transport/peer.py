"""Raft messages between nodes over plain TCP: one outbound stream per peer, lossy by design.

Why this shape:
- Raft tolerates lost, duplicated and reordered messages, and the Raft loop must never wait
  on the network. So `send` only appends to a bounded per-peer queue and drops when it is
  full; each peer has one sender task that drains the queue in batches (one frame per
  batch), and anything that goes wrong on a connection is answered by closing it, dropping
  what was in flight, and reconnecting with jittered exponential backoff.
- Each direction has its own connection: A's sender connects to B and carries only A's
  messages; B's replies travel on B's own connection to A. The server side answers the
  handshake and then only reads.
- Idle connections are kept honest by keepalives: a sender with nothing to send for
  `keepalive_interval_ms` sends an empty batch, and a receiver that hears nothing for
  `idle_timeout_ms` closes the connection (so a peer that vanished without a FIN does not
  pin a task and a socket forever). The sender also watches its socket for EOF, so a
  restarted peer is noticed at once rather than on the next failed write.

All of this runs on one trio thread: `send`, `update_peers` and `statistics` must be called
from the trio thread that runs `run` (or before it starts).

Every limit and timeout is a `[transport]` knob (`ggap.config.model.TransportConfig`), given
to the constructor as one object.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from ggap.config.model import TransportConfig
from ggap.consensus.raft.types import Message, MessageType
from ggap.instruments import NETWORK_BUCKETS, Histogram
from ggap.tls import PeerIdentity, RefusalLog, describe_handshake_error
from ggap.transport.listen import bind_listener
from ggap.transport.wire import (
    FRAME_HEADER_SIZE,
    PURPOSE_RAFT,
    PURPOSE_SNAPSHOT,
    FrameDecoder,
    Handshake,
    HandshakeReply,
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
from ggap.types.helpers import format_addr

__all__ = [
    "Address",
    "PeerBindError",
    "PeerStatistics",
    "PeerTransport",
    "SnapshotHandler",
    "SnapshotStream",
    "TransportStatistics",
]

log = logging.getLogger(__name__)
_refusals = RefusalLog(log)

Address = tuple[str, int]


class SnapshotStream:
    """One snapshot connection after its handshake: whole frames in and out, each bounded
    by a timeout. Bounded memory: one frame at a time (at most the transport's max frame)."""

    def __init__(self, stream: trio.abc.Stream, decoder: FrameDecoder, remote: str) -> None:
        self._stream = stream
        self._decoder = decoder
        self.remote = remote

    async def send(self, payload: bytes, timeout_s: float) -> None:
        with trio.fail_after(timeout_s):
            await self._stream.send_all(encode_frame(payload))

    async def receive(self, timeout_s: float) -> bytes:
        """The next frame's payload; BrokenResourceError if the peer closed instead."""
        with trio.fail_after(timeout_s):
            payload = await _read_frame(self._stream, self._decoder)
        if payload is None:
            raise trio.BrokenResourceError(f"{self.remote} closed the snapshot connection")
        return payload


# (peer id, stream) -> handled; the stream is closed once the handler returns.
SnapshotHandler = Callable[[int, SnapshotStream], Awaitable[None]]

# Socket read size and listen backlog: implementation details, not tuning knobs.
_RECEIVE_SIZE = 256 * 1024
_BACKLOG = 128
_U32_MAX = (1 << 32) - 1
_KEEPALIVE_FRAME = encode_frame(encode_messages(()))
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP

# What a broken or misbehaving connection raises; anything else is a bug and is logged loudly.
_CONNECTION_ERRORS = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    CodecError,
)


class PeerBindError(OSError):
    """The cluster address cannot be listened on (in use, not local, unresolvable).

    An OSError carrying the cause's errno, with the address in its message.
    """

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(cause.errno, f"cannot listen for peers on {_format_addr((host, port))}: {reason}")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


@attrs.frozen
class PeerStatistics:
    """One outbound link. Counters are cumulative since the transport was made."""

    address: Address
    queued: int  # messages waiting now
    queued_bytes: int  # their estimated encoded size
    sent: int  # messages written to the socket
    frames: int  # frames that carried messages (sent / frames is the batching factor)
    keepalives: int
    bytes_sent: int
    dropped: int  # queue full, connect failed, or lost with a broken connection
    connected: bool  # handshake done and the connection not yet known broken
    connects: int  # handshakes that succeeded
    reconnects: int  # connection attempts after the first
    last_error: str


@attrs.frozen
class TransportStatistics:
    peers: dict[int, PeerStatistics]
    inbound_open: int  # accepted connections being served now
    inbound_accepted: int  # handshakes accepted
    inbound_rejected: int  # connections closed before or at the handshake
    received: int  # messages handed to on_messages
    received_dropped: int  # inbound messages not addressed to us or not from the handshake's node
    unroutable: int  # messages given to send() for a node not in peers (or for ourselves)
    # Bytes of Raft-message frames (headers included) received per sending peer, since the
    # transport was made; peers that are no longer members keep their count.
    received_bytes: dict[int, int] = attrs.field(factory=dict)


class _Link:
    """One peer's queue, address and counters; outlives connections and address changes."""

    def __init__(self, peer_id: int, address: Address) -> None:
        self.peer_id = peer_id
        self.address = address
        self.queue: collections.deque[tuple[Message, int]] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = trio.Event()
        # Cancelled to stop the sender for good (peer removed).
        self.task_scope = trio.CancelScope()
        # Cancelled to abandon the current connection or backoff (address changed).
        self.attempt_scope: trio.CancelScope | None = None
        # Cancelled to end a backoff early: the peer just dialled us, so it is up again.
        self.backoff_scope: trio.CancelScope | None = None
        self.sent = 0
        self.frames = 0
        self.keepalives = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.connected = False
        self.connects = 0
        self.reconnects = 0
        self.last_error = ""
        self.quiet = False  # failures already reported once since the last success
        # Round trips as the leader sees them: a frame carrying a HEARTBEAT written to this
        # peer, until a frame from it carrying a HEARTBEAT_RESP arrives (see `round_trips`).
        self.heartbeat_sent_at: float | None = None
        # A HEARTBEAT was queued and may not be written yet: only then are frames looked
        # through for one (only a leader queues heartbeats; other nodes never look).
        self.heartbeat_queued = False
        self.rtt = Histogram(NETWORK_BUCKETS)
        # The connection's watchdog (`_watch_sends`) asked for a keepalive frame.
        self.keepalive_wanted = False
        # trio time the frame being written now began (None: not writing), and when the
        # last frame was written: what the watchdog checks instead of a scope per frame.
        self.sending_since: float | None = None
        self.last_sent_at = 0.0

    def put(self, msg: Message, limit: int, byte_limit: int) -> bool:
        size = estimate_size(msg)
        if len(self.queue) >= limit or (self.queue and self.queued_bytes + size > byte_limit):
            self.dropped += 1
            return False
        self.queue.append((msg, size))
        self.queued_bytes += size
        if msg.type is _HEARTBEAT:
            self.heartbeat_queued = True
        self.wakeup.set()
        return True

    def take(self, max_bytes: int) -> list[Message]:
        """Everything queued, up to max_bytes (but always at least one message if any)."""
        batch: list[Message] = []
        total = 0
        queue = self.queue
        while queue:
            msg, size = queue[0]
            if batch and total + size > max_bytes:
                break
            queue.popleft()
            batch.append(msg)
            total += size
        self.queued_bytes -= total
        return batch

    def drop_all(self) -> int:
        n = len(self.queue)
        self.queue.clear()
        self.queued_bytes = 0
        self.dropped += n
        return n

    async def wait(self) -> None:
        """Until a message is queued or the watchdog wants a keepalive."""
        while not self.queue and not self.keepalive_wanted:
            await self.wakeup.wait()
            self.wakeup = trio.Event()

    def statistics(self) -> PeerStatistics:
        return PeerStatistics(
            address=self.address,
            queued=len(self.queue),
            queued_bytes=self.queued_bytes,
            sent=self.sent,
            frames=self.frames,
            keepalives=self.keepalives,
            bytes_sent=self.bytes_sent,
            dropped=self.dropped,
            connected=self.connected,
            connects=self.connects,
            reconnects=self.reconnects,
            last_error=self.last_error,
        )


def _check_config(config: TransportConfig) -> None:
    """The rules ggap/config/load.py applies to `[transport]`, for configs built in code."""
    for field in attrs.fields(TransportConfig):
        value = getattr(config, field.name)
        if not value > 0:
            raise ValueError(f"transport.{field.name} must be positive, got {value!r}")
    if config.max_frame_bytes > _U32_MAX:
        raise ValueError(f"transport.max_frame_bytes must be <= {_U32_MAX}, got {config.max_frame_bytes}")
    if config.idle_timeout_ms <= config.keepalive_interval_ms:
        raise ValueError("transport.idle_timeout_ms must exceed transport.keepalive_interval_ms")
    if config.reconnect_backoff_initial_ms > config.reconnect_backoff_max_ms:
        raise ValueError(
            "transport.reconnect_backoff_initial_ms must be <= transport.reconnect_backoff_max_ms"
        )
    if config.max_batch_bytes > config.max_frame_bytes:
        raise ValueError("transport.max_batch_bytes must be <= transport.max_frame_bytes")


def _format_addr(addr: Address) -> str:
    return format_addr(*addr)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if _tls_error(exc):
        return "TLS: " + describe_handshake_error(exc)
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        # trio.open_tcp_stream says "all attempts ... failed"; the why is in its cause.
        return _describe(cause.exceptions[-1])
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _tls_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(seen, ssl.SSLWantReadError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _remote(stream: trio.SocketStream) -> str:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return "?"
    return _format_addr((str(name[0]), int(name[1])))


async def _read_frame(stream: trio.abc.Stream, decoder: FrameDecoder) -> bytes | None:
    """The next frame's payload, or None on a clean EOF between frames."""
    while True:
        payload = decoder.next_frame()
        if payload is not None:
            return payload
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            if decoder.buffered:
                raise CodecError(f"connection closed inside a frame ({decoder.buffered} bytes buffered)")
            return None
        decoder.feed(data)


class PeerTransport:
    """Sends Raft messages to peers and hands received ones to `on_messages`.

    `peers` maps node id -> (host, port) of that node's cluster listener; an entry for
    `node_id` itself is ignored (the node's own address is `listen`).
    """

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        listen: Address,
        peers: Mapping[int, Address],
        on_messages: Callable[[list[Message]], None],
        config: TransportConfig = TransportConfig(),
        rng: random.Random | None = None,
        on_snapshot: SnapshotHandler | None = None,
        server_tls: ssl.SSLContext | None = None,
        client_tls: ssl.SSLContext | None = None,
        peer_identity: PeerIdentity = PeerIdentity(),
    ) -> None:
        """
        Args:
            node_id: this node (> 0); stamped on every outbound handshake.
            cluster_id: connections whose handshake names another cluster are refused.
            listen: exactly the (host, port) to bind; port 0 picks a free one.
            peers: node id -> cluster address; see `update_peers`.
            on_messages: called synchronously on the trio thread with each received,
                non-empty batch (only messages `to` this node `frm` the connected peer).
                It must not block; a driver typically puts them on a channel, dropping
                when full. If it raises, the error is logged and that connection closed.
            config: the `[transport]` knobs (every field is documented in
                config/default.toml):
                connect_timeout_ms bounds opening a TCP connection;
                handshake_timeout_ms the handshake, on both ends;
                send_timeout_ms writing each frame;
                keepalive_interval_ms is how often an idle sender sends an empty frame;
                idle_timeout_ms how long a receiver lets a connection be silent (keep it
                well above the peers' keepalive_interval_ms);
                reconnect_backoff_initial_ms / _max_ms the delay between connection
                attempts: each failure doubles it, a successful handshake resets it, and
                every delay is drawn uniformly from [d/2, d] so nodes do not reconnect in
                lockstep;
                queue_messages / queue_bytes what is queued per peer before `send` drops;
                max_batch_bytes the estimated bytes taken into one frame;
                max_frame_bytes the largest frame accepted from peers (and sent to them).
            rng: source of the backoff jitter (inject a seeded one for reproducible tests).
            on_snapshot: serves inbound snapshot connections (handshake purpose
                "snapshot"), one task per connection; without it they are refused.
            server_tls / client_tls: mutual TLS (ggap.tls.server_context with
                require_client_cert, ggap.tls.client_context with our certificate): every
                accepted connection must complete a TLS handshake with a certificate the
                server context trusts before its handshake frame is read, and every
                connection we open (Raft and snapshot) verifies the listener's chain and
                host name. Both or neither.
            peer_identity: with TLS, which of the trusted CA's certificates are peers
                (peer_tls.allowed_cn / allowed_hostname): checked right after the TLS
                handshake, on accepted connections (refused and counted like a failed
                handshake) and on the ones we open (the listener is not spoken to).

        Raises ValueError for a config the loader would have refused (the loader checks
        the same rules with messages naming the key and its source).
        """
        if node_id <= 0:
            raise ValueError(f"node_id must be positive, got {node_id}")
        if not listen[0]:
            raise ValueError("listen host must be given; use 0.0.0.0 or :: for every interface")
        _check_config(config)
        if (server_tls is None) != (client_tls is None):
            raise ValueError("server_tls and client_tls go together (peer TLS is mutual)")
        self._server_tls = server_tls
        self._client_tls = client_tls
        self._peer_identity = peer_identity
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.config = config
        self._listen = listen
        self._on_messages = on_messages
        self._on_snapshot = on_snapshot
        self._queue_limit = config.queue_messages
        self._queue_bytes_limit = config.queue_bytes
        self._max_batch_bytes = config.max_batch_bytes
        self._max_frame = config.max_frame_bytes
        self._connect_timeout = config.connect_timeout_ms / 1000
        self._handshake_timeout = config.handshake_timeout_ms / 1000
        self._send_timeout = config.send_timeout_ms / 1000
        self._backoff = (config.reconnect_backoff_initial_ms / 1000, config.reconnect_backoff_max_ms / 1000)
        self._rng = rng if rng is not None else random.Random()
        self._keepalive_interval = config.keepalive_interval_ms / 1000
        self._idle_timeout = config.idle_timeout_ms / 1000
        self._links: dict[int, _Link] = {}
        self._nursery: trio.Nursery | None = None
        self._running = False
        self._inbound_open = 0
        self._inbound_accepted = 0
        self._inbound_rejected = 0
        self._received = 0
        self._received_dropped = 0
        self._unroutable = 0
        self._received_bytes: dict[int, int] = {}
        self.update_peers(peers)

    # -- the API the Raft driver uses ------------------------------------------------------

    def send(self, msgs: Iterable[Message]) -> None:
        """Queue each message for its `to` peer; never blocks, never raises for the network.

        A message is dropped (and counted) when its peer's queue is full, when its peer is
        unknown or is this node, and later if its connection fails. Raft retransmits.
        """
        links = self._links
        for msg in msgs:
            link = links.get(msg.to)
            if link is None:
                self._unroutable += 1
                continue
            link.put(msg, self._queue_limit, self._queue_bytes_limit)

    def update_peers(self, peers: Mapping[int, Address]) -> None:
        """Replace the peer set: new peers get a sender, removed ones lose theirs and
        their queue, a changed address makes the sender reconnect there now."""
        wanted = {pid: (str(addr[0]), int(addr[1])) for pid, addr in peers.items() if pid != self.node_id}
        bad = [pid for pid in wanted if pid <= 0]
        if bad:
            raise ValueError(f"peer ids must be positive, got {bad}")
        for pid in [pid for pid in self._links if pid not in wanted]:
            gone = self._links.pop(pid)
            gone.task_scope.cancel()
            gone.drop_all()
            log.info("peer %d removed", pid)
        for pid, addr in wanted.items():
            link = self._links.get(pid)
            if link is None:
                link = self._links[pid] = _Link(pid, addr)
                if self._nursery is not None:
                    self._nursery.start_soon(self._sender, link)
            elif link.address != addr:
                log.info("peer %d moved from %s to %s", pid, _format_addr(link.address), _format_addr(addr))
                link.address = addr
                if link.attempt_scope is not None:
                    link.attempt_scope.cancel()

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters (cheap; meant for metrics and tests)."""
        return TransportStatistics(
            peers={pid: link.statistics() for pid, link in self._links.items()},
            inbound_open=self._inbound_open,
            inbound_accepted=self._inbound_accepted,
            inbound_rejected=self._inbound_rejected,
            received=self._received,
            received_dropped=self._received_dropped,
            unroutable=self._unroutable,
            received_bytes=dict(self._received_bytes),
        )

    def round_trips(self) -> dict[int, Histogram]:
        """Per peer, the round-trip times measured on heartbeats (read-only; for metrics).

        Only a leader sends heartbeats, so only a leader has samples. One is taken per
        heartbeat round at most: from the moment the frame carrying a HEARTBEAT to the peer
        has been written to its socket until the first frame from that peer carrying a
        HEARTBEAT_RESP has been read (the next heartbeat starts the next sample). That is
        network plus the peer's turnaround through its raft loop: what a Raft round costs.
        A connection that breaks abandons the sample in flight."""
        return {pid: link.rtt for pid, link in self._links.items()}

    # -- lifetime --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on `listen` and keep a sender per peer until cancelled.

        Args:
            task_status: `started(port)` with the bound port, once the socket is listening
                and the senders are started.

        Resource handling: the listening socket, every accepted connection and every
        outbound connection are closed when this returns (cancellation included); queued
        messages stay queued and are sent if `run` is called again.

        Error handling: a bind failure raises `PeerBindError` before `started`. After
        that, nothing a peer does (refusing, resetting, stalling, sending garbage) escapes:
        it ends that one connection, is logged and counted. Accept errors from resource
        exhaustion are logged and retried (trio.serve_listeners).
        """
        if self._running:
            raise RuntimeError("PeerTransport.run is already running")
        self._running = True
        try:
            listener = await self._bind()
            try:
                port = int(listener.socket.getsockname()[1])
                async with trio.open_nursery() as handlers, trio.open_nursery() as services:
                    await services.start(
                        functools.partial(
                            trio.serve_listeners, self._serve_inbound, [listener], handler_nursery=handlers
                        )
                    )
                    self._nursery = services
                    for link in self._links.values():
                        services.start_soon(self._sender, link)
                    log.info(
                        "node %d listening for peers on %s",
                        self.node_id,
                        _format_addr((self._listen[0], port)),
                    )
                    task_status.started(port)
            finally:
                await trio.aclose_forcefully(listener)
        finally:
            self._nursery = None
            self._running = False
            for link in self._links.values():
                link.connected = False
                # Each sender's scope is used once; a later run gets fresh ones.
                link.task_scope = trio.CancelScope()

    async def _bind(self) -> trio.SocketListener:
        host, port = self._listen
        return await bind_listener(host, port, backlog=_BACKLOG, error=PeerBindError)

    # -- outbound --------------------------------------------------------------------------

    @asynccontextmanager
    async def open_snapshot_stream(self, peer: int) -> AsyncIterator[SnapshotStream]:
        """A dedicated connection to `peer` for one snapshot transfer, so a large transfer
        never queues behind (or in front of) Raft messages. Raises the connection's error
        (OSError, trio.TooSlowError, BrokenResourceError, CodecError) or a ConnectionError
        if the peer refuses the handshake."""
        link = self._links.get(peer)
        if link is None:
            raise ConnectionError(f"peer {peer} is unknown")
        addr = link.address
        stream = await self._connect(addr)
        try:
            decoder, reply = await self._handshake(stream, peer, PURPOSE_SNAPSHOT)
            if not reply.accepted:
                raise ConnectionError(f"peer {peer} refused the snapshot connection: {reply.reason}")
            yield SnapshotStream(stream, decoder, _format_addr(addr))
        finally:
            await trio.aclose_forcefully(stream)

    async def _connect(self, addr: Address) -> trio.abc.Stream:
        """A TCP connection to `addr`, TLS (handshake done, listener verified) with peer TLS."""
        with trio.fail_after(self._connect_timeout):
            tcp = await trio.open_tcp_stream(*addr)
        if self._client_tls is None:
            return tcp
        try:
            tls = trio.SSLStream(tcp, self._client_tls, server_hostname=addr[0])
            with trio.fail_after(self._handshake_timeout):
                await tls.do_handshake()
            self._peer_identity.check(tls.getpeercert())
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return tls

    async def _handshake(
        self, stream: trio.abc.Stream, peer: int, purpose: str = PURPOSE_RAFT
    ) -> tuple[FrameDecoder, HandshakeReply]:
        """Send our handshake on a new outbound connection and read the peer's verdict."""
        decoder = FrameDecoder(max_frame=self._max_frame)
        hello = Handshake(cluster_id=self.cluster_id, from_id=self.node_id, to_id=peer, purpose=purpose)
        with trio.fail_after(self._handshake_timeout):
            await stream.send_all(encode_frame(encode_handshake(hello)))
            payload = await _read_frame(stream, decoder)
        if payload is None:
            raise trio.BrokenResourceError("closed by the peer during the handshake")
        return decoder, decode_reply(payload)

    async def _sender(self, link: _Link) -> None:
        """Connect, pump, reconnect, forever (until the link's task scope is cancelled)."""
        first_delay, max_delay = self._backoff
        delay = first_delay
        attempts = 0
        with link.task_scope:
            while True:
                if attempts:
                    link.reconnects += 1
                attempts += 1
                with trio.CancelScope() as attempt:
                    link.attempt_scope = attempt
                    established = await self._session(link)
                    if established:
                        delay = first_delay
                    else:
                        # Nobody to deliver to: what queued up meanwhile is stale.
                        link.drop_all()
                    with trio.CancelScope() as backoff:
                        link.backoff_scope = backoff
                        await trio.sleep(self._rng.uniform(delay / 2, delay))
                    link.backoff_scope = None
                    delay = first_delay if backoff.cancelled_caught else min(delay * 2, max_delay)
                link.attempt_scope = None
                if attempt.cancelled_caught:
                    delay = first_delay  # the address changed: try the new one right away

    async def _session(self, link: _Link) -> bool:
        """One connection's life; True if the handshake succeeded. Never raises Exception."""
        addr = link.address
        stream: trio.abc.Stream | None = None
        established = False
        try:
            stream = await self._connect(addr)
            _decoder, reply = await self._handshake(stream, link.peer_id)
            if not reply.accepted:
                link.last_error = f"handshake rejected: {reply.reason}"
                if not link.quiet:
                    log.warning(
                        "peer %d at %s rejected our handshake: %s",
                        link.peer_id,
                        _format_addr(addr),
                        reply.reason,
                    )
                link.quiet = True
                return False
            established = True
            link.connected = True
            link.connects += 1
            link.quiet = False
            log.info("connected to peer %d at %s", link.peer_id, _format_addr(addr))
            reason = await self._pump(link, stream)
            link.last_error = reason
            log.info("connection to peer %d at %s ended: %s", link.peer_id, _format_addr(addr), reason)
        except _CONNECTION_ERRORS as exc:
            link.last_error = _describe(exc)
            level = logging.DEBUG if link.quiet else logging.INFO
            if not link.quiet and _tls_error(exc):
                level = logging.WARNING  # a certificate problem does not heal by retrying
            log.log(level, "peer %d at %s: %s", link.peer_id, _format_addr(addr), link.last_error)
            link.quiet = True
        except Exception as exc:  # a bug: keep the node up, retry after backoff
            link.last_error = _describe(exc)
            log.exception("peer %d sender failed unexpectedly", link.peer_id)
        finally:
            link.connected = False
            link.heartbeat_sent_at = None
            if stream is not None:
                await trio.aclose_forcefully(stream)
        return established

    async def _pump(self, link: _Link, stream: trio.abc.Stream) -> str:
        """Send batches until the connection breaks; returns why it did."""
        reason = "cancelled"
        async with trio.open_nursery() as nursery:

            async def watch_eof() -> None:
                # The server never speaks after its reply: EOF or data both end the session.
                nonlocal reason
                try:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    reason = "unexpected data from the peer" if data else "closed by the peer"
                except _CONNECTION_ERRORS as exc:
                    reason = _describe(exc)
                nursery.cancel_scope.cancel()

            async def watchdog() -> None:
                nonlocal reason
                await self._watch_sends(link)
                reason = "send failed: timed out"
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_eof)
            nursery.start_soon(watchdog)
            try:
                await self._send_loop(link, stream)
            except _CONNECTION_ERRORS as exc:
                reason = f"send failed: {_describe(exc)}"
            nursery.cancel_scope.cancel()
        return reason

    async def _watch_sends(self, link: _Link) -> None:
        """Ask for a keepalive after `keepalive_interval` without a frame; return when a
        frame has been writing for `send_timeout` (the peer stopped reading).

        One task per connection that wakes about once a keepalive interval, instead of two
        cancel scopes per frame in the send loop (their enter/exit was ~9% of a follower's
        CPU at one write in flight)."""
        link.last_sent_at = trio.current_time()
        while True:
            since = link.sending_since
            if since is not None:
                due = since + self._send_timeout
            else:
                due = link.last_sent_at + self._keepalive_interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue  # the state may have moved meanwhile: look again
            if since is not None:
                return  # one frame has been writing for send_timeout
            link.keepalive_wanted = True
            link.wakeup.set()
            # The next check one interval on, also if the sender has not run yet.
            link.last_sent_at = trio.current_time()

    async def _send_loop(self, link: _Link, stream: trio.abc.Stream) -> None:
        while True:
            if not link.queue:
                await link.wait()
            link.keepalive_wanted = False
            batch = link.take(self._max_batch_bytes)
            if batch:
                try:
                    frame = encode_frame(encode_messages(batch))
                except CodecError as exc:
                    link.dropped += len(batch)
                    log.error("dropping %d messages to peer %d: %s", len(batch), link.peer_id, exc)
                    continue
                if len(frame) > self._max_frame:
                    link.dropped += len(batch)
                    log.error(
                        "dropping %d messages to peer %d: a %d-byte frame is over the limit",
                        len(batch),
                        link.peer_id,
                        len(frame),
                    )
                    continue
            else:
                frame = _KEEPALIVE_FRAME
            link.sending_since = trio.current_time()
            try:
                await stream.send_all(frame)
            except BaseException:
                link.dropped += len(batch)  # what was in flight is lost with the connection
                raise
            finally:
                link.sending_since = None
            link.last_sent_at = trio.current_time()
            link.bytes_sent += len(frame)
            if batch:
                link.sent += len(batch)
                link.frames += 1
                if link.heartbeat_queued:
                    if link.heartbeat_sent_at is None and any(m.type is _HEARTBEAT for m in batch):
                        link.heartbeat_sent_at = trio.current_time()
                    link.heartbeat_queued = bool(link.queue)
            else:
                link.keepalives += 1

    # -- inbound ---------------------------------------------------------------------------

    async def _serve_inbound(self, stream: trio.SocketStream) -> None:
        """One accepted connection (serve_listeners closes the stream afterwards)."""
        self._inbound_open += 1
        remote = _remote(stream)
        try:
            conn: trio.abc.Stream = stream
            if self._server_tls is not None:
                tls = trio.SSLStream(stream, self._server_tls, server_side=True)
                try:
                    with trio.fail_after(self._handshake_timeout):
                        await tls.do_handshake()
                except _CONNECTION_ERRORS as exc:
                    self._inbound_rejected += 1
                    _refusals.refused("peer connection", remote, describe_handshake_error(exc))
                    return
                reason = self._peer_identity.problem(tls.getpeercert())
                if reason:
                    self._inbound_rejected += 1
                    _refusals.refused("peer connection", remote, reason, kind="certificate not allowed")
                    return
                conn = tls
            await self._inbound(conn, remote)
        except _CONNECTION_ERRORS as exc:
            log.info("peer connection from %s ended: %s", remote, _describe(exc))
        except Exception:
            log.exception("peer connection from %s failed unexpectedly", remote)
        finally:
            self._inbound_open -= 1

    def _check_handshake(self, hs: Handshake) -> str:
        """Why `hs` is refused, or "" if it is acceptable."""
        if hs.cluster_id != self.cluster_id:
            return f"cluster id {hs.cluster_id!r} is not this cluster's {self.cluster_id!r}"
        if hs.to_id != self.node_id:
            return f"connection for node {hs.to_id} reached node {self.node_id}"
        if hs.from_id == 0 or hs.from_id == self.node_id:
            return f"invalid sender id {hs.from_id}"
        if hs.purpose == PURPOSE_SNAPSHOT and self._on_snapshot is None:
            return "this node does not accept snapshot connections"
        return ""

    async def _inbound(self, stream: trio.abc.Stream, remote: str) -> None:
        decoder = FrameDecoder(max_frame=self._max_frame)
        try:
            with trio.fail_after(self._handshake_timeout):
                payload = await _read_frame(stream, decoder)
        except _CONNECTION_ERRORS as exc:
            self._inbound_rejected += 1
            _refusals.refused("peer connection", remote, _describe(exc), kind="no valid handshake")
            return
        if payload is None:
            self._inbound_rejected += 1
            _refusals.refused(
                "peer connection", remote, "closed", kind="before its handshake", level=logging.INFO
            )
            return
        try:
            hello = decode_handshake(payload)
        except CodecError as exc:
            reason = f"bad handshake: {exc}"
        else:
            reason = self._check_handshake(hello)
        if reason:
            self._inbound_rejected += 1
            # Once per (host, reason) a minute: a misconfigured peer redials every second.
            _refusals.refused("peer connection", remote, reason, kind="rejected")
            with trio.move_on_after(self._handshake_timeout):
                await stream.send_all(
                    encode_frame(encode_reply(HandshakeReply(accepted=False, reason=reason)))
                )
            return
        with trio.fail_after(self._handshake_timeout):
            await stream.send_all(encode_frame(encode_reply(HandshakeReply(accepted=True))))
        self._inbound_accepted += 1
        peer = hello.from_id
        if hello.purpose == PURPOSE_SNAPSHOT:
            assert self._on_snapshot is not None
            log.info("peer %d opened a snapshot connection from %s", peer, remote)
            await self._on_snapshot(peer, SnapshotStream(stream, decoder, remote))
            return
        log.info("peer %d connected from %s", peer, remote)
        link = self._links.get(peer)
        if link is not None and link.backoff_scope is not None:
            # It is back (a restart): dial it now, not at the end of a backoff that grew
            # while it was down. Until we do, our messages (a leader's heartbeats) cannot
            # reach it and it does not know whom to forward its clients' writes to.
            link.backoff_scope.cancel()
        await self._receive_until_idle(stream, decoder, peer, remote)

    async def _receive_until_idle(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, peer: int, remote: str
    ) -> None:
        """Hand over the peer's messages until it closes; TooSlowError once it has been
        silent for `idle_timeout`. The idle clock is a watchdog task that wakes about
        once an idle period, not a cancel scope around every frame."""
        heard = [trio.current_time()]
        timed_out = False
        failed: Exception | None = None
        async with trio.open_nursery() as nursery:

            async def watch_idle() -> None:
                nonlocal timed_out
                # A deadline that moves with each frame, checked when it falls due.
                while True:
                    due = heard[0] + self._idle_timeout
                    if trio.current_time() >= due:
                        break
                    await trio.sleep_until(due)
                timed_out = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_idle)
            try:
                await self._receive(stream, decoder, peer, remote, heard)
            except Exception as exc:  # raised from here, not as a group out of the nursery
                failed = exc
            nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed
        if timed_out:
            raise trio.TooSlowError

    async def _receive(
        self, stream: trio.abc.Stream, decoder: FrameDecoder, peer: int, remote: str, heard: list[float]
    ) -> None:
        while True:
            payload = await _read_frame(stream, decoder)
            if payload is None:
                log.info("peer %d at %s closed its connection", peer, remote)
                return
            heard[0] = trio.current_time()
            received = self._received_bytes
            received[peer] = received.get(peer, 0) + len(payload) + FRAME_HEADER_SIZE
            msgs = decode_messages(payload)
            link = self._links.get(peer)
            if link is not None and link.heartbeat_sent_at is not None:
                if any(m.type is _HEARTBEAT_RESP for m in msgs):
                    link.rtt.observe(trio.current_time() - link.heartbeat_sent_at)
                    link.heartbeat_sent_at = None
            mine = [m for m in msgs if m.to == self.node_id and m.frm == peer]
            if len(mine) != len(msgs):
                self._received_dropped += len(msgs) - len(mine)
                log.warning(
                    "peer %d at %s sent %d messages not from it to us; dropped",
                    peer,
                    remote,
                    len(msgs) - len(mine),
                )
            if mine:
                self._received += len(mine)
                self._on_messages(mine)
