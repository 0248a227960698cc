"""Prometheus metrics and /healthz on one small HTTP port (`--metrics-addr`, `[metrics]`).

Why this shape:
- The hot paths record into plain counters and `ggap.instruments.Histogram`s (rpc, the
  replica driver, the transport, the watch hub); nothing below this module imports
  prometheus_client. On scrape, `NodeCollector.collect` reads those and every value that is
  cheap to read at that moment (leader, indexes, file sizes, peer byte counts) and builds
  the metric families; a node pays for the exposition only when scraped.
- Each node has its own `CollectorRegistry` (never the process-global one), so several
  nodes in one process (tests) do not collide.
- The HTTP side is served by a task of the node's nursery (no thread, unlike
  prometheus_client's own server) and bounded like the client port: a connection limit,
  a size limit on the request head, one timeout for reading the request and writing the
  answer, one request per connection.
- /healthz is 200 only while the node knows a leader and is applying (`ApplyHealth`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ggap.config.model import MetricsConfig
from ggap.consensus.raft import Role
from ggap.instruments import Histogram
from ggap.rpc.metrics import RpcMetrics
from ggap.transport.listen import bind_listener
from ggap.types.errors import StatusCode
from ggap.types.helpers import format_addr as _format_addr

if TYPE_CHECKING:
    from ggap.replica.node import RaftReplica
    from ggap.rpc.server import RpcPolicy
    from ggap.server.maintenance import SpaceKeeper
    from ggap.server.watch import WatchHub
    from ggap.transport import PeerTransport

__all__ = ["ApplyHealth", "MetricsBindError", "MetricsEndpoint", "NodeCollector", "serve_metrics"]

log = logging.getLogger(__name__)

# The classic text format (what Prometheus 2 and 3 both read); generate_latest writes it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BACKLOG = 64
_LINGER_S = 0.2


class MetricsBindError(OSError):
    """The metrics address cannot be listened on; an OSError with the address in its text."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(
            cause.errno, f"cannot serve metrics on {_format_addr(host, port)} (metrics.listen_addr): {reason}"
        )

    def __str__(self) -> str:
        return str(self.strerror)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# -- health -----------------------------------------------------------------------------------


class ApplyHealth:
    """Is this node applying? Sampled every `interval`, judged on each /healthz.

    Stuck means, for at least `stall_s`: the applied index has not moved while the commit
    index (the Raft core's, which advances even while the writer thread is blocked) is
    ahead of it, or it has stayed more than `max_lag` entries behind the commit index.
    A follower catching up fast is not stuck (its applied index moves); one whose disk
    hangs is (it stops moving), and so is one that applies slower than the cluster commits.
    """

    def __init__(self, consensus: RaftReplica, *, stall_s: float, max_lag: int) -> None:
        self._consensus = consensus
        self._stall_s = stall_s
        self._max_lag = max_lag
        self._last_applied = -1
        self._still_since: float | None = None  # applied unchanged while behind, since
        self._far_since: float | None = None  # more than max_lag behind, since
        self.draining = False

    def sample(self, now: float) -> None:
        engine = self._consensus.engine
        commit = engine.node.log.committed
        applied = self._consensus.role().applied_index
        lag = commit - applied
        if lag <= 0 or applied != self._last_applied:
            self._still_since = None if lag <= 0 else now
        elif self._still_since is None:
            self._still_since = now
        if lag > self._max_lag:
            if self._far_since is None:
                self._far_since = now
        else:
            self._far_since = None
        self._last_applied = applied

    def problem(self, now: float) -> str | None:
        """Why the node is unhealthy, or None."""
        if self.draining:
            return "shutting down"
        role = self._consensus.role()
        if role.leader_id == 0:
            return "no leader"
        engine = self._consensus.engine
        lag = engine.node.log.committed - role.applied_index
        still, far = self._still_since, self._far_since
        if still is not None and now - still >= self._stall_s:
            return (
                f"apply stalled: applied index {role.applied_index} unchanged for {now - still:.1f}s, "
                f"{lag} entries behind commit"
            )
        if far is not None and now - far >= self._stall_s:
            return (
                f"apply stalled: more than {self._max_lag} entries behind commit for {now - far:.1f}s "
                f"({lag} now)"
            )
        return None

    async def run(self, interval_s: float) -> None:
        while True:
            self.sample(trio.current_time())
            await trio.sleep(interval_s)


