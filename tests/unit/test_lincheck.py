"""The linearizability checker against hand-made histories, a brute-force oracle and simulated registers.

The oracle enumerates every subset of timed-out ops and every order of the chosen ops, straight
from the definition, so it shares no code or ideas with the search it checks.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, given, settings

from ggap.testing import CheckResult, HistoryRecorder, Operation, OpKind, check, lincheck

# --------------------------------------------------------------------------- helpers


def put(c: int, v: Any, call: float, ret: float | None, key: str = "k") -> Operation:
    return Operation(c, key, OpKind.PUT, (v,), call, ret, None)


def get(c: int, result: Any, call: float, ret: float | None, key: str = "k") -> Operation:
    return Operation(c, key, OpKind.GET, (), call, ret, result)


def cas(
    c: int, exp: Any, new: Any, ok: bool | None, call: float, ret: float | None, key: str = "k"
) -> Operation:
    return Operation(c, key, OpKind.CAS, (exp, new), call, ret, ok)


def delete(c: int, call: float, ret: float | None, result: bool | None = None, key: str = "k") -> Operation:
    return Operation(c, key, OpKind.DELETE, (), call, ret, result)


def assert_ok(history: Sequence[Operation]) -> None:
    res = check(history)
    assert res.ok, res.explain()
    assert not res.unknown


def assert_violation(history: Sequence[Operation], key: str = "k") -> CheckResult:
    res = check(history)
    assert res.violation, res.explain()
    assert not res.ok and not res.unknown
    assert res.key == key
    return res


@contextmanager
def search_only() -> Iterator[None]:
    """Disable the cheap pre-check, so verdicts come from the search alone."""
    with mock.patch.object(lincheck, "_quick_violation", return_value=None):
        yield


def _legal(seq: Sequence[Operation]) -> bool:
    """Apply ops in order to a register, checking every known result."""
    state: Any = None
    for op in seq:
        if op.kind is OpKind.GET:
            if not op.pending and op.result != state:
                return False
        elif op.kind is OpKind.PUT:
            state = op.args[0]
        elif op.kind is OpKind.DELETE:
            if not op.pending and op.result is not None and op.result != (state is not None):
                return False
            state = None
        else:
            hit = state == op.args[0]
            if not op.pending and op.result != hit:
                return False
            if hit:
                state = op.args[1]
    return True


def _respects_real_time(seq: Sequence[Operation]) -> bool:
    return not any(
        b.ret is not None and not b.timed_out and b.ret < a.call
        for i, a in enumerate(seq)
        for b in seq[i + 1 :]
    )


def brute_force(history: Sequence[Operation]) -> bool:
    """Linearizability by definition: some subset of timed-out ops plus all completed ops has a
    legal order that respects real time. Exponential; only for tiny single-key histories."""
    done = [op for op in history if not op.pending]
    pending = [op for op in history if op.pending]
    for r in range(len(pending) + 1):
        for extra in itertools.combinations(pending, r):
            for seq in itertools.permutations(done + list(extra)):
                if _respects_real_time(seq) and _legal(seq):
                    return True
    return False


def simulate(
    rng: random.Random,
    *,
    clients: int = 8,
    ops: int = 200,
    keys: Sequence[str] = ("k",),
    p_timeout: float = 0.0,
    ticks: bool = False,
) -> list[Operation]:
    """A history of a correct atomic register: each op takes effect at one random instant
    inside its interval (or, if timed out, at any later instant or never)."""
    planned: list[tuple[float, int, str, OpKind, float, float | None]] = []  # (point, client, ...)
    per_client = max(1, ops // clients)
    for c in range(clients):
        t = rng.random() * 3
        for _ in range(per_client):
            call = t + rng.expovariate(2.0)
            kind = rng.choices(list(OpKind), weights=[4, 5, 3, 1])[0]
            key = rng.choice(keys)
            if rng.random() < p_timeout:
                # Takes effect much later than the client gives up, or never.
                point = call + rng.random() * 20 if rng.random() < 0.6 else float("inf")
                planned.append((point, c, key, kind, call, None))
                t = call + 2.0
            else:
                point = call + rng.random() * 1.5
                end = point + rng.random() * 1.5
                planned.append((point, c, key, kind, call, end))
                t = end
    planned.sort(key=lambda p: p[0])
    state: dict[str, Any] = {}
    written: dict[str, list[Any]] = {k: [] for k in keys}
    counter = itertools.count()
    history: list[Operation] = []
    for point, c, key, kind, call0, ret in planned:
        call = call0
        cur = state.get(key)
        result: Any = None
        if kind is OpKind.PUT:
            args: tuple[Any, ...] = (f"v{next(counter)}",)
        elif kind is OpKind.GET:
            args = ()
        elif kind is OpKind.DELETE:
            args = ()
        else:
            choices = [cur, cur, None, *written[key][-3:]]
            new = None if rng.random() < 0.1 else f"v{next(counter)}"
            args = (rng.choice(choices), new)
        if point != float("inf"):
            if kind is OpKind.PUT:
                state[key] = args[0]
            elif kind is OpKind.GET:
                result = cur
            elif kind is OpKind.DELETE:
                result = cur is not None if rng.random() < 0.5 else None
                state.pop(key, None)
            else:
                result = cur == args[0]
                if result:
                    if args[1] is None:
                        state.pop(key, None)
                    else:
                        state[key] = args[1]
        for v in args:
            if v is not None:
                written[key].append(v)
        if ret is None:
            result = None
        if ticks:
            # A coarse clock only widens intervals, which keeps the history linearizable.
            call = float(int(call))
            ret = None if ret is None else float(int(ret) + 1)
        history.append(Operation(c, key, kind, args, call, ret, result))
    rng.shuffle(history)  # the checker must not depend on input order
    return history


# --------------------------------------------------------------------------- hand-made histories


def test_empty_and_sequential() -> None:
    assert_ok([])
    assert_ok(
        [
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, "a", 4, 5),
            put(2, "b", 6, 7),
            get(1, "b", 8, 9),
            delete(1, 10, 11, True),
            get(2, None, 12, 13),
            delete(2, 14, 15, False),
        ]
    )


def test_concurrent_puts_may_be_read_in_either_order() -> None:
    # Both orders of the overlapping puts are fine: a later read sees the one that went last.
    for last in ("a", "b"):
        assert_ok([put(1, "a", 0, 10), put(2, "b", 1, 9), get(3, last, 11, 12), get(3, last, 13, 14)])
    # A read overlapping both writes may see either value, or none.
    for seen in ("a", "b", None):
        assert_ok([put(1, "a", 0, 10), put(2, "b", 1, 9), get(3, seen, 2, 3)])
    # But once both are done, readers agree on one winner.
    assert_violation([put(1, "a", 0, 10), put(2, "b", 1, 9), get(3, "a", 11, 12), get(3, "b", 13, 14)])


def test_cas_chain() -> None:
    assert_ok(
        [
            cas(1, None, "a", True, 0, 1),
            cas(2, "a", "b", True, 2, 3),
            cas(3, "a", "c", False, 2.5, 3.5),
            cas(1, "b", None, True, 4, 5),
            get(2, None, 6, 7),
            cas(3, None, "d", True, 8, 9),
            get(1, "d", 10, 11),
        ]
    )


def test_concurrent_cas_exactly_one_wins() -> None:
    assert_ok(
        [put(0, "x", 0, 1), cas(1, "x", "a", True, 2, 5), cas(2, "x", "b", False, 2, 5), get(3, "a", 6, 7)]
    )
    # Same, but the loser's CAS could also have run after the winner's.
    assert_ok(
        [put(0, "x", 0, 1), cas(1, "x", "a", True, 2, 5), cas(2, "a", "b", True, 2, 5), get(3, "b", 6, 7)]
    )


def test_stale_read_after_completed_write() -> None:
    hist = [put(1, "a", 0, 1), put(1, "b", 2, 3), get(2, "a", 4, 5)]
    res = assert_violation(hist)
    assert [op.args for op in res.linearized] == [("a",), ("b",)]
    assert res.state == "b"
    assert [op.result for op in res.stuck] == ["a"]
    assert res.witness == (hist[2], hist[0], hist[1])  # the read, its source, the overwrite
    assert "NOT linearizable" in res.explain() and "'k'" in res.explain()
    with search_only():
        res = assert_violation(hist)
    assert res.witness == ()
    assert [op.args for op in res.linearized] == [("a",), ("b",)]


def test_read_of_value_never_written() -> None:
    assert_violation([put(1, "a", 0, 1), get(2, "zzz", 0.5, 5)])
    assert_violation([get(2, "zzz", 0, 1)])


def test_two_successful_cas_from_same_expected_value() -> None:
    assert_violation([put(0, "x", 0, 1), cas(1, "x", "a", True, 2, 5), cas(2, "x", "b", True, 2, 5)])


def test_failed_cas_must_be_explained() -> None:
    assert_violation([put(0, "x", 0, 1), cas(1, "x", "a", False, 2, 3)])
    assert_violation([cas(1, None, "a", False, 0, 1)])  # key is missing, so it must succeed
    assert_violation([put(0, "x", 0, 1), delete(1, 2, 3, False)])  # delete of a live key reports True


def test_read_going_backwards() -> None:
    # The write overlaps both reads, but the reads are sequential: new then old is impossible.
    assert_violation([put(0, "a", 0, 1), put(1, "b", 2, 20), get(2, "b", 3, 4), get(3, "a", 5, 6)])
    assert_ok([put(0, "a", 0, 1), put(1, "b", 2, 20), get(2, "a", 3, 4), get(3, "b", 5, 6)])


def test_equal_times_count_as_concurrent() -> None:
    # A coarse clock: the get starts in the tick the put ends; either order is possible.
    assert_ok([put(1, "a", 0, 1), put(1, "b", 1.5, 2), get(2, "a", 2, 3)])
    assert_violation([put(1, "a", 0, 1), put(1, "b", 1.5, 2), get(2, "a", 2.5, 3)])
    # Two puts sharing a tick boundary may go in either order.
    assert_ok([put(1, "a", 0, 1), put(2, "b", 1, 2), get(3, "a", 3, 4)])


def test_right_key_is_reported_among_many() -> None:
    hist = [put(1, "a", 0, 1, key=f"k{i}") for i in range(5)] + [
        get(2, "a", 2, 3, key=f"k{i}") for i in range(5) if i != 3
    ]
    hist.append(get(2, "nope", 2, 3, key="k3"))
    res = assert_violation(hist, key="k3")
    assert all(op.key == "k3" for op in res.operations)
    assert res.keys == 5


# --------------------------------------------------------------------------- timed-out operations


def test_timed_out_write_may_or_may_not_appear() -> None:
    assert_ok([put(1, "a", 0, None), get(2, "a", 5, 6)])
    assert_ok([put(1, "a", 0, None), get(2, None, 5, 6)])
    assert_ok([put(1, "a", 0, None), get(2, None, 5, 6), get(2, "a", 7, 8)])  # took effect late
    flagged = Operation(1, "k", OpKind.PUT, ("a",), 0, 1, None, timed_out=True)
    assert flagged.pending
    assert_ok([flagged, get(2, "a", 100, 101)])  # ret is ignored when timed_out


def test_timed_out_write_is_not_seen_before_its_call() -> None:
    assert_violation([get(2, "a", 0, 1), put(1, "a", 2, None)])
    assert_violation([get(2, "a", 0, 1), Operation(1, "k", OpKind.PUT, ("a",), 2, 3, None, timed_out=True)])


def test_timed_out_write_once_seen_stays() -> None:
    assert_violation([put(1, "a", 0, None), get(2, "a", 3, 4), get(2, None, 5, 6)])


def test_timed_out_results_are_not_checked() -> None:
    # A timed-out get with an absurd result, a timed-out CAS that "returned" nonsense.
    assert_ok(
        [get(1, "never", 0, None), cas(2, "q", "r", None, 0, None), put(3, "a", 1, 2), get(3, "a", 3, 4)]
    )


def test_timed_out_write_needed_by_a_failed_cas() -> None:
    # Only the timed-out put can make this CAS (key must be missing) fail.
    assert_ok([put(1, "a", 0, None), cas(2, None, "b", False, 1, 2)])
    # ...but then the key cannot be missing right after.
    assert_violation([put(1, "a", 0, None), cas(2, None, "b", False, 1, 2), get(3, None, 3, 4)])
    # A timed-out delete may explain a later read of a missing key, and a checked delete result.
    assert_ok([put(1, "a", 0, 1), delete(2, 2, None), get(3, None, 3, 4)])
    assert_ok([put(1, "a", 0, 1), delete(2, 2, None), delete(3, 3, 4, False)])


def test_timed_out_cas_can_take_effect() -> None:
    assert_ok([put(1, "a", 0, 1), cas(2, "a", "b", None, 2, None), get(3, "b", 10, 11), get(3, "b", 12, 13)])
    assert_violation([put(1, "a", 0, 1), cas(2, "x", "b", None, 2, None), get(3, "b", 10, 11)])


def test_timed_out_cas_is_not_a_timed_out_put() -> None:
    # Both write a never-read value; the CAS must go first (while the value is e) so that the
    # put is still there to hide g later. Trying only one of them per step would miss this.
    hist = [
        put(1, "e", 0, 1),
        put(2, "d1", 0, None),
        cas(3, "e", "d2", None, 0, None),
        cas(1, "e", "f", False, 2, 3),
        put(1, "g", 4, 5),
        cas(1, "g", "h", False, 6, 7),
    ]
    assert brute_force(hist)
    assert_ok(hist)
    # A third hiding write would be needed: neither can be used twice.
    more = [cas(1, "g", "i", False, 8, 9), put(1, "g", 10, 11), cas(1, "g", "h", False, 12, 13)]
    assert_violation([*hist, *more])


def test_many_timed_out_unobserved_writes_are_cheap() -> None:
    hist = [put(100 + i, f"lost{i}", float(i), None) for i in range(60)]
    hist += [put(1, f"v{i}", 2.0 * i, 2.0 * i + 1) for i in range(100)]
    hist += [get(2, f"v{i}", 2.0 * i + 1.5, 2.0 * i + 1.9) for i in range(100)]
    res = check(hist, timeout_s=5)
    assert res.ok, res.explain()
    assert res.steps < 10_000


# --------------------------------------------------------------------------- budget


def _hard_history(n: int = 30) -> list[Operation]:
    """n timed-out puts, each read once inside one long window, so they can come in any of
    n! orders; then a final read that needs one of them to happen twice. No cheap proof
    exists, and the search must try every subset of the pairs to reject it."""
    hist = [put(100 + i, f"w{i}", 0.0, None) for i in range(n)]
    hist += [get(200 + i, f"w{i}", 1.0, 100.0) for i in range(n)]
    hist += [put(1, "z", 150, 151), get(2, "w0", 200, 201)]
    return hist


def test_budget_exhaustion_is_unknown_not_pass_or_fail() -> None:
    small = check(_hard_history(6))
    assert small.violation and small.witness == ()  # decided by search, not by the pre-check
    res = check(_hard_history(), max_steps=20_000)
    assert res.unknown and not res.ok and not res.violation
    assert res.key == "k"
    assert "UNKNOWN" in res.explain()
    t0 = time.monotonic()
    res = check(_hard_history(), timeout_s=0.05)
    assert res.unknown and not res.ok
    assert time.monotonic() - t0 < 2.0


def test_violation_elsewhere_beats_unknown() -> None:
    hist = [*_hard_history(), put(1, "a", 0, 1, key="z"), get(2, "b", 2, 3, key="z")]
    res = check(hist, max_steps=20_000)
    assert res.violation and res.key == "z"


# --------------------------------------------------------------------------- input validation


def test_malformed_operations_are_rejected() -> None:
    with pytest.raises(ValueError):
        Operation(1, "k", "frobnicate", (), 0, 1, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Operation(1, "k", OpKind.PUT, (), 0, 1, None)
    with pytest.raises(ValueError):
        Operation(1, "k", OpKind.PUT, (None,), 0, 1, None)
    with pytest.raises(ValueError):
        Operation(1, "k", OpKind.PUT, ("a",), 2, 1, None)
    with pytest.raises(ValueError):
        Operation(1, "k", OpKind.PUT, ([1],), 0, 1, None)
    with pytest.raises(ValueError):
        check([cas(1, "a", "b", None, 0, 1)])  # completed CAS without a bool
    with pytest.raises(TypeError):
        check([("not", "an", "op")])  # type: ignore[list-item]
    assert Operation(1, "k", "put", ["a"], 0, 1, None).kind is OpKind.PUT  # type: ignore[arg-type]


# --------------------------------------------------------------------------- against the oracle

_VALUES = st.sampled_from(["a", "b", "c", None])


@st.composite
def small_histories(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for c in range(draw(st.integers(1, 7))):
        kind = draw(st.sampled_from(list(OpKind)))
        call = draw(st.integers(0, 8))
        timed_out = draw(st.integers(0, 3)) == 0
        ret = None if timed_out else call + draw(st.integers(0, 4))
        if kind is OpKind.PUT:
            args: tuple[Any, ...] = (draw(st.sampled_from(["a", "b", "c"])),)
            result: Any = None
        elif kind is OpKind.GET:
            args, result = (), draw(_VALUES)
        elif kind is OpKind.DELETE:
            args, result = (), draw(st.sampled_from([None, True, False]))
        else:
            args, result = (draw(_VALUES), draw(_VALUES)), draw(st.booleans())
        ops.append(Operation(c, "k", kind, args, float(call), None if ret is None else float(ret), result))
    return ops


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_histories())
def test_agrees_with_brute_force(history: list[Operation]) -> None:
    res = check(history)
    assert not res.unknown
    expected = brute_force(history)
    assert res.ok == expected, res.explain()
    with search_only():
        assert check(history).ok == expected
    if not res.ok:
        done = sum(not op.pending for op in history)
        assert sum(not op.pending for op in res.linearized) < done
        assert len(set(map(id, res.linearized))) == len(res.linearized)
        assert res.stuck


def test_oracle_sees_both_verdicts() -> None:
    """Guard against a vacuous oracle test: the generator yields both kinds of history."""
    rng = random.Random(7)
    verdicts = set()
    for _ in range(300):
        hist = []
        for c in range(rng.randint(1, 5)):
            call = rng.randint(0, 8)
            v = rng.choice(["a", "b"])
            hist.append(
                put(c, v, call, call + rng.randint(0, 3))
                if rng.random() < 0.5
                else get(c, rng.choice(["a", "b", None]), call, call + rng.randint(0, 3))
            )
        verdicts.add(brute_force(hist))
        assert check(hist).ok == brute_force(hist)
    assert verdicts == {True, False}


# --------------------------------------------------------------------------- simulated registers


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    clients=st.integers(1, 10),
    p_timeout=st.sampled_from([0.0, 0.0, 0.02, 0.1]),
    ticks=st.booleans(),
)
def test_simulated_linearizable_histories_pass(
    seed: int, clients: int, p_timeout: float, ticks: bool
) -> None:
    rng = random.Random(seed)
    hist = simulate(rng, clients=clients, ops=150, keys=("a", "b", "c"), p_timeout=p_timeout, ticks=ticks)
    res = check(hist, timeout_s=10)
    assert res.ok, res.explain()


def _corrupt_one_read(rng: random.Random, hist: list[Operation]) -> list[Operation] | None:
    reads = [i for i, op in enumerate(hist) if op.kind is OpKind.GET and not op.pending]
    if not reads:
        return None
    i = rng.choice(reads)
    target = hist[i]
    written = {op.args[0] for op in hist if op.key == target.key and op.kind is OpKind.PUT}
    written |= {op.args[1] for op in hist if op.key == target.key and op.kind is OpKind.CAS}
    others = sorted(v for v in written - {target.result} if v is not None)
    if not others:
        return None
    out = list(hist)
    out[i] = Operation(
        target.client, target.key, target.kind, (), target.call, target.ret, rng.choice(others)
    )
    return out


def test_single_corrupted_read_is_usually_caught() -> None:
    rng = random.Random(1234)
    tried = caught = 0
    for _ in range(150):
        hist = simulate(rng, clients=rng.randint(2, 8), ops=120, keys=("a", "b"), p_timeout=0.03)
        bad = _corrupt_one_read(rng, hist)
        if bad is None:
            continue
        res = check(bad, timeout_s=5)  # never crashes, and gives an answer
        assert not res.unknown, res.explain()
        with search_only():  # the search alone reaches the same verdict
            alone = check(bad, timeout_s=5)
        assert not alone.unknown and alone.ok == res.ok, alone.explain()
        tried += 1
        caught += res.violation
        if res.violation:
            assert res.key is not None and all(op.key == res.key for op in res.operations)
            assert res.stuck or res.witness
    assert tried >= 100
    assert caught / tried > 0.5, (caught, tried)


def test_reading_a_value_from_the_future_is_always_caught() -> None:
    rng = random.Random(99)
    n = 0
    for _ in range(60):
        hist = simulate(rng, clients=6, ops=120, p_timeout=0.03)
        reads = [op for op in hist if op.kind is OpKind.GET and not op.pending]
        for r in reads:
            assert r.ret is not None
            future = [op for op in hist if op.kind is OpKind.PUT and op.call > r.ret]
            if future:
                break
        else:
            continue
        bad = [op for op in hist if op is not r]
        bad.append(get(r.client, future[0].args[0], r.call, r.ret))
        res = check(bad, timeout_s=5)
        assert res.violation, res.explain()
        n += 1
    assert n > 40


def test_timing_2000_ops_one_key(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a benchmark assertion beyond "terminates": prints the time for the report."""
    rng = random.Random(2000)
    hist = simulate(rng, clients=8, ops=2000, p_timeout=0.0)
    hist_to = simulate(rng, clients=8, ops=2000, p_timeout=0.01)
    t0 = time.perf_counter()
    res = check(hist, timeout_s=30)
    t1 = time.perf_counter()
    res_to = check(hist_to, timeout_s=30)
    t2 = time.perf_counter()
    assert res.ok and res_to.ok, (res.explain(), res_to.explain())
    with capsys.disabled():
        print(
            f"\nlincheck: 2000 ops/8 clients/1 key: {t1 - t0:.3f}s ({res.steps} steps); "
            f"with 1% timeouts: {t2 - t1:.3f}s ({res_to.steps} steps)"
        )


