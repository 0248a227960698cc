"""Node assembly: one nursery owns every long-lived task.

    run_node(config)                  process entry: logging, signals, exit status
      serve_node(config)              opens storage, then in one nursery:
        transport.run                 peer (Raft) traffic, when there are peers
        consensus.run                 the raft loop (owns the writer thread)
        expirer.run                   leader-side TTL expiry
        session_clock.run             leader-side log time for session expiry
        history.run                   leader-side replicated pruning and auto compaction
        space.run                     local space measurement and reclaiming (quota)
        members.run                   leader-side auto-promotion of caught-up learners
        serve_grpc                    the client port (KvService, ClusterService,
                                      health, reflection)
        shutdown on SIGINT/SIGTERM    drain in-flight requests, then cancel the nursery

Any task that crashes takes the nursery, and so the node, down with it: no zombies.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ggap import __version__, logs, tracing
from ggap.config import Config
from ggap.config.peers import parse_peers, split_addr
from ggap.consensus.raft.storage import LogCompactedError, LogUnavailableError
from ggap.replica import ClusterSpec, Consensus, Mailbox, RaftReplica
from ggap.replica.kv_machine import KvStateMachine
from ggap.replica.membership import bootstrap_membership
from ggap.replica.node import SnapshotReceiver
from ggap.replica.stats import ReplicaStats
from ggap.rpc import HealthService, RpcPolicy, ServerTls, guarded_service, reflection_services, serve_grpc
from ggap.rpc.frontdoor import ConnectionLimits
from ggap.rpc.metrics import RpcMetrics
from ggap.server.cluster_service import ClusterServicer
from ggap.server.forward import Forwarder
from ggap.server.join import auto_promote, join_cluster, needs_join
from ggap.server.kv_service import KvServicer, NodeState
from ggap.server.maintenance import HistoryKeeper, SpaceKeeper
from ggap.server.members import MemberManager
from ggap.server.metrics import ApplyHealth, MetricsEndpoint, NodeCollector, serve_metrics
from ggap.server.reads import ReaderPool
from ggap.server.sessions import SessionClock
from ggap.server.snapshots import SnapshotStreams
from ggap.server.ttl import Expirer
from ggap.server.watch import WatchHub
from ggap.storage import KvStore, LogStore
from ggap.storage.log import (
    META_CLUSTER_ID,
    META_CLUSTER_TOKEN,
    META_MEMBERS,
    META_NODE_ID,
    decode_members,
    encode_members,
)
from ggap.storage.snapshot import remove_backup_leftovers, snapshot_dir
from ggap.tls import NodeTls, TlsFileError, node_tls
from ggap.transport import PeerTransport
from ggap.types import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

KV_SERVICE = "ginnungagap.v1.KvService"
CLUSTER_SERVICE = "ginnungagap.v1.ClusterService"


class StartupError(Exception):
    """The node cannot start with this configuration or data dir (exit status 2)."""


def _open_storage(config: Config) -> tuple[KvStore, LogStore, dict[int, str], str]:
    """Open both databases and settle the membership: what the data dir remembers wins,
    flags that contradict it are refused (never silently used). Also returns the cluster
    token the data dir carries ("" unless it was made by `ggap snapshot restore`)."""
    data_dir = Path(config.node.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_store = LogStore.open(
        data_dir / "raft.db",
        config.storage,
        cache_entries=config.raft.entry_cache_entries,
        cache_bytes=config.raft.entry_cache_bytes,
    )
    try:
        stored = log_store.get_meta(META_NODE_ID)
        if stored is None:
            log_store.set_meta(META_NODE_ID, str(config.node.id).encode())
        elif int(stored) != config.node.id:
            raise StartupError(
                f"data dir {data_dir} belongs to node {int(stored)}, not node {config.node.id}"
            )
        peers = _settle_members(log_store, parse_peers(config.raft.peers), data_dir)
        token = (log_store.get_meta(META_CLUSTER_TOKEN) or b"").decode("ascii", "replace")
        kv = KvStore.open(data_dir / "kv.db", mvcc=config.mvcc, storage=config.storage)
    except BaseException:
        log_store.close()
        raise
    return kv, log_store, peers, token


def _settle_members(log_store: LogStore, flags: dict[int, str], data_dir: Path) -> dict[int, str]:
    raw = log_store.get_meta(META_MEMBERS)
    if raw is None:
        if flags:
            log_store.set_meta(META_MEMBERS, encode_members(flags))
        return flags
    stored = decode_members(raw)
    if flags and flags != stored:
        raise StartupError(
            f"data dir {data_dir} was bootstrapped with peers {_peers_text(stored)}; "
            f"--peers {_peers_text(flags)} contradicts it "
            "(start without --peers to use the stored membership)"
        )
    return stored


def _peers_text(peers: dict[int, str]) -> str:
    return ",".join(f"{i}={a}" for i, a in sorted(peers.items()))


def cluster_id(peers: dict[int, str], token: str = "") -> str:
    """Every member of one initial cluster derives the same id; peers of another are refused.

    Only the member ids count, not the addresses: each node may reach the others through
    different addresses (NAT, proxies), so their --peers strings can legitimately differ.
    Ids alone would let a cluster restored from a backup (same ids, often the same hosts)
    talk to the cluster it was copied from, so a restore stores a cluster token, the same
    on every node restored from one backup, and it is mixed in here; a data dir that was
    never restored has none, and its id is what it always was."""
    ids = ",".join(str(i) for i in sorted(peers))
    if token:
        ids += "/" + token
    return "ggap-" + hashlib.sha256(ids.encode()).hexdigest()[:16]


def _term_at(log_store: LogStore, index: int) -> int:
    """Term of the log entry at `index`, 0 once compaction dropped it (thread-safe read)."""
    try:
        return log_store.term(index)
    except (LogCompactedError, LogUnavailableError):
        return 0


async def _health_loop(
    consensus: Consensus, health: HealthService, names: Sequence[str], interval_s: float
) -> None:
    """Serving = this node knows a leader (API.md); re-checked every `interval_s`."""
    serving: bool | None = None
    while True:
        now = consensus.role().leader_id != 0
        if now != serving:
            serving = now
            for name in names:
                health.set_status(name, now)
        await trio.sleep(interval_s)


def load_node_tls(config: Config) -> NodeTls:
    """Every TLS context of the node, each file checked; StartupError naming a bad file."""
    try:
        return node_tls(config.tls, config.peer_tls)
    except TlsFileError as exc:
        raise StartupError(f"TLS: {exc}") from None


async def serve_node(config: Config, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node until cancelled or signalled; `task_status` gets the bound client port."""
    tls = load_node_tls(config)
    if needs_join(config):
        if config.raft.peers:
            raise StartupError(
                "--join (node.join) and --peers (raft.peers) exclude each other: "
                "a joining node learns the members from the cluster"
            )
        await join_cluster(config, ssl_context=tls.node_client)
    kv, log_store, peers, token = await trio.to_thread.run_sync(_open_storage, config)
    readers: ReaderPool | None = None
    try:
        readers = ReaderPool(kv, threads=config.reads.reader_threads)
        # A node started without --peers is a group of one voter: the same engine, and a
        # peer transport with nobody to talk to until members are added.
        members = peers or {config.node.id: config.node.cluster_addr}
        # The same on every node: --peers names no client addresses, so a node records its
        # own only when it is the whole bootstrap group (each node filling in just its own
        # would give every node a different membership, and joiners a copy of one of them).
        sole = set(members) == {config.node.id}
        own = {config.node.id: config.node.client_addr} if sole else {}
        bootstrap = bootstrap_membership(members, own)
        mailbox = Mailbox(config.raft.event_queue)
        # Off the loop: it reads and hashes the latest snapshot file (hundreds of MiB).
        snap_dir = snapshot_dir(config.node.data_dir)
        machine = await trio.to_thread.run_sync(
            functools.partial(
                KvStateMachine,
                kv,
                snap_dir,
                bootstrap=bootstrap,
                busy_timeout_ms=config.storage.busy_timeout_ms,
            )
        )
        if await trio.to_thread.run_sync(remove_backup_leftovers, snap_dir):
            log.info("removed Snapshot RPC copies left behind by a crash from %s", snap_dir)
        snapshot_io_timeout_s = config.transport.send_timeout_ms / 1000
        # The members as of the applied state (changes since the bootstrap included); the
        # engine keeps the transport following them.
        current = machine.membership
        if config.node.id not in current.ids:
            raise StartupError(
                f"node {config.node.id} was removed from the cluster (members at index {current.index}: "
                f"{list(current.ids)}); this data dir cannot rejoin: wipe it and start with --join"
            )
        stored_id = log_store.get_meta(META_CLUSTER_ID)
        the_cluster_id = stored_id.decode("ascii", "replace") if stored_id else cluster_id(members, token)
        replica_stats = ReplicaStats()  # shared by the raft loop and the snapshot receiver
        transport = PeerTransport(
            node_id=config.node.id,
            cluster_id=the_cluster_id,
            listen=split_addr(members.get(config.node.id, config.node.cluster_addr)),
            peers={m.id: split_addr(m.cluster_addr) for m in current.members if m.id != config.node.id},
            on_messages=mailbox.post_messages,
            config=config.transport,
            on_snapshot=SnapshotReceiver(
                machine, mailbox, io_timeout_s=snapshot_io_timeout_s, stats=replica_stats
            ),
            server_tls=tls.peer_server,
            client_tls=tls.peer_client,
            peer_identity=tls.peer_identity,
        )
        consensus = RaftReplica(
            spec=ClusterSpec(
                node_id=config.node.id,
                peers=members,
                client_addr=config.node.client_addr,
                cluster_id=the_cluster_id,
            ),
            raft=config.raft,
            storage=log_store,
            kv=kv,
            mailbox=mailbox,
            transport=transport,
            machine=machine,
            write_all_timeout_s=config.server.write_all_timeout_ms / 1000,
            snapshot_io_timeout_s=snapshot_io_timeout_s,
            stats=replica_stats,
            slow_fsync_s=config.log.slow_fsync_ms / 1000,
        )
        logs.set_term_source(lambda: consensus.engine.term)
        hub = WatchHub(published_revision=kv.revision)
        consensus.subscribe(hub.publish)
        expirer = Expirer(consensus, readers, config.ttl)
        session_clock = SessionClock(consensus, config.sessions, lambda: kv.sessions, expirer.now_ms)
        forwarder = Forwarder(
            connect_timeout_s=config.server.forward_connect_timeout_ms / 1000,
            retry_pause_s=config.server.forward_retry_ms / 1000,
            answer_margin_s=config.server.answer_margin_ms / 1000,
            ssl_context=tls.node_client,
        )
        history = HistoryKeeper(consensus, readers, config.mvcc)
        space = await trio.to_thread.run_sync(
            SpaceKeeper, consensus, kv, log_store, Path(config.node.data_dir), config.storage
        )
        state = NodeState(
            config=config,
            consensus=consensus,
            readers=readers,
            hub=hub,
            expirer=expirer,
            forwarder=forwarder,
            space=space,
        )
        policy = RpcPolicy(
            default_timeout_s=config.server.default_timeout_ms / 1000,
            max_in_flight=config.limits.max_in_flight,
            max_streams=config.limits.max_watches,
            max_message_bytes=config.limits.max_message_bytes,
            metrics=RpcMetrics() if config.metrics.listen_addr else None,
        )
        snapshots = SnapshotStreams(
            kv_path=kv.path,
            directory=snap_dir,
            term_at=functools.partial(_term_at, log_store),
            max_streams=config.limits.max_snapshot_streams,
            stall_timeout_s=config.server.snapshot_stall_timeout_ms / 1000,
            max_message_bytes=config.limits.max_message_bytes,
            busy_timeout_ms=config.storage.busy_timeout_ms,
            cluster_id=the_cluster_id,
        )
        member_manager = MemberManager(
            consensus,
            max_lag_entries=config.server.promote_max_lag_entries,
            auto_promote_interval_s=config.server.auto_promote_interval_ms / 1000,
        )
        health = HealthService()
        services = [
            guarded_service(KvServicer(state), policy),
            guarded_service(ClusterServicer(state, kv, snapshots, member_manager), policy),
            health.service,
        ]
        names = [KV_SERVICE, CLUSTER_SERVICE, "grpc.health.v1.Health"]
        services += reflection_services(names)
        host, port = split_addr(config.node.client_addr)
        server_tls = (
            ServerTls(tls.client_port, config.limits.handshake_timeout_ms / 1000)
            if tls.client_port is not None
            else None
        )

        metrics = _metrics_endpoint(config, consensus, transport, policy, hub, space, kv)

        async with trio.open_nursery() as nursery:
            if metrics is not None:  # first: a taken port stops the node before anything runs
                await nursery.start(
                    functools.partial(
                        serve_metrics,
                        metrics,
                        *split_addr(config.metrics.listen_addr),
                        health_interval_s=config.server.health_interval_ms / 1000,
                    )
                )
            await nursery.start(transport.run)
            await nursery.start(consensus.run)
            await nursery.start(state.forwarder.run)
            nursery.start_soon(expirer.run)
            nursery.start_soon(session_clock.run)
            nursery.start_soon(history.run)
            nursery.start_soon(space.run)
            if config.node.auto_promote:
                nursery.start_soon(
                    functools.partial(auto_promote, config, consensus.membership, ssl_context=tls.node_client)
                )
            nursery.start_soon(member_manager.run)
            bound = await nursery.start(
                functools.partial(
                    serve_grpc,
                    services,
                    host,
                    port,
                    max_message_bytes=config.limits.max_message_bytes,
                    tls=server_tls,
                    limits=ConnectionLimits(
                        max_concurrent_streams=config.limits.max_concurrent_streams,
                        handshake_timeout_s=config.limits.handshake_timeout_ms / 1000,
                        max_connections=config.limits.max_connections,
                        idle_timeout_s=config.limits.idle_timeout_ms / 1000,
                        connection_buffer_bytes=config.limits.connection_buffer_bytes,
                        message_timeout_s=config.limits.message_timeout_ms / 1000,
                    ),
                )
            )
            health_scope = trio.CancelScope()

            async def health_task() -> None:
                with health_scope:
                    await _health_loop(
                        consensus,
                        health,
                        (KV_SERVICE, CLUSTER_SERVICE, ""),
                        config.server.health_interval_ms / 1000,
                    )

            nursery.start_soon(health_task)
            log.info(
                "ggap %s node %d serving on %s:%d (data in %s)",
                __version__,
                config.node.id,
                host,
                bound,
                config.node.data_dir,
            )
            task_status.started(bound)
            await _wait_for_shutdown_signal()
            # A leader that stops hands off first: a rolling restart costs no election.
            await consensus.hand_off_leadership()
            log.info("shutting down: draining in-flight requests")
            health_scope.cancel()
            state.draining = True
            if metrics is not None:
                metrics.health.draining = True
            for name in ("", KV_SERVICE, CLUSTER_SERVICE):
                health.set_status(name, False)
            hub.close_all(Unavailable("node is shutting down"))
            consensus.release_readers()
            with trio.move_on_after(config.server.shutdown_grace_ms / 1000):
                # Polling is fine here: it runs once, for at most the grace period.
                while policy.in_flight > 0:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if readers is not None:
                readers.close()
            await trio.to_thread.run_sync(kv.close)
            await trio.to_thread.run_sync(log_store.close)
        log.info("stopped; storage closed")


