"""The closed-loop load itself: grpc.aio clients issuing a weighted mix of KV requests.

grpcio's asyncio API is used (not our purerpc client) so that the load generator is a
different, well-tested gRPC implementation from the server under test and spends as
little CPU per call as Python allows.

The client is pluggable per system (`BenchConfig.system`): `GgapClient` speaks ggap's
KvService, `EtcdClient` etcd v3's KV service (bench/etcdpb), with the same operation
names and meanings, so that bench.compare drives both through one code path.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import grpc

from bench.config import OPERATIONS, BenchConfig, prefix_end
from bench.etcdpb import etcd_pb2 as epb
from bench.etcdpb import etcd_pb2_grpc
from bench.stats import RunStats
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

#: Pause after a failed request, so that a dead endpoint (which fails instantly) does not
#: turn every client into a busy loop that starves the other clients and the progress line.
ERROR_BACKOFF_S = 0.01

#: Reconnect quickly when a node restarts during a run; grpc's default backoff starts at 1 s.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
)

_READ_MODE = {
    "linearizable": pb.READ_MODE_LINEARIZABLE,
    "sequential": pb.READ_MODE_SEQUENTIAL,
    "eventual": pb.READ_MODE_EVENTUAL,
}
_QUORUM = {"majority": pb.WRITE_QUORUM_MAJORITY, "all": pb.WRITE_QUORUM_ALL}


@attrs.define
class Progress:
    """Live counters of one process, warmup included, for the once-a-second line.

    `completed` counts successful requests only; failed ones are in `errors`.
    """

    completed: int = 0
    errors: int = 0


class Endpoints:
    """One channel per endpoint for this process; requests take the endpoints in turn."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        offset: int = 0,
        tls: tuple[str, str, str] = ("", "", ""),
        system: str = "ggap",
    ) -> None:
        cacert, cert, key = tls
        if cacert:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(cacert).read_bytes(),
                private_key=Path(key).read_bytes() if key else None,
                certificate_chain=Path(cert).read_bytes() if cert else None,
            )
            self.channels = [grpc.aio.secure_channel(a, creds, options=CHANNEL_OPTIONS) for a in addresses]
        else:
            self.channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in addresses]
        stub_class = etcd_pb2_grpc.KVStub if system == "etcd" else kv_pb2_grpc.KvServiceStub
        self.stubs = [stub_class(ch) for ch in self.channels]
        self._next = offset

    def next_stub(self) -> Any:
        stub = self.stubs[self._next % len(self.stubs)]
        self._next += 1
        return stub

    async def connect(self, wait_s: float) -> None:
        """Best effort: a run against a down endpoint still goes ahead and counts errors."""

        async def one(channel: grpc.aio.Channel) -> None:
            try:
                await asyncio.wait_for(channel.channel_ready(), wait_s)
            except TimeoutError:
                pass

        await asyncio.gather(*(one(ch) for ch in self.channels))

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def stamp_value(value: bytes, now_ns: int) -> bytes:
    """`value` with its first 8 bytes replaced by `now_ns` (big-endian): the send time of a put.

    Watch benchmarks read it back from delivered events to compute the delivery lag.
    """
    return now_ns.to_bytes(8, "big") + value[8:]


def value_stamp(value: bytes) -> int | None:
    """The send time (ns) embedded by `stamp_value`, or None for a value too short to hold one."""
    return int.from_bytes(value[:8], "big") if len(value) >= 8 else None


