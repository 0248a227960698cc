"""KvStore apply semantics and KvReader reads (etcd v3 semantics, see API.md)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import KV_SCHEMA_VERSION, Applied, KvReader, KvStore, _reads
from ggap.types import (
    Command,
    Compact,
    CompactResult,
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteResult,
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
    TxnRange,
    TxnResult,
)
from ggap.types.errors import GgapError


class Harness:
    """A store plus a reader, with apply() numbering entries itself."""

    def __init__(self, path: Path, depth: int = 16) -> None:
        self.path = path
        self.store = KvStore.open(path, mvcc=MvccConfig(history_depth=depth), storage=StorageConfig())
        self.reader: KvReader = self.store.reader()
        self.index = self.store.applied_index

    def apply(self, *cmds: Command) -> list[Applied]:
        batch = []
        for cmd in cmds:
            self.index += 1
            batch.append((self.index, cmd))
        out = self.store.apply(batch)
        assert all(a is not None for a in out)
        return [a for a in out if a is not None]

    def one(self, cmd: Command) -> object:
        return self.apply(cmd)[0].result

    def get(self, key: str, revision: int = 0) -> KeyValue | None:
        return self.reader.get(key, revision)[0]

    def close(self) -> None:
        self.reader.close()
        self.store.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "kv.db")
    yield harness
    harness.close()


def kv(key: str, value: bytes, create: int, mod: int, version: int, expires: int = 0) -> KeyValue:
    return KeyValue(
        key, value, create_revision=create, mod_revision=mod, version=version, expires_at_ms=expires
    )


def cmp(key: str, target: CompareTarget, op: CompareOp, *, value: bytes = b"", number: int = 0) -> Compare:
    return Compare(key=key, target=target, op=op, value=value, number=number)


# --- Put / Delete / revisions -----------------------------------------------------------


def test_fresh_store_state(h: Harness) -> None:
    assert (h.store.applied_index, h.store.revision, h.store.compact_revision) == (0, 0, 0)
    assert h.reader.state() == (0, 0, 0)
    assert h.reader.get("a") == (None, 0)
    assert h.store.schema_version == KV_SCHEMA_VERSION


def test_put_revisions_versions_and_prev_kv(h: Harness) -> None:
    r1, r2, r3 = h.apply(Put("a", b"1"), Put("a", b"2"), Put("b", b"x", expires_at_ms=123))
    assert r1.result == PutResult(revision=1, prev_kv=None)
    assert r2.result == PutResult(revision=2, prev_kv=kv("a", b"1", 1, 1, 1))
    assert r3.result == PutResult(revision=3, prev_kv=None)
    assert h.get("a") == kv("a", b"2", 1, 2, 2)
    assert h.get("b") == kv("b", b"x", 3, 3, 1, expires=123)
    ev = r2.events
    assert len(ev) == 1 and ev[0].type == EventType.PUT
    assert ev[0].kv == kv("a", b"2", 1, 2, 2) and ev[0].prev_kv == kv("a", b"1", 1, 1, 1)
    assert not ev[0].expired
    assert (h.store.applied_index, h.store.revision) == (3, 3)
    assert h.reader.state() == (3, 3, 0)


def test_delete_tombstone_and_recreate(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("a", b"2"))
    deleted = h.apply(Delete("a"))[0]
    assert deleted.result == DeleteResult(revision=3, deleted=True, prev_kv=kv("a", b"2", 1, 2, 2))
    (ev,) = deleted.events
    assert ev.type == EventType.DELETE and ev.kv.deleted and ev.kv.mod_revision == 3
    assert ev.kv.version == 0 and ev.kv.value == b"" and ev.prev_kv == kv("a", b"2", 1, 2, 2)
    assert h.get("a") is None
    # Deleting a missing key changes nothing and does not bump the revision.
    missing = h.apply(Delete("a"), Delete("nope"))
    assert [a.result for a in missing] == [DeleteResult(revision=3, deleted=False, prev_kv=None)] * 2
    assert all(a.events == [] for a in missing)
    assert h.store.revision == 3 and h.store.applied_index == 5
    # Re-creation starts a new life: create_revision is the new revision, version 1.
    h.apply(Put("a", b"3"))
    assert h.get("a") == kv("a", b"3", 4, 4, 1)
    hist, rev = h.reader.history("a")
    assert rev == 4
    assert [(v.mod_revision, v.version, v.create_revision, v.deleted) for v in hist] == [
        (4, 1, 4, False),
        (3, 0, 0, True),
        (2, 2, 1, False),
        (1, 1, 1, False),
    ]
    assert [v.mod_revision for v in h.reader.history("a", limit=2)[0]] == [4, 3]
    assert h.reader.history("zzz") == ([], 4)


def test_noop_and_results_revision(h: Harness) -> None:
    assert h.one(Noop()) == NoopResult(revision=0)
    h.apply(Put("a", b"1"))
    assert h.one(Noop()) == NoopResult(revision=1)
    assert h.store.revision == 1 and h.store.applied_index == 3


def test_point_in_time_get(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("b", b"x"), Put("a", b"2"), Delete("a"), Put("a", b"3"))
    assert h.get("a", 1) == kv("a", b"1", 1, 1, 1)
    assert h.get("a", 2) == kv("a", b"1", 1, 1, 1)
    assert h.get("a", 3) == kv("a", b"2", 1, 3, 2)
    assert h.get("a", 4) is None
    assert h.get("a", 5) == kv("a", b"3", 5, 5, 1)
    assert h.get("b", 1) is None
    assert h.reader.get("a", 3) == (kv("a", b"2", 1, 3, 2), 5)
    with pytest.raises(OutOfRange) as info:
        h.reader.get("a", 6)
    assert info.value.current_revision == 5 and "future" in info.value.message
    with pytest.raises(InvalidArgument):
        h.reader.get("a", -1)


# --- Range --------------------------------------------------------------------------------

NON_ASCII = ["a", "a/1", "a/2", "a/é", "a/\U0001f600", "a\x7f", "b", "é", "\uffff", "\U0001f600"]


def test_keys_sort_in_utf8_byte_order(h: Harness) -> None:
    h.apply(*(Put(k, k.encode()) for k in reversed(NON_ASCII)))
    got = [x.key for x in h.reader.range()[0].kvs]
    assert got == sorted(NON_ASCII, key=lambda k: k.encode("utf-8"))
    # U+FFFF (EF BF BF) sorts before U+1F600 (F0 ...) in UTF-8 though not in UTF-16.
    assert got.index("\uffff") < got.index("\U0001f600")


def test_range_prefix_bounds_limit_count(h: Harness) -> None:
    h.apply(*(Put(k, k.encode()) for k in NON_ASCII))
    res, rev = h.reader.range(prefix="a/")
    assert rev == len(NON_ASCII)
    assert [x.key for x in res.kvs] == ["a/1", "a/2", "a/é", "a/\U0001f600"]
    assert (res.count, res.more) == (4, False)
    assert res.kvs[2].value == "a/é".encode()
    res = h.reader.range(prefix="a/", limit=2)[0]
    assert [x.key for x in res.kvs] == ["a/1", "a/2"] and res.count == 4 and res.more
    assert [x.value for x in res.kvs] == [b"a/1", b"a/2"]
    res = h.reader.range(prefix="a/", limit=4)[0]
    assert len(res.kvs) == 4 and not res.more
    res = h.reader.range(start="a/2", end="b")[0]
    assert [x.key for x in res.kvs] == ["a/2", "a/é", "a/\U0001f600", "a\x7f"]
    res = h.reader.range(start="é")[0]
    assert [x.key for x in res.kvs] == ["é", "\uffff", "\U0001f600"]
    res = h.reader.range(prefix="\U0001f600")[0]
    assert [x.key for x in res.kvs] == ["\U0001f600"]
    res = h.reader.range(prefix="é", keys_only=True)[0]
    assert res.kvs == (KeyValue("é", b"", create_revision=8, mod_revision=8, version=1),)
    assert h.reader.range()[0].count == len(NON_ASCII)
    assert h.reader.range(prefix="zz")[0] == RangeResult(kvs=(), more=False, count=0)


def test_limited_range_in_chunks_matches_full_scan(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A limited range stops reading rows at the limit and counts in SQL; with tiny chunks
    a key's versions straddle chunk ends, and every page must match the unlimited scan."""
    monkeypatch.setattr(_reads, "_SCAN_CHUNK", 3)
    cmds: list[Command] = []
    for i in range(12):
        key = f"r/{i:02d}"
        cmds += [Put(key, f"{i}.{v}".encode()) for v in range(i % 5 + 1)]
        if i % 4 == 1:
            cmds.append(Delete(key))
    h.apply(*cmds)
    h.apply(Put("r/03", b"late"), Delete("r/06"), Put("r/05", b"back"))
    revision = h.store.revision
    for rev in (0, revision - 2, revision // 2):
        for start in ("r/", "r/04", "r/055"):
            full = h.reader.range(start=start, end="r0", revision=rev)[0]
            for limit in range(1, full.count + 2):
                got = h.reader.range(start=start, end="r0", revision=rev, limit=limit)[0]
                assert got.kvs == full.kvs[:limit], (rev, start, limit)
                assert (got.count, got.more) == (full.count, limit < full.count)
                keys = h.reader.range(start=start, end="r0", revision=rev, limit=limit, keys_only=True)[0]
                assert [x.key for x in keys.kvs] == [x.key for x in full.kvs[:limit]]
                assert (keys.count, keys.more) == (full.count, limit < full.count)
    unbounded = h.reader.range(start="r/05", limit=2)[0]
    assert [x.key for x in unbounded.kvs] == ["r/05", "r/07"] and unbounded.count == 5


def test_range_prefix_with_max_code_point(h: Harness) -> None:
    top = "\U0010ffff"
    h.apply(
        Put("x" + top, b"1"), Put("x" + top + "a", b"2"), Put("y", b"3"), Put(top, b"4"), Put(top * 2, b"5")
    )
    assert [x.key for x in h.reader.range(prefix="x" + top)[0].kvs] == ["x" + top, "x" + top + "a"]
    assert [x.key for x in h.reader.range(prefix=top)[0].kvs] == [top, top * 2]
    # A key ending in U+D7FF: the next code point that can be stored is U+E000.
    h.apply(Put("\ud7ff", b"6"), Put("\ud7ffz", b"7"), Put("\ue000", b"8"))
    assert [x.key for x in h.reader.range(prefix="\ud7ff")[0].kvs] == ["\ud7ff", "\ud7ffz"]


def test_range_skips_deleted_and_reads_at_revision(h: Harness) -> None:
    h.apply(Put("k1", b"a"), Put("k2", b"b"), Put("k3", b"c"), Delete("k2"), Put("k1", b"A"))
    now = h.reader.range(prefix="k")[0]
    assert [(x.key, x.value) for x in now.kvs] == [("k1", b"A"), ("k3", b"c")]
    then = h.reader.range(prefix="k", revision=3)[0]
    assert [(x.key, x.value) for x in then.kvs] == [("k1", b"a"), ("k2", b"b"), ("k3", b"c")]
    limited = h.reader.range(prefix="k", revision=3, limit=1)[0]
    assert [(x.key, x.value) for x in limited.kvs] == [("k1", b"a")] and limited.count == 3 and limited.more
    with pytest.raises(OutOfRange):
        h.reader.range(prefix="k", revision=6)


def test_range_argument_errors(h: Harness) -> None:
    with pytest.raises(InvalidArgument):
        h.reader.range(prefix="a", start="b")
    with pytest.raises(InvalidArgument):
        h.reader.range(start="b", end="a")
    with pytest.raises(InvalidArgument):
        h.reader.range(start="b", end="b")
    with pytest.raises(InvalidArgument):
        h.reader.range(limit=-1)


# --- Txn ----------------------------------------------------------------------------------


def test_txn_single_revision_and_pre_state_reads(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("b", b"2"))
    txn = Txn(
        compare=(cmp("a", CompareTarget.VALUE, CompareOp.EQUAL, value=b"1"),),
        success=(
            Put("c", b"3"),
            TxnGet("a"),
            Put("a", b"10"),
            Delete("b"),
            TxnRange(prefix=""),
            TxnGet("a", revision=1),
        ),
    )
    applied = h.apply(txn)[0]
    res = applied.result
    assert isinstance(res, TxnResult) and res.succeeded and res.revision == 3
    put_c, get_a, put_a, del_b, rng, get_a1 = res.responses
    assert put_c == PutResult(revision=3, prev_kv=None)
    assert get_a == GetResult(kv=kv("a", b"1", 1, 1, 1))  # before the Txn's own write
    assert put_a == PutResult(revision=3, prev_kv=kv("a", b"1", 1, 1, 1))
    assert del_b == DeleteResult(revision=3, deleted=True, prev_kv=kv("b", b"2", 2, 2, 1))
    assert isinstance(rng, RangeResult) and [x.key for x in rng.kvs] == ["a", "b"]
    assert get_a1 == GetResult(kv=kv("a", b"1", 1, 1, 1))
    assert h.store.revision == 3
    assert h.get("a") == kv("a", b"10", 1, 3, 2)
    assert h.get("c") == kv("c", b"3", 3, 3, 1)
    assert h.get("b") is None
    # One revision, events ordered by key, all at that revision.
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in applied.events] == [
        (EventType.PUT, "a", 3),
        (EventType.DELETE, "b", 3),
        (EventType.PUT, "c", 3),
    ]


