"""The sans-I/O Raft core: a synchronous `RawNode` driven by tick/step/ready/advance.

Nothing in this package does I/O, reads a clock or uses the global RNG; the driver
(ggap.consensus) and the simulator (ggap.sim) supply time, transport and storage.
"""

from ggap.consensus.raft.core import (
    CAMPAIGN_TRANSFER,
    ConfChangeRefused,
    PeerProgress,
    ProposalDropped,
    RaftStatus,
    RawNode,
)
from ggap.consensus.raft.membership import (
    changed_conf,
    conf_change_error,
    conf_state_of,
    decode_conf_change,
    encode_conf_change,
    live_quorum_after,
)
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
    ConfChange,
    ConfChangeType,
    ConfState,
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
    "ConfChange",
    "ConfChangeRefused",
    "ConfChangeType",
    "ConfState",
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
    "PeerProgress",
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
    "changed_conf",
    "conf_change_error",
    "conf_state_of",
    "decode_conf_change",
    "encode_conf_change",
    "live_quorum_after",
]
