"""Read connections. Point reads run inline on the trio thread (an index seek is tens of
microseconds, cheaper than a thread hop); scans (Range, History, watch replay, expiry
scans) run on a small pool of reader threads (`reads.reader_threads`) so a large range never
stalls the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from ggap.storage import KvReader, KvStore

T = TypeVar("T")


class ReaderPool:
    def __init__(self, kv: KvStore, *, threads: int) -> None:
        """At most `threads` scans run at once, each on its own thread and read-only
        connection; one more connection serves the inline point reads."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._inline = kv.reader()
        self._free = [kv.reader() for _ in range(threads)]
        self._all = [self._inline, *self._free]
        self._limiter = trio.CapacityLimiter(threads)

    def inline(self, fn: Callable[[KvReader], T]) -> T:
        return fn(self._inline)

    async def run(self, fn: Callable[[KvReader], T]) -> T:
        async with self._limiter:
            reader = self._free.pop()
            try:
                return await trio.to_thread.run_sync(fn, reader)
            finally:
                self._free.append(reader)

    def close(self) -> None:
        for reader in self._all:
            reader.close()
