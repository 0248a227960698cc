"""KvStore against a plain in-memory model (Hypothesis state machine).

The model keeps every version of every key forever. The store may have removed old
versions (compaction, history pruning), so reads are checked as "exact, or OUT_OF_RANGE
with a reason": a compacted or future revision must be refused, and any other refusal is
only allowed where pruning could have removed what the read needs (below the revision of
the key's history_depth-th newest version). Writes must match the model exactly.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import Applied, KvStore
from ggap.types import (
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Expire,
    ExpireResult,
    GetResult,
    InvalidArgument,
    KeyValue,
    Noop,
    NoopResult,
    OutOfRange,
    Prune,
    PruneResult,
    Put,
    PutResult,
    RangeResult,
    Txn,
    TxnGet,
    TxnOpResult,
    TxnRange,
    TxnResult,
)

DEPTH = 3
KEYS = ["a", "a/b", "a/é", "b", "\U0001f600"]
PREFIXES = ["", "a", "a/", "b", "\U0001f600", "z"]
BOUNDS = ["", "a", "a/c", "b", "c"]
VALUES = [b"", b"x", b"y", b"\x00\xff"]
EXPIRES = [0, 0, 10, 20, 30]


@dataclass(frozen=True)
class V:
    mod: int
    create: int
    version: int
    expires: int
    tomb: bool
    value: bytes
    expired: bool = False

    def kv(self, key: str) -> KeyValue:
        if self.tomb:
            return KeyValue(key, b"", create_revision=0, mod_revision=self.mod, version=0, deleted=True)
        return KeyValue(key, self.value, self.create, self.mod, self.version, self.expires)


class Refused(Exception):
    """The model's own OUT_OF_RANGE: the store must refuse too."""


