"""Lock and Election: the two coordination recipes etcd and ZooKeeper users reach for most,
built on Txn and TTL keys (README "Python client").

Both rest on one mechanism, a *claim*: a key `<prefix><name>/<random>` written with a TTL by
one Txn, kept alive by a task that re-puts it every ttl/3 while it waits and while it is
held (guarded by its create revision, so a key that expired is never revived), and deleted
on release. Claims on one name queue in the order of their create
revisions; the claim with the lowest one holds the lock (leads). A waiter watches only
the claim just before it (no herd: one release wakes one waiter) and re-lists when it goes.
A holder that crashes stops refreshing; its key expires after `ttl` and the next claim
goes ahead.

`AsyncLock`/`AsyncElection` take an AsyncClient; `Lock`/`Election` take a Client and run
the same code on the client's loop thread. The refresh task lives in the client's task
group (it ends with the client at the latest).

Limits, said plainly: a lock is a lease, not a mutex. A holder paused for longer than the
TTL (a GC pause, SIGSTOP, a partition) loses it without knowing until it looks, and
meanwhile the next holder runs. So work guarded by a lock must carry its fencing
revision (`revision`: larger for every later holder) to whatever it changes, and the
thing changed must refuse a smaller one; a write to ggap itself can be guarded exactly by
putting `lock.guard()` in its Txn compares.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ggap.client._async import AsyncClient
from ggap.client._ops import Compare, Op, Value, as_bytes, kv_from_pb
from ggap.client._sync import Client
from ggap.pb import kv_pb2 as pb
from ggap.types import EventType, KeyValue
from ggap.types.errors import GgapError

LOCK_PREFIX = "__ggap/lock/"
ELECTION_PREFIX = "__ggap/election/"

_T = TypeVar("_T")


class LockLost(Exception):
    """The claim's key is gone: its TTL ran out before a refresh landed (the holder or
    the cluster was unreachable for longer than the TTL), or someone deleted it."""


class _Claim:
    """One key in a name's queue, from creation to release."""

    def __init__(self, client: AsyncClient, prefix: str, name: str, ttl: float, value: Value) -> None:
        if not name:
            raise ValueError("a lock or election needs a name")
        if not ttl > 0:
            raise ValueError("ttl must be positive (seconds)")
        self.client = client
        self.prefix = f"{prefix}{name}/"
        self.key = ""
        self.ttl = ttl
        self.value = as_bytes(value)
        self.revision = 0  # the key's create revision: the place in the queue, and the fencing token
        self.lost = anyio.Event()
        self.held = False  # its turn came (a waiter's claim is not held yet)
        # The refresh and a value change both re-put the key: one at a time, so a refresh
        # in flight cannot land after a change and put the old value back.
        self._writing = anyio.Lock()
        self._refresher: anyio.CancelScope | None = None

    # -- the queue ----------------------------------------------------------------------

    async def create(self) -> tuple[list[KeyValue], int]:
        """Write the key; the queue as of that write, and its revision."""
        if self.key:
            raise RuntimeError("this claim is taken already; release it first")
        self.key = self.prefix + uuid.uuid4().hex
        self.lost = anyio.Event()
        # The compare makes a retry without a session safe too: the key exists, so the
        # failure branch reads it back instead of writing again.
        res = await self.client.txn(
            [Compare.create_revision(self.key) == 0],
            [Op.put(self.key, self.value, ttl=self.ttl), Op.range(self.prefix)],
            [Op.get(self.key), Op.range(self.prefix)],
        )
        if res.succeeded:
            self.revision = int(res.results[0])  # type: ignore[arg-type]
        else:
            mine = res.results[0]
            assert isinstance(mine, KeyValue)
            self.revision = mine.create_revision
        queue = res.results[1]
        assert isinstance(queue, list)
        if res.succeeded:
            # A Txn's reads see the store as it was before its writes: add our own key.
            queue.append(KeyValue(self.key, self.value, self.revision, self.revision, 1))
        self._refresher = await self.client._start_background(self._refresh)
        return queue, res.revision

    async def listing(self) -> tuple[list[KeyValue], int]:
        resp = await self.client.call("Range", pb.RangeRequest(prefix=self.prefix), write=False)
        kvs = [kv_from_pb(kv) for kv in resp.kvs]
        return kvs, int(resp.header.revision)

    async def wait_turn(self, queue: list[KeyValue], revision: int) -> None:
        """Return once no claim older than this one is left; LockLost if this one goes."""
        async with anyio.create_task_group() as tg:

            async def on_loss() -> None:
                await self.lost.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_loss)
            while True:
                if not any(kv.key == self.key for kv in queue):
                    self.lost.set()
                    break
                earlier = [kv for kv in queue if kv.create_revision < self.revision]
                if not earlier:
                    self.held = True
                    tg.cancel_scope.cancel()
                    return
                before = max(earlier, key=lambda kv: kv.create_revision)
                # From the listing's revision on: a delete after the listing is not missed.
                async for event in self.client.watch(before.key, start_revision=revision + 1):
                    if event.type == EventType.DELETE:
                        break
                queue, revision = await self.listing()
        raise LockLost(f"{self.key} expired or was deleted while waiting")

    # -- keeping it alive and letting go ------------------------------------------------

    async def _refresh(self, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
        with anyio.CancelScope() as scope:
            task_status.started(scope)
            while True:
                await anyio.sleep(self.ttl / 3)
                try:
                    async with self._writing:
                        res = await self.client.txn(
                            [Compare.create_revision(self.key) == self.revision],
                            [Op.put(self.key, self.value, ttl=self.ttl)],
                        )
                except GgapError:
                    continue  # the client retried within its deadline; try again next round
                if not res.succeeded:
                    self.lost.set()
                    return

    async def update(self, value: Value) -> None:
        """Change the key's value (and refresh it), if it is still this claim's."""
        new = as_bytes(value)
        async with self._writing:
            res = await self.client.txn(
                [Compare.create_revision(self.key) == self.revision], [Op.put(self.key, new, ttl=self.ttl)]
            )
            if not res.succeeded:
                self.lost.set()
                raise LockLost(f"{self.key} expired or was deleted")
            self.value = new

    async def take(self) -> int:
        """Join the queue and wait for this claim's turn; its create revision. Failing or
        cancelled, it leaves the queue."""
        queue, revision = await self.create()
        try:
            await self.wait_turn(queue, revision)
        except BaseException:
            await self.release()
            raise
        return self.revision

    @property
    def holding(self) -> bool:
        """Its turn came and no refresh has found it gone since."""
        return self.held and not self.lost.is_set()

    async def release(self) -> None:
        """Stop refreshing and delete the key (if it is still this claim's). Idempotent."""
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        key, rev = self.key, self.revision
        self.key, self.revision, self.held = "", 0, False
        if key:
            with anyio.CancelScope(shield=True):
                await self.client.txn([Compare.create_revision(key) == rev], [Op.delete(key)])

    def guard(self) -> pb.Compare:
        if not self.key:
            raise RuntimeError("not held")
        return Compare.create_revision(self.key) == self.revision


def _leader_of(queue: list[KeyValue]) -> KeyValue | None:
    return min(queue, key=lambda kv: kv.create_revision, default=None)


# -- async faces ----------------------------------------------------------------------------


class AsyncLock:
    """A fair distributed lock: `async with AsyncLock(client, "jobs", ttl=10) as lock:`.
    Waiters get it in the order they asked; a holder that dies releases it after `ttl`."""

    def __init__(self, client: AsyncClient, name: str, *, ttl: float = 10.0, value: Value = b"") -> None:
        self._claim = _Claim(client, LOCK_PREFIX, name, ttl, value)

    @property
    def key(self) -> str:
        return self._claim.key

    @property
    def revision(self) -> int:
        """The fencing revision: larger for every later holder of this lock (0: not held)."""
        return self._claim.revision

    def is_held(self) -> bool:
        """Held, as far as this process knows (a failed refresh is noticed within ttl/3
        of the TTL running out; see the module's note on leases)."""
        return self._claim.holding

    async def wait_lost(self) -> None:
        """Return when the lock is found lost (for a task that should stop then)."""
        await self._claim.lost.wait()

    def guard(self) -> pb.Compare:
        """A Txn compare that holds only while this lock is held."""
        return self._claim.guard()

    async def acquire(self) -> int:
        """Wait for the lock; its fencing revision. Cancelled (e.g. by `anyio.fail_after`),
        it leaves the queue."""
        return await self._claim.take()

    async def release(self) -> None:
        await self._claim.release()

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class AsyncElection:
    """Leader election: `await election.campaign(b"me")` returns once this process leads;
    `observe()` follows whoever leads. A leader that dies is replaced after `ttl`."""

    def __init__(self, client: AsyncClient, name: str, *, ttl: float = 10.0) -> None:
        self._client = client
        self._claim = _Claim(client, ELECTION_PREFIX, name, ttl, b"")

    @property
    def revision(self) -> int:
        """This leader's fencing revision (0: not campaigning)."""
        return self._claim.revision

    def is_leader(self) -> bool:
        """Elected and not found lost since (see the module's note on leases)."""
        return self._claim.holding

    async def wait_lost(self) -> None:
        await self._claim.lost.wait()

    def guard(self) -> pb.Compare:
        """A Txn compare that holds only while this process leads."""
        return self._claim.guard()

    async def campaign(self, value: Value) -> int:
        """Stand with `value` and wait to be elected; the fencing revision. Cancelled, it
        withdraws."""
        self._claim.value = as_bytes(value)
        return await self._claim.take()

    async def proclaim(self, value: Value) -> None:
        """As leader, change the announced value without a new election (LockLost if no
        longer leading)."""
        if not self._claim.key:
            raise RuntimeError("not campaigning")
        await self._claim.update(value)

    async def resign(self) -> None:
        """Stop leading (or campaigning); the next candidate takes over at once."""
        await self._claim.release()

    async def leader(self) -> KeyValue | None:
        """Who leads now (its key and announced value), or None."""
        queue, _ = await self._claim.listing()
        return _leader_of(queue)

    async def observe(self) -> AsyncIterator[KeyValue]:
        """The leader now (if any), then each new leader or announced value, in order."""
        queue, revision = await self._claim.listing()
        live = {kv.key: kv for kv in queue}
        shown: tuple[str, bytes] | None = None
        current = _leader_of(queue)
        if current is not None:
            shown = (current.key, current.value)
            yield current
        prefix = self._claim.prefix
        async for event in self._client.watch(prefix=prefix, start_revision=revision + 1):
            if event.type == EventType.DELETE:
                live.pop(event.kv.key, None)
            else:
                live[event.kv.key] = event.kv
            current = _leader_of(list(live.values()))
            if current is not None and (current.key, current.value) != shown:
                shown = (current.key, current.value)
                yield current


# -- sync faces (the same code on the client's loop thread) ----------------------------------


async def _within(seconds: float | None, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    with anyio.fail_after(seconds):
        return await fn(*args)


class Lock:
    """`with Lock(client, "jobs", ttl=10) as lock: ...` (see AsyncLock)."""

    def __init__(self, client: Client, name: str, *, ttl: float = 10.0, value: Value = b"") -> None:
        self._client = client
        self._lock = AsyncLock(client._async, name, ttl=ttl, value=value)

    @property
    def key(self) -> str:
        return self._lock.key

    @property
    def revision(self) -> int:
        return self._lock.revision

    def is_held(self) -> bool:
        return self._lock.is_held()

    def guard(self) -> pb.Compare:
        return self._lock.guard()

    def acquire(self, timeout: float | None = None) -> int:
        """Wait for the lock (at most `timeout` seconds, then TimeoutError)."""
        return int(self._client._call(_within, timeout, self._lock.acquire))

    def release(self) -> None:
        self._client._call(self._lock.release)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class Election:
    """`Election(client, "scheduler").campaign(b"host-a")` (see AsyncElection)."""

    def __init__(self, client: Client, name: str, *, ttl: float = 10.0) -> None:
        self._client = client
        self._election = AsyncElection(client._async, name, ttl=ttl)

    @property
    def revision(self) -> int:
        return self._election.revision

    def is_leader(self) -> bool:
        return self._election.is_leader()

    def guard(self) -> pb.Compare:
        return self._election.guard()

    def campaign(self, value: Value, timeout: float | None = None) -> int:
        """Wait to be elected (at most `timeout` seconds, then TimeoutError)."""
        return int(self._client._call(_within, timeout, self._election.campaign, value))

    def proclaim(self, value: Value) -> None:
        self._client._call(self._election.proclaim, value)

    def resign(self) -> None:
        self._client._call(self._election.resign)

    def leader(self) -> KeyValue | None:
        result: KeyValue | None = self._client._call(self._election.leader)
        return result

    def observe(self) -> Iterator[KeyValue]:
        return self._client._iterate(self._election.observe())


__all__ = [
    "ELECTION_PREFIX",
    "LOCK_PREFIX",
    "AsyncElection",
    "AsyncLock",
    "Election",
    "Lock",
    "LockLost",
]
