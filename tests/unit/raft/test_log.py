"""The log view (storage + unstable) and MemoryStorage, the reference LogStorage."""

from __future__ import annotations

import pytest

from ggap.consensus.raft import (
    Entry,
    HardState,
    LogCompactedError,
    LogUnavailableError,
    MemoryStorage,
    SnapshotMeta,
)
from ggap.consensus.raft.log import RaftLog, limit_size
from ggap.consensus.raft.readonly import ReadOnly, ReadRequest, decode_round


def ents(*terms: int, start: int = 1, size: int = 0) -> list[Entry]:
    return [Entry(index=start + i, term=t, data=b"x" * size) for i, t in enumerate(terms)]


def test_memory_storage_reads_truncates_and_compacts() -> None:
    st = MemoryStorage(ents(1, 1, 2, 2))
    assert (st.first_index(), st.last_index(), st.term(0), st.term(3)) == (1, 4, 0, 2)
    st.append(ents(3, 3, start=3))  # overwrites 3..4
    assert [(e.index, e.term) for e in st.entries(1, 5, 1 << 20)] == [(1, 1), (2, 1), (3, 3), (4, 3)]
    with pytest.raises(ValueError):
        st.append(ents(3, start=9))  # gap
    st.compact(2)
    assert st.first_index() == 3 and st.snapshot() == SnapshotMeta(index=2, term=1)
    assert st.term(2) == 1
    with pytest.raises(LogCompactedError):
        st.term(1)
    with pytest.raises(LogCompactedError):
        st.entries(2, 4, 100)
    with pytest.raises(LogUnavailableError):
        st.entries(3, 6, 100)
    st.append(ents(1, 1, 3))  # entries 1..2 are under the snapshot and skipped
    assert [(e.index, e.term) for e in st.entries(3, 4, 100)] == [(3, 3)]
    st.apply_snapshot(SnapshotMeta(index=10, term=4))
    assert (st.first_index(), st.last_index(), st.term(10)) == (11, 10, 4)
    assert st.initial_state() == (HardState(), SnapshotMeta(index=10, term=4))


def test_size_limit_keeps_at_least_one_entry() -> None:
    big = ents(1, 1, 1, size=100)
    assert len(limit_size(big, 0)) == 1
    assert len(limit_size(big, 200)) == 2
    assert len(limit_size(big, 299)) == 2
    assert len(MemoryStorage(big).entries(1, 4, 250)) == 2


def test_log_reads_across_storage_and_unstable() -> None:
    st = MemoryStorage(ents(1, 1, 1, size=10))
    log = RaftLog(st, max_apply_bytes=1 << 20)
    log.append(ents(2, 2, start=4, size=10))
    assert log.last_index() == 5 and log.persisted_last_index() == 3
    assert [e.index for e in log.slice(2, 6, 1 << 20)] == [2, 3, 4, 5]
    assert [e.index for e in log.slice(2, 6, 25)] == [2, 3]
    assert log.term(5) == 2 and log.term(0) == 0
    with pytest.raises(LogUnavailableError):
        log.term(6)
    # A follower overwriting a durable suffix: the unstable copy shadows storage.
    log.append(ents(3, start=3))
    assert [(e.index, e.term) for e in log.slice(1, 4, 1 << 20)] == [(1, 1), (2, 1), (3, 3)]
    assert log.persisted_last_index() == 2 and log.last_index() == 3


def test_maybe_append_matches_truncates_and_commits() -> None:
    log = RaftLog(MemoryStorage(ents(1, 1, 2)), max_apply_bytes=1 << 20)
    assert log.maybe_append(3, 1, 5, ents(3, start=4)) is None  # (3, 1) does not match
    assert log.maybe_append(2, 1, 3, ents(3, 3, start=3)) == 4
    assert [log.term(i) for i in (1, 2, 3, 4)] == [1, 1, 3, 3]
    assert log.committed == 3  # min(leader commit, last new entry)
    assert log.maybe_append(1, 1, 9, ents(1, start=2)) == 2  # already held: nothing truncated
    assert log.last_index() == 4 and log.committed == 3  # never beyond what this APPEND covers
    with pytest.raises(AssertionError):
        log.maybe_append(1, 1, 3, ents(2, start=2))  # would rewrite a committed entry


def test_find_conflict_by_term_skips_a_whole_term() -> None:
    log = RaftLog(MemoryStorage(ents(1, 1, 3, 3, 3, 5, 5)), max_apply_bytes=1 << 20)
    assert log.find_conflict_by_term(7, 5) == (7, 5)
    assert log.find_conflict_by_term(7, 4) == (5, 3)
    assert log.find_conflict_by_term(7, 2) == (2, 1)
    assert log.find_conflict_by_term(7, 0) == (0, 0)
    assert log.find_conflict_by_term(20, 4) == (5, 3)  # beyond our log: start at its end


def test_find_conflict_by_term_stops_at_the_compacted_boundary() -> None:
    st = MemoryStorage(ents(1, 1, 3, 3, 5, 5))
    st.compact(3)
    log = RaftLog(st, max_apply_bytes=1 << 20)
    assert log.find_conflict_by_term(6, 2) == (2, 0)  # term unknown below the snapshot


def test_restore_and_stable_snapshot() -> None:
    log = RaftLog(MemoryStorage(ents(1, 1)), max_apply_bytes=1 << 20)
    log.restore(SnapshotMeta(index=10, term=3))
    assert (log.first_index(), log.last_index(), log.committed, log.term(10)) == (11, 10, 10, 3)
    assert not log.has_next_committed()
    log.unstable.stable_snap_to(10)
    assert log.unstable.snapshot is None


def test_readonly_rounds() -> None:
    ro = ReadOnly()
    ro.add(ReadRequest(b"a", 1))
    rnd = ro.start_round(7)
    ro.add(ReadRequest(b"b", 2))
    assert [r.context for r in rnd.requests] == [b"a"] and [r.context for r in ro.pending] == [b"b"]
    assert ro.ack(b"", 2) is None and ro.ack((rnd.id + 1).to_bytes(8, "big"), 2) is None
    assert ro.ack(rnd.context, 2) is rnd and rnd.acks == {2}
    with pytest.raises(RuntimeError):
        ro.start_round(8)
    assert ro.finish_round() is rnd
    nxt = ro.start_round(8)
    assert decode_round(nxt.context) == rnd.id + 1
    ro.reset()
    assert ro.round is None and not ro.pending
    assert ro.start_round(9).id == rnd.id + 2  # ids never repeat
