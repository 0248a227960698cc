"""`ggap snapshot save|status|restore`: back a node's state up to a file, check a file,
build data dirs for a new cluster from one.

- `save` streams ClusterService.Snapshot from the first endpoint that connects (like every
  client command, and like etcd's `snapshot save`, which takes it from the endpoint it is
  given): the file holds *that node's* applied state. Give the leader's endpoint for the
  freshest copy; a follower's trails it by what it has not applied yet.
- FILE is never half-written: the stream goes to FILE.part, which is checked (length and
  SHA-256 against what the server announced), given its footer (ggap/storage/backup.py),
  fsynced and renamed to FILE; on any failure FILE.part is removed. An existing FILE is
  refused (exit 2) unless --force: etcd replaces it silently, but a mistyped path should
  not cost yesterday's backup.
- `restore` is offline and refuses (exit 2, nothing touched) a damaged file or a data dir
  that exists and is not empty (ggap/storage/restore.py).

The storage package is imported inside the commands, as for `ggap inspect`.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click
import trio

import ggap
from ggap.cli import _output as out
from ggap.cli._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ClientOptions,
    client_command,
    fail,
    output_option,
    run_async,
)
from ggap.client import ClientError, Connection, open_connection
from ggap.config.peers import parse_peers
from ggap.types.errors import GgapError, StatusCode

if TYPE_CHECKING:
    from ggap.storage.backup import BackupMeta, BackupWriter

# How long the server may take to copy its database before the first message arrives.
DEFAULT_COPY_TIMEOUT_S = 600.0
_PROGRESS_EVERY_S = 0.5
_PROGRESS_EVERY_S_NO_TTY = 5.0


def _storage_unavailable(e: ImportError) -> NoReturn:
    fail(StatusCode.UNIMPLEMENTED.name, f"snapshots are not available in this build: {e}", EXIT_FAILURE)


class _Progress:
    """`received X of Y` on stderr: rewritten in place on a terminal, an occasional line
    otherwise (logs), and always a last line once everything arrived."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self._total = total
        self._tty = stream.isatty()
        self._every = _PROGRESS_EVERY_S if self._tty else _PROGRESS_EVERY_S_NO_TTY
        self._last = time.monotonic()

    def _line(self, done: int) -> str:
        pct = 100 * done // self._total if self._total else 100
        sizes = f"{out.human_size(done)} of {out.human_size(self._total)}"
        return f"received {sizes} ({done}/{self._total} bytes, {pct}%)"

    def update(self, done: int) -> None:
        now = time.monotonic()
        if done < self._total and now - self._last < self._every:
            return
        self._last = now
        if self._tty:
            end = "\n" if done >= self._total else ""
            self._stream.write("\r" + self._line(done) + end)
        else:
            self._stream.write(self._line(done) + "\n")
        self._stream.flush()


def _bad_stream(why: str) -> ClientError:
    return ClientError(StatusCode.DATA_LOSS, f"the snapshot stream is inconsistent: {why}")