def test_txn_failure_branch_and_no_bump_without_writes(h: Harness) -> None:
    h.apply(Put("a", b"1"))
    txn = Txn(
        compare=(cmp("a", CompareTarget.VALUE, CompareOp.EQUAL, value=b"other"),),
        success=(Put("a", b"never"),),
        failure=(TxnGet("a"), Delete("missing")),
    )
    res = h.one(txn)
    assert res == TxnResult(
        revision=1,
        succeeded=False,
        responses=(
            GetResult(kv=kv("a", b"1", 1, 1, 1)),
            DeleteResult(revision=1, deleted=False, prev_kv=None),
        ),
    )
    assert h.store.revision == 1 and h.get("a") == kv("a", b"1", 1, 1, 1)
    # Empty txn: succeeds (no compares), writes nothing.
    assert h.one(Txn()) == TxnResult(revision=1, succeeded=True, responses=())
    assert h.store.revision == 1 and h.store.applied_index == 3


@pytest.mark.parametrize(
    ("target", "op", "value", "number", "expected"),
    [
        (CompareTarget.VALUE, CompareOp.EQUAL, b"m", 0, True),
        (CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"m", 0, False),
        (CompareTarget.VALUE, CompareOp.GREATER, b"a", 0, True),
        (CompareTarget.VALUE, CompareOp.GREATER, b"z", 0, False),
        (CompareTarget.VALUE, CompareOp.LESS, b"z", 0, True),
        (CompareTarget.VALUE, CompareOp.LESS, b"m", 0, False),
        (CompareTarget.VERSION, CompareOp.EQUAL, b"", 2, True),
        (CompareTarget.VERSION, CompareOp.GREATER, b"", 1, True),
        (CompareTarget.VERSION, CompareOp.LESS, b"", 2, False),
        (CompareTarget.CREATE_REVISION, CompareOp.EQUAL, b"", 1, True),
        (CompareTarget.CREATE_REVISION, CompareOp.NOT_EQUAL, b"", 1, False),
        (CompareTarget.MOD_REVISION, CompareOp.EQUAL, b"", 3, True),
        (CompareTarget.MOD_REVISION, CompareOp.LESS, b"", 4, True),
        (CompareTarget.MOD_REVISION, CompareOp.GREATER, b"", 3, False),
        (CompareTarget.EXISTS, CompareOp.EQUAL, b"", 1, True),
        (CompareTarget.EXISTS, CompareOp.EQUAL, b"", 0, False),
        (CompareTarget.EXISTS, CompareOp.NOT_EQUAL, b"", 0, True),
    ],
)
def test_compare_on_existing_key(
    h: Harness, target: CompareTarget, op: CompareOp, value: bytes, number: int, expected: bool
) -> None:
    # "k": create 1, mod 3, version 2, value b"m".
    h.apply(Put("k", b"first"), Put("other", b""), Put("k", b"m"))
    res = h.one(Txn(compare=(cmp("k", target, op, value=value, number=number),)))
    assert isinstance(res, TxnResult) and res.succeeded is expected


