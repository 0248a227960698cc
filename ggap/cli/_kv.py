"""Client commands: one click command per API call, each a thin shell over ggap.client."""

from __future__ import annotations

from contextlib import aclosing
from typing import IO

import click
import trio
from google.protobuf import json_format

from ggap.cli import _output as out
from ggap.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    ClientOptions,
    DurationMs,
    cli_client,
    client_command,
    exit_code_for,
    mode_option,
    quorum_option,
    read_mode,
    run_async,
    write_quorum,
)
from ggap.client import ClientError, open_connection, parse_endpoints
from ggap.pb import kv_pb2

_REVISION = click.IntRange(min=0)


@click.command("put")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--value-file", type=click.File("rb"), help="Read the value as bytes from a file ('-': stdin).")
@click.option(
    "--ttl", type=DurationMs(), help="Expire the key after this long: 500 (ms), 500ms, 10s, 5m, 1h."
)
@quorum_option
@click.option("--prev-kv", is_flag=True, help="Also print the value this put replaced.")
@client_command
def put_cmd(
    key: str,
    value: str | None,
    value_file: IO[bytes] | None,
    ttl: int | None,
    quorum: str | None,
    prev_kv: bool,
    opts: ClientOptions,
) -> None:
    """Write KEY = VALUE (VALUE is text, stored as UTF-8 bytes)."""
    if value is not None and value_file is None:
        data = value.encode("utf-8")
    elif value_file is not None and value is None:
        data = value_file.read()
    else:
        raise click.UsageError("give exactly one of VALUE or --value-file")
    req = kv_pb2.PutRequest(
        key=key, value=data, quorum=write_quorum(quorum), ttl_ms=ttl or 0, prev_kv=prev_kv
    )

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("Put", req, write=True)
        click.echo(out.to_json(resp) if opts.json else out.format_put(resp))

    run_async(body)


@click.command("get")
@click.argument("key")
@mode_option
@click.option("--revision", type=_REVISION, default=0, help="Read as of this revision (0: latest).")
@click.option(
    "--min-revision", type=_REVISION, default=0, help="Wait until the node has applied this revision."
)
@client_command
def get_cmd(key: str, mode: str | None, revision: int, min_revision: int, opts: ClientOptions) -> None:
    """Read KEY. A missing key prints 'key not found' on stderr and exits 1
    (with -o json the response, found=false, is printed first)."""
    req = kv_pb2.GetRequest(key=key, read_mode=read_mode(mode), revision=revision, min_revision=min_revision)

    async def body() -> int:
        async with cli_client(opts) as client:
            resp = await client.call("Get", req, write=False)
        if opts.json:
            click.echo(out.to_json(resp))
        elif resp.found:
            click.echo(out.format_get(resp))
        if not resp.found:
            click.echo(f"Error: NOT_FOUND: key not found: {key}", err=True)
            return EXIT_FAILURE
        return EXIT_OK

    run_async(body)


@click.command("del")
@click.argument("key")
@quorum_option
@click.option("--prev-kv", is_flag=True, help="Also print the deleted value.")
@client_command
def delete_cmd(key: str, quorum: str | None, prev_kv: bool, opts: ClientOptions) -> None:
    """Delete KEY (deleting a missing key is not an error: it reports 0 deleted)."""
    req = kv_pb2.DeleteRequest(key=key, quorum=write_quorum(quorum), prev_kv=prev_kv)

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("Delete", req, write=True)
        click.echo(out.to_json(resp) if opts.json else out.format_delete(resp))

    run_async(body)


@click.command("range")
@click.argument("start", required=False)
@click.argument("end", required=False)
@click.option("--prefix", help="Keys starting with this (instead of START/END).")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many keys (0: no limit).")
@click.option("--keys-only", is_flag=True, help="Leave values out.")
@mode_option
@click.option("--revision", type=_REVISION, default=0, help="Read as of this revision (0: latest).")
@client_command
def range_cmd(
    start: str | None,
    end: str | None,
    prefix: str | None,
    limit: int,
    keys_only: bool,
    mode: str | None,
    revision: int,
    opts: ClientOptions,
) -> None:
    """List keys in [START, END) in byte order (no END: to the last key; nothing: all keys),
    or with --prefix every key starting with a prefix."""
    if prefix is not None and start is not None:
        raise click.UsageError("--prefix cannot be combined with START/END")
    req = kv_pb2.RangeRequest(
        prefix=prefix or "",
        start=start or "",
        end=end or "",
        limit=limit,
        read_mode=read_mode(mode),
        revision=revision,
        keys_only=keys_only,
    )

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("Range", req, write=False)
        click.echo(out.to_json(resp) if opts.json else out.format_range(resp, keys_only=keys_only))

    run_async(body)


@click.command("history")
@click.argument("key")
@click.option("--limit", type=click.IntRange(min=0), default=0, help="At most this many versions (0: all).")
@mode_option
@client_command
def history_cmd(key: str, limit: int, mode: str | None, opts: ClientOptions) -> None:
    """Show the retained versions of KEY, newest first, deletions included."""
    req = kv_pb2.HistoryRequest(key=key, limit=limit, read_mode=read_mode(mode))

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("History", req, write=False)
        click.echo(out.to_json(resp) if opts.json else out.format_history(resp))

    run_async(body)


