"""The replica: one Raft group member as the server sees it.

`engine.ReplicaEngine` is the one place where a Ready is handled (persist, send, apply,
answer, compact); `node.RaftReplica` runs it under trio with SQLite and the peer
transport, and `ggap.sim` runs the same engine with simulated disk, network and time.
"""

from ggap.replica.api import AppliedBatch, Consensus, RoleInfo
from ggap.replica.engine import ApplyOutput, ReplicaEngine, Retention, StateMachine, Transport
from ggap.replica.node import ClusterSpec, Mailbox, RaftReplica

__all__ = [
    "AppliedBatch",
    "ApplyOutput",
    "ClusterSpec",
    "Consensus",
    "Mailbox",
    "RaftReplica",
    "ReplicaEngine",
    "Retention",
    "RoleInfo",
    "StateMachine",
    "Transport",
]
