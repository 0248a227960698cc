"""The simulation loop: N RawNodes, a network, disks, clients, all in one thread.

Time is an integer count of simulated milliseconds and only moves when the loop jumps to
the next event (a timer or a message delivery). One *step* handles everything due at one
instant: deliver messages, fire timers (ticks, write completions, crashes, restarts, client
timeouts), then let every node drive its RawNode until it blocks. Invariants are checked as
events happen and again after every step.

A run has two phases (TigerBeetle's VOPR):

1. safety: faults on (loss, duplication, delay, clogging, partitions, crashes, torn writes)
   for `safety_ticks` ticks, with clients issuing operations throughout;
2. liveness: heal the network, restart every node, stop faults and new client operations.
   Within `liveness_timeouts` election timeouts a leader must emerge; then every key is
   read with a linearizable get, and all nodes must converge to the same applied state;
   finally the whole client history must be linearizable.
"""

from __future__ import annotations

import hashlib
import heapq
import random
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

import attrs

from ggap.consensus.raft.types import ConfChange, ConfChangeType, Role
from ggap.replica.engine import ReplicaEngine
from ggap.sim.bugs import ENGINE_BUGS
from ggap.sim.client import SimClient
from ggap.sim.config import SimConfig
from ggap.sim.invariants import Invariants, InvariantViolation
from ggap.sim.kv import Command, KVStateMachine
from ggap.sim.members import MemberSchedule
from ggap.sim.network import SimNetwork
from ggap.sim.node import SimNode
from ggap.testing.lincheck import Operation, OpKind, check

FULL_CHECK_EVERY = 2000  # steps between from-scratch cross-checks of all durable logs
LINCHECK_MAX_STEPS = 2_000_000  # per key; deterministic budget


