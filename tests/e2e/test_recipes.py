"""ggap.client.recipes (Lock, Election) against a real 3-node cluster, under faults.

Mutual exclusion and fairness (waiters get the lock in the order they asked), release by
TTL when the holder is killed with SIGKILL (and no release while a live holder refreshes),
a holder that keeps the lock across a kill of the leader node, a holder cut off from the
cluster for longer than its TTL losing the lock (its fenced write refused, the next holder's
revision larger), and elections: one leader at a time, resign and crash hand over, and an
observer sees every leader in order.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio

from ggap.client import AsyncClient, Client, Compare, Op
from ggap.client.recipes import LOCK_PREFIX, AsyncLock, Election, Lock, LockLost
from tests.cluster import FAST_RAFT_ENV, Cluster, wait_until
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.slow

REPO = str(Path(__file__).resolve().parents[2])
_ids = itertools.count(1)


def fresh(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("recipes"), proxied=False, env=FAST_RAFT_ENV)
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


def queue_length(client: Client, prefix: str) -> int:
    return sum(1 for _ in client.range(prefix))


HOLDER = """
import sys, time
from ggap.client import Client
from ggap.client.recipes import {cls}
with Client(sys.argv[1], timeout=10.0) as client:
    r = {cls}(client, sys.argv[2], ttl=float(sys.argv[3])).{method}({arg})
    print("held", r, flush=True)
    time.sleep(3600)