@pytest.mark.parametrize(
    ("target", "op", "value", "number", "expected"),
    [
        (CompareTarget.VALUE, CompareOp.EQUAL, b"", 0, False),
        (CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"", 0, True),
        (CompareTarget.VALUE, CompareOp.NOT_EQUAL, b"x", 0, True),
        (CompareTarget.VALUE, CompareOp.GREATER, b"", 0, False),
        (CompareTarget.VALUE, CompareOp.LESS, b"x", 0, False),
        (CompareTarget.VERSION, CompareOp.EQUAL, b"", 0, True),
        (CompareTarget.CREATE_REVISION, CompareOp.EQUAL, b"", 0, True),
        (CompareTarget.MOD_REVISION, CompareOp.EQUAL, b"", 0, True),
        (CompareTarget.MOD_REVISION, CompareOp.LESS, b"", 1, True),
        (CompareTarget.EXISTS, CompareOp.EQUAL, b"", 0, True),
        (CompareTarget.EXISTS, CompareOp.EQUAL, b"", 1, False),
    ],
)
@pytest.mark.parametrize("deleted", [False, True])
def test_compare_on_missing_key(
    h: Harness,
    target: CompareTarget,
    op: CompareOp,
    value: bytes,
    number: int,
    expected: bool,
    deleted: bool,
) -> None:
    if deleted:
        h.apply(Put("k", b""), Delete("k"))
    res = h.one(Txn(compare=(cmp("k", target, op, value=value, number=number),)))
    assert isinstance(res, TxnResult) and res.succeeded is expected


