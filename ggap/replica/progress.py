"""How far a replica has applied, and the reads parked until it gets further.

Shared by every Consensus implementation: linearizable reads wait for an applied index,
sequential reads for a revision, and shutdown must release them all at once.
"""

from __future__ import annotations

import heapq
import itertools

import trio

from ggap.types import Unavailable


class _Waiters:
    """Tasks parked until a counter reaches a target."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, trio.Event]] = []
        self._seq = itertools.count()

    def add(self, target: int) -> trio.Event:
        ev = trio.Event()
        heapq.heappush(self._heap, (target, next(self._seq), ev))
        return ev

    def release_upto(self, value: int) -> None:
        while self._heap and self._heap[0][0] <= value:
            heapq.heappop(self._heap)[2].set()

    def release_all(self) -> None:
        self.release_upto(2**64)


class AppliedProgress:
    def __init__(self, applied: int, revision: int) -> None:
        self.applied = applied
        self.revision = revision
        self.closed = False
        self._index_waiters = _Waiters()
        self._revision_waiters = _Waiters()

    def advance(self, applied: int, revision: int) -> None:
        self.applied, self.revision = applied, revision
        self._index_waiters.release_upto(applied)
        self._revision_waiters.release_upto(revision)

    def close(self) -> None:
        """Every current and future wait that is not already satisfied fails."""
        self.closed = True
        self._index_waiters.release_all()
        self._revision_waiters.release_all()

    async def wait_applied(self, index: int) -> None:
        if self.applied >= index:
            return
        if self.closed:
            raise Unavailable("node is shutting down")
        await self._index_waiters.add(index).wait()
        if self.applied < index:
            raise Unavailable("node is shutting down")

    async def wait_revision(self, revision: int) -> None:
        if self.revision >= revision:
            return
        if self.closed:
            raise Unavailable("node is shutting down")
        await self._revision_waiters.add(revision).wait()
        if self.revision < revision:
            raise Unavailable("node is shutting down")
