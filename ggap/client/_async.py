"""AsyncClient: the client library on anyio (runs under trio and asyncio).

Every call has a deadline (`timeout`), split into attempts of at most `attempt_timeout`; an
attempt that fails with UNAVAILABLE, a broken connection or no answer in time moves to the
next endpoint (ggap.client._policy.Endpoints) after a jittered backoff, within the deadline
and `retries`. Writes go to the leader once the client knows it (from response headers).

Writes belong to a session (unless `sessions=False`): each carries (session, seq,
lowest_unacked) and a retry sends the same numbers, so it is applied once however many
attempts reach the cluster. Without a session only refusals that applied nothing are
retried (NotLeader, no connection); anything else surfaces as the error it is.

Sequential reads ask for `min_revision` = the highest revision this client has seen, so
they never go back in time when the client switches nodes.
"""

from __future__ import annotations

import functools
import random
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus
from google.protobuf.message import Message

from ggap.client._client import ClientError, Connection, call_metadata, open_connection, parse_endpoint
from ggap.client._ops import (
    TxnResult,
    Value,
    as_bytes,
    event_from_pb,
    kv_from_pb,
    prefix_end,
    txn_request,
    txn_result,
)
from ggap.client._policy import (
    RETRYABLE,
    Backoff,
    Endpoints,
    Revisions,
    SessionNumbers,
    definitely_not_applied,
    normalise_endpoints,
)
from ggap.pb import kv_pb2 as pb
from ggap.rpc.errors import error_from_status
from ggap.types import Event, KeyValue
from ggap.types.errors import (
    DeadlineExceeded,
    GgapError,
    InvalidArgument,
    OutOfRange,
    SessionExpired,
    StatusCode,
    Unavailable,
)

_T = TypeVar("_T")

_MODES: dict[str, pb.ReadMode] = {
    "linearizable": pb.READ_MODE_LINEARIZABLE,
    "sequential": pb.READ_MODE_SEQUENTIAL,
    "eventual": pb.READ_MODE_EVENTUAL,
}
_QUORUMS: dict[str, pb.WriteQuorum] = {
    "majority": pb.WRITE_QUORUM_MAJORITY,
    "all": pb.WRITE_QUORUM_ALL,
}


_RAW_METHODS = {
    "Put": "put",
    "Get": "get",
    "Delete": "delete",
    "Range": "range",
    "Txn": "txn",
    "History": "history",
    "Compact": "compact",
    "MemberList": "member_list",
}


class Compacted(OutOfRange):
    """A watch or read asked for history below the compaction point."""

    def __init__(self, message: str, *, compact_revision: int = 0, current_revision: int = 0) -> None:
        super().__init__(message, compact_revision=compact_revision, current_revision=current_revision)


def _typed(exc: ClientError) -> GgapError:
    err = error_from_status(exc.code, exc.message)
    if isinstance(err, OutOfRange) and err.compact_revision:
        return Compacted(
            err.message, compact_revision=err.compact_revision, current_revision=err.current_revision
        )
    return err


# purerpc never notices that the server went away: calls on a dead connection hang until
# their timeout (PITFALLS.md 1.3). The task holding a connection therefore checks, when a
# call has waited this long, whether the endpoint still accepts TCP connections; a refusal
# (the process is gone) fails the waiting calls at once as UNAVAILABLE. A node that is
# alive but stuck (SIGSTOP) still costs the attempt timeout.
_PROBE_EVERY_S = 0.2
_STUCK_AFTER_S = 0.2
_PROBE_TIMEOUT_S = 0.5


@attrs.define(eq=False)
class _Held:
    conn: Connection
    closed: anyio.Event = attrs.field(factory=anyio.Event)
    # Calls waiting on this connection: their cancel scope and when they started.
    waiting: dict[anyio.CancelScope, float] = attrs.field(factory=dict)
    dead: bool = False


