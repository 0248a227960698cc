"""ggap/server/interim.py: until RaftReplica implements the membership half of Consensus the
shim answers it honestly (applied or bootstrap membership, UNIMPLEMENTED changes, no
progress); as soon as RaftReplica has a method of its own, the shim defers to it.

The shim is built without RaftReplica's constructor (only its own two attributes matter
here), and RaftReplica's methods are set or removed explicitly, so these tests hold before
and after the engine half lands."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from ggap.replica import RaftReplica
from ggap.server.interim import InterimReplica
from ggap.types import ChangeKind, Member, MemberChange, MemberProgress, Membership, Unimplemented

METHODS = ("membership", "change_membership", "member_progress", "transfer_leader")
BOOTSTRAP = Membership((Member(1, "h:1", "h:2"), Member(2, "", "h2:2")))


@attrs.define
class FakeKv:
    membership: Membership | None = None


def shim(kv: FakeKv) -> InterimReplica:
    replica = InterimReplica.__new__(InterimReplica)
    replica._interim_bootstrap = BOOTSTRAP
    replica._interim_kv = kv  # type: ignore[assignment]
    return replica


@pytest.fixture
def without_engine_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in METHODS:
        monkeypatch.delattr(RaftReplica, name, raising=False)


@pytest.mark.usefixtures("without_engine_methods")
async def test_without_the_engine_half() -> None:
    kv = FakeKv()
    replica = shim(kv)
    assert replica.membership() == BOOTSTRAP
    applied = Membership((Member(1, "h:1", "h:2"),), index=9)
    kv.membership = applied
    assert replica.membership() == applied
    assert replica.member_progress() == {}
    with pytest.raises(Unimplemented, match="membership changes need the replica engine"):
        await replica.change_membership(MemberChange(ChangeKind.PROMOTE, Member(2)))
    with pytest.raises(Unimplemented):
        await replica.transfer_leader(2)


@pytest.mark.usefixtures("without_engine_methods")
async def test_defers_to_raft_replica_once_it_has_the_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    engine = Membership((Member(7, "e:1", "e:2"),), index=3)
    progress = {7: MemberProgress(7, False, 10, 10, True)}

    def membership(self: RaftReplica) -> Membership:
        return engine

    async def change_membership(self: RaftReplica, change: MemberChange) -> Membership:
        calls.append(("change", change))
        return engine

    def member_progress(self: RaftReplica) -> dict[int, MemberProgress]:
        return progress

    async def transfer_leader(self: RaftReplica, target: int) -> None:
        calls.append(("transfer", target))

    for fn in (membership, change_membership, member_progress, transfer_leader):
        monkeypatch.setattr(RaftReplica, fn.__name__, fn, raising=False)
    replica = shim(FakeKv())
    change = MemberChange(ChangeKind.REMOVE, Member(2))
    assert replica.membership() is engine
    assert await replica.change_membership(change) is engine
    assert replica.member_progress() is progress
    await replica.transfer_leader(7)
    assert calls == [("change", change), ("transfer", 7)]
