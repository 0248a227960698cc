"""ggap.client.Client and AsyncClient against a real 3-node cluster, with faults.

Each face (sync; async under asyncio; async under trio) keeps working while the node it
talks to is killed (kill -9) or stopped (SIGSTOP); retried writes apply once (a CAS
counter ends equal to the increments the clients saw succeed), also when the fault proxy
cuts the connection mid-call, and without a session that same cut makes the counter move
twice; sequential reads never go back across failovers; a watch across node kills
delivers every revision once. Failover times are printed (never asserted).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import trio

from ggap.client import (
    AsyncClient,
    Client,
    Compacted,
    Compare,
    DeadlineExceeded,
    InvalidArgument,
    Op,
    Unavailable,
)
from tests.cluster import FAST_RAFT_ENV, Cluster, wait_until
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.slow

_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}/{next(_ids)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("client"), proxied=False, env=FAST_RAFT_ENV)
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


def endpoints(c: Cluster) -> str:
    return ",".join(c.nodes[i].client_addr for i in c.ids)


def node_of(c: Cluster, endpoint: str | None) -> int:
    return next(i for i in c.ids if c.nodes[i].client_addr == endpoint)


def test_the_sync_api(healthy: Cluster) -> None:
    c = healthy
    with Client(endpoints(c), timeout=10.0) as client:
        k = fresh("api")
        r1 = client.put(k, "v1")  # str is taken as UTF-8
        r2 = client.put(k, b"v2")
        got = client.get(k)
        assert got is not None and got.value == b"v2" and got.mod_revision == r2 and got.version == 2
        assert client.get(k, revision=r1).value == b"v1"  # type: ignore[union-attr]
        assert client.get(k, mode="sequential") is not None
        assert [kv.value for kv in client.history(k)] == [b"v2", b"v1"]
        assert client.session_id > 0
        # A range pages at one revision: writes during the listing are not seen.
        p = fresh("page")
        for i in range(10):
            client.put(f"{p}/{i:02}", str(i))
        listing = client.range(p + "/", page_size=3)
        first = [next(listing) for _ in range(4)]
        client.put(f"{p}/05", "changed")
        client.put(f"{p}/99", "new")
        rest = list(listing)
        assert [kv.key for kv in first + rest] == [f"{p}/{i:02}" for i in range(10)]
        assert (first + rest)[5].value == b"5"
        assert len(list(client.range(p + "/", limit=4, page_size=3))) == 4
        # Txn with the builder.
        res = client.txn(
            [Compare.value(k) == "v2", Compare.version(k) > 1, Compare.exists(k)],
            [Op.put(k, "v3"), Op.get(k), Op.delete(f"{p}/00"), Op.range(p + "/", limit=2)],
            [Op.get(k)],
        )
        # Reads in a Txn see the state before its writes.
        assert res.succeeded and res.results[1].value == b"v2"  # type: ignore[union-attr]
        assert res.results[2] is True and len(res.results[3]) == 2  # type: ignore[arg-type]
        assert client.get(k).value == b"v3"  # type: ignore[union-attr]
        res = client.txn([Compare.mod_revision(k) < 1], [Op.put(k, "no")], [Op.get(k)])
        assert not res.succeeded and res.results[0].value == b"v3"  # type: ignore[union-attr]
        assert client.delete(k) and not client.delete(k)
        assert client.get(k) is None
        assert len(client.members()) == 3
        assert client.status().revision > 0
        with pytest.raises(InvalidArgument):
            client.put("", "empty key")
        with pytest.raises(InvalidArgument):
            client.get(k, mode="nonsense")
        with pytest.raises(TypeError):
            client.txn([("not", "a compare")])  # type: ignore[list-item]


def _kill_talked_to(c: Cluster, endpoint: str | None) -> int:
    victim = node_of(c, endpoint) if endpoint else c.leader()
    c.kill(victim)
    return victim


@pytest.mark.parametrize("fault", ["kill -9", "SIGSTOP"])
def test_sync_client_keeps_writing_through_a_fault_and_counts_exactly(healthy: Cluster, fault: str) -> None:
    """Four threads share one Client and increment one counter by CAS; the leader (where
    writes go) is killed, or stopped (it still accepts TCP connections but never answers),
    meanwhile. Retries are automatic and exactly-once."""
    c = healthy
    key = fresh("counter")
    ok = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []
    with Client(endpoints(c), timeout=15.0) as client:
        client.put(key, "0")

        def worker() -> None:
            try:
                while not stop.is_set():
                    cur = client.get(key)
                    assert cur is not None
                    res = client.txn(
                        [Compare.value(key) == cur.value], [Op.put(key, str(int(cur.value) + 1))]
                    )
                    if res.succeeded:
                        with lock:
                            ok[0] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            _wait(lambda: ok[0] >= 20, 30)
            if fault == "kill -9":
                victim = _kill_talked_to(c, client.leader_endpoint)
            else:
                victim = node_of(c, client.leader_endpoint) if client.leader_endpoint else c.leader()
                c.pause(victim)
            killed_at, before = time.monotonic(), ok[0]
            _wait(lambda: ok[0] > before, 30)
            took_ms = 1000 * (time.monotonic() - killed_at)
            print(f"sync client: first increment {took_ms:.0f} ms after {fault} of n{victim}")
            _wait(lambda: ok[0] >= before + 20, 30)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        final = client.get(key)
        assert final is not None and int(final.value) == ok[0]


def _wait(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


async def _async_face(c: Cluster, sleep: object) -> tuple[int, float]:
    """Write through the node the client talks to, kill it, keep writing; sequential reads
    never go back. Returns (victim, ms from the kill to the first successful write)."""
    key = fresh("async")
    async with AsyncClient(endpoints(c), timeout=15.0) as client:
        seen = 0
        n = 0
        for _ in range(10):
            n += 1
            await client.put(key, str(n))
        victim = _kill_talked_to(c, client.leader_endpoint)
        killed_at = time.monotonic()
        n += 1
        await client.put(key, str(n))
        failover_ms = 1000 * (time.monotonic() - killed_at)
        for _ in range(20):
            n += 1
            rev = await client.put(key, str(n))
            got = await client.get(key, mode="sequential")
            assert got is not None and got.mod_revision >= rev and got.mod_revision >= seen
            seen = got.mod_revision
            await sleep(0)  # type: ignore[operator]
        got = await client.get(key)
        assert got is not None and got.value == str(n).encode()
        return victim, failover_ms


def test_asyncio_client_survives_a_kill(healthy: Cluster) -> None:
    victim, ms = asyncio.run(_async_face(healthy, asyncio.sleep))
    print(f"asyncio client: first write {ms:.0f} ms after kill -9 of n{victim}")


def test_trio_client_survives_a_kill(healthy: Cluster) -> None:
    victim, ms = trio.run(_async_face, healthy, trio.sleep)
    print(f"trio client: first write {ms:.0f} ms after kill -9 of n{victim}")


def test_a_watch_across_node_kills_delivers_every_revision_once(healthy: Cluster) -> None:
    c = healthy
    prefix = fresh("watch") + "/"
    written: list[int] = []
    got: list[int] = []
    with Client(endpoints(c), timeout=15.0) as writer, Client(endpoints(c), timeout=15.0) as watcher:
        start = writer.put(prefix + "first", "0")
        written.append(start)
        done = threading.Event()

        def watch() -> None:
            for ev in watcher.watch(prefix=prefix, start_revision=start, idle_timeout=2.0):
                got.append(ev.kv.mod_revision)
                if ev.kv.key == prefix + "last":
                    done.set()
                    return

        t = threading.Thread(target=watch)
        t.start()
        try:
            for victim in c.ids:
                for i in range(5):
                    written.append(writer.put(f"{prefix}{victim}-{i}", "x"))
                c.kill(victim)
                for i in range(5):
                    written.append(writer.put(f"{prefix}{victim}-after-{i}", "x"))
                c.start_node(victim)
                c.wait_converged(timeout=20.0)
            written.append(writer.put(prefix + "last", "1"))
            assert done.wait(30), f"watch stalled after {len(got)} of {len(written)} events"
        finally:
            done.set()
            t.join(60)
    assert got == written


def test_a_watch_below_the_compaction_point_raises_compacted(healthy: Cluster) -> None:
    c = healthy
    with Client(endpoints(c)) as client:
        k = fresh("compacted")
        first = client.put(k, "a")
        client.put(k, "b")
        last = client.put(k, "c")
        client.compact(last)
        with pytest.raises(Compacted) as exc:
            next(client.watch(k, start_revision=first))
        assert exc.value.compact_revision >= last - 1


def test_the_cli_fails_over_across_endpoints(healthy: Cluster) -> None:
    """With the first endpoint dead (kill -9), `ggap --endpoints dead,alive,alive put`
    goes on to the next; the global flags come before the command."""
    from click.testing import CliRunner

    from ggap.cli import cli

    c = healthy
    dead = c.leader()
    c.kill(dead)
    order = [dead, *(i for i in c.ids if i != dead)]
    eps = ",".join(c.nodes[i].client_addr for i in order)
    k = fresh("cli")
    put = CliRunner().invoke(cli, ["--endpoints", eps, "--timeout", "10", "put", k, "v"])
    assert put.exit_code == 0, put.output
    got = CliRunner().invoke(cli, ["--endpoints", eps, "-o", "json", "get", k])
    assert got.exit_code == 0 and '"found": true' in got.output, got.output


def _increment(client: Client, key: str, before_first_swap: Callable[[], None]) -> bool:
    """One CAS increment as an application writes it: read, swap, and on an error whose
    outcome is unknown read again and retry. True when the client saw it succeed."""
    first = True
    while True:
        cur = client.get(key)
        assert cur is not None
        if first:
            before_first_swap()
            first = False
        try:
            res = client.txn([Compare.value(key) == cur.value], [Op.put(key, str(int(cur.value) + 1))])
        except (Unavailable, DeadlineExceeded):
            continue  # "outcome unknown": try again from a fresh read
        if res.succeeded:
            return True


@pytest.mark.parametrize("sessions", [True, False])
def test_a_write_cut_off_mid_call_applies_once_only_with_a_session(healthy: Cluster, sessions: bool) -> None:
    """The fault proxy in front of the leader lets the request through, blackholes the
    answer, and once the write is applied cuts the connection. With a session the client
    retries on another node and gets the first attempt's result: the counter moved once.
    Without one (what the session table prevents) the application cannot tell, retries,
    and the counter moves twice for one increment."""
    c = healthy
    leader = c.leader()
    host, port = c.nodes[leader].client_addr.rsplit(":", 1)
    other = next(i for i in c.ids if i != leader)
    key = fresh("cut")
    with FaultProxy((host, int(port))) as proxy:
        eps = [f"127.0.0.1:{proxy.port}", *(c.nodes[i].client_addr for i in c.ids if i != leader)]
        with Client(eps, sessions=sessions, timeout=15.0, attempt_timeout=3.0) as client:
            client.put(key, "0")  # learns that the proxy's endpoint leads (and opens the session)
            assert client.leader_endpoint == eps[0]
            done: list[bool] = []
            errors: list[BaseException] = []

            def drop_answers() -> None:  # after the read, before the swap goes out
                proxy.set_one_way(drop_client_to_target=False, drop_target_to_client=True)

            def run() -> None:
                try:
                    done.append(_increment(client, key, drop_answers))
                except BaseException as exc:
                    errors.append(exc)

            t = threading.Thread(target=run)
            t.start()
            try:
                wait_until(lambda: c.get(other, key).kv.value == b"1", 20.0, "the first attempt applied")
                proxy.block()  # the answer never came; now the connection is cut mid-call
            finally:
                t.join(30)
                proxy.heal()
            assert not errors, errors
            assert done == [True]
    final = c.get(other, key).kv.value
    # The client saw one increment succeed.
    assert final == (b"1" if sessions else b"2")
