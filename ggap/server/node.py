"""Node assembly: one nursery owns every long-lived task.

    run_node(config)                  process entry: logging, signals, exit status
      serve_node(config)              opens storage, then in one nursery:
        consensus.run                 the commit loop (owns the writer thread)
        expirer.run / prune loop      leader-side TTL expiry, local history pruning
        serve_grpc                    the client port (KvService, ClusterService,
                                      health, reflection)
        shutdown on SIGINT/SIGTERM    drain in-flight requests, then cancel the nursery

Any task that crashes takes the nursery, and so the node, down with it: no zombies.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from ggap import __version__
from ggap.config import Config
from ggap.config.peers import parse_peers, split_addr
from ggap.consensus import Consensus, LocalConsensus
from ggap.consensus.raft_driver import ClusterSpec, RaftConsensus
from ggap.rpc import HealthService, RpcPolicy, guarded_service, reflection_services, serve_grpc
from ggap.server.cluster_service import ClusterServicer
from ggap.server.kv_service import KvServicer, NodeState
from ggap.server.reads import ReaderPool
from ggap.server.ttl import Expirer
from ggap.server.watch import WatchHub
from ggap.storage import KvStore, LogStore
from ggap.types import FailedPrecondition, Unavailable

log = logging.getLogger(__name__)

KV_SERVICE = "ginnungagap.v1.KvService"
CLUSTER_SERVICE = "ginnungagap.v1.ClusterService"


class StartupError(Exception):
    """The node cannot start with this configuration or data dir (exit status 2)."""


def _open_storage(config: Config) -> tuple[KvStore, LogStore, dict[int, str]]:
    """Open both databases and settle the membership: what the data dir remembers wins,
    flags that contradict it are refused (never silently used)."""
    data_dir = Path(config.node.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_store = LogStore.open(data_dir / "raft.db", config.storage)
    try:
        stored = log_store.get_meta("node_id")
        if stored is None:
            log_store.set_meta("node_id", str(config.node.id).encode())
        elif int(stored) != config.node.id:
            raise StartupError(
                f"data dir {data_dir} belongs to node {int(stored)}, not node {config.node.id}"
            )
        peers = _settle_members(log_store, parse_peers(config.raft.peers), data_dir)
        kv = KvStore.open(data_dir / "kv.db", mvcc=config.mvcc, storage=config.storage)
    except BaseException:
        log_store.close()
        raise
    return kv, log_store, peers


def _settle_members(log_store: LogStore, flags: dict[int, str], data_dir: Path) -> dict[int, str]:
    raw = log_store.get_meta("members")
    if raw is None:
        if flags:
            log_store.set_meta("members", json.dumps(flags, sort_keys=True).encode())
        return flags
    stored = {int(k): v for k, v in json.loads(raw).items()}
    if flags and flags != stored:
        raise StartupError(
            f"data dir {data_dir} was bootstrapped with peers {_peers_text(stored)}; "
            f"--peers {_peers_text(flags)} contradicts it "
            "(start without --peers to use the stored membership)"
        )
    return stored


def _peers_text(peers: dict[int, str]) -> str:
    return ",".join(f"{i}={a}" for i, a in sorted(peers.items()))


def cluster_id(peers: dict[int, str]) -> str:
    """Every member of one initial cluster derives the same id; peers of another are refused.

    Only the member ids count, not the addresses: each node may reach the others through
    different addresses (NAT, proxies), so their --peers strings can legitimately differ."""
    ids = ",".join(str(i) for i in sorted(peers))
    return "ggap-" + hashlib.sha256(ids.encode()).hexdigest()[:16]


async def _health_loop(consensus: Consensus, health: HealthService, names: Sequence[str]) -> None:
    """Serving = this node knows a leader (API.md)."""
    serving: bool | None = None
    while True:
        now = consensus.role().leader_id != 0
        if now != serving:
            serving = now
            for name in names:
                health.set_status(name, now)
        await trio.sleep(0.1)


async def _prune_loop(consensus: Consensus, kv: KvStore, config: Config) -> None:
    interval = config.mvcc.prune_interval_ms / 1000
    while True:
        await trio.sleep(interval)
        pruned = await consensus.maintain(lambda: kv.prune(config.mvcc.prune_batch_keys))
        if pruned:
            log.debug("pruned %d old versions", pruned)


async def serve_node(
    config: Config, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run a node until cancelled or signalled; `task_status` gets the bound client port."""
    kv, log_store, peers = await trio.to_thread.run_sync(_open_storage, config)
    readers: ReaderPool | None = None
    try:
        readers = ReaderPool(kv)
        consensus: LocalConsensus | RaftConsensus
        if peers:
            consensus = RaftConsensus(
                spec=ClusterSpec(
                    node_id=config.node.id,
                    peers=peers,
                    client_addr=config.node.client_addr,
                    cluster_id=cluster_id(peers),
                ),
                raft=config.raft,
                log_store=log_store,
                kv=kv,
                write_all_timeout_s=config.server.write_all_timeout_ms / 1000,
            )
        else:
            consensus = LocalConsensus(
                member_id=config.node.id, log_store=log_store, kv=kv, max_batch=config.storage.max_batch
            )
        hub = WatchHub(published_revision=kv.revision)
        consensus.subscribe(hub.publish)
        expirer = Expirer(consensus, readers, config.ttl)
        state = NodeState(config=config, consensus=consensus, readers=readers, hub=hub, expirer=expirer)
        policy = RpcPolicy(
            default_timeout_s=config.server.default_timeout_ms / 1000,
            max_in_flight=config.limits.max_in_flight,
            max_streams=config.limits.max_watches,
            max_message_bytes=config.limits.max_message_bytes,
        )
        health = HealthService()
        services = [
            guarded_service(KvServicer(state), policy),
            guarded_service(ClusterServicer(state, kv), policy),
            health.service,
        ]
        names = [KV_SERVICE, CLUSTER_SERVICE, "grpc.health.v1.Health"]
        services += reflection_services(names)
        host, port = split_addr(config.node.client_addr)

        async with trio.open_nursery() as nursery:
            await nursery.start(consensus.run)
            await nursery.start(state.forwarder.run)
            nursery.start_soon(expirer.run)
            nursery.start_soon(_prune_loop, consensus, kv, config)
            bound = await nursery.start(
                functools.partial(
                    serve_grpc, services, host, port, max_message_bytes=config.limits.max_message_bytes
                )
            )
            health_scope = trio.CancelScope()

            async def health_task() -> None:
                with health_scope:
                    await _health_loop(consensus, health, (KV_SERVICE, CLUSTER_SERVICE, ""))

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
            log.info("shutting down: draining in-flight requests")
            health_scope.cancel()
            state.draining = True
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


async def _wait_for_shutdown_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            return


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def run_node(config: Config) -> None:
    """Blocks until SIGINT/SIGTERM. Startup problems exit 2; a crash exits 1, loudly."""
    configure_logging(config.log.level)
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
