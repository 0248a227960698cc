"""The DurableStorage contract (ggap/consensus/raft/storage.py), run against both
implementations: the SQLite store (ggap.storage.log.LogStore) and the simulator's disk
(ggap.sim.storage.SimStorage). A property test then drives both with the same random
writes and compares everything they let a reader observe."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ggap.config.model import StorageConfig
from ggap.consensus.raft.storage import DurableStorage, LogCompactedError, LogUnavailableError
from ggap.consensus.raft.types import Entry, EntryKind, HardState, SnapshotMeta
from ggap.sim.storage import SimStorage
from ggap.storage import LogStore

ALL = 1 << 62


def ent(index: int, term: int, size: int = 4) -> Entry:
    data = f"{index}/{term}:".encode().ljust(size, b".")
    return Entry(index=index, term=term, kind=EntryKind.NORMAL, data=data)


def ents(lo: int, hi: int, term: int = 1, size: int = 4) -> list[Entry]:
    return [ent(i, term, size) for i in range(lo, hi)]


@attrs.define
class Impl:
    """How to make, reopen and crash one implementation."""

    name: str
    make: Callable[[], DurableStorage]
    reopen: Callable[[DurableStorage], DurableStorage]  # after sync: what a restart finds
    crash: Callable[[DurableStorage], DurableStorage]  # no sync first
    close: Callable[[DurableStorage], None]


def sqlite_impl(root: Path, storage: StorageConfig | None = None) -> Impl:
    cfg = storage or StorageConfig()
    path = root / "raft.db"

    def reopen(s: DurableStorage) -> DurableStorage:
        assert isinstance(s, LogStore)
        s.close()
        return LogStore.open(path, cfg, cache_entries=4)

    def close(s: DurableStorage) -> None:
        assert isinstance(s, LogStore)
        s.close()

    # A small cache, so that reads cross from the file into the cache.
    return Impl("sqlite", lambda: LogStore.open(path, cfg, cache_entries=4), reopen, reopen, close)


def sim_impl() -> Impl:
    def reopen(s: DurableStorage) -> DurableStorage:
        assert isinstance(s, SimStorage)
        s.sync()
        s.crash()
        return s

    def crash(s: DurableStorage) -> DurableStorage:
        assert isinstance(s, SimStorage)
        s.crash()
        return s

    return Impl("sim", lambda: SimStorage(1), reopen, crash, lambda s: None)


@pytest.fixture(params=["sqlite", "sim"])
def impl(request: pytest.FixtureRequest, tmp_path: Path) -> Impl:
    return sqlite_impl(tmp_path) if request.param == "sqlite" else sim_impl()


class Handle:
    """The store under test; `reopen`/`crash` swap it for what a restart would find."""

    def __init__(self, impl: Impl) -> None:
        self.impl = impl
        self.s = impl.make()

    def reopen(self) -> DurableStorage:
        self.s = self.impl.reopen(self.s)
        return self.s

    def crash(self) -> DurableStorage:
        self.s = self.impl.crash(self.s)
        return self.s


@pytest.fixture
def h(impl: Impl) -> Iterator[Handle]:
    handle = Handle(impl)
    yield handle
    impl.close(handle.s)


def read_all(s: DurableStorage) -> list[Entry]:
    return s.entries(s.first_index(), s.last_index() + 1, ALL)


def bounds(s: DurableStorage) -> tuple[int, int]:
    return s.first_index(), s.last_index()


# --- reads ----------------------------------------------------------------------------------


def test_empty_log(h: Handle) -> None:
    s = h.s
    assert bounds(s) == (1, 0)
    assert s.term(0) == 0 and s.entries(1, 1, ALL) == []
    assert s.snapshot() == SnapshotMeta() and s.initial_state() == (HardState(), SnapshotMeta())
    with pytest.raises(LogUnavailableError):
        s.entries(1, 2, ALL)
    with pytest.raises(LogUnavailableError):
        s.term(1)
    with pytest.raises(LogCompactedError):
        s.entries(0, 1, ALL)
    with pytest.raises(ValueError):
        s.entries(1, 0, ALL)


def test_append_and_read_back(h: Handle) -> None:
    s = h.s
    written = ents(1, 4) + ents(4, 11, term=2)
    s.save(None, written[:3])
    s.save(None, written[3:])
    assert bounds(s) == (1, 10)
    assert read_all(s) == written
    assert s.entries(2, 4, ALL) == written[1:3] and s.entries(10, 11, ALL) == written[9:]
    assert [s.term(i) for i in range(11)] == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2]
    assert s.entries(11, 11, ALL) == []
    with pytest.raises(LogUnavailableError):
        s.entries(5, 12, ALL)


def test_entries_max_bytes(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 11, size=10))
    assert len(s.entries(1, 11, 25)) == 2
    assert len(s.entries(1, 11, 30)) == 3
    assert s.entries(3, 11, 0) == [ent(3, 1, 10)]  # at least one, even over the budget
    assert s.entries(1, 11, 5) == [ent(1, 1, 10)]
    assert len(s.entries(1, 11, 100)) == 10
    s.save(None, [ent(11, 1, 1000)])
    assert s.entries(11, 12, 10) == [ent(11, 1, 1000)]
    assert len(s.entries(9, 12, 100)) == 2  # 10 + 10, the big one would exceed


# --- writes ---------------------------------------------------------------------------------


def test_conflicting_suffix_is_replaced(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 6))
    s.save(None, ents(3, 5, term=2))
    assert bounds(s) == (1, 4) and [e.term for e in read_all(s)] == [1, 1, 2, 2]
    s.save(None, ents(4, 9, term=3))  # longer than what it replaces
    assert bounds(s) == (1, 8) and [e.term for e in read_all(s)] == [1, 1, 2, 3, 3, 3, 3, 3]
    s.save(None, [*ents(2, 4, term=1), ent(4, 3)])  # rewrites what it holds, drops the rest
    assert read_all(s) == [*ents(1, 4), ent(4, 3)]
    s.save(None, [])
    assert bounds(s) == (1, 4)


def test_gap_and_non_contiguous_batches_are_refused_and_change_nothing(h: Handle) -> None:
    s = h.s
    s.save(HardState(term=1), ents(1, 4))
    with pytest.raises(ValueError):
        s.save(HardState(term=5, vote=2), ents(5, 7))
    with pytest.raises(ValueError):
        s.save(HardState(term=5, vote=2), [ent(4, 1), ent(6, 1)])
    with pytest.raises(ValueError):
        s.save(HardState(term=5, vote=2), ents(5, 7), SnapshotMeta(index=2, term=1))
    assert read_all(s) == ents(1, 4) and s.initial_state() == (HardState(term=1), SnapshotMeta())


def test_entries_at_or_below_the_compaction_point_are_skipped(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 6))
    s.set_snapshot(SnapshotMeta(index=3, term=1))
    s.compact(3)
    s.save(None, ents(1, 4, term=9))  # all covered: nothing happens
    assert read_all(s) == ents(4, 6) and s.term(3) == 1
    s.save(None, ents(2, 7, term=2))  # 2 and 3 skipped, 4.. replace
    assert bounds(s) == (4, 6) and read_all(s) == ents(4, 7, term=2) and s.term(3) == 1


def test_term_and_errors_at_the_exact_boundaries(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 3) + ents(3, 7, term=2))
    s.set_snapshot(SnapshotMeta(index=3, term=2))
    s.compact(3)
    assert bounds(s) == (4, 6)
    assert s.term(3) == 2 and s.term(4) == 2 and s.term(6) == 2
    with pytest.raises(LogCompactedError):
        s.term(2)
    with pytest.raises(LogUnavailableError):
        s.term(7)
    with pytest.raises(LogCompactedError):
        s.entries(3, 5, ALL)
    with pytest.raises(LogCompactedError):
        s.entries(3, 3, ALL)
    with pytest.raises(LogUnavailableError):
        s.entries(4, 8, ALL)
    assert s.entries(4, 7, ALL) == ents(4, 7, term=2) and s.entries(7, 7, ALL) == []
    # Everything compacted: the log is empty but term(C) is still known.
    s.set_snapshot(SnapshotMeta(index=6, term=2))
    s.compact(6)
    assert bounds(s) == (7, 6) and s.term(6) == 2 and s.entries(7, 7, ALL) == []
    with pytest.raises(LogUnavailableError):
        s.entries(7, 8, ALL)
    s.save(None, [ent(7, 3)])
    assert bounds(s) == (7, 7) and s.term(7) == 3


def test_compact_never_passes_the_snapshot(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 8))
    with pytest.raises(ValueError):
        s.compact(1)  # no snapshot yet
    s.set_snapshot(SnapshotMeta(index=4, term=1))
    with pytest.raises(ValueError):
        s.compact(5)
    s.compact(4)
    s.compact(2)  # behind the compaction point: a no-op
    assert bounds(s) == (5, 7)


def test_set_snapshot_then_compact(h: Handle) -> None:
    s = h.s
    s.save(HardState(term=1, commit=6), ents(1, 8))
    meta = SnapshotMeta(index=5, term=1, voters=(1, 2, 3), learners=(4,))
    s.set_snapshot(meta)
    # The snapshot runs ahead of compaction: entries between C and S stay readable.
    assert s.snapshot() == meta and bounds(s) == (1, 7) and read_all(s) == ents(1, 8)
    s.compact(2)
    assert bounds(s) == (3, 7) and s.snapshot() == meta and s.term(2) == 1
    s.compact(5)
    assert bounds(s) == (6, 7) and s.initial_state() == (HardState(term=1, commit=6), meta)
    with pytest.raises(ValueError):
        s.set_snapshot(SnapshotMeta(index=4, term=1))  # older than the current one
    with pytest.raises(ValueError):
        s.set_snapshot(SnapshotMeta(index=8, term=1))  # beyond the log
    with pytest.raises(ValueError):
        s.set_snapshot(SnapshotMeta(index=7, term=2))  # not the log's term there
    assert s.snapshot() == meta


def test_save_with_a_snapshot_that_matches_an_entry_keeps_the_suffix(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 4) + ents(4, 9, term=2))
    meta = SnapshotMeta(index=5, term=2, voters=(1, 2))
    s.save(HardState(term=2, commit=5), [], meta)
    assert bounds(s) == (6, 8) and read_all(s) == ents(6, 9, term=2)
    assert s.term(5) == 2 and s.initial_state() == (HardState(term=2, commit=5), meta)
    # A snapshot at or below the compaction point changes nothing.
    s.save(None, [], SnapshotMeta(index=3, term=7))
    assert bounds(s) == (6, 8) and s.snapshot() == meta


def test_save_with_a_snapshot_that_does_not_match_drops_the_log(h: Handle) -> None:
    s = h.s
    s.save(None, ents(1, 9))
    s.save(None, [], SnapshotMeta(index=5, term=3))  # the log holds 5 with term 1
    assert bounds(s) == (6, 5) and s.term(5) == 3 and s.snapshot() == SnapshotMeta(index=5, term=3)
    with pytest.raises(LogUnavailableError):
        s.term(6)
    # Past the end of the log, with entries and hard state in the same save.
    s.save(HardState(term=4, vote=2, commit=20), ents(21, 23, term=4), SnapshotMeta(index=20, term=4))
    assert bounds(s) == (21, 22) and s.term(20) == 4 and read_all(s) == ents(21, 23, term=4)
    assert s.initial_state() == (HardState(term=4, vote=2, commit=20), SnapshotMeta(index=20, term=4))


def test_a_saved_snapshot_behind_a_newer_local_one(h: Handle) -> None:
    """C < snapshot index <= S: the compaction point moves, snapshot() stays the newer."""
    s = h.s
    s.save(None, ents(1, 9))
    newer = SnapshotMeta(index=6, term=1)
    s.set_snapshot(newer)
    s.save(None, [], SnapshotMeta(index=4, term=1))
    assert bounds(s) == (5, 8) and s.snapshot() == newer


def test_hard_state_round_trip(h: Handle) -> None:
    s = h.s
    s.save(HardState(term=2, vote=3), [])
    assert s.initial_state()[0] == HardState(term=2, vote=3)
    s.save(None, ents(1, 3, term=2))
    assert s.initial_state()[0] == HardState(term=2, vote=3)
    s.save(HardState(term=2, vote=3, commit=2), ents(3, 4, term=2))
    s = h.reopen()
    assert s.initial_state() == (HardState(term=2, vote=3, commit=2), SnapshotMeta())
    assert read_all(s) == ents(1, 4, term=2)


def test_reopen_keeps_what_was_saved(h: Handle) -> None:
    s = h.s
    s.save(HardState(term=3, vote=1, commit=7), ents(1, 5) + ents(5, 9, term=3))
    s.set_snapshot(SnapshotMeta(index=6, term=3, voters=(1, 2, 3)))
    s.compact(4)
    s.sync()
    before = (bounds(s), read_all(s), s.term(4), s.initial_state())
    s = h.reopen()
    assert (bounds(s), read_all(s), s.term(4), s.initial_state()) == before
    assert before[3] == (HardState(term=3, vote=1, commit=7), SnapshotMeta(index=6, term=3, voters=(1, 2, 3)))
    s.save(None, [ent(9, 3)])  # and it goes on from there
    s = h.reopen()
    assert bounds(s) == (5, 9) and s.term(9) == 3


def test_compact_and_set_snapshot_are_durable_without_sync(h: Handle) -> None:
    s = h.s
    s.save(HardState(term=1, commit=5), ents(1, 7))
    s.sync()
    s.set_snapshot(SnapshotMeta(index=5, term=1))
    s.compact(3)
    s = h.crash()
    assert bounds(s) == (4, 6) and s.snapshot() == SnapshotMeta(index=5, term=1) and s.term(3) == 1


def test_sim_compact_and_set_snapshot_survive_a_crash_that_loses_unsynced_saves() -> None:
    s = SimStorage(1)
    s.save(HardState(term=1, commit=6), ents(1, 7))
    s.sync()
    s.save(HardState(term=2, commit=8), ents(7, 9, term=2))  # not synced
    s.set_snapshot(SnapshotMeta(index=5, term=1))
    s.compact(4)
    assert s.durable_compacted() == (4, 1) and [e.index for e in s.durable_entries()] == [5, 6]
    s.crash()
    assert bounds(s) == (5, 6) and s.term(4) == 1 and read_all(s) == ents(5, 7)
    assert s.initial_state() == (HardState(term=1, commit=6), SnapshotMeta(index=5, term=1))


# --- both implementations, same random history --------------------------------------------


_ops = st.one_of(
    st.tuples(
        st.just("save"),
        st.none() | st.builds(HardState, st.integers(0, 5), st.integers(0, 3), st.integers(0, 30)),
        st.integers(-4, 1),  # start relative to last_index() + 1
        st.integers(0, 6),  # how many entries
        st.integers(1, 4),  # their term
        # a snapshot (one save in four): index relative to last_index(), term
        st.tuples(st.integers(0, 3), st.integers(-4, 4), st.integers(0, 4)),
        st.integers(0, 40),  # payload size
    ),
    # Positions are picked (modulo) where calls mostly succeed, and just outside.
    st.tuples(st.just("compact"), st.integers(0, 1000)),  # upto in [C, S + 1], mostly above C
    st.tuples(st.just("snap"), st.integers(0, 1000), st.integers(0, 3)),  # [S - 1, last + 1]; 0: bad term
    st.tuples(st.just("read"), st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 60)),
    st.tuples(st.just("reopen")),
)


def _call(op: tuple[Any, ...], ref: DurableStorage) -> Callable[[DurableStorage], object]:
    """The concrete call `op` stands for, its relative positions taken from `ref` now (so
    both stores get exactly the same call)."""
    kind = op[0]
    if kind == "save":
        _, hs, rel, n, term, snap, size = op
        start = max(1, ref.last_index() + 1 + rel)
        batch = ents(start, start + n, term, size)
        meta = None
        if snap[0] == 0:
            meta = SnapshotMeta(index=max(0, ref.last_index() + snap[1]), term=snap[2], voters=(1, 2))
        return lambda s: s.save(hs, batch, meta)
    if kind == "compact":
        c, snap_index = ref.first_index() - 1, ref.snapshot().index
        upto = c + op[1] % (snap_index - c + 2) if op[1] % 5 == 0 else c + 1 + op[1] % (snap_index - c + 1)
        return lambda s: s.compact(upto)
    if kind == "snap":
        base = max(0, ref.snapshot().index - 1)
        index = base + op[1] % (ref.last_index() - base + 2)
        try:
            term = ref.term(index) if op[2] else 5
        except LookupError:
            term = 1
        meta = SnapshotMeta(index=index, term=term, learners=(9,))
        return lambda s: s.set_snapshot(meta)
    first, last = ref.first_index(), ref.last_index()
    lo = first - 1 + op[1] % (last - first + 3)  # [first - 1, last + 1]
    hi = lo + op[2] % (last - lo + 3)  # [lo, last + 2]
    return lambda s: s.entries(lo, hi, op[3])


def _outcome(fn: Callable[[DurableStorage], object], s: DurableStorage) -> object:
    try:
        return fn(s)
    except (ValueError, LookupError) as exc:
        return type(exc)


def _observe(s: DurableStorage) -> tuple[object, ...]:
    first, last = s.first_index(), s.last_index()
    return (first, last, s.term(first - 1), read_all(s), s.initial_state())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops, max_size=25))
def test_sqlite_and_sim_agree(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        # fsync adds nothing here but time.
        sq = sqlite_impl(Path(root), StorageConfig(log_synchronous="OFF"))
        sim = sim_impl()
        a, b = sq.make(), sim.make()
        try:
            for op in ops:
                if op[0] == "reopen":
                    a, b = sq.reopen(a), sim.reopen(b)
                else:
                    call = _call(op, a)
                    assert _outcome(call, a) == _outcome(call, b), op
                obs = _observe(a)
                assert obs == _observe(b), op
                assert a.first_index() - 1 <= a.snapshot().index  # C <= S
        finally:
            sq.close(a)