def test_txn_all_compares_must_hold(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("b", b"2"))
    yes = cmp("a", CompareTarget.VALUE, CompareOp.EQUAL, value=b"1")
    no = cmp("b", CompareTarget.VALUE, CompareOp.EQUAL, value=b"1")
    assert isinstance(r := h.one(Txn(compare=(yes, yes))), TxnResult) and r.succeeded
    assert isinstance(r := h.one(Txn(compare=(yes, no))), TxnResult) and not r.succeeded


def test_txn_duplicate_write_key_is_rejected_and_changes_nothing(h: Harness) -> None:
    h.apply(Put("a", b"1"))
    bad = Txn(success=(Put("a", b"2"), Delete("a")))
    also_bad = Txn(
        compare=(cmp("a", CompareTarget.EXISTS, CompareOp.EQUAL, number=0),),
        failure=(Put("x", b""), Put("x", b"")),
    )
    ok = Put("b", b"2")
    results = h.apply(bad, also_bad, ok)
    assert isinstance(results[0].result, InvalidArgument)
    assert isinstance(results[1].result, InvalidArgument)
    assert results[0].events == [] and results[1].events == []
    assert results[2].result == PutResult(revision=2, prev_kv=None)
    assert h.store.applied_index == 4 and h.store.revision == 2
    assert h.get("a") == kv("a", b"1", 1, 1, 1)


def test_txn_read_of_compacted_revision_fails_whole_txn(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("a", b"2"), Put("a", b"3"), Compact(2))
    res = h.apply(
        Txn(success=(Put("b", b"x"), TxnGet("a", revision=1))),
        Txn(success=(Put("b", b"x"), TxnRange(prefix="a", revision=9))),
        Txn(success=(Put("b", b"y"), TxnGet("a", revision=2))),
    )
    assert isinstance(res[0].result, OutOfRange) and "compacted" in res[0].result.message
    assert isinstance(res[1].result, OutOfRange) and "future" in res[1].result.message
    ok = res[2].result
    assert isinstance(ok, TxnResult) and ok.revision == 4
    assert ok.responses[1] == GetResult(kv=kv("a", b"2", 1, 2, 2))
    assert h.get("b") == kv("b", b"y", 4, 4, 1)
    assert h.store.applied_index == 7


