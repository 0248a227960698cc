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
    # Members to ask (host:port of client ports, comma-separated) when this node joins a
    # running cluster with an empty data dir; "" = bootstrap or restart from the data dir.
    join: str = ""
    # After joining as a learner, ask for promotion to voter once caught up.
    auto_promote: bool = False


@attrs.frozen(slots=True)
class LimitsConfig:
    max_key_bytes: int = 4096
    max_value_bytes: int = 1_048_576
    max_txn_ops: int = 128
    # Requests being served at once; past this new ones get RESOURCE_EXHAUSTED.
    max_in_flight: int = 4096
    # Watch streams open at once (counted apart from unary requests).
    max_watches: int = 10_000
    # Largest request message accepted by the client port (declared or decompressed); a
    # larger one fails that call alone with RESOURCE_EXHAUSTED. Responses may be 4x this.
    max_message_bytes: int = 4_194_304
    # Client connections open at once; more are closed on accept (existing ones unaffected).
    max_connections: int = 1000
    # Streams open at once on one client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    max_concurrent_streams: int = 1024
    # A client connection must complete its TLS handshake (when TLS is on) and then its
    # HTTP/2 preface, and finish any frame it has begun, within this long each; otherwise
    # it is closed.
    handshake_timeout_ms: int = 5000
    # A client connection with no call or watch open for this long is sent GOAWAY and
    # closed (gRPC clients reconnect on their next call). Longer than grpcio's and
    # grpc-go's default client idle timeouts (30 min is grpcio's; they close first when
    # they can), short enough that preface-only and vanished clients free their slot.
    idle_timeout_ms: int = 300_000
    # Bytes one client connection may hold received but not yet read by its handlers
    # (unfinished request messages, mostly); past it, the call holding the largest
    # unfinished message fails with RESOURCE_EXHAUSTED. At least max_message_bytes.
    connection_buffer_bytes: int = 16_777_216
    # A request message must be complete this long after its first byte arrived, or its
    # call fails with DEADLINE_EXCEEDED (a client trickling a frame now and then would hold
    # its buffer and stream slot forever). 4 MiB in 60 s needs 70 KB/s.
    message_timeout_ms: int = 60_000
    # ClusterService.Snapshot streams at once (each holds a full copy of kv.db on disk);
    # more get RESOURCE_EXHAUSTED.
    max_snapshot_streams: int = 2


@attrs.frozen(slots=True)
class MvccConfig:
    """History retention, decided by the leader and replicated (ggap/server/maintenance.py)."""

    # Each key keeps at least its newest history_depth versions (the leader's value rules).
    history_depth: int = 16
    # How often the leader prunes history and checks automatic compaction.
    prune_interval_ms: int = 1000
    # Keys the leader examines per pass, and keys per replicated Prune command.
    prune_scan_keys: int = 4096
    prune_batch_keys: int = 128
    # Automatic compaction: keep the last N revisions (0 = off)...
    auto_compact_revisions: int = 0
    # ...and/or the revisions of the last this many ms (0 = off); either rule compacts.
    auto_compact_interval_ms: int = 3_600_000
    # Largest step of one automatic Compact command, in versions it has to visit.
    compact_step_versions: int = 2000


@attrs.frozen(slots=True)
class StorageConfig:
    # SQLite synchronous mode for the log (what must be durable before an ack).
    log_synchronous: str = "FULL"
    # SQLite synchronous mode for the KV state (rebuilt from the log if lost).
    kv_synchronous: str = "NORMAL"
    busy_timeout_ms: int = 5000
    # Past this many bytes in use (kv.db + raft.db pages holding data), Put and writing Txns
    # get RESOURCE_EXHAUSTED (0 = no quota).
    quota_bytes: int = 2_147_483_648
    # How often a node measures its space and gives free pages back to the file system...
    reclaim_interval_ms: int = 1000
    # ...this many pages per step (one short write transaction each).
    reclaim_pages: int = 1024
    # After a checkpoint, a WAL file larger than this is truncated to it.
    wal_keep_bytes: int = 67_108_864


@attrs.frozen(slots=True)
class ReadsConfig:
    # Mode used when a request says READ_MODE_UNSPECIFIED.
    default_mode: str = "linearizable"
    # Threads running scans (Range, History, watch replay, expiry), each with its own
    # read-only connection; point reads run inline and are not counted here.
    reader_threads: int = 3


