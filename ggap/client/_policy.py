"""What a client decides, written once for both faces (AsyncClient, and Client on top of it):
which endpoint to try next, how long to back off, which session sequence numbers are still
unanswered, and the highest revision seen. No I/O and no clock of its own: callers pass
`now` (seconds, any monotonic origin) and a random source.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from ggap.types.errors import GgapError, NotLeader, StatusCode


@attrs.define
class Endpoints:
    """The endpoint list, what the client learned about it, and the order to try it in.

    A node's responses carry its member id and the leader it knows; so after the first
    answers the client knows which endpoint leads, and writes go there first. Reads that
    may be served anywhere rotate over the endpoints. An endpoint that failed is tried last
    until `penalty_s` has passed."""

    names: tuple[str, ...]
    penalty_s: float = 1.0
    leader_id: int = 0
    by_member: dict[int, str] = attrs.field(factory=dict)
    _down_until: dict[str, float] = attrs.field(factory=dict)
    _next: int = 0

    def __attrs_post_init__(self) -> None:
        if not self.names:
            raise ValueError("no endpoint given")

    @property
    def leader(self) -> str | None:
        return self.by_member.get(self.leader_id) if self.leader_id else None

    def order(self, now: float, *, prefer_leader: bool) -> list[str]:
        """Every endpoint once: healthy ones first (the leader first when asked and known,
        else starting from the next in rotation), then the ones that failed recently."""
        n = len(self.names)
        start = self._next % n
        self._next += 1
        rotated = [self.names[(start + i) % n] for i in range(n)]
        leader = self.leader
        if prefer_leader and leader in rotated:
            rotated.remove(leader)
            rotated.insert(0, leader)
        healthy = [e for e in rotated if self._down_until.get(e, 0.0) <= now]
        return healthy + [e for e in rotated if e not in healthy]

    def answered(self, endpoint: str, member_id: int, leader_id: int) -> None:
        if member_id:
            self.by_member[member_id] = endpoint
        if leader_id:
            self.leader_id = leader_id
        self._down_until.pop(endpoint, None)

    def failed(self, endpoint: str, now: float, error: GgapError) -> None:
        """The call at `endpoint` failed in a way that sends us elsewhere."""
        self._down_until[endpoint] = now + self.penalty_s
        if isinstance(error, NotLeader):
            self.leader_id = error.leader_id or 0
        elif self.leader == endpoint:
            self.leader_id = 0


@attrs.frozen
class Backoff:
    """Full-jitter exponential backoff between attempts (AWS architecture blog's variant)."""

    initial_s: float = 0.05
    max_s: float = 1.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_s, self.initial_s * (2 ** max(0, attempt - 1))))


# Failures after which another endpoint may answer: the node cannot serve (no leader, no
# quorum, stopping, unreachable) or did not answer in time.
RETRYABLE = frozenset({StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED})


def definitely_not_applied(error: GgapError) -> bool:
    """A refusal before anything happened: safe to retry even without a session."""
    return isinstance(error, NotLeader)


@attrs.define
class SessionNumbers:
    """The sequence numbers of one session: the next to hand out, and the ones in flight.
    `lowest_unacked` is what every request carries: the server forgets the results of
    everything below it."""

    session_id: int
    next_seq: int = 1
    _in_flight: set[int] = attrs.field(factory=set)

    def begin(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self._in_flight.add(seq)
        return seq

    def end(self, seq: int) -> None:
        """`seq` got an answer the caller will not retry (a result, or a final error)."""
        self._in_flight.discard(seq)

    def lowest_unacked(self) -> int:
        return min(self._in_flight, default=self.next_seq)

    def metadata(self, seq: int) -> tuple[str, str]:
        return ("ggap-session", f"{self.session_id}:{seq}:{self.lowest_unacked()}")


@attrs.define
class Revisions:
    """The highest revision this client has seen in any response: its sequential reads ask
    for at least that (`min_revision`), so they never go back in time across nodes."""

    highest: int = 0

    def saw(self, revision: int) -> None:
        if revision > self.highest:
            self.highest = revision


def normalise_endpoints(endpoints: str | Sequence[str]) -> tuple[str, ...]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = tuple(e.strip() for e in items if e.strip())
    if not out:
        raise ValueError("no endpoint given")
    return out