def test_invalid_commands_change_nothing(h: Harness) -> None:
    h.apply(Put("a", b"1"))
    bad: list[Command] = [
        Put(123, b"x"),  # type: ignore[arg-type]
        Put("a", "not bytes"),  # type: ignore[arg-type]
        Put("a", b"x", expires_at_ms=-1),
        Put("\ud800", b"x"),
        Delete(None),  # type: ignore[arg-type]
        Txn(compare=(Compare("a", 99, CompareOp.EQUAL),)),  # type: ignore[arg-type]
        Txn(compare=(cmp("a", CompareTarget.EXISTS, CompareOp.EQUAL, number=2),)),
        Txn(success=(TxnRange(prefix="a", start="b"),)),
        Txn(failure=(TxnGet("a", revision=-1),)),
        Expire(items=(("a",),)),  # type: ignore[arg-type]
        "not a command",  # type: ignore[list-item]
    ]
    results = h.apply(*bad)
    for cmd, a in zip(bad, results, strict=True):
        assert isinstance(a.result, InvalidArgument), cmd
        assert a.events == []
    assert h.store.revision == 1 and h.store.applied_index == 1 + len(bad)
    assert h.reader.history("a")[0] == [kv("a", b"1", 1, 1, 1)]


# --- Compact ------------------------------------------------------------------------------


def test_compact_keeps_what_reads_at_or_after_it_need(h: Harness) -> None:
    h.apply(
        Put("a", b"1"),  # 1
        Put("a", b"2"),  # 2
        Put("b", b"1"),  # 3
        Delete("b"),  # 4
        Put("c", b"1"),  # 5
        Put("a", b"3"),  # 6
        Delete("c"),  # 7
    )
    assert h.one(Compact(5)) == CompactResult(revision=7)
    assert h.store.compact_revision == 5 and h.store.revision == 7
    assert h.reader.state() == (8, 7, 5)
    # a: versions 2 (newest <= 5) and 6 stay; b: tombstone 4 (newest <= 5) goes; c stays.
    assert [v.mod_revision for v in h.reader.history("a")[0]] == [6, 2]
    assert h.reader.history("b")[0] == []
    assert [v.mod_revision for v in h.reader.history("c")[0]] == [7, 5]
    assert h.get("a", 5) == kv("a", b"2", 1, 2, 2)
    assert h.get("b", 5) is None
    assert h.get("c", 5) == kv("c", b"1", 5, 5, 1)
    assert [x.key for x in h.reader.range(revision=5)[0].kvs] == ["a", "c"]
    with pytest.raises(OutOfRange) as info:
        h.get("a", 4)
    assert info.value.compact_revision == 5 and "compacted" in info.value.message
    with pytest.raises(OutOfRange):
        h.reader.range(revision=4)


def test_compact_errors(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("a", b"2"))
    res = h.apply(Compact(3), Compact(0), Compact(2), Compact(2), Compact(1), Put("a", b"3"))
    assert isinstance(res[0].result, OutOfRange)  # future
    assert isinstance(res[1].result, OutOfRange)  # 0 <= compacted (0)
    assert res[2].result == CompactResult(revision=2)
    assert isinstance(res[3].result, OutOfRange) and "already" in res[3].result.message
    assert isinstance(res[4].result, OutOfRange)
    assert res[5].result == PutResult(revision=3, prev_kv=kv("a", b"2", 1, 2, 2))
    assert h.store.compact_revision == 2 and h.store.applied_index == 8
    assert isinstance(h.one(Compact(-1)), InvalidArgument)


# --- Expire / TTL index -------------------------------------------------------------------


def test_expire_only_unchanged_items(h: Harness) -> None:
    h.apply(
        Put("a", b"1", expires_at_ms=100), Put("b", b"1", expires_at_ms=200), Put("c", b"1", expires_at_ms=50)
    )
    assert h.reader.next_expiry_ms() == 50
    assert h.reader.expiring(150, 10) == [("c", 3), ("a", 1)]
    assert h.reader.expiring(150, 1) == [("c", 3)]
    assert h.reader.expiring(10, 10) == []
    # "a" is refreshed after the proposer looked: its expiry item must not apply.
    h.apply(Put("a", b"2", expires_at_ms=300))
    applied = h.apply(Expire(items=(("a", 1), ("c", 3), ("zz", 1), ("c", 3))))[0]
    assert applied.result == ExpireResult(revision=5, expired=("c",))
    (ev,) = applied.events
    assert ev.type == EventType.DELETE and ev.expired and ev.kv.key == "c" and ev.kv.mod_revision == 5
    assert ev.prev_kv == kv("c", b"1", 3, 3, 1, expires=50)
    assert h.get("c") is None and h.get("a") == kv("a", b"2", 1, 4, 2, expires=300)
    assert h.reader.expiring(1000, 10) == [("b", 2), ("a", 4)]
    # Nothing to expire: no revision bump.
    assert h.one(Expire(items=(("a", 1),))) == ExpireResult(revision=5, expired=())
    assert h.store.revision == 5
    # Overwrite without TTL, delete: both leave the TTL index.
    h.apply(Put("a", b"3"), Delete("b"))
    assert h.reader.expiring(10**12, 10) == [] and h.reader.next_expiry_ms() is None
    events = h.reader.events(5, limit=0)[0]
    assert [(e.kv.key, e.expired) for e in events] == [("c", True), ("a", False), ("b", False)]


