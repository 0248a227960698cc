"""A real 3-node cluster under faults: replication basics, leader crash (kill -9) and
restart, SIGSTOPped follower and leader, network partitions and one-way link failures.

What every test holds the cluster to (API.md): a linearizable read answers with every write
acknowledged before it began, or fails with UNAVAILABLE / DEADLINE_EXCEEDED; never a stale
value. A write is acknowledged only once committed. The majority side of a fault keeps (or
elects) a leader and serves reads and writes. After the fault is undone every node converges
to the same applied index, revision and data.

Two module-scoped clusters (20 ms Raft ticks: elections after 200-400 ms of silence):
`direct` for crash/pause tests (peers connect directly) and `proxied`, whose every peer link
goes through a fault-injecting proxy (tests/faultproxy.py) for the partition tests. Client
traffic never goes through the proxies, so a follower that still believes in a leader can
forward a write over the client port around a "partition"; the tests wait until an
isolated follower has noticed it lost the leader before asking it to write. Each test
starts by undoing whatever a failed predecessor left behind (`Cluster.restore`).
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import Future

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from tests.cluster import (
    EVENTUAL,
    LIN,
    NOT_SERVED,
    Cluster,
    assert_same_data,
    expect_not_served,
    wait_until,
)

pytestmark = pytest.mark.slow

#: Client deadline for requests a node must refuse (no leader / no quorum on its side).
REFUSE_DEADLINE = 2.0
#: "A new leader within a few election timeouts" (timeouts are 0.2-0.4 s here): generous.
ELECTION_BOUND = 10.0
CONVERGE_BOUND = 20.0

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    """A key no other test uses."""
    return f"{prefix}/{next(_ids)}"


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def _module_cluster(tmp_path_factory: pytest.TempPathFactory, name: str, proxied: bool) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp(name), proxied=proxied)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def direct_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _module_cluster(tmp_path_factory, "direct", proxied=False)


@pytest.fixture(scope="module")
def proxied_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    yield from _module_cluster(tmp_path_factory, "proxied", proxied=True)


def _healthy(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Undo any fault a previous test left, wait for one leader and convergence; on failure
    print every node's log tail."""
    cluster.restore()
    cluster.wait_converged(timeout=CONVERGE_BOUND)
    yield cluster
    if _failed(request):
        cluster.dump_logs()


