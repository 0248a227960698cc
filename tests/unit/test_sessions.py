"""Client sessions: the table's rules, the outcome codec, and kv.db applying session writes
exactly once across retries, restarts and snapshot installs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ggap import codec
from ggap.config.model import MvccConfig, StorageConfig
from ggap.sessions import Admission, SessionTable
from ggap.storage import KvStore
from ggap.storage.snapshot import take_snapshot
from ggap.types import (
    CloseSession,
    CodecError,
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    FailedPrecondition,
    GetResult,
    InvalidArgument,
    KeyValue,
    OpenSession,
    OutOfRange,
    Put,
    PutResult,
    RangeResult,
    ResourceExhausted,
    SessionClock,
    SessionExpired,
    SessionResult,
    SessionWrite,
    Txn,
    TxnGet,
    TxnResult,
)

OPEN = OpenSession(max_sessions=3, max_unacked=4)


def w(session: int, seq: int, low: int = 1, cmd: Put | Delete | Txn | Compact | None = None) -> SessionWrite:
    return SessionWrite(session=session, seq=seq, lowest_unacked=low, command=cmd or Put("k", b"v"))


# --- the table -------------------------------------------------------------------------


def test_first_write_applies_and_a_retry_is_a_duplicate() -> None:
    t = SessionTable()
    sid, evicted = t.open(7, OPEN)
    assert (sid, evicted) == (7, [])
    assert t.admit(7, 1, 1).verdict is Admission.APPLY
    t.save(7, 1)
    assert t.admit(7, 1, 1).verdict is Admission.DUPLICATE
    # Writes may apply out of order (many in flight): each is decided on its own.
    assert t.admit(7, 3, 1).verdict is Admission.APPLY
    t.save(7, 3)
    assert t.admit(7, 2, 1).verdict is Admission.APPLY


def test_lowest_unacked_forgets_results_and_refuses_acknowledged_numbers() -> None:
    t = SessionTable()
    t.open(1, OPEN)
    for q in (1, 2, 3):
        t.admit(1, q, 1)
        t.save(1, q)
    admitted = t.admit(1, 4, 3)
    assert admitted.forgotten == (1, 2)
    assert admitted.verdict is Admission.APPLY
    with pytest.raises(FailedPrecondition, match="acknowledged already"):
        t.admit(1, 2, 2)
    assert t.admit(1, 3, 3).verdict is Admission.DUPLICATE


def test_bad_numbers_unknown_session_and_a_full_session_are_refused() -> None:
    t = SessionTable()
    with pytest.raises(SessionExpired) as exc:
        t.admit(9, 1, 1)
    assert exc.value.session == 9
    t.open(1, OPEN)
    for bad in (w(1, 0, 0), w(1, 2, 3), w(1, 5, 0)):
        with pytest.raises(InvalidArgument):
            t.admit(bad.session, bad.seq, bad.lowest_unacked)
    for q in range(1, 5):
        t.admit(1, q, 1)
        t.save(1, q)
    with pytest.raises(ResourceExhausted, match="without acknowledgement"):
        t.admit(1, 5, 1)
    # Acknowledging makes room again.
    assert t.admit(1, 5, 2).verdict is Admission.APPLY


def test_eviction_takes_the_least_recently_active_then_the_oldest_id() -> None:
    t = SessionTable()
    t.advance(SessionClock(now_ms=1000, idle_timeout_ms=10_000))
    for index in (10, 11, 12):
        t.open(index, OPEN)
    t.advance(SessionClock(now_ms=2000, idle_timeout_ms=10_000))
    t.admit(10, 1, 1)  # 10 is now the most recently active
    _, evicted = t.open(13, OPEN)
    assert evicted == [11]
    _, evicted = t.open(14, OpenSession(max_sessions=2, max_unacked=4))
    assert evicted == [12, 10]  # 10 and 13 were both last active at 2000: the older id goes
    assert [s.id for s in t.sessions()] == [13, 14]


def test_expiry_follows_log_time_only() -> None:
    t = SessionTable()
    t.open(1, OPEN)
    t.open(2, OPEN)
    # The first clock starts log time: sessions opened before it count as active now.
    assert t.advance(SessionClock(now_ms=50_000, idle_timeout_ms=1000)) == []
    t.advance(SessionClock(now_ms=50_600, idle_timeout_ms=1000))
    t.admit(2, 1, 1)
    assert t.advance(SessionClock(now_ms=51_200, idle_timeout_ms=1000)) == [1]
    # A clock behind log time (a new leader's) does not move it back.
    assert t.advance(SessionClock(now_ms=10, idle_timeout_ms=1000)) == []
    assert t.clock_ms == 51_200
    assert t.advance(SessionClock(now_ms=51_700, idle_timeout_ms=1000)) == [2]
    with pytest.raises(SessionExpired):
        t.admit(2, 2, 1)


def test_changes_report_what_to_persist_once() -> None:
    t = SessionTable()
    t.open(1, OPEN)
    t.open(2, OPEN)
    t.close(1)
    ch = t.changes()
    assert [s.id for s in ch.upserted] == [2] and ch.removed == (1,)
    assert not t.changed
    copy = t.copy()
    copy.admit(2, 1, 1)
    assert copy.changed and not t.changed


# --- the outcome codec -----------------------------------------------------------------

KV = KeyValue("a", b"\x00\xff", create_revision=2, mod_revision=5, version=3, expires_at_ms=9)


@pytest.mark.parametrize(
    "outcome",
    [
        PutResult(revision=4, prev_kv=None),
        PutResult(revision=4, prev_kv=KV),
        DeleteResult(revision=6, deleted=True, prev_kv=KV),
        CompactResult(revision=8),
        TxnResult(
            revision=9,
            succeeded=False,
            responses=(GetResult(kv=KV), GetResult(kv=None), RangeResult(kvs=(KV, KV), more=True, count=7)),
        ),
    ],
)
def test_outcomes_round_trip(outcome: object) -> None:
    assert codec.decode_outcome(codec.encode_outcome(outcome)) == outcome  # type: ignore[arg-type]


def test_error_outcomes_keep_class_message_and_revisions() -> None:
    back = codec.decode_outcome(
        codec.encode_outcome(OutOfRange("too old", compact_revision=3, current_revision=9))
    )
    assert isinstance(back, OutOfRange)
    assert (back.message, back.compact_revision, back.current_revision) == ("too old", 3, 9)
    back = codec.decode_outcome(codec.encode_outcome(InvalidArgument("bad")))
    assert type(back) is InvalidArgument and back.message == "bad"


def test_corrupt_outcomes_are_codec_errors() -> None:
    good = codec.encode_outcome(PutResult(revision=1, prev_kv=None))
    for bad in (good[:-1], codec.pack((2, 1, 1, ())), codec.pack((1, 99)), codec.pack((1, 1, "x", ()))):
        with pytest.raises(CodecError):
            codec.decode_outcome(bad)


def test_session_commands_round_trip_and_refuse_nesting() -> None:
    cmds: list[Command] = [
        OPEN,
        CloseSession(session=4),
        SessionClock(now_ms=123, idle_timeout_ms=456),
        w(4, 2, 1, Txn(compare=(Compare("k", CompareTarget.VERSION, CompareOp.EQUAL, number=0),))),
        w(4, 3, 2, Compact(revision=5)),
    ]
    for cmd in cmds:
        assert codec.decode_command(codec.encode_command(cmd)) == cmd
    nested = codec.pack((1, 13, 4, 2, 1, codec.command_to_value(OPEN)))
    with pytest.raises(CodecError, match="must carry"):
        codec.decode_command(nested)
    with pytest.raises(CodecError):
        codec.encode_command(SessionWrite(session=1, seq=1, lowest_unacked=1, command=OPEN))  # type: ignore[arg-type]


# --- kv.db -----------------------------------------------------------------------------


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.kv = KvStore.open(path, mvcc=MvccConfig(), storage=StorageConfig())

    def apply(self, *cmds: Command) -> list[object]:
        index = self.kv.applied_index
        batch = [(index + i + 1, c) for i, c in enumerate(cmds)]
        return [a.result if a is not None else None for a in self.kv.apply(batch)]

    def reopen(self) -> None:
        self.kv.close()
        self.kv = KvStore.open(self.path, mvcc=MvccConfig(), storage=StorageConfig())

    def value(self, key: str) -> bytes | None:
        with self.kv.reader() as r:
            got, _ = r.get(key)
        return None if got is None else got.value


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "kv.db")
    yield s
    s.kv.close()


def _incr(session: int, seq: int, low: int, expect: bytes | None, new: bytes) -> SessionWrite:
    target = CompareTarget.VALUE if expect is not None else CompareTarget.EXISTS
    compare = Compare("n", target, CompareOp.EQUAL, value=expect or b"", number=0)
    return w(session, seq, low, Txn(compare=(compare,), success=(Put("n", new),), failure=(TxnGet("n"),)))


def test_kv_applies_a_retried_cas_once_and_answers_the_first_result(store: Store) -> None:
    (opened,) = store.apply(OPEN)
    assert isinstance(opened, SessionResult)
    sid = opened.session
    first, retry = store.apply(_incr(sid, 1, 1, None, b"1"), _incr(sid, 1, 1, None, b"1"))
    assert isinstance(first, TxnResult) and first.succeeded
    assert retry == first
    # A retry after the state moved on still gets the first answer, not a failed compare.
    store.apply(Put("n", b"5"))
    assert store.apply(_incr(sid, 1, 1, None, b"1")) == [first]
    assert store.value("n") == b"5"
    # Nor a crash or restart: the table and results are in kv.db.
    store.reopen()
    assert store.apply(_incr(sid, 1, 1, None, b"1")) == [first]
    assert store.kv.sessions == 1


def test_kv_saves_errors_and_refuses_unknown_sessions(store: Store) -> None:
    (opened,) = store.apply(OPEN)
    assert isinstance(opened, SessionResult)
    sid = opened.session
    (err,) = store.apply(w(sid, 1, 1, Compact(revision=99)))
    assert isinstance(err, OutOfRange)
    store.apply(Put("a", b"1"), Put("a", b"2"), Put("a", b"3"))
    (again,) = store.apply(w(sid, 1, 1, Compact(revision=2)))
    assert isinstance(again, OutOfRange) and again.message == err.message
    (gone,) = store.apply(w(sid + 100, 1, 1, Put("x", b"1")))
    assert isinstance(gone, SessionExpired)
    assert store.value("x") is None
    (closed,) = store.apply(CloseSession(session=sid))
    assert isinstance(closed, SessionResult) and closed.closed
    (after,) = store.apply(w(sid, 2, 1, Put("x", b"1")))
    assert isinstance(after, SessionExpired)
    store.reopen()
    assert store.kv.sessions == 0


def test_kv_session_table_travels_in_snapshots(store: Store, tmp_path: Path) -> None:
    (opened,) = store.apply(OPEN)
    assert isinstance(opened, SessionResult)
    sid = opened.session
    (first,) = store.apply(w(sid, 1, 1, Put("k", b"v1")))
    store.apply(SessionClock(now_ms=1000, idle_timeout_ms=60_000))
    (tmp_path / "snaps").mkdir()
    snap = take_snapshot(store.path, tmp_path / "snaps", busy_timeout_ms=5000)
    other = Store(tmp_path / "other.db")
    try:
        other.kv.install_snapshot(snap.path)
        assert other.kv.sessions == 1
        assert other.apply(w(sid, 1, 1, Put("k", b"v1"))) == [first]
        assert other.value("k") == b"v1"
        (second,) = other.apply(w(sid, 2, 2, Put("k", b"v2")))
        assert isinstance(second, PutResult) and second.revision == first.revision + 1  # type: ignore[union-attr]
    finally:
        other.kv.close()


def test_kv_expiry_and_eviction_are_replicated_decisions(store: Store) -> None:
    store.apply(SessionClock(now_ms=1000, idle_timeout_ms=500))
    results = store.apply(OPEN, OPEN, OPEN, OPEN)
    ids = [r.session for r in results if isinstance(r, SessionResult)]
    last = results[-1]
    assert isinstance(last, SessionResult) and last.evicted == (ids[0],)
    (clock,) = store.apply(SessionClock(now_ms=1400, idle_timeout_ms=500))
    assert isinstance(clock, SessionResult) and clock.expired == ()
    store.apply(w(ids[3], 1, 1, Put("k", b"v")))  # log time 1400
    (clock,) = store.apply(SessionClock(now_ms=1600, idle_timeout_ms=500))
    assert isinstance(clock, SessionResult) and clock.expired == tuple(ids[1:3])
    store.reopen()
    assert store.kv.sessions == 1
