"""Interleaved A/B benchmark of two ggap source trees: `python -m bench.ab --a DIR --b DIR`.

Each round runs the same workload against tree A and against tree B (A then B, or with
`--order abba` B then A in every second round, to cancel a linear drift of the machine),
each time on new nodes with a fresh data directory and fresh ports on 127.0.0.1. A node of
a tree runs that tree's code: `<python> -m ggap.cli node ...` with cwd and PYTHONPATH set to
the tree. The load generator (bench.runner, from the tree this module is in) is the same
for both sides.

Per run it records ops/s, p50 and p99 latency of all operations, and the server CPU per
operation: user+sys time of the node processes (all their threads) from /proc/<pid>/stat,
sampled when the measured window opens (after preload and warmup) and when it closes,
divided by the operations that started in that window. Then a summary: the median of each
side and the paired ratio B/A, the median of the per-round ratios (runs of one round are
adjacent in time, so they share most of the machine's noise).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import grpc

from bench.config import QUORUMS, READ_MODES, BenchConfig, parse_mix
from bench.runner import BenchError, run
from ggap.pb import health_pb2, health_pb2_grpc

SIDES: tuple[str, str] = ("A", "B")
ORDERS: tuple[str, ...] = ("ab", "abba")

#: (key in a run record, column title, format, which direction is better)
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("ops_per_s", "ops/s", "{:.0f}", "higher"),
    ("p50_ms", "p50 ms", "{:.2f}", "lower"),
    ("p99_ms", "p99 ms", "{:.2f}", "lower"),
    ("cpu_us_per_op", "server CPU us/op", "{:.1f}", "lower"),
    ("server_cores", "server cores", "{:.2f}", "-"),
)

NODE_START_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 10.0
BIND_ATTEMPTS = 3
_ADDRESS_IN_USE_MARKERS = ("address already in use", "address in use", "eaddrinuse", "errno 98")


class ABError(RuntimeError):
    """The comparison could not be carried out (a tree is unusable, a node failed)."""


# -- pure parts --------------------------------------------------------------------------------


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(utime, stime) in clock ticks from the text of /proc/<pid>/stat.

    The second field (the command name, in parentheses) may itself hold spaces and
    parentheses, so fields are counted from the last ")": utime and stime are fields 14
    and 15 of the line, i.e. the 12th and 13th after the name.
    """
    close = text.rfind(")")
    if close < 0:
        raise ValueError("not a /proc/<pid>/stat line: no ')'")
    rest = text[close + 1 :].split()
    if len(rest) < 13:
        raise ValueError(f"not a /proc/<pid>/stat line: {len(rest)} fields after the name")
    return int(rest[11]), int(rest[12])


def cpu_seconds(pids: Iterable[int], clock_ticks: int | None = None) -> float:
    """User+sys CPU seconds the processes (all threads) used so far."""
    tick = clock_ticks or os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        utime, stime = parse_proc_stat(Path(f"/proc/{pid}/stat").read_text())
        total += utime + stime
    return total / tick