@pytest.fixture
def direct(direct_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield from _healthy(direct_cluster, request)


@pytest.fixture
def proxied(proxied_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield from _healthy(proxied_cluster, request)


def others(cluster: Cluster, *exclude: int) -> list[int]:
    return [i for i in cluster.ids if i not in exclude]


def assert_reads(
    cluster: Cluster, ids: list[int], expected: Mapping[str, bytes | None], mode: pb.ReadMode = LIN
) -> None:
    """Every key reads as expected on every node of `ids` (None = missing)."""
    for i in ids:
        for key, value in expected.items():
            resp = cluster.get(i, key, mode=mode)
            got = resp.kv.value if resp.found else None
            assert got == value, f"node {i} read {key!r} = {got!r}, expected {value!r}"


def assert_fresh_or_refused(fut: Future[pb.GetResponse], want: bytes, what: str) -> str:
    """A linearizable Get that raced a leadership change: the latest value or a refusal."""
    try:
        resp = fut.result()
    except grpc.RpcError as err:
        assert err.code() in NOT_SERVED, f"{what}: unexpected {err.code()}: {err.details()}"
        return err.code().name
    got = resp.kv.value if resp.found else None
    assert got == want, f"{what}: STALE linearizable read {got!r}, latest acknowledged value is {want!r}"
    return "fresh"


# -- 1. basics ----------------------------------------------------------------------------


def test_write_on_follower_read_everywhere_quorum_all(direct: Cluster) -> None:
    c = direct
    leader = c.wait_leader()
    f1, f2 = others(c, leader)

    key = fresh("basic")
    rev = c.put(f1, key, b"v1").header.revision
    assert rev > 0
    for i in c.ids:
        resp = c.get(i, key)
        assert resp.found and resp.kv.value == b"v1", f"node {i}: {resp}"
        assert resp.kv.mod_revision == rev and resp.header.revision >= rev

    # WRITE_QUORUM_ALL with every voter up succeeds, and then every node has applied it: even
    # an eventual (local) read on each node sees it at once.
    key_all = fresh("basic-all")
    rev_all = c.put(f2, key_all, b"all", quorum=pb.WRITE_QUORUM_ALL).header.revision
    assert rev_all > rev
    for i in c.ids:
        resp = c.get(i, key_all, mode=EVENTUAL)
        assert resp.found and resp.kv.value == b"all" and resp.kv.mod_revision == rev_all, f"node {i}: {resp}"

    # Status: one leader, every node agrees on it and on the term; same revision once converged.
    c.wait_converged(timeout=CONVERGE_BOUND)
    sts = c.statuses()
    roles = sorted(s.role for s in sts.values())
    assert roles == ["follower", "follower", "leader"], sts
    assert {s.leader_id for s in sts.values()} == {leader}
    assert len({s.raft_term for s in sts.values()}) == 1
    assert {s.revision for s in sts.values()} == {rev_all}
    assert {s.member_id for s in sts.values()} == set(c.ids)
    assert_same_data(c)


# -- 2. leader crash ----------------------------------------------------------------------


def test_leader_kill9_failover_and_catch_up(direct: Cluster) -> None:
    c = direct
    old = c.wait_leader()
    term0 = c.status(old).raft_term
    survivors = others(c, old)

    # A writer hammers the leader itself, so some writes are acknowledged moments before the
    # crash; every acknowledged one must survive it.
    acked: dict[str, bytes] = {}
    stop = threading.Event()
    prefix = fresh("kill")

    def writer() -> None:
        kv = c.nodes[old].kv_stub()
        for n in itertools.count():
            if stop.is_set():
                return
            key, value = f"{prefix}/{n:05d}", f"v{n}".encode()
            try:
                kv.Put(pb.PutRequest(key=key, value=value), timeout=2.0)
            except grpc.RpcError:
                return  # the leader is gone; outcome unknown, not recorded
            acked[key] = value

    thread = threading.Thread(target=writer, name="kill9-writer")
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 30, 10.0, "30 acknowledged writes before the crash")
        c.kill(old)
    finally:
        stop.set()
        thread.join(10.0)
    assert not thread.is_alive()

    new = c.wait_leader(survivors, timeout=ELECTION_BOUND, exclude=[old])
    assert c.status(new).raft_term > term0
    for i in survivors:
        resp = c.kv(i).Range(pb.RangeRequest(prefix=prefix + "/", read_mode=LIN), timeout=5.0)
        have = {kv.key: kv.value for kv in resp.kvs}
        lost = sorted(k for k, v in acked.items() if have.get(k) != v)
        assert not lost, f"node {i} lost {len(lost)} acknowledged writes, e.g. {lost[:5]}"

    after = {fresh("kill-after"): b"after-" + bytes([48 + i]) for i in survivors}
    for i, (key, value) in zip(survivors, after.items(), strict=True):
        c.put(i, key, value)
    assert_reads(c, survivors, after)

    # The crashed node restarts on its data dir and catches up with everything.
    c.start_node(old)
    c.wait_converged(timeout=CONVERGE_BOUND)
    assert_reads(c, [old], after)
    assert_reads(c, [old], dict(list(acked.items())[-5:]))
    st = c.status(old)
    assert st.role == "follower" and st.leader_id == new, st
    assert_same_data(c)


# -- 3. SIGSTOP ---------------------------------------------------------------------------


def test_paused_follower_quorum_all_unavailable_then_catch_up(direct: Cluster) -> None:
    c = direct
    leader = c.wait_leader()
    paused, other = others(c, leader)
    before = fresh("pausef")
    c.put(leader, before, b"before")

    c.pause(paused)
    try:
        # The majority keeps working.
        written = {fresh("pausef"): b"via-leader", fresh("pausef"): b"via-follower"}
        for i, (key, value) in zip((leader, other), written.items(), strict=True):
            c.put(i, key, value)
        assert_reads(c, [leader, other], written)

        # WRITE_QUORUM_ALL cannot reach the paused voter: UNAVAILABLE naming the revision at
        # which the write is committed anyway (not rolled back).
        key_all = fresh("pausef-all")
        with pytest.raises(grpc.RpcError) as info:
            c.put(leader, key_all, b"all", quorum=pb.WRITE_QUORUM_ALL, timeout=10.0)
        err = info.value
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
        match = re.search(r"revision (\d+)", err.details() or "")
        assert match, f"UNAVAILABLE does not name the revision: {err.details()!r}"
        committed_rev = int(match.group(1))
        for i in (leader, other):
            resp = c.get(i, key_all)
            assert resp.found and resp.kv.value == b"all", f"node {i}: committed write missing: {resp}"
            assert resp.kv.mod_revision == committed_rev, (resp.kv.mod_revision, err.details())
    finally:
        c.resume(paused)

    c.wait_converged(timeout=CONVERGE_BOUND)
    assert_reads(c, [paused], {before: b"before", key_all: b"all", **written}, mode=EVENTUAL)
    assert_reads(c, [paused], {key_all: b"all", **written})
    assert c.get(paused, key_all).kv.mod_revision == committed_rev
    assert_same_data(c)


def test_paused_leader_is_replaced_and_serves_no_stale_read(direct: Cluster) -> None:
    c = direct
    old = c.wait_leader()
    term0 = c.status(old).raft_term
    key = fresh("pausel")
    c.put(old, key, b"old")
    rest = others(c, old)

    stub = c.nodes[old].kv_stub()
    c.pause(old)
    try:
        new = c.wait_leader(rest, timeout=ELECTION_BOUND, exclude=[old])
        assert c.status(new).raft_term > term0
        c.put(rest[0], key, b"new")
        assert_reads(c, rest, {key: b"new"})
        # Linearizable reads queued at the stopped old leader: it wakes up still believing it
        # leads, with "old" in its state machine.
        queued = [stub.Get.future(pb.GetRequest(key=key, read_mode=LIN), timeout=8.0) for _ in range(3)]
        time.sleep(0.3)
    finally:
        c.resume(old)
    outcomes = [assert_fresh_or_refused(f, b"new", f"queued Get at resumed old leader {old}") for f in queued]
    right_after = stub.Get.future(pb.GetRequest(key=key, read_mode=LIN), timeout=5.0)
    outcomes.append(assert_fresh_or_refused(right_after, b"new", f"Get right after resuming {old}"))
    print(f"reads at the resumed old leader: {outcomes}")

    # It steps down: a follower of the new leader in a higher term.
    def stepped_down() -> bool:
        st = c.status(old)
        return st.role == "follower" and st.raft_term > term0 and st.leader_id == new

    wait_until(stepped_down, ELECTION_BOUND, f"old leader {old} to follow {new} in a term > {term0}")
    assert_reads(c, [old], {key: b"new"})
    assert_same_data(c)


# -- 4. partitions ------------------------------------------------------------------------


def _refuses(c: Cluster, node: int, read_key: str, write_key: str, what: str) -> None:
    """`node` must serve neither a linearizable read nor a write within the client deadline
    (both sent at once, so the wait is paid once)."""
    kv = c.kv(node)
    get = kv.Get.future(pb.GetRequest(key=read_key, read_mode=LIN), timeout=REFUSE_DEADLINE)
    put = kv.Put.future(pb.PutRequest(key=write_key, value=b"from-minority"), timeout=REFUSE_DEADLINE)
    expect_not_served(get.result, f"{what}: linearizable Get on node {node}")
    expect_not_served(put.result, f"{what}: Put on node {node}")


def test_isolated_leader(proxied: Cluster) -> None:
    c = proxied
    assert c.links is not None
    old = c.wait_leader()
    term0 = c.status(old).raft_term
    rest = others(c, old)
    key = fresh("isol")
    c.put(old, key, b"old")
    c.wait_converged(timeout=CONVERGE_BOUND)

    c.links.isolate(old)
    try:
        # At once, while it may still believe it leads: no linearizable read, no write.
        minority_key = fresh("isol-minority")
        _refuses(c, old, key, minority_key, "just isolated leader")

        new = c.wait_leader(rest, timeout=ELECTION_BOUND, exclude=[old])
        assert c.status(new).raft_term > term0
        c.put(rest[1], key, b"new")
        assert_reads(c, rest, {key: b"new"})

        # Still cut off after the majority moved on: refuses (never answers "old").
        _refuses(c, old, key, minority_key, "isolated old leader")
        # Eventual reads are local: they answer (stale is allowed).
        resp = c.get(old, key, mode=EVENTUAL)
        assert resp.found and resp.kv.value in (b"old", b"new"), resp
        # The majority is undisturbed.
        assert_reads(c, rest, {key: b"new", minority_key: None})
    finally:
        c.links.heal()

    c.wait_leader(timeout=ELECTION_BOUND)
    data = assert_same_data(c, timeout=CONVERGE_BOUND)
    assert data[key][0] == b"new"
    # The writes sent to the cut-off node were never acknowledged and never committed.
    assert minority_key not in data
    assert_reads(c, c.ids, {key: b"new", minority_key: None})


def test_isolated_follower(proxied: Cluster) -> None:
    c = proxied
    assert c.links is not None
    leader = c.wait_leader()
    term0 = c.status(leader).raft_term
    cut, other = others(c, leader)
    key = fresh("isof")
    c.put(leader, key, b"old")
    c.wait_converged(timeout=CONVERGE_BOUND)

    c.links.isolate(cut)
    try:
        # A linearizable read needs the leader's confirmation, which cannot arrive.
        expect_not_served(lambda: c.get(cut, key, timeout=REFUSE_DEADLINE), "Get on just isolated follower")

        # The majority keeps its leader and serves both.
        c.put(other, key, b"new")
        assert_reads(c, [leader, other], {key: b"new"})

        # Once the follower has noticed it lost the leader, it cannot forward writes either.
        wait_until(
            lambda: c.status(cut).leader_id == 0,
            ELECTION_BOUND,
            f"isolated follower {cut} to notice it has no leader",
        )
        minority_key = fresh("isof-minority")
        _refuses(c, cut, key, minority_key, "isolated follower")
        resp = c.get(cut, key, mode=EVENTUAL)
        assert resp.found and resp.kv.value in (b"old", b"new"), resp
        assert c.wait_leader([leader, other], timeout=ELECTION_BOUND) == leader
    finally:
        c.links.heal()

    data = assert_same_data(c, timeout=CONVERGE_BOUND)
    assert data[key][0] == b"new" and minority_key not in data
    # PreVote (on by default): the isolated node could not win, so it never raised the term
    # and rejoining does not depose the leader.
    assert c.wait_leader(timeout=ELECTION_BOUND) == leader
    assert c.status(leader).raft_term == term0
    assert_reads(c, c.ids, {key: b"new"})


@pytest.mark.parametrize("direction", ["follower-to-leader", "leader-to-follower"])
def test_one_way_link_failure(proxied: Cluster, direction: str) -> None:
    """One direction of the leader<->follower link drops everything. The other follower still
    gives the leader a quorum and hears it, so the cluster keeps its leader and term (no
    disruptive elections: PreVote and CheckQuorum) and serves reads and writes. The half-cut
    follower may refuse (it cannot reach the leader, or no longer hears it) but never serves
    a stale linearizable read."""
    c = proxied
    assert c.links is not None
    leader = c.wait_leader()
    term0 = c.status(leader).raft_term
    half, other = others(c, leader)
    if direction == "follower-to-leader":
        c.links.one_way(half, leader)  # the leader sends, but hears nothing back from `half`
    else:
        c.links.one_way(leader, half)  # `half` hears nothing from the leader
    expected: dict[str, bytes] = {}
    outcomes: list[str] = []
    try:
        deadline = time.monotonic() + 2.0  # 5+ election timeouts
        n = 0
        while time.monotonic() < deadline or n < 6:
            key = fresh("oneway")
            value = f"v{n}".encode()
            c.put((leader, other)[n % 2], key, value)
            expected[key] = value
            assert_reads(c, [leader, other], {key: value})
            n += 1
        for key, value in list(expected.items())[-2:]:
            fut = c.kv(half).Get.future(pb.GetRequest(key=key, read_mode=LIN), timeout=1.5)
            outcomes.append(assert_fresh_or_refused(fut, value, f"linearizable Get on half-cut node {half}"))
        # A write through the half-cut node: forwarded if it still knows the leader, else refused.
        key = fresh("oneway-half")
        try:
            c.put(half, key, b"via-half", timeout=1.5)
        except grpc.RpcError as err:
            assert err.code() in NOT_SERVED, (err.code(), err.details())
            outcomes.append(f"put {err.code().name}")
        else:
            expected[key] = b"via-half"
            outcomes.append("put ok")
        sts = c.statuses([leader, other])
        assert all(s is not None and s.leader_id == leader and s.raft_term == term0 for s in sts.values()), (
            sts
        )
    finally:
        c.links.heal()
    print(f"node {half} with a one-way link ({direction}): {outcomes}")

    assert_same_data(c, timeout=CONVERGE_BOUND)
    assert_reads(c, c.ids, expected)
    assert c.wait_leader(timeout=ELECTION_BOUND) == leader
    assert c.status(leader).raft_term == term0