class LivenessFailure(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


@attrs.frozen
class SimResult:
    seed: int
    ok: bool
    failure: str | None  # invariant / check name
    detail: str
    phase: str
    step: int
    now_ms: int
    trace_hash: str  # over the --log=short trace ("" when tracing was off)
    digest: str  # over the final history and logs: cheap determinism fingerprint
    stats: dict[str, int]
    wall_s: float
    replay: str


class Simulator:
    def __init__(
        self, cfg: SimConfig, *, log: TextIO | None = None, trace: bool = False, tail: int = 0
    ) -> None:
        """`log` gets the --log=short trace; `trace` hashes it without printing; `tail` keeps
        that many last trace lines for the failure report."""
        self.cfg = cfg
        net_seed, disk_seed, node_seed, fault_seed, client_seed = cfg.streams
        self.net_rng = random.Random(net_seed)
        self.disk_rng = random.Random(disk_seed)
        self.node_rng = random.Random(node_seed)
        self.fault_rng = random.Random(fault_seed)

        self.ids = tuple(range(1, cfg.nodes + 1))  # the bootstrap voters
        # Spare ids start outside the cluster; the membership schedule adds them.
        spares = tuple(range(cfg.nodes + 1, cfg.nodes + 1 + (cfg.spares if cfg.member_probability else 0)))
        self.all_ids = self.ids + spares
        self.now = 0
        self.steps = 0
        self.phase = "safety"
        self.faulty = True
        self.clients_running = True
        self._timers: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.log = log
        self.tracing = trace or tail > 0 or log is not None
        self.tail: deque[str] = deque(maxlen=tail)
        self._hash = hashlib.sha256()

        self.members = MemberSchedule(self, spares, random.Random(cfg.members_seed))
        self.inv = Invariants(self.ids, self._model_change)
        # The production engine, or a planted-bug subclass of it.
        self.engine_class: type[ReplicaEngine] = ENGINE_BUGS.get(cfg.plant_bug or "", ReplicaEngine)
        # Snapshot data "in flight": (sender, index) -> the sender's checkpoint at that index.
        self.snapshot_data: dict[tuple[int, int], KVStateMachine] = {}
        self.net = SimNetwork(cfg, self.all_ids, self.net_rng)
        self.nodes = {i: SimNode(self, i) for i in self.all_ids}
        crng = random.Random(client_seed)
        self.clients = [
            SimClient(self, c, random.Random(crng.getrandbits(64))) for c in range(1, cfg.clients + 1)
        ]
        self.checker = SimClient(self, cfg.clients + 1, random.Random(crng.getrandbits(64)), persistent=True)
        self.history: list[Operation] = []
        self.history_reqs: list[int] = []  # request id of each history entry
        self.acked_writes: list[tuple[int, int, str, str]] = []
        self.last_acked: dict[str, str | None] = {}
        # (client, req) -> (time, result) of the first application anywhere: ground truth that
        # resolves writes whose client timed out (see resolve_history).
        self.first_applied: dict[tuple[int, int], tuple[int, object]] = {}

    # --- scheduling and tracing ---

    def schedule(self, at: int, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, fn, args))

    def trace(self, node: SimNode | None, text: str) -> None:
        if not self.tracing:
            return
        line = f"{self.now:>8} {node.short() if node else '':<36} {text}"
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.tail.append(line)
        if self.log is not None:
            print(line, file=self.log)

    def record(self, op: Operation, req: int) -> None:
        self.history.append(op)
        self.history_reqs.append(req)

    # --- faults ---

    def _model_change(self, cc: ConfChange, index: int) -> None:
        if cc.type is ConfChangeType.REMOVE:
            self.members.on_applied_removal(cc.node_id, index)
        elif cc.type is ConfChangeType.ADD_LEARNER:
            self.members.joined(cc.node_id)

    def crash_node(self, node_id: int, incarnation: int, why: str) -> None:
        node = self.nodes[node_id]
        if not node.up or node.incarnation != incarnation or not self.faulty or node.retired:
            return
        node.crash(why)
        delay = 1 + int(self.fault_rng.expovariate(1.0 / self.cfg.restart_mean_ms))
        self.schedule(self.now + delay, self._restart, node_id, node.incarnation)

    def _restart(self, node_id: int, incarnation: int) -> None:
        node = self.nodes[node_id]
        if not node.up and node.incarnation == incarnation and not node.retired:
            node.start()

    def _session_clock(self) -> None:
        """The leader enters its clock (simulated time) into the log while sessions exist,
        as ggap.server.sessions does with the wall clock."""
        cfg = self.cfg
        clock = Command(0, 0, "clock", "", f"{self.now}.{cfg.session_idle_ms}")
        for node in self.nodes.values():
            if node.up and node.role == Role.LEADER and len(node.kv.sessions):
                node.submit_write(clock, lambda _r: None, lambda _why: None)
        self.schedule(self.now + cfg.session_clock_ms, self._session_clock)

    def session_protocol_error(self, detail: str) -> None:
        """A correct client never sees its session refuse for a reason other than "gone"."""
        raise InvariantViolation("session-protocol", detail)

    def _fault_tick(self) -> None:
        if not self.faulty:
            return
        for ev in self.net.fault_tick(self.now):
            self.trace(None, ev)
        if self.cfg.crash_probability:
            for node in self.nodes.values():
                # Spare nodes draw from a stream of their own: the others' faults stay put.
                rng = self.fault_rng if node.id in self.ids else self.members.crash_rng
                if node.up and rng.random() < self.cfg.crash_probability:
                    self.crash_node(node.id, node.incarnation, "random")
        if self.cfg.transfer_probability and self.fault_rng.random() < self.cfg.transfer_probability:
            leaders = [n for n in self.nodes.values() if n.up and n.role == Role.LEADER]
            if leaders:
                self.fault_rng.choice(leaders).submit_transfer(self.fault_rng.choice(self.ids))
        self.schedule(self.now + self.cfg.tick_ms, self._fault_tick)

    # --- the loop ---

    def run_until(self, end: int, done: Callable[[], bool] | None = None) -> bool:
        """Step until `done()` holds (True) or simulated time passes `end` (False)."""
        timers, net, nodes = self._timers, self.net, list(self.nodes.values())
        while True:
            t = timers[0][0] if timers else None
            nt = net.next_time()
            if nt is not None and (t is None or nt < t):
                t = nt
            if t is None or t > end:
                self.now = max(self.now, end)
                return False
            # Overdue work (a healed clog's backlog) runs now: time never goes backwards.
            t = max(t, self.now)
            self.now = t
            if nt is not None and nt <= t:
                by_id = self.nodes
                for m in net.pop_due(t):
                    by_id[m.to].deliver(m)
            while timers and timers[0][0] <= t:
                _, _, fn, args = heapq.heappop(timers)
                fn(*args)
            for node in nodes:
                node.drive()
            self.steps += 1
            self._check_step()
            if done is not None and done():
                return True

    def _check_step(self) -> None:
        """After every step: current leaders are unique per term and are voters of their
        applied configuration; periodic full log check."""
        seen: dict[int, int] = {}
        for node in self.nodes.values():
            if node.up and node.role == Role.LEADER:
                other = seen.setdefault(node.term, node.id)
                if other != node.id:
                    raise InvariantViolation(
                        "election-safety", f"n{other} and n{node.id} are both leader of t{node.term}"
                    )
            engine = node.engine
            if engine is not None and engine.node.role is Role.LEADER:
                term = engine.node.term
                self.inv.leader_is_voter(node.id, term, engine.membership.voters, "applied membership")
                self.inv.leader_is_voter(node.id, term, engine.node.conf_state.voters, "core")
        if self.steps % FULL_CHECK_EVERY == 0:
            self.check_durable_logs()

    def check_durable_logs(self) -> None:
        self.inv.check_durable_logs(
            (
                n.id,
                *n.storage.durable_compacted(),
                n.storage.durable_entries(),
            )
            for n in self.nodes.values()
        )

    # --- phases ---

    def run(self) -> SimResult:
        started = time.perf_counter()
        failure: str | None = None
        detail = ""
        try:
            for node in self.nodes.values():
                node.start()
            for c in self.clients:
                c.start()
            self.members.start()
            self.schedule(self.cfg.tick_ms, self._fault_tick)
            self.schedule(self.cfg.session_clock_ms, self._session_clock)
            self.run_until(self.cfg.safety_ticks * self.cfg.tick_ms)
            self.check_durable_logs()
            self._liveness()
        except InvariantViolation as e:
            failure, detail = e.name, f"{e.detail}\n{self.explain()}"
        except LivenessFailure as e:
            failure, detail = e.name, e.detail
        except Exception as e:  # a crash of the core (or of the simulator) is a failure too
            failure = "exception"
            detail = f"{type(e).__name__}: {e}\n{traceback.format_exc()}{self.explain()}"
        digest = self._digest()
        return SimResult(
            seed=self.cfg.seed,
            ok=failure is None,
            failure=failure,
            detail=detail,
            phase=self.phase,
            step=self.steps,
            now_ms=self.now,
            trace_hash=self._hash.hexdigest() if self.tracing else "",
            digest=digest,
            stats=self.stats(),
            wall_s=time.perf_counter() - started,
            replay=self.cfg.replay_command(),
        )

    def _liveness(self) -> None:
        cfg = self.cfg
        self.phase = "liveness"
        self.faulty = False
        self.clients_running = False
        self.net.heal()
        self.trace(None, "LIVENESS: heal network, restart all nodes, stop faults and new ops")
        for node in self.nodes.values():
            if not node.up and not node.retired and node.incarnation > 0:
                node.start()
        bound = cfg.liveness_timeouts * cfg.election_tick * cfg.tick_ms

        if not self.run_until(self.now + bound, self._leader_elected):
            raise LivenessFailure(
                "no-leader", f"no stable leader within {bound}ms after healing\n{self.explain()}"
            )

        # In-flight client operations finish or give up on their own (bounded by their retries).
        drain = cfg.request_timeout_ms * (cfg.max_attempts + 1) + 4 * cfg.tick_ms * cfg.max_attempts
        if not self.run_until(self.now + drain, lambda: all(c.idle for c in self.clients)):
            raise LivenessFailure("clients-stuck", f"client operations still open after {drain}ms")

        touched = sorted({op.key for op in self.history} | set(self.last_acked))
        self.checker.queue = list(touched)
        self.checker.start()
        if not self.run_until(self.now + bound, lambda: self.checker.idle and not self.checker.queue):
            raise LivenessFailure(
                "read-after-heal",
                f"linearizable reads of {touched} not done within {bound}ms\n{self.explain()}",
            )
        if not self.run_until(self.now + bound, self._converged):
            raise LivenessFailure(
                "no-convergence", f"nodes did not converge within {bound}ms\n{self.explain()}"
            )
        self.check_durable_logs()

        for client, req, kind, key in self.acked_writes:
            for node in self._members():
                if (client, req) not in node.kv.applied_cmds:
                    raise LivenessFailure(
                        "acked-write-lost",
                        f"c{client} request {req} ({kind} {key}) was acknowledged but n{node.id} "
                        f"never applied it (applied={node.kv.applied})",
                    )
        res = check(self.resolve_history(), max_steps=LINCHECK_MAX_STEPS)
        if not res.ok:
            name = "linearizability-unknown" if res.unknown else "linearizability"
            raise LivenessFailure(name, res.explain())
        self.phase = "done"

    def resolve_history(self) -> list[Operation]:
        """The client history with timed-out writes resolved by what the cluster really did.

        A client never learns the fate of a timed-out write, but the simulator does. A write
        never applied anywhere by the end had no effect before any recorded operation ended:
        leave it out. One that was applied committed before its first application: that time
        bounds its linearization point from above, and its result is the state machine's.
        This is sound for a correct cluster and keeps the checker's search small; the safety
        invariants separately guarantee that every node applied the same thing."""
        out: list[Operation] = []
        for op, req in zip(self.history, self.history_reqs, strict=True):
            if op.pending and op.kind is not OpKind.GET:
                fate = self.first_applied.get((op.client, req))
                if fate is None:
                    continue
                at, result = fate
                op = Operation(op.client, op.key, op.kind, op.args, op.call, float(at), result)
            out.append(op)
        return out

    def client_targets(self) -> tuple[int, ...]:
        """The nodes a client may ask: every node started and not known removed (a client
        learns of added and removed members from the cluster's member list)."""
        if len(self.all_ids) == len(self.ids) or self.members.stats["proposed"] == 0:
            return self.ids  # no membership change yet: the draws of a run without them
        removed = self.members.removed
        return tuple(n.id for n in self.nodes.values() if n.incarnation > 0 and n.id not in removed)

    def _leader(self) -> SimNode | None:
        leaders = [n for n in self.nodes.values() if n.up and n.role == Role.LEADER]
        return leaders[0] if len(leaders) == 1 else None

    def _members(self) -> list[SimNode]:
        """The nodes of the final configuration: the model's, as of the last applied index."""
        _, conf = self.inv.conf_at(len(self.inv.applied) - 1)
        return [self.nodes[i] for i in (*conf.voters, *conf.learners)]

    def _leader_elected(self) -> bool:
        leader = self._leader()
        if leader is None or leader.engine is None:
            return False
        members = [self.nodes[i] for i in leader.engine.membership.ids]
        return all(n.up and n.leader == leader.id for n in members)

    def _converged(self) -> bool:
        leader = self._leader()
        if leader is None or leader.engine is None:
            return False
        last = leader.storage.last_index()
        data = leader.kv.data
        membership = leader.engine.membership
        members = self._members()
        return membership.ids == tuple(sorted(n.id for n in members)) and all(
            n.up
            and n.persisting is None
            and n.engine is not None
            and n.engine.membership == membership
            and n.kv.applied == last
            and n.storage.last_index() == last
            and n.kv.data == data
            for n in members
        )

    # --- reporting ---

    def explain(self) -> str:
        lines = [f"  at t={self.now}ms step {self.steps}, phase {self.phase}:"]
        lines += [f"    {n.status_line()}" for n in self.nodes.values() if n.incarnation > 0]
        _, conf = self.inv.conf_at(len(self.inv.applied) - 1)
        lines.append(f"    configuration: voters={conf.voters} learners={conf.learners}")
        lines.append(f"    network: {self.net.in_flight()} in flight, cut={sorted(self.net.blocked)}")
        return "\n".join(lines)

    def stats(self) -> dict[str, int]:
        s = {
            "steps": self.steps,
            "sim_ms": self.now,
            "leaders": len(self.inv.leaders),
            "max_term": max(self.inv.leaders, default=0),
            "committed": self.inv.known_commit(),
            "crashes": sum(n.crashes for n in self.nodes.values()),
            "readies": sum(n.readies for n in self.nodes.values()),
            "snapshots_taken": sum(n.snapshots_taken for n in self.nodes.values()),
            "compactions": sum(n.compactions for n in self.nodes.values()),
            "snapshots_installed": sum(n.snapshots_installed for n in self.nodes.values()),
            "ops": len(self.history),
            "ops_unknown": sum(op.pending for op in self.history),
            "acked_writes": len(self.acked_writes),
            "conf_changes": len(self.inv.confs) - 1,
            "forwarded_applied": sum(n.forwarded.applied for n in self.nodes.values()),
            "forwarded_refused": sum(n.forwarded.refused for n in self.nodes.values()),
            "forwarded_unknown": sum(n.forwarded.unknown for n in self.nodes.values()),
            "sessions_reopened": sum(c.reopened for c in self.clients),
        }
        s.update({f"members_{k}": v for k, v in self.members.stats.items()})
        s.update({f"net_{k}": v for k, v in sorted(self.net.stats.items())})
        return s

    def _digest(self) -> str:
        h = hashlib.sha256()
        for op in self.history:
            h.update(repr((op.client, op.key, str(op.kind), op.args, op.call, op.ret, op.result)).encode())
        for n in self.nodes.values():
            h.update(repr([(e.index, e.term, e.data) for e in n.storage.durable_entries()]).encode())
        h.update(repr((self.steps, self.now)).encode())
        return h.hexdigest()[:16]


def run_seed(
    seed: int,
    *,
    nodes: int | None = None,
    ticks: int | None = None,
    plant_bug: str | None = None,
    log: TextIO | None = None,
    trace: bool = False,
) -> SimResult:
    """Run one seed end to end and return its result (never raises for a failed check)."""
    cfg = SimConfig.from_seed(seed, nodes=nodes, ticks=ticks, plant_bug=plant_bug)
    return Simulator(cfg, log=log, trace=trace).run()
