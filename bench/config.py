"""The benchmark's settings and the parsing of its compact option formats."""

from __future__ import annotations

from typing import Any

import attrs

#: Operation names accepted in `--mix`, in display order.
OPERATIONS: tuple[str, ...] = ("put", "get", "delete", "range", "txn")
READ_MODES: tuple[str, ...] = ("linearizable", "sequential", "eventual")
QUORUMS: tuple[str, ...] = ("majority", "all")
#: Systems the load generator can drive (bench.load picks the client from this).
SYSTEMS: tuple[str, ...] = ("ggap", "etcd")
#: What the etcd client supports (etcd has no delete-by-key cell, no sequential reads here).
ETCD_OPERATIONS: tuple[str, ...] = ("put", "get", "range", "txn")
ETCD_READ_MODES: tuple[str, ...] = ("linearizable", "eventual")


def parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    """`put=70,get=30` -> (("put", 70.0), ("get", 30.0)); weights are relative, not percent."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, raw = part.partition("=")
        name = name.strip().lower()
        if not sep:
            raise ValueError(f"mix entry {part!r} is not op=weight")
        if name not in OPERATIONS:
            raise ValueError(f"unknown operation {name!r} (known: {', '.join(OPERATIONS)})")
        if name in weights:
            raise ValueError(f"operation {name!r} given twice")
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {raw!r}") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"weight of {name!r} must be a finite number >= 0")
        weights[name] = weight
    if sum(weights.values()) <= 0:
        raise ValueError("the mix needs at least one operation with a positive weight")
    return tuple((name, w) for name, w in weights.items() if w > 0)


def parse_endpoints(text: str) -> tuple[str, ...]:
    """`h1:p1,h2:p2` -> ("h1:p1", "h2:p2"), refusing entries without a numeric port."""
    endpoints: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoint {part!r} is not host:port")
        endpoints.append(part)
    if not endpoints:
        raise ValueError("at least one endpoint is needed")
    return tuple(endpoints)


def prefix_end(prefix: str) -> str:
    """The smallest key above every key starting with `prefix` ("" = no upper bound).

    Same rule as etcd's prefix range end, on code points: bump the last character that
    can be bumped and drop what follows it.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars[-1])
        if last < 0x10FFFF:
            nxt = last + 1
            if 0xD800 <= nxt <= 0xDFFF:  # surrogates are not valid in UTF-8 keys
                nxt = 0xE000
            chars[-1] = chr(nxt)
            return "".join(chars)
        chars.pop()
    return ""


@attrs.frozen
class BenchConfig:
    """Everything one run needs; picklable so worker processes get a copy."""

    endpoints: tuple[str, ...]
    clients: int = 16
    duration: float = 10.0
    warmup: float = 1.0
    keys: int = 1000
    key_prefix: str = "bench/"
    value_size: int = 128
    mix: tuple[tuple[str, float], ...] = (("put", 50.0), ("get", 50.0))
    read_mode: str = "linearizable"
    quorum: str = "majority"
    preload: bool = False
    processes: int = 1
    timeout: float = 5.0
    range_limit: int = 10
    seed: int | None = None
    # TLS to the nodes: CA bundle (turns TLS on), and a client certificate and key for
    # nodes run with --client-cert-auth; "" = plaintext / no client certificate.
    cacert: str = ""
    cert: str = ""
    key_file: str = ""
    #: Which system's API the clients speak (see SYSTEMS).
    system: str = "ggap"
    #: Put values start with their send time (8 bytes, ns since the epoch), for watch lag.
    stamp_values: bool = False

    def __attrs_post_init__(self) -> None:
        problems = []
        if not self.endpoints:
            problems.append("at least one endpoint is needed")
        if self.clients < 1:
            problems.append("clients must be >= 1")
        if not self.duration > 0:
            problems.append("duration must be > 0")
        if self.warmup < 0:
            problems.append("warmup must be >= 0")
        if self.keys < 1:
            problems.append("keys must be >= 1")
        if self.value_size < 0:
            problems.append("value size must be >= 0")
        if not self.mix:
            problems.append("the mix is empty")
        if self.read_mode not in READ_MODES:
            problems.append(f"read mode must be one of {READ_MODES}")
        if self.quorum not in QUORUMS:
            problems.append(f"quorum must be one of {QUORUMS}")
        if self.processes < 1:
            problems.append("processes must be >= 1")
        if bool(self.cert) != bool(self.key_file):
            problems.append("cert and key go together")
        if self.cert and not self.cacert:
            problems.append("cert needs cacert (TLS)")
        if not self.timeout > 0:
            problems.append("timeout must be > 0")
        if self.range_limit < 1:
            problems.append("range limit must be >= 1")
        if self.system not in SYSTEMS:
            problems.append(f"system must be one of {SYSTEMS}")
        if self.system == "etcd":
            unsupported = [name for name, _ in self.mix if name not in ETCD_OPERATIONS]
            if unsupported:
                problems.append(f"etcd client does not support {', '.join(unsupported)}")
            if self.read_mode not in ETCD_READ_MODES:
                problems.append(f"etcd reads must be one of {ETCD_READ_MODES}")
            if self.quorum != "majority":
                problems.append("etcd has only quorum 'majority'")
        if self.stamp_values and self.value_size < 8:
            problems.append("stamped values need value size >= 8")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def worker_count(self) -> int:
        """More processes than clients would leave some idle."""
        return min(self.processes, self.clients)

    def clients_of_worker(self, worker: int) -> int:
        """Clients split as evenly as possible; the first workers take the remainder."""
        base, extra = divmod(self.clients, self.worker_count)
        return base + (1 if worker < extra else 0)

    def key(self, index: int) -> str:
        """Zero-padded so that key order equals index order (ranges stay inside the key space)."""
        width = len(str(self.keys - 1))
        return f"{self.key_prefix}{index:0{width}d}"

    def describe(self) -> dict[str, Any]:
        """The settings as shown in the JSON summary."""
        data = attrs.asdict(self)
        data["endpoints"] = list(self.endpoints)
        data["mix"] = {name: weight for name, weight in self.mix}
        data["workers"] = self.worker_count
        return data
