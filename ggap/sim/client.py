"""Simulated clients: one request at a time, to a random node, with timeouts and retries.

Writes are proposed (a follower forwards to the leader) and acknowledged when the entry is
applied on the node they were sent to. A client first opens a session (an "open" write,
not part of the history); a write that times out is retried on another node with the same
session and sequence number, which the state machine applies once. When every attempt has
timed out, or the session was gone (expired or evicted) after an attempt that may have
been applied, the write is recorded with an unknown outcome, since it may still commit
later or have committed; the client then opens a new session. Reads use ReadIndex on the
chosen node, then read its local state once it has applied up to the read index.

Every completed operation goes into the history for the linearizability check, stamped with
simulated call/return times.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import attrs

from ggap.sim.kv import Command, Opened, Refused
from ggap.testing.lincheck import Operation, OpKind

if TYPE_CHECKING:
    from ggap.sim.simulator import Simulator


@attrs.define(slots=True)
class _Op:
    kind: str
    key: str
    args: tuple[object, ...]
    cmd: Command | None  # None for a get
    call: int
    attempts: int = 0
    maybe_applied: bool = False  # some attempt timed out: it may still commit
    last_node: int = 0
    recorded: bool = True  # False for a session's "open" (not a key-value operation)


class SimClient:
    def __init__(self, sim: Simulator, client_id: int, rng: random.Random, *, persistent: bool = False):
        self.sim = sim
        self.id = client_id
        self.rng = rng
        self.persistent = persistent  # the liveness checker: retries until the run's deadline
        self.req = 0
        self.op: _Op | None = None
        self._token = 0
        self.seen: dict[str, str | None] = {}
        self.completed = 0
        self.unknown = 0
        self.queue: list[str] = []  # persistent mode: keys still to read
        self.session = 0  # 0: none open
        self.first_seq = 0  # the session's first sequence number (lowest_unacked >= it)
        self.pending: tuple[str, str] | None = None  # the write waiting for a session
        self.reopened = 0
        kinds, weights = zip(*sim.cfg.op_mix, strict=True)
        self._kinds: tuple[str, ...] = kinds
        self._weights: tuple[float, ...] = weights

    @property
    def idle(self) -> bool:
        return self.op is None

    def start(self) -> None:
        self._schedule_next()

    def _schedule_next(self) -> None:
        sim = self.sim
        if self.persistent:
            if self.queue:
                self.issue("get", self.queue.pop(0))
            return
        if sim.clients_running:
            sim.schedule(sim.now + 1 + int(self.rng.expovariate(1.0 / sim.cfg.think_mean_ms)), self._begin)

    def _begin(self) -> None:
        if not self.sim.clients_running or self.op is not None:
            return
        kind = self.rng.choices(self._kinds, self._weights)[0]
        self.issue(kind, f"k{self.rng.randrange(self.sim.cfg.keys)}")

    def issue(self, kind: str, key: str) -> None:
        sim = self.sim
        if kind != "get" and self.session == 0:
            # A write needs a session: open one first (retried like a write; a retry may
            # open a second one, which then idles out or is evicted).
            self.pending = (kind, key)
            self.req += 1
            cfg = sim.cfg
            limits = f"{cfg.session_max}.{cfg.session_max_unacked}"
            self.op = _Op(
                "open", "", (), Command(self.id, self.req, "open", "", limits), sim.now, recorded=False
            )
            sim.trace(None, f"c{self.id} call open")
            self._attempt()
            return
        self.req += 1
        value = f"c{self.id}.{self.req}"
        # Results of writes before this one were all answered (one op at a time); keep a
        # few anyway now and then, so forgetting is exercised both ways.
        low = max(self.first_seq, self.req - self.rng.randint(0, 2))
        sid = self.session
        cmd: Command | None
        args: tuple[object, ...]
        if kind == "put":
            cmd, args = Command(self.id, self.req, "put", key, value, session=sid, low=low), (value,)
        elif kind == "cas":
            expected = self.rng.choice((None, self.seen.get(key), sim.last_acked.get(key)))
            cmd, args = Command(self.id, self.req, "cas", key, value, expected, sid, low), (expected, value)
        elif kind == "delete":
            cmd, args = Command(self.id, self.req, "delete", key, session=sid, low=low), ()
        else:
            cmd, args = None, ()
        self.op = _Op(kind, key, args, cmd, sim.now)
        sim.trace(None, f"c{self.id} call {kind} {key} {args}")
        self._attempt()

    def _attempt(self) -> None:
        sim, op = self.sim, self.op
        assert op is not None
        op.attempts += 1
        self._token += 1
        tok = self._token
        targets = sim.client_targets()
        ids = [i for i in targets if i != op.last_node] or list(targets)
        node = sim.nodes[self.rng.choice(ids)]
        op.last_node = node.id
        sim.schedule(sim.now + sim.cfg.request_timeout_ms, self._timeout, tok)
        if op.cmd is not None:
            node.submit_write(op.cmd, lambda r: self._done(tok, r), lambda why: self._error(tok, why))
        else:
            ctx = f"{self.id}.{self.req}.{op.attempts}".encode()
            node.submit_read(ctx, op.key, lambda r: self._done(tok, r), lambda why: self._error(tok, why))

    def _done(self, tok: int, result: object) -> None:
        if tok != self._token or self.op is None:
            return
        sim, op = self.sim, self.op
        self._token += 1
        if isinstance(result, Opened):
            self.session = result.session
            self.first_seq = self.req + 1
            sim.trace(None, f"c{self.id} opened session {result.session}")
            self.op = None
            pending, self.pending = self.pending, None
            if pending is not None:
                self.issue(*pending)
            return
        if isinstance(result, Refused):
            if not result.expired:
                sim.session_protocol_error(f"c{self.id} write {self.req}: {result.error}")
            # The session is gone: this attempt applied nothing, an earlier one may have.
            sim.trace(None, f"c{self.id} {op.kind} {op.key}: session {self.session} gone ({result.error})")
            self.session = 0
            self.reopened += 1
            self._give_up(op)
            return
        sim.record(
            Operation(self.id, op.key, OpKind(op.kind), op.args, float(op.call), float(sim.now), result),
            self.req,
        )
        if op.cmd is not None:
            sim.acked_writes.append((self.id, self.req, op.kind, op.key))
            if op.kind == "put" or (op.kind == "cas" and result is True):
                sim.last_acked[op.key] = op.cmd.value
                self.seen[op.key] = op.cmd.value
        else:
            self.seen[op.key] = result  # type: ignore[assignment]
        self.completed += 1
        sim.trace(None, f"c{self.id} ret {op.kind} {op.key} {op.args} -> {result!r}")
        self.op = None
        self._schedule_next()

    def _error(self, tok: int, why: str) -> None:
        if tok != self._token or self.op is None:
            return
        self._token += 1
        tok = self._token
        backoff = self.rng.randint(1, 3) * self.sim.cfg.tick_ms
        self.sim.schedule(self.sim.now + backoff, self._retry, tok)

    def _retry(self, tok: int) -> None:
        if tok != self._token:
            return
        self._next_attempt_or_give_up()

    def _timeout(self, tok: int) -> None:
        if tok != self._token or self.op is None:
            return
        self.op.maybe_applied = True  # taken by a node, or lost on the way: fate unknown
        self._next_attempt_or_give_up()

    def _next_attempt_or_give_up(self) -> None:
        sim, op = self.sim, self.op
        assert op is not None
        # Retry (timeouts and quick refusals alike) until the op's deadline, which leaves room
        # for at most max_attempts timed-out attempts.
        deadline = op.call + sim.cfg.request_timeout_ms * sim.cfg.max_attempts
        if self.persistent or sim.now < deadline:
            self._attempt()
            return
        self._token += 1
        self._give_up(op)

    def _give_up(self, op: _Op) -> None:
        sim = self.sim
        if op.cmd is not None and op.maybe_applied and op.recorded:
            # May still commit at any later time, or did: its outcome is unknown.
            sim.record(
                Operation(self.id, op.key, OpKind(op.kind), op.args, float(op.call), None, timed_out=True),
                self.req,
            )
            self.unknown += 1
        sim.trace(None, f"c{self.id} gave up {op.kind} {op.key} after {op.attempts} attempts")
        self.op = None
        self.pending = None
        self._schedule_next()
