"""What resizing and restarting a live cluster costs: join time, and the longest write stall.

    python -m bench.membership --keys 100000,1000000 --transfers 5

For each `--keys` value, a 3-node cluster of this tree is preloaded with that many keys
(Txns of 125 puts, 128-byte values), then, while a write probe runs:

1. **join**: node 4 starts with `--join` (every member's client address) and
   `--auto-promote`; timed from its start until the cluster lists it as a learner, until
   it serves, until its applied index reaches the leader's commit index, and until it is
   a voter;
2. **transfer**: `--transfers` TransferLeader calls, each to the next voter in turn, a
   few seconds apart;
3. **rolling restart**: every node in turn gets SIGTERM (a leader hands its leadership
   off first), is restarted from its data dir and waited for until it caught up.

The probe is `--probe-threads` threads, each writing its own keys one Put at a time,
each Put to the next endpoint in turn (so every node's part in a stall shows); a failed
Put is retried on the next endpoint for up to `RETRY_FOR_S`, as a client library would.
For each step the script prints the longest gap between two successful writes (the
stall a client saw), how many attempts failed, how many writes gave up, and for restarts
whether leadership moved by hand-off (term +1, no election timeout) or by an election.
Numbers, never assertions: this machine is shared and noisy.
"""

from __future__ import annotations

import bisect
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import attrs
import click
import grpc

from bench.ab import NodeGroup, Tree, free_port
from bench.load import CHANNEL_OPTIONS
from bench.snapshot import _preload
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

#: A write keeps being retried (on the next endpoint) this long before it counts as failed.
RETRY_FOR_S = 10.0
_PUT_TIMEOUT_S = 2.0
_RETRY_PAUSE_S = 0.01
_STEP_TIMEOUT_S = 900.0
ENV = {"GINNUNGAGAP_LOG__LEVEL": "info"}


class WriteProbe:
    """Threads that each write one key at a time and record when each write succeeded.

    The endpoints can change while it runs (a node joins); each thread picks its next
    endpoint from the current list.
    """

    def __init__(self, addrs: list[str], threads: int) -> None:
        self.addrs = list(addrs)
        self.threads = threads
        self.done: list[float] = []  # completion times (monotonic) of successful writes
        self.errors: Counter[str] = Counter()
        self.gave_up = 0
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()

    def _stub(self, addr: str) -> kv_pb2_grpc.KvServiceStub:
        with self._lock:
            channel = self._channels.get(addr)
            if channel is None:
                channel = self._channels[addr] = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
        return kv_pb2_grpc.KvServiceStub(channel)

    def start(self) -> None:
        for t in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(t,), name=f"probe-{t}", daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join()
        for channel in self._channels.values():
            channel.close()

    def _loop(self, me: int) -> None:
        turn, n = me, 0
        while not self._stop.is_set():
            request = pb.PutRequest(key=f"probe/{me}/{n % 1000}", value=b"p" * 64)
            n += 1
            first = time.monotonic()
            while not self._stop.is_set():
                addrs = self.addrs
                addr = addrs[turn % len(addrs)]
                turn += 1
                try:
                    self._stub(addr).Put(request, timeout=_PUT_TIMEOUT_S)
                except grpc.RpcError as exc:
                    self.errors[cast(grpc.Call, exc).code().name] += 1
                    if time.monotonic() - first > RETRY_FOR_S:
                        self.gave_up += 1
                        break
                    time.sleep(_RETRY_PAUSE_S)
                else:
                    self.done.append(time.monotonic())
                    break

    def mark(self) -> tuple[float, int, int]:
        """Where a step starts: now, failed attempts so far, writes given up so far."""
        return time.monotonic(), sum(self.errors.values()), self.gave_up

    def since(self, mark: tuple[float, int, int]) -> StepLoad:
        """The probe's view of the step that started at `mark` and ends now."""
        start, errors, gave_up = mark
        end = time.monotonic()
        done = sorted(self.done)
        lo, hi = bisect.bisect_left(done, start), bisect.bisect_right(done, end)
        points = [start, *done[lo:hi], end]
        gap = max(b - a for a, b in itertools.pairwise(points))
        return StepLoad(
            seconds=end - start,
            writes=hi - lo,
            longest_gap_ms=gap * 1000,
            failed_attempts=sum(self.errors.values()) - errors,
            gave_up=self.gave_up - gave_up,
        )


@attrs.frozen
class StepLoad:
    seconds: float
    writes: int
    longest_gap_ms: float
    failed_attempts: int
    gave_up: int


