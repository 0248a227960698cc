"""A cluster of one: the commit rule is "durable in the local log".

The shape is the Raft driver's: proposals queue on a bounded channel, one task turns
everything queued into one batch, the batch is appended to the log (one transaction, one
fsync) and then applied to the KV state (one transaction), and only then are proposers
answered. That is group commit: at high concurrency many requests share one fsync.

SQLite work runs on a single dedicated writer thread (a CapacityLimiter of 1 around
trio.to_thread.run_sync): the log fsync takes milliseconds and must not stall the trio
loop, and one thread hop per batch (not per request) keeps the hop cost amortised.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import attrs
import trio

from ggap import codec
from ggap.consensus.api import AppliedBatch, RoleInfo
from ggap.consensus.applied import AppliedProgress
from ggap.storage import KvStore, LogStore
from ggap.types import ApplyResult, Command, GgapError, Internal, Noop, Unavailable

log = logging.getLogger(__name__)

TERM = 1  # a cluster of one never holds an election
T = TypeVar("T")


@attrs.define(eq=False)
class _Proposal:
    command: Command
    done: trio.Event = attrs.field(factory=trio.Event)
    result: ApplyResult | None = None
    error: BaseException | None = None

    def finish(self, result: ApplyResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.done.set()


class LocalConsensus:
    def __init__(
        self,
        *,
        member_id: int,
        log_store: LogStore,
        kv: KvStore,
        max_batch: int = 1024,
        max_queued: int = 8192,
        log_retain: int = 10_000,
    ) -> None:
        self._member_id = member_id
        self._log = log_store
        self._kv = kv
        self._max_batch = max_batch
        self._log_retain = log_retain
        self._send, self._recv = trio.open_memory_channel[_Proposal](max_queued)
        self._writer = trio.CapacityLimiter(1)
        self._progress = AppliedProgress(kv.applied_index, kv.revision)
        self._commit = max(self._progress.applied, log_store.last_index)
        self._subscribers: list[Callable[[AppliedBatch], None]] = []
        self._pending: set[_Proposal] = set()
        self._closed = False
        self._since_log_compact = 0

    # -- the Consensus protocol ------------------------------------------------------------

    async def propose(self, command: Command) -> ApplyResult:
        if self._closed:
            raise Unavailable("node is shutting down")
        proposal = _Proposal(command)
        self._pending.add(proposal)
        try:
            try:
                await self._send.send(proposal)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise Unavailable("node is shutting down") from None
            await proposal.done.wait()
        finally:
            self._pending.discard(proposal)
        if proposal.error is not None:
            raise proposal.error
        assert proposal.result is not None
        return proposal.result

    async def propose_all(self, command: Command) -> ApplyResult:
        # The only voter has applied it once propose returns.
        return await self.propose(command)

    def leader_client_addr(self) -> str | None:
        return None  # always the leader: nothing is ever forwarded

    async def read_index(self) -> int:
        # Every acknowledged write was applied before its ack, so the commit index is
        # already a safe read index for a cluster of one.
        if self._closed:
            raise Unavailable("node is shutting down")
        return self._commit

    async def wait_applied(self, index: int) -> None:
        await self._progress.wait_applied(index)

    async def wait_revision(self, revision: int) -> None:
        await self._progress.wait_revision(revision)

    def role(self) -> RoleInfo:
        return RoleInfo(
            member_id=self._member_id,
            leader_id=self._member_id,
            term=TERM,
            role="leader",
            commit_index=self._commit,
            applied_index=self._progress.applied,
        )

    def subscribe(self, callback: Callable[[AppliedBatch], None]) -> None:
        self._subscribers.append(callback)

    @property
    def revision(self) -> int:
        return self._progress.revision

    def release_readers(self) -> None:
        """Shutdown: fail every read waiting on the applied index or a revision now, so the
        drain does not sit out the grace period for reads that cannot complete."""
        self._closed = True
        self._progress.close()

    async def maintain(self, fn: Callable[[], T]) -> T:
        """Run local storage upkeep (history pruning) on the writer thread, between batches."""
        return await self._in_writer(fn)

    # -- the commit loop -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the log and the KV writer until cancelled; fails pending proposals on exit."""
        try:
            await self._recover()
            task_status.started()
            # A no-op marks the start of this node's tenure, as a Raft leader's would.
            self._send.send_nowait(_Proposal(Noop()))
            async with self._recv:
                while True:
                    batch = [await self._recv.receive()]
                    while len(batch) < self._max_batch:
                        try:
                            batch.append(self._recv.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._commit_batch(batch)
        finally:
            self._closed = True
            self._send.close()
            shutdown = Unavailable("node is shutting down")
            for p in list(self._pending):
                if not p.done.is_set():
                    p.finish(None, shutdown)
            self._progress.close()

    async def _recover(self) -> None:
        """Re-apply log entries that were durable but not yet applied when we stopped."""
        first = self._kv.applied_index + 1
        last = self._log.last_index
        while first <= last:
            hi = min(last, first + self._max_batch - 1)
            count = await self._in_writer(self._replay, first, hi)
            log.info("replayed log entries %d..%d", first, hi)
            first += count
        self._progress.advance(self._kv.applied_index, self._kv.revision)
        self._commit = max(self._progress.applied, self._log.last_index)

    def _replay(self, lo: int, hi: int) -> int:
        rows = self._log.entries(lo, hi + 1)
        entries = [(idx, codec.decode_command_entry(data)[2]) for idx, _term, data in rows]
        self._kv.apply(entries)
        return max(1, len(rows))

    async def _commit_batch(self, batch: Sequence[_Proposal]) -> None:
        first = self._commit + 1
        commands = [p.command for p in batch]
        try:
            applied, revision = await self._in_writer(self._write, first, commands)
        except BaseException as exc:
            # A storage failure leaves us unable to promise anything: fail this batch
            # loudly and let the node stop (the nursery sees the exception).
            err = Internal("storage failure")
            for p in batch:
                p.finish(None, err)
            if not isinstance(exc, trio.Cancelled):
                log.critical("write batch %d..%d failed", first, first + len(batch) - 1)
            raise
        self._commit = first + len(batch) - 1
        self._progress.advance(self._commit, revision)
        events = []
        for p, item in zip(batch, applied, strict=True):
            if item is None:
                p.finish(None, Internal(f"entry skipped at apply: {p.command!r}"))
            elif isinstance(item.result, GgapError):
                p.finish(None, item.result)
            else:
                p.finish(item.result, None)
                events.extend(item.events)
        published = AppliedBatch(applied_index=self._progress.applied, revision=revision, events=events)
        for callback in self._subscribers:
            callback(published)

    def _write(self, first: int, commands: Sequence[Command]) -> tuple[list, int]:
        """Runs on the writer thread: log first (durable), then apply."""
        encoded = [
            (first + i, TERM, codec.encode_command_entry(first + i, TERM, cmd))
            for i, cmd in enumerate(commands)
        ]
        self._log.append(encoded)
        applied = self._kv.apply([(first + i, cmd) for i, cmd in enumerate(commands)])
        self._since_log_compact += len(commands)
        if self._since_log_compact >= self._log_retain:
            self._compact_log()
        return applied, self._kv.revision

    def _compact_log(self) -> None:
        """The KV database is this node's snapshot: once it is checkpointed durably, log
        entries it contains (minus a tail kept for inspection) can go."""
        self._kv.checkpoint()
        upto = self._kv.applied_index - self._log_retain
        if upto > self._log.first_index:
            self._log.compact(upto)
        self._since_log_compact = 0

    async def _in_writer(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._writer)
