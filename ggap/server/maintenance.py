"""Keeping a long-lived node's space bounded.

History retention (per-key depth pruning and automatic compaction) is decided by the
leader and travels through the log as `Prune` and `Compact` commands, so every replica
keeps exactly the same versions and refuses exactly the same point-in-time reads. Giving
space back to the file system (incremental vacuum, WAL truncation) is physical and local
to each node. Every step is small — one bounded command or one short write transaction
between applies — so none of it stops reads or writes for long.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from ggap.config.model import MvccConfig, StorageConfig
from ggap.replica import Consensus
from ggap.server.reads import ReaderPool
from ggap.storage import DbSpace, KvReader, KvStore, LogStore, db_space, dir_size
from ggap.types import Compact, GgapError, OutOfRange, Prune, ResourceExhausted

log = logging.getLogger(__name__)


def compaction_target(
    revision: int,
    samples: collections.deque[tuple[float, int]],
    now: float,
    *,
    keep_revisions: int,
    keep_ms: int,
) -> int:
    """The revision automatic compaction may compact to (0: none yet).

    `keep_revisions` keeps the last N revisions; `keep_ms` keeps what was written in the
    last interval, using `samples` of (time, revision) taken by this leader, oldest first
    (trimmed here to the newest one old enough). With both rules on, the higher target
    wins, so both bounds hold."""
    target = 0
    if keep_revisions > 0:
        target = max(target, revision - keep_revisions)
    if keep_ms > 0:
        cutoff = now - keep_ms / 1000
        while len(samples) > 1 and samples[1][0] <= cutoff:
            samples.popleft()
        if samples and samples[0][0] <= cutoff:
            target = max(target, samples[0][1])
    return target


class HistoryKeeper:
    """Leader-side: replicated history pruning and automatic compaction."""

    def __init__(
        self,
        consensus: Consensus,
        readers: ReaderPool,
        config: MvccConfig,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self._consensus = consensus
        self._readers = readers
        self._config = config
        self._clock = clock
        self._cursor: str | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._leading_term = 0

    async def run(self) -> None:
        interval = self._config.prune_interval_ms / 1000
        while True:
            await trio.sleep(interval)
            role = self._consensus.role()
            if role.role != "leader":
                self._leading_term = 0
                continue
            if role.term != self._leading_term:
                # A new leadership: revision samples of an earlier one are not ours to trust.
                self._leading_term = role.term
                self._samples.clear()
            try:
                await self.compact_step()
                await self.prune_pass()
            except GgapError as exc:
                # Not fatal (a lost leadership lands here too): the next pass retries.
                log.warning("history maintenance failed: %s", exc)

    async def compact_step(self) -> int:
        """Propose the compaction the rules allow, in steps visiting at most
        compact_step_versions versions each; returns the compact revision reached (0: none
        due)."""
        cfg = self._config
        if cfg.auto_compact_revisions <= 0 and cfg.auto_compact_interval_ms <= 0:
            return 0
        _, revision, compact = self._readers.inline(KvReader.state)
        now = self._clock()
        if not self._samples or self._samples[-1][1] != revision:
            self._samples.append((now, revision))
        target = compaction_target(
            revision,
            self._samples,
            now,
            keep_revisions=cfg.auto_compact_revisions,
            keep_ms=cfg.auto_compact_interval_ms,
        )
        reached = steps = 0
        while target > compact:
            step = await self._readers.run(
                functools.partial(_compaction_step, compact, target, cfg.compact_step_versions)
            )
            try:
                await self._paced(Compact(revision=step))
            except OutOfRange:
                # Someone (a client's Compact) got there first: look again next pass.
                break
            compact = reached = step
            steps += 1
        if reached:
            log.info("auto compaction to revision %d in %d steps", reached, steps)
        return reached

    async def _paced(self, command: Compact | Prune) -> None:
        """Propose, then rest as long as that took: a backlog of history work gets at most
        about half of the apply loop, so client writes keep their share (bench/space.py)."""
        started = trio.current_time()
        await self._consensus.propose(command)
        await trio.sleep(trio.current_time() - started)

    async def prune_pass(self) -> int:
        """Examine the next prune_scan_keys keys; propose Prune for those holding more
        than history_depth versions. Returns how many keys were proposed."""
        cfg = self._config
        deep, self._cursor = await self._readers.run(
            functools.partial(_prune_candidates, self._cursor, cfg.prune_scan_keys, cfg.history_depth)
        )
        for i in range(0, len(deep), cfg.prune_batch_keys):
            chunk = tuple(deep[i : i + cfg.prune_batch_keys])
            await self._paced(Prune(depth=cfg.history_depth, keys=chunk))
        return len(deep)


def _compaction_step(compact: int, target: int, max_versions: int, reader: KvReader) -> int:
    return reader.compaction_step(compact, target, max_versions)


def _prune_candidates(
    after: str | None, scan: int, depth: int, reader: KvReader
) -> tuple[list[str], str | None]:
    return reader.prune_candidates(after, scan, depth)


@attrs.frozen(slots=True)
class NodeSpace:
    kv: DbSpace
    log: DbSpace
    total_bytes: int  # every file in the data dir: databases, WALs, snapshots

    @property
    def in_use_bytes(self) -> int:
        """What the quota limits: pages holding the state machine's data. The log is left
        out on purpose: it is bounded by raft.snapshot_entries, and it shrinks only when a
        snapshot truncates it, which a node refusing writes might never reach."""
        return self.kv.in_use_bytes


class SpaceKeeper:
    """Every node: measures its space (for the quota and Status) and gives free pages back
    to the file system in short steps between applies."""

    def __init__(
        self, consensus: Consensus, kv: KvStore, log_store: LogStore, data_dir: Path, config: StorageConfig
    ) -> None:
        self._consensus = consensus
        self._kv = kv
        self._log = log_store
        self._data_dir = data_dir
        self._config = config
        self.space = self._measure()

    def _measure(self) -> NodeSpace:
        busy = self._config.busy_timeout_ms
        return NodeSpace(
            kv=db_space(self._kv.path, busy_timeout_ms=busy),
            log=db_space(self._log.path, busy_timeout_ms=busy),
            total_bytes=dir_size(self._data_dir),
        )

    async def refresh(self) -> NodeSpace:
        self.space = await trio.to_thread.run_sync(self._measure)
        return self.space

    def check_quota(self) -> None:
        """Refuse a write that would add data past the quota (reads, deletes, compaction
        are never refused: they are how space comes back)."""
        quota = self._config.quota_bytes
        used = self.space.in_use_bytes
        if quota > 0 and used >= quota:
            raise ResourceExhausted(
                f"database space quota exceeded: {used} bytes in use, storage.quota_bytes is {quota}; "
                "compact history (Compact) or delete keys to free space"
            )

    async def run(self) -> None:
        interval = self._config.reclaim_interval_ms / 1000
        while True:
            await self.refresh()
            if self.space.kv.free_bytes or self.space.log.free_bytes:
                released = await self.reclaim()
                if released:
                    log.debug("reclaimed %d free pages", released)
                    await self.refresh()
            await trio.sleep(interval)

    async def reclaim(self) -> int:
        """Release every free page of both databases, `reclaim_pages` per step; each step
        waits its turn on the writer thread, so applies go on in between."""
        pages = self._config.reclaim_pages
        total = 0
        for store_reclaim in (self._kv.reclaim, self._log.reclaim):
            while True:
                n = await self._consensus.maintain(functools.partial(store_reclaim, pages))
                total += n
                if n < pages:
                    break
        return total
