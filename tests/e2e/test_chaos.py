"""Chaos: concurrent clients against a 3-node cluster while nodes crash, hang and get
partitioned; afterwards the cluster must converge to identical data on every node and the
recorded client history must be linearizable (ggap/testing/lincheck.py).

The clients are tests/load.py's `Load` without retries (each attempt stands alone): random
nodes, a few keys, puts, linearizable gets, deletes and compare-and-swap Txns, every written
value unique, unknown outcomes recorded as such.

A fault thread, for CHAOS_SECONDS, picks faults at random from a seeded RNG: kill -9 and
restart, SIGSTOP/SIGCONT, isolating a node, a random 1|2 partition, a one-way link. The seed
is printed (rerun with GGAP_CHAOS_SEED=<seed>), and so is the fault log.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator

import pytest

from ggap.testing.lincheck import OpKind
from tests.cluster import Cluster, assert_same_data
from tests.load import TEST_CLIENT_BASE, Load

pytestmark = pytest.mark.slow

CHAOS_SECONDS = float(os.environ.get("GGAP_CHAOS_SECONDS", "25"))
CLIENTS = 4
KEYS = [f"chaos/k{i}" for i in range(5)]
OP_DEADLINE = 2.0
CHECK_BUDGET_S = 90.0


class FaultLog:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self.lines.append(f"{time.monotonic() - self.t0:7.2f}s  {text}")


def current_leader(cluster: Cluster) -> int | None:
    """The node that says it leads (quick look, may be None or stale: only used for aim)."""
    for i, st in cluster.statuses(timeout=0.3).items():
        if st is not None and st.role == "leader":
            return i
    return None


def fault_loop(
    cluster: Cluster, rng: random.Random, stop: threading.Event, log: FaultLog, until: float
) -> None:
    """Faults one after another, each held for a random while, then undone. Half of them aim
    at the current leader; "no_quorum" kills one node and stops another at the same time."""
    links = cluster.links
    assert links is not None
    ids = cluster.ids

    def hold(lo: float, hi: float) -> None:
        stop.wait(rng.uniform(lo, hi))

    while time.monotonic() < until and not stop.is_set():
        fault = rng.choice(["kill", "kill", "pause", "pause", "isolate", "partition", "one_way", "no_quorum"])
        leader = current_leader(cluster) if rng.random() < 0.5 else None
        victim = leader if leader is not None else rng.choice(ids)
        rest = [i for i in ids if i != victim]
        who = f"node {victim}" + (" (leader)" if victim == leader else "")
        if fault == "kill":
            cluster.kill(victim)
            log(f"kill -9 {who}")
            hold(0.5, 2.5)
            cluster.start_node(victim, wait=False)
            log(f"restart node {victim}")
        elif fault == "pause":
            cluster.pause(victim)
            log(f"SIGSTOP {who}")
            hold(0.5, 2.5)
            cluster.resume(victim)
            log(f"SIGCONT node {victim}")
        elif fault == "no_quorum":
            other = rng.choice(rest)
            cluster.kill(victim)
            cluster.pause(other)
            log(f"kill -9 {who} and SIGSTOP node {other}: no quorum")
            hold(0.5, 1.5)
            cluster.resume(other)
            cluster.start_node(victim, wait=False)
            log(f"SIGCONT node {other}, restart node {victim}")
        elif fault == "isolate":
            links.isolate(victim)
            log(f"isolate {who}")
            hold(1.0, 3.0)
            links.heal()
            log("heal")
        elif fault == "partition":
            links.partition([victim], rest)
            if rng.random() < 0.3:  # plus a flaky link inside the majority, now and then
                a, b = rng.sample(rest, 2)
                links.one_way(a, b)
                log(f"partition {who} | {rest}, and one-way {a}->{b} dropped")
            else:
                log(f"partition {who} | {rest}")
            hold(1.0, 3.0)
            links.heal()
            log("heal")
        else:
            to = rng.choice(rest)
            if rng.random() < 0.5:
                links.one_way(victim, to)
                log(f"one-way: {who} -> node {to} dropped")
            else:
                links.one_way(to, victim)
                log(f"one-way: node {to} -> {who} dropped")
            hold(1.0, 3.0)
            links.heal()
            log("heal")
        hold(0.3, 1.0)


@pytest.fixture
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("chaos"), proxied=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_chaos_linearizable_and_convergent(chaos_cluster: Cluster) -> None:
    c = chaos_cluster
    seed = int(os.environ.get("GGAP_CHAOS_SEED", random.randrange(2**32)))
    print(f"\nchaos seed {seed} (rerun with GGAP_CHAOS_SEED={seed}), {CHAOS_SECONDS:g}s of faults")
    rng = random.Random(seed)
    t0 = time.monotonic()
    log = FaultLog(t0)
    nodes = list(c.nodes.values())
    load = Load(
        lambda: nodes,
        clients=CLIENTS,
        keys=KEYS,
        seed=rng.randrange(2**32),
        retry_for=0.0,
        op_deadline=OP_DEADLINE,
        pause_s=0.0,
    )
    stop_faults = threading.Event()
    fault_error: list[BaseException] = []

    def faults() -> None:
        try:
            fault_loop(c, random.Random(rng.randrange(2**32)), stop_faults, log, t0 + CHAOS_SECONDS)
        except BaseException as exc:
            fault_error.append(exc)
            log(f"fault thread failed: {exc!r}")

    fault_thread = threading.Thread(target=faults, name="chaos-faults", daemon=True)
    try:
        load.start()
        fault_thread.start()
        fault_thread.join(CHAOS_SECONDS + 30)
    finally:
        stop_faults.set()
        fault_thread.join(30)
        load.stop()
        print("fault log:\n" + "\n".join(log.lines))
    assert not fault_thread.is_alive() and not fault_error, fault_error

    # Liveness: everything healed and running, one leader, every node at the same applied
    # index and with identical data.
    c.restore(timeout=30)
    log("restored: every node running, every link healed")
    # Liveness: every node takes a write again (recorded: it is part of the history).
    recorder = load.recorder
    for i in c.ids:
        key, value = KEYS[i % len(KEYS)], f"final-{i}".encode()
        op = recorder.invoke(TEST_CLIENT_BASE + i, key, OpKind.PUT, (value,))
        c.put(i, key, value, timeout=10.0)
        recorder.complete(op)
    data = assert_same_data(c, timeout=30)

    # The final state, read linearizably on every node, closes the history (and must be
    # what the eventual reads above found).
    for i in c.ids:
        for key in KEYS:
            op = recorder.invoke(TEST_CLIENT_BASE + i, key, OpKind.GET)
            resp = c.get(i, key, timeout=5.0)
            got = bytes(resp.kv.value) if resp.found else None
            recorder.complete(op, got)
            assert got == (data[key][0] if key in data else None), (i, key, got, data.get(key))

    load.check(CHECK_BUDGET_S)
    assert not load.unexpected, f"errors the workload should never cause: {load.unexpected}"
    counts = load.counts
    assert counts["put ok"] + counts["cas ok"] > 0 and counts["get ok"] > 0, counts
