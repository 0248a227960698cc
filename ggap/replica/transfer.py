"""InstallSnapshot over the wire: stream a snapshot file to a follower, receive one.

The leader opens a dedicated snapshot connection to the follower (`PeerTransport.
open_snapshot_stream`), sends a header (the SNAPSHOT message, the file's size and SHA-256),
then the file in chunks, and waits for the follower's verdict. The follower writes the
chunks to a temporary file in its snapshot directory, checks size and hash, fsyncs, checks
that the file really is a kv.db snapshot at the message's index, renames it into place and
only then hands the SNAPSHOT message to its raft loop. Memory is bounded on both sides by
one chunk. A broken or stalled connection fails the transfer on both sides: the leader
reports it to the core, which probes the follower again and starts a fresh transfer; the
follower deletes its partial file. A crash at any point leaves at most a temporary file,
removed at the next start.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import trio

from ggap.consensus.raft import Message
from ggap.storage.snapshot import SnapshotFile, read_snapshot_state
from ggap.transport import PeerTransport
from ggap.transport.peer import SnapshotStream
from ggap.transport.wire import (
    SnapshotHeader,
    decode_snapshot_ack,
    decode_snapshot_header,
    encode_snapshot_ack,
    encode_snapshot_header,
)
from ggap.types.errors import CodecError, StorageCorrupt

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class SnapshotTransferError(Exception):
    """The transfer failed; the message says why (the other side was told, if reachable)."""


async def send_snapshot(
    transport: PeerTransport,
    msg: Message,
    snap: SnapshotFile,
    *,
    io_timeout_s: float,
    verdict_timeout_s: float,
) -> None:
    """Stream `snap` to `msg.to`; returns once the follower has it durably, else raises."""
    header = SnapshotHeader(message=msg, size=snap.size, sha256=snap.sha256)
    async with transport.open_snapshot_stream(msg.to) as stream:
        await stream.send(encode_snapshot_header(header), io_timeout_s)
        async with await trio.open_file(snap.path, "rb") as f:
            sent = 0
            while sent < snap.size:
                chunk = await f.read(min(CHUNK_BYTES, snap.size - sent))
                if not chunk:
                    raise SnapshotTransferError(f"{snap.path} shrank while sent ({sent} of {snap.size})")
                await stream.send(chunk, io_timeout_s)
                sent += len(chunk)
        ok, reason = decode_snapshot_ack(await stream.receive(verdict_timeout_s))
    if not ok:
        raise SnapshotTransferError(f"node {msg.to} refused the snapshot: {reason}")


async def receive_snapshot(
    stream: SnapshotStream, directory: Path, *, io_timeout_s: float
) -> tuple[Message, Path]:
    """Receive one transfer into `directory`; returns the SNAPSHOT message and the verified
    file (`received-<index>.db`). Tells the sender the verdict either way."""
    try:
        header = decode_snapshot_header(await stream.receive(io_timeout_s))
    except CodecError as exc:
        await _verdict(stream, False, f"bad header: {exc}", io_timeout_s)
        raise SnapshotTransferError(f"bad snapshot header from {stream.remote}: {exc}") from exc
    meta = header.message.snapshot
    assert meta is not None
    tmp = directory / f"incoming-{uuid.uuid4().hex}.tmp"
    try:
        digest = hashlib.sha256()
        got = 0
        async with await trio.open_file(tmp, "wb") as f:
            while got < header.size:
                chunk = await stream.receive(io_timeout_s)
                if got + len(chunk) > header.size:
                    raise SnapshotTransferError(f"more data than the announced {header.size} bytes")
                digest.update(chunk)
                await f.write(chunk)
                got += len(chunk)
            await f.flush()
            await trio.to_thread.run_sync(os.fsync, f.fileno())
        if digest.hexdigest() != header.sha256:
            raise SnapshotTransferError("checksum mismatch")
        index, _revision = await trio.to_thread.run_sync(read_snapshot_state, tmp)
        if index != meta.index:
            raise SnapshotTransferError(f"the file holds index {index}, the message says {meta.index}")
        final = directory / f"received-{meta.index:020d}.db"
        await trio.to_thread.run_sync(os.replace, tmp, final)
    except (SnapshotTransferError, StorageCorrupt) as exc:
        tmp.unlink(missing_ok=True)
        await _verdict(stream, False, str(exc), io_timeout_s)
        raise SnapshotTransferError(f"snapshot {meta.index} from {stream.remote}: {exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    await _verdict(stream, True, "", io_timeout_s)
    return header.message, final


async def _verdict(stream: SnapshotStream, ok: bool, reason: str, timeout_s: float) -> None:
    with trio.move_on_after(timeout_s):
        try:
            await stream.send(encode_snapshot_ack(ok, reason[:500]), timeout_s)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
