"""One seed -> one whole swarm configuration (TigerBeetle VOPR style).

Every knob of a run is drawn here from a single `random.Random(seed)`, so a seed alone
reproduces a run, and a sweep over seeds explores many different fault mixes rather than
one mix many times. Overrides from the command line (nodes, ticks, planted bug) are applied
after all draws, so they never shift the other parameters of a seed.
"""

from __future__ import annotations

import random

import attrs

PLANTED_BUGS = (
    "skip-persist-before-vote",
    "ack-before-commit",
    "stale-read",
    "match-by-index",
    "forward-match-by-seq",
    "refuse-forwards-of-this-term",
    "install-before-log",
    "learner-quorum",
    "membership-wrong-index",
    "skip-core-conf-change",
    "bootstrap-core-config",
)
PARTITION_MODES = ("none", "isolate-one", "random-halves", "uniform")
DEFAULT_TICKS = 1000


@attrs.frozen(slots=True)
class SimConfig:
    seed: int
    nodes: int
    # --- time: integer simulated milliseconds; each node ticks every tick_ms (+-jitter) ---
    tick_ms: int
    tick_jitter_ms: int
    election_tick: int
    heartbeat_tick: int
    pre_vote: bool
    check_quorum: bool
    safety_ticks: int  # length of the safety (faulty) phase, in ticks
    liveness_timeouts: int  # liveness bound, in election timeouts
    # --- network ---
    delay_min_ms: int
    delay_mean_ms: float  # exponential extra on top of delay_min_ms
    loss: float
    duplicate: float
    replay_mean_ms: float  # extra delay of a duplicate: old packets show up late
    clog_probability: float  # per path per tick
    clog_mean_ms: float
    path_capacity: int
    partition_mode: str
    partition_symmetric: bool
    partition_probability: float  # per tick, while healthy
    unpartition_probability: float  # per tick, while partitioned
    # --- storage and crashes ---
    persist_min_ms: int
    persist_max_ms: int
    crash_probability: float  # per node per tick
    crash_in_persist: float  # per synced write: crash somewhere inside its latency window
    crash_in_vote: float  # same, for a write that records a new vote (the riskiest window)
    torn_write: float  # a crash keeps a random prefix of the unsynced writes (else none)
    restart_mean_ms: float
    transfer_probability: float  # per tick: ask the leader to hand leadership to a random voter
    # --- clients ---
    clients: int
    keys: int
    op_mix: tuple[tuple[str, float], ...]
    think_mean_ms: float
    request_timeout_ms: int
    max_attempts: int
    # --- log compaction and snapshots (the engine's Retention) ---
    snapshot_entries: int  # applied entries between snapshots
    log_retain: int  # entries kept behind a snapshot when the log is compacted
    max_lag: int  # a leader keeps entries for followers at most this far behind
    # --- membership (ggap/sim/members.py; drawn after everything above, so they shift nothing) ---
    spares: int  # node ids outside the initial cluster that may join (as learners)
    member_probability: float  # per tick: the operator tries one membership change or transfer
    plant_bug: str | None = None
    # Percent of writes a follower forwards to the leader inside Raft (the rest it refuses
    # with NotLeader, and the client tries another node); drawn after the membership seed.
    forward_percent: int = 0
    # Client sessions (drawn after forward_percent): the table's bound (small ones evict
    # sessions in use) and the idle timeout in log time (short ones expire sessions whose
    # client is between retries); the leader enters its clock every session_clock_ms.
    session_max: int = 1000
    session_max_unacked: int = 4
    session_idle_ms: int = 1_000_000_000
    session_clock_ms: int = 100
    # Seed of the membership schedule's own RNG stream (drawn last of all).
    members_seed: int = attrs.field(default=0, repr=False)
    # Seeds of the per-component RNG streams (network, disk, nodes, faults, clients), drawn
    # last so every component gets its own stream and the knobs above stay put.
    streams: tuple[int, ...] = attrs.field(default=(), repr=False)

    @classmethod
    def from_seed(
        cls,
        seed: int,
        *,
        nodes: int | None = None,
        ticks: int | None = None,
        plant_bug: str | None = None,
    ) -> SimConfig:
        """Draw the whole configuration from `seed` (draw order is part of the replay format)."""
        if plant_bug is not None and plant_bug not in PLANTED_BUGS:
            raise ValueError(f"unknown planted bug {plant_bug!r}; choose from {PLANTED_BUGS}")
        r = random.Random(seed)
        n = r.choice((3, 5))
        tick_ms = r.randint(8, 16)
        election_tick = r.randint(6, 15)
        heartbeat_tick = r.randint(1, max(1, election_tick // 4))
        pre_vote = r.random() < 0.7
        check_quorum = r.random() < 0.7
        delay_min = r.randint(0, 3)
        delay_mean = r.uniform(0.1, 1.5) * tick_ms
        loss = r.choice((0.0, r.uniform(0.0, 0.05), r.uniform(0.05, 0.2)))
        duplicate = r.choice((0.0, r.uniform(0.0, 0.05)))
        replay_mean = r.uniform(1, 20) * tick_ms
        clog_p = r.choice((0.0, r.uniform(0.0, 0.003)))
        clog_mean = r.uniform(1, 10) * tick_ms
        capacity = r.randint(32, 256)
        partition_mode = r.choice(PARTITION_MODES)
        symmetric = r.random() < 0.5
        part_p = r.uniform(0.002, 0.02)
        unpart_p = r.uniform(0.01, 0.1)
        persist_min = r.randint(0, 2)
        persist_max = persist_min + r.randint(1, tick_ms)
        crash_p = r.choice((0.0, r.uniform(0.0005, 0.003)))
        crash_in_persist = r.choice((0.0, r.uniform(0.0, 0.03)))
        crash_in_vote = r.choice((0.0, r.uniform(0.05, 0.5)))
        torn = r.uniform(0.0, 0.5)
        restart_mean = r.uniform(0.5, 30) * tick_ms
        clients = r.randint(1, 5)
        keys = r.randint(1, 5)
        mix = (
            ("put", round(r.uniform(1, 5), 2)),
            ("get", round(r.uniform(1, 5), 2)),
            ("cas", round(r.uniform(0, 3), 2)),
            ("delete", round(r.uniform(0, 1), 2)),
        )
        think = r.uniform(0.5, 8) * tick_ms
        timeout = int(election_tick * tick_ms * r.uniform(2, 4))
        attempts = r.randint(2, 5)
        transfer = r.choice((0.0, r.uniform(0.0, 0.01)))
        streams = tuple(r.getrandbits(64) for _ in range(5))
        snapshot_entries = r.choice((r.randint(3, 20), r.randint(20, 100), 1_000_000))
        log_retain = r.randint(0, 2 * min(snapshot_entries, 100))
        max_lag = r.choice((0, log_retain, 10 * log_retain))
        spares = r.randint(1, 3)
        member_p = r.choice((0.0, r.uniform(0.005, 0.02), r.uniform(0.02, 0.06), r.uniform(0.02, 0.06)))
        members_seed = r.getrandbits(64)
        forward_percent = r.choice((0, 50, 100))
        session_max = r.choice((max(1, clients - 1), clients + 1, 1000))
        session_idle = r.choice((timeout * 2, timeout * 10, 1_000_000_000))
        return cls(
            seed=seed,
            nodes=nodes if nodes is not None else n,
            tick_ms=tick_ms,
            tick_jitter_ms=tick_ms // 4,
            election_tick=election_tick,
            heartbeat_tick=heartbeat_tick,
            pre_vote=pre_vote,
            check_quorum=check_quorum,
            safety_ticks=ticks if ticks is not None else DEFAULT_TICKS,
            liveness_timeouts=20,
            delay_min_ms=delay_min,
            delay_mean_ms=round(delay_mean, 2),
            loss=round(loss, 4),
            duplicate=round(duplicate, 4),
            replay_mean_ms=round(replay_mean, 1),
            clog_probability=round(clog_p, 5),
            clog_mean_ms=round(clog_mean, 1),
            path_capacity=capacity,
            partition_mode=partition_mode,
            partition_symmetric=symmetric,
            partition_probability=round(part_p, 4),
            unpartition_probability=round(unpart_p, 4),
            persist_min_ms=persist_min,
            persist_max_ms=persist_max,
            crash_probability=round(crash_p, 5),
            crash_in_persist=round(crash_in_persist, 4),
            crash_in_vote=round(crash_in_vote, 3),
            torn_write=round(torn, 3),
            restart_mean_ms=round(restart_mean, 1),
            transfer_probability=round(transfer, 4),
            clients=clients,
            keys=keys,
            op_mix=mix,
            think_mean_ms=round(think, 1),
            request_timeout_ms=timeout,
            max_attempts=attempts,
            snapshot_entries=snapshot_entries,
            log_retain=log_retain,
            max_lag=max_lag,
            spares=spares,
            member_probability=round(member_p, 4),
            plant_bug=plant_bug,
            members_seed=members_seed,
            streams=streams,
            forward_percent=forward_percent,
            session_max=session_max,
            session_idle_ms=session_idle,
            session_clock_ms=5 * tick_ms,
        )

    @property
    def quorum(self) -> int:
        return self.nodes // 2 + 1

    def describe(self) -> str:
        """The whole configuration, one `name = value` per line, in field order."""
        return "\n".join(
            f"  {a.name:24} = {getattr(self, a.name)}" for a in attrs.fields(SimConfig) if a.repr
        )

    def replay_command(self, *, short_log: bool = True) -> str:
        """The one-line command that reproduces this exact run."""
        defaults = SimConfig.from_seed(self.seed)
        parts = ["python -m ggap.sim", f"--seed {self.seed}"]
        if self.nodes != defaults.nodes:
            parts.append(f"--nodes {self.nodes}")
        if self.safety_ticks != defaults.safety_ticks:
            parts.append(f"--ticks {self.safety_ticks}")
        if self.plant_bug:
            parts.append(f"--plant-bug {self.plant_bug}")
        if short_log:
            parts.append("--log=short")
        return " ".join(parts)
