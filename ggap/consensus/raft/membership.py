"""Membership arithmetic: what a single-server change does to a configuration, kept apart
from the protocol (like quorum.py) so it can be checked on its own.

Pure functions over `ConfState` / `ConfChange`; the protocol rules (one change at a time,
when a change takes effect) live in core.py and are argued for in DESIGN.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from ggap import codec
from ggap.consensus.raft.quorum import has_quorum
from ggap.consensus.raft.types import ConfChange, ConfChangeType, ConfState, SnapshotMeta

_MAX_ID = (1 << 63) - 1


def conf_change_error(conf: ConfState, cc: ConfChange) -> str | None:
    """Why `cc` cannot be applied to `conf`, or None if it can.

    ADD_LEARNER needs a non-member, PROMOTE a learner, REMOVE a member; the last voter
    cannot be removed (a configuration without voters can never commit again).
    """
    nid = cc.node_id
    if not isinstance(cc.type, ConfChangeType):
        return f"unknown conf change type {cc.type!r}"
    if not 0 < nid <= _MAX_ID:
        return f"invalid node id {nid}"
    if cc.type is ConfChangeType.ADD_LEARNER:
        if nid in conf.voters:
            return f"{nid} is already a voter"
        if nid in conf.learners:
            return f"{nid} is already a learner"
    elif cc.type is ConfChangeType.PROMOTE:
        if nid not in conf.learners:
            return f"{nid} is not a learner"
    elif cc.type is ConfChangeType.REMOVE:
        if nid not in conf.voters and nid not in conf.learners:
            return f"{nid} is not a member"
        if conf.voters == (nid,):
            return f"{nid} is the last voter"
    return None


def changed_conf(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`; ValueError if `conf_change_error` refuses it."""
    reason = conf_change_error(conf, cc)
    if reason is not None:
        raise ValueError(reason)
    nid = cc.node_id
    voters, learners = set(conf.voters), set(conf.learners)
    if cc.type is ConfChangeType.ADD_LEARNER:
        learners.add(nid)
    elif cc.type is ConfChangeType.PROMOTE:
        learners.discard(nid)
        voters.add(nid)
    else:
        voters.discard(nid)
        learners.discard(nid)
    return ConfState(voters=voters, learners=learners)


def live_quorum_after(conf: ConfState, remove_id: int, active_ids: Iterable[int]) -> bool:
    """Whether the voters left after removing `remove_id` still have a majority among
    `active_ids` (the nodes known to be up: e.g. the leader and the peers whose progress is
    `recent_active`). A server asks this before proposing a REMOVE, so that the removal does
    not leave a configuration that cannot commit (including the removal itself)."""
    remaining = [v for v in conf.voters if v != remove_id]
    return bool(remaining) and has_quorum(remaining, active_ids)


def conf_state_of(snap: SnapshotMeta) -> ConfState:
    return ConfState(voters=snap.voters, learners=snap.learners)


def encode_conf_change(cc: ConfChange) -> bytes:
    """The data of a CONF_CHANGE entry (ggap.codec's conf-change payload)."""
    return codec.encode_conf_change(int(cc.type), cc.node_id, cc.context)


def decode_conf_change(data: bytes) -> ConfChange:
    """Inverse of encode_conf_change; CodecError for anything it did not produce."""
    t, nid, ctx = codec.decode_conf_change(data)
    return ConfChange(type=ConfChangeType(t), node_id=nid, context=ctx)
