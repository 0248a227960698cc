"""The sans-I/O Raft core: a synchronous `RawNode` driven by tick/step/ready/advance.

Nothing in this package does I/O, reads a clock or uses the global RNG; the driver
(ggap.consensus) and the simulator (ggap.sim) supply time, transport and storage.
"""

from ggap.consensus.raft.core import CAMPAIGN_TRANSFER, ProposalDropped, RaftStatus, RawNode
from ggap.consensus.raft.memory import MemoryStorage
from ggap.consensus.raft.progress import ProgressState
from ggap.consensus.raft.storage import (
    DurableStorage,
    LogCompactedError,
    LogStorage,
    LogUnavailableError,
    SnapshotTemporarilyUnavailableError,
    StateStorage,
    Storage,
)
from ggap.consensus.raft.types import (
    CoreConfig,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "CAMPAIGN_TRANSFER",
    "CoreConfig",
    "DurableStorage",
    "Entry",
    "EntryKind",
    "HardState",
    "LogCompactedError",
    "LogStorage",
    "LogUnavailableError",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProgressState",
    "ProposalDropped",
    "RaftStatus",
    "RawNode",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotMeta",
    "SnapshotTemporarilyUnavailableError",
    "SoftState",
    "StateStorage",
    "Storage",
]
