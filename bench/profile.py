"""Profile a local ggap cluster under load with py-spy: `bench/profile.sh [options] [-- LOAD ARGS]`.

Starts `--nodes` fresh ggap nodes of this tree (bench.ab.NodeGroup: free loopback ports,
temp data dirs), runs `python -m bench` against all of them with the given load
arguments (e.g. `--clients 64 --mix put=100 --processes 2`), and after the load's warmup
records every node with `py-spy record --rate R --duration D --format raw` (idle samples
left out, py-spy's default). Writes `node<N>.txt` (collapsed stacks, one
"frame;frame;... count" line each: open in speedscope, or feed flamegraph.pl) and the load
generator's output to `bench/results/profile-<UTC timestamp>/`, then prints the top
self-time functions per node (samples aggregated by leaf frame, line numbers dropped).

Every process it starts (nodes, load generator, py-spy) is stopped, also on Ctrl-C.
py-spy needs ptrace rights over the nodes: root, or kernel.yama.ptrace_scope=0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from bench.ab import NodeGroup, Tree, _markdown, stop_procs
from bench.compare import RESULTS_DIR, _sigterm_as_interrupt, result_dir_name

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """`send (ggap/rpc/x.py:12)` -> `send (ggap/rpc/x.py)`: a function, whatever its line."""
    m = _FRAME.match(frame.strip())
    return f"{m['func']} ({m['file']})" if m else frame.strip()


def parse_collapsed(lines: Iterable[str]) -> Counter[str]:
    """Self-time samples per function from py-spy's raw (collapsed) output: the leaf frame counts."""
    self_time: Counter[str] = Counter()
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.split(";")[-1]
        self_time[frame_name(leaf)] += int(count)
    return self_time


def top_table(self_time: Counter[str], n: int = 30) -> str:
    """Markdown: the n functions with the most self samples, with their share of all samples."""
    total = sum(self_time.values())
    rows = [
        [str(i), name.replace("|", "\\|"), str(count), f"{100 * count / total:.1f}%" if total else "-"]
        for i, (name, count) in enumerate(self_time.most_common(n), start=1)
    ]
    return _markdown(["#", "function (self time)", "samples", "share"], rows, right_from=2)


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def spy_record_argv(spy: str, pid: int, rate: int, seconds: float, output: Path) -> list[str]:
    """py-spy record of one node: raw collapsed stacks, idle samples left out (no --idle)."""
    return [
        spy, "record", "--pid", str(pid), "--rate", str(rate),
        "--duration", str(max(1, round(seconds))), "--format", "raw", "--output", str(output),
    ]  # fmt: skip


def load_argv(
    load_args: Sequence[str], endpoints: Sequence[str], record_s: float, warmup: float
) -> list[str]:
    """`python -m bench` against `endpoints`; runs long enough to cover warmup + recording."""
    argv = [sys.executable, "-m", "bench", "--endpoints", ",".join(endpoints)]
    if "--duration" not in load_args:
        argv += ["--duration", f"{record_s + 1:g}"]
    if "--warmup" not in load_args:
        argv += ["--warmup", f"{warmup:g}"]
    return argv + list(load_args)


@click.command(
    name="profile",
    context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True},
)
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 7))
@click.option("--duration", "record_s", default=10.0, show_default=True, help="Seconds py-spy records.")
@click.option("--warmup", default=2.0, show_default=True, help="Seconds of load before recording starts.")
@click.option("--rate", default=200, show_default=True, type=click.IntRange(min=1), help="Samples/s.")
@click.option("--top", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
@click.argument("load_args", nargs=-1, type=click.UNPROCESSED)
def profile_command(
    nodes: int,
    record_s: float,
    warmup: float,
    rate: int,
    top: int,
    results_dir: Path,
    load_args: tuple[str, ...],
) -> None:
    """Run LOAD ARGS (options of `python -m bench`) against fresh nodes and py-spy every node.

    This command's own options come first; put `--` before load options that share a name
    with them (e.g. `-- --duration 20` sets the load's duration, not the recording's).
    """
    spy = py_spy_binary()
    if spy is None:
        raise click.ClickException("py-spy not found: pip install py-spy (it is in the dev extras)")
    out_dir = results_dir / f"profile-{result_dir_name(dt.datetime.now(dt.UTC))}"
    out_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parent.parent
    base = Path(tempfile.mkdtemp(prefix="ggap-profile-"))
    group = NodeGroup(Tree("ggap", repo, sys.executable), nodes, base, {}, set())
    procs: list[subprocess.Popen[bytes]] = []
    codes: list[int] = []

    def say(text: str) -> None:
        click.echo(f"profile: {text}", err=True)

    try:
        with _sigterm_as_interrupt():
            say(f"starting {nodes} node(s)")
            group.start()
            argv = load_argv(load_args, group.client_addrs, record_s, warmup)
            say(f"load: {' '.join(argv[1:])}")
            with (out_dir / "load.txt").open("wb") as log:
                load = subprocess.Popen(argv, cwd=repo, stdout=log, stderr=subprocess.STDOUT)
            procs.append(load)
            time.sleep(warmup)
            spies = []
            for i, pid in enumerate(group.pids, start=1):
                spy_argv = spy_record_argv(spy, pid, rate, record_s, out_dir / f"node{i}.txt")
                with (out_dir / f"node{i}.py-spy.log").open("wb") as log:
                    spies.append(subprocess.Popen(spy_argv, stdout=log, stderr=subprocess.STDOUT))
            procs.extend(spies)
            say(f"recording {nodes} node(s) for {record_s:g} s at {rate} Hz")
            codes = [p.wait() for p in spies]
            load.wait(timeout=record_s + warmup + 120)
            group.check_alive()
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)
    finally:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
        stop_procs(procs)
        group.stop()
        shutil.rmtree(base, ignore_errors=True)
    failed = [i for i, code in enumerate(codes, start=1) if code != 0]
    if failed:
        raise click.ClickException(f"py-spy failed for node(s) {failed}: see {out_dir}/node<N>.py-spy.log")
    click.echo(f"load generator output: {out_dir / 'load.txt'}")
    if load.returncode != 0:
        click.echo(f"load generator exited with code {load.returncode}")
    click.echo("\n".join((out_dir / "load.txt").read_text().strip().splitlines()[-12:]))
    for i in range(1, nodes + 1):
        path = out_dir / f"node{i}.txt"
        stacks = parse_collapsed(path.read_text().splitlines()) if path.exists() else Counter()
        click.echo(f"\nnode {i}: {sum(stacks.values())} samples, top {top} by self time ({path})\n")
        click.echo(top_table(stacks, top))
    click.echo(f"\nresults: {out_dir}")


def main(argv: Sequence[str] | None = None) -> None:
    profile_command.main(args=list(argv) if argv is not None else None, prog_name="bench/profile.sh")


if __name__ == "__main__":
    main()
