"""The front door of a real node: a request of any size over limits.max_message_bytes fails
that call alone (RESOURCE_EXHAUSTED) while a Watch on the same grpcio channel keeps
delivering, without the node buffering the request; silent connections are closed after
limits.handshake_timeout_ms; limits.max_connections holds; the peer port refuses garbage
handshakes and oversized frames from a raw socket.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import NodeProcess

pytestmark = pytest.mark.slow

T = 10.0
MAX_CONNECTIONS = 6
NODE_ENV = {
    "GINNUNGAGAP_LIMITS__HANDSHAKE_TIMEOUT_MS": "500",
    "GINNUNGAGAP_LIMITS__MAX_CONNECTIONS": str(MAX_CONNECTIONS),
}
MiB = 1024 * 1024


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closed `sock`, or None if it did not within `limit`."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def test_any_oversized_put_fails_alone_and_the_watch_on_its_channel_lives(node: NodeProcess) -> None:
    assert node.pid is not None
    with grpc.insecure_channel(node.client_addr) as channel:
        kv = kv_pb2_grpc.KvServiceStub(channel)
        start = kv.Put(pb.PutRequest(key="door", value=b"0"), timeout=T).header.revision
        watch = kv.Watch(pb.WatchRequest(key="door", start_revision=start), timeout=120)
        try:
            assert next(watch).events[0].kv.value == b"0"
            for i, size in enumerate((16 * MiB, 200 * MiB), start=1):
                before = _peak_rss_bytes(node.pid)
                with pytest.raises(grpc.RpcError) as info:
                    kv.Put(pb.PutRequest(key="door", value=b"x" * size), timeout=60)
                err: grpc.RpcError = info.value
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (size, err.code(), err.details())
                assert "limits.max_message_bytes" in (err.details() or "")
                # Refused from the message's prefix: the node never held the request.
                grown = _peak_rss_bytes(node.pid) - before
                assert grown < 32 * MiB, (
                    f"peak RSS grew by {grown / MiB:.1f} MiB for a {size // MiB} MiB request"
                )
                # Nothing was applied, and the watch opened before still delivers, in order.
                kv.Put(pb.PutRequest(key="door", value=str(i).encode()), timeout=T)
                got: list[bytes] = []
                while not got:
                    got = [e.kv.value for e in next(watch).events]
                assert got == [str(i).encode()]
        finally:
            watch.cancel()
        found = kv.Get(pb.GetRequest(key="door"), timeout=T)
        assert found.kv.value == b"2" and found.kv.version == 3


def test_silent_connections_are_closed_after_the_handshake_timeout(node: NodeProcess) -> None:
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=T) as silent:
        # Closed (5 s is only a hang guard for the 500 ms timeout, not a timing claim).
        assert _closed_within(silent, 5) is not None
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=T) as stalled:
        stalled.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00")
        assert _closed_within(stalled, 5) is not None


def test_connections_over_max_connections_are_refused_and_others_keep_working(node: NodeProcess) -> None:
    with grpc.insecure_channel(node.client_addr) as channel:
        kv = kv_pb2_grpc.KvServiceStub(channel)
        kv.Put(pb.PutRequest(key="conn", value=b"1"), timeout=T)
        # Fill the rest with connections that complete the HTTP/2 preface (so the handshake
        # timeout does not close them) and then idle.
        fillers = []
        try:
            for _ in range(MAX_CONNECTIONS + 3):
                s = socket.create_connection(("127.0.0.1", node.client_port), timeout=T)
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                fillers.append(s)
            closed = [_closed_within(s, 0.3) is not None for s in fillers]
            # One slot is the grpcio channel's, the node's own health probes may hold none.
            assert closed.count(False) == MAX_CONNECTIONS - 1, closed
            assert kv.Get(pb.GetRequest(key="conn"), timeout=T).kv.value == b"1"
        finally:
            for s in fillers:
                s.close()
    log = node.log_path.read_text(errors="replace")
    assert log.count("limits.max_connections") == 1, log[-4000:]


def _peer_frame_header(length: int) -> bytes:
    return struct.pack(">II", length, 0)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, id="http1"),
        pytest.param(_peer_frame_header(0xFFFFFFFF), id="frame-over-max"),
        pytest.param(_peer_frame_header(5) + b"hello", id="bad-crc"),
        pytest.param(b"\x00\x00\x00", id="stall-mid-header"),
    ],
)
def test_peer_port_refuses_garbage_and_oversized_frames(node: NodeProcess, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", node.cluster_port), timeout=T) as s:
        s.sendall(data)
        # transport.handshake_timeout_ms (2 s) bounds the stalled one.
        took = _closed_within(s, 5)
        assert took is not None, "the peer port kept a bad connection open"
    kv = node.kv_stub()
    kv.Put(pb.PutRequest(key="peer-ok", value=b"1"), timeout=T)


def test_zz_node_never_crashed_nor_logged_a_traceback(node: NodeProcess) -> None:
    assert node.is_running(), node.log_tail()
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, node.log_tail(120)
