"""ggap's Python client faces next to raw grpcio, on one cluster: `python -m bench.clients`.

Every cell is `--callers` concurrent callers putting `--value-size`-byte values to their
own keys for `--duration` seconds (after `--warmup`), on one fresh 3-node cluster:

  grpcio-sync       grpc blocking stub to the leader, one thread per caller
  client-sync       ggap.client.Client shared by those threads (sessions on)
  grpcio-aio        grpc.aio stub to the leader, one asyncio task per caller
  async-asyncio     AsyncClient under asyncio (sessions on)
  async-nosession   the same with sessions=False: the difference is what a session costs
  async-trio        AsyncClient under trio (sessions on)

The clients get every endpoint and find the leader themselves; the raw stubs are pointed
at it. Rounds run every cell once, in an order rotated each round (the machine drifts;
adjacent runs share its noise). Reported per cell: the median over rounds of ops/s, p50
and p99 latency, client CPU per call (this process, all threads) and server CPU per call
(the three nodes), both over the measured window.

`--failovers N` then kills the leader (SIGKILL) N times with a sync Client writing in a
loop, and reports the time from the kill to its first successful Put (p50/p99/max), the
node restarted after each. Timings are the machine's of the day: compare ratios.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import attrs
import click
import grpc
import grpc.aio

from bench.ab import NodeGroup, Tree, _env, cpu_seconds, median
from bench.compare import ggap_leader_addr
from bench.stats import LatencySamples
from ggap.client import AsyncClient, Client
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

FACES: tuple[str, ...] = (
    "grpcio-sync",
    "client-sync",
    "grpcio-aio",
    "async-asyncio",
    "async-nosession",
    "async-trio",
)


@attrs.frozen
class Load:
    callers: int
    duration: float
    warmup: float
    value: bytes


@attrs.define
class Window:
    """Samples CPU (this process and the nodes) when the measured window opens and closes;
    calls record their latency only when they start inside it."""

    load: Load
    node_pids: Sequence[int]
    opened: float = 0.0
    closes: float = 0.0
    samples: list[tuple[float, float, float]] = attrs.field(factory=list)
    latencies: LatencySamples = attrs.field(factory=LatencySamples)

    def start(self) -> None:
        now = time.monotonic()
        self.opened = now + self.load.warmup
        self.closes = self.opened + self.load.duration

    def sample(self) -> None:
        self.samples.append((time.monotonic(), time.process_time(), cpu_seconds(self.node_pids)))

    def record(self, started: float, ended: float) -> None:
        if self.opened <= started < self.closes:
            self.latencies.record(int((ended - started) * 1e9))

    def result(self) -> dict[str, Any]:
        (t0, c0, s0), (t1, c1, s1) = self.samples
        ops = len(self.latencies)
        return {
            "ops": ops,
            "ops_per_s": ops / (t1 - t0),
            "p50_ms": self.latencies.percentile(50) / 1e6 if ops else None,
            "p99_ms": self.latencies.percentile(99) / 1e6 if ops else None,
            "client_cpu_us_per_op": 1e6 * (c1 - c0) / ops if ops else None,
            "server_cpu_us_per_op": 1e6 * (s1 - s0) / ops if ops else None,
        }


def _sampler(w: Window) -> threading.Thread:
    """A thread that samples at the window's edges (the callers may be threads, asyncio
    or trio tasks: one timer for all). Joined by the caller of `run_face`."""

    def run() -> None:
        time.sleep(max(0.0, w.opened - time.monotonic()))
        w.sample()
        time.sleep(max(0.0, w.closes - time.monotonic()))
        w.sample()

    return threading.Thread(target=run, name="bench-window")


def _keys(face: str, caller: int) -> str:
    return f"bench-clients/{face}/{caller}"


def _threads(w: Window, call: Callable[[int], object]) -> None:
    def loop(i: int) -> None:
        while True:
            t0 = time.monotonic()
            if t0 >= w.closes:
                return
            call(i)
            w.record(t0, time.monotonic())

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(w.load.callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


async def _tasks(w: Window, call: Callable[[int], Awaitable[Any]], backend: str) -> None:
    async def loop(i: int) -> None:
        while True:
            t0 = time.monotonic()
            if t0 >= w.closes:
                return
            await call(i)
            w.record(t0, time.monotonic())

    if backend == "asyncio":
        await asyncio.gather(*(loop(i) for i in range(w.load.callers)))
    else:
        async with anyio.create_task_group() as tg:
            for i in range(w.load.callers):
                tg.start_soon(loop, i)


def run_face(face: str, endpoints: Sequence[str], leader: str, w: Window) -> None:
    value = w.load.value
    sampler = _sampler(w)
    w.start()
    sampler.start()
    try:
        if face == "grpcio-sync":
            with grpc.insecure_channel(leader) as ch:
                stub = kv_pb2_grpc.KvServiceStub(ch)
                _threads(w, lambda i: stub.Put(pb.PutRequest(key=_keys(face, i), value=value), timeout=10))
        elif face == "client-sync":
            with Client(list(endpoints)) as c:
                _threads(w, lambda i: c.put(_keys(face, i), value))
        elif face == "grpcio-aio":

            async def aio() -> None:
                async with grpc.aio.insecure_channel(leader) as ch:
                    stub = kv_pb2_grpc.KvServiceStub(ch)

                    def put(i: int) -> Awaitable[Any]:
                        return stub.Put(pb.PutRequest(key=_keys(face, i), value=value), timeout=10)

                    await _tasks(w, put, "asyncio")

            asyncio.run(aio())
        else:
            backend = "trio" if face == "async-trio" else "asyncio"

            async def client_face() -> None:
                async with AsyncClient(list(endpoints), sessions=face != "async-nosession") as c:
                    await _tasks(w, lambda i: c.put(_keys(face, i), value), backend)

            anyio.run(client_face, backend=backend)
    finally:
        sampler.join()


def measure_failovers(group: NodeGroup, n: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Kill the leader n times under a sync Client's Put loop; ms to the first success."""
    times: list[float] = []
    for round_no in range(1, n + 1):
        leader_addr = ggap_leader_addr(group)
        victim = group.client_addrs.index(leader_addr) + 1
        with Client(group.client_addrs, timeout=30.0) as c:
            for _ in range(20):  # warm: connections open, the leader known, a session open
                c.put("bench-failover", b"x")
            killed = time.monotonic()
            group.kill(victim)
            c.put("bench-failover", b"y")
            times.append(1000 * (time.monotonic() - killed))
        say(f"failover {round_no}/{n}: first Put {times[-1]:.0f} ms after kill -9 of node {victim}")
        group.restart(victim)
    samples = LatencySamples(int(t * 1e6) for t in times)  # ns, for its nearest-rank percentiles
    return {
        "failovers": n,
        "p50_ms": samples.percentile(50) / 1e6,
        "p99_ms": samples.percentile(99) / 1e6,
        "max_ms": samples.max() / 1e6,
        "all_ms": [round(t, 1) for t in times],
    }


