"""Watch fan-out load: many watchers on one prefix, in a process of their own.

The watchers count every delivered event and its delivery lag: the receive time (wall
clock, read once per WatchResponse) minus the send time the putting client wrote into the
first 8 bytes of the value (`bench.load.stamp_value`). Both ends run on this machine, so
they share CLOCK_REALTIME; the lag includes the put's own commit latency.

Readiness is checked the same way for both systems: the process writes a probe key under
the watched prefix (again every half second) until every watcher has seen it, so the
watch is known to be registered before the measured load starts.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import queue
import time
import traceback
from array import array
from collections.abc import Sequence
from typing import Any

import attrs
import grpc

from bench.config import prefix_end
from bench.etcdpb import etcd_pb2 as epb
from bench.etcdpb import etcd_pb2_grpc
from bench.load import CHANNEL_OPTIONS, value_stamp
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

READY_TIMEOUT_S = 30.0
PROBE_SUFFIX = "~watch-probe"


class WatchError(RuntimeError):
    """The watchers could not be set up or did not report."""


@attrs.frozen
class WatchSpec:
    system: str
    endpoints: tuple[str, ...]
    watchers: int
    prefix: str


def lag_ns(value: bytes, recv_ns: int) -> int | None:
    """Delivery lag of one event: receive time minus the send time stamped into its value."""
    sent = value_stamp(value)
    if sent is None or sent <= 0:
        return None
    return recv_ns - sent


def nearest_rank(sorted_values: Sequence[int], p: float) -> int | None:
    """Nearest-rank percentile (an observed value) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def window_stats(recv: Sequence[int], lags: Sequence[int], start_ns: int, end_ns: int) -> dict[str, Any]:
    """Events received in [start_ns, end_ns): how many, per second, and their lag percentiles (ms).

    `recv[i]` is the receive time of event i and `lags[i]` its lag (-1 when its value held
    no send time: counted as delivered, not in the lag percentiles).
    """
    if end_ns <= start_ns:
        raise ValueError("empty window")
    picked = [lags[i] for i in range(len(recv)) if start_ns <= recv[i] < end_ns]
    stamped = sorted(v for v in picked if v >= 0)
    seconds = (end_ns - start_ns) / 1e9

    def ms(v: int | None) -> float | None:
        return None if v is None else v / 1e6

    return {
        "events": len(picked),
        "events_per_s": len(picked) / seconds,
        "lag_p50_ms": ms(nearest_rank(stamped, 50)),
        "lag_p99_ms": ms(nearest_rank(stamped, 99)),
        "lag_max_ms": ms(stamped[-1] if stamped else None),
        "window_s": round(seconds, 3),
    }


class _Sink:
    def __init__(self, watchers: int, probe: bytes) -> None:
        self.recv: array[int] = array("q")
        self.lags: array[int] = array("q")
        self.probe = probe
        self.saw_probe = [False] * watchers

    def events(self, watcher: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        now = time.time_ns()
        for key, value in items:
            if key == self.probe:
                self.saw_probe[watcher] = True
                continue
            lag = lag_ns(value, now)
            self.recv.append(now)
            self.lags.append(-1 if lag is None else lag)


async def _ggap_watch(stub: Any, prefix: str, index: int, sink: _Sink) -> None:
    call = stub.Watch(pb.WatchRequest(prefix=prefix))
    async for resp in call:
        sink.events(index, [(ev.kv.key.encode(), ev.kv.value) for ev in resp.events])


async def _etcd_watch(stub: Any, prefix: str, index: int, sink: _Sink) -> None:
    call = stub.Watch()
    create = epb.WatchCreateRequest(key=prefix.encode(), range_end=prefix_end(prefix).encode())
    await call.write(epb.WatchRequest(create_request=create))
    async for resp in call:
        if resp.canceled:
            raise WatchError(f"etcd cancelled watcher {index}: {resp.cancel_reason}")
        sink.events(index, [(ev.kv.key, ev.kv.value) for ev in resp.events])


async def _probe_put(spec: WatchSpec, channel: grpc.aio.Channel, key: str) -> None:
    if spec.system == "etcd":
        await etcd_pb2_grpc.KVStub(channel).Put(epb.PutRequest(key=key.encode(), value=b"probe"), timeout=5)
    else:
        await kv_pb2_grpc.KvServiceStub(channel).Put(pb.PutRequest(key=key, value=b"probe"), timeout=5)


async def _watch_async(spec: WatchSpec, messages: Any, control: Any) -> None:
    channels = [grpc.aio.insecure_channel(a, options=CHANNEL_OPTIONS) for a in spec.endpoints]
    probe = spec.prefix + PROBE_SUFFIX
    sink = _Sink(spec.watchers, probe.encode())
    tasks: list[asyncio.Task[None]] = []
    try:
        for i in range(spec.watchers):
            channel = channels[i % len(channels)]
            if spec.system == "etcd":
                coro = _etcd_watch(etcd_pb2_grpc.WatchStub(channel), spec.prefix, i, sink)
            else:
                coro = _ggap_watch(kv_pb2_grpc.KvServiceStub(channel), spec.prefix, i, sink)
            tasks.append(asyncio.create_task(coro))
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(sink.saw_probe):
            for task in tasks:
                if task.done():
                    task.result()  # raises what ended the watcher
                    raise WatchError("a watch stream ended before the load started")
            if time.monotonic() > deadline:
                raise WatchError(f"only {sum(sink.saw_probe)} of {spec.watchers} watchers ready in time")
            await _probe_put(spec, channels[0], probe)
            await asyncio.sleep(0.5)
        messages.put(("ready", None))
        while True:
            try:
                order = await asyncio.to_thread(control.get, True, 0.25)
            except queue.Empty:
                for task in tasks:
                    if task.done():
                        task.result()
                        raise WatchError("a watch stream ended during the load") from None
                continue
            break
        kind, start_ns, end_ns = order
        if kind != "window":
            raise WatchError(f"unexpected control message {kind!r}")
        await asyncio.sleep(0.5)  # events of the last puts of the window are still on their way
        messages.put(("result", window_stats(sink.recv, sink.lags, start_ns, end_ns)))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()


def _watch_main(spec: WatchSpec, messages: Any, control: Any) -> None:
    try:
        asyncio.run(_watch_async(spec, messages, control))
    except BaseException:
        messages.put(("error", traceback.format_exc()))
        raise SystemExit(1) from None


class WatchFanout:
    """The watcher process: `start()` returns once every watcher is registered, `finish()` the stats."""

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        ctx = mp.get_context("spawn")
        self.messages = ctx.Queue()
        self.control = ctx.Queue()
        self.proc = ctx.Process(
            target=_watch_main, args=(spec, self.messages, self.control), name="bench-watchers", daemon=True
        )

    def _get(self, timeout: float) -> tuple[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, payload = self.messages.get(timeout=0.2)
            except queue.Empty:
                if not self.proc.is_alive() and self.messages.empty():
                    raise WatchError(f"watcher process exited with code {self.proc.exitcode}") from None
                if time.monotonic() > deadline:
                    raise WatchError("watcher process did not answer in time") from None
                continue
            if kind == "error":
                raise WatchError(f"watcher process failed:\n{payload}")
            return kind, payload

    def start(self) -> None:
        self.proc.start()
        self._get(READY_TIMEOUT_S + 30)

    def finish(self, start_ns: int, end_ns: int) -> dict[str, Any]:
        self.control.put(("window", start_ns, end_ns))
        _, result = self._get(60)
        return dict(result)

    def stop(self) -> None:
        if self.proc.pid is None:
            return
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