@click.command("watch")
@click.argument("key", required=False)
@click.option("--prefix", help="Watch every key starting with this (instead of KEY).")
@click.option(
    "--start-revision", type=_REVISION, default=0, help="Replay from this revision, inclusive (0: from now)."
)
@click.option("--prev-kv", is_flag=True, help="Include each key's previous value.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Exit after this many events.")
@client_command
def watch_cmd(
    key: str | None,
    prefix: str | None,
    start_revision: int,
    prev_kv: bool,
    count: int | None,
    opts: ClientOptions,
) -> None:
    """Print changes to KEY (or under --prefix) as they happen, one line per event
    (-o json: one JSON Event per line). Runs until --count events or Ctrl-C (exit 0); when
    a node goes away it resumes on another endpoint, no event lost or repeated."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give exactly one of KEY or --prefix")
    if key == "" or prefix == "":
        raise click.UsageError("the key or prefix must not be empty")

    async def body() -> None:
        seen = 0
        # Resumes on another endpoint from the next revision when a stream breaks.
        async with cli_client(opts) as client:
            events = client.watch_raw(key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv)
            async with aclosing(events):
                async for event in events:
                    click.echo(out.to_json(event) if opts.json else out.format_event(event))
                    seen += 1
                    if count is not None and seen >= count:
                        return

    run_async(body, interrupt_exit=EXIT_OK)


_TXN_HELP = """Run a transaction read as proto JSON (a TxnRequest) from --file or stdin.

\b
Bytes fields (value) are base64, as in proto JSON; enum values are their names.
Example: if "k" holds "v1", set it to "v2", else read it:
\b
  {
    "compare": [{"key": "k", "target": "COMPARE_TARGET_VALUE",
                 "op": "COMPARE_OP_EQUAL", "value": "djE="}],
    "success": [{"put": {"key": "k", "value": "djI="}}],
    "failure": [{"get": {"key": "k"}}]
  }
\b
  echo '{"success": [{"delete": {"key": "k"}}]}' | ggap txn
"""


@click.command("txn", help=_TXN_HELP)
@click.option(
    "--file",
    "file",
    type=click.File("r", encoding="utf-8"),
    default="-",
    help="TxnRequest JSON ('-': stdin).",
)
@client_command
def txn_cmd(file: IO[str], opts: ClientOptions) -> None:
    text = file.read()
    if not text.strip():
        raise click.BadParameter("empty input; expected a TxnRequest as JSON", param_hint="--file")
    try:
        req = json_format.Parse(text, kv_pb2.TxnRequest())
    except json_format.ParseError as e:
        raise click.BadParameter(f"not a TxnRequest: {e}", param_hint="--file") from None

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("Txn", req, write=True)
        click.echo(out.to_json(resp) if opts.json else out.format_txn(resp))

    run_async(body)


@click.command("compact")
@click.argument("revision", type=_REVISION)
@client_command
def compact_cmd(revision: int, opts: ClientOptions) -> None:
    """Drop history below REVISION (each key still keeps its newest version)."""

    async def body() -> None:
        async with cli_client(opts) as client:
            resp = await client.call("Compact", kv_pb2.CompactRequest(revision=revision), write=True)
        click.echo(out.to_json(resp) if opts.json else out.format_compact(resp, revision))

    run_async(body)


@click.command("status")
@client_command
def status_cmd(opts: ClientOptions) -> None:
    """Ask every endpoint (not just the first that answers), all at once, for its status:
    one row each, in the order given. LAG is the highest commit index among the answers
    minus that node's applied index. An endpoint that fails gets a row with its error (and
    the error on stderr); the exit code is then non-zero."""
    names = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parse_endpoints(opts.endpoints)]

    async def body() -> int:
        answers: dict[int, kv_pb2.StatusResponse | ClientError] = {}

        async def ask(i: int, name: str) -> None:
            try:
                async with open_connection(name, timeout_s=opts.timeout_s, ssl_context=opts.tls) as client:
                    answers[i] = await client.status()
            except ClientError as e:
                answers[i] = e

        async with trio.open_nursery() as nursery:
            for i, name in enumerate(names):
                nursery.start_soon(ask, i, name)
        rc = EXIT_OK
        results: list[out.StatusResult] = []
        for i, name in enumerate(names):
            answer = answers[i]
            if isinstance(answer, ClientError):
                click.echo(f"Error: {answer.code.name}: {name}: {answer.message}", err=True)
                rc = max(rc, exit_code_for(answer.code))
                results.append((name, f"{answer.code.name}: {answer.message}"))
            else:
                results.append((name, answer))
        if opts.json:
            for line in out.status_json_lines(results):
                click.echo(line)
        else:
            click.echo(out.format_status(results))
        return rc

    run_async(body)


KV_COMMANDS = (
    put_cmd,
    get_cmd,
    delete_cmd,
    range_cmd,
    history_cmd,
    watch_cmd,
    txn_cmd,
    compact_cmd,
    status_cmd,
)
