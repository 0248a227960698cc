"""What the server needs from consensus, whatever implements it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import attrs

from ggap.types import ApplyResult, Command, Event, MemberChange, MemberProgress, Membership

T = TypeVar("T")


@attrs.frozen(slots=True)
class RoleInfo:
    member_id: int
    leader_id: int  # 0 when unknown
    term: int
    role: str  # leader / follower / candidate / learner
    commit_index: int
    applied_index: int


@attrs.frozen(slots=True)
class AppliedBatch:
    """Published after every apply batch, in log order, for watchers and waiters."""

    applied_index: int
    revision: int
    events: Sequence[Event]
    # The state was replaced by a snapshot from the leader (no events describe the jump).
    snapshot_installed: bool = False


class Consensus(Protocol):
    async def propose(self, command: Command, *, forward: bool = False) -> ApplyResult:
        """Return once the command is committed and applied; raise its GgapError if it failed.

        NotLeader unless this node leads; with `forward`, a follower that knows the leader
        hands the command to it inside Raft and answers once it applied it here (NotLeader
        still, if the leader refused it: then it was not applied)."""
        ...

    async def propose_all(self, command: Command) -> ApplyResult:
        """WRITE_QUORUM_ALL: like propose, then wait until every voter has applied it;
        UNAVAILABLE naming the committed revision if that takes too long."""
        ...

    def leader_client_addr(self) -> str | None:
        """Where to forward writes (the leader's client address), when known."""
        ...

    async def read_index(self) -> int:
        """A log index such that once it is applied, local state reflects every write
        acknowledged before this call began (Raft's ReadIndex)."""
        ...

    async def wait_applied(self, index: int) -> None: ...

    async def wait_revision(self, revision: int) -> None: ...

    def role(self) -> RoleInfo: ...

    def release_readers(self) -> None:
        """Shutdown: reads waiting for the applied index or a revision fail now."""
        ...

    async def maintain(self, fn: Callable[[], T]) -> T:
        """Run local storage upkeep on the thread that owns the KV writer."""
        ...

    def subscribe(self, callback: Callable[[AppliedBatch], None]) -> None:
        """`callback` runs on the trio thread after each applied batch, before waiters wake."""
        ...

    def membership(self) -> Membership:
        """The membership as of this node's applied index (the same answer on every node
        that applied as far)."""
        ...

    async def change_membership(self, change: MemberChange) -> Membership:
        """Propose one membership change on the leader (NotLeader elsewhere: the server
        forwards); returns the membership once the change is applied here. Refusals
        (another change in progress, an invalid change) raise FailedPrecondition. The
        server checks what the core cannot (a learner caught up, a live quorum left)."""
        ...

    def member_progress(self) -> dict[int, MemberProgress]:
        """Per member, as this node sees it (match/active are meaningful on the leader)."""
        ...

    async def transfer_leader(self, target: int) -> None:
        """Leader only: hand leadership to voter `target`; returns once it leads, raises
        Unavailable if that did not happen within an election timeout."""
        ...
