"""A fault-injecting TCP proxy for real-process cluster tests, plus a table of them per link.

Route every directed peer link i->j through its own `FaultProxy` (`LinkTable` does the
bookkeeping), and the test can cut, blackhole or slow any link without touching the nodes.

Each proxy runs its own trio event loop in its own thread, so plain synchronous test code
(driving subprocesses) can use it; the control methods hop into that loop with
`trio.from_thread.run_sync`, so all proxy state is only ever touched by the proxy's thread.
`close()` (or leaving the `with` block) cancels the loop, closes every socket and joins the
thread.

Fault semantics:
- `block()` is a firewall REJECT: current connections are closed, new ones are accepted
  and closed at once, so peers see resets/EOFs quickly.
- `set_one_way(...)` is a firewall DROP for one direction: connections stay up, bytes
  (and the end-of-stream) in that direction are read and thrown away, so the sender sees
  nothing wrong. Both directions dropped is a silent partition.
- `set_delay(s)` delays every chunk by `s` seconds in each direction, keeping order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import attrs
import trio

__all__ = ["FaultProxy", "LinkTable", "ProxyStats"]

Address = tuple[str, int]
T = TypeVar("T")

_CHUNK = 64 * 1024
_PIPE_BUFFER = 256  # chunks waiting out a delay, per direction, before the reader waits
_START_TIMEOUT = 10.0
_CALL_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)


@attrs.frozen
class ProxyStats:
    accepted: int  # connections accepted (refused ones included)
    refused: int  # accepted and closed at once because the proxy was blocked (or target down)
    open: int  # connections being forwarded now
    forwarded_c2t: int  # bytes delivered client -> target
    forwarded_t2c: int
    dropped_c2t: int  # bytes thrown away by set_one_way
    dropped_t2c: int


class FaultProxy:
    """Listens on 127.0.0.1:<port> and forwards each connection to `target`.

    Resource handling: the thread, the listener and every connection live until `close()`.
    Error handling: a target that refuses (or times out) gets the client's connection
    closed; any socket error ends that one connection only.
    """

    def __init__(self, target: Address, *, connect_timeout: float = 2.0, name: str = "") -> None:
        self._target = (str(target[0]), int(target[1]))
        self._connect_timeout = connect_timeout
        self._blocked = False
        self._drop_c2t = False
        self._drop_t2c = False
        self._delay = 0.0
        self._conns: set[trio.CancelScope] = set()
        self._counts = dict.fromkeys(
            ("accepted", "refused", "forwarded_c2t", "forwarded_t2c", "dropped_c2t", "dropped_t2c"), 0
        )
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.CancelScope | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._closed = False
        self.port = 0
        self._thread = threading.Thread(
            target=self._thread_main, name=name or f"faultproxy->{self._target[1]}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError("fault proxy did not start")
        if self._error is not None:
            self._thread.join(_START_TIMEOUT)
            raise RuntimeError(f"fault proxy failed to start: {self._error!r}") from self._error

    # -- control (any thread but the proxy's own) -------------------------------------------

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    @property
    def target(self) -> Address:
        return self._target

    def block(self) -> None:
        """Close every current connection and refuse new ones until `unblock()`."""

        def do() -> None:
            self._blocked = True
            for scope in self._conns:
                scope.cancel()

        self._call(do)

    def unblock(self) -> None:
        self._call(lambda: setattr(self, "_blocked", False))

    def set_one_way(self, drop_client_to_target: bool, drop_target_to_client: bool) -> None:
        """Blackhole a direction (read and discard), for current and new connections."""

        def do() -> None:
            self._drop_c2t = drop_client_to_target
            self._drop_t2c = drop_target_to_client

        self._call(do)

    def set_delay(self, seconds: float) -> None:
        """Delay each chunk read from now on by `seconds` (order is kept)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: setattr(self, "_delay", float(seconds)))

    def retarget(self, target: Address) -> None:
        """Forward new connections to `target` (a restarted node on a new port)."""
        addr = (str(target[0]), int(target[1]))
        self._call(lambda: setattr(self, "_target", addr))

    def heal(self) -> None:
        """Back to plain forwarding: unblocked, nothing dropped, no delay."""

        def do() -> None:
            self._blocked = False
            self._drop_c2t = self._drop_t2c = False
            self._delay = 0.0

        self._call(do)

    def stats(self) -> ProxyStats:
        return self._call(lambda: ProxyStats(open=len(self._conns), **self._counts))

    def close(self) -> None:
        """Stop the loop, close every socket, join the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        stop = self._stop
        if stop is not None:
            try:
                self._call(stop.cancel, closing=True)
            except trio.RunFinishedError:
                pass
        self._thread.join(_START_TIMEOUT)
        if self._thread.is_alive():
            raise RuntimeError("fault proxy thread did not stop")
        if self._error is not None:
            raise RuntimeError(f"fault proxy crashed: {self._error!r}") from self._error

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy(127.0.0.1:{self.port} -> {self._target[0]}:{self._target[1]})"

    def _call(self, fn: Callable[[], T], *, closing: bool = False) -> T:
        """Run `fn` on the proxy's loop and return its result, blocking the caller.

        Works from plain threads and from another trio loop's thread alike (async tests
        call these methods directly; the wait is a loop iteration of the proxy, not I/O).
        trio.from_thread.run_sync would refuse the latter.
        """
        if self._closed and not closing:
            raise RuntimeError("fault proxy is closed")
        if threading.current_thread() is self._thread:
            raise RuntimeError("fault proxy methods cannot be called from its own thread")
        assert self._token is not None
        done = threading.Event()
        box: list[Any] = []

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:
                box.append((False, exc))
            finally:
                done.set()

        self._token.run_sync_soon(run)  # raises trio.RunFinishedError if the loop is gone
        if not done.wait(_START_TIMEOUT):
            raise RuntimeError("fault proxy loop did not answer")
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    # -- the proxy's own thread ------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        try:
            self.port = int(listeners[0].socket.getsockname()[1])
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as self._stop:
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, self._handle, listeners)
                    self._ready.set()
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def _handle(self, client: trio.SocketStream) -> None:
        # serve_listeners closes `client` when this returns.
        self._counts["accepted"] += 1
        if self._blocked:
            self._counts["refused"] += 1
            return
        try:
            with trio.fail_after(self._connect_timeout):
                upstream = await trio.open_tcp_stream(*self._target)
        except _CALL_ERRORS:
            self._counts["refused"] += 1
            return
        scope = trio.CancelScope()
        self._conns.add(scope)
        try:
            with scope:
                if self._blocked:  # blocked while we were connecting
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, upstream, True, scope)
                    nursery.start_soon(self._pipe, upstream, client, False, scope)
        finally:
            self._conns.discard(scope)
            await trio.aclose_forcefully(upstream)

    def _dropping(self, c2t: bool) -> bool:
        return self._drop_c2t if c2t else self._drop_t2c

    async def _pipe(
        self, src: trio.SocketStream, dst: trio.SocketStream, c2t: bool, conn: trio.CancelScope
    ) -> None:
        """Copy src -> dst through a delay queue; a socket error ends the whole connection."""
        direction = "c2t" if c2t else "t2c"
        send, receive = trio.open_memory_channel[tuple[float, bytes]](_PIPE_BUFFER)

        async def writer() -> None:
            async with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    if not data:
                        if not self._dropping(c2t):
                            await dst.send_eof()
                        return
                    if self._dropping(c2t):
                        self._counts[f"dropped_{direction}"] += len(data)
                        continue
                    await dst.send_all(data)
                    self._counts[f"forwarded_{direction}"] += len(data)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                async with send:
                    while True:
                        data = await src.receive_some(_CHUNK)
                        if data and self._dropping(c2t):
                            self._counts[f"dropped_{direction}"] += len(data)
                            continue
                        await send.send((trio.current_time() + self._delay, data))
                        if not data:
                            return
        except* _CALL_ERRORS:
            conn.cancel()


class LinkTable:
    """One FaultProxy per directed link between `nodes` (node id -> its real cluster address).

    Node i reaches node j through `proxy(i, j)`; `peers(i)` is the mapping to hand node i
    (its own entry stays its real listen address, which it binds).
    """

    def __init__(self, nodes: Mapping[int, Address]) -> None:
        self._nodes = {nid: (str(a[0]), int(a[1])) for nid, a in nodes.items()}
        self._proxies: dict[tuple[int, int], FaultProxy] = {}
        try:
            for i in self._nodes:
                for j, addr in self._nodes.items():
                    if i != j:
                        self._proxies[i, j] = FaultProxy(addr, name=f"faultproxy-{i}->{j}")
        except BaseException:
            self.close()
            raise

    def proxy(self, frm: int, to: int) -> FaultProxy:
        return self._proxies[frm, to]

    def peers(self, node: int) -> dict[int, Address]:
        out = {node: self._nodes[node]}
        for j in self._nodes:
            if j != node:
                out[j] = self._proxies[node, j].address
        return dict(sorted(out.items()))

    def peers_arg(self, node: int) -> str:
        """`peers(node)` in the `--peers` syntax: "1=127.0.0.1:p1,2=127.0.0.1:p2,..."."""
        return ",".join(f"{nid}={host}:{port}" for nid, (host, port) in self.peers(node).items())

    def set_address(self, node: int, address: Address) -> None:
        """`node` now listens at `address` (restarted on a new port): retarget links into it.

        Its own `peers(node)` entry changes too, so restart it with the new `peers_arg`.
        """
        self._nodes[node] = (str(address[0]), int(address[1]))
        for (_, j), proxy in self._proxies.items():
            if j == node:
                proxy.retarget(address)

    def partition(self, group_a: Iterable[int], group_b: Iterable[int]) -> None:
        """Block every link between the groups, both ways (links inside a group stay up)."""
        a, b = set(group_a), set(group_b)
        if a & b:
            raise ValueError(f"groups overlap: {sorted(a & b)}")
        for i in a:
            for j in b:
                self._proxies[i, j].block()
                self._proxies[j, i].block()

    def isolate(self, node: int) -> None:
        self.partition([node], [j for j in self._nodes if j != node])

    def one_way(self, frm: int, to: int) -> None:
        """`frm`'s messages to `to` silently vanish; `to` still reaches `frm`.

        Peer connections carry messages only from the connecting side, so dropping the
        client->target direction of link frm->to is exactly "frm cannot reach to".
        """
        self._proxies[frm, to].set_one_way(True, False)

    def set_delay(self, seconds: float, links: Iterable[tuple[int, int]] | None = None) -> None:
        for key in self._proxies if links is None else links:
            self._proxies[key].set_delay(seconds)

    def heal(self) -> None:
        """Every link back to plain forwarding."""
        for proxy in self._proxies.values():
            proxy.heal()

    def stats(self) -> dict[tuple[int, int], ProxyStats]:
        return {key: p.stats() for key, p in self._proxies.items()}

    def close(self) -> None:
        errors: list[BaseException] = []
        for proxy in self._proxies.values():
            try:
                proxy.close()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> LinkTable:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