def test_expire_many_keys_one_revision(h: Harness) -> None:
    h.apply(*(Put(f"k{i}", b"v", expires_at_ms=10) for i in range(5)))
    items = tuple(reversed(h.reader.expiring(10, 100)))
    applied = h.apply(Expire(items=items))[0]
    assert applied.result == ExpireResult(revision=6, expired=tuple(f"k{i}" for i in range(5)))
    assert [e.kv.key for e in applied.events] == [f"k{i}" for i in range(5)]
    assert h.reader.range()[0].count == 0


# --- batches and idempotent replay --------------------------------------------------------


def test_reapplying_a_batch_is_a_no_op(h: Harness, tmp_path: Path) -> None:
    batch: list[tuple[int, Command]] = [(1, Put("a", b"1")), (2, Put("a", b"2")), (3, Delete("a"))]
    first = h.store.apply(batch)
    assert all(isinstance(a, Applied) for a in first)
    assert h.store.apply(batch) == [None, None, None]
    # A batch straddling applied_index applies only the new tail.
    out = h.store.apply([(3, Put("x", b"")), (4, Put("b", b"1"))])
    assert out[0] is None and isinstance(out[1], Applied)
    assert (h.store.applied_index, h.store.revision) == (4, 4)
    assert h.get("x") is None
    h.close()
    again = Harness(tmp_path / "kv.db")
    try:
        assert (again.store.applied_index, again.store.revision, again.store.compact_revision) == (4, 4, 0)
        assert again.store.apply(batch) == [None, None, None]
        assert again.get("b") == kv("b", b"1", 4, 4, 1)
    finally:
        again.close()
    h.store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
    h.reader = h.store.reader()


def test_unexpected_error_rolls_back_whole_batch(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.apply(Put("a", b"1"))

    class Boom(Exception):
        pass

    real = KvStore._write_put

    def write_put(self: KvStore, st: object, put: Put, rev: int, prev: object) -> object:
        if put.key == "boom":
            raise Boom
        return real(self, st, put, rev, prev)  # type: ignore[arg-type]

    monkeypatch.setattr(KvStore, "_write_put", write_put)
    with pytest.raises(Boom):
        h.store.apply([(2, Put("b", b"1")), (3, Delete("a")), (4, Put("boom", b""))])
    assert (h.store.applied_index, h.store.revision, h.store.live_keys) == (1, 1, 1)
    assert h.reader.state() == (1, 1, 0)
    assert h.get("b") is None and h.get("a") is not None
    # The same indexes apply normally afterwards.
    h.store.apply([(2, Put("b", b"1"))])
    assert h.get("b") == kv("b", b"1", 2, 2, 1)


def test_reader_sees_committed_state_only(h: Harness) -> None:
    h.apply(Put("a", b"1"))
    other = h.store.reader()
    try:
        assert other.get("a") == (kv("a", b"1", 1, 1, 1), 1)
        h.apply(Put("a", b"2"))
        assert other.get("a") == (kv("a", b"2", 1, 2, 2), 2)
        with pytest.raises(sqlite3.OperationalError):
            other._conn.execute("DELETE FROM kv_versions")  # read-only connection
    finally:
        other.close()


# --- events (watch replay) ----------------------------------------------------------------


def test_events_replay_with_prev_kv_and_scopes(h: Harness) -> None:
    h.apply(
        Put("a", b"1"),  # 1
        Put("b/x", b"1"),  # 2
        Put("a", b"2"),  # 3
        Txn(success=(Put("b/y", b"1"), Put("b/x", b"2"), Delete("a"))),  # 4
        Put("c", b"1"),  # 5
    )
    events, rev = h.reader.events(1, limit=0)
    assert rev == 5
    assert [(e.kv.mod_revision, e.kv.key, e.type) for e in events] == [
        (1, "a", EventType.PUT),
        (2, "b/x", EventType.PUT),
        (3, "a", EventType.PUT),
        (4, "a", EventType.DELETE),
        (4, "b/x", EventType.PUT),
        (4, "b/y", EventType.PUT),
        (5, "c", EventType.PUT),
    ]
    assert events[0].prev_kv is None
    assert events[2].prev_kv == kv("a", b"1", 1, 1, 1)
    assert events[3].prev_kv == kv("a", b"2", 1, 3, 2) and events[3].kv.deleted
    assert events[4].prev_kv == kv("b/x", b"1", 2, 2, 1)
    # Starting later still finds prev_kv from before the start.
    later = h.reader.events(4, limit=0)[0]
    assert [e.kv.key for e in later] == ["a", "b/x", "b/y", "c"]
    assert later[0].prev_kv == kv("a", b"2", 1, 3, 2)
    assert later[1].prev_kv == kv("b/x", b"1", 2, 2, 1)
    keyed = h.reader.events(2, key="a", limit=0)[0]
    assert [(e.kv.mod_revision, e.type) for e in keyed] == [(3, EventType.PUT), (4, EventType.DELETE)]
    assert keyed[0].prev_kv == kv("a", b"1", 1, 1, 1)
    prefixed = h.reader.events(1, prefix="b/", limit=0)[0]
    assert [(e.kv.mod_revision, e.kv.key) for e in prefixed] == [(2, "b/x"), (4, "b/x"), (4, "b/y")]
    assert h.reader.events(6, limit=0) == ([], 5)
    assert h.reader.events(0, limit=0)[0] == events


def test_events_limit_never_splits_a_revision(h: Harness) -> None:
    h.apply(
        Put("a", b"1"),  # 1
        Txn(success=(Put("t1", b""), Put("t2", b""), Put("t3", b""))),  # 2
        Put("z", b"1"),  # 3
    )
    # Limit 2 would cut revision 2 after its first event: stop before it instead.
    first = h.reader.events(1, limit=2)[0]
    assert [(e.kv.mod_revision, e.kv.key) for e in first] == [(1, "a")]
    # A revision bigger than the limit on its own comes back whole.
    second = h.reader.events(2, limit=2)[0]
    assert [(e.kv.mod_revision, e.kv.key) for e in second] == [(2, "t1"), (2, "t2"), (2, "t3")]
    exact = h.reader.events(1, limit=4)[0]
    assert len(exact) == 4
    rest = h.reader.events(3, limit=1)[0]
    assert [e.kv.key for e in rest] == ["z"]
    pre = h.reader.events(2, prefix="t", limit=1)[0]
    assert [e.kv.key for e in pre] == ["t1", "t2", "t3"]


def test_events_below_compaction_is_out_of_range(h: Harness) -> None:
    h.apply(Put("a", b"1"), Put("a", b"2"), Delete("a"), Put("b", b"1"))
    h.apply(Compact(3))
    with pytest.raises(OutOfRange) as info:
        h.reader.events(2, limit=0)
    assert info.value.compact_revision == 3
    assert "compacted revision 3" in info.value.message and "replayed is 3" in info.value.message
    with pytest.raises(OutOfRange):
        h.reader.events(1, key="a", limit=0)
    # As in etcd, a watch may start at the compacted revision itself: the DELETE at 3
    # survives compaction (its prev_kv, written at 2, does not).
    events = h.reader.events(3, limit=0)[0]
    assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
        (EventType.DELETE, "a", 3),
        (EventType.PUT, "b", 4),
    ]
    assert events[0].prev_kv is None
    assert h.reader.get("a", 3)[0] is None


