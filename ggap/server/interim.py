"""Interim: RaftReplica with the membership half of the Consensus protocol filled in.

Issue 7 is built in two halves: the replica engine (ggap/replica/) learns to apply
membership changes while the server and CLI are written against the Consensus protocol.
Until `RaftReplica` implements `membership()`, `change_membership()`, `member_progress()`
and `transfer_leader()`, this subclass answers them as a build without membership changes
honestly can: the membership is the applied one from kv.db or, while no change was ever
applied, the bootstrap voters; changes and transfers are UNIMPLEMENTED; no progress is known.

Each method defers to RaftReplica's own as soon as it exists, so merging the engine half
makes this class inert; delete it (and its use in ggap/server/node.py) then.
"""

from __future__ import annotations

from typing import Any

from ggap.replica import RaftReplica
from ggap.storage import KvStore
from ggap.types import MemberChange, MemberProgress, Membership, Unimplemented

_NO_CHANGES = "membership changes need the replica engine's half of issue 7, which this build does not have"


class InterimReplica(RaftReplica):
    def __init__(self, *, bootstrap: Membership, kv: KvStore, **kwargs: Any) -> None:
        super().__init__(kv=kv, **kwargs)
        self._interim_bootstrap = bootstrap
        self._interim_kv = kv

    def membership(self) -> Membership:
        real = getattr(super(), "membership", None)
        if real is not None:
            result: Membership = real()
            return result
        return self._interim_kv.membership or self._interim_bootstrap

    async def change_membership(self, change: MemberChange) -> Membership:
        real = getattr(super(), "change_membership", None)
        if real is not None:
            result: Membership = await real(change)
            return result
        raise Unimplemented(_NO_CHANGES)

    def member_progress(self) -> dict[int, MemberProgress]:
        real = getattr(super(), "member_progress", None)
        if real is not None:
            result: dict[int, MemberProgress] = real()
            return result
        return {}

    async def transfer_leader(self, target: int) -> None:
        real = getattr(super(), "transfer_leader", None)
        if real is not None:
            await real(target)
            return
        raise Unimplemented(_NO_CHANGES)