# -- the collector ----------------------------------------------------------------------------


def _histogram(family: HistogramMetricFamily, labels: list[str], h: Histogram) -> None:
    buckets = [(floatToGoString(bound), float(n)) for bound, n in h.cumulative()]
    family.add_metric(labels, buckets, h.sum)


_GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]


class NodeCollector(Collector):
    """Reads one node's instruments and state on every scrape (trio thread only)."""

    def __init__(
        self,
        *,
        consensus: RaftReplica,
        transport: PeerTransport | None,
        rpc: RpcMetrics,
        policy: RpcPolicy,
        hub: WatchHub,
        space: SpaceKeeper,
        kv_path: str,
        live_keys: Callable[[], int],
        health: ApplyHealth,
        sessions: Callable[[], int] = lambda: 0,
    ) -> None:
        """`live_keys`: how many keys exist now (KvStore.live_keys, kept by the apply
        transaction: reading it costs nothing); `sessions`: client sessions in the table."""
        self._consensus = consensus
        self._transport = transport
        self._rpc = rpc
        self._policy = policy
        self._hub = hub
        self._space = space
        self._kv_path = kv_path
        self._live_keys = live_keys
        self._health = health
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        yield from self._server()
        yield from self._disk_and_mvcc()
        yield from self._network()
        yield from self._snapshots()
        yield from self._grpc()

    def _server(self) -> Iterator[Metric]:
        c = self._consensus
        engine = c.engine
        role = c.role()
        stats = c.stats
        yield GaugeMetricFamily(
            "ggap_server_has_leader", "1 if this node knows a leader.", role.leader_id != 0
        )
        yield GaugeMetricFamily(
            "ggap_server_is_leader", "1 if this node is the leader.", engine.role is Role.LEADER
        )
        yield GaugeMetricFamily("ggap_server_id", "This node's member id.", role.member_id)
        yield CounterMetricFamily(
            "ggap_server_leader_changes_seen",
            "Times this node saw leadership move to a known leader.",
            engine.leader_changes,
        )
        yield GaugeMetricFamily(
            "ggap_server_proposals_committed_total",
            "The Raft commit index this node knows (etcd's meaning: committed entries).",
            engine.node.log.committed,
        )
        yield GaugeMetricFamily(
            "ggap_server_proposals_applied_total", "The applied index of this node.", role.applied_index
        )
        yield GaugeMetricFamily(
            "ggap_server_proposals_pending",
            "Proposals (writes, membership changes) this node handed to Raft, waiting for their outcome.",
            stats.proposals_pending,
        )
        yield CounterMetricFamily(
            "ggap_server_proposals_failed",
            "Proposals handed to Raft that failed (leadership lost, overwritten, overloaded, stopping).",
            stats.proposals_failed,
        )
        forwarded = CounterMetricFamily(
            "ggap_server_forwarded_writes",
            "Writes this follower forwarded to the leader inside Raft, by outcome "
            "(applied; refused: not applied; unknown: expired or covered by a snapshot).",
            labels=["outcome"],
        )
        counts = engine.forward_counts
        forwarded.add_metric(["applied"], counts.applied)
        forwarded.add_metric(["refused"], counts.refused)
        forwarded.add_metric(["unknown"], counts.unknown)
        yield forwarded
        yield GaugeMetricFamily(
            "ggap_server_healthy",
            "1 while /healthz answers 200.",
            self._health.problem(trio.current_time()) is None,
        )
        policy = self._policy
        in_flight = GaugeMetricFamily(
            "ggap_server_requests_in_flight", "Client requests being served now.", labels=["kind"]
        )
        in_flight.add_metric(["unary"], policy.in_flight_unary)
        in_flight.add_metric(["stream"], policy.in_flight_streams)
        yield in_flight
        rejected = CounterMetricFamily(
            "ggap_server_requests_rejected",
            "Requests refused with RESOURCE_EXHAUSTED by limits.max_in_flight (unary) "
            "or limits.max_watches (stream).",
            labels=["kind"],
        )
        rejected.add_metric(["unary"], policy.rejected_unary)
        rejected.add_metric(["stream"], policy.rejected_streams)
        yield rejected

    def _disk_and_mvcc(self) -> Iterator[Metric]:
        stats = self._consensus.stats
        fsync = HistogramMetricFamily(
            "ggap_disk_wal_fsync_duration_seconds",
            "Saving a Ready's log entries and hard state to raft.db, fsync included.",
            labels=[],
        )
        _histogram(fsync, [], stats.log_save)
        yield fsync
        commit = HistogramMetricFamily(
            "ggap_disk_backend_commit_duration_seconds",
            "Applying a Ready's committed entries to kv.db (one transaction, commit included).",
            labels=[],
        )
        _histogram(commit, [], stats.apply_commit)
        yield commit
        path = self._kv_path
        yield GaugeMetricFamily(
            "ggap_mvcc_db_total_size_in_bytes",
            "Size of kv.db and its WAL on disk.",
            _file_size(path) + _file_size(path + "-wal"),
        )
        yield GaugeMetricFamily(
            "ggap_mvcc_db_total_size_in_use_in_bytes",
            "kv.db pages holding data (what storage.quota_bytes limits; "
            "measured every storage.reclaim_interval_ms).",
            self._space.space.in_use_bytes,
        )
        yield GaugeMetricFamily(
            "ggap_mvcc_keys_total", "Keys that exist (not deleted or expired).", self._live_keys()
        )
        yield GaugeMetricFamily(
            "ggap_mvcc_watcher_total", "Watch streams open now (replaying or live).", self._hub.streams
        )
        yield CounterMetricFamily("ggap_mvcc_events", "Events sent to watchers.", self._hub.events_sent)
        yield GaugeMetricFamily(
            "ggap_sessions_total",
            "Client sessions (exactly-once writes) in the replicated table as of the applied index.",
            self._sessions(),
        )

    def _network(self) -> Iterator[Metric]:
        sent = CounterMetricFamily(
            "ggap_network_peer_sent_bytes", "Bytes of Raft message frames sent to a peer.", labels=["To"]
        )
        received = CounterMetricFamily(
            "ggap_network_peer_received_bytes",
            "Bytes of Raft message frames received from a peer.",
            labels=["From"],
        )
        dropped = CounterMetricFamily(
            "ggap_network_peer_sent_failures",
            "Messages to a peer dropped (queue full, no connection, lost with a broken connection).",
            labels=["To"],
        )
        rtt = HistogramMetricFamily(
            "ggap_network_peer_round_trip_time_seconds",
            "Heartbeat round trips to a peer, measured by the leader (network plus the peer's raft loop).",
            labels=["To"],
        )
        transport = self._transport
        if transport is not None:
            st = transport.statistics()
            for pid, link in sorted(st.peers.items()):
                sent.add_metric([str(pid)], link.bytes_sent)
                dropped.add_metric([str(pid)], link.dropped)
            for pid, n in sorted(st.received_bytes.items()):
                received.add_metric([str(pid)], n)
            for pid, h in sorted(transport.round_trips().items()):
                _histogram(rtt, [str(pid)], h)
        yield from (sent, received, dropped, rtt)

    def _snapshots(self) -> Iterator[Metric]:
        stats = self._consensus.stats
        histograms = (
            ("ggap_snapshot_save_total_duration_seconds", "Taking a snapshot of kv.db (VACUUM INTO).",
             stats.snapshot_save),
            ("ggap_snapshot_send_total_duration_seconds", "Sending a snapshot to a follower.",
             stats.snapshot_send),
            ("ggap_snapshot_receive_total_duration_seconds", "Receiving and checking a snapshot.",
             stats.snapshot_receive),
            ("ggap_snapshot_install_duration_seconds", "Installing a received snapshot into kv.db.",
             stats.snapshot_install),
        )  # fmt: skip
        for name, doc, h in histograms:
            family = HistogramMetricFamily(name, doc, labels=[])
            _histogram(family, [], h)
            yield family
        failures = (
            ("ggap_snapshot_save_failures", "Snapshots not taken.", stats.snapshot_save_failures),
            ("ggap_snapshot_send_failures", "Snapshot sends that failed.", stats.snapshot_send_failures),
            ("ggap_snapshot_receive_failures", "Snapshot receives that failed.",
             stats.snapshot_receive_failures),
        )  # fmt: skip
        for name, doc, n in failures:
            yield CounterMetricFamily(name, doc, n)

    def _grpc(self) -> Iterator[Metric]:
        started = CounterMetricFamily(
            "grpc_server_started", "RPCs started on the server.", labels=_GRPC_LABELS
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "RPCs completed on the server, regardless of success or failure.",
            labels=[*_GRPC_LABELS, "grpc_code"],
        )
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC until the server finished handling it.",
            labels=_GRPC_LABELS,
        )
        for (service, method), m in sorted(self._rpc.methods.items()):
            labels = [m.type, service, method]
            started.add_metric(labels, m.started)
            for code, n in sorted(m.handled.items()):
                handled.add_metric([*labels, _code_name(code)], n)
            _histogram(handling, labels, m.handling)
        yield from (started, handled, handling)


