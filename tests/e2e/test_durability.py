"""Crash durability: SIGKILL under concurrent load, restart on the same data dir, and check
that every acknowledged write survived, nothing was invented and no Txn is half-applied.
Also a clean SIGTERM shutdown then restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs
import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 5.0
PUT_WRITERS = 6
TXN_WRITERS = 2
LOAD_SECONDS = 1.5


@attrs.define
class Ledger:
    """What one writer thread tried and what the node acknowledged."""

    acked_puts: dict[str, tuple[bytes, int]] = attrs.Factory(dict)  # key -> (value, revision)
    acked_txns: dict[int, int] = attrs.Factory(dict)  # txn number -> revision
    attempted_puts: dict[str, bytes] = attrs.Factory(dict)
    attempted_txns: list[int] = attrs.Factory(list)
    unknown: int = 0  # writes whose outcome the client never learnt
    errors: list[tuple[float, str]] = attrs.Factory(list)  # (monotonic time, status code)


def put_writer(node: NodeProcess, wid: int, stop: threading.Event, ledger: Ledger) -> None:
    channel = node.new_channel()
    kv = kv_pb2_grpc.KvServiceStub(channel)
    i = 0
    while not stop.is_set():
        key, value = f"p/{wid}/{i:06d}", f"value-{wid}-{i}".encode() * 3
        ledger.attempted_puts[key] = value
        try:
            r = kv.Put(pb.PutRequest(key=key, value=value), timeout=2.0)
        except grpc.RpcError as exc:
            ledger.unknown += 1
            ledger.errors.append((time.monotonic(), exc.code().name))
            return  # the node is gone: stop
        ledger.acked_puts[key] = (value, r.header.revision)
        i += 1


def txn_key(n: int, half: str) -> str:
    return f"t/{n:07d}/{half}"


def txn_writer(node: NodeProcess, wid: int, stop: threading.Event, ledger: Ledger) -> None:
    channel = node.new_channel()
    kv = kv_pb2_grpc.KvServiceStub(channel)
    i = 0
    while not stop.is_set():
        n = wid * 1_000_000 + i
        ledger.attempted_txns.append(n)
        req = pb.TxnRequest(
            compare=[
                pb.Compare(key=txn_key(n, "a"), target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_EQUAL)
            ],
            success=[
                pb.TxnOp(put=pb.PutRequest(key=txn_key(n, "a"), value=str(n).encode())),
                pb.TxnOp(put=pb.PutRequest(key=txn_key(n, "b"), value=str(n).encode())),
            ],
        )
        try:
            r = kv.Txn(req, timeout=2.0)
        except grpc.RpcError as exc:
            ledger.unknown += 1
            ledger.errors.append((time.monotonic(), exc.code().name))
            return
        assert r.succeeded
        ledger.acked_txns[n] = r.header.revision
        i += 1


def scan(kv: kv_pb2_grpc.KvServiceStub, prefix: str) -> dict[str, pb.KeyValue]:
    r = kv.Range(pb.RangeRequest(prefix=prefix), timeout=30)
    assert not r.more and r.count == len(r.kvs)
    return {x.key: x for x in r.kvs}


def test_sigkill_under_load_keeps_every_acknowledged_write(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory()
    stop = threading.Event()
    ledgers = [Ledger() for _ in range(PUT_WRITERS + TXN_WRITERS)]
    threads = [
        threading.Thread(target=put_writer, args=(node, i, stop, ledgers[i]), daemon=True)
        for i in range(PUT_WRITERS)
    ] + [
        threading.Thread(target=txn_writer, args=(node, i, stop, ledgers[PUT_WRITERS + i]), daemon=True)
        for i in range(TXN_WRITERS)
    ]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)
    killed_at = time.monotonic()
    assert node.kill() == -9  # SIGKILL mid-load: a crash, no chance to flush anything
    stop.set()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)

    acked_puts = {k: v for led in ledgers for k, v in led.acked_puts.items()}
    acked_txns = {n: r for led in ledgers for n, r in led.acked_txns.items()}
    attempted_puts = {k: v for led in ledgers for k, v in led.attempted_puts.items()}
    attempted_txns = {n for led in ledgers for n in led.attempted_txns}
    unknown = sum(led.unknown for led in ledgers)
    assert len(acked_puts) > 50 and len(acked_txns) > 10, "the load did not get going"
    # Writers stopped only because of the crash, never because of an error before it.
    errors = [e for led in ledgers for e in led.errors]
    assert all(at >= killed_at for at, _ in errors), errors

    node.restart()
    kv = node.kv_stub()
    puts = scan(kv, "p/")
    txn_kvs = scan(kv, "t/")

    # 1. Every acknowledged write is there, with its exact value and revision.
    for key, (value, rev) in acked_puts.items():
        assert key in puts, f"acknowledged put {key} (revision {rev}) lost"
        assert (puts[key].value, puts[key].mod_revision, puts[key].version) == (value, rev, 1)
    for n, rev in acked_txns.items():
        for half in "ab":
            kv_ = txn_kvs.get(txn_key(n, half))
            assert kv_ is not None, f"acknowledged txn {n} (revision {rev}) lost its {half}"
            assert (kv_.value, kv_.mod_revision) == (str(n).encode(), rev)

    # 2. Nothing invented: only attempted writes, with the values that were sent.
    assert set(puts) <= set(attempted_puts)
    for key, x in puts.items():
        assert x.value == attempted_puts[key]

    # 3. No half-applied Txn: both keys or neither, at one revision.
    present_txns = {int(key.split("/")[1]) for key in txn_kvs}
    assert present_txns <= attempted_txns
    for n in present_txns:
        a, b = txn_kvs.get(txn_key(n, "a")), txn_kvs.get(txn_key(n, "b"))
        assert a is not None and b is not None, f"txn {n} half-applied"
        assert a.mod_revision == b.mod_revision

    # 4. Revisions: one per applied write, nothing skipped or doubled.
    revision = node.cluster_stub().Status(pb.StatusRequest(), timeout=T).revision
    applied = len(puts) + len(present_txns)
    print(
        f"acked: {len(acked_puts)} puts, {len(acked_txns)} txns; unknown: {unknown}; "
        f"applied: {len(puts)} puts, {len(present_txns)} txns; revision {revision}"
    )
    assert revision == applied
    acked = len(acked_puts) + len(acked_txns)
    assert acked <= revision <= acked + unknown
    revs = sorted({x.mod_revision for x in puts.values()} | {x.mod_revision for x in txn_kvs.values()})
    assert revs == list(range(1, revision + 1))

    # 5. The node carries on from there.
    assert kv.Put(pb.PutRequest(key="after", value=b"x"), timeout=T).header.revision == revision + 1


def test_sigterm_then_restart_keeps_everything(node_factory: Callable[..., NodeProcess]) -> None:
    node = node_factory()
    kv = node.kv_stub()
    written = {}
    for i in range(50):
        key, value = f"k/{i:03d}", f"v{i}".encode()
        written[key] = (value, kv.Put(pb.PutRequest(key=key, value=value), timeout=T).header.revision)
    kv.Delete(pb.DeleteRequest(key="k/000"), timeout=T)
    del written["k/000"]
    before = node.cluster_stub().Status(pb.StatusRequest(), timeout=T)
    assert before.revision == 51

    assert node.stop() == 0
    node.restart()
    kv = node.kv_stub()
    after = scan(kv, "k/")
    assert {k: (x.value, x.mod_revision) for k, x in after.items()} == written
    status = node.cluster_stub().Status(pb.StatusRequest(), timeout=T)
    assert status.revision == before.revision
    assert status.applied_index >= before.applied_index
    history = kv.History(pb.HistoryRequest(key="k/000"), timeout=T).versions
    assert [(x.deleted, x.mod_revision) for x in history] == [(True, 51), (False, 1)]
    assert kv.Put(pb.PutRequest(key="k/new", value=b"n"), timeout=T).header.revision == 52
    assert node.stop() == 0
