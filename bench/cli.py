"""Command line of the load generator; `bench_command` can be mounted as `ggap bench`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from bench.config import QUORUMS, READ_MODES, SYSTEMS, BenchConfig, parse_endpoints, parse_mix
from bench.runner import BenchError, run
from bench.stats import format_table


def _endpoints(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_endpoints(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _mix(ctx: click.Context, param: click.Parameter, value: str) -> tuple[tuple[str, float], ...]:
    try:
        return parse_mix(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _headline(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    mix = ",".join(f"{name}={weight:g}" for name, weight in cfg["mix"].items())
    return (
        f"{len(cfg['endpoints'])} endpoint(s), {cfg['clients']} clients in {cfg['workers']} process(es), "
        f"{summary['seconds']:.1f} s measured after {cfg['warmup']:g} s warmup, mix {mix}, "
        f"{cfg['keys']} keys, {cfg['value_size']} B values, reads {cfg['read_mode']}, "
        f"quorum {cfg['quorum']}"
    )


@click.command(name="bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--endpoints",
    default="127.0.0.1:17000",
    show_default=True,
    callback=_endpoints,
    help="Comma-separated host:port list; requests go to them round-robin.",
)
@click.option(
    "--clients",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests in flight at any time (closed loop).",
)
@click.option(
    "--duration",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds measured.",
)
@click.option(
    "--warmup",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds of load before measuring starts.",
)
@click.option("--keys", default=1000, show_default=True, type=click.IntRange(min=1), help="Key space size.")
@click.option("--key-prefix", default="bench/", show_default=True)
@click.option(
    "--value-size",
    default=128,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bytes per written value.",
)
@click.option(
    "--mix",
    default="put=50,get=50",
    show_default=True,
    callback=_mix,
    help="Relative weights of put, get, delete, range, txn (a compare-and-swap on one key).",
)
@click.option("--read-mode", default="linearizable", show_default=True, type=click.Choice(READ_MODES))
@click.option("--quorum", default="majority", show_default=True, type=click.Choice(QUORUMS))
@click.option("--preload", is_flag=True, help="Write every key once before the run, so reads find data.")
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes sharing the clients (so the generator is not the bottleneck).",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Per-request deadline in seconds.",
)
@click.option(
    "--range-limit",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Keys asked per range request.",
)
@click.option("--seed", default=None, type=int, help="Seed the key and op choices (reproducible runs).")
@click.option("--cacert", default="", help="PEM CA bundle: connect with TLS, verifying the nodes.")
@click.option("--cert", default="", help="PEM client certificate (nodes with --client-cert-auth).")
@click.option("--key", "key_file", default="", help="PEM key of --cert.")
@click.option(
    "--system",
    default="ggap",
    show_default=True,
    type=click.Choice(SYSTEMS),
    help="Whose API to speak: ggap's KvService or etcd v3's KV (put/get/range/txn only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr.")
def bench_command(
    endpoints: tuple[str, ...],
    clients: int,
    duration: float,
    warmup: float,
    keys: int,
    key_prefix: str,
    value_size: int,
    mix: tuple[tuple[str, float], ...],
    read_mode: str,
    quorum: str,
    preload: bool,
    processes: int,
    timeout: float,
    range_limit: int,
    seed: int | None,
    cacert: str,
    cert: str,
    key_file: str,
    system: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Drive ggap nodes with a closed-loop KV workload and report throughput and latency.

    Exit status: 0 when the run completed and at least one request succeeded, 1 otherwise.
    Failed requests are counted by gRPC status code, never fatal.
    """
    try:
        cfg = BenchConfig(
            endpoints=endpoints,
            clients=clients,
            duration=duration,
            warmup=warmup,
            keys=keys,
            key_prefix=key_prefix,
            value_size=value_size,
            mix=mix,
            read_mode=read_mode,
            quorum=quorum,
            preload=preload,
            processes=processes,
            timeout=timeout,
            range_limit=range_limit,
            seed=seed,
            cacert=cacert,
            cert=cert,
            key_file=key_file,
            system=system,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        summary = run(cfg, progress_out=None if quiet else sys.stderr)
    except BenchError as exc:
        click.echo(f"bench: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("bench: interrupted", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(_headline(summary))
        if summary["preload"] is not None:
            pre = summary["preload"]
            click.echo(
                f"preload: {pre['written']} of {pre['keys']} keys in {pre['seconds']:.2f} s, "
                f"{pre['errors']} errors"
            )
        click.echo(format_table(summary))
    if summary["preload"] is not None and summary["preload"]["errors"]:
        click.echo(f"bench: preload had {summary['preload']['errors']} failed writes", err=True)
    if summary["total"]["count"] == 0:
        click.echo("bench: no request succeeded", err=True)
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    bench_command.main(args=list(argv) if argv is not None else None, prog_name="python -m bench")