"""


class Holder:
    """A child process that takes a lock (or wins an election) and then just lives, so
    the test can kill -9 it. Always killed and reaped on exit."""

    def __init__(self, eps: str, name: str, ttl: float, *, election: bool = False) -> None:
        code = HOLDER.format(
            cls="Election" if election else "Lock",
            method="campaign" if election else "acquire",
            arg='b"child"' if election else "",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, eps, name, str(ttl)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO},
        )

    def wait_held(self, timeout: float = 30.0) -> int:
        out: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            out.append(self.proc.stdout.readline())

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        line = out[0] if out else ""
        if not line.startswith("held "):
            self.close()
            assert self.proc.stderr is not None
            raise AssertionError(f"holder did not take it: {line!r} {self.proc.stderr.read()[-2000:]}")
        return int(line.split()[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


# -- Lock ---------------------------------------------------------------------------------


def test_the_lock_excludes_and_serves_waiters_in_the_order_they_asked(healthy: Cluster) -> None:
    c = healthy
    name = fresh("fair")
    prefix = f"{LOCK_PREFIX}{name}/"
    order: list[int] = []
    inside = [0]
    errors: list[BaseException] = []
    revisions: list[int] = []
    guard = threading.Lock()

    def waiter(w: int, client: Client) -> None:
        try:
            with Lock(client, name, ttl=5.0) as lock:
                with guard:
                    inside[0] += 1
                    assert inside[0] == 1, "two holders at once"
                    order.append(w)
                    revisions.append(lock.revision)
                # A write fenced by the lock succeeds while it is held.
                res = client.txn([lock.guard()], [Op.put(f"{name}/owner", str(w))])
                assert res.succeeded
                time.sleep(0.2)
                with guard:
                    inside[0] -= 1
        except BaseException as exc:
            errors.append(exc)

    with Client(endpoints(c)) as first, Client(endpoints(c)) as other:
        lock = Lock(first, name, ttl=5.0)
        held_rev = lock.acquire()
        assert lock.is_held() and held_rev > 0
        threads = []
        for w in range(4):
            t = threading.Thread(target=waiter, args=(w, other))
            t.start()
            threads.append(t)
            # The next waiter asks only once this one is queued: the order is known.
            wait_until(lambda w=w: queue_length(first, prefix) == w + 2, 20.0, f"waiter {w} queued")
        time.sleep(0.5)
        assert order == []  # nobody got in while the first holder holds it
        old_key = lock.key
        lock.release()
        assert not lock.is_held()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert order == [0, 1, 2, 3]
        assert revisions == sorted(revisions) and revisions[0] > held_rev
        # Once released, the old holder's fenced write is refused.
        res = first.txn([Compare.create_revision(old_key) == held_rev], [Op.put(f"{name}/owner", "late")])
        assert not res.succeeded
        assert queue_length(first, prefix) == 0  # every claim was deleted on release


def test_a_killed_holder_releases_by_ttl_and_a_live_one_keeps_it(healthy: Cluster) -> None:
    c = healthy
    name = fresh("crash")
    ttl = 1.5
    holder = Holder(endpoints(c), name, ttl)
    try:
        dead_rev = holder.wait_held()
        with Client(endpoints(c)) as client:
            lock = Lock(client, name, ttl=ttl)
            # The holder refreshes: nobody gets the lock for well past its TTL.
            with pytest.raises(TimeoutError):
                lock.acquire(timeout=3 * ttl)
            assert not lock.is_held()
            holder.kill()
            killed_at = time.monotonic()
            rev = lock.acquire(timeout=10 * ttl)
            waited = time.monotonic() - killed_at
            print(f"lock taken over {waited * 1000:.0f} ms after kill -9 of its holder (ttl {ttl:g} s)")
            assert rev > dead_rev
            assert waited < 10 * ttl
            lock.release()
    finally:
        holder.close()


def test_a_holder_keeps_the_lock_across_a_kill_of_the_leader(healthy: Cluster) -> None:
    c = healthy
    name = fresh("failover")
    ttl = 3.0
    with Client(endpoints(c)) as a, Client(endpoints(c)) as b:
        lock = Lock(a, name, ttl=ttl)
        rev = lock.acquire()
        c.kill(c.leader())
        # Across the failover and for several TTLs, the holder refreshes; b waits.
        with pytest.raises(TimeoutError):
            Lock(b, name, ttl=ttl).acquire(timeout=2.5 * ttl)
        assert lock.is_held()
        res = a.txn([lock.guard()], [Op.put(f"{name}/data", "still mine")])
        assert res.succeeded
        lock.release()
        second = Lock(b, name, ttl=ttl)
        assert second.acquire(timeout=10) > rev
        second.release()


def test_a_holder_cut_off_past_its_ttl_loses_the_lock_and_its_fenced_write(healthy: Cluster) -> None:
    """The limit of any lease lock, shown: a holder that cannot reach the cluster for longer
    than the TTL loses the lock while it still thinks it holds it. Its fenced write is
    refused, and the next holder's revision is larger."""
    c = healthy
    name = fresh("fence")
    ttl = 1.5
    node = c.leader()
    host, port = c.nodes[node].client_addr.rsplit(":", 1)
    with FaultProxy((host, int(port))) as proxy:
        via = f"127.0.0.1:{proxy.port}"
        with Client(via, timeout=1.0, attempt_timeout=0.5, retries=2) as cut, Client(endpoints(c)) as other:
            lock = Lock(cut, name, ttl=ttl)
            old_rev = lock.acquire()
            office = Election(cut, name, ttl=ttl)
            office.campaign(b"cut")
            proxy.block()  # every connection of `cut` is closed, new ones refused
            nxt = Lock(other, name, ttl=ttl)
            new_rev = nxt.acquire(timeout=10 * ttl)
            assert new_rev > old_rev
            proxy.unblock()
            # Back in touch, the old holder finds out within a refresh interval or two ...
            wait_until(lambda: not lock.is_held(), 5 * ttl, "the old holder to notice the loss")
            wait_until(lambda: not office.is_leader(), 5 * ttl, "the old leader to notice the loss")
            with pytest.raises(LockLost):
                office.proclaim(b"still me?")
            # ... and a write it fenced with its lock is refused, while the new holder's passes.
            assert not cut.txn(
                [Compare.create_revision(lock.key) == old_rev], [Op.put(name, "old")]
            ).succeeded
            assert other.txn([nxt.guard()], [Op.put(name, "new")]).succeeded
            nxt.release()
            lock.release()  # a no-op delete: the key is someone else's business now


