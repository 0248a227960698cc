"""Addresses: the initial-cluster string ("1=host:port,2=host:port" -> {1: "host:port", ...})
and the one host:port check, shared by the config loader and the membership RPCs."""

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


def addr_problem(value: str, *, min_port: int = 0) -> str | None:
    """Why `value` is not host:port (IPv6 as [addr]:port), or None when it is.

    Port 0 only makes sense for an address to listen on (the config's; the OS picks one);
    an address other nodes dial, such as a new member's, passes `min_port=1`."""
    if not value or any(c.isspace() for c in value):
        return f"expected host:port, got {value!r}"
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"expected host:port, got {value!r}"
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            return f"expected host:port, got {value!r}"
    elif ":" in host:
        return f"IPv6 hosts need brackets ([addr]:port), got {value!r}"
    if not port.isdigit() or not min_port <= int(port) <= 65535:
        return f"port must be {min_port}..65535, got {value!r}"
    return None