class AsyncClient:
    """`async with AsyncClient("h1:2379,h2:2379") as c: await c.put("k", "v")`.

    One client may be shared by many tasks: calls run concurrently (a session numbers its
    writes, it does not serialise them)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 10.0,
        attempt_timeout: float = 2.0,
        retries: int = 20,
        sessions: bool = True,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`cacert`/`cert`/`key`: PEM files as for the CLI (any of them turns TLS on);
        `ssl_context` instead, a ready one (ggap.tls.client_context)."""
        if not timeout > 0 or not attempt_timeout > 0 or retries < 0:
            raise ValueError("timeout and attempt_timeout must be positive, retries >= 0")
        self._endpoints = Endpoints(normalise_endpoints(endpoints))
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.retries = retries
        self._use_sessions = sessions
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._ssl = ssl_context if ssl_context is not None else _ssl_context(cacert, cert, key)
        self._held: dict[str, _Held] = {}
        self._dialling: dict[str, anyio.Lock] = {}
        self._tg: TaskGroup | None = None
        self._session: SessionNumbers | None = None
        self._session_lock = anyio.Lock()
        self.revisions = Revisions()

    # -- lifetime ---------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        tg = self._tg
        try:
            if self._session is not None and exc[0] is None:
                # Best effort: the server expires an idle session anyway; a cluster that
                # is down must not turn a clean exit into an error.
                with anyio.move_on_after(min(self.timeout, 2.0)):
                    try:
                        await self.close_session()
                    except (GgapError, OSError):
                        pass
        finally:
            self._tg = None
            for held in list(self._held.values()):
                held.closed.set()
            self._held.clear()
            assert tg is not None
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        return None

    async def _start_background(self, fn: Callable[..., Coroutine[Any, Any, None]]) -> anyio.CancelScope:
        """Start `fn(task_status=...)` in the client's task group (the recipes' refresh
        tasks): it ends when it cancels the scope it reports as started, or with the client."""
        if self._tg is None:
            raise RuntimeError("use the client inside `async with`")
        scope: anyio.CancelScope = await self._tg.start(fn)
        return scope

    @property
    def endpoints(self) -> tuple[str, ...]:
        return self._endpoints.names

    @property
    def leader_endpoint(self) -> str | None:
        """The endpoint the client believes leads (None until a response said so)."""
        return self._endpoints.leader

    # -- connections --------------------------------------------------------------------

    async def _connection(self, endpoint: str, limit: float) -> Connection:
        return (await self._held_connection(endpoint, limit)).conn

    async def _held_connection(self, endpoint: str, limit: float) -> _Held:
        held = self._held.get(endpoint)
        if held is not None and not held.closed.is_set():
            return held
        lock = self._dialling.setdefault(endpoint, anyio.Lock())
        async with lock:
            held = self._held.get(endpoint)
            if held is not None and not held.closed.is_set():
                return held
            if self._tg is None:
                raise RuntimeError("use the client inside `async with`")
            with anyio.fail_after(limit):
                held = await self._tg.start(self._hold, endpoint, limit)
            self._held[endpoint] = held
            return held

    async def _hold(self, endpoint: str, limit: float, *, task_status: TaskStatus[_Held]) -> None:
        """Owns one connection: purerpc channels must be entered and left by one task. A
        connection that breaks while held is forgotten; the next call dials again."""
        held: _Held | None = None
        try:
            async with open_connection(endpoint, timeout_s=limit, ssl_context=self._ssl) as conn:
                held = _Held(conn)
                task_status.started(held)
                await self._watch_over(endpoint, held)
        except Exception:
            if held is None:
                raise  # the dial failed: the caller of start() sees it
        finally:
            if held is not None and self._held.get(endpoint) is held:
                del self._held[endpoint]

    async def _watch_over(self, endpoint: str, held: _Held) -> None:
        """Until the connection is dropped: fail its calls at once if its server is gone."""
        host, port = parse_endpoint(endpoint)
        while not held.closed.is_set():
            with anyio.move_on_after(_PROBE_EVERY_S):
                await held.closed.wait()
                return
            now = anyio.current_time()
            if any(now - started > _STUCK_AFTER_S for started in held.waiting.values()):
                if not await _accepts_connections(host, port):
                    held.dead = True
                    for scope in list(held.waiting):
                        scope.cancel()
                    held.closed.set()
                    return

    def _drop(self, endpoint: str) -> None:
        held = self._held.pop(endpoint, None)
        if held is not None:
            held.closed.set()

    # -- the one call path --------------------------------------------------------------

    async def _run(
        self,
        call: Callable[[Connection, float], Awaitable[_T]],
        *,
        write: bool,
        prefer_leader: bool,
        retry_unknown: bool,
        metadata: Sequence[tuple[str, str]] = (),
        total_s: float | None = None,
    ) -> tuple[_T, str]:
        """`call(connection, attempt_limit)` on endpoints in policy order until one answers.
        `retry_unknown`: the call may be repeated even after an attempt whose outcome is
        unknown (reads, session writes)."""
        deadline = anyio.current_time() + (self.timeout if total_s is None else total_s)
        last: GgapError | None = None
        unreachable: dict[str, str] = {}  # endpoints that did not connect, and why
        sent = False
        attempt = 0
        while attempt <= self.retries:
            for endpoint in self._endpoints.order(anyio.current_time(), prefer_leader=prefer_leader):
                remaining = deadline - anyio.current_time()
                if remaining <= 0 or attempt > self.retries:
                    break
                limit = min(remaining, self.attempt_timeout)
                attempt += 1
                try:
                    held = await self._held_connection(endpoint, limit)
                except (ClientError, TimeoutError) as exc:
                    if isinstance(exc, ClientError):
                        msg = exc.message.removeprefix("cannot connect: ").removeprefix(f"{endpoint}: ")
                    else:
                        msg = f"connect timed out after {limit:g}s"
                    unreachable[endpoint] = msg
                    last = Unavailable(f"cannot connect: {endpoint}: {msg}")
                    self._endpoints.failed(endpoint, anyio.current_time(), last)
                    continue  # nothing was sent: always safe to go on
                sent = True
                scope = anyio.CancelScope()
                held.waiting[scope] = anyio.current_time()
                try:
                    with scope, call_metadata(metadata):
                        result = await call(held.conn, limit)
                    if scope.cancelled_caught:  # only the connection's holder cancels it
                        raise ClientError(
                            StatusCode.UNAVAILABLE, f"connection to {endpoint} lost: server gone"
                        )
                except ClientError as exc:
                    err = _typed(exc)
                    if exc.code not in RETRYABLE:
                        raise err from None
                    if exc.code == StatusCode.DEADLINE_EXCEEDED or "connection" in exc.message:
                        self._drop(endpoint)  # purerpc never notices a dead connection
                    self._endpoints.failed(endpoint, anyio.current_time(), err)
                    last = err
                    if write and not retry_unknown and not definitely_not_applied(err):
                        raise err from None
                    await anyio.sleep(
                        min(self._backoff.delay(attempt, self._rng), max(0.0, remaining - limit))
                    )
                    continue
                finally:
                    held.waiting.pop(scope, None)
                return result, endpoint
            else:
                continue
            break
        if not sent and unreachable:
            raise Unavailable("cannot connect: " + "; ".join(f"{e}: {why}" for e, why in unreachable.items()))
        if last is None:
            last = DeadlineExceeded("no endpoint answered within the deadline")
        if isinstance(last, Unavailable) or last.code == StatusCode.DEADLINE_EXCEEDED:
            bound = f"{self.retries} retries" if attempt > self.retries else f"{self.timeout:g}s"
            what = f"no endpoint of {','.join(self.endpoints)} answered within {bound}"
            cls = Unavailable if isinstance(last, Unavailable) else DeadlineExceeded
            raise cls(f"{what}; last error: {last.message}") from None
        raise last

    def _saw(self, endpoint: str, header: pb.ResponseHeader) -> None:
        self._endpoints.answered(endpoint, int(header.member_id), int(header.leader_id))
        self.revisions.saw(int(header.revision))

    async def _write(self, call: Callable[[Connection, float], Awaitable[Any]]) -> Any:
        if not self._use_sessions:
            resp, endpoint = await self._run(call, write=True, prefer_leader=True, retry_unknown=False)
            self._saw(endpoint, resp.header)
            return resp
        numbers = await self._numbers()
        seq = numbers.begin()
        try:
            resp, endpoint = await self._run(
                call,
                write=True,
                prefer_leader=True,
                retry_unknown=True,
                metadata=[numbers.metadata(seq)],
            )
        except SessionExpired:
            # Gone (idle too long, or evicted): the next write opens a new one. Whether an
            # earlier attempt of this one was applied cannot be known.
            if self._session is numbers:
                self._session = None
            raise
        finally:
            numbers.end(seq)
        self._saw(endpoint, resp.header)
        return resp

    async def _numbers(self) -> SessionNumbers:
        if self._session is not None:
            return self._session
        async with self._session_lock:
            if self._session is None:
                resp, endpoint = await self._run(
                    lambda c, t: c.open_session(timeout_s=t),
                    write=True,
                    prefer_leader=True,
                    retry_unknown=True,
                )
                self._saw(endpoint, resp.header)
                self._session = SessionNumbers(int(resp.session_id))
            return self._session

    async def _read(
        self,
        call: Callable[[Connection, float], Awaitable[Any]],
        mode: str,
    ) -> Any:
        resp, endpoint = await self._run(
            call, write=False, prefer_leader=mode == "linearizable", retry_unknown=True
        )
        self._saw(endpoint, resp.header)
        return resp

    def _mode(self, mode: str) -> tuple[pb.ReadMode, int]:
        """(read_mode, min_revision) for a read in `mode`."""
        try:
            wire = _MODES[mode]
        except KeyError:
            raise InvalidArgument(f"mode must be one of {', '.join(_MODES)}, got {mode!r}") from None
        return wire, self.revisions.highest if mode == "sequential" else 0

    # -- the API ------------------------------------------------------------------------

    @property
    def session_id(self) -> int:
        """The current session's id (0 before the first write, or with sessions off)."""
        return self._session.session_id if self._session is not None else 0

    async def put(self, key: str, value: Value, *, ttl: float | None = None, quorum: str = "majority") -> int:
        """Write `value` at `key` (a `ttl` in seconds makes it expire); the new revision."""
        ttl_ms = 0 if ttl is None else max(1, round(ttl * 1000))
        req = pb.PutRequest(key=key, value=as_bytes(value), ttl_ms=ttl_ms, quorum=_quorum(quorum))
        resp = await self._write(lambda c, t: c.put(req, timeout_s=t))
        return int(resp.header.revision)

    async def get(self, key: str, *, mode: str = "linearizable", revision: int = 0) -> KeyValue | None:
        read_mode, min_rev = self._mode(mode)
        req = pb.GetRequest(key=key, read_mode=read_mode, revision=revision, min_revision=min_rev)
        resp = await self._read(lambda c, t: c.get(req, timeout_s=t), mode)
        return kv_from_pb(resp.kv) if resp.found else None

    async def delete(self, key: str, *, quorum: str = "majority") -> bool:
        """Delete `key`; whether it existed."""
        req = pb.DeleteRequest(key=key, quorum=_quorum(quorum))
        resp = await self._write(lambda c, t: c.delete(req, timeout_s=t))
        return bool(resp.deleted)

    async def range(
        self,
        prefix: str | None = None,
        *,
        start: str = "",
        end: str = "",
        limit: int = 0,
        revision: int = 0,
        mode: str = "linearizable",
        page_size: int = 1000,
    ) -> AsyncIterator[KeyValue]:
        """Keys under `prefix`, or in [start, end) ("" end: no end), in key order, at most
        `limit` (0: all). Pages of `page_size` are fetched as needed, all at one revision
        (the first page's), so the whole listing is one consistent snapshot."""
        if prefix is not None and (start or end):
            raise InvalidArgument("give a prefix or start/end, not both")
        if page_size < 1:
            raise InvalidArgument("page_size must be >= 1")
        if prefix is not None:
            start, end = prefix, prefix_end(prefix)
        read_mode, min_rev = self._mode(mode)
        sent = 0
        pinned = revision
        while True:
            want = page_size if not limit else min(page_size, limit - sent)
            req = pb.RangeRequest(
                start=start, end=end, limit=want, read_mode=read_mode, revision=pinned, min_revision=min_rev
            )
            if not start and not end:
                req = pb.RangeRequest(
                    prefix="", limit=want, read_mode=read_mode, revision=pinned, min_revision=min_rev
                )
            resp = await self._read(functools.partial(_range_call, req), mode)
            if not pinned:
                pinned = int(resp.header.revision)
            for kv in resp.kvs:
                yield kv_from_pb(kv)
            sent += len(resp.kvs)
            if not resp.more or not resp.kvs or (limit and sent >= limit):
                return
            start = resp.kvs[-1].key + "\x00"

    async def history(self, key: str, *, limit: int = 0, mode: str = "linearizable") -> list[KeyValue]:
        """Every retained version of `key`, newest first (tombstones have `.deleted`)."""
        read_mode, _ = self._mode(mode)
        req = pb.HistoryRequest(key=key, limit=limit, read_mode=read_mode)
        resp = await self._read(lambda c, t: c.history(req, timeout_s=t), mode)
        return [kv_from_pb(kv) for kv in resp.versions]

    async def txn(
        self,
        compare: Sequence[pb.Compare] = (),
        success: Sequence[pb.TxnOp] = (),
        failure: Sequence[pb.TxnOp] = (),
        *,
        quorum: str = "majority",
    ) -> TxnResult:
        """All `compare`s hold: run `success`, else `failure`; one revision, atomically."""
        req = txn_request(compare, success, failure, _quorum(quorum))
        resp = await self._write(lambda c, t: c.txn(req, timeout_s=t))
        return txn_result(resp)

    async def compact(self, revision: int) -> int:
        req = pb.CompactRequest(revision=revision)
        resp = await self._write(lambda c, t: c.compact(req, timeout_s=t))
        return int(resp.header.revision)

    async def status(self, endpoint: str | None = None) -> pb.StatusResponse:
        """The Status of `endpoint` (default: whichever answers first)."""
        if endpoint is not None:
            conn = await self._connection(endpoint, self.attempt_timeout)
            try:
                return await conn.status(timeout_s=self.attempt_timeout)
            except ClientError as exc:
                raise _typed(exc) from None
        resp, _ = await self._run(
            lambda c, t: c.status(timeout_s=t), write=False, prefer_leader=False, retry_unknown=True
        )
        return resp

    async def members(self) -> list[pb.Member]:
        req = pb.MemberListRequest(read_mode=pb.READ_MODE_LINEARIZABLE)
        resp = await self._read(lambda c, t: c.member_list(req, timeout_s=t), "linearizable")
        return list(resp.members)

    async def call(self, method: str, request: Message, *, write: bool, mode: str = "linearizable") -> Any:
        """One unary call as protobuf in and out (`method` as in the proto: "Put", "Range",
        ...), with this client's failover and, for writes, its session: for tools that
        want the whole response (the CLI)."""
        name = _RAW_METHODS.get(method)
        if name is None:
            raise InvalidArgument(f"no such call {method!r}; one of {', '.join(_RAW_METHODS)}")

        async def run(conn: Connection, limit: float) -> Any:
            return await getattr(conn, name)(request, timeout_s=limit)

        return await (self._write(run) if write else self._read(run, mode))

    async def close_session(self) -> None:
        """End this client's session now (the next write opens a new one)."""
        numbers, self._session = self._session, None
        if numbers is None:
            return
        req = pb.CloseSessionRequest(session_id=numbers.session_id)
        await self._run(
            lambda c, t: c.close_session(req, timeout_s=t), write=True, prefer_leader=True, retry_unknown=True
        )

    async def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        idle_timeout: float = 30.0,
    ) -> AsyncIterator[Event]:
        """Events on `key` (or under `prefix`) from `start_revision` (0: from now), each
        once and in order, across failovers: when a stream breaks or goes silent for
        `idle_timeout` (the server sends a progress notice every few seconds), the watch
        resumes on another endpoint from the last delivered revision + 1. A start below
        the compaction point raises Compacted (with `.compact_revision`)."""
        events = self.watch_raw(
            key, prefix=prefix, start_revision=start_revision, prev_kv=prev_kv, idle_timeout=idle_timeout
        )
        try:
            async for ev in events:
                yield event_from_pb(ev)
        finally:
            await events.aclose()

    async def watch_raw(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        start_revision: int = 0,
        prev_kv: bool = False,
        idle_timeout: float = 30.0,
    ) -> AsyncGenerator[pb.Event, None]:
        """`watch`, with the events as protobuf (for tools that print them: the CLI)."""
        if (key is None) == (prefix is None):
            raise InvalidArgument("watch takes a key or a prefix")
        next_rev = start_revision
        if not next_rev:
            # Pin "now" so a resumed stream starts where the first began.
            st = await self._read(
                lambda c, t: c.get(
                    pb.GetRequest(key=key or prefix or "", read_mode=pb.READ_MODE_LINEARIZABLE), timeout_s=t
                ),
                "linearizable",
            )
            next_rev = int(st.header.revision) + 1
        failures = 0
        while True:
            delivered = False
            for endpoint in self._endpoints.order(anyio.current_time(), prefer_leader=False):
                req = pb.WatchRequest(
                    key=key or "", prefix=prefix or "", start_revision=next_rev, prev_kv=prev_kv
                )
                try:
                    conn = await self._connection(endpoint, self.attempt_timeout)
                    async for resp in conn.watch(
                        req, idle_timeout_s=idle_timeout, timeout_s=self.attempt_timeout
                    ):
                        self._saw(endpoint, resp.header)
                        failures = 0
                        for ev in resp.events:
                            if ev.kv.mod_revision < next_rev:
                                continue  # already delivered before a resume
                            next_rev = ev.kv.mod_revision + 1
                            delivered = True
                            yield ev
                    # The server ended the stream (it is stopping): resume elsewhere.
                except ClientError as exc:
                    err = _typed(exc)
                    if exc.code not in RETRYABLE:
                        raise err from None
                    self._drop(endpoint)
                    self._endpoints.failed(endpoint, anyio.current_time(), err)
                except TimeoutError:
                    self._endpoints.failed(endpoint, anyio.current_time(), Unavailable("connect timed out"))
                failures += 1
                if failures > self.retries and not delivered:
                    raise Unavailable(f"watch: no endpoint of {','.join(self.endpoints)} could be watched")
                await anyio.sleep(self._backoff.delay(failures, self._rng))


async def _range_call(req: pb.RangeRequest, conn: Connection, limit: float) -> pb.RangeResponse:
    return await conn.range(req, timeout_s=limit)


async def _accepts_connections(host: str, port: int) -> bool:
    """False only when the endpoint refuses TCP connections (no process listens there)."""
    try:
        with anyio.fail_after(_PROBE_TIMEOUT_S):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        return True  # unknown: leave it to the call's own timeout
    except OSError:
        return False
    await anyio.aclose_forcefully(stream)
    return True


def _quorum(quorum: str) -> pb.WriteQuorum:
    try:
        return _QUORUMS[quorum]
    except KeyError:
        raise InvalidArgument(f"quorum must be one of {', '.join(_QUORUMS)}, got {quorum!r}") from None


def _ssl_context(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cacert is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together")
    from ggap.tls import client_context

    return client_context(cacert or "", cert or "", key or "")


@asynccontextmanager
async def connect(endpoints: str | Sequence[str], **options: Any) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(endpoints, **options) as client:
        yield client
