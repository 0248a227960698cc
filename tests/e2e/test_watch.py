"""Watch through a real grpcio client against a real node.

One node (replay in batches of 8, so replays cross batch boundaries) serves every test but
the slow-watcher one, which needs a node with a tiny per-watcher buffer. Each stream is
read by a background thread into a queue, so every wait has a bound.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 5.0
PUT, DELETE = pb.EVENT_TYPE_PUT, pb.EVENT_TYPE_DELETE


# The shared `node` fixture (tests/conftest.py) starts the node with these.
NODE_ENV = {"GINNUNGAGAP_WATCH__REPLAY_BATCH": "8"}


@pytest.fixture(scope="module")
def kv(node: NodeProcess) -> kv_pb2_grpc.KvServiceStub:
    return node.kv_stub()


class WatchReader:
    """Reads one Watch stream in a thread; responses (or the final error) go to a queue."""

    def __init__(self, kv: kv_pb2_grpc.KvServiceStub, req: pb.WatchRequest, *, start: bool = True) -> None:
        self.call = kv.Watch(req, timeout=120)
        self.responses: queue.Queue[pb.WatchResponse | grpc.RpcError | None] = queue.Queue()
        self.progress_notices = 0
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for resp in self.call:
                self.responses.put(resp)
        except grpc.RpcError as exc:
            self.responses.put(exc)
        else:
            self.responses.put(None)

    def next_response(self, timeout: float = T) -> pb.WatchResponse:
        """The next response that carries events (progress notices are counted and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "no watch response in time"
            try:
                item = self.responses.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError("no watch response in time") from None
            if isinstance(item, grpc.RpcError):
                self.error = item
                raise item
            assert item is not None, "watch stream ended without an error"
            if item.events:
                return item
            self.progress_notices += 1

    def events(self, n: int, timeout: float = T) -> list[pb.Event]:
        """Exactly the next n events (fails if a response overshoots n)."""
        out: list[pb.Event] = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            out += self.next_response(max(0.01, deadline - time.monotonic())).events
        assert len(out) == n, f"got {len(out)} events, wanted {n}"
        return out

    def assert_quiet(self, wait: float = 0.3) -> None:
        """No event arrives within `wait` (a sanity check, not a timing assertion)."""
        deadline = time.monotonic() + wait
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                item = self.responses.get(timeout=remaining)
            except queue.Empty:
                return
            assert isinstance(item, pb.WatchResponse) and not item.events, item

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(T)


def put(kv: kv_pb2_grpc.KvServiceStub, key: str, value: bytes, **kw: object) -> int:
    return kv.Put(pb.PutRequest(key=key, value=value, **kw), timeout=T).header.revision  # type: ignore[arg-type]


def delete(kv: kv_pb2_grpc.KvServiceStub, key: str) -> int:
    return kv.Delete(pb.DeleteRequest(key=key), timeout=T).header.revision


def summary(events: list[pb.Event]) -> list[tuple[int, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.kv.mod_revision) for e in events]


# -- tests ---------------------------------------------------------------------------------


def test_watch_key_from_now(kv: kv_pb2_grpc.KvServiceStub) -> None:
    put(kv, "wk/k", b"before")  # not reported: it happened before the watch
    w = WatchReader(kv, pb.WatchRequest(key="wk/k"))
    try:
        # "From now" is decided when the server handles the request; give it a moment so
        # the writes below are certainly after it.
        time.sleep(0.5)
        r1 = put(kv, "wk/k", b"v1")
        put(kv, "wk/other", b"x")  # another key: not reported
        r2 = put(kv, "wk/k", b"v2")
        r3 = delete(kv, "wk/k")
        r4 = put(kv, "wk/k", b"v3")
        events = w.events(4)
        assert summary(events) == [
            (PUT, "wk/k", b"v1", r1),
            (PUT, "wk/k", b"v2", r2),
            (DELETE, "wk/k", b"", r3),
            (PUT, "wk/k", b"v3", r4),
        ]
        assert [e.kv.version for e in events if e.type == PUT] == [2, 3, 1]
        assert events[3].kv.create_revision == r4
        assert not any(e.expired for e in events)
        assert not any(e.HasField("prev_kv") for e in events)  # not asked for
        w.assert_quiet()
    finally:
        w.close()


def test_watch_from_explicit_revision_and_header(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r0 = put(kv, "wh/k", b"0")
    w = WatchReader(kv, pb.WatchRequest(key="wh/k", start_revision=r0 + 1))
    try:
        r1 = put(kv, "wh/k", b"1")
        resp = w.next_response()
        assert summary(list(resp.events)) == [(PUT, "wh/k", b"1", r1)]
        assert resp.header.revision >= r1
        assert (resp.header.member_id, resp.header.leader_id) == (1, 1)
    finally:
        w.close()


def test_prefix_watch(kv: kv_pb2_grpc.KvServiceStub) -> None:
    start = put(kv, "wp-anchor", b"") + 1
    w = WatchReader(kv, pb.WatchRequest(prefix="wp/", start_revision=start))
    try:
        r1 = put(kv, "wp/a", b"1")
        put(kv, "wp", b"no")  # shorter than the prefix
        put(kv, "wq/a", b"no")
        r2 = put(kv, "wp/b/c", b"2")
        put(kv, "w", b"no")
        r3 = delete(kv, "wp/a")
        r4 = put(kv, "wp/", b"3")  # the prefix itself matches
        assert summary(w.events(4)) == [
            (PUT, "wp/a", b"1", r1),
            (PUT, "wp/b/c", b"2", r2),
            (DELETE, "wp/a", b"", r3),
            (PUT, "wp/", b"3", r4),
        ]
        w.assert_quiet()
    finally:
        w.close()


def test_start_revision_in_the_past_replays_then_goes_live(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """Replay of stored history runs while another thread keeps writing: every write is
    seen exactly once, in strictly increasing revision order, with no gap."""
    written: list[tuple[int, str, bytes]] = []
    for i in range(60):  # several replay batches of 8
        key, value = f"wr/{i % 7}", f"old-{i}".encode()
        written.append((put(kv, key, value), key, value))
    put(kv, "wr-outside", b"x")
    first = written[0][0]

    stop = threading.Event()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set() and i < 400:
                key, value = f"wr/{i % 5}", f"new-{i}".encode()
                rev = put(kv, key, value)
                with lock:
                    written.append((rev, key, value))
                i += 1
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    w = WatchReader(kv, pb.WatchRequest(prefix="wr/", start_revision=first))
    try:
        time.sleep(0.5)  # writes land during the replay and after the switch to live
        stop.set()
        t.join(T * 2)
        assert not t.is_alive()
        assert not errors, errors
        with lock:
            expected = sorted(written)
        got = w.events(len(expected), timeout=30)
        revisions = [e.kv.mod_revision for e in got]
        assert revisions == sorted(set(revisions)), "revisions not strictly increasing"
        assert [(e.kv.mod_revision, e.kv.key, e.kv.value) for e in got] == expected
        assert all(e.type == PUT for e in got)
        w.assert_quiet()
    finally:
        stop.set()
        t.join(T)
        w.close()


def test_start_revision_in_the_future(kv: kv_pb2_grpc.KvServiceStub) -> None:
    cur = put(kv, "wf/k", b"0")
    w = WatchReader(kv, pb.WatchRequest(key="wf/k", start_revision=cur + 3))
    try:
        put(kv, "wf/k", b"1")
        put(kv, "wf/k", b"2")
        r3 = put(kv, "wf/k", b"3")
        r4 = put(kv, "wf/k", b"4")
        assert summary(w.events(2)) == [(PUT, "wf/k", b"3", r3), (PUT, "wf/k", b"4", r4)]
    finally:
        w.close()


def test_prev_kv(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r1 = put(kv, "wprev/k", b"v1")
    r2 = put(kv, "wprev/k", b"v2")
    r3 = delete(kv, "wprev/k")
    r4 = put(kv, "wprev/k", b"v3")
    w = WatchReader(kv, pb.WatchRequest(key="wprev/k", start_revision=r1, prev_kv=True))
    try:
        replayed = w.events(4)
        r5 = put(kv, "wprev/k", b"v4")
        live = w.events(1)
    finally:
        w.close()
    events = replayed + live
    assert [e.kv.mod_revision for e in events] == [r1, r2, r3, r4, r5]
    assert not events[0].HasField("prev_kv")  # created: nothing before
    assert (events[1].prev_kv.value, events[1].prev_kv.mod_revision) == (b"v1", r1)
    assert (events[2].prev_kv.value, events[2].prev_kv.mod_revision, events[2].prev_kv.version) == (
        b"v2",
        r2,
        2,
    )
    assert not events[3].HasField("prev_kv")  # re-created after the delete
    assert (events[4].prev_kv.value, events[4].prev_kv.mod_revision) == (b"v3", r4)


def test_txn_events_share_one_revision(kv: kv_pb2_grpc.KvServiceStub) -> None:
    put(kv, "wt/c", b"old")
    start = put(kv, "wt-anchor", b"") + 1
    w = WatchReader(kv, pb.WatchRequest(prefix="wt/", start_revision=start))
    try:
        r = kv.Txn(
            pb.TxnRequest(
                success=[
                    pb.TxnOp(put=pb.PutRequest(key="wt/a", value=b"1")),
                    pb.TxnOp(put=pb.PutRequest(key="wt/b", value=b"2")),
                    pb.TxnOp(delete=pb.DeleteRequest(key="wt/c")),
                    pb.TxnOp(get=pb.GetRequest(key="wt/a")),
                ]
            ),
            timeout=T,
        )
        rev = r.header.revision
        after = put(kv, "wt/a", b"after")
        events = w.events(4)
    finally:
        w.close()
    assert [e.kv.mod_revision for e in events] == [rev, rev, rev, after]
    assert sorted((e.type, e.kv.key, e.kv.value) for e in events[:3]) == [
        (PUT, "wt/a", b"1"),
        (PUT, "wt/b", b"2"),
        (DELETE, "wt/c", b""),
    ]
    assert (events[3].kv.key, events[3].kv.value) == ("wt/a", b"after")


def test_many_watchers_see_the_same_stream(kv: kv_pb2_grpc.KvServiceStub) -> None:
    start = put(kv, "wm-anchor", b"") + 1
    readers = [WatchReader(kv, pb.WatchRequest(prefix="wm/", start_revision=start)) for _ in range(5)]
    try:
        revs = [put(kv, f"wm/{i % 3}", str(i).encode()) for i in range(30)]
        for w in readers:
            assert [e.kv.mod_revision for e in w.events(30)] == revs
    finally:
        for w in readers:
            w.close()


def test_watch_survives_idle_progress(kv: kv_pb2_grpc.KvServiceStub) -> None:
    """Empty responses are progress notices; the stream keeps delivering after them."""
    start = put(kv, "wi-anchor", b"") + 1
    w = WatchReader(kv, pb.WatchRequest(key="wi/k", start_revision=start))
    try:
        w.assert_quiet(0.5)
        rev = put(kv, "wi/k", b"v")
        assert summary(w.events(1)) == [(PUT, "wi/k", b"v", rev)]
    finally:
        w.close()


def test_zz_start_below_compacted_revision(kv: kv_pb2_grpc.KvServiceStub) -> None:
    r1 = put(kv, "wc/k", b"1")
    r2 = put(kv, "wc/k", b"2")
    r3 = put(kv, "wc/k", b"3")
    kv.Compact(pb.CompactRequest(revision=r2), timeout=T)
    w = WatchReader(kv, pb.WatchRequest(key="wc/k", start_revision=r1))
    try:
        with pytest.raises(grpc.RpcError):
            w.next_response()
        assert w.error is not None
        assert w.error.code() == grpc.StatusCode.OUT_OF_RANGE, w.error
        assert str(r2) in (w.error.details() or ""), w.error.details()
    finally:
        w.close()
    # At the compacted revision itself the history is still there.
    w = WatchReader(kv, pb.WatchRequest(key="wc/k", start_revision=r2))
    try:
        assert summary(w.events(2)) == [(PUT, "wc/k", b"2", r2), (PUT, "wc/k", b"3", r3)]
    finally:
        w.close()


def test_cancelled_watch_releases_its_slot(node_factory: Callable[..., NodeProcess]) -> None:
    """A watch the client cancels (RST_STREAM on a connection that stays open) must stop
    counting against max_in_flight promptly, not only when its next progress notice fails."""
    small = node_factory(env={"GINNUNGAGAP_LIMITS__MAX_IN_FLIGHT": "4"})
    kv = small.kv_stub()
    rev = put(kv, "slot/k", b"v")
    for _ in range(4):
        call = kv.Watch(pb.WatchRequest(key="slot/k", start_revision=rev), timeout=30)
        assert next(call).events[0].kv.value == b"v"
        call.cancel()
    deadline = time.monotonic() + 2.0  # generous: etcd releases a cancelled watch at once
    while True:
        try:
            assert kv.Get(pb.GetRequest(key="slot/k"), timeout=T).kv.value == b"v"
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, "cancelled watches still hold their in-flight slots"
            time.sleep(0.05)


def test_slow_watcher_is_cancelled(node_factory: Callable[..., NodeProcess]) -> None:
    """A watcher that stops reading falls behind its 16-event buffer and is cancelled with
    RESOURCE_EXHAUSTED, while other clients keep working."""
    slow_node = node_factory(env={"GINNUNGAGAP_WATCH__BUFFER_EVENTS": "16"})
    kv = slow_node.kv_stub()
    start = put(kv, "slow-anchor", b"") + 1
    # Its own connection, so HTTP/2 flow control stalls only this watcher's stream.
    channel = slow_node.new_channel()
    slow = WatchReader(
        kv_pb2_grpc.KvServiceStub(channel), pb.WatchRequest(prefix="s/", start_revision=start), start=False
    )
    fast = WatchReader(kv, pb.WatchRequest(prefix="s/", start_revision=start))
    try:
        value = b"x" * 16384  # big enough that the unread stream's flow-control windows fill up
        revs = [put(kv, f"s/{i % 10}", value) for i in range(400)]
        # Others kept working all along, including another watcher that reads.
        assert [e.kv.mod_revision for e in fast.events(len(revs), timeout=30)] == revs
        assert kv.Get(pb.GetRequest(key="s/0"), timeout=T).kv.mod_revision == revs[-10]
        # Now drain the slow one: whatever it got is a gap-free prefix, then the error.
        slow.start()
        got: list[int] = []
        with pytest.raises(grpc.RpcError):
            while True:
                got += [e.kv.mod_revision for e in slow.next_response(timeout=15).events]
        assert slow.error is not None
        assert slow.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, slow.error
        assert len(got) < len(revs)
        assert got == revs[: len(got)]
    finally:
        slow.close()
        fast.close()
