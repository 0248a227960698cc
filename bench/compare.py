"""etcd 3.4 and ggap side by side: `python -m bench.compare` (`make bench-compare`).

Cells (closed-loop workloads, see CELLS) run against a 3-member etcd cluster and a 3-node
ggap cluster, plus two single-node cells (1-member etcd vs 1 ggap node). The load
generator is the same code for both systems (bench.runner with its worker processes;
bench.load picks the etcd or the ggap client, same operation names and meanings).

Interleaving and lifetimes: every round starts a fresh etcd cluster and a fresh ggap
cluster (new processes, new data dirs, free ports on 127.0.0.1), preloads both with the
same keys, then runs every cell of that topology; inside a cell etcd runs first and ggap
second, swapped every second round (ab.py's `--order abba`), so a linear drift of the
machine cancels in the paired ratio. The 3-node pair is stopped before the 1-node pair
starts. One cluster pair per round (not per run) keeps the total time at a few minutes
(a preload of 10k keys takes seconds); the cost is that later cells of a round see the
revisions earlier cells wrote, in the same order for both systems. Both clusters of a
topology are up while either is measured; the idle one only heartbeats.

Per run: ops/s, p50 and p99 latency, and the server CPU per operation: user+sys of all
processes of the measured system from /proc/<pid>/stat over exactly the measured window
(bench.runner's window hook), and the cores that makes. Ratios are ggap/etcd, the median
of the per-round ratios (bench.ab.summarize with side A = etcd, B = ggap).

The watch cell: `--watchers` watchers on the key prefix, spread round-robin over all
nodes, in a process of their own, while Put x64 goes to the leader with the send time
stamped into each value; it reports delivered events/s and the delivery lag (receive
time minus the put's send time, so the commit latency is included) p50/p99.
The watchers are one Python process (grpc.aio): it parses some tens of thousands of
events/s at most, so when puts x watchers exceeds that ("delivered" well below 100%), the
watch numbers measure that process and its backlog, not the server.

The machine this was written on has 2 cores: the load generator (2 worker processes by
default) and the watcher process share them with the servers, the same way for both
systems, which is why ratios, not absolute numbers, are what to quote. Each run ends
with every process it started stopped (SIGTERM, then SIGKILL), also on Ctrl-C.

etcd runs with its defaults (it fsyncs its WAL on every commit, as ggap's Raft log does).
When `etcd` is not on PATH, `apt-get install -y etcd-server` is tried first.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import grpc

from bench.ab import (
    NODE_START_TIMEOUT_S,
    ABError,
    CpuWindow,
    NodeGroup,
    Tree,
    _cell,
    _git_info,
    _markdown,
    _tail,
    free_port,
    median,
    ratio,
    run_record,
    side_order,
    stop_procs,
    summarize,
)
from bench.config import BenchConfig, parse_mix
from bench.etcdpb import etcd_pb2 as epb
from bench.etcdpb import etcd_pb2_grpc
from bench.runner import BenchError, preload_only, run
from bench.watchload import WatchError, WatchFanout, WatchSpec
from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc

SYSTEM_SIDE: dict[str, str] = {"etcd": "A", "ggap": "B"}
SIDE_SYSTEM: dict[str, str] = {v: k for k, v in SYSTEM_SIDE.items()}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


class CompareError(RuntimeError):
    """The comparison could not be carried out."""


@attrs.frozen
class Cell:
    """One workload: `clients` closed-loop clients doing `mix` against the leader or all nodes."""

    id: str
    title: str
    mix: str
    clients: int
    target: str = "leader"  # or "all"
    read_mode: str = "linearizable"
    range_limit: int = 10
    nodes: int = 3
    watch: bool = False


CELLS: tuple[Cell, ...] = (
    Cell("put1", "Put x1 leader", "put=100", 1),
    Cell("put16", "Put x16 leader", "put=100", 16),
    Cell("put64", "Put x64 leader", "put=100", 64),
    Cell("put64-all", "Put x64 all nodes", "put=100", 64, target="all"),
    Cell("get64", "lin Get x64 leader", "get=100", 64),
    Cell("get64-all", "lin Get x64 all nodes", "get=100", 64, target="all"),
    Cell("eget64-all", "eventual Get x64 all nodes", "get=100", 64, target="all", read_mode="eventual"),
    Cell("txn64", "Txn CAS x64 leader", "txn=100", 64),
    Cell("range16", "Range 100 keys x16 leader", "range=100", 16, range_limit=100),
    Cell("watch", "Watch fan-out (Put x64 leader)", "put=100", 64, watch=True),
    Cell("1n-put64", "1 node: Put x64", "put=100", 64, nodes=1),
    Cell("1n-get64", "1 node: lin Get x64", "get=100", 64, nodes=1),
)
CELL_IDS = tuple(c.id for c in CELLS)


# -- pure parts --------------------------------------------------------------------------------


def select_cells(ids: str | None) -> list[Cell]:
    """The cells named in a comma list (all when None/empty), in CELLS order."""
    if not ids:
        return list(CELLS)
    wanted = [i.strip() for i in ids.split(",") if i.strip()]
    unknown = [i for i in wanted if i not in CELL_IDS]
    if unknown:
        raise ValueError(f"unknown cell(s) {', '.join(unknown)} (known: {', '.join(CELL_IDS)})")
    return [c for c in CELLS if c.id in wanted]


def etcd_initial_cluster(peer_ports: Mapping[str, int]) -> str:
    """`--initial-cluster` value: name=http://127.0.0.1:port,... in the given order."""
    return ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peer_ports.items())


