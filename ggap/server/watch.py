"""Watch fan-out.

A watcher first replays stored history (unsynced), then joins the hub (synced) and gets
live events. The switch happens only when the hub has published nothing newer than the
snapshot the replay read, and live events below the watcher's next revision are dropped:
together that gives no gaps and no duplicates. A synced watcher has a bounded buffer; one
that falls further behind is cancelled with RESOURCE_EXHAUSTED telling it where to resume,
so a slow client never makes the node buffer without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import trio

from ggap.replica import AppliedBatch
from ggap.types import Event, GgapError, ResourceExhausted, Unavailable


class Watcher:
    def __init__(self, *, key: str | None, prefix: str | None, start_revision: int, max_events: int) -> None:
        self.key = key
        self.prefix = prefix
        self.next_revision = start_revision
        self._max_events = max_events
        self._queue: deque[Event] = deque()
        self._wake = trio.Event()
        self.error: GgapError | None = None

    def matches(self, ev: Event) -> bool:
        if ev.kv.mod_revision < self.next_revision:
            return False
        if self.prefix is not None:
            return ev.kv.key.startswith(self.prefix)
        return ev.kv.key == self.key

    def fail(self, error: GgapError) -> None:
        self.error = error
        self._queue.clear()
        self._wake.set()

    def offer(self, events: Sequence[Event]) -> None:
        if self.error is not None:
            return
        mine = [ev for ev in events if self.matches(ev)]
        if not mine:
            return
        if len(self._queue) + len(mine) > self._max_events:
            resume = self._queue[0].kv.mod_revision if self._queue else mine[0].kv.mod_revision
            self.error = ResourceExhausted(
                f"watch cancelled: the client fell more than {self._max_events} events behind; "
                f"watch again with start_revision={resume}"
            )
            self._queue.clear()
        else:
            self._queue.extend(mine)
        self._wake.set()

    async def next_events(self, idle_timeout: float) -> list[Event]:
        """Queued events (maybe none, after `idle_timeout`); raises if the watcher was cancelled."""
        if not self._queue and self.error is None:
            with trio.move_on_after(idle_timeout):
                await self._wake.wait()
        self._wake = trio.Event()
        if self.error is not None:
            raise self.error
        out = list(self._queue)
        self._queue.clear()
        if out:
            self.next_revision = out[-1].kv.mod_revision + 1
        return out


class WatchHub:
    def __init__(self, published_revision: int) -> None:
        self.published_revision = published_revision
        self._watchers: set[Watcher] = set()
        # For metrics: watch streams open now (replaying or live) and events sent so far.
        self.streams = 0
        self.events_sent = 0

    def publish(self, batch: AppliedBatch) -> None:
        if batch.snapshot_installed:
            # The state jumped with no events to show for it: end every live watch with where
            # to resume; resuming replays from storage or answers OUT_OF_RANGE (compacted),
            # so a watcher never sees a gap.
            for w in list(self._watchers):
                w.fail(
                    Unavailable(
                        f"this node installed a snapshot at revision {batch.revision}; "
                        f"resume the watch from revision {w.next_revision}"
                    )
                )
        if batch.events:
            for w in list(self._watchers):
                w.offer(batch.events)
        self.published_revision = max(self.published_revision, batch.revision)

    def join(self, watcher: Watcher) -> None:
        self._watchers.add(watcher)

    def leave(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_all(self, error: GgapError) -> None:
        """End every watch with `error` (shutdown): clients get a status, not a dropped socket."""
        for w in list(self._watchers):
            w.fail(error)

    def __len__(self) -> int:
        return len(self._watchers)
