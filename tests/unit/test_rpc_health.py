"""grpc.health.v1.Health over purerpc, checked with grpcio's stub for our own health protos.

(grpc_health is not imported: its descriptors clash with ggap.pb's in the default pool.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import pytest
import trio

from ggap.pb import health_pb2, health_pb2_grpc
from ggap.rpc import HealthService, serve_grpc

R = health_pb2.HealthCheckResponse
# No proxy, and a connection per channel: closing a channel must really disconnect.
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.use_local_subchannel_pool", 1)]


@contextmanager
def health_stub(port: int) -> Iterator[health_pb2_grpc.HealthStub]:
    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS)
    try:
        yield health_pb2_grpc.HealthStub(ch)
    finally:
        ch.close()


async def start(nursery: trio.Nursery, health: HealthService) -> int:
    return await nursery.start(
        functools.partial(serve_grpc, [health.service], "127.0.0.1", 0, max_message_bytes=1 << 20)
    )


async def check(port: int, service: str) -> int:
    with health_stub(port) as stub:
        return (
            await trio.to_thread.run_sync(
                lambda: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            )
        ).status


async def test_check_reports_status_and_unknown_is_not_found(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        health = HealthService()
        port = await start(nursery, health)
        assert await check(port, "") == R.SERVING
        health.set_status("", False)
        assert await check(port, "") == R.NOT_SERVING
        health.set_status("ginnungagap.v1.KvService", True)
        assert await check(port, "ginnungagap.v1.KvService") == R.SERVING
        with pytest.raises(grpc.RpcError) as info:
            await check(port, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert health.status("no.such.Service") is None


async def wait_until(predicate: Callable[[], bool]) -> None:
    while True:
        if predicate():
            return
        await trio.sleep(0.005)


def _collect(port: int, service: str, timeout: float) -> list[int]:
    """Every status a Watch delivers until its deadline ends it."""
    with health_stub(port) as stub:
        got: list[int] = []
        try:
            for msg in stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=timeout):
                got.append(msg.status)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        return got


async def test_watch_sends_current_then_changes_only(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        health = HealthService()
        health.set_status("svc", False)
        port = await start(nursery, health)
        result: list[int] = []

        async def watcher() -> None:
            result.extend(await trio.to_thread.run_sync(_collect, port, "svc", 1.0))

        async with trio.open_nursery() as inner:
            inner.start_soon(watcher)
            await wait_until(lambda: health.watcher_count == 1)
            await trio.sleep(0.1)
            health.set_status("svc", True)
            await trio.sleep(0.1)
            health.set_status("svc", True)  # no change: nothing sent
            health.set_status("other", False)  # another service: nothing sent
            await trio.sleep(0.1)
            health.set_status("svc", False)
        assert result == [R.NOT_SERVING, R.SERVING, R.NOT_SERVING]
        assert health.watcher_count == 0


async def test_slow_watcher_gets_only_the_latest_status(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        health = HealthService()
        health.set_status("svc", False)
        port = await start(nursery, health)
        result: list[int] = []

        async def watcher() -> None:
            result.extend(await trio.to_thread.run_sync(_collect, port, "svc", 1.0))

        async with trio.open_nursery() as inner:
            inner.start_soon(watcher)
            await wait_until(lambda: health.watcher_count == 1)
            # The watcher has read NOT_SERVING in the step that registered it; a burst of
            # changes with no checkpoint in between must reach it as its final value only.
            for serving in (True, False, True, False, True):
                health.set_status("svc", serving)
        assert result == [R.NOT_SERVING, R.SERVING]


async def test_watch_of_unknown_service_waits_for_it(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        health = HealthService()
        port = await start(nursery, health)
        result: list[int] = []

        async def watcher() -> None:
            result.extend(await trio.to_thread.run_sync(_collect, port, "later", 0.6))

        async with trio.open_nursery() as inner:
            inner.start_soon(watcher)
            await wait_until(lambda: health.watcher_count == 1)
            await trio.sleep(0.1)
            health.set_status("later", True)
        assert result == [R.SERVICE_UNKNOWN, R.SERVING]
