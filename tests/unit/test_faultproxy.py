"""tests/faultproxy.py against plain TCP echo servers, from synchronous code (as e2e tests are).

Every socket has a timeout, every server and proxy is closed by the test, and the thread
count must come back to where it started.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from ggap.config.peers import parse_peers
from tests.faultproxy import FaultProxy, LinkTable

TIMEOUT = 5.0


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes everything back and counts what it received; `close()` joins its threads."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.received = 0
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server_address[:2]
        return (str(host), int(port))

    def close(self) -> None:
        """Like a killed process: stop accepting and cut every open connection."""
        self.shutdown()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server_close()
        self._thread.join(TIMEOUT)


class _EchoHandler(socketserver.BaseRequestHandler):
    server: EchoServer

    def handle(self) -> None:
        self.request.settimeout(TIMEOUT)
        with self.server.lock:
            self.server.connections.add(self.request)
        try:
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received += len(data)
                self.request.sendall(data)
        except OSError:
            pass
        finally:
            with self.server.lock:
                self.server.connections.discard(self.request)


@pytest.fixture
def thread_baseline() -> Iterator[None]:
    """Fails the test if it leaves a thread behind."""
    before = threading.active_count()
    yield
    deadline = time.monotonic() + TIMEOUT
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


@pytest.fixture
def echo(thread_baseline: None) -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    out = b""
    while len(out) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def closed_by_peer(s: socket.socket) -> bool:
    """True once the other end closed (EOF or reset), within TIMEOUT."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return False
    return True


def silent(s: socket.socket, wait: float = 0.3) -> bool:
    """True if nothing arrives for `wait` seconds (and the connection is not closed)."""
    s.settimeout(wait)
    try:
        s.recv(65536)
    except TimeoutError:
        return True
    finally:
        s.settimeout(TIMEOUT)
    return False


