"""Exactly-once writes through a real grpcio client against a real 3-node cluster.

A write carries `ggap-session: <id>:<seq>:<lowest_unacked>` metadata; sending it again
(as a client does after a timeout or a cut connection) must be answered with the first
result and never applied twice, on whichever node it arrives, through either forwarding
path, and across a leader kill. Without the metadata the same retry applies twice: that
is what the session table prevents.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import FAST_RAFT_ENV, NOT_SERVED, Cluster, wait_until

pytestmark = pytest.mark.slow

T = 5.0
_ids = itertools.count(1)

SESSION_ENV = {
    **FAST_RAFT_ENV,
    "GINNUNGAGAP_SESSIONS__IDLE_TIMEOUT_MS": "4000",
    "GINNUNGAGAP_SESSIONS__CLOCK_INTERVAL_MS": "100",
    "GINNUNGAGAP_SESSIONS__MAX": "16",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("sessions"), proxied=False, env=SESSION_ENV)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def healthy(cluster: Cluster) -> Iterator[Cluster]:
    cluster.restore()
    cluster.wait_converged(timeout=20.0)
    yield cluster


def fresh(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


def stamp(session: int, seq: int, low: int | None = None) -> list[tuple[str, str]]:
    return [("ggap-session", f"{session}:{seq}:{low if low is not None else seq}")]


def open_session(c: Cluster, i: int) -> int:
    resp = c.kv(i).OpenSession(pb.OpenSessionRequest(), timeout=T)
    assert resp.session_id > 0 and resp.idle_timeout_ms == 4000
    return int(resp.session_id)


def incr_txn(key: str, current: bytes | None) -> pb.TxnRequest:
    """Increment a decimal counter by compare-and-swap."""
    if current is None:
        cmp = pb.Compare(key=key, target=pb.COMPARE_TARGET_EXISTS, op=pb.COMPARE_OP_EQUAL, number=0)
        new = b"1"
    else:
        cmp = pb.Compare(key=key, target=pb.COMPARE_TARGET_VALUE, op=pb.COMPARE_OP_EQUAL, value=current)
        new = str(int(current) + 1).encode()
    return pb.TxnRequest(compare=[cmp], success=[pb.TxnOp(put=pb.PutRequest(key=key, value=new))])


def value(c: Cluster, key: str) -> bytes | None:
    resp = c.get(c.leader(), key)
    return resp.kv.value if resp.found else None


def test_a_retried_write_applies_once_on_every_node_and_path(healthy: Cluster) -> None:
    c = healthy
    leader = c.leader()
    follower = next(i for i in c.ids if i != leader)
    sid = open_session(c, follower)
    key = fresh("once")
    first = c.kv(leader).Txn(incr_txn(key, None), metadata=stamp(sid, 1), timeout=T)
    assert first.succeeded
    # The "lost answer" retries: at the leader, at a follower (inside Raft), and as a TTL
    # write would go (a gRPC forward): the same answer, and the counter moved once.
    for i in (leader, follower):
        again = c.kv(i).Txn(incr_txn(key, None), metadata=stamp(sid, 1), timeout=T)
        assert again.succeeded and again.header.revision == first.header.revision
    assert value(c, key) == b"1"
    put = pb.PutRequest(key=fresh("ttl"), value=b"x", ttl_ms=60_000)
    p1 = c.kv(follower).Put(put, metadata=stamp(sid, 2, 1), timeout=T)
    p2 = c.kv(follower).Put(put, metadata=stamp(sid, 2, 1), timeout=T)
    assert p1.header.revision == p2.header.revision
    # Without a session the same retry increments twice (what the table prevents) ...
    key2 = fresh("twice")
    c.kv(leader).Put(pb.PutRequest(key=key2, value=b"1"), timeout=T)
    c.kv(leader).Txn(incr_txn(key2, b"1"), timeout=T)
    put_plain = pb.PutRequest(key=key2, value=b"x")
    r1 = c.kv(leader).Put(put_plain, timeout=T)
    r2 = c.kv(leader).Put(put_plain, timeout=T)
    assert r2.header.revision == r1.header.revision + 1
    # ... and an acknowledged number is refused, not applied again.
    c.kv(leader).Put(pb.PutRequest(key=key, value=b"9"), metadata=stamp(sid, 3, 3), timeout=T)
    with pytest.raises(grpc.RpcError) as err:
        c.kv(leader).Txn(incr_txn(key, None), metadata=stamp(sid, 1, 1), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "acknowledged already" in (err.value.details() or "")


def test_bad_session_metadata_and_unknown_sessions_are_refused(healthy: Cluster) -> None:
    c = healthy
    kv = c.kv(c.leader())
    key = fresh("bad")
    for bad in ("1", "a:b:c", "1:2:3", "0:1:1", "1:0:0", "1:1:1:1", "99999999999999999999:1:1"):
        with pytest.raises(grpc.RpcError) as err:
            kv.Put(pb.PutRequest(key=key, value=b"v"), metadata=[("ggap-session", bad)], timeout=T)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    with pytest.raises(grpc.RpcError) as err:
        kv.Put(pb.PutRequest(key=key, value=b"v"), metadata=stamp(10**12, 1), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "ggap-reason=SESSION_EXPIRED" in (err.value.details() or "")
    assert not c.get(c.leader(), key).found


def test_idle_sessions_expire_and_closed_ones_are_gone(healthy: Cluster) -> None:
    c = healthy
    leader = c.leader()
    idle = open_session(c, leader)
    busy = open_session(c, leader)
    key = fresh("expire")
    # The idle session's only write (seq 1) is retried as if unanswered: it is answered from
    # the table while the session lives, and refused once it expired.
    c.kv(leader).Put(pb.PutRequest(key=key, value=b"v"), metadata=stamp(idle, 1), timeout=T)
    busy_seq = itertools.count(1)

    def busy_write() -> None:
        c.kv(leader).Put(pb.PutRequest(key=key, value=b"w"), metadata=stamp(busy, next(busy_seq)), timeout=T)

    # Any write of a session, a retry included, counts as activity: leave the idle one alone
    # for longer than the idle timeout (4 s of log time) while the busy one keeps writing.
    for _ in range(6):
        time.sleep(1.0)
        busy_write()
    assert _expired(c, leader, idle, key)
    busy_write()  # the busy one lived through it
    closed = c.kv(leader).CloseSession(pb.CloseSessionRequest(session_id=busy), timeout=T)
    assert closed.closed
    assert not c.kv(leader).CloseSession(pb.CloseSessionRequest(session_id=busy), timeout=T).closed
    with pytest.raises(grpc.RpcError) as err:
        c.kv(leader).Put(pb.PutRequest(key=key, value=b"w"), metadata=stamp(busy, 2, 1), timeout=T)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _expired(c: Cluster, i: int, session: int, key: str) -> bool:
    try:
        c.kv(i).Put(pb.PutRequest(key=key, value=b"v"), metadata=stamp(session, 1), timeout=T)
    except grpc.RpcError as exc:
        return exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    return False


def test_cas_counter_is_exact_across_a_leader_kill(healthy: Cluster) -> None:
    """Each worker increments by CAS through its own session, retrying an unanswered
    attempt with the same number on the next node; the counter ends equal to the number
    of increments the workers saw succeed."""
    c = healthy
    key = fresh("counter")
    succeeded = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[str] = []

    def worker(w: int) -> None:
        nodes = itertools.cycle(c.ids[w % 3 :] + c.ids[: w % 3])
        node = next(nodes)
        sid = wait_until(lambda: _try_open(c, node), 20.0, "a session")
        seq = 0
        while not stop.is_set():
            seq += 1
            # Read, then CAS; the read is linearizable, so the CAS fails only on a race.
            current: tuple[bytes | None] | None = None
            for _attempt in range(200):
                try:
                    current = _try_value(c, node, key)
                    break
                except grpc.RpcError:
                    node = next(nodes)
            if current is None:
                errors.append("no node answered a read")
                return
            txn = incr_txn(key, current[0])
            for _attempt in range(200):
                try:
                    resp = c.kv(node).Txn(txn, metadata=stamp(sid, seq), timeout=2.0)
                except grpc.RpcError as exc:
                    if exc.code() in NOT_SERVED:
                        node = next(nodes)
                        continue
                    errors.append(f"{exc.code()}: {exc.details()}")
                    return
                if resp.succeeded:
                    with lock:
                        succeeded[0] += 1
                break
            else:
                errors.append("no node answered")
                return

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    killed = 0
    try:
        wait_until(lambda: succeeded[0] >= 20, 30.0, "some increments")
        killed = c.leader()
        c.kill(killed)
        c.wait_leader(ids=[i for i in c.ids if i != killed], timeout=20.0)
        before = succeeded[0]
        wait_until(lambda: succeeded[0] >= before + 20, 30.0, "increments after the kill")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    survivors = [i for i in c.ids if i != killed]
    final = wait_until(lambda: _try_value(c, c.wait_leader(ids=survivors), key), 20.0, "the final value")[0]
    assert final is not None and int(final) == succeeded[0]


def _try_open(c: Cluster, i: int) -> int:
    return int(c.kv(i).OpenSession(pb.OpenSessionRequest(), timeout=2.0).session_id)


def _try_value(c: Cluster, i: int, key: str) -> tuple[bytes | None]:
    """A linearizable read of `key` at node i, as a 1-tuple (so "missing" is truthy)."""
    resp = c.get(i, key, timeout=2.0)
    return (resp.kv.value if resp.found else None,)
