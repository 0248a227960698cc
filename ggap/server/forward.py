"""Writes that reach a follower are forwarded to the leader's client port.

The client never has to find the leader (API.md). A forwarded request carries
`ggap-forwarded` metadata so a node that is no longer leader refuses it instead of
forwarding again; the origin then retries against whoever leads now, until the request's
deadline. Only refusals are retried ("not leader", or no connection at all): a forward that
failed after the leader may have applied it reports its error instead of risking a second
application.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ggap.client import ClientError, open_client
from ggap.rpc import current_deadline
from ggap.rpc.errors import error_from_status
from ggap.types import NotLeader, StatusCode, Unavailable

log = logging.getLogger(__name__)

FORWARDED = "ggap-forwarded"
# Time kept back from the deadline so the answer (an error, at worst) reaches the client.
_MARGIN_S = 0.05
_RETRY_PAUSE_S = 0.05


def is_forwarded(request: Any) -> bool:
    return any(k == FORWARDED for k, _v in getattr(request, "custom_metadata", ()) or ())


async def forward(addr: str, method: str, msg: Any) -> Any:
    """Send `msg` to the leader at `addr`. Raises `RetryElsewhere` for a refusal that is safe
    to retry, or the leader's own error as a GgapError."""
    remaining = current_deadline() - trio.current_time() - _MARGIN_S
    if remaining <= 0:
        raise Unavailable("no leader answered within the deadline")
    try:
        async with open_client(addr, timeout_s=remaining, metadata=[(FORWARDED, "1")]) as client:
            return await getattr(client, method)(msg)
    except ClientError as exc:
        if exc.code == StatusCode.UNAVAILABLE and (
            exc.message.startswith(NotLeader.PREFIX) or exc.message.startswith("cannot connect")
        ):
            raise RetryElsewhere(exc.message) from None
        if exc.code == StatusCode.DEADLINE_EXCEEDED:
            raise Unavailable(f"leader at {addr} did not answer within the deadline") from None
        raise error_from_status(exc.code, exc.message) from None


class RetryElsewhere(Exception):
    """The leader refused before doing anything: retrying is safe."""


async def pause_or_give_up(leader_id: int) -> None:
    """Wait a little before retrying; past the deadline, answer UNAVAILABLE."""
    if trio.current_time() + _RETRY_PAUSE_S + _MARGIN_S >= current_deadline():
        raise Unavailable("no leader accepted the write within the deadline", leader_id=leader_id or None)
    await trio.sleep(_RETRY_PAUSE_S)