async def _receive(client: Connection, writer: BackupWriter, copy_timeout_s: float) -> BackupMeta:
    """Write the stream into `writer`, checking it message by message; the metadata for
    the footer once the last byte is in (the writer checks length and hash on seal)."""
    from ggap.storage.backup import BackupMeta, new_backup_id, utc_now_text

    meta: dict[str, Any] | None = None
    remaining = 0
    sha256 = ""
    progress: _Progress | None = None
    click.echo(f"asking {client.endpoint} for a snapshot (it copies its database first)", err=True)
    async with aclosing(client.snapshot(first_timeout_s=copy_timeout_s)) as stream:
        async for msg in stream:
            if sha256:
                raise _bad_stream("a message after the last one")
            if meta is None:
                if not msg.HasField("info") or msg.blob or msg.remaining_bytes != msg.info.size_bytes:
                    raise _bad_stream("the first message does not describe the snapshot")
                info = msg.info
                meta = {
                    "sqlite_bytes": info.size_bytes,
                    "index": info.applied_index,
                    "term": info.applied_term,
                    "revision": info.revision,
                    "compact_revision": info.compact_revision,
                    "member_id": msg.header.member_id,
                }
                remaining = info.size_bytes
                progress = _Progress(sys.stderr, info.size_bytes)
                continue
            if len(msg.blob) > remaining or msg.remaining_bytes != remaining - len(msg.blob):
                raise _bad_stream(
                    f"{len(msg.blob)} bytes with {msg.remaining_bytes} to come, after {remaining} announced"
                )
            await trio.to_thread.run_sync(writer.write, msg.blob)
            remaining = msg.remaining_bytes
            assert progress is not None
            progress.update(writer.written)
            if msg.sha256:
                if remaining:
                    raise _bad_stream(f"a checksum with {remaining} bytes still to come")
                sha256 = msg.sha256
    if meta is None:
        raise _bad_stream("the server ended the stream without sending anything")
    if not sha256:
        raise _bad_stream(f"it ended with {remaining} of {meta['sqlite_bytes']} bytes still to come")
    return BackupMeta(
        sha256=sha256,
        created_at=utc_now_text(),
        backup_id=new_backup_id(),
        ggap_version=ggap.__version__,
        **meta,
    )


def _render(doc: dict[str, Any], output: str, *, footer: str = "") -> None:
    if output.lower() == "json":
        click.echo(json.dumps(doc))
        return
    text = out.render_table(("FIELD", "VALUE"), out.flatten(doc))
    click.echo(text + (f"\n{footer}" if footer else ""))


@click.group("snapshot")
def snapshot_group() -> None:
    """Back a node's state up to a file (save), check a file (status), and build the data
    dirs of a new cluster from one (restore)."""


@snapshot_group.command("save")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE (and a FILE.part left behind) if it exists.")
@click.option(
    "--copy-timeout",
    "copy_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_COPY_TIMEOUT_S,
    show_default=True,
    help="Seconds allowed for the node to copy its database (until the first message).",
)
@client_command
def save_cmd(file: Path, force: bool, copy_timeout_s: float, opts: ClientOptions) -> None:
    """Save a consistent copy of a node's state to FILE.

    \b
    The copy comes from the first endpoint that connects and holds that node's applied
    state (give the leader's endpoint for the freshest). It arrives in FILE.part, is
    checked (length, SHA-256), gets a self-verifying footer, is fsynced and renamed to
    FILE; on failure FILE.part is removed. Progress goes to stderr, a summary to stdout.
    --timeout bounds connecting and every wait for the next message but the first.

    Exit status: 0 saved; 2 FILE exists (without --force) or cannot be created;
    1 the node cannot be reached or the transfer failed.
    """
    try:
        from ggap.storage.backup import BackupWriter
    except ImportError as e:
        _storage_unavailable(e)
    writer = BackupWriter(file.absolute(), overwrite=force)
    try:
        writer.open()  # refusals first: before any server is asked for anything
    except GgapError as e:
        fail(e.code.name, e.message, EXIT_USAGE)
    except OSError as e:
        why = e.strerror or str(e)
        fail(StatusCode.FAILED_PRECONDITION.name, f"cannot create {writer.part}: {why}", EXIT_USAGE)

    saved: dict[str, Any] = {}

    async def body() -> int:
        try:
            async with open_connection(
                opts.endpoints, timeout_s=opts.timeout_s, ssl_context=opts.tls
            ) as client:
                meta = await _receive(client, writer, copy_timeout_s)
                saved["endpoint"] = client.endpoint
            saved["meta"] = await trio.to_thread.run_sync(writer.seal, meta)
        except GgapError as e:  # seal's refusals: the bytes do not match the announcement
            raise ClientError(e.code, e.message) from None
        except OSError as e:
            raise ClientError(StatusCode.UNAVAILABLE, f"cannot write {writer.part}: {e}") from None
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.discard)
        return 0

    try:
        run_async(body)
    finally:
        writer.discard()  # idempotent; body's own call normally did it already
    meta: BackupMeta = saved["meta"]
    doc = {"file": str(writer.path), "endpoint": saved["endpoint"], **meta.to_dict()}
    _render(doc, opts.output)