def test_forwards_both_ways_on_many_connections(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy:
        socks = [connect(proxy.port) for _ in range(3)]
        try:
            for i, s in enumerate(socks):
                assert roundtrip(s, f"hello {i}".encode()) == f"hello {i}".encode()
            big = bytes(range(256)) * 4096  # 1 MiB, many chunks
            assert roundtrip(socks[0], big) == big
            expected = len(big) + sum(len(f"hello {i}") for i in range(3))
            # The proxy counts a chunk after its send returns, which can be a moment after the
            # client already read it: poll briefly for the counters to settle.
            deadline = time.monotonic() + 5
            while True:
                stats = proxy.stats()
                if stats.forwarded_t2c == expected or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            assert stats.open == 3 and stats.accepted == 3
            assert stats.forwarded_c2t == stats.forwarded_t2c == expected
        finally:
            for s in socks:
                s.close()
        assert proxy.target == echo.address


def test_block_closes_connections_and_refuses_until_unblock(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy:
        with connect(proxy.port) as s:
            assert roundtrip(s, b"before") == b"before"
            proxy.block()
            assert closed_by_peer(s)
        with connect(proxy.port) as s:  # accepted, then closed at once
            s.sendall(b"lost")
            assert closed_by_peer(s)
        assert proxy.stats().refused == 1
        proxy.unblock()
        with connect(proxy.port) as s:
            assert roundtrip(s, b"after") == b"after"
        assert echo.received == len(b"before") + len(b"after")


def test_one_way_blackholes_a_direction(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy, connect(proxy.port) as s:
        assert roundtrip(s, b"x") == b"x"
        proxy.set_one_way(drop_client_to_target=True, drop_target_to_client=False)
        s.sendall(b"into the void")
        assert silent(s)
        assert echo.received == 1  # the target never saw it
        assert proxy.stats().dropped_c2t == len(b"into the void")

        proxy.set_one_way(drop_client_to_target=False, drop_target_to_client=True)
        s.sendall(b"echo lost")
        assert silent(s)
        deadline = time.monotonic() + TIMEOUT
        while echo.received < 1 + len(b"echo lost") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert echo.received == 1 + len(b"echo lost")  # it got there; only the reply vanished

        proxy.set_one_way(False, False)
        assert roundtrip(s, b"healed") == b"healed"  # the same connection carries on
        with connect(proxy.port) as s2:  # and new connections work
            assert roundtrip(s2, b"new") == b"new"


def test_one_way_swallows_end_of_stream(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy:
        s = connect(proxy.port)
        assert roundtrip(s, b"x") == b"x"
        proxy.set_one_way(True, True)
        s.close()  # the target must not hear about it while the link is dropped
        time.sleep(0.2)
        assert proxy.stats().open == 1


def test_delay_applies_to_each_direction(echo: EchoServer) -> None:
    with FaultProxy(echo.address) as proxy, connect(proxy.port) as s:
        t0 = time.monotonic()
        assert roundtrip(s, b"fast") == b"fast"
        assert time.monotonic() - t0 < 0.2
        proxy.set_delay(0.15)
        t0 = time.monotonic()
        assert roundtrip(s, b"slow") == b"slow"
        assert 0.3 <= time.monotonic() - t0 < 3
        proxy.set_delay(0)
        t0 = time.monotonic()
        assert roundtrip(s, b"fast again") == b"fast again"
        assert time.monotonic() - t0 < 0.2
        with pytest.raises(ValueError):
            proxy.set_delay(-1)


def test_target_down_closes_the_client(thread_baseline: None) -> None:
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead = tmp.getsockname()
    with FaultProxy(dead) as proxy, connect(proxy.port) as s:
        assert closed_by_peer(s)
        assert proxy.stats().refused == 1


def test_close_stops_everything(echo: EchoServer) -> None:
    before = threading.active_count()
    proxy = FaultProxy(echo.address)
    assert threading.active_count() == before + 1
    s = connect(proxy.port)
    assert roundtrip(s, b"x") == b"x"
    port = proxy.port
    proxy.close()
    proxy.close()  # idempotent
    assert closed_by_peer(s)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.block()
    # The proxy's thread is joined by close() itself (the echo server's handler thread may
    # still be finishing; the fixture waits for that one).
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


def test_link_table_routes_partitions_and_heals(thread_baseline: None) -> None:
    servers = {i: EchoServer() for i in (1, 2, 3)}
    try:
        with LinkTable({i: s.address for i, s in servers.items()}) as links:
            peers1 = links.peers(1)
            assert peers1[1] == servers[1].address  # its own entry: the real listen address
            assert peers1[2] == links.proxy(1, 2).address != servers[2].address
            assert parse_peers(links.peers_arg(1)) == {i: f"{h}:{p}" for i, (h, p) in peers1.items()}
            assert links.proxy(1, 2).target == servers[2].address

            def reachable(i: int, j: int) -> bool:
                host, port = links.peers(i)[j]
                try:
                    with socket.create_connection((host, port), timeout=1) as s:
                        s.settimeout(0.5)
                        return roundtrip(s, b"ping") == b"ping"
                except OSError:
                    return False

            pairs = [(i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i != j]
            assert all(reachable(i, j) for i, j in pairs)

            links.partition([1], [2, 3])
            assert [p for p in pairs if reachable(*p)] == [(2, 3), (3, 2)]
            links.heal()
            assert all(reachable(i, j) for i, j in pairs)

            links.isolate(3)
            assert [p for p in pairs if reachable(*p)] == [(1, 2), (2, 1)]
            links.heal()

            links.one_way(1, 2)
            assert [p for p in pairs if not reachable(*p)] == [(1, 2)]
            assert links.stats()[1, 2].dropped_c2t > 0
            links.heal()

            links.set_delay(0.1, links=[(2, 1)])
            t0 = time.monotonic()
            assert reachable(2, 1)
            assert time.monotonic() - t0 >= 0.2
            links.heal()

            with pytest.raises(ValueError):
                links.partition([1, 2], [2, 3])

            servers[2].close()
            servers[2] = EchoServer()  # "node 2 restarted on a new port"
            links.set_address(2, servers[2].address)
            assert reachable(1, 2) and links.peers(2)[2] == servers[2].address
    finally:
        for s in servers.values():
            s.close()