class Model:
    def __init__(self) -> None:
        self.hist: dict[str, list[V]] = {}
        self.revision = 0
        self.compact = 0
        self.applied = 0

    # -- state queries
    def latest(self, key: str) -> V | None:
        h = self.hist.get(key)
        return h[-1] if h else None

    def live(self, key: str) -> V | None:
        v = self.latest(key)
        return None if v is None or v.tomb else v

    def at(self, key: str, rev: int) -> V | None:
        found = None
        for v in self.hist.get(key, []):
            if v.mod <= rev:
                found = v
        return None if found is None or found.tomb else found

    def depth_floor(self, key: str) -> int:
        """Pruning never removes a version at or above this revision."""
        h = self.hist.get(key, [])
        return h[-DEPTH].mod if len(h) > DEPTH else 0

    def kept_by_compaction(self, key: str) -> list[V]:
        h = self.hist.get(key, [])
        below = [v for v in h if v.mod <= self.compact]
        # The newest version at or below the compact revision stays, unless it is a
        # tombstone written before it (one written exactly at it stays for watchers).
        keep = [below[-1]] if below and (not below[-1].tomb or below[-1].mod == self.compact) else []
        return keep + [v for v in h if v.mod > self.compact]

    def resolve(self, rev: int) -> int:
        if rev == 0:
            return self.revision
        if rev > self.revision or rev < self.compact:
            raise Refused
        return rev

    # -- reads
    def get(self, key: str, rev: int) -> KeyValue | None:
        v = self.at(key, self.resolve(rev))
        return v.kv(key) if v else None

    def in_range(self, prefix: str, start: str, end: str) -> list[str]:
        if prefix:
            keys = [k for k in self.hist if k.startswith(prefix)]
        else:
            keys = [k for k in self.hist if k >= start and (not end or k < end)]
        return sorted(keys)

    def range(self, prefix: str, start: str, end: str, limit: int, rev: int, keys_only: bool) -> RangeResult:
        r = self.resolve(rev)
        kvs = []
        for k in self.in_range(prefix, start, end):
            v = self.at(k, r)
            if v is not None:
                kv = v.kv(k)
                kvs.append(
                    KeyValue(k, b"", kv.create_revision, kv.mod_revision, kv.version, kv.expires_at_ms)
                    if keys_only
                    else kv
                )
        out = kvs[:limit] if limit > 0 else kvs
        return RangeResult(kvs=tuple(out), more=len(kvs) > len(out), count=len(kvs))

    def events(self, start: int, keys: list[str], limit: int) -> list[Event]:
        rows: list[tuple[int, str, Event]] = []
        for k in keys:
            h = self.hist[k]
            for i, v in enumerate(h):
                if v.mod >= start:
                    # At the compact revision the previous version is already gone.
                    prev = h[i - 1] if i > 0 and not h[i - 1].tomb and v.mod > self.compact else None
                    ev = Event(
                        type=EventType.DELETE if v.tomb else EventType.PUT,
                        kv=v.kv(k),
                        prev_kv=prev.kv(k) if prev else None,
                        expired=v.expired,
                    )
                    rows.append((v.mod, k, ev))
        rows.sort(key=lambda r: (r[0], r[1]))
        evs = [r[2] for r in rows]
        if limit <= 0 or len(evs) <= limit:
            return evs
        cut = limit
        if evs[cut].kv.mod_revision == evs[cut - 1].kv.mod_revision:
            rev = evs[cut - 1].kv.mod_revision
            while cut > 0 and evs[cut - 1].kv.mod_revision == rev:
                cut -= 1
            if cut == 0:
                cut = sum(1 for e in evs if e.kv.mod_revision == rev)
        return evs[:cut]

    # -- writes
    def _put(self, put: Put, rev: int) -> tuple[PutResult, Event]:
        prev = self.live(put.key)
        if prev:
            v = V(rev, prev.create, prev.version + 1, put.expires_at_ms, False, put.value)
        else:
            v = V(rev, rev, 1, put.expires_at_ms, False, put.value)
        self.hist.setdefault(put.key, []).append(v)
        prev_kv = prev.kv(put.key) if prev else None
        return PutResult(rev, prev_kv), Event(EventType.PUT, v.kv(put.key), prev_kv)

    def _tomb(self, key: str, rev: int, expired: bool) -> Event:
        prev = self.live(key)
        assert prev is not None
        v = V(rev, 0, 0, 0, True, b"", expired)
        self.hist[key].append(v)
        return Event(EventType.DELETE, v.kv(key), prev.kv(key), expired)

    def cmp_holds(self, c: Compare) -> bool:
        v = self.live(c.key)
        a: Any
        b: Any
        if c.target == CompareTarget.VALUE:
            if v is None:
                return c.op == CompareOp.NOT_EQUAL
            a, b = v.value, c.value
        elif c.target == CompareTarget.EXISTS:
            a, b = int(v is not None), c.number
        else:
            b = c.number
            a = (
                0
                if v is None
                else {
                    CompareTarget.VERSION: v.version,
                    CompareTarget.CREATE_REVISION: v.create,
                    CompareTarget.MOD_REVISION: v.mod,
                }[c.target]
            )
        return {
            CompareOp.EQUAL: a == b,
            CompareOp.NOT_EQUAL: a != b,
            CompareOp.GREATER: a > b,
            CompareOp.LESS: a < b,
        }[c.op]

    def txn_invalid(self, txn: Txn) -> bool:
        if any(c.target == CompareTarget.EXISTS and c.number not in (0, 1) for c in txn.compare):
            return True
        for branch in (txn.success, txn.failure):
            keys = [op.key for op in branch if isinstance(op, Put | Delete)]
            if len(keys) != len(set(keys)):
                return True
            for op in branch:
                if isinstance(op, TxnRange) and not op.prefix and op.end and op.end <= op.start:
                    return True
        return False

    def read_justified(self, op: Any) -> bool:
        """Could pruning have removed what this Txn read needs?"""
        rev = op.revision or self.revision
        if isinstance(op, TxnGet):
            return rev < self.depth_floor(op.key)
        return any(rev < self.depth_floor(k) for k in self.in_range(op.prefix, op.start, op.end))

    def apply(self, cmd: Command, got: Applied) -> None:
        """Apply to the model and assert the store's result and events agree."""
        res = got.result
        if isinstance(cmd, Put):
            rev = self.revision + 1
            expect, ev = self._put(cmd, rev)
            self.revision = rev
            assert res == expect and got.events == [ev]
        elif isinstance(cmd, Delete):
            if self.live(cmd.key) is None:
                assert res == DeleteResult(self.revision, False, None) and got.events == []
                return
            rev = self.revision + 1
            ev = self._tomb(cmd.key, rev, False)
            self.revision = rev
            assert res == DeleteResult(rev, True, ev.prev_kv) and got.events == [ev]
        elif isinstance(cmd, Noop):
            assert res == NoopResult(self.revision) and got.events == []
        elif isinstance(cmd, Prune):
            assert isinstance(res, PruneResult) and res.revision == self.revision and got.events == []
        elif isinstance(cmd, Compact):
            if cmd.revision > self.revision or cmd.revision <= self.compact:
                assert isinstance(res, OutOfRange), res
            else:
                self.compact = cmd.revision
                assert res == CompactResult(self.revision)
            assert got.events == []
        elif isinstance(cmd, Expire):
            todo = sorted({k for k, mod in cmd.items if (v := self.live(k)) is not None and v.mod == mod})
            if not todo:
                assert res == ExpireResult(self.revision, ()) and got.events == []
                return
            rev = self.revision + 1
            evs = [self._tomb(k, rev, True) for k in todo]
            self.revision = rev
            assert res == ExpireResult(rev, tuple(todo)) and got.events == evs
        else:
            assert isinstance(cmd, Txn)
            self._txn(cmd, got)

    def _txn(self, txn: Txn, got: Applied) -> None:
        res = got.result
        if self.txn_invalid(txn):
            assert isinstance(res, InvalidArgument), res
            return
        succeeded = all(self.cmp_holds(c) for c in txn.compare)
        ops = txn.success if succeeded else txn.failure
        reads: dict[int, TxnOpResult] = {}
        try:
            for i, op in enumerate(ops):
                if isinstance(op, TxnGet):
                    reads[i] = GetResult(self.get(op.key, op.revision))
                elif isinstance(op, TxnRange):
                    reads[i] = self.range(op.prefix, op.start, op.end, op.limit, op.revision, op.keys_only)
        except Refused:
            assert isinstance(res, OutOfRange), res
            assert got.events == []
            return
        if isinstance(res, OutOfRange):
            assert any(self.read_justified(op) for op in ops if isinstance(op, TxnGet | TxnRange)), res
            assert got.events == []
            return
        changes = any(isinstance(op, Put) or (isinstance(op, Delete) and self.live(op.key)) for op in ops)
        rev = self.revision + 1 if changes else self.revision
        responses: list[TxnOpResult] = []
        events: list[Event] = []
        for i, op in enumerate(ops):
            if isinstance(op, Put):
                pr, ev = self._put(op, rev)
                responses.append(pr)
                events.append(ev)
            elif isinstance(op, Delete):
                if self.live(op.key) is None:
                    responses.append(DeleteResult(rev, False, None))
                else:
                    ev = self._tomb(op.key, rev, False)
                    responses.append(DeleteResult(rev, True, ev.prev_kv))
                    events.append(ev)
            else:
                responses.append(reads[i])
        self.revision = rev
        events.sort(key=lambda e: e.kv.key)
        assert res == TxnResult(rev, succeeded, tuple(responses)), (res, responses)
        assert got.events == events


