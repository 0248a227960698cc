"""Watcher buffering: matching, ordering, and cancellation of slow watchers."""

from __future__ import annotations

import pytest
import trio

from ggap.replica import AppliedBatch
from ggap.server.watch import Watcher, WatchHub
from ggap.types import Event, EventType, KeyValue, ResourceExhausted


def put_event(key: str, rev: int) -> Event:
    return Event(EventType.PUT, KeyValue(key, b"v", rev, rev, 1))


async def test_watcher_gets_matching_events_from_its_start_revision() -> None:
    hub = WatchHub(published_revision=0)
    w = Watcher(key=None, prefix="a/", start_revision=3, max_events=10)
    hub.join(w)
    for rev, key in enumerate(["a/1", "b/1", "a/2", "a/3", "ab"], start=1):
        hub.publish(AppliedBatch(applied_index=rev, revision=rev, events=[put_event(key, rev)]))
    events = await w.next_events(0.01)
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == [("a/2", 3), ("a/3", 4)]
    assert w.next_revision == 5
    assert hub.published_revision == 5
    # Nothing new: an empty answer after the idle timeout.
    with trio.fail_after(1):
        assert await w.next_events(0.01) == []


async def test_exact_key_watch_does_not_match_prefixes() -> None:
    hub = WatchHub(published_revision=0)
    w = Watcher(key="a", prefix=None, start_revision=1, max_events=10)
    hub.join(w)
    hub.publish(AppliedBatch(1, 2, [put_event("ab", 1), put_event("a", 2)]))
    assert [e.kv.key for e in await w.next_events(0.01)] == ["a"]


async def test_slow_watcher_is_cancelled_with_resume_revision() -> None:
    hub = WatchHub(published_revision=0)
    w = Watcher(key="k", prefix=None, start_revision=1, max_events=4)
    hub.join(w)
    for rev in range(1, 7):
        hub.publish(AppliedBatch(rev, rev, [put_event("k", rev)]))
    with pytest.raises(ResourceExhausted, match="start_revision=1"):
        await w.next_events(0.01)


async def test_left_watcher_receives_nothing() -> None:
    hub = WatchHub(published_revision=0)
    w = Watcher(key="k", prefix=None, start_revision=1, max_events=4)
    hub.join(w)
    hub.leave(w)
    hub.publish(AppliedBatch(1, 1, [put_event("k", 1)]))
    assert len(hub) == 0
    assert await w.next_events(0.01) == []
