"""Client sessions on the server: the `ggap-session` metadata, and the leader's clock.

A write of a session carries `ggap-session: <session_id>:<seq>:<lowest_unacked>` in its
request metadata (README "Exactly-once writes"); the node wraps its command in a
SessionWrite, and the state machine applies it once per (session, seq). Without the
metadata a write is applied as sent, so raw grpcurl calls work unchanged.

Sessions expire by log time, which only the leader moves: `SessionClock.run` enters the
leader's clock into the log every `sessions.clock_interval_ms` while sessions exist.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ggap.config.model import SessionsConfig
from ggap.replica import Consensus
from ggap.types import Command, Compact, Delete, GgapError, InvalidArgument, Put, SessionWrite, Txn
from ggap.types import SessionClock as SessionClockCmd

log = logging.getLogger(__name__)

SESSION_KEY = "ggap-session"
_MAX_U63 = (1 << 63) - 1


@attrs.frozen(slots=True)
class SessionStamp:
    session: int
    seq: int
    lowest_unacked: int

    def metadata(self) -> tuple[str, str]:
        return (SESSION_KEY, f"{self.session}:{self.seq}:{self.lowest_unacked}")


def parse_stamp(request: Any) -> SessionStamp | None:
    """The request's session stamp, None without one; InvalidArgument for a malformed one
    (refused before anything is proposed)."""
    value: str | None = None
    for k, v in getattr(request, "custom_metadata", ()) or ():
        if k == SESSION_KEY:
            if value is not None:
                raise InvalidArgument(f"{SESSION_KEY} metadata given more than once")
            value = v if isinstance(v, str) else v.decode("ascii", "replace")
    if value is None:
        return None
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 19 for p in parts):
        raise InvalidArgument(
            f"{SESSION_KEY} metadata must be '<session_id>:<seq>:<lowest_unacked>' (decimal), got {value!r}"
        )
    session, seq, low = (int(p) for p in parts)
    if not (1 <= session <= _MAX_U63 and 1 <= low <= seq <= _MAX_U63):
        raise InvalidArgument(
            f"{SESSION_KEY}: need session_id >= 1 and 1 <= lowest_unacked <= seq, got {value!r}"
        )
    return SessionStamp(session, seq, low)


def in_session(cmd: Command, stamp: SessionStamp | None) -> Command:
    if stamp is None:
        return cmd
    if not isinstance(cmd, (Put, Delete, Txn, Compact)):
        raise InvalidArgument(f"{type(cmd).__name__} cannot be part of a session")
    return SessionWrite(
        session=stamp.session, seq=stamp.seq, lowest_unacked=stamp.lowest_unacked, command=cmd
    )


class SessionClock:
    """The leader's clock into the log, so sessions expire by log time alone."""

    def __init__(
        self,
        consensus: Consensus,
        config: SessionsConfig,
        sessions: Callable[[], int],
        clock_ms: Callable[[], int],
    ) -> None:
        self._consensus = consensus
        self._config = config
        self._sessions = sessions
        self._clock_ms = clock_ms

    async def run(self) -> None:
        cfg = self._config
        while True:
            await trio.sleep(cfg.clock_interval_ms / 1000)
            if self._consensus.role().role != "leader" or self._sessions() == 0:
                continue
            try:
                await self._consensus.propose(
                    SessionClockCmd(now_ms=self._clock_ms(), idle_timeout_ms=cfg.idle_timeout_ms)
                )
            except GgapError as exc:
                log.warning("entering the session clock failed (the next turn retries): %s", exc)