def _metrics_endpoint(
    config: Config,
    consensus: RaftReplica,
    transport: PeerTransport,
    policy: RpcPolicy,
    hub: WatchHub,
    space: SpaceKeeper,
    kv: KvStore,
) -> MetricsEndpoint | None:
    """/metrics and /healthz (ggap/server/metrics.py), when metrics.listen_addr is set."""
    cfg = config.metrics
    if not cfg.listen_addr or policy.metrics is None:
        return None
    health = ApplyHealth(
        consensus, stall_s=cfg.health_apply_stall_ms / 1000, max_lag=cfg.health_max_apply_lag
    )
    collector = NodeCollector(
        consensus=consensus,
        transport=transport,
        rpc=policy.metrics,
        policy=policy,
        hub=hub,
        space=space,
        kv_path=kv.path,
        live_keys=lambda: kv.live_keys,
        health=health,
        sessions=lambda: kv.sessions,
    )
    return MetricsEndpoint(collector, health, cfg)


async def _wait_for_shutdown_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            return


def configure_logging(level: str, fmt: str = "text", node_id: int | None = None) -> None:
    logs.configure_logging(level, fmt, node_id=node_id)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run_node(config: Config) -> None:
    """Blocks until SIGINT/SIGTERM. Startup problems exit 2; a crash exits 1, loudly."""
    configure_logging(config.log.level, config.log.format, config.node.id)
    try:
        tracing.setup(
            config.tracing.exporter,
            sampling_ratio=config.tracing.sampling_ratio,
            otlp_endpoint=config.tracing.otlp_endpoint,
            node_id=config.node.id,
            structured_logs=config.log.format == "json",
        )
    except tracing.TracingSetupError as exc:
        log.error("cannot start: %s", exc)
        sys.exit(2)
    try:
        trio.run(serve_node, config)
    except BaseException as exc:
        leaves = _leaves(exc)
        startup = [e for e in leaves if isinstance(e, (StartupError, FailedPrecondition, OSError))]
        if startup:
            log.error("cannot start: %s", startup[0])
            sys.exit(2)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        log.critical("node crashed: %s", "; ".join(repr(e) for e in leaves), exc_info=exc)
        sys.exit(1)
    finally:
        tracing.shutdown()  # export the spans still buffered
