"""The write path: propose a command, make it durable, commit it, apply it.

Issue 2 ships `LocalConsensus`, a cluster of one; the Raft driver will implement the same
`Consensus` protocol so the server above never changes.
"""

from ggap.consensus.api import AppliedBatch, Consensus, RoleInfo
from ggap.consensus.local import LocalConsensus

__all__ = ["AppliedBatch", "Consensus", "LocalConsensus", "RoleInfo"]