# --- strategies ---------------------------------------------------------------------------

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES)


def commands(model: Model) -> st.SearchStrategy[Command]:
    revs = st.integers(0, model.revision + 2)
    put = st.builds(Put, keys, values, st.sampled_from(EXPIRES))
    delete = st.builds(Delete, keys)
    get = st.builds(TxnGet, keys, revs)
    rng = st.one_of(
        st.builds(
            TxnRange,
            prefix=st.sampled_from(PREFIXES),
            limit=st.integers(0, 3),
            revision=revs,
            keys_only=st.booleans(),
        ),
        st.builds(
            TxnRange,
            start=st.sampled_from(BOUNDS),
            end=st.sampled_from(BOUNDS),
            limit=st.integers(0, 3),
            revision=revs,
        ),
    )
    compare = st.builds(
        Compare,
        keys,
        st.sampled_from(CompareTarget),
        st.sampled_from(CompareOp),
        values,
        st.sampled_from([0, 1, 1, 2, 3, 5, 8]),
    )
    ops = st.lists(st.one_of(put, delete, get, rng), max_size=3).map(tuple)
    txn = st.builds(Txn, st.lists(compare, max_size=2).map(tuple), ops, ops)
    compact = st.builds(Compact, st.integers(0, model.revision + 1))
    current = [(k, v.mod) for k in KEYS if (v := model.live(k)) is not None]
    item = st.sampled_from(current) if current else st.nothing()
    stale = st.tuples(keys, st.integers(1, model.revision + 1))
    expire = st.builds(Expire, st.lists(st.one_of(item, stale), max_size=3).map(tuple))
    kinds: dict[str, st.SearchStrategy[Any]] = {
        "put": put,
        "delete": delete,
        "txn": txn,
        "compact": compact,
        "expire": expire,
        "noop": st.just(Noop()),
        "prune": st.builds(Prune, st.just(DEPTH), st.lists(keys, max_size=4).map(tuple)),
    }
    # Mostly puts, so keys collect enough versions for pruning and compaction to bite.
    weighted = ["put"] * 5 + ["delete", "txn", "txn", "compact", "expire", "noop", "prune"]
    return st.sampled_from(weighted).flatmap(lambda kind: kinds[kind])


class MvccMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "kv.db"
        self.model = Model()
        self.last_batch: list[tuple[int, Command]] = []
        self.store: KvStore | None = None

    @initialize()
    def open(self) -> None:
        self._open()

    def _open(self) -> None:
        self.store = KvStore.open(self.path, mvcc=MvccConfig(history_depth=DEPTH), storage=StorageConfig())
        self.reader = self.store.reader()

    def teardown(self) -> None:
        if self.store is not None:
            self.reader.close()
            self.store.close()
        self.tmp.cleanup()

    # Writes are listed three times so that a run builds up enough history (several
    # versions per key) for compaction and pruning to matter.
    @rule(data=st.data(), n=st.integers(1, 5))
    def apply_batch(self, data: st.DataObject, n: int) -> None:
        self._apply_batch(data, n)

    @rule(data=st.data(), n=st.integers(1, 5))
    def apply_batch_b(self, data: st.DataObject, n: int) -> None:
        self._apply_batch(data, n)

    @rule(data=st.data(), n=st.integers(1, 5))
    def apply_batch_c(self, data: st.DataObject, n: int) -> None:
        self._apply_batch(data, n)

    def _apply_batch(self, data: st.DataObject, n: int) -> None:
        assert self.store is not None
        entries: list[tuple[int, Command]] = []
        for i in range(n):
            entries.append((self.model.applied + i + 1, data.draw(commands(self.model))))
        out = self.store.apply(entries)
        # Draws use the pre-batch model; applying one by one keeps the model in step.
        for (idx, cmd), got in zip(entries, out, strict=True):
            assert isinstance(got, Applied)
            self.model.apply(cmd, got)
            self.model.applied = idx
        self.last_batch = entries

    @precondition(lambda self: bool(self.last_batch))
    @rule()
    def reapply(self) -> None:
        assert self.store is not None
        assert self.store.apply(self.last_batch) == [None] * len(self.last_batch)

    @rule(n=st.integers(1, 6))
    def prune_candidates(self, n: int) -> None:
        """What the leader's pruner would propose: exactly the keys holding more than
        DEPTH versions, in key order, however the scan is windowed."""
        expect = sorted(k for k in KEYS if len(self.reader.history(k)[0]) > DEPTH)
        got, after = self.reader.prune_candidates(None, n, DEPTH)
        while after is not None:
            more, after = self.reader.prune_candidates(after, n, DEPTH)
            got += more
        assert got == expect

    @rule()
    def reopen(self) -> None:
        assert self.store is not None
        self.reader.close()
        self.store.close()
        self._open()

    def _rev(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, self.model.revision + 1))

    @rule(data=st.data(), key=keys)
    def check_get(self, data: st.DataObject, key: str) -> None:
        rev = self._rev(data)
        try:
            expect = self.model.get(key, rev)
        except Refused:
            expect = None
            refused = True
        else:
            refused = False
        try:
            got, at = self.reader.get(key, rev)
        except OutOfRange:
            assert refused or (rev or self.model.revision) < self.model.depth_floor(key)
            return
        assert not refused
        assert (got, at) == (expect, self.model.revision)

    @rule(
        data=st.data(),
        prefix=st.sampled_from(PREFIXES),
        bounds=st.tuples(st.sampled_from(BOUNDS), st.sampled_from(BOUNDS)),
        use_prefix=st.booleans(),
        limit=st.integers(0, 3),
        keys_only=st.booleans(),
    )
    def check_range(
        self,
        data: st.DataObject,
        prefix: str,
        bounds: tuple[str, str],
        use_prefix: bool,
        limit: int,
        keys_only: bool,
    ) -> None:
        rev = self._rev(data)
        start, end = ("", "") if use_prefix else bounds
        if not use_prefix:
            prefix = ""
        if end and end <= start:
            return
        try:
            expect: RangeResult | None = self.model.range(prefix, start, end, limit, rev, keys_only)
        except Refused:
            expect = None
        try:
            got, at = self.reader.range(prefix, start, end, limit, rev, keys_only)
        except OutOfRange:
            r = rev or self.model.revision
            keys_in = self.model.in_range(prefix, start, end)
            assert expect is None or any(r < self.model.depth_floor(k) for k in keys_in)
            return
        assert expect is not None
        assert (got, at) == (expect, self.model.revision)

    @rule(key=keys)
    def check_history(self, key: str) -> None:
        got, at = self.reader.history(key)
        assert at == self.model.revision
        kept = [v.kv(key) for v in reversed(self.model.kept_by_compaction(key))]
        assert got == kept[: len(got)]
        assert len(got) >= min(DEPTH, len(kept))

    @rule(
        data=st.data(),
        scope=st.one_of(
            st.none(),
            st.tuples(st.just("key"), keys),
            st.tuples(st.just("prefix"), st.sampled_from(PREFIXES)),
        ),
        limit=st.integers(0, 4),
    )
    def check_events(self, data: st.DataObject, scope: tuple[str, str] | None, limit: int) -> None:
        start = data.draw(st.integers(0, self.model.revision + 1))
        if scope is None:
            kw: dict[str, str] = {}
            scoped = sorted(self.model.hist)
        elif scope[0] == "key":
            kw = {"key": scope[1]}
            scoped = [scope[1]] if scope[1] in self.model.hist else []
        else:
            kw = {"prefix": scope[1]}
            scoped = self.model.in_range(scope[1], "", "")
        must_refuse = self.model.compact > 0 and start < self.model.compact
        try:
            got, at = self.reader.events(start, limit=limit, **kw)
        except OutOfRange:
            assert must_refuse or any(start <= self.model.depth_floor(k) for k in scoped)
            return
        assert not must_refuse
        assert at == self.model.revision
        assert got == self.model.events(start, scoped, limit)

    @rule(now=st.sampled_from([0, 10, 15, 20, 30, 99]), limit=st.integers(0, 3))
    def check_expiring(self, now: int, limit: int) -> None:
        due = sorted(
            (v.expires, k, v.mod)
            for k in self.model.hist
            if (v := self.model.live(k)) is not None and 0 < v.expires <= now
        )
        expect = [(k, mod) for _, k, mod in due]
        assert self.reader.expiring(now, limit) == (expect[:limit] if limit else expect)
        pending = [v.expires for k in self.model.hist if (v := self.model.live(k)) and v.expires > 0]
        assert self.reader.next_expiry_ms() == (min(pending) if pending else None)

    @invariant()
    def state_agrees(self) -> None:
        if self.store is None:
            return
        m = self.model
        assert (self.store.applied_index, self.store.revision, self.store.compact_revision) == (
            m.applied,
            m.revision,
            m.compact,
        )
        assert self.reader.state() == (m.applied, m.revision, m.compact)


MvccMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMvccModel = MvccMachine.TestCase
