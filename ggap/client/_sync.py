"""Client: the synchronous face of AsyncClient, for threads and scripts.

Not a second implementation: the `with` block runs one event loop on a thread of its own
(an anyio blocking portal, owned and joined by the block) and every method runs the
AsyncClient method there. So endpoint choice, retries, sessions and revision tracking are
the async client's, and any number of threads may call one Client at once: their calls
run concurrently on that loop (a session numbers writes, it does not serialise them).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from anyio.from_thread import BlockingPortal, start_blocking_portal

from ggap.client._async import AsyncClient
from ggap.client._ops import TxnResult, Value
from ggap.pb import kv_pb2 as pb
from ggap.types import Event, KeyValue

_T = TypeVar("_T")


class Client:
    """`with Client("h1:2379,h2:2379") as c: c.put("k", "v")`. Options as AsyncClient's,
    plus `backend` ("trio" or "asyncio") for the loop thread."""

    def __init__(self, endpoints: str | Sequence[str], *, backend: str = "trio", **options: Any) -> None:
        self._async = AsyncClient(endpoints, **options)
        self._backend = backend
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._portal: BlockingPortal | None = None
        self._client_cm: AbstractContextManager[AsyncClient] | None = None

    def __enter__(self) -> Client:
        portal_cm = start_blocking_portal(self._backend)
        portal = portal_cm.__enter__()
        try:
            client_cm = portal.wrap_async_context_manager(self._async)
            client_cm.__enter__()
        except BaseException as exc:
            portal_cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._portal_cm, self._portal, self._client_cm = portal_cm, portal, client_cm
        return self

    def __exit__(self, *exc: Any) -> None:
        client_cm, portal_cm = self._client_cm, self._portal_cm
        self._client_cm = self._portal_cm = self._portal = None
        try:
            if client_cm is not None:
                client_cm.__exit__(*exc)
        finally:
            if portal_cm is not None:
                portal_cm.__exit__(*exc)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._portal is None:
            raise RuntimeError("use the client inside `with`")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def _iterate(self, agen: AsyncIterator[_T]) -> Iterator[_T]:
        portal = self._portal
        if portal is None:
            raise RuntimeError("use the client inside `with`")
        try:
            while True:
                try:
                    yield portal.call(agen.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None and self._portal is not None:
                portal.call(aclose)

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._async.endpoints

    @property
    def session_id(self) -> int:
        return self._async.session_id

    @property
    def leader_endpoint(self) -> str | None:
        return self._async.leader_endpoint

    @property
    def highest_revision(self) -> int:
        return self._async.revisions.highest

    def put(self, key: str, value: Value, *, ttl: float | None = None, quorum: str = "majority") -> int:
        return int(self._call(self._async.put, key, value, ttl=ttl, quorum=quorum))

    def get(self, key: str, *, mode: str = "linearizable", revision: int = 0) -> KeyValue | None:
        result: KeyValue | None = self._call(self._async.get, key, mode=mode, revision=revision)
        return result

    def delete(self, key: str, *, quorum: str = "majority") -> bool:
        return bool(self._call(self._async.delete, key, quorum=quorum))

    def range(self, prefix: str | None = None, **options: Any) -> Iterator[KeyValue]:
        return self._iterate(self._async.range(prefix, **options))

    def history(self, key: str, *, limit: int = 0, mode: str = "linearizable") -> list[KeyValue]:
        result: list[KeyValue] = self._call(self._async.history, key, limit=limit, mode=mode)
        return result

    def txn(
        self,
        compare: Sequence[pb.Compare] = (),
        success: Sequence[pb.TxnOp] = (),
        failure: Sequence[pb.TxnOp] = (),
        *,
        quorum: str = "majority",
    ) -> TxnResult:
        result: TxnResult = self._call(self._async.txn, compare, success, failure, quorum=quorum)
        return result

    def compact(self, revision: int) -> int:
        return int(self._call(self._async.compact, revision))

    def status(self, endpoint: str | None = None) -> pb.StatusResponse:
        result: pb.StatusResponse = self._call(self._async.status, endpoint)
        return result

    def members(self) -> list[pb.Member]:
        result: list[pb.Member] = self._call(self._async.members)
        return result

    def close_session(self) -> None:
        self._call(self._async.close_session)

    def watch(self, key: str | None = None, **options: Any) -> Iterator[Event]:
        return self._iterate(self._async.watch(key, **options))