def ratio(b: float | None, a: float | None) -> float | None:
    """b / a, or None when either is missing or a is 0."""
    if a is None or b is None or a == 0:
        return None
    return b / a


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def side_order(round_index: int, order: str) -> tuple[str, str]:
    """Which side runs first in round `round_index` (0-based)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}")
    if order == "abba" and round_index % 2 == 1:
        return ("B", "A")
    return ("A", "B")


def run_record(
    round_no: int, side: str, summary: Mapping[str, Any], cpu_s: float | None, window_s: float | None
) -> dict[str, Any]:
    """One row of the result from the load generator's summary and the server CPU sample."""
    total = summary["total"]
    count = int(total["count"])
    return {
        "round": round_no,
        "side": side,
        "ops_per_s": total["ops_per_s"],
        "p50_ms": total["latency_ms"]["p50"],
        "p99_ms": total["latency_ms"]["p99"],
        "cpu_us_per_op": cpu_s / count * 1e6 if cpu_s is not None and count else None,
        "server_cores": cpu_s / window_s if cpu_s is not None and window_s else None,
        "count": count,
        "errors": int(total["errors"]),
        "errors_by_code": dict(total["errors_by_code"]),
        "cpu_s": None if cpu_s is None else round(cpu_s, 3),
        "cpu_window_s": None if window_s is None else round(window_s, 3),
    }


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median of every metric per side, and per metric the B/A ratio of each round and their median.

    A round contributes a ratio only when it has both an A and a B run with the metric.
    """
    by_round: dict[int, dict[str, Mapping[str, Any]]] = {}
    for rec in runs:
        by_round.setdefault(int(rec["round"]), {})[str(rec["side"])] = rec
    out: dict[str, Any] = {side: {} for side in SIDES}
    out["round_ratios"] = {}
    out["ratio_b_over_a"] = {}
    for key, *_ in METRICS:
        for side in SIDES:
            out[side][key] = median(rec.get(key) for rec in runs if rec["side"] == side)
        ratios = [
            ratio(pair["B"].get(key), pair["A"].get(key))
            for _, pair in sorted(by_round.items())
            if "A" in pair and "B" in pair
        ]
        out["round_ratios"][key] = ratios
        out["ratio_b_over_a"][key] = median(ratios)
    return out


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def format_runs_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per run, in the order they ran."""
    header = ["#", "round", "side", *(title for _, title, _, _ in METRICS), "ops", "errors"]
    rows = [
        [
            str(i + 1),
            str(rec["round"]),
            str(rec["side"]),
            *(_cell(rec.get(key), fmt) for key, _, fmt, _ in METRICS),
            str(rec["count"]),
            str(rec["errors"]),
        ]
        for i, rec in enumerate(runs)
    ]
    return _markdown(header, rows, right_from=3)


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """Markdown table: per metric the median of A and of B, the paired B/A and each round's B/A."""
    header = ["metric", "better", "A median", "B median", "B/A (median of rounds)", "B/A per round"]
    rows = []
    for key, title, fmt, better in METRICS:
        rows.append(
            [
                title,
                better,
                _cell(summary["A"][key], fmt),
                _cell(summary["B"][key], fmt),
                _cell(summary["ratio_b_over_a"][key], "{:.3f}"),
                ", ".join(_cell(r, "{:.3f}") for r in summary["round_ratios"][key]) or "-",
            ]
        )
    return _markdown(header, rows, right_from=2)


# -- trees and nodes ---------------------------------------------------------------------------