def test_bad_lock_arguments_are_refused_before_anything_is_written(healthy: Cluster) -> None:
    with Client(endpoints(healthy)) as client:
        with pytest.raises(ValueError):
            Lock(client, "", ttl=1.0)
        with pytest.raises(ValueError):
            Lock(client, "x", ttl=0)
        lock = Lock(client, fresh("twice"), ttl=5.0)
        lock.acquire()
        with pytest.raises(RuntimeError):
            lock.acquire()
        lock.release()
        lock.release()  # idempotent
        with pytest.raises(RuntimeError):
            lock.guard()


def test_the_async_lock_under_asyncio_and_trio(healthy: Cluster) -> None:
    """The same AsyncLock under both event loops: a second task waits until the first
    releases, and a wait cancelled by a timeout leaves the queue."""
    c = healthy

    async def main() -> list[str]:
        name = fresh("async")
        events: list[str] = []
        async with AsyncClient(endpoints(c)) as client:
            first = AsyncLock(client, name, ttl=5.0)
            await first.acquire()
            with pytest.raises(TimeoutError):
                with anyio.fail_after(0.5):
                    await AsyncLock(client, name, ttl=5.0).acquire()
            assert await _queued(client, f"{LOCK_PREFIX}{name}/") == 1  # the timed-out claim is gone

            async def second() -> None:
                async with AsyncLock(client, name, ttl=5.0):
                    events.append("second in")

            async with anyio.create_task_group() as tg:
                tg.start_soon(second)
                await anyio.sleep(0.5)
                events.append("first out")
                await first.release()
        return events

    assert asyncio.run(main()) == ["first out", "second in"]
    assert trio.run(main) == ["first out", "second in"]


async def _queued(client: AsyncClient, prefix: str) -> int:
    return len([kv async for kv in client.range(prefix)])


# -- Election -----------------------------------------------------------------------------


def test_an_election_has_one_leader_and_hands_over_on_resign_and_crash(healthy: Cluster) -> None:
    c = healthy
    name = fresh("election")
    ttl = 1.5
    seen: list[bytes] = []
    stop = threading.Event()
    holder = Holder(endpoints(c), name, ttl, election=True)
    with Client(endpoints(c)) as watcher, Client(endpoints(c)) as a, Client(endpoints(c)) as b:

        def observe() -> None:
            for kv in Election(watcher, name).observe():
                seen.append(kv.value)
                if stop.is_set() or kv.value == b"b-2":
                    return

        try:
            holder.wait_held()  # the child leads first
            obs = threading.Thread(target=observe, daemon=True)
            obs.start()
            ea, eb = Election(a, name, ttl=ttl), Election(b, name, ttl=ttl)
            won: dict[str, int] = {}
            ta = threading.Thread(target=lambda: won.setdefault("a", ea.campaign(b"a")))
            ta.start()
            wait_until(lambda: queue_length(a, f"__ggap/election/{name}/") == 2, 20, "a standing")
            tb = threading.Thread(target=lambda: won.setdefault("b", eb.campaign(b"b")))
            tb.start()
            wait_until(lambda: queue_length(a, f"__ggap/election/{name}/") == 3, 20, "b standing")
            leader = Election(a, name).leader()
            assert leader is not None and leader.value == b"child"
            holder.kill()  # the leader crashes: a (first in line) takes over after the TTL
            ta.join(10 * ttl)
            assert "a" in won and "b" not in won and ea.is_leader() and not eb.is_leader()
            ea.proclaim(b"a-2")
            wait_until(lambda: b"a-2" in seen, 20, "the observer to see the proclaimed value")
            ea.resign()  # b takes over at once
            tb.join(20)
            assert "b" in won and eb.is_leader() and won["b"] > won["a"]
            eb.proclaim(b"b-2")
            obs.join(20)
            assert seen == [b"child", b"a", b"a-2", b"b", b"b-2"]
            eb.resign()
            assert Election(a, name).leader() is None
            with pytest.raises(RuntimeError):
                eb.proclaim(b"not any more")  # resigned: nothing to proclaim
        finally:
            stop.set()
            holder.close()
