"""TTL expiry: the leader decides, the log replicates.

Expiry is an `Expire` command through the normal write path, so every replica deletes the
key at the same revision. Keys are found by an index scan on expires_at_ms; the command
carries each key's mod_revision so a key refreshed meanwhile is left alone.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable

import trio

from ggap.config.model import TtlConfig
from ggap.replica import Consensus
from ggap.server.reads import ReaderPool
from ggap.storage import KvReader
from ggap.types import Expire, GgapError, KeyValue

log = logging.getLogger(__name__)


def wall_ms() -> int:
    return int(time.time() * 1000)


def _expiring(now_ms: int, limit: int, reader: KvReader) -> list[tuple[str, int]]:
    return reader.expiring(now_ms, limit)


def is_expired(kv: KeyValue, now_ms: int) -> bool:
    return 0 < kv.expires_at_ms <= now_ms


class Expirer:
    def __init__(
        self,
        consensus: Consensus,
        readers: ReaderPool,
        config: TtlConfig,
        clock_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._consensus = consensus
        self._readers = readers
        self._config = config
        self._clock_ms = clock_ms

    def now_ms(self) -> int:
        return self._clock_ms()

    async def run(self) -> None:
        interval = self._config.check_interval_ms / 1000
        while True:
            await trio.sleep(interval)
            if self._consensus.role().role != "leader":
                continue
            now = self._clock_ms()
            items = await self._readers.run(functools.partial(_expiring, now, self._config.max_expire_batch))
            if items:
                await self._expire(items)

    async def expire_now(self, kvs: Iterable[KeyValue]) -> None:
        """Expire keys a reader found past their TTL, so a linearizable read never returns
        them: the read waits for the Expire write instead of hiding the key locally."""
        items = [(kv.key, kv.mod_revision) for kv in kvs]
        if items:
            await self._expire(items)

    async def _expire(self, items: list[tuple[str, int]]) -> None:
        try:
            await self._consensus.propose(Expire(items=tuple(sorted(set(items)))))
        except GgapError as exc:
            # Not fatal: the next pass retries. (A lost leadership also lands here.)
            log.warning("expiry of %d keys failed: %s", len(items), exc)
