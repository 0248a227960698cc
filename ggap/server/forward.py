"""Writes that reach a follower and cannot travel inside Raft go to the leader's client port.

The client never has to find the leader (API.md). Most follower writes are handed to the
leader as a Raft PROPOSE (ggap.replica.engine); this is the path for the rest: TTL writes
(their expiry comes from the leader's clock), quorum-all writes (only the leader sees every
voter's applied index), membership requests, and writes the leader refused inside Raft
(definitely not applied, so safe to send again). A forwarded request carries
`ggap-forwarded` metadata so a node that is no longer leader refuses it instead of
forwarding again; the origin then retries against whoever leads now, until the request's
deadline. Only refusals are retried (NotLeader, or no connection at all): a forward that
failed after the leader may have applied it reports its error instead of risking a second
application.

Connections to the leader are pooled: one purerpc channel per address, held open by a task
in the Forwarder's nursery (purerpc channels must be entered and exited by one task) and
shared by every request task. A channel that fails a call is dropped and re-dialled on the
next forward, since purerpc never notices a dead connection by itself.

Its timeouts are `[server]` knobs: forward_connect_timeout_ms, forward_retry_ms and
answer_margin_ms, given to the constructor.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from ggap import tracing
from ggap.client import ClientError, Connection, call_metadata, open_connection
from ggap.rpc import current_deadline
from ggap.rpc.errors import error_from_status
from ggap.types import NotLeader, StatusCode, Unavailable

log = logging.getLogger(__name__)

FORWARDED = "ggap-forwarded"
_T = TypeVar("_T")
# The pooled client's per-call default. Not a knob: every forwarded call passes the time
# left before its request's deadline, which is the real bound.
_CALL_LIMIT_S = 3600.0


def is_forwarded(request: Any) -> bool:
    return any(k == FORWARDED for k, _v in getattr(request, "custom_metadata", ()) or ())


class RetryElsewhere(Exception):
    """The leader refused before doing anything: retrying is safe."""


@attrs.define(eq=False)
class _Conn:
    client: Connection
    epoch: tuple[int, int]
    closed: trio.Event = attrs.field(factory=trio.Event)


class Forwarder:
    """Owns the pooled connections; `run` must be started in the node's nursery."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        retry_pause_s: float,
        answer_margin_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """
        Args:
            connect_timeout_s: bound on dialling a leader's client port.
            retry_pause_s: pause before retrying a refused write (`pause_or_give_up`).
            answer_margin_s: kept back from the request's deadline so the answer (an error,
                at worst) still reaches the client.
            ssl_context: the node's own client credentials (`NodeTls.node_client`) when
                the client ports serve TLS; None for plaintext.
        """
        if not connect_timeout_s > 0 or not retry_pause_s > 0 or not answer_margin_s >= 0:
            raise ValueError(
                "connect_timeout_s and retry_pause_s must be positive, answer_margin_s >= 0; got "
                f"{connect_timeout_s!r}, {retry_pause_s!r}, {answer_margin_s!r}"
            )
        self.connect_timeout_s = connect_timeout_s
        self.retry_pause_s = retry_pause_s
        self.answer_margin_s = answer_margin_s
        self._ssl_context = ssl_context
        self._conns: dict[str, _Conn] = {}
        self._nursery: trio.Nursery | None = None
        self._dialling: dict[str, trio.Lock] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._conns.clear()

    async def forward(
        self, addr: str, epoch: tuple[int, int], call: Callable[[Connection, float], Awaitable[_T]]
    ) -> _T:
        """`call(client, timeout_s)` on a connection to the leader at `addr`: the request, sent
        on, and the leader's response. Raises `RetryElsewhere` for a refusal that is safe to
        retry, or the leader's own error as a GgapError.

        `epoch` is (leader id, term): a pooled connection dialled under another epoch is
        replaced, because a node that restarted can only lead again after an election, and
        purerpc would hang on the dead connection to its previous process."""
        remaining = current_deadline() - trio.current_time() - self.answer_margin_s
        if remaining <= 0:
            raise Unavailable("no leader answered within the deadline")
        conn = await self._connection(addr, epoch)
        if tracing.ENABLED:
            if tracing.recording():
                return await self._traced_call(addr, conn, call, remaining)
            # Not sampled: no span, but the leader must learn that too (flags 00), or it
            # would sample a fragment of this trace on its own.
            with call_metadata(tracing.inject_metadata()):
                return await self._call(addr, conn, call, remaining)
        return await self._call(addr, conn, call, remaining)

    async def _traced_call(
        self, addr: str, conn: _Conn, call: Callable[[Connection, float], Awaitable[_T]], remaining: float
    ) -> _T:
        """`_call` in a CLIENT span whose traceparent rides along to the leader."""
        span = tracing.start_span(
            "forward", kind=tracing.CLIENT, attributes={"rpc.system": "grpc", "server.address": addr}
        )
        try:
            with tracing.use_span(span), call_metadata(tracing.inject_metadata()):
                log.debug("forwarding to the leader at %s", addr)
                return await self._call(addr, conn, call, remaining)
        except BaseException as exc:
            tracing.failed(span, exc)
            raise
        finally:
            span.end()

    async def _call(
        self, addr: str, conn: _Conn, call: Callable[[Connection, float], Awaitable[_T]], remaining: float
    ) -> _T:
        try:
            return await call(conn.client, remaining)
        except ClientError as exc:
            err = error_from_status(exc.code, exc.message)
            if isinstance(err, NotLeader):
                raise RetryElsewhere(exc.message) from None
            if exc.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED):
                self._drop(addr, conn)  # the connection may be dead: dial again next time
            if exc.code == StatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(f"leader at {addr} did not answer within the deadline") from None
            raise err from None

    async def _connection(self, addr: str, epoch: tuple[int, int]) -> _Conn:
        lock = self._dialling.setdefault(addr, trio.Lock())
        async with lock:  # one dial per address at a time; the others reuse its result
            conn = self._conns.get(addr)
            if conn is not None and not conn.closed.is_set():
                if conn.epoch == epoch:
                    return conn
                self._drop(addr, conn)
            if self._nursery is None:
                raise Unavailable("node is shutting down")
            try:
                conn = await self._nursery.start(self._hold, addr, epoch)
            except ClientError as exc:
                raise RetryElsewhere(f"cannot connect to the leader at {addr}: {exc.message}") from None
            self._conns[addr] = conn
            return conn

    async def _hold(self, addr: str, epoch: tuple[int, int], *, task_status: trio.TaskStatus[_Conn]) -> None:
        """Keeps one channel open until it is dropped. Errors before `started` reach the
        dialler; errors after it are logged, never allowed to take the node down."""
        started = False
        try:
            async with open_connection(
                addr,
                timeout_s=self.connect_timeout_s,
                metadata=[(FORWARDED, "1")],
                ssl_context=self._ssl_context,
            ) as client:
                client.timeout_s = _CALL_LIMIT_S
                conn = _Conn(client, epoch)
                task_status.started(conn)
                started = True
                await conn.closed.wait()
        except Exception as exc:
            if not started:
                raise
            log.debug("forwarding connection to %s ended: %r", addr, exc)

    def _drop(self, addr: str, conn: _Conn) -> None:
        conn.closed.set()
        if self._conns.get(addr) is conn:
            del self._conns[addr]

    async def pause_or_give_up(self, leader_id: int) -> None:
        """Wait a little before retrying; past the deadline, answer UNAVAILABLE."""
        if trio.current_time() + self.retry_pause_s + self.answer_margin_s >= current_deadline():
            raise Unavailable("no leader accepted the write within the deadline", leader_id=leader_id or None)
        await trio.sleep(self.retry_pause_s)