@snapshot_group.command("status")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@output_option
def status_cmd(file: Path, output: str) -> None:
    """Check FILE (footer and SHA-256 of every byte) and show what it holds.

    Exit status: 0 the file is whole; 2 it is damaged, truncated, not a snapshot, or
    from a newer ggap.
    """
    try:
        from ggap.storage.backup import verify_backup
    except ImportError as e:
        _storage_unavailable(e)
    try:
        meta = verify_backup(file)
    except GgapError as e:
        fail(e.code.name, e.message, EXIT_USAGE)
    except OSError as e:
        fail(StatusCode.UNAVAILABLE.name, f"cannot read {file}: {e}", EXIT_FAILURE)
    _render({"file": str(file.absolute()), "verified": True, **meta.to_dict()}, output)


def _parse_peers(ctx: click.Context, param: click.Parameter, value: str) -> dict[int, str]:
    try:
        return parse_peers(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@snapshot_group.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="The new node's data dir: must not exist, or be empty.",
)
@click.option(
    "--node-id", type=click.IntRange(min=1), default=1, show_default=True, help="The new node's id."
)
@click.option(
    "--peers",
    default="",
    callback=_parse_peers,
    help="The new cluster's voters, ID=HOST:PORT,... this node included, exactly as every node "
    "will get them from `ggap node --peers`. Omit for a cluster of one.",
)
@click.option(
    "--cluster-token",
    default=None,
    help="Mixed into the new cluster's identity [default: the backup's id, the same for every "
    "node restored from FILE]. Give each cluster its own when restoring one FILE twice.",
)
@output_option
def restore_cmd(
    file: Path, data_dir: Path, node_id: int, peers: dict[int, str], cluster_token: str | None, output: str
) -> None:
    """Build a node's data dir from FILE (offline; do not point it at a running node).

    \b
    Restore every node of the new cluster from the same FILE, each with its own
    --node-id and the same --peers, then start them with `ggap node` (same ids, peers
    and data dirs). They start at the backup's index, revision and compact revision,
    with a fresh term, and a cluster identity of their own: they refuse to talk to the
    cluster the backup came from.

    Exit status: 0 restored; 2 nothing was changed because FILE is damaged or from a
    newer ggap, the data dir exists and is not empty, or the arguments are wrong.
    """
    try:
        from ggap.storage.restore import RESTORED_TERM, restore_data_dir
    except ImportError as e:
        _storage_unavailable(e)
    try:
        done = restore_data_dir(file, data_dir, node_id=node_id, peers=peers, cluster_token=cluster_token)
    except GgapError as e:
        fail(e.code.name, e.message, EXIT_USAGE)
    except OSError as e:
        fail(StatusCode.UNAVAILABLE.name, f"restore failed, nothing was changed: {e}", EXIT_FAILURE)
    meta = done.backup
    doc = {
        "data_dir": str(done.data_dir),
        "node_id": done.node_id,
        "voters": list(done.voters),
        "peers": ",".join(f"{i}={a}" for i, a in sorted(done.members.items())),
        "cluster_token": done.cluster_token,
        "index": meta.index,
        "term": RESTORED_TERM,
        "revision": meta.revision,
        "compact_revision": meta.compact_revision,
        "backup": {"file": str(file.absolute()), "backup_id": meta.backup_id, "created_at": meta.created_at},
    }
    start = f"ggap node --node-id {done.node_id} --data-dir {done.data_dir}"
    if done.members:
        start += f" --peers {doc['peers']}"
    _render(doc, output, footer=f"start it with: {start} (plus its --client-addr and --cluster-addr)")


SNAPSHOT_COMMANDS = (snapshot_group,)
