"""Membership changes between the Raft core's `ConfChange` and the replicated
`Membership` (ids, roles and addresses) that the state machine records.

The core decides whether a change is valid and what it does to voters and learners
(`ggap.consensus.raft.membership`); this module adds what the core treats as opaque: the
new member's addresses, carried in the change's context.
"""

from __future__ import annotations

from ggap import codec
from ggap.consensus.raft import ConfChange, ConfChangeType, ConfState
from ggap.consensus.raft.membership import conf_change_error
from ggap.types import ChangeKind, FailedPrecondition, Member, MemberChange, Membership

_KIND_TO_TYPE = {
    ChangeKind.ADD_LEARNER: ConfChangeType.ADD_LEARNER,
    ChangeKind.PROMOTE: ConfChangeType.PROMOTE,
    ChangeKind.REMOVE: ConfChangeType.REMOVE,
}


def conf_state(membership: Membership) -> ConfState:
    return ConfState(voters=membership.voters, learners=membership.learners)


def to_conf_change(change: MemberChange) -> ConfChange:
    m = change.member
    context = b""
    if change.kind is ChangeKind.ADD_LEARNER:
        context = codec.encode_member_context(m.client_addr, m.cluster_addr)
    return ConfChange(type=_KIND_TO_TYPE[change.kind], node_id=m.id, context=context)


def next_membership(current: Membership, cc: ConfChange, index: int) -> Membership | FailedPrecondition:
    """The membership after applying `cc` at log `index`, or why it is refused (then it
    changes nothing: the core refuses it alike). A context that does not decode is a
    corrupt log entry: CodecError propagates."""
    reason = conf_change_error(conf_state(current), cc)
    if reason is not None:
        return FailedPrecondition(f"membership change at index {index} refused: {reason}")
    nid = cc.node_id
    if cc.type is ConfChangeType.ADD_LEARNER:
        client_addr, cluster_addr = codec.decode_member_context(cc.context)
        members = (*current.members, Member(nid, client_addr, cluster_addr, learner=True))
    elif cc.type is ConfChangeType.PROMOTE:
        members = tuple(_promoted(m, nid) for m in current.members)
    else:
        members = tuple(m for m in current.members if m.id != nid)
    return Membership(members=members, index=index)


def _promoted(m: Member, promoted: int) -> Member:
    return Member(m.id, m.client_addr, m.cluster_addr, learner=False) if m.id == promoted else m


def bootstrap_membership(peers: dict[int, str], client_addrs: dict[int, str] | None = None) -> Membership:
    """The initial voters (id -> cluster address), before any change was applied."""
    client_addrs = client_addrs or {}
    return Membership(
        members=tuple(Member(i, client_addrs.get(i, ""), addr) for i, addr in peers.items()), index=0
    )
