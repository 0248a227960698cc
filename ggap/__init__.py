"""Ginnungagap: a Raft-replicated, MVCC key-value store served over gRPC."""

__version__ = "0.1.0"
