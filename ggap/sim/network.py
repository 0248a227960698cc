"""SimNetwork: a per-path priority queue of messages ordered by delivery time.

Faults (all drawn from the network's own RNG, itself derived from the seed): loss,
duplication (the copy arrives late, like a replayed packet), random delay (which also
reorders), path clogging (a path stalls and then delivers its backlog), bounded path
capacity (a random queued packet is dropped on overflow), and partitions, symmetric or
one-way. Partitions are applied at delivery time, so packets in flight when a partition
starts are lost too.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter

from ggap.consensus.raft.types import Message
from ggap.sim.config import SimConfig

Path = tuple[int, int]


class SimNetwork:
    def __init__(self, cfg: SimConfig, ids: tuple[int, ...], rng: random.Random) -> None:
        self.cfg = cfg
        self.ids = ids
        self.rng = rng
        self.faulty = True  # loss/duplication/clogging on (off in the liveness phase)
        self._paths: dict[Path, list[tuple[int, int, Message]]] = {(a, b): [] for a in ids for b in ids}
        self._seq = 0
        self._clogged: dict[Path, int] = {}  # path -> clogged until (ms)
        self.blocked: set[Path] = set()  # (from, to) pairs cut by the current partition
        self.stats: Counter[str] = Counter()

    # --- sending ---

    def send(self, msg: Message, now: int) -> None:
        path = (msg.frm, msg.to)
        q = self._paths.get(path)
        if q is None:
            self.stats["unroutable"] += 1
            return
        self.stats["sent"] += 1
        if self.faulty and self.cfg.loss and self.rng.random() < self.cfg.loss:
            self.stats["lost"] += 1
            return
        self._enqueue(path, q, msg, now + self._delay())
        if self.faulty and self.cfg.duplicate and self.rng.random() < self.cfg.duplicate:
            self.stats["duplicated"] += 1
            extra = int(self.rng.expovariate(1.0 / self.cfg.replay_mean_ms))
            self._enqueue(path, q, msg, now + self._delay() + extra)

    def _delay(self) -> int:
        return self.cfg.delay_min_ms + int(self.rng.expovariate(1.0 / self.cfg.delay_mean_ms))

    def _enqueue(self, path: Path, q: list[tuple[int, int, Message]], msg: Message, at: int) -> None:
        if len(q) >= self.cfg.path_capacity:
            # Over capacity: drop a random queued packet (VOPR), keeping the heap valid.
            victim = self.rng.randrange(len(q))
            q[victim] = q[-1]
            q.pop()
            heapq.heapify(q)
            self.stats["overflow"] += 1
        self._seq += 1
        heapq.heappush(q, (at, self._seq, msg))

    # --- delivery ---

    def next_time(self) -> int | None:
        """Earliest time some message can be delivered (clogged paths wait)."""
        best: int | None = None
        clogged = self._clogged
        for path, q in self._paths.items():
            if q:
                t = q[0][0]
                c = clogged.get(path)
                if c is not None and c > t:
                    t = c
                if best is None or t < best:
                    best = t
        return best

    def pop_due(self, now: int) -> list[Message]:
        """Every message deliverable at `now`, in (delivery time, send order)."""
        due: list[tuple[int, int, Message]] = []
        for path, q in self._paths.items():
            if not q or q[0][0] > now:
                continue
            c = self._clogged.get(path)
            if c is not None:
                if c > now:
                    continue
                del self._clogged[path]
            cut = path in self.blocked
            while q and q[0][0] <= now:
                item = heapq.heappop(q)
                if cut:
                    self.stats["partitioned"] += 1
                else:
                    due.append(item)
        due.sort(key=lambda it: (it[0], it[1]))
        self.stats["delivered"] += len(due)
        return [m for _, _, m in due]

    # --- faults ---

    def fault_tick(self, now: int) -> list[str]:
        """Once per global tick in the safety phase: maybe clog paths, maybe (un)partition."""
        events: list[str] = []
        cfg, rng = self.cfg, self.rng
        if cfg.clog_probability:
            for path in self._paths:
                if path[0] != path[1] and rng.random() < cfg.clog_probability:
                    until = now + int(rng.expovariate(1.0 / cfg.clog_mean_ms))
                    self._clogged[path] = max(until, self._clogged.get(path, 0))
                    events.append(f"clog {path[0]}->{path[1]} until {until}")
        if cfg.partition_mode == "none" or len(self.ids) < 2:
            return events
        if not self.blocked:
            if rng.random() < cfg.partition_probability:
                events.append(self._partition())
        elif rng.random() < cfg.unpartition_probability:
            self.blocked.clear()
            events.append("heal partition")
        return events

    def _partition(self) -> str:
        cfg, rng, ids = self.cfg, self.rng, self.ids
        if cfg.partition_mode == "isolate-one":
            side = {rng.choice(ids)}
        elif cfg.partition_mode == "random-halves":
            side = set(rng.sample(ids, rng.randint(1, len(ids) // 2)))
        else:  # uniform: every node picks a side independently
            side = {i for i in ids if rng.random() < 0.5}
            if not side or len(side) == len(ids):
                side = {rng.choice(ids)}
        other = [i for i in ids if i not in side]
        for a in side:
            for b in other:
                if cfg.partition_symmetric:
                    self.blocked.add((a, b))
                    self.blocked.add((b, a))
                elif rng.random() < 0.5:
                    self.blocked.add((a, b))
                else:
                    self.blocked.add((b, a))
        kind = "symmetric" if cfg.partition_symmetric else "one-way"
        return f"partition {kind} {sorted(side)} | {other} cut={sorted(self.blocked)}"

    def heal(self) -> None:
        """Liveness phase: no partitions, no clogs, no loss or duplication from now on."""
        self.blocked.clear()
        self._clogged.clear()
        self.faulty = False

    def in_flight(self) -> int:
        return sum(len(q) for q in self._paths.values())