# --- history pruning ----------------------------------------------------------------------


@pytest.fixture
def shallow(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path / "kv.db", depth=3)
    yield harness
    harness.close()


def test_prune_keeps_newest_depth(shallow: Harness) -> None:
    h = shallow
    # a: 6 versions at revisions 1,3,5,7,9,11; b: 2 versions at 2,4; c: 4 versions, last a delete.
    h.apply(
        Put("a", b"1"),
        Put("b", b"1"),
        Put("a", b"2"),
        Put("b", b"2"),
        Put("a", b"3"),
        Put("c", b"1"),
        Put("a", b"4"),
        Put("c", b"2"),
        Put("a", b"5"),
        Put("c", b"3"),
        Put("a", b"6"),
        Delete("c"),
    )
    assert h.reader.prune_candidates(None, 100, 3) == (["a", "c"], None)
    assert h.one(Prune(depth=3, keys=("a", "b", "c"))) == PruneResult(revision=12, removed=3 + 1)
    assert [v.mod_revision for v in h.reader.history("a")[0]] == [11, 9, 7]
    assert [v.mod_revision for v in h.reader.history("b")[0]] == [4, 2]
    assert [v.mod_revision for v in h.reader.history("c")[0]] == [12, 10, 8]
    assert h.one(Prune(depth=3, keys=("a", "b", "c"))) == PruneResult(revision=12, removed=0)
    assert h.reader.prune_candidates(None, 100, 3) == ([], None)
    # Exact at and above each key's oldest retained version...
    assert h.get("a", 7) == kv("a", b"4", 1, 7, 4)
    assert h.get("a", 8) == kv("a", b"4", 1, 7, 4)
    assert h.get("c", 8) == kv("c", b"2", 6, 8, 2)
    assert h.get("b", 1) is None  # b was never pruned: absent at 1 is exact
    # ...and refused below it, never silently wrong.
    with pytest.raises(OutOfRange) as info:
        h.get("a", 6)
    assert "pruned" in info.value.message and "7" in info.value.message
    with pytest.raises(OutOfRange):
        h.get("c", 7)
    with pytest.raises(OutOfRange):
        h.reader.range(revision=6)
    with pytest.raises(OutOfRange):
        h.reader.range(prefix="c", revision=7)
    assert [x.key for x in h.reader.range(prefix="b", revision=2)[0].kvs] == ["b"]
    assert [x.key for x in h.reader.range(revision=8)[0].kvs] == ["a", "b", "c"]
    # Replay needs prev_kv of the oldest retained version too: exact from floor + 1.
    with pytest.raises(OutOfRange) as info2:
        h.reader.events(8, limit=0)
    assert "replayed is 9" in info2.value.message
    with pytest.raises(OutOfRange):
        h.reader.events(7, key="a", limit=0)
    assert [e.kv.mod_revision for e in h.reader.events(8, key="a", limit=0)[0]] == [9, 11]
    assert [e.kv.mod_revision for e in h.reader.events(1, key="b", limit=0)[0]] == [2, 4]
    evs = h.reader.events(9, limit=0)[0]
    assert [(e.kv.key, e.kv.mod_revision) for e in evs] == [("a", 9), ("c", 10), ("a", 11), ("c", 12)]
    assert evs[0].prev_kv == kv("a", b"4", 1, 7, 4)


