"""Consensus: the sans-I/O Raft core lives in `ggap.consensus.raft`; the replica that
drives it is `ggap.replica`."""