@attrs.frozen(slots=True)
class TtlConfig:
    # How often the leader looks for keys past their TTL.
    check_interval_ms: int = 100
    max_expire_batch: int = 1000
    # Largest TTL accepted (ms); 0 disables the limit.
    max_ttl_ms: int = 0


@attrs.frozen(slots=True)
class SessionsConfig:
    """Client sessions (exactly-once writes). The bounds go into the commands the node
    proposes, so a cluster whose nodes disagree on them still applies one rule."""

    # Sessions the state machine keeps; opening one more evicts the least recently active.
    max: int = 10_000
    # Results a session keeps for writes its client has not acknowledged yet.
    max_unacked: int = 1024
    # A session without writes for this long (leader's log time) expires.
    idle_timeout_ms: int = 600_000
    # How often the leader enters its clock into the log while sessions exist.
    clock_interval_ms: int = 5000


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
    # Kept back from a request's deadline so the answer (an error, at worst) reaches the client.
    answer_margin_ms: int = 50
    # How often the node re-checks whether it knows a leader (what grpc.health.v1 reports).
    health_interval_ms: int = 100
    # Bound on dialling the leader's client port to forward a write that reached a follower.
    forward_connect_timeout_ms: int = 1000
    # Pause before retrying a forwarded write the target refused (it was no longer leader).
    forward_retry_ms: int = 50
    # A Snapshot stream whose client has not taken a message for this long counts as
    # stalled: the next Snapshot request that finds no free slot takes its slot and copy.
    snapshot_stall_timeout_ms: int = 30_000
    # How long `ggap node --join` keeps trying to be added and to fetch its snapshot.
    join_timeout_ms: int = 120_000
    # MemberPromote (and auto-promotion) refuses a learner whose match index trails the
    # leader's commit index by more than this many entries (0: it must have all of it).
    promote_max_lag_entries: int = 1000
    # How often a leader checks the learners it was asked to promote once caught up.
    auto_promote_interval_ms: int = 500


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
    # Log entries kept behind the newest snapshot for slow followers.
    log_retain: int = 5000
    # Capacity of the Raft loop's bounded event channel (peer messages, ticks, proposals, reads).
    event_queue: int = 16_384
    # Most events stepped into the core per loop turn before its Ready is handled.
    max_events_per_turn: int = 4096
    # Recent log entries kept in memory (the count bound)...
    entry_cache_entries: int = 4096
    # ...and the bytes bound of their payloads; whichever is reached first evicts.
    entry_cache_bytes: int = 16_777_216
    # Log growth (entries) between snapshots.
    snapshot_entries: int = 10_000
    # Log entries dropped per storage transaction when compacting behind a snapshot.
    compact_step_entries: int = 500


@attrs.frozen(slots=True)
class TransportConfig:
    """The peer (Raft) transport, ggap/transport/peer.py: timeouts, keepalive, backoff, queues."""

    # Bound on opening a TCP connection to a peer.
    connect_timeout_ms: int = 1000
    # Bound on the handshake, on both ends of a new connection.
    handshake_timeout_ms: int = 2000
    # Bound on writing one frame; a peer that stops reading for this long loses its connection.
    send_timeout_ms: int = 2000
    # An idle sender sends an empty frame this often...
    keepalive_interval_ms: int = 1000
    # ...and a receiver closes a connection silent for this long (must exceed keepalive_interval_ms).
    idle_timeout_ms: int = 10_000
    # First delay before reconnecting to a peer; doubles per failure (jittered to [d/2, d])...
    reconnect_backoff_initial_ms: int = 50
    # ...up to this; a successful handshake resets it.
    reconnect_backoff_max_ms: int = 1000
    # Messages queued per peer before new ones are dropped (Raft retransmits).
    queue_messages: int = 4096
    # Estimated encoded bytes queued per peer before new messages are dropped.
    queue_bytes: int = 67_108_864
    # Estimated bytes batched into one frame (one larger message still goes alone).
    max_batch_bytes: int = 4_194_304
    # Largest frame accepted from a peer or sent to one (at most 4294967295).
    max_frame_bytes: int = 67_108_864