def _stubs(addr: str) -> tuple[grpc.Channel, kv_pb2_grpc.ClusterServiceStub]:
    channel = grpc.insecure_channel(addr)
    return channel, kv_pb2_grpc.ClusterServiceStub(channel)


def _status(addr: str) -> pb.StatusResponse | None:
    channel, stub = _stubs(addr)
    try:
        return stub.Status(pb.StatusRequest(), timeout=2)
    except grpc.RpcError:
        return None
    finally:
        channel.close()


def _members(addr: str) -> list[pb.Member]:
    channel, stub = _stubs(addr)
    try:
        got = stub.MemberList(pb.MemberListRequest(read_mode=pb.READ_MODE_EVENTUAL), timeout=2)
        return list(got.members)
    except grpc.RpcError:
        return []
    finally:
        channel.close()


def _wait(what: str, check: Any, limit: float = _STEP_TIMEOUT_S) -> float:
    """Seconds until `check()` is true, polled every 50 ms."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > limit:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


class Cluster:
    """The nodes of one run, by id: their argv, process and client address."""

    def __init__(self, group: NodeGroup) -> None:
        self.group = group
        self.argv: dict[int, list[str]] = {
            i: list(cast(list[str], p.args)) for i, p in enumerate(group.procs, start=1)
        }
        self.procs: dict[int, subprocess.Popen[bytes]] = dict(enumerate(group.procs, start=1))
        self.addr: dict[int, str] = dict(enumerate(group.client_addrs, start=1))

    def spawn(self, node_id: int) -> None:
        with self.group.log_path(node_id).open("ab") as log:
            self.procs[node_id] = subprocess.Popen(
                self.argv[node_id], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.group.tree.path, env=self.group.env,
            )  # fmt: skip

    def leader(self) -> int:
        """The leader every running node agrees on (waits for one)."""
        found: list[int] = []

        def agreed() -> bool:
            views = {st.leader_id for i in self.procs if (st := _status(self.addr[i])) is not None}
            found[:] = list(views)
            return len(views) == 1 and 0 not in views

        _wait("an agreed leader", agreed, 60)
        return found[0]

    def caught_up(self, node_id: int) -> bool:
        leader = _status(self.addr[self.leader()])
        mine = _status(self.addr[node_id])
        return leader is not None and mine is not None and mine.applied_index >= leader.commit_index

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _join(cluster: Cluster, probe: WriteProbe, node_id: int) -> dict[str, Any]:
    template = cluster.argv[1]
    ports = cluster.group.ports
    client_addr, peer_addr = f"127.0.0.1:{free_port(ports)}", f"127.0.0.1:{free_port(ports)}"
    data_dir = cluster.group.run_dir / f"node{node_id}"
    argv = [
        *template[: template.index("node") + 1],
        "--node-id", str(node_id), "--client-addr", client_addr, "--cluster-addr", peer_addr,
        "--data-dir", str(data_dir), "--join", ",".join(cluster.addr.values()), "--auto-promote",
    ]  # fmt: skip
    leader_addr = cluster.addr[cluster.leader()]
    cluster.argv[node_id], cluster.addr[node_id] = argv, client_addr
    mark = probe.mark()
    started = time.monotonic()
    cluster.spawn(node_id)

    def listed(learner: bool | None) -> bool:
        return any(
            m.id == node_id and (learner is None or m.learner == learner) for m in _members(leader_addr)
        )

    learner_s = _wait("the joiner to be listed", lambda: listed(None))
    serving_s = _wait("the joiner to serve", lambda: _status(client_addr) is not None) + learner_s
    caught_s = _wait("the joiner to catch up", lambda: cluster.caught_up(node_id)) + serving_s
    voter_s = _wait("the joiner to be promoted", lambda: listed(False)) + caught_s
    probe.addrs = [*probe.addrs, client_addr]
    st = _status(client_addr)
    return {
        "listed_s": learner_s,
        "serving_s": serving_s,
        "caught_up_s": caught_s,
        "voter_s": voter_s,
        "total_s": time.monotonic() - started,
        "joiner_db_mib": (st.db_size_bytes if st else 0) / 2**20,
        "load": probe.since(mark),
    }


def _transfers(cluster: Cluster, probe: WriteProbe, count: int) -> list[tuple[str, StepLoad]]:
    rows = []
    for _ in range(count):
        leader = cluster.leader()
        voters = [m.id for m in _members(cluster.addr[leader]) if not m.learner]
        target = voters[(voters.index(leader) + 1) % len(voters)]
        time.sleep(1.0)
        mark = probe.mark()
        channel, stub = _stubs(cluster.addr[leader])
        try:
            stub.TransferLeader(pb.TransferLeaderRequest(target_id=target), timeout=10)
            outcome = "ok"
        except grpc.RpcError as exc:
            outcome = cast(grpc.Call, exc).code().name
        finally:
            channel.close()
        # A stall shows within a second or two of the switch.
        time.sleep(2.0)
        rows.append((f"{leader} -> {target}: {outcome}", probe.since(mark)))
    return rows


def _rolling_restart(cluster: Cluster, probe: WriteProbe) -> list[tuple[str, StepLoad]]:
    rows = []
    for node_id in sorted(cluster.procs):
        time.sleep(1.0)
        leader = cluster.leader()
        before = _status(cluster.addr[leader])
        mark = probe.mark()
        log_path = cluster.group.log_path(node_id)
        offset = log_path.stat().st_size
        proc = cluster.procs[node_id]
        proc.terminate()
        code = proc.wait(timeout=60)
        with log_path.open("rb") as f:
            f.seek(offset)
            last_words = f.read().decode(errors="replace")
        cluster.spawn(node_id)
        _wait(f"node {node_id} to serve", lambda n=node_id: _status(cluster.addr[n]) is not None)  # type: ignore[misc]
        _wait(f"node {node_id} to catch up", lambda n=node_id: cluster.caught_up(n))  # type: ignore[misc]
        new_leader = cluster.leader()
        after = _status(cluster.addr[new_leader])
        how = ""
        if node_id == leader and before and after:
            handed = "handing leadership to node" in last_words and "hand-off to node" not in last_words
            how = f", leader {leader} -> {new_leader}, term +{after.raft_term - before.raft_term}"
            how += " by hand-off" if handed else " by election"
        elif before and after and after.raft_term != before.raft_term:
            how = f", term +{after.raft_term - before.raft_term} (leader {leader} -> {new_leader})"
        rows.append((f"node {node_id} (exit {code}{how})", probe.since(mark)))
    return rows


def _row(label: str, load: StepLoad) -> str:
    return (
        f"| {label} | {load.seconds:.1f} | {load.writes} | {load.longest_gap_ms:.0f} "
        f"| {load.failed_attempts} | {load.gave_up} |"
    )


def _one(tree: Tree, base: Path, keys: int, transfers: int, threads: int) -> None:
    group = NodeGroup(tree, 3, base / f"keys-{keys}", ENV, set())
    group.start()
    cluster = Cluster(group)
    probe: WriteProbe | None = None
    try:
        preload_s = _preload(cluster.addr[cluster.leader()], keys)
        click.echo(f"\n## {keys} keys (preloaded in {preload_s:.1f} s)\n")
        probe = WriteProbe(list(cluster.addr.values()), threads)
        probe.start()
        time.sleep(2.0)
        idle = probe.mark()
        time.sleep(5.0)
        idle_load = probe.since(idle)
        joined = _join(cluster, probe, 4)
        click.echo(
            f"join of node 4: listed as learner {joined['listed_s']:.1f} s, "
            f"serving {joined['serving_s']:.1f} s, "
            f"caught up {joined['caught_up_s']:.1f} s, voter {joined['voter_s']:.1f} s after its start; "
            f"its data {joined['joiner_db_mib']:.0f} MiB\n"
        )
        click.echo("| step | s | writes | longest gap ms | failed attempts | gave up |")
        click.echo("|---|---|---|---|---|---|")
        click.echo(_row("idle (5 s, no change)", idle_load))
        click.echo(_row("join of node 4", joined["load"]))
        for label, load in _transfers(cluster, probe, transfers):
            click.echo(_row(f"transfer {label}", load))
        for label, load in _rolling_restart(cluster, probe):
            click.echo(_row(f"restart {label}", load))
        click.echo(f"\nprobe errors by code: {dict(probe.errors)}")
    finally:
        if probe is not None:
            probe.stop()
        cluster.stop()
        group.stop()


@click.command()
@click.option(
    "--keys", default="100000,1000000", show_default=True, help="comma-separated key counts, one run each"
)
@click.option("--transfers", default=5, show_default=True)
@click.option("--probe-threads", default=4, show_default=True)
def main(keys: str, transfers: int, probe_threads: int) -> None:
    tree = Tree("this", Path(__file__).resolve().parent.parent, sys.executable)
    base = Path(tempfile.mkdtemp(prefix="ggap-memberbench-"))
    try:
        for count in (int(k) for k in keys.split(",")):
            _one(tree, base, count, transfers, probe_threads)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