# Go's codes.Code String() of each code: the enum name in CamelCase, but for two spellings.
_CODE_NAMES = {code: "".join(word.capitalize() for word in code.name.split("_")) for code in StatusCode}
_CODE_NAMES.update({StatusCode.OK: "OK", StatusCode.CANCELLED: "Canceled"})


def _code_name(code: int) -> str:
    """go-grpc-prometheus' grpc_code values (Go's codes.Code String(): "OK", "NotFound")."""
    try:
        return _CODE_NAMES.get(StatusCode(code), f"Code({code})")
    except ValueError:
        return f"Code({code})"


# -- the HTTP side ----------------------------------------------------------------------------


class MetricsEndpoint:
    """/metrics and /healthz of one node: the registry, the health judge, the HTTP limits."""

    def __init__(
        self,
        collector: NodeCollector,
        health: ApplyHealth,
        config: MetricsConfig,
    ) -> None:
        self.collector = collector
        self.health = health
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._config = config
        self._cache_s = config.cache_ms / 1000
        self._body = b""
        self._rendered_at: float | None = None  # when _body was rendered (trio clock)
        self._open = 0
        self.refused = 0
        self.failed = 0  # requests answered 500 (an exception while building the answer)
        self._failing = False  # in an episode of failures: logged once, until one succeeds

    def answer(self, method: str, target: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """(status line text, headers, body) for one request."""
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz"):
            return (
                "404 Not Found",
                [("Content-Type", "text/plain; charset=utf-8")],
                b"not found; try /metrics or /healthz\n",
            )
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", [("Allow", "GET, HEAD")], b"only GET and HEAD\n"
        if path == "/metrics":
            return "200 OK", [("Content-Type", CONTENT_TYPE)], self._render()
        problem = self.health.problem(trio.current_time())
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if problem is None:
            return "200 OK", headers, b"ok\n"
        return "503 Service Unavailable", headers, f"unhealthy: {problem}\n".encode()

    def _render(self) -> bytes:
        """The exposition, rendered at most once per `metrics.cache_ms`.

        Rendered on the event loop, not on a thread: `collect` reads state that only the
        trio thread may read consistently (dicts the loop mutates, the trio clock), and
        would race with it elsewhere. Caching bounds its cost instead; a failed rendering
        is not cached (the next request tries again)."""
        now = trio.current_time()
        if self._rendered_at is None or now - self._rendered_at >= self._cache_s:
            self._body = generate_latest(self.registry)
            self._rendered_at = now
        return self._body

    def safe_answer(self, method: str, target: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """`answer`, or 500 if it raises: a broken collector must not take the node down
        (serve_listeners lets a handler's exception out into the node's nursery). Logged
        with its traceback once per episode of failures, and once when answers work again."""
        try:
            answer = self.answer(method, target)
        except Exception:
            self.failed += 1
            if not self._failing:
                self._failing = True
                log.exception("metrics: answering %s %s failed (answering 500 until it works again)",
                              method, target)  # fmt: skip
            return (
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8")],
                b"internal error; see the node's log\n",
            )
        if self._failing:
            self._failing = False
            log.warning("metrics: answering works again (%d requests answered 500)", self.failed)
        return answer

    async def handle(self, stream: trio.SocketStream) -> None:
        """One connection: one request, one answer, closed (serve_listeners closes it)."""
        if self._open >= self._config.max_connections:
            self.refused += 1
            return
        self._open += 1
        try:
            with trio.move_on_after(self._config.request_timeout_ms / 1000):
                head = await _read_head(stream, self._config.max_request_bytes)
                if head is None:
                    await _respond(
                        stream, "431 Request Header Fields Too Large", [], b"request too large\n", True
                    )
                    await _linger(stream, self._config.max_request_bytes)
                    return
                parts = head.split(b"\r\n", 1)[0].split(b" ")
                if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                    await _respond(stream, "400 Bad Request", [], b"bad request\n", True)
                    return
                method, target = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace")
                status, headers, body = self.safe_answer(method, target)
                await _respond(stream, status, headers, body, method != "HEAD")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("metrics connection ended: %r", exc)
        except Exception:
            # A bug in the HTTP side ends this connection only, never the node.
            log.exception("metrics: connection handler failed")
        finally:
            self._open -= 1


async def _read_head(stream: trio.SocketStream, limit: int) -> bytes | None:
    """The request head (up to the blank line), b"" on EOF before it, None past `limit`."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > limit:
            return None
        data = await stream.receive_some(4096)
        if not data:
            return bytes(buf)
        buf += data
    head = bytes(buf[: buf.index(b"\r\n\r\n")])
    return head if len(head) <= limit else None


async def _linger(stream: trio.SocketStream, limit: int) -> None:
    """After answering a request we did not read whole: half-close, then read (and drop) a
    little of what is still coming, so closing with unread data does not reset the
    connection before the client has read the answer. Bounded in time and bytes."""
    await stream.send_eof()
    taken = 0
    with trio.move_on_after(_LINGER_S):
        while taken < 16 * limit and (data := await stream.receive_some(65536)):
            taken += len(data)


async def _respond(
    stream: trio.SocketStream, status: str, headers: list[tuple[str, str]], body: bytes, with_body: bool
) -> None:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    await stream.send_all(data + body if with_body else data)


async def serve_metrics(
    endpoint: MetricsEndpoint,
    host: str,
    port: int,
    *,
    health_interval_s: float,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics and /healthz on exactly host:port until cancelled.

    Resource handling: the listener and every connection are closed on exit.
    Error handling: a bind failure raises MetricsBindError before `started(port)`; a bad
    request, or any exception while answering one (500), ends its own connection only.
    """
    listener = await bind_listener(host, port, backlog=_BACKLOG, error=MetricsBindError)
    bound = int(listener.socket.getsockname()[1])
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(endpoint.health.run, health_interval_s)
            await nursery.start(trio.serve_listeners, endpoint.handle, [listener])
            log.info("serving metrics and /healthz on http://%s/metrics", _format_addr(host, bound))
            task_status.started(bound)
    finally:
        await trio.aclose_forcefully(listener)