class BaseClient:
    """One in-flight request at a time, with its own random stream and value buffer.

    Subclasses implement the operations of `OPERATIONS` they support; each takes a key and
    returns None or a short outcome word ("not_found", "compare_failed", ...).
    """

    def __init__(self, cfg: BenchConfig, endpoints: Endpoints, rng: random.Random) -> None:
        self.cfg = cfg
        self.endpoints = endpoints
        self.rng = rng
        self._value = rng.randbytes(cfg.value_size)
        self.range_end = prefix_end(cfg.key_prefix)
        # Highest store revision this client has seen: sequential reads ask for at least it
        # (read-your-writes from any node) and the txn CAS compares against it.
        self.revision = 0
        self._ops: dict[str, Callable[[str], Awaitable[str | None]]] = {
            name: getattr(self, name) for name in OPERATIONS if hasattr(self, name)
        }

    @property
    def value(self) -> bytes:
        """The value to write now: with the send time in front when `cfg.stamp_values`."""
        return stamp_value(self._value, time.time_ns()) if self.cfg.stamp_values else self._value

    def op(self, name: str) -> Callable[[str], Awaitable[str | None]]:
        try:
            return self._ops[name]
        except KeyError:
            raise ValueError(f"{self.cfg.system} client has no operation {name!r}") from None

    async def put(self, key: str) -> str | None:
        raise NotImplementedError

    def _seen_revision(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision


class GgapClient(BaseClient):
    """ggap's KvService."""

    def __init__(self, cfg: BenchConfig, endpoints: Endpoints, rng: random.Random) -> None:
        super().__init__(cfg, endpoints, rng)
        self.read_mode = _READ_MODE[cfg.read_mode]
        self.quorum = _QUORUM[cfg.quorum]

    def _seen(self, header: Any) -> None:
        self._seen_revision(header.revision)

    @property
    def _min_revision(self) -> int:
        return self.revision if self.cfg.read_mode == "sequential" else 0

    async def put(self, key: str) -> str | None:
        req = pb.PutRequest(key=key, value=self.value, quorum=self.quorum)
        resp = await self.endpoints.next_stub().Put(req, timeout=self.cfg.timeout)
        self._seen(resp.header)
        return None

    async def get(self, key: str) -> str | None:
        req = pb.GetRequest(key=key, read_mode=self.read_mode, min_revision=self._min_revision)
        resp = await self.endpoints.next_stub().Get(req, timeout=self.cfg.timeout)
        self._seen(resp.header)
        return None if resp.found else "not_found"

    async def delete(self, key: str) -> str | None:
        req = pb.DeleteRequest(key=key, quorum=self.quorum)
        resp = await self.endpoints.next_stub().Delete(req, timeout=self.cfg.timeout)
        self._seen(resp.header)
        return None if resp.deleted else "not_found"

    async def range(self, key: str) -> str | None:
        req = pb.RangeRequest(
            start=key,
            end=self.range_end,
            limit=self.cfg.range_limit,
            read_mode=self.read_mode,
            min_revision=self._min_revision,
        )
        resp = await self.endpoints.next_stub().Range(req, timeout=self.cfg.timeout)
        self._seen(resp.header)
        return None if resp.kvs else "empty"

    async def txn(self, key: str) -> str | None:
        """Compare-and-swap: write the key only if nobody changed it since our last answer."""
        req = pb.TxnRequest(
            compare=[
                pb.Compare(
                    key=key,
                    target=pb.COMPARE_TARGET_MOD_REVISION,
                    op=pb.COMPARE_OP_LESS,
                    number=self.revision + 1,
                )
            ],
            success=[pb.TxnOp(put=pb.PutRequest(key=key, value=self.value))],
            failure=[pb.TxnOp(get=pb.GetRequest(key=key))],
            quorum=self.quorum,
        )
        resp = await self.endpoints.next_stub().Txn(req, timeout=self.cfg.timeout)
        self._seen(resp.header)
        return None if resp.succeeded else "compare_failed"


#: Kept for callers of the single-system days.
Client = GgapClient


class EtcdClient(BaseClient):
    """etcd v3's KV service, the same operations with the same meaning as `GgapClient`.

    Reads: linearizable is etcd's default Range, eventual is `serializable=true` (answered
    by the member from its own state). etcd has no "sequential" mode here.
    """

    def __init__(self, cfg: BenchConfig, endpoints: Endpoints, rng: random.Random) -> None:
        super().__init__(cfg, endpoints, rng)
        if cfg.read_mode not in ("linearizable", "eventual"):
            raise ValueError(f"etcd client: read mode {cfg.read_mode!r} is not supported")
        if cfg.quorum != "majority":
            raise ValueError("etcd client: only quorum 'majority' exists in etcd")
        self.serializable = cfg.read_mode == "eventual"
        self.range_end_b = self.range_end.encode()

    async def put(self, key: str) -> str | None:
        req = epb.PutRequest(key=key.encode(), value=self.value)
        resp = await self.endpoints.next_stub().Put(req, timeout=self.cfg.timeout)
        self._seen_revision(resp.header.revision)
        return None

    async def get(self, key: str) -> str | None:
        req = epb.RangeRequest(key=key.encode(), serializable=self.serializable)
        resp = await self.endpoints.next_stub().Range(req, timeout=self.cfg.timeout)
        self._seen_revision(resp.header.revision)
        return None if resp.kvs else "not_found"

    async def range(self, key: str) -> str | None:
        req = epb.RangeRequest(
            key=key.encode(),
            range_end=self.range_end_b,
            limit=self.cfg.range_limit,
            serializable=self.serializable,
        )
        resp = await self.endpoints.next_stub().Range(req, timeout=self.cfg.timeout)
        self._seen_revision(resp.header.revision)
        return None if resp.kvs else "empty"

    async def txn(self, key: str) -> str | None:
        """Compare-and-swap: write the key only if nobody changed it since our last answer."""
        k = key.encode()
        req = epb.TxnRequest(
            compare=[
                epb.Compare(
                    key=k,
                    target=epb.Compare.MOD,
                    result=epb.Compare.LESS,
                    mod_revision=self.revision + 1,
                )
            ],
            success=[epb.RequestOp(request_put=epb.PutRequest(key=k, value=self.value))],
            failure=[epb.RequestOp(request_range=epb.RangeRequest(key=k))],
        )
        resp = await self.endpoints.next_stub().Txn(req, timeout=self.cfg.timeout)
        self._seen_revision(resp.header.revision)
        return None if resp.succeeded else "compare_failed"


CLIENTS: dict[str, type[BaseClient]] = {"ggap": GgapClient, "etcd": EtcdClient}


def make_client(cfg: BenchConfig, endpoints: Endpoints, rng: random.Random) -> BaseClient:
    """The client of `cfg.system`."""
    return CLIENTS[cfg.system](cfg, endpoints, rng)


def make_endpoints(cfg: BenchConfig, offset: int = 0) -> Endpoints:
    """This process's channels to `cfg.endpoints`, with the stubs of `cfg.system`."""
    tls = (cfg.cacert, cfg.cert, cfg.key_file)
    return Endpoints(cfg.endpoints, offset=offset, tls=tls, system=cfg.system)


def _error_code(exc: grpc.RpcError) -> str:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    return code.name if code is not None else type(exc).__name__


async def preload(cfg: BenchConfig, endpoints: Endpoints) -> dict[str, Any]:
    """Write every key once, `cfg.clients` at a time, so that gets and ranges find data."""
    client = make_client(cfg, endpoints, random.Random(cfg.seed))
    indexes = iter(range(cfg.keys))
    stats = RunStats()
    started = time.perf_counter()

    async def writer() -> None:
        for index in indexes:
            t0 = time.perf_counter_ns()
            try:
                await client.put(cfg.key(index))
            except grpc.RpcError as exc:
                stats.op("put").record_error(_error_code(exc))
                await asyncio.sleep(ERROR_BACKOFF_S)
            else:
                stats.op("put").record_ok(time.perf_counter_ns() - t0)

    await asyncio.gather(*(writer() for _ in range(min(cfg.clients, cfg.keys))))
    seconds = time.perf_counter() - started
    put = stats.op("put")
    return {
        "keys": cfg.keys,
        "written": put.count,
        "errors": put.error_count,
        "errors_by_code": dict(put.errors),
        "seconds": round(seconds, 3),
    }


async def run_load(
    cfg: BenchConfig, worker: int, clients: int, endpoints: Endpoints, progress: Progress
) -> tuple[RunStats, float]:
    """Run warmup then measurement from now; returns the stats and the measured seconds.

    An operation belongs to the measurement when it starts inside the window; it is
    recorded with its full latency even if it ends after the window closed, so slow
    requests at the edge are not dropped from the tail.
    """
    names = [name for name, _ in cfg.mix]
    weights = [weight for _, weight in cfg.mix]
    stats = RunStats()
    for name in names:
        stats.op(name)
    start = time.perf_counter_ns()
    measure_from = start + int(cfg.warmup * 1e9)
    measure_until = measure_from + int(cfg.duration * 1e9)
    seed = None if cfg.seed is None else cfg.seed * 1_000_003 + worker * 10_007

    async def client_loop(index: int) -> None:
        rng = random.Random(None if seed is None else seed + index)
        client = make_client(cfg, endpoints, rng)
        choose = rng.choices
        while True:
            t0 = time.perf_counter_ns()
            if t0 >= measure_until:
                return
            name = choose(names, weights)[0]
            key = cfg.key(rng.randrange(cfg.keys))
            try:
                outcome = await client.op(name)(key)
            except grpc.RpcError as exc:
                progress.errors += 1
                if t0 >= measure_from:
                    stats.op(name).record_error(_error_code(exc))
                await asyncio.sleep(ERROR_BACKOFF_S)
            else:
                progress.completed += 1
                if t0 >= measure_from:
                    stats.op(name).record_ok(time.perf_counter_ns() - t0, outcome)

    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return stats, (measure_until - measure_from) / 1e9
