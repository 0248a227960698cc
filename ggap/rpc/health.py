"""grpc.health.v1.Health over purerpc, fed by whoever knows whether the node can serve.

Watchers never queue: each has a one-slot mailbox, so a slow watcher skips the statuses
it missed and reads the newest one, and a flapping node cannot grow memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import purerpc
import trio

from ggap.pb import health_grpc, health_pb2
from ggap.rpc.server import RpcPolicy, guarded_service
from ggap.types.errors import NotFound

__all__ = ["HealthService"]

_Response = health_pb2.HealthCheckResponse


class _Wakeup:
    """One-slot mailbox: `notify` never blocks, `wait` returns once per burst of notifies."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class HealthService:
    """Serving status per service name; "" is the whole server.

    Check of a name never set answers NOT_FOUND; Watch of it answers SERVICE_UNKNOWN
    and keeps watching, as the health protocol asks.
    """

    def __init__(self, *, serving: bool = True, max_watchers: int = 1024) -> None:
        self._status: dict[str, bool] = {"": serving}
        self._watchers: dict[str, set[_Wakeup]] = {}
        # Its own limits: health probes must still answer when the KV port is saturated.
        self._policy = RpcPolicy(default_timeout_s=5.0, max_in_flight=max_watchers)
        self._service = guarded_service(_HealthServicer(self), self._policy)

    @property
    def service(self) -> purerpc.Service:
        return self._service

    def set_status(self, service: str, serving: bool) -> None:
        """Record a status; watchers of `service` hear about it only if it changed."""
        if self._status.get(service) == serving:
            return
        self._status[service] = serving
        for waiter in self._watchers.get(service, ()):
            waiter.notify()

    def status(self, service: str) -> bool | None:
        """True serving, False not serving, None never set."""
        return self._status.get(service)

    @property
    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def _wire_status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        serving = self._status.get(service)
        if serving is None:
            return _Response.SERVICE_UNKNOWN
        return _Response.SERVING if serving else _Response.NOT_SERVING

    async def _check(self, service: str) -> health_pb2.HealthCheckResponse:
        if service not in self._status:
            raise NotFound(f"unknown service {service!r}")
        return _Response(status=self._wire_status(service))

    async def _watch(self, service: str) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        waiter = _Wakeup()
        # Register before reading the status, so a change in between is not lost.
        self._watchers.setdefault(service, set()).add(waiter)
        try:
            last = None
            while True:
                current = self._wire_status(service)
                if current != last:
                    last = current
                    yield _Response(status=current)
                await waiter.wait()
        finally:
            watchers = self._watchers.get(service)
            if watchers is not None:
                watchers.discard(waiter)
                if not watchers:
                    del self._watchers[service]


class _HealthServicer(health_grpc.HealthServicer):
    def __init__(self, health: HealthService) -> None:
        self._health = health

    async def Check(self, msg: health_pb2.HealthCheckRequest) -> health_pb2.HealthCheckResponse:
        return await self._health._check(msg.service)

    def Watch(self, msg: health_pb2.HealthCheckRequest) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        # Hand out the generator itself, so closing the stream runs its cleanup at once.
        return self._health._watch(msg.service)
