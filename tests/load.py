"""Client load for multi-process tests, recorded for the linearizability checker.

`Load` runs a few client threads (grpcio, one channel per client and node) that do puts,
linearizable gets, deletes and compare-and-swap Txns on a small set of keys, against
whichever nodes `nodes()` returns at the time (a test that adds or removes members changes
what it returns). Every attempt is one operation in a `HistoryRecorder` history
(ggap/testing/lincheck.py):

- every written value is unique, so a value names exactly one write (a retried write is a
  new operation with a new value, never the same value twice);
- an answer is a completed operation; UNAVAILABLE, DEADLINE_EXCEEDED or anything else that
  may come after the request was sent is an unknown outcome (it may or may not have taken
  effect); definite refusals (INVALID_ARGUMENT, ...) are left out of the history.

With `retry_for > 0` a client treats each of its requests as one logical request: it retries
UNAVAILABLE and DEADLINE_EXCEEDED on the next node (a short pause in between) until
`retry_for` seconds have passed since the first attempt, and counts the requests that still
failed (`Load.failures`). With `retry_for = 0` (the chaos test) every attempt stands alone.

Compare-and-swap compares on the value, or on mod_revision when the client knows which
revision wrote the value it expects (shared `revisions`, filled from read answers).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from ggap.testing.lincheck import CheckResult, HistoryRecorder, OpKind, check
from tests.cluster import LIN, NOT_SERVED
from tests.procs import NodeProcess

#: Refusals the server guarantees happen before anything is proposed.
DEFINITE_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

#: Client ids at and above this are the test's own operations (`Load.final_reads`).
TEST_CLIENT_BASE = 1000


@dataclass(frozen=True)
class SlowAttempt:
    """An attempt that took at least `Load.slow_s` (where an unavailability window went)."""

    began: float  # monotonic
    took: float
    node: int
    kind: str
    outcome: str  # "ok" or the status code's name

    def describe(self, t0: float) -> str:
        return (
            f"+{self.began - t0:.3f}s {self.kind} on node {self.node}: {self.outcome} after {self.took:.3f}s"
        )


class LoadClient(threading.Thread):
    """One client: random ops on random nodes, each attempt recorded before it is sent."""

    def __init__(self, cid: int, load: Load, seed: int) -> None:
        super().__init__(name=f"load-client-{cid}", daemon=True)
        self.cid = cid
        self.load = load
        self.rng = random.Random(seed)
        self._stubs: dict[int, kv_pb2_grpc.KvServiceStub] = {}  # id(NodeProcess) -> stub
        self.seen: dict[str, bytes | None] = {}
        self.counts: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.write_times: list[float] = []  # when a write was answered (monotonic)
        self.slow: list[SlowAttempt] = []
        self.error: BaseException | None = None
        self._n = 0

    def _stub(self, node: NodeProcess) -> kv_pb2_grpc.KvServiceStub:
        stub = self._stubs.get(id(node))
        if stub is None:
            stub = self._stubs[id(node)] = kv_pb2_grpc.KvServiceStub(node.new_channel())
        return stub

    def _value(self) -> bytes:
        self._n += 1
        return f"c{self.cid}-{self._n}".encode()

    def run(self) -> None:
        try:
            while not self.load.stop_event.is_set():
                self.one_request()
                if self.load.pause_s:
                    self.load.stop_event.wait(self.load.pause_s)
        except BaseException as exc:  # surfaced by Load.stop
            self.error = exc

    def one_request(self) -> None:
        rng = self.rng
        key = rng.choice(self.load.keys)
        roll = rng.random()
        if roll < 0.35:
            self._request(OpKind.PUT, key, self._put_attempt)
        elif roll < 0.70:
            self._request(OpKind.GET, key, self._get_attempt)
        elif roll < 0.75:
            self._request(OpKind.DELETE, key, self._delete_attempt)
        else:
            expected = self.seen.get(key) if rng.random() < 0.8 else rng.choice([None, *self.seen.values()])
            self._request(OpKind.CAS, key, lambda stub, k: self._cas_attempt(stub, k, expected))

    # -- one attempt each: (args for the history, the call, the result for the history) ----

    def _put_attempt(
        self, stub: kv_pb2_grpc.KvServiceStub, key: str
    ) -> tuple[tuple[Any, ...], Callable[[], Any]]:
        value = self._value()
        return (value,), lambda: stub.Put(pb.PutRequest(key=key, value=value), timeout=self.load.op_deadline)

    def _get_attempt(
        self, stub: kv_pb2_grpc.KvServiceStub, key: str
    ) -> tuple[tuple[Any, ...], Callable[[], Any]]:
        return (), lambda: stub.Get(pb.GetRequest(key=key, read_mode=LIN), timeout=self.load.op_deadline)

    def _delete_attempt(
        self, stub: kv_pb2_grpc.KvServiceStub, key: str
    ) -> tuple[tuple[Any, ...], Callable[[], Any]]:
        return (), lambda: stub.Delete(pb.DeleteRequest(key=key), timeout=self.load.op_deadline)

    def _cas_attempt(
        self, stub: kv_pb2_grpc.KvServiceStub, key: str, expected: bytes | None
    ) -> tuple[tuple[Any, ...], Callable[[], Any]]:
        new = self._value()
        txn = pb.TxnRequest(
            compare=[self._compare(key, expected)], success=[pb.TxnOp(put=pb.PutRequest(key=key, value=new))]
        )
        return (expected, new), lambda: stub.Txn(txn, timeout=self.load.op_deadline)

    def _compare(self, key: str, expected: bytes | None) -> pb.Compare:
        rev = 0 if expected is None else self.load.revisions.get(expected)
        if rev is not None and self.rng.random() < 0.5:
            # mod_revision == rev  <=>  the key holds exactly the write of `expected`
            # (0: the key is missing).
            return pb.Compare(
                key=key, target=pb.COMPARE_TARGET_MOD_REVISION, op=pb.COMPARE_OP_EQUAL, number=rev
            )
        if expected is None:
            return pb.Compare(key=key, target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_EQUAL, number=0)
        return pb.Compare(key=key, target=pb.COMPARE_TARGET_VALUE, op=pb.COMPARE_OP_EQUAL, value=expected)

    def _result(self, kind: OpKind, key: str, resp: Any) -> Any:
        if kind is OpKind.GET:
            if not resp.found:
                self.seen[key] = None
                return None
            value = bytes(resp.kv.value)
            self.seen[key] = value
            self.load.revisions.setdefault(value, int(resp.kv.mod_revision))
            return value
        if kind is OpKind.DELETE:
            return bool(resp.deleted)
        if kind is OpKind.CAS:
            return bool(resp.succeeded)
        return None

    def _note(self, began: float, node: NodeProcess, kind: OpKind, outcome: str) -> None:
        took = time.monotonic() - began
        if took >= self.load.slow_s:
            self.slow.append(SlowAttempt(began, took, node.node_id, str(kind), outcome))

    def _request(
        self,
        kind: OpKind,
        key: str,
        attempt: Callable[[kv_pb2_grpc.KvServiceStub, str], tuple[tuple[Any, ...], Callable[[], Any]]],
    ) -> None:
        """One logical request: attempts on random nodes until one is answered, refused for
        good, or `retry_for` has passed (a failure then)."""
        load = self.load
        give_up = time.monotonic() + load.retry_for
        nodes = load.nodes()
        if not nodes:
            load.stop_event.wait(0.05)
            return
        start = self.rng.randrange(len(nodes))
        tries = 0
        while True:
            node = nodes[(start + tries) % len(nodes)]
            tries += 1
            args, call = attempt(self._stub(node), key)
            op = load.recorder.invoke(self.cid, key, kind, args)
            began = time.monotonic()
            try:
                resp = call()
            except grpc.RpcError as err:
                code = err.code()
                self._note(began, node, kind, f"{code.name} ({err.details()})")
                self.counts[f"{kind} {code.name}"] += 1
                if code in DEFINITE_REFUSALS:
                    load.recorder.discard(op)
                    return
                load.recorder.timeout(op)
                if code not in NOT_SERVED:
                    self.counts[f"unexpected {code.name}: {err.details()}"] += 1
                    return
                if load.retry_for <= 0 or load.stop_event.is_set():
                    return
                if time.monotonic() >= give_up:
                    last = f"{code.name}: {err.details()}"
                    self.failures.append(f"{kind} {key!r}: {tries} attempts, last {last}")
                    return
                load.stop_event.wait(load.retry_pause_s)
                nodes = load.nodes() or nodes
                continue
            self._note(began, node, kind, "ok")
            load.recorder.complete(op, self._result(kind, key, resp))
            self.counts[f"{kind} ok"] += 1
            if kind is not OpKind.GET:
                self.write_times.append(time.monotonic())
            return


class Load:
    """`clients` LoadClient threads over `nodes()`; see the module docstring.

    Use `with load:` (or start/stop); after it, `final_reads` closes the history with a
    linearizable read of every key on every given node, and `check` runs the checker."""

    def __init__(
        self,
        nodes: Callable[[], Sequence[NodeProcess]],
        *,
        clients: int = 2,
        keys: Sequence[str] = tuple(f"load/k{i}" for i in range(4)),
        seed: int | None = None,
        retry_for: float = 15.0,
        retry_pause_s: float = 0.05,
        op_deadline: float = 2.0,
        pause_s: float = 0.005,
        slow_s: float = 0.1,
    ) -> None:
        self.nodes = nodes
        self.keys = list(keys)
        self.seed = random.randrange(2**32) if seed is None else seed
        self.retry_for = retry_for
        self.retry_pause_s = retry_pause_s
        self.op_deadline = op_deadline
        self.pause_s = pause_s
        self.slow_s = slow_s
        self.recorder = HistoryRecorder()
        self.stop_event = threading.Event()
        # value -> the mod_revision that wrote it (values are unique, so this is a fact).
        self.revisions: dict[bytes, int] = {}
        rng = random.Random(self.seed)
        self.clients = [LoadClient(i, self, rng.randrange(2**32)) for i in range(clients)]

    def start(self) -> Load:
        for client in self.clients:
            client.start()
        return self

    def stop(self) -> None:
        """Stop every client and wait for it; raises if one crashed or hung."""
        self.stop_event.set()
        for client in self.clients:
            client.join(self.op_deadline + 10)
        for client in self.clients:
            assert not client.is_alive(), f"{client.name} did not stop"
            assert client.error is None, f"{client.name} crashed: {client.error!r}"

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- results -----------------------------------------------------------------------------

    @property
    def counts(self) -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for client in self.clients:
            total.update(client.counts)
        return total

    @property
    def failures(self) -> list[str]:
        """Logical requests that failed although retried for `retry_for` seconds."""
        return [f for client in self.clients for f in client.failures]

    @property
    def unexpected(self) -> dict[str, int]:
        """Codes outside the error table (INTERNAL, ...) and refusals the workload never earns."""
        return {k: v for k, v in self.counts.items() if k.startswith("unexpected") or "INVALID_ARGUMENT" in k}

    def write_times(self) -> list[float]:
        return sorted(t for client in self.clients for t in client.write_times)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest stretch of [start, end] (monotonic) in which no write was answered."""
        times = self.write_times()
        inside = times[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]
        points = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(points))

    def slow_attempts(self, start: float, end: float) -> list[SlowAttempt]:
        """Attempts that took `slow_s` or more and overlap [start, end], by start time."""
        found = [a for c in self.clients for a in c.slow if a.began <= end and a.began + a.took >= start]
        return sorted(found, key=lambda a: a.began)

    def final_reads(self, nodes: Iterable[NodeProcess], timeout: float = 10.0) -> None:
        """A linearizable read of every key on every node, recorded: it closes the history
        (a lost or resurrected write shows up as a violation)."""
        for node in nodes:
            kv = node.kv_stub()
            for key in self.keys:
                op = self.recorder.invoke(TEST_CLIENT_BASE + node.node_id, key, OpKind.GET)
                resp = kv.Get(pb.GetRequest(key=key, read_mode=LIN), timeout=timeout)
                self.recorder.complete(op, bytes(resp.kv.value) if resp.found else None)

    def check(self, budget_s: float = 90.0) -> CheckResult:
        """Print a summary and the checker's verdict; AssertionError unless linearizable."""
        history = self.recorder.history()
        pending = sum(op.pending for op in history)
        print(f"load seed {self.seed}: {len(history)} ops ({pending} with unknown outcome)")
        print(f"per kind/outcome: {dict(sorted(self.counts.items()))}")
        result = check(history, timeout_s=budget_s)
        print(f"lincheck: {result.explain()}")
        assert result.ok, result.explain(context=20)
        return result
