"""The one config model. Every knob lives here with its default; config/default.toml
documents the same values (a test keeps the two equal)."""

from __future__ import annotations

import attrs


@attrs.frozen(slots=True)
class NodeConfig:
    id: int = 1
    client_addr: str = "127.0.0.1:17000"
    cluster_addr: str = "127.0.0.1:17001"
    data_dir: str = "./data"


@attrs.frozen(slots=True)
class LimitsConfig:
    max_key_bytes: int = 4096
    max_value_bytes: int = 1_048_576
    max_txn_ops: int = 128
    # Requests being served at once; past this new ones get RESOURCE_EXHAUSTED.
    max_in_flight: int = 4096
    # Watch streams open at once (counted apart from unary requests).
    max_watches: int = 10_000
    # Largest gRPC message accepted or sent by the client port.
    max_message_bytes: int = 4_194_304


@attrs.frozen(slots=True)
class MvccConfig:
    # Each key keeps at least its newest history_depth versions.
    history_depth: int = 16
    # How often the background pruner runs, and how many keys it visits per pass.
    prune_interval_ms: int = 1000
    prune_batch_keys: int = 512


@attrs.frozen(slots=True)
class StorageConfig:
    # SQLite synchronous mode for the log (what must be durable before an ack).
    log_synchronous: str = "FULL"
    # SQLite synchronous mode for the KV state (rebuilt from the log if lost).
    kv_synchronous: str = "NORMAL"
    # Most commands group-committed in one transaction.
    max_batch: int = 1024
    busy_timeout_ms: int = 5000


@attrs.frozen(slots=True)
class ReadsConfig:
    # Mode used when a request says READ_MODE_UNSPECIFIED.
    default_mode: str = "linearizable"


@attrs.frozen(slots=True)
class TtlConfig:
    # How often the leader looks for keys past their TTL.
    check_interval_ms: int = 100
    max_expire_batch: int = 1000
    # Largest TTL accepted (ms); 0 disables the limit.
    max_ttl_ms: int = 0


@attrs.frozen(slots=True)
class WatchConfig:
    # Events buffered per watcher; a watcher that falls further behind is cancelled.
    buffer_events: int = 4096
    # Events fetched from storage per step while replaying history.
    replay_batch: int = 512
    # An idle watch gets an empty progress response this often (also detects gone clients).
    progress_interval_ms: int = 5000


@attrs.frozen(slots=True)
class ServerConfig:
    # Deadline applied when a request carries none.
    default_timeout_ms: int = 10_000
    # How long WRITE_QUORUM_ALL waits for every voter.
    write_all_timeout_ms: int = 5000
    # On SIGINT/SIGTERM: how long in-flight requests get to finish.
    shutdown_grace_ms: int = 3000


@attrs.frozen(slots=True)
class RaftConfig:
    # Initial voters' cluster addresses, "1=host:port,2=host:port,3=host:port" (this node
    # included), like etcd's --initial-cluster. Empty: a cluster of one.
    peers: str = ""
    # Wall-clock length of one Raft tick; timeouts below count ticks.
    tick_ms: int = 100
    # A follower campaigns after a randomised [election_tick, 2*election_tick) ticks of silence.
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    # Unacknowledged appends in flight per follower.
    max_inflight_msgs: int = 256
    # Applied log entries kept behind the applied index (older ones are compacted away).
    log_retain: int = 100_000


@attrs.frozen(slots=True)
class LogConfig:
    level: str = "info"


@attrs.frozen(slots=True)
class Config:
    node: NodeConfig = NodeConfig()
    limits: LimitsConfig = LimitsConfig()
    mvcc: MvccConfig = MvccConfig()
    storage: StorageConfig = StorageConfig()
    reads: ReadsConfig = ReadsConfig()
    ttl: TtlConfig = TtlConfig()
    watch: WatchConfig = WatchConfig()
    server: ServerConfig = ServerConfig()
    raft: RaftConfig = RaftConfig()
    log: LogConfig = LogConfig()
