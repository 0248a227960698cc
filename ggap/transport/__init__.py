"""Peer-to-peer transport for Raft messages: our own framed TCP protocol, not gRPC.

`wire` is the sans-I/O format (codec, frames, handshake); `peer` runs the connections.
See ggap/transport/DESIGN.md for why it is lossy, batched and one-connection-per-direction.
"""

from __future__ import annotations

from ggap.transport.peer import Address, PeerBindError, PeerStatistics, PeerTransport, TransportStatistics
from ggap.transport.wire import decode_messages, encode_messages

__all__ = [
    "Address",
    "PeerBindError",
    "PeerStatistics",
    "PeerTransport",
    "TransportStatistics",
    "decode_messages",
    "encode_messages",
]
