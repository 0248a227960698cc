"""Snapshots at scale: how long one takes, what it does to write latency, how long a wiped
follower takes to catch up by InstallSnapshot.

    python -m bench.snapshot --keys 1000000 --duration 20

Two 3-node clusters of this tree run one after the other, each preloaded with `--keys`
keys (Txns of 125 puts): one that never snapshots (`raft.snapshot_entries` huge) and one
that snapshots every `--snapshot-entries` entries. Each then serves a Put load for
`--duration` seconds, and the script prints both runs' ops/s, p50 and p99 (the
difference is what snapshots taken during the load cost), the snapshot durations the
snapshotting leader logged, and then kills one follower of the snapshotting cluster,
wipes its data dir, restarts it and times its catch-up (to the leader's commit index).
Numbers, never assertions: this machine is shared and noisy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import grpc

from bench.ab import NodeGroup, Tree
from bench.config import BenchConfig
from bench.runner import run
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

PER_TXN = 125
_SNAP_LINE = re.compile(r"snapshot at index (\d+) .* took ([0-9.]+)s")


def _preload(addr: str, keys: int, threads: int = 8) -> float:
    started = time.monotonic()
    starts = list(range(0, keys, PER_TXN))
    errors: list[BaseException] = []

    def worker(mine: list[int]) -> None:
        with grpc.insecure_channel(addr) as ch:
            stub = kv_pb2_grpc.KvServiceStub(ch)
            try:
                for s in mine:
                    ops = [
                        pb.TxnOp(put=pb.PutRequest(key=f"bench/{i}", value=b"x" * 128))
                        for i in range(s, min(keys, s + PER_TXN))
                    ]
                    stub.Txn(pb.TxnRequest(success=ops), timeout=60)
            except BaseException as exc:
                errors.append(exc)

    ts = [threading.Thread(target=worker, args=(starts[t::threads],)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.monotonic() - started


def _status(addr: str) -> pb.StatusResponse:
    with grpc.insecure_channel(addr) as ch:
        return kv_pb2_grpc.ClusterServiceStub(ch).Status(pb.StatusRequest(), timeout=5)


def _leader(group: NodeGroup) -> int:
    for _ in range(200):
        ids = {_status(a).leader_id for a in group.client_addrs}
        if len(ids) == 1 and 0 not in ids:
            return ids.pop()
        time.sleep(0.05)
    raise RuntimeError("no agreed leader")


def _one_run(
    tree: Tree, run_dir: Path, keys: int, snapshot_entries: int, duration: float, clients: int
) -> tuple[NodeGroup, dict[str, Any], float]:
    env = {"GINNUNGAGAP_RAFT__SNAPSHOT_ENTRIES": str(snapshot_entries), "GINNUNGAGAP_LOG__LEVEL": "info"}
    group = NodeGroup(tree, 3, run_dir, env, set())
    group.start()
    leader = _leader(group)
    addr = group.client_addrs[leader - 1]
    preload_s = _preload(addr, keys)
    cfg = BenchConfig(
        endpoints=(addr,), clients=clients, duration=duration, keys=keys, mix=(("put", 100.0),), warmup=1.0
    )
    summary = run(cfg, progress_out=None)
    return group, summary, preload_s


@click.command()
@click.option("--keys", default=1_000_000, show_default=True)
@click.option("--snapshot-entries", default=4000, show_default=True)
@click.option("--duration", default=20.0, show_default=True)
@click.option("--clients", default=16, show_default=True)
def main(keys: int, snapshot_entries: int, duration: float, clients: int) -> None:
    tree = Tree("this", Path(__file__).resolve().parent.parent, sys.executable)
    base = Path(tempfile.mkdtemp(prefix="ggap-snapbench-"))
    try:
        rows = []
        runs = (("no snapshots", 10**9), (f"snapshot every {snapshot_entries}", snapshot_entries))
        for label, entries in runs:
            run_dir = base / label.replace(" ", "-")
            group, summary, preload_s = _one_run(tree, run_dir, keys, entries, duration, clients)
            total = summary.get("total", {})
            lat = total.get("latency_ms", {})
            ops = total.get("ops_per_s")
            rows.append((label, preload_s, ops, lat.get("p50"), lat.get("p99"), lat.get("max")))
            if entries == snapshot_entries:
                leader = _leader(group)
                log = group.log_path(leader).read_text(errors="replace")
                took = [(int(m.group(1)), float(m.group(2))) for m in _SNAP_LINE.finditer(log)]
                click.echo(f"snapshots taken by the leader (index, seconds): {took}")
                snaps = (group.run_dir / f"node{leader}" / "snap").glob("snapshot-*.db")
                size = max((p.stat().st_size for p in snaps), default=0)
                click.echo(f"snapshot file size: {size / 2**20:.1f} MiB")
                follower = next(i for i in (1, 2, 3) if i != leader)
                proc = group.procs[follower - 1]
                proc.kill()
                proc.wait()
                shutil.rmtree(group.run_dir / f"node{follower}")
                target = _status(group.client_addrs[leader - 1]).commit_index
                argv = proc.args
                started = time.monotonic()
                with group.log_path(follower).open("ab") as out:
                    group.procs[follower - 1] = subprocess.Popen(
                        argv, stdout=out, stderr=out, cwd=tree.path, env=group.env
                    )
                caught = None
                while time.monotonic() - started < 600:
                    try:
                        if _status(group.client_addrs[follower - 1]).applied_index >= target:
                            caught = time.monotonic() - started
                            break
                    except grpc.RpcError:
                        pass
                    time.sleep(0.1)
                click.echo(f"wiped follower caught up to index {target} in {caught and round(caught, 1)} s")
            group.stop()
        click.echo("| run | preload s | put ops/s | p50 ms | p99 ms | max ms |")
        click.echo("|---|---|---|---|---|---|")
        for r in rows:
            cells = (str(round(v, 2)) if isinstance(v, float) else str(v) for v in r)
            click.echo("| " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