@attrs.frozen
class Tree:
    """A ggap checkout and the Python that runs its nodes."""

    label: str
    path: Path
    python: str

    def node_command(self) -> list[str]:
        if (self.path / "ggap" / "cli" / "__main__.py").is_file():
            return [self.python, "-m", "ggap.cli"]
        return [self.python, "-c", "import sys; from ggap.cli import main; sys.exit(main())"]

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.path)  # this tree only, ahead of any installed ggap
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def probe(self, extra_env: Mapping[str, str]) -> dict[str, Any]:
        """Where this tree's Python finds ggap, which codec it uses, and the tree's git commit.

        Raises ABError when ggap would not be imported from this tree.
        """
        code = (
            "import json, ggap, ggap.codec as c; "
            "print(json.dumps({'ggap_file': ggap.__file__, 'codec_impl': getattr(c, 'IMPL', None)}))"
        )
        proc = subprocess.run(
            [self.python, "-c", code],
            cwd=self.path,
            env=self.env(extra_env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise ABError(f"tree {self.label} ({self.path}): cannot import ggap:\n{proc.stderr.strip()}")
        info: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        ggap_file = Path(info["ggap_file"]).resolve()
        if not ggap_file.is_relative_to(self.path.resolve()):
            raise ABError(f"tree {self.label}: ggap is imported from {ggap_file}, not from {self.path}")
        info["path"] = str(self.path)
        info["python"] = self.python
        info.update(_git_info(self.path))
        return info


def _git_info(path: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def free_port(taken: set[int]) -> int:
    """A port on 127.0.0.1 free a moment ago and not in `taken` (which it joins)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in taken:
            taken.add(port)
            return port
    raise ABError("could not find a free port")


class NodeGroup:
    """The node process(es) of one run: `n` nodes of `tree`, ids 1..n, with fresh data dirs.

    Only ever signals its own children, through their Popen objects; `stop()` is safe to
    call more than once and after a failed start.
    """

    def __init__(self, tree: Tree, n: int, run_dir: Path, env: Mapping[str, str], ports: set[int]) -> None:
        self.tree = tree
        self.n = n
        self.run_dir = run_dir
        self.env = tree.env(env)
        self.ports = ports
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_addrs: list[str] = []
        self._argvs: list[list[str]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def log_path(self, node_id: int) -> Path:
        return self.run_dir / f"node{node_id}.log"

    def start(self) -> None:
        """Launch and wait until every node says SERVING (knows a leader); re-pick ports if taken."""
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self._launch()
            try:
                self._wait_ready()
                return
            except ABError:
                self.stop()
                logs = " ".join(_tail(self.log_path(i)).lower() for i in range(1, self.n + 1))
                if attempt == BIND_ATTEMPTS or not any(m in logs for m in _ADDRESS_IN_USE_MARKERS):
                    raise

    def _launch(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ids = range(1, self.n + 1)
        client = {i: free_port(self.ports) for i in ids}
        cluster = {i: free_port(self.ports) for i in ids}
        peers = ",".join(f"{i}=127.0.0.1:{cluster[i]}" for i in ids)
        self.client_addrs = [f"127.0.0.1:{client[i]}" for i in ids]
        self.procs = []
        self._argvs = []
        for i in ids:
            data_dir = self.run_dir / f"node{i}"
            shutil.rmtree(data_dir, ignore_errors=True)  # fresh, also after a re-launch
            argv = [
                *self.tree.node_command(),
                "node",
                "--node-id", str(i),
                "--client-addr", f"127.0.0.1:{client[i]}",
                "--cluster-addr", f"127.0.0.1:{cluster[i]}",
                "--data-dir", str(data_dir),
            ]  # fmt: skip
            if self.n > 1:
                argv += ["--peers", peers]
            self._argvs.append(argv)
            self.procs.append(self._popen(i, argv))

    def _popen(self, node_id: int, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log_path(node_id).open("ab") as log:
            log.write(f"=== bench.ab launch: {' '.join(argv)}\n".encode())
            log.flush()
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tree.path,
                env=self.env,
            )

    def kill(self, node_id: int) -> None:
        """SIGKILL one node (a crash) and reap it."""
        proc = self.procs[node_id - 1]
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def restart(self, node_id: int) -> None:
        """Start a killed node again: same ports, same data dir; wait until every node serves."""
        if self.procs[node_id - 1].poll() is None:
            raise ABError(f"node {node_id} is still running")
        self.procs[node_id - 1] = self._popen(node_id, self._argvs[node_id - 1])
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        for i, addr in enumerate(self.client_addrs, start=1):
            with grpc.insecure_channel(addr) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                last = "no answer yet"
                while True:
                    self.check_alive()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ABError(f"node {i} ({addr}) not SERVING in time (last: {last}){self.logs(i)}")
                    try:
                        resp = stub.Check(
                            health_pb2.HealthCheckRequest(service=""),
                            timeout=min(1.0, remaining),
                            wait_for_ready=True,
                        )
                    except grpc.RpcError as err:
                        last = f"{err.code().name}: {err.details()}"
                    else:
                        if resp.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                        last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                    time.sleep(0.05)

    def check_alive(self) -> None:
        for i, proc in enumerate(self.procs, start=1):
            code = proc.poll()
            if code is not None:
                raise ABError(f"node {i} of tree {self.tree.label} exited with code {code}{self.logs(i)}")

    def logs(self, node_id: int) -> str:
        return f"; log {self.log_path(node_id)}:\n{_tail(self.log_path(node_id))}"

    def stop(self) -> None:
        """SIGTERM every node, wait, SIGKILL what is left; every child is reaped."""
        stop_procs(self.procs)


def stop_procs(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each (by its Popen), wait, SIGKILL what is left; every one is reaped."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + NODE_STOP_TIMEOUT_S
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_bytes()[-16384:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class CpuWindow:
    """The bench window hook: samples the nodes' CPU when the measured window opens and closes."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.samples: dict[str, tuple[float, float]] = {}
        self.error: str | None = None

    def __call__(self, what: str) -> None:
        try:
            self.samples[what] = (time.monotonic(), cpu_seconds(self.pids))
        except (OSError, ValueError) as exc:
            self.error = f"reading /proc at window {what}: {exc}"

    def result(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) between the two samples."""
        if self.error is not None or set(self.samples) != {"start", "end"}:
            raise ABError(self.error or f"the measured window was not sampled (got {sorted(self.samples)})")
        (t0, c0), (t1, c1) = self.samples["start"], self.samples["end"]
        return c1 - c0, t1 - t0


def run_side(
    tree: Tree,
    cfg: BenchConfig,
    nodes: int,
    run_dir: Path,
    env: Mapping[str, str],
    ports: set[int],
    progress: Any,
) -> tuple[dict[str, Any], float, float]:
    """Start fresh nodes of `tree`, run the load against them, stop them.

    Returns the load generator's summary and the nodes' (CPU seconds, wall seconds) over
    the measured window.
    """
    group = NodeGroup(tree, nodes, run_dir, env, ports)
    try:
        group.start()
        window = CpuWindow(group.pids)
        try:
            summary = run(attrs.evolve(cfg, endpoints=tuple(group.client_addrs)), progress, window)
        except BenchError as exc:
            raise ABError(f"tree {tree.label}: {exc}") from None
        group.check_alive()
        cpu_s, window_s = window.result()
        return summary, cpu_s, window_s
    finally:
        group.stop()


# -- command line ------------------------------------------------------------------------------


def _mix(ctx: click.Context, param: click.Parameter, value: str) -> tuple[tuple[str, float], ...]:
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _env(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in value:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE")
        out[key] = val
    return out


_TREE = click.Path(exists=True, file_okay=False, resolve_path=True, path_type=Path)


def _headline(cfg: BenchConfig, nodes: int, rounds: int, order: str) -> str:
    mix = ",".join(f"{name}={weight:g}" for name, weight in cfg.mix)
    return (
        f"{rounds} round(s), order {order}, {nodes} node(s) per run, {cfg.clients} clients in "
        f"{cfg.worker_count} process(es), {cfg.warmup:g} s warmup + {cfg.duration:g} s measured, "
        f"mix {mix}, {cfg.keys} keys{' (preloaded)' if cfg.preload else ''}, {cfg.value_size} B values, "
        f"reads {cfg.read_mode}, quorum {cfg.quorum}"
    )


def _tree_line(label: str, info: Mapping[str, Any]) -> str:
    commit = (info.get("commit") or "no git commit")[:12]
    dirty = " (uncommitted changes)" if info.get("dirty") else ""
    return (
        f"{label}: {info['path']} @ {commit}{dirty}, codec {info.get('codec_impl')}, python {info['python']}"
    )


@click.command(name="ab", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--a", "tree_a", required=True, type=_TREE, help="Source tree A (a ggap checkout, extension built)."
)
@click.option("--b", "tree_b", required=True, type=_TREE, help="Source tree B.")
@click.option("--a-python", default=sys.executable, show_default=True, help="Python that runs A's nodes.")
@click.option("--b-python", default=sys.executable, show_default=True, help="Python that runs B's nodes.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--order",
    default="ab",
    show_default=True,
    type=click.Choice(ORDERS),
    help="ab: A then B every round; abba: B then A in every second round (cancels linear drift).",
)
@click.option("--nodes", default=1, show_default=True, type=click.IntRange(1, 7), help="Nodes per run.")
@click.option(
    "--env",
    "node_env",
    multiple=True,
    callback=_env,
    help="KEY=VALUE set for the nodes of both sides (e.g. GINNUNGAGAP_RAFT__TICK_MS=50); repeatable.",
)
@click.option(
    "--a-env",
    "a_env",
    multiple=True,
    callback=_env,
    help="KEY=VALUE set for the nodes of side A only (after --env); repeatable.",
)
@click.option(
    "--b-env",
    "b_env",
    multiple=True,
    callback=_env,
    help="KEY=VALUE set for the nodes of side B only, e.g. GINNUNGAGAP_METRICS__LISTEN_ADDR=127.0.0.1:0.",
)
@click.option("--clients", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--warmup", default=1.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--keys", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--value-size", default=128, show_default=True, type=click.IntRange(min=0))
@click.option("--mix", default="put=50,get=50", show_default=True, callback=_mix)
@click.option("--read-mode", default="linearizable", show_default=True, type=click.Choice(READ_MODES))
@click.option("--quorum", default="majority", show_default=True, type=click.Choice(QUORUMS))
@click.option("--preload", is_flag=True, help="Write every key once before each run.")
@click.option("--processes", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--timeout", default=5.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--seed", default=None, type=int, help="Same key and op sequence for every run.")
@click.option(
    "--json-out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here."
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the temporary data dirs go [default: the system temp dir].",
)
@click.option("--keep-data", is_flag=True, help="Keep data dirs and node logs (kept anyway on failure).")
@click.option("--verbose", is_flag=True, help="Show the load generator's progress lines.")
def ab_command(
    tree_a: Path,
    tree_b: Path,
    a_python: str,
    b_python: str,
    rounds: int,
    order: str,
    nodes: int,
    node_env: dict[str, str],
    a_env: dict[str, str],
    b_env: dict[str, str],
    clients: int,
    duration: float,
    warmup: float,
    keys: int,
    value_size: int,
    mix: tuple[tuple[str, float], ...],
    read_mode: str,
    quorum: str,
    preload: bool,
    processes: int,
    timeout: float,
    seed: int | None,
    json_out: Path | None,
    work_dir: Path | None,
    keep_data: bool,
    verbose: bool,
) -> None:
    """Compare two source trees under the same load, interleaved: A,B,A,B,...

    Prints a markdown table of every run and a summary (median per side, median of the
    per-round B/A ratios). Server CPU is user+sys of the node processes over the measured
    window only. Timing numbers are for reading, not for pass/fail decisions.
    """
    cfg = BenchConfig(
        endpoints=("127.0.0.1:1",),  # replaced per run
        clients=clients,
        duration=duration,
        warmup=warmup,
        keys=keys,
        value_size=value_size,
        mix=mix,
        read_mode=read_mode,
        quorum=quorum,
        preload=preload,
        processes=processes,
        timeout=timeout,
        seed=seed,
    )
    trees = {"A": Tree("A", tree_a, a_python), "B": Tree("B", tree_b, b_python)}

    def say(text: str) -> None:
        click.echo(f"ab: {text}", err=True)

    base = Path(tempfile.mkdtemp(prefix="ggap-ab-", dir=work_dir))
    ok = False
    try:
        side_env = {"A": {**node_env, **a_env}, "B": {**node_env, **b_env}}
        infos = {side: tree.probe(side_env[side]) for side, tree in trees.items()}
        for side, info in infos.items():
            if info.get("codec_impl") != "c":
                say(f"WARNING: tree {side} runs codec {info.get('codec_impl')!r}, not the C extension")
        runs: list[dict[str, Any]] = []
        ports: set[int] = set()
        for r in range(rounds):
            for side in side_order(r, order):
                say(f"round {r + 1}/{rounds} {side}: starting {nodes} node(s) of {trees[side].path}")
                summary, cpu_s, window_s = run_side(
                    trees[side],
                    cfg,
                    nodes,
                    base / f"round{r + 1}-{side}",
                    side_env[side],
                    ports,
                    sys.stderr if verbose else None,
                )
                if not keep_data:
                    # Now, not at the end: the kernel then drops this run's dirty pages
                    # instead of writing them back during the next run.
                    shutil.rmtree(base / f"round{r + 1}-{side}", ignore_errors=True)
                rec = run_record(r + 1, side, summary, cpu_s, window_s)
                runs.append(rec)
                say(
                    f"round {r + 1}/{rounds} {side}: {rec['ops_per_s']:.0f} ops/s, "
                    f"p50 {_cell(rec['p50_ms'], '{:.2f}')} ms, p99 {_cell(rec['p99_ms'], '{:.2f}')} ms, "
                    f"{_cell(rec['cpu_us_per_op'], '{:.1f}')} us CPU/op, {rec['errors']} errors"
                )
        result = summarize(runs)
        ok = True
    except ABError as exc:
        say(f"failed: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    finally:
        if (ok and not keep_data) or not any(base.iterdir()):
            shutil.rmtree(base, ignore_errors=True)
        elif not ok:
            say(f"data dirs and node logs kept in {base}")

    click.echo(_headline(cfg, nodes, rounds, order))
    for side in SIDES:
        click.echo(_tree_line(side, infos[side]))
    click.echo(
        "server CPU: user+sys of the node process(es) from /proc/<pid>/stat over the measured window "
        "only (after preload and warmup), per operation started in that window"
    )
    click.echo("")
    click.echo(format_runs_table(runs))
    click.echo("")
    click.echo(format_summary_table(result))
    errors = sum(rec["errors"] for rec in runs)
    if errors:
        click.echo(f"\nnote: {errors} failed requests in all; see errors_by_code in the JSON")
    if keep_data:
        click.echo(f"\ndata dirs and node logs: {base}")
    if json_out is not None:
        doc = {
            "config": {**cfg.describe(), "endpoints": None, "nodes": nodes, "rounds": rounds, "order": order,
                       "node_env": node_env, "a_env": a_env, "b_env": b_env},
            "trees": infos,
            "cpu_measure": "user+sys of node processes from /proc/<pid>/stat, measured window only",
            "runs": runs,
            "summary": result,
        }  # fmt: skip
        json_out.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    ab_command.main(args=list(argv) if argv is not None else None, prog_name="python -m bench.ab")


if __name__ == "__main__":
    main()
