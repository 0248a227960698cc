"""What keeping space bounded costs the requests served meanwhile: the longest stall.

    python -m bench.space --keys 50000 --versions 6 --duration 20 --rounds 3

One cluster of this tree is preloaded once with `--keys` keys written `--versions` times
each (Txns of 125 puts), then stopped and its data dirs kept. Each round restores that
same data and restarts the cluster under each of three settings, interleaved:

- `idle`: nothing to do (deep history, no automatic compaction);
- `prune`: `mvcc.history_depth` 2, so the leader prunes the backlog of old versions
  (replicated Prune commands) and every node gives the freed pages back (incremental
  vacuum) while the load runs;
- `compact`: automatic compaction keeping the last 100 revisions, so the leader compacts
  the whole preload history (replicated Compact commands, in steps) during the load.

The load is a Put/Get mix on the leader for `--duration` seconds. Printed per run: ops/s,
p50, p99 and max latency (the longest stall a request saw), the in-use bytes before and
after, and how long the maintenance took to finish. Numbers, never assertions: this
machine is shared and noisy; compare the phases of one round with each other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import click
import grpc

from bench.ab import NodeGroup, Tree
from bench.config import BenchConfig
from bench.runner import run
from bench.snapshot import PER_TXN, _leader, _status
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

KEEP_REVISIONS = 100
PHASES: dict[str, dict[str, str]] = {
    "idle": {"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "1000000"},
    "prune": {"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "2"},
    "compact": {
        "GINNUNGAGAP_MVCC__HISTORY_DEPTH": "1000000",
        "GINNUNGAGAP_MVCC__AUTO_COMPACT_REVISIONS": str(KEEP_REVISIONS),
    },
}
BASE_ENV = {"GINNUNGAGAP_LOG__LEVEL": "info", "GINNUNGAGAP_MVCC__PRUNE_INTERVAL_MS": "500"}


def _preload(addr: str, keys: int, versions: int) -> float:
    started = time.monotonic()
    with grpc.insecure_channel(addr) as ch:
        stub = kv_pb2_grpc.KvServiceStub(ch)
        for v in range(versions):
            for s in range(0, keys, PER_TXN):
                ops = [
                    pb.TxnOp(put=pb.PutRequest(key=f"bench/{i}", value=f"{v}".encode() * 64))
                    for i in range(s, min(keys, s + PER_TXN))
                ]
                stub.Txn(pb.TxnRequest(success=ops), timeout=60)
    return time.monotonic() - started


def _restart(group: NodeGroup, argvs: list[list[str]], env: Mapping[str, str]) -> None:
    """The same nodes (ports, data dirs) under another environment."""
    group.env = group.tree.env(env)
    group.procs = []
    for i, argv in enumerate(argvs, start=1):
        with group.log_path(i).open("ab") as log:
            group.procs.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=group.tree.path, env=group.env)
            )  # fmt: skip
    group._wait_ready()


def _settle(
    addr: str, phase: str, since: float, limit: float = 300.0
) -> tuple[float | None, pb.StatusResponse]:
    """Seconds from `since` until the maintenance of `phase` is done: in-use bytes steady
    for 3 s (and, for compact, the compaction caught up)."""
    last_change, last_bytes = time.monotonic(), -1
    while True:
        st = _status(addr)
        now = time.monotonic()
        if st.db_size_in_use_bytes != last_bytes:
            last_bytes, last_change = st.db_size_in_use_bytes, now
        caught_up = phase != "compact" or st.compact_revision >= st.revision - KEEP_REVISIONS - 50
        if caught_up and now - last_change >= 3.0:
            return last_change - since, st
        if now - since > limit:
            return None, st
        time.sleep(0.25)


@click.command()
@click.option("--keys", default=50_000, show_default=True)
@click.option("--versions", default=6, show_default=True, help="times each key is written by the preload")
@click.option("--nodes", default=3, show_default=True)
@click.option("--duration", default=20.0, show_default=True)
@click.option("--clients", default=16, show_default=True)
@click.option("--rounds", default=3, show_default=True)
def main(keys: int, versions: int, nodes: int, duration: float, clients: int, rounds: int) -> None:
    tree = Tree("this", Path(__file__).resolve().parent.parent, sys.executable)
    base = Path(tempfile.mkdtemp(prefix="ggap-spacebench-"))
    group = NodeGroup(tree, nodes, base / "run", {**BASE_ENV, **PHASES["idle"]}, set())
    rows: list[tuple[Any, ...]] = []
    try:
        group.start()
        addr = group.client_addrs[_leader(group) - 1]
        preload_s = _preload(addr, keys, versions)
        seeded = _status(addr)
        click.echo(
            f"preloaded {keys} keys x {versions} versions in {preload_s:.1f} s: revision {seeded.revision}, "
            f"{seeded.db_size_in_use_bytes / 2**20:.1f} MiB in use"
        )
        group.stop()
        argvs = [list(cast(list[str], p.args)) for p in group.procs]  # Popen.args is the argv we passed
        pristine = base / "pristine"
        for i in range(1, nodes + 1):
            shutil.copytree(group.run_dir / f"node{i}", pristine / f"node{i}")
        names = list(PHASES)
        for r in range(rounds):
            for phase in names[r % 3 :] + names[: r % 3]:
                for i in range(1, nodes + 1):
                    shutil.rmtree(group.run_dir / f"node{i}")
                    shutil.copytree(pristine / f"node{i}", group.run_dir / f"node{i}")
                _restart(group, argvs, {**BASE_ENV, **PHASES[phase]})
                addr = group.client_addrs[_leader(group) - 1]
                before = _status(addr)
                started = time.monotonic()
                cfg = BenchConfig(
                    endpoints=(addr,), clients=clients, duration=duration, warmup=0.0, keys=keys,
                    mix=(("put", 50.0), ("get", 50.0)),
                )  # fmt: skip
                total = run(cfg, progress_out=None).get("total", {})
                done_s, after = _settle(addr, phase, started)
                lat = total.get("latency_ms", {})
                rows.append((
                    r + 1, phase, total.get("ops_per_s"), lat.get("p50"), lat.get("p99"), lat.get("max"),
                    before.db_size_in_use_bytes / 2**20, after.db_size_in_use_bytes / 2**20,
                    after.db_size_bytes / 2**20, done_s,
                ))  # fmt: skip
                group.stop()
        header = (
            "| round | phase | ops/s | p50 ms | p99 ms | max ms "
            "| in use before MiB | after MiB | files MiB | done s |"
        )
        click.echo(header)
        click.echo("|" + "---|" * (header.count("|") - 1))
        for row in rows:
            cells = (f"{v:.1f}" if isinstance(v, float) else str(v) for v in row)
            click.echo("| " + " | ".join(cells) + " |")
    finally:
        group.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
