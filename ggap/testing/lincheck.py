"""Linearizability checker for per-key register histories (put, get, CAS, delete).

Why: the deterministic Raft simulator and the real-process chaos tests both need to prove that
what clients observed could have come from one atomic register per key. The check is the
Wing-Gong / Lowe search with a memo of (linearized set, model state), split per key because a
history is linearizable iff each key's sub-history is (P-compositionality).

Recording rules (what goes into a history):

* Every key starts missing. Values are compared with ``==`` and must be hashable; ``None``
  means "missing" and is never a value.
* ``put(key, v)``: ``args=(v,)``, result ignored.
* ``get(key)``: ``args=()``, result is the value or ``None`` when the key was missing.
* ``cas(key, expected, new)``: ``args=(expected, new)``; ``expected=None`` means "key must be
  missing", ``new=None`` deletes. Result is ``succeeded: bool``.
* ``delete(key)``: ``args=()``. Result ``None`` (not checked) or a ``bool`` saying whether a
  live key was deleted (the API's ``DeleteResponse.deleted``), which is then checked.
* An operation whose outcome the client never learned (timeout, connection lost, UNAVAILABLE
  that may be post-commit) has ``ret=None`` or ``timed_out=True``: it may have taken effect at
  any moment after ``call`` or never, and its result is not checked.
* An operation that definitely did NOT happen (an error the server guarantees is raised before
  anything is committed, e.g. INVALID_ARGUMENT or RESOURCE_EXHAUSTED) must be left out of the
  history; ``HistoryRecorder.discard`` does that. Recording it as completed would make the
  checker demand its effect; recording it as timed out is safe but slows the search.

Real-time order: op A precedes op B iff ``A.ret < B.call``. Equal times count as concurrent,
which is the safe reading of a coarse clock (simulator ticks). ``HistoryRecorder`` makes its
stamps strictly increasing in recording order, which is itself a real-time order.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CheckResult", "HistoryRecorder", "OpKind", "Operation", "check"]


class OpKind(enum.StrEnum):
    """The four register operations the model knows."""

    PUT = "put"
    GET = "get"
    CAS = "cas"
    DELETE = "delete"


_ARITY = {OpKind.PUT: 1, OpKind.GET: 0, OpKind.CAS: 2, OpKind.DELETE: 0}
# Integer codes used inside the search loop (faster than enum comparisons).
_GET, _PUT, _CAS, _DEL = 0, 1, 2, 3
_CODE = {OpKind.GET: _GET, OpKind.PUT: _PUT, OpKind.CAS: _CAS, OpKind.DELETE: _DEL}


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key; see the module docstring for args and results."""

    client: int
    key: str
    kind: OpKind
    args: tuple[Any, ...]
    call: float
    ret: float | None
    result: Any = None
    timed_out: bool = False

    def __post_init__(self) -> None:
        # Normalise early so a malformed op fails where it was made, not deep in the search.
        try:
            kind = OpKind(self.kind)
        except ValueError:
            raise ValueError(f"unknown operation kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        args = tuple(self.args)
        object.__setattr__(self, "args", args)
        if len(args) != _ARITY[kind]:
            raise ValueError(f"{kind} takes {_ARITY[kind]} args, got {args!r}")
        if kind is OpKind.PUT and args[0] is None:
            raise ValueError("put of None: use delete (None means missing)")
        for v in args:
            _require_hashable(v)
        if not math.isfinite(self.call):
            raise ValueError(f"call time must be finite, got {self.call!r}")
        if self.ret is not None and not self.ret >= self.call:
            raise ValueError(f"ret {self.ret!r} before call {self.call!r}")

    @property
    def pending(self) -> bool:
        """True when the client never learned the outcome (the op may or may not have happened)."""
        return self.ret is None or self.timed_out

    def describe(self) -> str:
        """A one-line human rendering, used in failure explanations."""
        args = ", ".join(repr(a) for a in self.args)
        end = "?" if self.pending else f"{self.ret:g}"
        res = "timeout" if self.pending else repr(self.result)
        return f"c{self.client} {self.kind}({args}) -> {res}  [{self.call:g}, {end}]"


def _require_hashable(v: Any) -> None:
    try:
        hash(v)
    except TypeError:
        raise ValueError(f"values must be hashable, got {type(v).__name__}") from None


@dataclass(frozen=True)
class CheckResult:
    """Verdict of `check`.

    ``ok`` is True only when every key was proven linearizable. ``unknown`` means the search
    budget ran out before a verdict (``ok`` is then False); callers must report it rather than
    treat it as pass or fail. On a violation (or for the first undecided key) ``key`` names the
    key, ``operations`` are that key's operations by call time, ``linearized`` is the longest
    linearizable prefix the search found (in linearization order), ``state`` the register value
    after it (None = missing) and ``stuck`` the operations that could have come next but none
    of which fits. ``witness``, when set, is a small self-contained proof found by the cheap
    pre-check: a read, and for each write that could have produced the value read, a write that
    surely happened in between (or no such write at all: the value was never written in time).
    """

    ok: bool
    unknown: bool = False
    key: str | None = None
    operations: tuple[Operation, ...] = ()
    linearized: tuple[Operation, ...] = ()
    state: Any = None
    stuck: tuple[Operation, ...] = ()
    witness: tuple[Operation, ...] = ()
    keys: int = 0
    steps: int = 0
    elapsed_s: float = 0.0

    @property
    def violation(self) -> bool:
        """A definite, proven non-linearizable history."""
        return not self.ok and not self.unknown

    def explain(self, context: int = 8) -> str:
        """Readable summary for a test failure: the tail of the prefix and the stuck operations."""
        if self.ok:
            return f"linearizable ({self.keys} keys, {self.steps} steps, {self.elapsed_s:.3f}s)"
        what = "UNKNOWN (search budget exhausted)" if self.unknown else "NOT linearizable"
        lines = [
            f"{what}: key {self.key!r}, {len(self.operations)} ops, longest linearizable prefix "
            f"{len(self.linearized)} ops, then the value is {self.state!r}"
        ]
        if len(self.linearized) > context:
            lines.append(f"  ... {len(self.linearized) - context} earlier ops")
        lines += [
            f"  {i:5d}. {op.describe()}"
            for i, op in enumerate(self.linearized)
            if i >= len(self.linearized) - context
        ]
        if self.stuck:
            lines.append("  none of these can come next:")
            lines += [f"         {op.describe()}" for op in self.stuck]
        if self.witness:
            lines.append("  proof: this read; each write it could read from, then a write surely in between:")
            lines += [f"         {op.describe()}" for op in self.witness]
        return "\n".join(lines)


class _Outcome(enum.Enum):
    OK = 1
    VIOLATION = 2
    UNKNOWN = 3


@dataclass
class _KeyReport:
    outcome: _Outcome
    ops: list[Operation]
    prefix: list[int]
    state: Any
    stuck: list[int]
    steps: int
    witness: tuple[Operation, ...] = ()


class _Budget:
    """Shared wall-clock deadline plus a per-key step limit; checked every few thousand steps."""

    def __init__(self, deadline: float | None, max_steps: int | None) -> None:
        self.deadline = deadline
        self.max_steps = max_steps

    def capped(self, steps: int) -> _Budget:
        """The same deadline with at most `steps` search steps."""
        return _Budget(self.deadline, steps if self.max_steps is None else min(steps, self.max_steps))

    def expired(self, steps: int) -> bool:
        if self.max_steps is not None and steps >= self.max_steps:
            return True
        return self.deadline is not None and time.monotonic() >= self.deadline


def check(
    history: Iterable[Operation],
    *,
    timeout_s: float | None = None,
    max_steps: int | None = None,
) -> CheckResult:
    """Decide whether `history` is linearizable as one register per key.

    `timeout_s` bounds total wall time; `max_steps` bounds the search per key and is the
    deterministic budget to use in seeded simulations. Either running out gives
    ``unknown=True`` unless another key already shows a definite violation.
    """
    started = time.monotonic()
    budget = _Budget(None if timeout_s is None else started + timeout_s, max_steps)
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        if not isinstance(op, Operation):
            raise TypeError(f"expected Operation, got {type(op).__name__}")
        _validate_result(op)
        by_key.setdefault(op.key, []).append(op)

    total_steps = 0
    first_unknown: tuple[str, _KeyReport] | None = None
    for key in sorted(by_key):
        if first_unknown is not None and budget.deadline is not None and time.monotonic() >= budget.deadline:
            break
        ops = by_key[key]
        witness = _quick_violation(ops)
        if witness is None:
            report = _check_key(ops, budget)
        else:
            # Already proven; a short search only looks for a linearizable prefix to show.
            report = _check_key(ops, budget.capped(_EXPLAIN_STEPS))
            if report.outcome is _Outcome.OK:
                raise AssertionError(f"lincheck bug: search and pre-check disagree on key {key!r}")
            report.outcome = _Outcome.VIOLATION
            report.witness = witness
        total_steps += report.steps
        if report.outcome is _Outcome.VIOLATION:
            return _failure(key, report, False, len(by_key), total_steps, started)
        if report.outcome is _Outcome.UNKNOWN and first_unknown is None:
            first_unknown = (key, report)
    if first_unknown is not None:
        key, report = first_unknown
        return _failure(key, report, True, len(by_key), total_steps, started)
    return CheckResult(ok=True, keys=len(by_key), steps=total_steps, elapsed_s=time.monotonic() - started)


def _failure(
    key: str, report: _KeyReport, unknown: bool, keys: int, steps: int, started: float
) -> CheckResult:
    ops = report.ops
    return CheckResult(
        ok=False,
        unknown=unknown,
        key=key,
        operations=tuple(sorted(ops, key=lambda o: o.call)),
        linearized=tuple(ops[i] for i in report.prefix),
        state=report.state,
        stuck=tuple(ops[i] for i in report.stuck),
        witness=report.witness,
        keys=keys,
        steps=steps,
        elapsed_s=time.monotonic() - started,
    )


_EXPLAIN_STEPS = 50_000


def _quick_violation(ops: list[Operation]) -> tuple[Operation, ...] | None:
    """Cheap sound pre-check for the common bugs (stale or invented reads), in near-linear time.

    Why: the search must exhaust every configuration before the bad read to prove a violation,
    which with many timed-out ops may not finish; these proofs need no search. A completed get
    (or successful CAS) that observed value v is impossible if every write of v either started
    after the observer returned or was followed by a write of another value that surely took
    effect (completed) and lies entirely between them in real time.
    """
    writers: dict[Any, list[Operation]] = {}
    definite: list[Operation] = []  # writes that surely took effect
    for op in ops:
        if op.kind is OpKind.GET or (op.kind is OpKind.CAS and not op.pending and op.result is False):
            continue
        writers.setdefault(_written(op), []).append(op)
        if not op.pending:
            definite.append(op)
    definite.sort(key=lambda o: o.call)
    calls = [o.call for o in definite]

    def overwritten(after: float, before: float, value: Any) -> Operation | None:
        """A sure write of another value lying strictly inside (after, before), if any."""
        for j in range(bisect.bisect_right(calls, after), len(definite)):
            over = definite[j]
            if over.call >= before:
                return None
            if over.ret is not None and over.ret < before and _written(over) != value:
                return over
        return None

    for obs in ops:
        if obs.pending or not (obs.kind is OpKind.GET or (obs.kind is OpKind.CAS and obs.result is True)):
            continue
        assert obs.ret is not None
        value = obs.result if obs.kind is OpKind.GET else obs.args[0]
        sources = [w for w in writers.get(value, ()) if w is not obs and w.call <= obs.ret]
        proof: list[Operation] = [obs]
        if value is None:  # the initial state is a source too
            over = overwritten(-math.inf, obs.call, value)
            if over is None:
                continue
            proof.append(over)
        for src in sources:
            over = None if src.ret is None or src.timed_out else overwritten(src.ret, obs.call, value)
            if over is None:
                break
            proof += [src, over]
        else:
            return tuple(proof)
    return None


def _validate_result(op: Operation) -> None:
    if op.pending:
        return
    if op.kind is OpKind.CAS and not isinstance(op.result, bool):
        raise ValueError(f"completed cas needs a bool result: {op.describe()}")
    if op.kind is OpKind.DELETE and not (op.result is None or isinstance(op.result, bool)):
        raise ValueError(f"delete result must be None or bool: {op.describe()}")
    if op.kind is OpKind.GET:
        _require_hashable(op.result)


def _written(op: Operation) -> Any:
    """The value a write leaves behind when it takes effect (None = missing)."""
    if op.kind is OpKind.PUT:
        return op.args[0]
    if op.kind is OpKind.CAS:
        return op.args[1]
    return None


def _prune(ops: list[Operation]) -> list[Operation]:
    """Drop timed-out operations that can never be needed to explain what clients saw.

    Sound in both directions because a timed-out op may always be "never happened": a pending
    get has no effect; a pending write of a value nobody observes can be removed from any valid
    linearization unless some completed op observes *inequality* (a failed CAS, or a checked
    delete result), since then only reads of the written value or CASes expecting it could
    tell it was there. Pruning these keeps the search from branching on them.
    """
    ops = [op for op in ops if not (op.pending and op.kind is OpKind.GET)]
    negative = any(
        not op.pending
        and (
            (op.kind is OpKind.CAS and op.result is False)
            or (op.kind is OpKind.DELETE and op.result is not None)
        )
        for op in ops
    )
    if negative:
        return ops
    while True:
        observed = {op.result for op in ops if op.kind is OpKind.GET}
        observed.update(op.args[0] for op in ops if op.kind is OpKind.CAS)
        kept = [op for op in ops if not (op.pending and _written(op) not in observed)]
        if len(kept) == len(ops):
            return ops
        ops = kept


# Search modes: what `_Search.run` does next, and how it ends.
_FRESH, _SCAN, _TIMED_OUT, _BACK, _FOUND, _EXHAUSTED = 0, 1, 2, 3, 4, 5
# Flags on stack entries.
_FORCED, _DEAD_TRIED = 1, 2
# Value ids inside the search: 0 is "missing", 1.. are values some op reads or compares
# against, and _DEAD is any value no remaining op can tell apart from another.
_DEAD = -1


def _step(k: int, a1: int, a2: int, res: Any, chk: bool, state: int) -> tuple[bool, int]:
    """Apply one op to the register (value ids): (result consistent?, next state)."""
    if k == _GET:
        return state == res, state
    if k == _PUT:
        return True, a1
    if k == _CAS:
        hit = state == a1
        return (not chk or hit == res), (a2 if hit else state)
    return (not chk or res == (state != 0)), 0


def _check_key(all_ops: list[Operation], budget: _Budget) -> _KeyReport:
    """Depth-first search over linearization points for one key.

    Completed ops live in a doubly linked list of call/return events sorted by time; an op may
    be linearized next only if its call precedes the first return still in the list (the
    minimal-call rule). Each configuration (linearized completed ops, state) is explored once.
    These reductions keep it fast; each is exact (never changes the verdict):

    * values are merged into one "dead" value once no remaining op reads or compares against
      them: the model can no longer tell them apart;
    * a completed op whose checked result proves it had no effect (a get, a failed CAS, a
      delete that found nothing, a successful CAS to the same value) and fits the current
      state is linearized at once with no alternatives: it could be moved to the front of any
      valid continuation;
    * timed-out ops are grouped into classes of identical effect; members are interchangeable,
      so only the earliest-called unused one is tried, only when it changes the state, and at
      most one unconditional write of a dead value is tried per step;
    * using more timed-out ops only removes options, so the memo also skips a configuration
      that differs from an explored one only by using more of them (subsumption);
    * the search succeeds once every completed op is placed: the rest never happened.

    The steps are `_Search`'s methods: encode the ops, link their events, then run.
    """
    ops = _prune(all_ops)
    orig = {id(op): i for i, op in enumerate(all_ops)}
    back = [orig[id(op)] for op in ops]
    search = _Search(ops, budget)
    outcome = search.run()
    return _report(outcome, all_ops, ops, back, search.best, search.steps)


class _Search:
    """One key's search: the encoded ops, the event list, and the stack of choices.

    `run` is a loop over modes, one step per turn: _FRESH (a new configuration), _SCAN (try
    the completed op at `entry`), _TIMED_OUT (try a timed-out op of class `c` or later) and
    _BACK (undo the last choice). Each mode's method does one step and returns the next mode.
    """

    __slots__ = (
        "arg1",
        "arg2",
        "best",
        "best_len",
        "bit",
        "bound",
        "budget",
        "c",
        "cache",
        "checked",
        "dead_tried",
        "entry",
        "head",
        "kind",
        "lin",
        "members",
        "n2",
        "noeffect",
        "ntime",
        "nxt",
        "observers",
        "observes",
        "prv",
        "ptr",
        "remaining",
        "result",
        "state",
        "steps",
        "stk_bound",
        "stk_flag",
        "stk_node",
        "stk_state",
        "used",
    )

    def __init__(self, ops: list[Operation], budget: _Budget) -> None:
        self.budget = budget
        self._encode(ops)
        self._link_events(ops)
        self.state = 0
        self.lin = 0  # bitmask of linearized completed ops
        self.used = 0  # bitmask of timed-out ops taken into the linearization
        # (completed set, state) -> the `used` sets explored with it. Using more timed-out ops
        # only removes options, so a configuration whose `used` is a superset of one already
        # explored (failed, or being explored above us) needs no search of its own.
        self.cache: dict[tuple[int, int], list[int]] = {}
        # Stack of choices: call node (completed op) or -(class + 1) (timed-out op), with the
        # state and scan bound before it and _FORCED / _DEAD_TRIED flags.
        self.stk_node: list[int] = []
        self.stk_state: list[int] = []
        self.stk_bound: list[float] = []
        self.stk_flag: list[int] = []
        # The deepest stack seen: (its ops, the ops that could have come next).
        self.best: tuple[list[int], list[int]] = ([], [])
        self.best_len = -1
        self.steps = 0
        self.entry = self.head  # the event `_SCAN` looks at
        self.bound = 0.0  # time of the first return still in the list, for timed-out ops
        self.c = 0  # the timed-out class `_TIMED_OUT` tries next
        self.dead_tried = False  # this step already tried a timed-out write of a dead value

    def _encode(self, ops: list[Operation]) -> None:
        """Values become ids (see _DEAD) and each op a row of parallel arrays."""
        n = len(ops)
        ids: dict[Any, int] = {}
        for op in ops:
            if op.kind is OpKind.GET and op.result is not None:
                ids.setdefault(op.result, len(ids) + 1)
            elif op.kind is OpKind.CAS and op.args[0] is not None:
                ids.setdefault(op.args[0], len(ids) + 1)

        def vid(v: Any) -> int:
            return 0 if v is None else ids.get(v, _DEAD)

        kind: list[int] = []
        arg1: list[int] = []
        arg2: list[int] = []
        result: list[Any] = []  # value id for gets, bool (or None) for CAS and delete
        observes: list[int] = []  # the value id a get or CAS compares against (0: none)
        checked: list[bool] = []
        for op in ops:
            k = _CODE[op.kind]
            kind.append(k)
            arg1.append(vid(op.args[0]) if k in (_PUT, _CAS) else 0)
            arg2.append(vid(op.args[1]) if k == _CAS else 0)
            result.append(vid(op.result) if k == _GET and not op.pending else op.result)
            observes.append(
                max(0, result[-1] if k == _GET and not op.pending else arg1[-1] if k == _CAS else 0)
            )
            # Results are checked for completed ops, except deletes recorded without a result.
            checked.append(not op.pending and not (k == _DEL and op.result is None))
        self.noeffect = [
            checked[i]
            and (
                kind[i] == _GET
                or (kind[i] == _CAS and (result[i] is False or arg1[i] == arg2[i]))
                or (kind[i] == _DEL and result[i] is False)
            )
            for i in range(n)
        ]
        observers = [0] * (len(ids) + 1)  # per value id: ops not yet linearized that observe it
        for o in observes:
            observers[o] += 1
        observers[0] = 1 << 62  # "missing" is never merged away
        self.kind, self.arg1, self.arg2, self.result = kind, arg1, arg2, result
        self.observes, self.checked, self.observers = observes, checked, observers
        self.bit = [1 << i for i in range(n)]

    def _link_events(self, ops: list[Operation]) -> None:
        """Completed ops' calls and returns into one linked list sorted by time; timed-out ops
        into classes of identical effect, each in call order."""
        # Node ids: 2i = call of op i, 2i+1 = return of completed op i; then two sentinels.
        n2 = 2 * len(ops)
        head, tail = n2, n2 + 1
        nxt = [0] * (n2 + 2)
        prv = [0] * (n2 + 2)
        ntime = [math.inf] * (n2 + 2)
        events: list[tuple[float, int, int]] = []
        classes: dict[tuple[int, int, int], list[int]] = {}
        for i, op in enumerate(ops):
            ntime[2 * i] = op.call
            if op.pending:
                classes.setdefault((self.kind[i], self.arg1[i], self.arg2[i]), []).append(i)
            else:
                assert op.ret is not None
                ntime[2 * i + 1] = op.ret
                # At equal times calls sort before returns: ties are treated as concurrent.
                events.append((op.call, 0, 2 * i))
                events.append((op.ret, 1, 2 * i + 1))
        events.sort()
        _link(nxt, prv, [head, *(e[2] for e in events), tail])
        self.n2, self.head, self.nxt, self.prv, self.ntime = n2, head, nxt, prv, ntime
        self.members = [sorted(m, key=lambda i: ntime[2 * i]) for m in classes.values()]
        self.ptr = [0] * len(self.members)  # per class: how many members are in use
        self.remaining = len(events) // 2  # completed ops not yet linearized

    def run(self) -> _Outcome:
        """Search until every completed op is placed (OK), every choice failed (VIOLATION) or
        the budget ran out (UNKNOWN); `steps` counts the turns."""
        if self.remaining == 0:
            return _Outcome.OK
        modes = (self._fresh, self._scan, self._timed_out, self._back)
        budget = self.budget
        mode = _FRESH
        steps = 0
        while mode < _FOUND:
            steps += 1
            if not steps & 0xFFF and budget.expired(steps):
                self.steps = steps
                return _Outcome.UNKNOWN
            mode = modes[mode]()
        self.steps = steps
        return _Outcome.OK if mode == _FOUND else _Outcome.VIOLATION

    def _fresh(self) -> int:
        """A new configuration: take a forced op if there is one, else scan normally."""
        nxt, n2, state = self.nxt, self.n2, self.state
        kind, arg1, arg2, result, noeffect = self.kind, self.arg1, self.arg2, self.result, self.noeffect
        node = nxt[self.head]
        while node < n2 and not node & 1:
            i = node >> 1
            if noeffect[i] and _step(kind[i], arg1[i], arg2[i], result[i], True, state)[0]:
                return self._take(node, state, True)
            node = nxt[node]
        self.entry = nxt[self.head]
        return _SCAN

    def _scan(self) -> int:
        """Try the completed op at `entry` next; at the first return, the timed-out ops."""
        entry = self.entry
        if entry < self.n2 and not entry & 1:
            i = entry >> 1
            ok, new = _step(
                self.kind[i], self.arg1[i], self.arg2[i], self.result[i], self.checked[i], self.state
            )
            if not ok:
                self.entry = self.nxt[entry]
                return _SCAN
            return self._take(entry, new, False)
        # Reached the first return: now try timed-out ops called by then.
        self.bound = self.ntime[entry]
        self.c = 0
        self.dead_tried = False
        return _TIMED_OUT

    def _take(self, node: int, new: int, forced: bool) -> int:
        """Linearize the completed op whose call is `node`, leaving state `new`, unless that
        configuration was explored already."""
        i = node >> 1
        observers = self.observers
        o = self.observes[i]
        observers[o] -= 1
        if new > 0 and not observers[new]:
            new = _DEAD
        nlin = self.lin | self.bit[i]
        if _seen(self.cache, (nlin, new), self.used):
            observers[o] += 1
            if forced:
                return _BACK
            self.entry = self.nxt[node]
            return _SCAN
        self._push(node, _FORCED if forced else 0)
        self.lin = nlin
        self.state = new
        _unlink(self.nxt, self.prv, node)
        _unlink(self.nxt, self.prv, node + 1)
        self.remaining -= 1
        return _FOUND if self.remaining == 0 else _FRESH

    def _timed_out(self) -> int:
        """Take the earliest unused member of the next class (from `c`) that was called by
        `bound` and changes the state; none left: back up."""
        kind, arg1, arg2, observes, observers = self.kind, self.arg1, self.arg2, self.observes, self.observers
        members, ptr, ntime, bit = self.members, self.ptr, self.ntime, self.bit
        state, bound, lin, used, dead_tried = self.state, self.bound, self.lin, self.used, self.dead_tried
        c = self.c
        nclasses = len(members)
        while c < nclasses:
            p = ptr[c]
            group = members[c]
            if p < len(group):
                i = group[p]
                if ntime[2 * i] <= bound:
                    new = _step(kind[i], arg1[i], arg2[i], None, False, state)[1]
                    if new != state:
                        o = observes[i]
                        observers[o] -= 1
                        if new > 0 and not observers[new]:
                            new = _DEAD
                        dead_put = kind[i] == _PUT and new == _DEAD
                        if (
                            new != state
                            and not (dead_put and dead_tried)
                            and not _seen(self.cache, (lin, new), used | bit[i])
                        ):
                            break
                        observers[o] += 1
            c += 1
        else:
            self.c = c
            return _BACK
        self.c = c
        self.dead_tried = dead_tried or dead_put
        self._push(-(c + 1), _DEAD_TRIED if self.dead_tried else 0)
        ptr[c] += 1
        self.used = used | bit[i]
        self.state = new
        return _FRESH

    def _back(self) -> int:
        """Every choice here failed: undo the last one and go on where it was made."""
        stk_node = self.stk_node
        if len(stk_node) > self.best_len:
            self.best_len = len(stk_node)
            self.best = (
                _prefix(stk_node, self.members),
                _candidates(self.nxt, self.ntime, self.n2, self.members, self.ptr),
            )
        if not stk_node:
            return _EXHAUSTED
        node = stk_node.pop()
        self.state = self.stk_state.pop()
        self.bound = self.stk_bound.pop()
        flag = self.stk_flag.pop()
        if node >= 0:
            i = node >> 1
            self.lin ^= self.bit[i]
            self.observers[self.observes[i]] += 1
            self.remaining += 1
            # Relink in reverse order of unlinking (dancing links).
            _relink(self.nxt, self.prv, node + 1)
            _relink(self.nxt, self.prv, node)
            if flag & _FORCED:
                return _BACK
            self.entry = self.nxt[node]
            return _SCAN
        c = -node - 1
        self.ptr[c] -= 1
        i = self.members[c][self.ptr[c]]
        self.used ^= self.bit[i]
        self.observers[self.observes[i]] += 1
        self.dead_tried = bool(flag & _DEAD_TRIED)
        self.c = c + 1
        return _TIMED_OUT

    def _push(self, choice: int, flag: int) -> None:
        """Record a choice with the state and scan bound before it."""
        self.stk_node.append(choice)
        self.stk_state.append(self.state)
        self.stk_bound.append(self.bound)
        self.stk_flag.append(flag)


def _unlink(nxt: list[int], prv: list[int], node: int) -> None:
    nxt[prv[node]] = nxt[node]
    prv[nxt[node]] = prv[node]


def _relink(nxt: list[int], prv: list[int], node: int) -> None:
    nxt[prv[node]] = node
    prv[nxt[node]] = node


def _seen(cache: dict[tuple[int, int], list[int]], key: tuple[int, int], used: int) -> bool:
    """Memo lookup with subsumption; records the configuration when it is new."""
    explored = cache.get(key)
    if explored is None:
        cache[key] = [used]
        return False
    unused = ~used
    for u in explored:
        if not u & unused:  # u is a subset of used
            return True
    explored.append(used)
    return False


def _link(nxt: list[int], prv: list[int], chain: list[int]) -> None:
    for a, b in itertools.pairwise(chain):
        nxt[a] = b
        prv[b] = a


def _report(
    outcome: _Outcome,
    all_ops: list[Operation],
    ops: list[Operation],
    back: list[int],
    best: tuple[list[int], list[int]],
    steps: int,
) -> _KeyReport:
    """Translate search indices back to the recorded operations, with the real state."""
    if outcome is _Outcome.OK:
        return _KeyReport(outcome, all_ops, [], None, [], steps)
    state: Any = None
    for i in best[0]:
        op = ops[i]
        if op.kind is OpKind.PUT:
            state = op.args[0]
        elif op.kind is OpKind.DELETE:
            state = None
        elif op.kind is OpKind.CAS and state == op.args[0]:
            state = op.args[1]
    return _KeyReport(outcome, all_ops, [back[i] for i in best[0]], state, [back[i] for i in best[1]], steps)


def _prefix(stk_node: list[int], members: list[list[int]]) -> list[int]:
    """The ops on the search stack, in order (the k-th use of a class is its k-th member)."""
    uses = [0] * len(members)
    out = []
    for node in stk_node:
        if node >= 0:
            out.append(node >> 1)
        else:
            c = -node - 1
            out.append(members[c][uses[c]])
            uses[c] += 1
    return out


def _candidates(
    nxt: list[int], ntime: list[float], n2: int, members: list[list[int]], ptr: list[int]
) -> list[int]:
    """Ops that may come next in the current configuration (for the failure explanation)."""
    out = []
    node = nxt[n2]  # head of the event list
    while node < n2 and not node & 1:
        out.append(node >> 1)
        node = nxt[node]
    bound = ntime[node]
    for group, p in zip(members, ptr, strict=True):
        if p < len(group) and ntime[2 * group[p]] <= bound:
            out.append(group[p])
    return out


class HistoryRecorder:
    """Collects a history from concurrent clients (threads or trio tasks).

    Methods are plain and non-blocking (a lock held for a few microseconds), so trio code can
    call them directly. Call `invoke` just before sending a request and `complete` right after
    the response arrives; `timeout` when the outcome is unknown; `discard` when the server
    guarantees the request had no effect. Ops never finished count as timed out. Stamps come
    from `clock` and are made strictly increasing in recording order.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = -math.inf
        self._ops: list[Operation | None] = []
        self._open: set[int] = set()

    def _stamp(self) -> float:
        t = float(self._clock())
        if t <= self._last:
            t = math.nextafter(self._last, math.inf)
        self._last = t
        return t

    def invoke(self, client: int, key: str, kind: OpKind | str, args: Sequence[Any] = ()) -> int:
        """Record the start of an operation; returns the id to finish it with."""
        with self._lock:
            op = Operation(client, key, OpKind(kind), tuple(args), self._stamp(), None)
            self._ops.append(op)
            op_id = len(self._ops) - 1
            self._open.add(op_id)
            return op_id

    def _finish(self, op_id: int) -> Operation:
        if op_id not in self._open:
            raise ValueError(f"operation {op_id} is unknown or already finished")
        self._open.discard(op_id)
        op = self._ops[op_id]
        assert op is not None
        return op

    def complete(self, op_id: int, result: Any = None) -> None:
        """Record a definite outcome (get value or None, cas bool, delete bool or None)."""
        with self._lock:
            op = self._finish(op_id)
            done = Operation(op.client, op.key, op.kind, op.args, op.call, self._stamp(), result)
            try:
                _validate_result(done)
            except ValueError:
                self._open.add(op_id)
                raise
            self._ops[op_id] = done

    def timeout(self, op_id: int) -> None:
        """Record that the client will never learn the outcome; the op may or may not apply."""
        with self._lock:
            op = self._finish(op_id)
            self._ops[op_id] = Operation(
                op.client, op.key, op.kind, op.args, op.call, None, None, timed_out=True
            )

    def discard(self, op_id: int) -> None:
        """Drop an op the server guarantees never took effect (e.g. INVALID_ARGUMENT)."""
        with self._lock:
            self._finish(op_id)
            self._ops[op_id] = None

    def history(self) -> list[Operation]:
        """A snapshot of the recorded operations; ones still in flight appear as pending."""
        with self._lock:
            return [op for op in self._ops if op is not None]

    def __len__(self) -> int:
        with self._lock:
            return sum(op is not None for op in self._ops)

    def check(self, *, timeout_s: float | None = None, max_steps: int | None = None) -> CheckResult:
        """Shortcut for `check(self.history(), ...)`."""
        return check(self.history(), timeout_s=timeout_s, max_steps=max_steps)
