"""Writes that reach a follower are forwarded to the leader's client port.

The client never has to find the leader (API.md). A forwarded request carries
`ggap-forwarded` metadata so a node that is no longer leader refuses it instead of
forwarding again; the origin then retries against whoever leads now, until the request's
deadline. Only refusals are retried ("not leader", or no connection at all): a forward that
failed after the leader may have applied it reports its error instead of risking a second
application.

Connections to the leader are pooled: one purerpc channel per address, held open by a task
in the Forwarder's nursery (purerpc channels must be entered and exited by one task) and
shared by every request task. A channel that fails a call is dropped and re-dialled on the
next forward, since purerpc never notices a dead connection by itself.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import trio

from ggap.client import Client, ClientError, open_client
from ggap.rpc import current_deadline
from ggap.rpc.errors import error_from_status
from ggap.types import NotLeader, StatusCode, Unavailable

log = logging.getLogger(__name__)

FORWARDED = "ggap-forwarded"
# Time kept back from the deadline so the answer (an error, at worst) reaches the client.
_MARGIN_S = 0.05
_RETRY_PAUSE_S = 0.05
_CONNECT_TIMEOUT_S = 1.0
# Longest any single forwarded call may take; each call is also bounded by its deadline.
_CALL_LIMIT_S = 3600.0


def is_forwarded(request: Any) -> bool:
    return any(k == FORWARDED for k, _v in getattr(request, "custom_metadata", ()) or ())


class RetryElsewhere(Exception):
    """The leader refused before doing anything: retrying is safe."""


@attrs.define(eq=False)
class _Conn:
    client: Client
    epoch: tuple[int, int]
    closed: trio.Event = attrs.field(factory=trio.Event)


class Forwarder:
    """Owns the pooled connections; `run` must be started in the node's nursery."""

    def __init__(self) -> None:
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

    async def forward(self, addr: str, epoch: tuple[int, int], method: str, msg: Any) -> Any:
        """Send `msg` to the leader at `addr`. Raises `RetryElsewhere` for a refusal that is
        safe to retry, or the leader's own error as a GgapError.

        `epoch` is (leader id, term): a pooled connection dialled under another epoch is
        replaced, because a node that restarted can only lead again after an election, and
        purerpc would hang on the dead connection to its previous process."""
        remaining = current_deadline() - trio.current_time() - _MARGIN_S
        if remaining <= 0:
            raise Unavailable("no leader answered within the deadline")
        conn = await self._connection(addr, epoch)
        try:
            return await getattr(conn.client, method)(msg, timeout_s=remaining)
        except ClientError as exc:
            refused = exc.code == StatusCode.UNAVAILABLE and exc.message.startswith(NotLeader.PREFIX)
            if not refused and exc.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED):
                self._drop(addr, conn)  # the connection may be dead: dial again next time
            if refused:
                raise RetryElsewhere(exc.message) from None
            if exc.code == StatusCode.DEADLINE_EXCEEDED:
                raise Unavailable(f"leader at {addr} did not answer within the deadline") from None
            raise error_from_status(exc.code, exc.message) from None

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
            async with open_client(
                addr, timeout_s=_CONNECT_TIMEOUT_S, metadata=[(FORWARDED, "1")]
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


async def pause_or_give_up(leader_id: int) -> None:
    """Wait a little before retrying; past the deadline, answer UNAVAILABLE."""
    if trio.current_time() + _RETRY_PAUSE_S + _MARGIN_S >= current_deadline():
        raise Unavailable("no leader accepted the write within the deadline", leader_id=leader_id or None)
    await trio.sleep(_RETRY_PAUSE_S)