def summarize(runs: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = []
    for face, rs in runs.items():
        rows.append(
            {"face": face, "rounds": len(rs)} | {k: median(r[k] for r in rs) for k in rs[0] if k != "ops"}
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    base = next((r for r in rows if r["face"] == "grpcio-aio"), None)
    head = "| face | ops/s | vs grpcio-aio | p50 ms | p99 ms | client CPU µs/op | server CPU µs/op |"
    out = [head, "|---|---:|---:|---:|---:|---:|---:|"]

    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    for r in rows:
        rel = r["ops_per_s"] / base["ops_per_s"] if base and base["ops_per_s"] else None
        out.append(
            f"| {r['face']} | {f(r['ops_per_s'], '{:.0f}')} | {f(rel, '{:.2f}')} "
            f"| {f(r['p50_ms'], '{:.2f}')} | {f(r['p99_ms'], '{:.2f}')} "
            f"| {f(r['client_cpu_us_per_op'], '{:.0f}')} | {f(r['server_cpu_us_per_op'], '{:.0f}')} |"
        )
    return "\n".join(out)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--faces", default=",".join(FACES), show_default=True, help="Comma-separated cells to run.")
@click.option("--callers", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--warmup", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--value-size", default=256, show_default=True, type=click.IntRange(min=0))
@click.option("--failovers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--env", "env", multiple=True, callback=_env, help="KEY=VALUE for the nodes (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def clients_command(
    faces: str,
    callers: int,
    duration: float,
    warmup: float,
    rounds: int,
    value_size: int,
    failovers: int,
    env: dict[str, str],
    as_json: bool,
) -> None:
    """Calls/s of the Python client faces next to raw grpcio (see the module doc)."""
    chosen = [f.strip() for f in faces.split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(FACES))
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown face(s) {unknown}; choose from {', '.join(FACES)}", param_hint="--faces"
        )

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    tree = Tree(label="this", path=Path(__file__).resolve().parents[1], python=sys.executable)
    load = Load(callers=callers, duration=duration, warmup=warmup, value=b"v" * value_size)
    runs: dict[str, list[dict[str, Any]]] = {f: [] for f in chosen}
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        group = NodeGroup(tree, 3, Path(tmp), env, set())
        try:
            group.start()
            leader = ggap_leader_addr(group)
            for r in range(rounds):
                order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
                for face in order:
                    w = Window(load, group.pids)
                    run_face(face, group.client_addrs, leader, w)
                    group.check_alive()
                    res = w.result()
                    runs[face].append(res)
                    say(f"round {r + 1}/{rounds} {face}: {res['ops_per_s']:.0f} ops/s")
            result: dict[str, Any] = {"cells": summarize(runs), "runs": runs}
            if failovers:
                result["failover"] = measure_failovers(group, failovers, say)
        finally:
            group.stop()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{callers} callers, {value_size} B puts, {duration:g} s measured after {warmup:g} s warmup, "
        f"{rounds} round(s), median of rounds"
    )
    print(format_table(result["cells"]))
    if "failover" in result:
        fo = result["failover"]
        print(
            f"failover after kill -9 of the leader ({fo['failovers']} times): first Put p50 "
            f"{fo['p50_ms']:.0f} ms, p99 {fo['p99_ms']:.0f} ms, max {fo['max_ms']:.0f} ms"
        )


def main(argv: Sequence[str] | None = None) -> None:
    clients_command.main(args=list(argv) if argv is not None else None, prog_name="python -m bench.clients")


if __name__ == "__main__":
    main()