# --------------------------------------------------------------------------- recorder


def test_recorder_builds_a_checkable_history() -> None:
    ticks = iter(range(100))
    rec = HistoryRecorder(clock=lambda: float(next(ticks)))
    a = rec.invoke(1, "k", "put", ("a",))
    b = rec.invoke(2, "k", OpKind.GET)
    rec.complete(a)
    rec.complete(b, "a")
    c = rec.invoke(3, "k", "cas", ("a", "b"))
    rec.timeout(c)
    d = rec.invoke(3, "k", "put", (1,))
    rec.discard(d)  # e.g. INVALID_ARGUMENT: never happened
    e = rec.invoke(4, "k", "get")  # still in flight: pending
    assert len(rec) == 4
    hist = rec.history()
    assert [op.pending for op in hist] == [False, False, True, True]
    assert hist[2].timed_out and hist[3].ret is None
    assert rec.check().ok
    with pytest.raises(ValueError):
        rec.complete(a)
    with pytest.raises(ValueError):
        rec.timeout(d)
    with pytest.raises(ValueError):
        rec.complete(rec.invoke(1, "k", "cas", ("a", "b")), "not a bool")
    with pytest.raises(ValueError):
        rec.invoke(1, "k", "put", ())
    del e


def test_recorder_breaks_clock_ties_by_recording_order() -> None:
    rec = HistoryRecorder(clock=lambda: 5.0)  # a frozen simulator clock
    rec.complete(rec.invoke(1, "k", "put", ("a",)))
    rec.complete(rec.invoke(2, "k", "get"), None)  # started after the put finished
    stamps = [t for op in rec.history() for t in (op.call, op.ret)]
    assert stamps == sorted(set(stamps))  # type: ignore[type-var]
    assert rec.check().violation