def etcd_member_argv(
    binary: str,
    name: str,
    data_dir: Path,
    client_port: int,
    peer_port: int,
    initial_cluster: str,
    token: str,
) -> list[str]:
    """The command line of one etcd member on loopback; everything else stays etcd's default."""
    client = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    return [
        binary,
        "--name", name,
        "--data-dir", str(data_dir),
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--logger", "zap",
    ]  # fmt: skip


def cell_rows(cells: Sequence[Cell], runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per cell (that has runs): the summary of its runs (medians per system, paired ggap/etcd)."""
    out = []
    for cell in cells:
        mine = [r for r in runs if r["cell"] == cell.id]
        if not mine:
            continue
        summary = summarize(mine)
        watch: dict[str, Any] = {}
        if cell.watch:
            for key in ("events_per_s", "delivered_fraction", "lag_p50_ms", "lag_p99_ms"):
                for system, side in SYSTEM_SIDE.items():
                    watch[f"{system}_{key}"] = median(
                        (r.get("watch") or {}).get(key) for r in mine if r["side"] == side
                    )
                by_round: dict[int, dict[str, Any]] = {}
                for r in mine:
                    by_round.setdefault(int(r["round"]), {})[r["side"]] = (r.get("watch") or {}).get(key)
                watch[f"ratio_{key}"] = median(
                    ratio(p.get("B"), p.get("A")) for _, p in sorted(by_round.items())
                )
        out.append(
            {
                "cell": cell.id,
                "title": cell.title,
                "etcd": summary["A"],
                "ggap": summary["B"],
                "ratio_ggap_over_etcd": summary["ratio_b_over_a"],
                "round_ratios": summary["round_ratios"],
                "watch": watch or None,
            }
        )
    return out


def format_compare_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The main markdown table: one row per cell."""
    header = [
        "cell", "etcd ops/s", "ggap ops/s", "ggap/etcd",
        "etcd p50 ms", "ggap p50 ms", "etcd p99 ms", "ggap p99 ms",
        "etcd CPU us/op", "ggap CPU us/op", "CPU ggap/etcd",
    ]  # fmt: skip
    body = []
    for row in rows:
        e, g, q = row["etcd"], row["ggap"], row["ratio_ggap_over_etcd"]
        body.append(
            [
                row["title"],
                _cell(e["ops_per_s"], "{:.0f}"),
                _cell(g["ops_per_s"], "{:.0f}"),
                _cell(q["ops_per_s"], "{:.2f}"),
                _cell(e["p50_ms"], "{:.2f}"),
                _cell(g["p50_ms"], "{:.2f}"),
                _cell(e["p99_ms"], "{:.2f}"),
                _cell(g["p99_ms"], "{:.2f}"),
                _cell(e["cpu_us_per_op"], "{:.0f}"),
                _cell(g["cpu_us_per_op"], "{:.0f}"),
                _cell(q["cpu_us_per_op"], "{:.2f}"),
            ]
        )
    return _markdown(header, body)


def format_watch_table(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Watch fan-out: delivered events/s and delivery lag per system (None without a watch cell)."""
    watch_rows = [r for r in rows if r.get("watch")]
    if not watch_rows:
        return None
    header = [
        "cell", "etcd events/s", "ggap events/s", "ggap/etcd", "etcd delivered", "ggap delivered",
        "etcd lag p50 ms", "ggap lag p50 ms", "etcd lag p99 ms", "ggap lag p99 ms",
    ]  # fmt: skip
    body = []
    for row in watch_rows:
        w = row["watch"]
        body.append(
            [
                row["title"],
                _cell(w["etcd_events_per_s"], "{:.0f}"),
                _cell(w["ggap_events_per_s"], "{:.0f}"),
                _cell(w["ratio_events_per_s"], "{:.2f}"),
                _cell(w["etcd_delivered_fraction"], "{:.0%}"),
                _cell(w["ggap_delivered_fraction"], "{:.0%}"),
                _cell(w["etcd_lag_p50_ms"], "{:.1f}"),
                _cell(w["ggap_lag_p50_ms"], "{:.1f}"),
                _cell(w["etcd_lag_p99_ms"], "{:.1f}"),
                _cell(w["ggap_lag_p99_ms"], "{:.1f}"),
            ]
        )
    return _markdown(header, body)


def delivered_fraction(events_per_s: float, puts_per_s: float, watchers: int) -> float | None:
    """Delivered events over the events due (every put reaches every watcher); below 1 means a
    backlog, at the server or in the watcher process, which then also inflates the lag."""
    due = puts_per_s * watchers
    return events_per_s / due if due > 0 else None


def run_line(rec: Mapping[str, Any]) -> str:
    """One run in a line of progress output."""
    line = (
        f"{rec['ops_per_s']:.0f} ops/s, p50 {_cell(rec['p50_ms'], '{:.2f}')} "
        f"p99 {_cell(rec['p99_ms'], '{:.2f}')} ms, {_cell(rec['cpu_us_per_op'], '{:.0f}')} us CPU/op, "
        f"{rec['errors']} errors"
    )
    w = rec.get("watch")
    if w:
        line += (
            f", {w['events_per_s']:.0f} events/s, lag p50 {_cell(w['lag_p50_ms'], '{:.1f}')} "
            f"p99 {_cell(w['lag_p99_ms'], '{:.1f}')} ms"
        )
    return line


def result_dir_name(now: dt.datetime) -> str:
    """`20261203T164500Z`: the UTC timestamp of a results folder."""
    return now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


# -- etcd --------------------------------------------------------------------------------------


def ensure_etcd(say: Any) -> str:
    """Path of `etcd`; installs Debian's etcd-server with apt-get when it is not on PATH."""
    found = shutil.which("etcd")
    if found:
        return found
    say("etcd not on PATH: apt-get install -y etcd-server")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        proc = subprocess.run(
            ["apt-get", "install", "-y", "etcd-server"], env=env, capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompareError(f"etcd is not installed and apt-get install etcd-server failed: {exc}") from None
    found = shutil.which("etcd")
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise CompareError(
            f"etcd is not installed and `apt-get install -y etcd-server` failed (code {proc.returncode}); "
            f"install etcd 3.4 and put it on PATH.\n{tail}"
        )
    return found


def etcd_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def _etcd_status(addr: str, timeout: float = 1.0) -> epb.StatusResponse | None:
    with grpc.insecure_channel(addr) as channel:
        try:
            resp: epb.StatusResponse = etcd_pb2_grpc.MaintenanceStub(channel).Status(
                epb.StatusRequest(), timeout=timeout
            )
            return resp
        except grpc.RpcError:
            return None


class EtcdGroup:
    """`n` etcd members on loopback with fresh data dirs; same interface as bench.ab.NodeGroup."""

    def __init__(self, binary: str, n: int, run_dir: Path, ports: set[int]) -> None:
        self.binary = binary
        self.n = n
        self.run_dir = run_dir
        self.ports = ports
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_addrs: list[str] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log_path(self, i: int) -> Path:
        return self.run_dir / f"etcd{i}.log"

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        names = [f"m{i}" for i in range(1, self.n + 1)]
        client = {name: free_port(self.ports) for name in names}
        peer = {name: free_port(self.ports) for name in names}
        cluster = etcd_initial_cluster(peer)
        token = f"bench-{os.getpid()}-{time.time_ns()}"
        self.client_addrs = [f"127.0.0.1:{client[name]}" for name in names]
        # Our own settings only: no ETCD_* variable of the caller leaks into the members.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        for i, name in enumerate(names, start=1):
            data_dir = self.run_dir / f"etcd{i}"
            shutil.rmtree(data_dir, ignore_errors=True)
            argv = etcd_member_argv(self.binary, name, data_dir, client[name], peer[name], cluster, token)
            with self.log_path(i).open("ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
                    )
                )
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while True:
            self.check_alive()
            statuses = [_etcd_status(a) for a in self.client_addrs]
            leaders = {s.leader for s in statuses if s is not None}
            if all(s is not None for s in statuses) and len(leaders) == 1 and 0 not in leaders:
                return
            if time.monotonic() > deadline:
                raise CompareError(f"etcd cluster not ready in time (leaders seen: {leaders}){self.logs(1)}")
            time.sleep(0.1)

    def leader_addr(self) -> str:
        for addr in self.client_addrs:
            st = _etcd_status(addr, timeout=2.0)
            if st is not None and st.leader and st.leader == st.header.member_id:
                return addr
        raise CompareError("no etcd member says it is the leader")

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                raise CompareError(f"etcd member {i} exited with code {code}{self.logs(i)}")

    def logs(self, i: int) -> str:
        return f"; log {self.log_path(i)}:\n{_tail(self.log_path(i))}"

    def stop(self) -> None:
        stop_procs(self.procs)


def ggap_leader_addr(group: NodeGroup) -> str:
    deadline = time.monotonic() + 30
    while True:
        for addr in group.client_addrs:
            with grpc.insecure_channel(addr) as channel:
                try:
                    st = kv_pb2_grpc.ClusterServiceStub(channel).Status(pb.StatusRequest(), timeout=2)
                except grpc.RpcError:
                    continue
            if st.leader_id and st.leader_id == st.member_id:
                return addr
        if time.monotonic() > deadline:
            raise CompareError("no ggap node says it is the leader")
        time.sleep(0.1)


# -- running -----------------------------------------------------------------------------------


@attrs.frozen
class Settings:
    rounds: int
    duration: float
    warmup: float
    keys: int
    value_size: int
    processes: int
    watchers: int
    timeout: float
    seed: int | None


class Systems:
    """The etcd and ggap clusters of one topology in one round."""

    def __init__(
        self,
        etcd_bin: str | None,
        tree: Tree,
        nodes: int,
        run_dir: Path,
        ports: set[int],
        systems: Sequence[str] = ("etcd", "ggap"),
    ) -> None:
        self.groups: dict[str, Any] = {}
        if "etcd" in systems:
            assert etcd_bin is not None
            self.groups["etcd"] = EtcdGroup(etcd_bin, nodes, run_dir / "etcd", ports)
        if "ggap" in systems:
            self.groups["ggap"] = NodeGroup(tree, nodes, run_dir / "ggap", {}, ports)

    def start(self) -> None:
        for group in self.groups.values():
            group.start()

    def stop(self) -> None:
        for group in self.groups.values():
            group.stop()

    def leader(self, system: str) -> str:
        group = self.groups[system]
        return group.leader_addr() if system == "etcd" else ggap_leader_addr(group)


def base_config(settings: Settings, system: str, endpoints: Sequence[str]) -> BenchConfig:
    return BenchConfig(
        endpoints=tuple(endpoints),
        clients=64,
        duration=settings.duration,
        warmup=settings.warmup,
        keys=settings.keys,
        value_size=settings.value_size,
        mix=(("put", 100.0),),
        processes=settings.processes,
        timeout=settings.timeout,
        seed=settings.seed,
        system=system,
    )


def cell_config(settings: Settings, cell: Cell, system: str, endpoints: Sequence[str]) -> BenchConfig:
    return attrs.evolve(
        base_config(settings, system, endpoints),
        clients=cell.clients,
        mix=parse_mix(cell.mix),
        read_mode=cell.read_mode,
        range_limit=cell.range_limit,
        stamp_values=cell.watch,
    )


class _Window:
    """CpuWindow plus the wall-clock times of the window (for the watchers' event counts)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.cpu = CpuWindow(pids)
        self.wall: dict[str, int] = {}

    def __call__(self, what: str) -> None:
        self.wall[what] = time.time_ns()
        self.cpu(what)


def run_cell(
    systems: Systems, settings: Settings, cell: Cell, system: str, round_no: int, verbose: bool
) -> dict[str, Any]:
    group = systems.groups[system]
    endpoints = [systems.leader(system)] if cell.target == "leader" else list(group.client_addrs)
    cfg = cell_config(settings, cell, system, endpoints)
    fanout = None
    if cell.watch:
        fanout = WatchFanout(WatchSpec(system, tuple(group.client_addrs), settings.watchers, cfg.key_prefix))
    try:
        if fanout is not None:
            fanout.start()
        window = _Window(group.pids)
        try:
            summary = run(cfg, sys.stderr if verbose else None, window)
        except BenchError as exc:
            raise CompareError(f"{system} {cell.id}: {exc}") from None
        group.check_alive()
        try:
            cpu_s, window_s = window.cpu.result()
        except ABError as exc:
            raise CompareError(str(exc)) from None
        rec = run_record(round_no, SYSTEM_SIDE[system], summary, cpu_s, window_s)
        rec.update({"cell": cell.id, "system": system, "nodes": cell.nodes, "endpoints": endpoints})
        if fanout is not None:
            rec["watch"] = fanout.finish(window.wall["start"], window.wall["end"])
            rec["watch"]["watchers"] = settings.watchers
            rec["watch"]["delivered_fraction"] = delivered_fraction(
                rec["watch"]["events_per_s"], rec["ops_per_s"], settings.watchers
            )
        return rec
    finally:
        if fanout is not None:
            fanout.stop()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so `finally` blocks stop our processes."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_all(
    etcd_bin: str | None,
    tree: Tree,
    systems_used: Sequence[str],
    cells: Sequence[Cell],
    settings: Settings,
    order: str,
    base: Path,
    say: Any,
    verbose: bool,
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    ports: set[int] = set()
    topologies = sorted({c.nodes for c in cells}, reverse=True)
    for r in range(settings.rounds):
        for nodes in topologies:
            run_dir = base / f"round{r + 1}-{nodes}n"
            systems = Systems(etcd_bin, tree, nodes, run_dir, ports, systems_used)
            try:
                say(f"round {r + 1}/{settings.rounds}: starting {nodes}-node etcd and ggap clusters")
                systems.start()
                for system in systems_used:
                    cfg = base_config(settings, system, [systems.leader(system)])
                    info = preload_only(cfg)
                    if info["errors"]:
                        raise CompareError(
                            f"{system} preload: {info['errors']} errors {info['errors_by_code']}"
                        )
                    say(f"  {system}: preloaded {info['written']} keys in {info['seconds']:.1f} s")
                for cell in (c for c in cells if c.nodes == nodes):
                    for side in side_order(r, order):
                        system = SIDE_SYSTEM[side]
                        if system not in systems_used:
                            continue
                        rec = run_cell(systems, settings, cell, system, r + 1, verbose)
                        runs.append(rec)
                        say(f"  {cell.id:<11} {system}: {run_line(rec)}")
            finally:
                systems.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    return runs


@click.command(name="compare", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--warmup", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--keys", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option("--value-size", default=256, show_default=True, type=click.IntRange(min=8))
@click.option(
    "--cells", "cell_ids", default="", help=f"Comma list of cells [default: all]: {','.join(CELL_IDS)}"
)
@click.option(
    "--systems",
    default="etcd,ggap",
    show_default=True,
    type=click.Choice(("etcd,ggap", "ggap", "etcd")),
    help="Run only one side (e.g. where etcd cannot be installed); ratios then stay empty.",
)
@click.option("--watchers", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--processes",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Load generator worker processes (bench.runner).",
)
@click.option("--order", default="abba", show_default=True, type=click.Choice(("ab", "abba")),
              help="abba: ggap first in every second round; ab: etcd first always.")  # fmt: skip
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=None, type=int)
@click.option(
    "--results-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=RESULTS_DIR,
    show_default=True,
    help="A folder <UTC timestamp>/ with results.md and results.json goes here.",
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where data dirs go.")
@click.option("--verbose", is_flag=True, help="Show the load generator's progress lines.")
def compare_command(
    rounds: int,
    duration: float,
    warmup: float,
    keys: int,
    value_size: int,
    cell_ids: str,
    systems: str,
    watchers: int,
    processes: int,
    order: str,
    timeout: float,
    seed: int | None,
    results_dir: Path,
    work_dir: Path | None,
    verbose: bool,
) -> None:
    """etcd vs ggap, interleaved per cell; prints a markdown table and writes results.{md,json}."""
    try:
        cells = select_cells(cell_ids)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cells") from None
    settings = Settings(rounds, duration, warmup, keys, value_size, processes, watchers, timeout, seed)
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)

    def say(text: str) -> None:
        click.echo(f"compare: {text}", err=True)

    repo = Path(__file__).resolve().parent.parent
    tree = Tree("ggap", repo, sys.executable)
    base = Path(tempfile.mkdtemp(prefix="ggap-compare-", dir=work_dir))
    ok = False
    try:
        with _sigterm_as_interrupt():
            systems_used = tuple(systems.split(","))
            etcd_bin = ensure_etcd(say) if "etcd" in systems_used else None
            tree_info = tree.probe({})
            runs = run_all(etcd_bin, tree, systems_used, cells, settings, order, base, say, verbose)
        ok = True
    except (CompareError, ABError, WatchError) as exc:
        say(f"failed: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        say("interrupted; every started process was stopped")
        sys.exit(130)
    finally:
        if ok:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"data dirs and logs kept in {base}")

    elapsed = time.monotonic() - started
    rows = cell_rows(cells, runs)
    version = etcd_version(etcd_bin) if etcd_bin else None
    head = (
        f"etcd ({version}, {etcd_bin}) vs ggap ({str(tree_info.get('commit') or '?')[:12]}"
        f"{' dirty' if tree_info.get('dirty') else ''}, codec {tree_info.get('codec_impl')}); "
        f"{rounds} round(s), order {order}, {warmup:g} s warmup + {duration:g} s measured per run, "
        f"{keys} keys x {value_size} B preloaded, load generator: {processes} worker process(es), "
        f"{os.cpu_count()} CPU(s) shared by servers and generator; ratios are ggap/etcd, median of "
        f"per-round ratios; server CPU = user+sys of all processes of the system over the measured window"
    )
    parts = [head, "", format_compare_table(rows)]
    watch_table = format_watch_table(rows)
    if watch_table:
        parts += ["", f"Watch: {watchers} watchers on the key prefix, spread over all nodes; "
                  "lag = receive time - send time stamped in the value (includes the put's commit); "
                  "delivered = events received / (puts x watchers) in the window: below 100% means a "
                  "backlog (server or the one Python watcher process), which also inflates the lag.",
                  "", watch_table]  # fmt: skip
    errors = sum(r["errors"] for r in runs)
    if errors:
        parts += ["", f"note: {errors} failed requests in all; see errors_by_code in results.json"]
    parts += ["", f"total time {elapsed:.0f} s"]
    markdown = "\n".join(parts) + "\n"
    out_dir = results_dir / result_dir_name(now)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(markdown)
    doc = {
        "started_utc": now.isoformat(),
        "seconds": round(elapsed, 1),
        "settings": attrs.asdict(settings),
        "order": order,
        "systems": list(systems_used),
        "cells": [attrs.asdict(c) for c in cells],
        "etcd": {"binary": etcd_bin, "version": version},
        "ggap": {**tree_info, **_git_info(repo)},
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "summary": rows,
    }
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    click.echo(markdown)
    click.echo(f"results: {out_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    compare_command.main(args=list(argv) if argv is not None else None, prog_name="python -m bench.compare")


if __name__ == "__main__":
    main()