def test_prune_then_compaction_clears_floors(shallow: Harness) -> None:
    h = shallow
    for _ in range(5):
        h.apply(Put("k1", b"x"), Put("k2", b"x"), Put("k3", b"x"))
    # 5 versions each; depth 3 removes 2 per key.
    assert h.one(Prune(3, ("k1", "k2"))) == PruneResult(15, 4)
    assert h.one(Prune(3, ("k3", "k1"))) == PruneResult(15, 2)  # nothing left in k1
    assert h.one(Prune(3, ("k1", "k2", "k3"))) == PruneResult(15, 0)
    assert [len(h.reader.history(k)[0]) for k in ("k1", "k2", "k3")] == [3, 3, 3]
    with pytest.raises(OutOfRange):
        h.get("k1", 5)
    h.apply(Compact(h.store.revision))
    # Below the compact revision everything is refused anyway, so floors are dropped.
    assert h.store.reader().state()[2] == 15
    count = sqlite3.connect(h.path).execute("SELECT count(*) FROM kv_pruned").fetchone()[0]
    assert count == 0
    assert h.get("k1", 15) == h.get("k1")


def test_db_size_and_reopen_with_history(tmp_path: Path) -> None:
    h = Harness(tmp_path / "kv.db")
    try:
        h.apply(*(Put(f"k{i}", b"v" * 100) for i in range(50)))
        assert h.store.db_size_bytes() > 5000
    finally:
        h.close()


def test_history_depth_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history_depth"):
        KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(history_depth=0), storage=StorageConfig())


def test_kv_synchronous_is_set_on_connect(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig(kv_synchronous="OFF"))
    try:
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 0
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
    with pytest.raises(ValueError, match="synchronous"):
        KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig(kv_synchronous="bogus"))


def test_every_table_has_a_shard_column(h: Harness) -> None:
    conn = sqlite3.connect(h.path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        ours = [t for t in tables if not t.startswith("_sqlite")]
        assert set(ours) == {
            "kv_versions",
            "kv_meta",
            "kv_ttl",
            "kv_pruned",
            "kv_members",
            "kv_sessions",
            "kv_session_results",
        }
        for t in ours:
            cols = {r[1]: r for r in conn.execute(f"PRAGMA table_info({t})")}
            assert "shard" in cols and cols["shard"][3] == 1, t  # NOT NULL
    finally:
        conn.close()


def test_error_results_are_ggap_errors(h: Harness) -> None:
    res = h.one(Compact(5))
    assert isinstance(res, GgapError) and isinstance(res, OutOfRange)
    assert res.current_revision == 0


def test_prune_candidates_scan_in_bounded_windows(shallow: Harness) -> None:
    h = shallow
    for i in range(5):
        h.apply(*[Put(k, bytes([i])) for k in ("k1", "k2", "k3", "k4", "k5")])
    h.apply(Put("k0", b"x"))
    # Windows of two keys: k0,k1 -> k1; k2,k3 -> both; k4,k5 -> both, and the scan wraps.
    assert h.reader.prune_candidates(None, 2, 3) == (["k1"], "k1")
    assert h.reader.prune_candidates("k1", 2, 3) == (["k2", "k3"], "k3")
    assert h.reader.prune_candidates("k3", 2, 3) == (["k4", "k5"], "k5")
    assert h.reader.prune_candidates("k5", 2, 3) == ([], None)


def test_prune_refuses_a_bad_depth_and_changes_nothing(shallow: Harness) -> None:
    h = shallow
    h.apply(*[Put("a", bytes([i])) for i in range(5)])
    res = h.one(Prune(depth=0, keys=("a",)))
    assert isinstance(res, InvalidArgument)
    assert len(h.reader.history("a")[0]) == 5


def test_compaction_work_follows_what_was_written_since_the_last_one(shallow: Harness) -> None:
    """Compacting in steps leaves exactly what one big compaction leaves."""
    h = shallow
    for i in range(30):
        h.apply(Put(f"k{i % 4}", bytes([i])), *([Delete("k3")] if i % 7 == 0 else []))
    rows = [(k, v.mod_revision) for k in ("k0", "k1", "k2", "k3") for v in h.reader.history(k)[0]]
    other = Harness(h.path.with_name("other.db"), depth=3)
    try:
        for i in range(30):
            other.apply(Put(f"k{i % 4}", bytes([i])), *([Delete("k3")] if i % 7 == 0 else []))
        for step in (5, 9, 17, 23, 30):
            assert other.one(Compact(step)) == CompactResult(revision=other.store.revision)
        assert h.one(Compact(30)) == CompactResult(revision=h.store.revision)
        got = [(k, v.mod_revision) for k in ("k0", "k1", "k2", "k3") for v in other.reader.history(k)[0]]
        want = [(k, v.mod_revision) for k in ("k0", "k1", "k2", "k3") for v in h.reader.history(k)[0]]
        assert got == want and len(want) < len(rows)
    finally:
        other.close()
