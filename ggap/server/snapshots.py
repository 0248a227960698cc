"""ClusterService.Snapshot: a fresh, consistent copy of this node's state machine, streamed.

What a stream holds: kv.db as this node has applied it (an eventual-mode read: no read
barrier, any node may serve it, a follower's copy may trail the leader's by what it has
not applied yet). The first message says which log index, term, revision and compact
revision the copy holds and how long it is; then the copy in chunks of at most 1 MiB,
each with the bytes still to come; the last chunk carries the SHA-256 of the whole copy.

Why it is built like this:

- **The copy is `VACUUM INTO`**, the same read transaction the node's own snapshots use
  (ggap/storage/snapshot.py): writes and reads go on while it runs. It runs on a worker
  thread, and so does every read of a chunk (with its hashing): nothing here blocks the
  trio loop, and every message is preceded by a thread hop and followed by the guard's
  checkpoint (ggap/rpc/server.py), so streaming never starves the raft loop.
- **The temporary file is unlinked as soon as it is opened**, before the first message
  leaves. However the stream ends (done, failed, the client gone, the node stopping), no
  file is left behind, and the space comes back when the descriptor is closed. A crash
  during the copy can leave one `snap/backup-*.tmp`, removed at the next start.
- **purerpc never tells a handler that its client went away** (PITFALLS §1.3). What it
  does: when the connection ends, our connection handler cancels its requests, so the
  pending send fails and the generator is closed (its `finally` closes the file). A
  client that stays connected but stops reading leaves the send parked forever; such a
  stream is *stalled* once one message has waited `server.snapshot_stall_timeout_ms` for
  the client. Stalled streams lose their slot (and their copy: the file is closed) when
  the next Snapshot request finds every slot taken, so at most
  `limits.max_snapshot_streams` copies exist at any time and a stuck client can never lock
  backups out. A request that finds every slot busy with live streams gets
  RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from ggap.pb import kv_pb2 as pb
from ggap.replica.transfer import CHUNK_BYTES
from ggap.storage.snapshot import BackupCopy, take_backup_copy
from ggap.types import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


@attrs.define(eq=False)
class _Stream:
    copy: BackupCopy | None = None
    # trio time at which the current message was handed to purerpc; None while we work.
    waiting_since: float | None = None
    abandoned: bool = False


class SnapshotStreams:
    """Takes the copies and streams them, within the stream limit (module docstring)."""

    def __init__(
        self,
        *,
        kv_path: str | os.PathLike[str],
        directory: Path,
        term_at: Callable[[int], int],
        max_streams: int,
        stall_timeout_s: float,
        max_message_bytes: int,
        busy_timeout_ms: int,
        cluster_id: str = "",
    ) -> None:
        """`term_at(index)` gives the term of the log entry at `index` (0 if unknown); it is
        called on a worker thread. Chunks stay under half of `max_message_bytes`, so a
        client port configured for small messages still gets messages it accepts."""
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        self._kv_path = kv_path
        self._dir = directory
        self._term_at = term_at
        self._max = max_streams
        self._stall_timeout_s = stall_timeout_s
        self._chunk = min(CHUNK_BYTES, max(4096, max_message_bytes // 2))
        self._busy_timeout_ms = busy_timeout_ms
        self._cluster_id = cluster_id
        self._active: set[_Stream] = set()

    @property
    def active(self) -> int:
        """Streams holding a slot (being copied or sent)."""
        return len(self._active)

    def _admit(self) -> _Stream:
        now = trio.current_time()
        for other in list(self._active):
            if other.waiting_since is not None and now - other.waiting_since > self._stall_timeout_s:
                self._abandon(other, now - other.waiting_since)
        if len(self._active) >= self._max:
            raise ResourceExhausted(
                f"{len(self._active)} snapshot streams are already running "
                f"(limits.max_snapshot_streams = {self._max}); try again later"
            )
        stream = _Stream()
        self._active.add(stream)
        return stream

    def _abandon(self, stream: _Stream, waited_s: float) -> None:
        """Free a stalled stream's slot and copy. It is parked in purerpc's send (never in
        one of our threads), so closing its file here cannot race a read."""
        log.warning(
            "snapshot stream abandoned: its client took no message for %.1fs "
            "(server.snapshot_stall_timeout_ms)",
            waited_s,
        )
        stream.abandoned = True
        self._active.discard(stream)
        if stream.copy is not None:
            stream.copy.file.close()

    def _take_copy(self, stream: _Stream) -> tuple[BackupCopy, int]:
        """Worker thread: the copy (held by `stream` at once, so the generator's `finally`
        closes it even if the request was cancelled while we ran) and its entry's term."""
        copy = take_backup_copy(self._kv_path, self._dir, busy_timeout_ms=self._busy_timeout_ms)
        stream.copy = copy
        return copy, self._term_at(copy.state.index)

    @staticmethod
    def _read_chunk(copy: BackupCopy, size: int, digest: Any) -> bytes:
        """Worker thread: the next `size` bytes of the copy, hashed."""
        data = copy.file.read(size)
        if data:
            digest.update(data)
        return data

    async def stream(self, header: Callable[[int], pb.ResponseHeader]) -> AsyncIterator[pb.SnapshotResponse]:
        """The messages of one Snapshot call; `header(revision)` builds the response header."""
        stream = self._admit()
        try:
            copy, term = await trio.to_thread.run_sync(self._take_copy, stream)
            state = copy.state
            log.info(
                "snapshot stream: copy at index %d (revision %d, %d bytes)",
                state.index,
                state.revision,
                copy.size,
            )
            info = pb.SnapshotInfo(
                applied_index=state.index,
                applied_term=term,
                revision=state.revision,
                compact_revision=state.compact_revision,
                size_bytes=copy.size,
                cluster_id=self._cluster_id,
            )
            first = pb.SnapshotResponse(header=header(state.revision), info=info, remaining_bytes=copy.size)
            stream.waiting_since = trio.current_time()
            yield first
            self._resumed(stream)
            digest = hashlib.sha256()
            remaining = copy.size
            while True:
                data = b""
                if remaining:
                    data = await trio.to_thread.run_sync(
                        self._read_chunk, copy, min(self._chunk, remaining), digest
                    )
                    if not data:
                        raise Unavailable(f"the snapshot copy ended {remaining} bytes early")
                    remaining -= len(data)
                msg = pb.SnapshotResponse(remaining_bytes=remaining, blob=data)
                if remaining == 0:
                    msg.sha256 = digest.hexdigest()
                stream.waiting_since = trio.current_time()
                yield msg
                self._resumed(stream)
                if remaining == 0:
                    return
        finally:
            self._active.discard(stream)
            if stream.copy is not None:
                stream.copy.file.close()

    @staticmethod
    def _resumed(stream: _Stream) -> None:
        """purerpc took the message: the client is reading. A stream that was abandoned
        while it waited ends here (its copy is closed already)."""
        stream.waiting_since = None
        if stream.abandoned:
            raise Unavailable("snapshot stream abandoned: the client stopped reading")
