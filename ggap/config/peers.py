"""The initial-cluster string: "1=host:port,2=host:port" -> {1: "host:port", 2: ...}."""

from __future__ import annotations


def parse_peers(text: str) -> dict[int, str]:
    """Raises ValueError saying which item is wrong; "" is the empty cluster (a node alone)."""
    peers: dict[int, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        ident, sep, addr = item.partition("=")
        if not sep or not ident.strip().isdigit() or not addr.strip():
            raise ValueError(f"expected ID=HOST:PORT, got {item!r}")
        node_id = int(ident)
        if not 0 < node_id < 2**64:
            raise ValueError(f"node ids are 1..2^64-1, got {node_id}")
        if node_id in peers:
            raise ValueError(f"node {node_id} is listed twice")
        host, colon, port = addr.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"expected ID=HOST:PORT with port 1..65535, got {item!r}")
        peers[node_id] = addr.strip()
    return peers


def split_addr(addr: str) -> tuple[str, int]:
    """ "host:port" (IPv6 as "[addr]:port") -> (host, port); the config loader validated it."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