@attrs.frozen(slots=True)
class TlsConfig:
    """TLS on the client port (etcd's --cert-file, --key-file, --trusted-ca-file,
    --client-cert-auth); every path empty = plaintext. See README "Running securely"."""

    # PEM certificate chain the client port presents; with key_file, turns TLS on.
    cert_file: str = ""
    # PEM private key of cert_file (unencrypted).
    key_file: str = ""
    # PEM CA bundle: verifies client certificates (with client_cert_auth) and the other
    # nodes' client ports when this node forwards a write, joins or asks for promotion.
    trusted_ca_file: str = ""
    # Require every client to present a certificate chaining to trusted_ca_file.
    # (The TLS handshake is bounded by limits.handshake_timeout_ms.)
    client_cert_auth: bool = False


@attrs.frozen(slots=True)
class PeerTlsConfig:
    """Mutual TLS on the peer port (etcd's --peer-cert-file, --peer-key-file,
    --peer-trusted-ca-file): all three or none; plus etcd's --peer-cert-allowed-cn and
    --peer-cert-allowed-hostname to narrow which of the CA's certificates are peers."""

    # PEM certificate this node presents to peers, as listener and as dialer.
    cert_file: str = ""
    # PEM private key of cert_file (unencrypted).
    key_file: str = ""
    # PEM CA bundle every peer's certificate must chain to (both directions).
    trusted_ca_file: str = ""
    # Comma-separated: a peer's certificate CN must be one of these ("" = any CN).
    allowed_cn: str = ""
    # Comma-separated: one of a peer's DNS/IP SANs must be one of these ("" = any).
    allowed_hostname: str = ""


@attrs.frozen(slots=True)
class MetricsConfig:
    """The HTTP port serving /metrics (Prometheus) and /healthz (ggap/server/metrics.py)."""

    # host:port to serve on ("" = off; port 0 picks a free one).
    listen_addr: str = ""
    # /healthz answers 503 once applying has been stuck this long: the applied index has
    # not moved while behind the commit index, or stayed more than health_max_apply_lag
    # entries behind it.
    health_apply_stall_ms: int = 5000
    health_max_apply_lag: int = 1000
    # A request must arrive whole (and its answer leave) within this long.
    request_timeout_ms: int = 5000
    # Largest request head (request line + headers) read; larger -> 431 and closed.
    max_request_bytes: int = 8192
    # Connections served at once; more are closed on accept.
    max_connections: int = 16
    # A rendered /metrics body is served again for this long (0 = render every scrape):
    # scrapers arriving back to back cost one rendering, on the event loop, per period.
    cache_ms: int = 1000


@attrs.frozen(slots=True)
class LogConfig:
    level: str = "info"
    # "text" (human-readable lines) or "json" (one JSON object per line; README "Logs").
    format: str = "text"
    # A log fsync slower than this is logged (at most once a second, with the duration; 0 = any).
    slow_fsync_ms: int = 100


@attrs.frozen(slots=True)
class TracingConfig:
    """OpenTelemetry tracing (README "Tracing"); "none" costs nothing on the hot path."""

    # "none", "console" (spans as log lines) or "otlp" (needs opentelemetry-exporter-otlp-proto-http).
    exporter: str = "none"
    # Fraction of new traces sampled; a request carrying a traceparent follows its parent's choice.
    sampling_ratio: float = 1.0
    # OTLP/HTTP traces endpoint (exporter = "otlp").
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"


@attrs.frozen(slots=True)
class Config:
    node: NodeConfig = NodeConfig()
    limits: LimitsConfig = LimitsConfig()
    mvcc: MvccConfig = MvccConfig()
    storage: StorageConfig = StorageConfig()
    reads: ReadsConfig = ReadsConfig()
    ttl: TtlConfig = TtlConfig()
    sessions: SessionsConfig = SessionsConfig()
    watch: WatchConfig = WatchConfig()
    server: ServerConfig = ServerConfig()
    raft: RaftConfig = RaftConfig()
    transport: TransportConfig = TransportConfig()
    tls: TlsConfig = TlsConfig()
    peer_tls: PeerTlsConfig = PeerTlsConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    tracing: TracingConfig = TracingConfig()