def test_recorder_from_threads_around_a_real_register() -> None:
    rec = HistoryRecorder()
    lock = threading.Lock()
    store: dict[str, str] = {}

    def client(c: int) -> None:
        rng = random.Random(c)
        for i in range(150):
            key = rng.choice("xy")
            kind = rng.choice(["put", "get", "cas"])
            if kind == "put":
                op = rec.invoke(c, key, kind, (f"{c}.{i}",))
                with lock:
                    store[key] = f"{c}.{i}"
                rec.complete(op)
            elif kind == "get":
                op = rec.invoke(c, key, kind)
                with lock:
                    val = store.get(key)
                rec.complete(op, val)
            else:
                with lock:
                    exp = store.get(key)
                op = rec.invoke(c, key, kind, (exp, f"{c}.{i}c"))
                with lock:
                    hit = store.get(key) == exp
                    if hit:
                        store[key] = f"{c}.{i}c"
                rec.complete(op, hit)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    res = rec.check(timeout_s=10)
    assert res.ok, res.explain()
    assert res.keys == 2


async def test_recorder_from_trio_tasks() -> None:
    rec = HistoryRecorder(clock=trio.current_time)
    store: dict[str, int] = {}

    async def client(c: int) -> None:
        for i in range(30):
            if i % 3:
                op = rec.invoke(c, "k", "get")
                await trio.sleep(0.001 * (c % 3))
                val = store.get("k")
                await trio.sleep(0.001)
                rec.complete(op, val)
            else:
                op = rec.invoke(c, "k", "put", (c * 100 + i,))
                await trio.sleep(0.001)
                store["k"] = c * 100 + i
                if c == 0 and i == 3:
                    rec.timeout(op)  # the reply got lost
                    continue
                await trio.sleep(0.001 * (c % 2))
                rec.complete(op)

    async with trio.open_nursery() as nursery:
        for c in range(4):
            nursery.start_soon(client, c)
    res = rec.check()
    assert res.ok, res.explain()
