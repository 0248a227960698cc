"""Chaos: concurrent clients against a 3-node cluster while nodes crash, hang and get
partitioned; afterwards the cluster must converge to identical data on every node and the
recorded client history must be linearizable (ggap/testing/lincheck.py).

Clients (grpcio, one channel per client and node) pick a random node and a random key from a
small set and do puts, linearizable gets, deletes and compare-and-swap Txns (compare on the
value, or on mod_revision when the client knows which revision wrote the value it expects;
success: put). Every written value is unique, so a value names exactly one write. Outcomes:
an answer is recorded as completed; UNAVAILABLE, DEADLINE_EXCEEDED or anything else that may
come after the request was sent is an unknown outcome (may or may not have taken effect);
definite refusals (INVALID_ARGUMENT, ...) are left out of the history.

A fault thread, for CHAOS_SECONDS, picks faults at random from a seeded RNG: kill -9 and
restart, SIGSTOP/SIGCONT, isolating a node, a random 1|2 partition, a one-way link. The seed
is printed (rerun with GGAP_CHAOS_SEED=<seed>), and so is the fault log.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from ggap.testing.lincheck import HistoryRecorder, OpKind, check
from tests.cluster import LIN, Cluster, assert_same_data

pytestmark = pytest.mark.slow

CHAOS_SECONDS = float(os.environ.get("GGAP_CHAOS_SECONDS", "25"))
CLIENTS = 4
KEYS = [f"chaos/k{i}" for i in range(5)]
OP_DEADLINE = 2.0
CHECK_BUDGET_S = 90.0

#: Refusals the server guarantees happen before anything is proposed.
DEFINITE_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class FaultLog:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        with self._lock:
            self.lines.append(f"{time.monotonic() - self.t0:7.2f}s  {text}")


class Client(threading.Thread):
    """One client: random ops on random nodes, each recorded before it is sent."""

    def __init__(
        self,
        cid: int,
        cluster: Cluster,
        recorder: HistoryRecorder,
        stop: threading.Event,
        seed: int,
        revisions: dict[bytes, int],
    ) -> None:
        super().__init__(name=f"chaos-client-{cid}", daemon=True)
        self.cid = cid
        self.cluster = cluster
        self.recorder = recorder
        self.stop_event = stop
        self.rng = random.Random(seed)
        self.stubs = {i: kv_pb2_grpc.KvServiceStub(n.new_channel()) for i, n in cluster.nodes.items()}
        # value -> the mod_revision that wrote it (values are unique, so this is a fact),
        # shared between clients; filled from read answers.
        self.revisions = revisions
        self.seen: dict[str, bytes | None] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.error: BaseException | None = None
        self._n = 0

    def _value(self) -> bytes:
        self._n += 1
        return f"c{self.cid}-{self._n}".encode()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                self.one_op()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def one_op(self) -> None:
        rng = self.rng
        node = rng.choice(self.cluster.ids)
        kv = self.stubs[node]
        key = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.35:
            value = self._value()
            self._do(
                OpKind.PUT,
                key,
                (value,),
                lambda: kv.Put(pb.PutRequest(key=key, value=value), timeout=OP_DEADLINE),
                lambda r: None,
            )
        elif roll < 0.70:
            self._do(
                OpKind.GET,
                key,
                (),
                lambda: kv.Get(pb.GetRequest(key=key, read_mode=LIN), timeout=OP_DEADLINE),
                self._get_result(key),
            )
        elif roll < 0.75:
            self._do(
                OpKind.DELETE,
                key,
                (),
                lambda: kv.Delete(pb.DeleteRequest(key=key), timeout=OP_DEADLINE),
                lambda r: bool(r.deleted),
            )
        else:
            expected = self.seen.get(key) if rng.random() < 0.8 else rng.choice([None, *self.seen.values()])
            new = self._value()
            compare = self._compare(key, expected)
            txn = pb.TxnRequest(compare=[compare], success=[pb.TxnOp(put=pb.PutRequest(key=key, value=new))])
            self._do(
                OpKind.CAS,
                key,
                (expected, new),
                lambda: kv.Txn(txn, timeout=OP_DEADLINE),
                lambda r: bool(r.succeeded),
            )

    def _compare(self, key: str, expected: bytes | None) -> pb.Compare:
        rev = 0 if expected is None else self.revisions.get(expected)
        if rev is not None and self.rng.random() < 0.5:
            # mod_revision == rev  <=>  the key holds exactly the write of `expected`
            # (0: the key is missing).
            return pb.Compare(
                key=key, target=pb.COMPARE_TARGET_MOD_REVISION, op=pb.COMPARE_OP_EQUAL, number=rev
            )
        if expected is None:
            return pb.Compare(key=key, target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_EQUAL, number=0)
        return pb.Compare(key=key, target=pb.COMPARE_TARGET_VALUE, op=pb.COMPARE_OP_EQUAL, value=expected)

    def _get_result(self, key: str) -> Callable[[pb.GetResponse], bytes | None]:
        def result(resp: pb.GetResponse) -> bytes | None:
            if not resp.found:
                self.seen[key] = None
                return None
            value = bytes(resp.kv.value)
            self.seen[key] = value
            self.revisions.setdefault(value, int(resp.kv.mod_revision))
            return value

        return result

    def _do(
        self,
        kind: OpKind,
        key: str,
        args: tuple[Any, ...],
        call: Callable[[], Any],
        result: Callable[[Any], Any],
    ) -> None:
        op = self.recorder.invoke(self.cid, key, kind, args)
        try:
            resp = call()
        except grpc.RpcError as err:
            code = err.code()
            self.counts[f"{kind} {code.name}"] += 1
            if code in DEFINITE_REFUSALS:
                self.recorder.discard(op)
            else:
                self.recorder.timeout(op)
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    self.counts[f"unexpected {code.name}: {err.details()}"] += 1
            return
        self.recorder.complete(op, result(resp))
        self.counts[f"{kind} ok"] += 1


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
    recorder = HistoryRecorder()
    stop_clients = threading.Event()
    stop_faults = threading.Event()
    revisions: dict[bytes, int] = {}
    clients = [Client(i, c, recorder, stop_clients, rng.randrange(2**32), revisions) for i in range(CLIENTS)]
    fault_error: list[BaseException] = []

    def faults() -> None:
        try:
            fault_loop(c, random.Random(rng.randrange(2**32)), stop_faults, log, t0 + CHAOS_SECONDS)
        except BaseException as exc:
            fault_error.append(exc)
            log(f"fault thread failed: {exc!r}")

    fault_thread = threading.Thread(target=faults, name="chaos-faults", daemon=True)
    try:
        for client in clients:
            client.start()
        fault_thread.start()
        fault_thread.join(CHAOS_SECONDS + 30)
    finally:
        stop_faults.set()
        stop_clients.set()
        fault_thread.join(30)
        for client in clients:
            client.join(OP_DEADLINE + 10)
        print("fault log:\n" + "\n".join(log.lines))
    assert not fault_thread.is_alive() and not fault_error, fault_error
    for client in clients:
        assert not client.is_alive(), f"{client.name} did not stop"
        assert client.error is None, f"{client.name} crashed: {client.error!r}"

    # Liveness: everything healed and running, one leader, every node at the same applied
    # index and with identical data.
    c.restore(timeout=30)
    log("restored: every node running, every link healed")
    # Liveness: every node takes a write again (recorded: it is part of the history).
    for i in c.ids:
        key, value = KEYS[i % len(KEYS)], f"final-{i}".encode()
        op = recorder.invoke(100 + i, key, OpKind.PUT, (value,))
        c.put(i, key, value, timeout=10.0)
        recorder.complete(op)
    data = assert_same_data(c, timeout=30)

    # The final state, read linearizably on every node, closes the history (and must be
    # what the eventual reads above found).
    for i in c.ids:
        for key in KEYS:
            op = recorder.invoke(100 + i, key, OpKind.GET)
            resp = c.get(i, key, timeout=5.0)
            got = bytes(resp.kv.value) if resp.found else None
            recorder.complete(op, got)
            assert got == (data[key][0] if key in data else None), (i, key, got, data.get(key))

    history = recorder.history()
    counts: collections.Counter[str] = collections.Counter()
    for client in clients:
        counts.update(client.counts)
    pending = sum(op.pending for op in history)
    print(f"history: {len(history)} ops ({pending} with unknown outcome)")
    print(f"per kind/outcome: {dict(sorted(counts.items()))}")
    result = check(history, timeout_s=CHECK_BUDGET_S)
    print(f"lincheck: {result.explain()}")
    assert result.ok, result.explain(context=20)
    # Codes outside the error table (INTERNAL, ...) and refusals the workload never earns.
    unexpected = {k: v for k, v in counts.items() if k.startswith("unexpected") or "INVALID_ARGUMENT" in k}
    assert not unexpected, f"errors the workload should never cause: {unexpected}"
    assert counts["put ok"] + counts["cas ok"] > 0 and counts["get ok"] > 0, counts
