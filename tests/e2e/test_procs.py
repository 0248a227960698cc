"""The process harness itself, against a stand-in node that only serves grpc.health.v1.

The stand-in takes the same command line as `ggap node`, so these tests pin the harness
down independently of the real server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ggap.pb import health_pb2
from tests import procs
from tests.procs import NodeProcess, NodeStartError

pytestmark = pytest.mark.slow

STANDIN = textwrap.dedent(
    """
    import argparse, os, signal, socket, sys, threading, time
    from concurrent import futures

    import grpc
    from ggap.pb import health_pb2, health_pb2_grpc

    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["node"])
    for flag in ("--node-id", "--client-addr", "--cluster-addr", "--data-dir"):
        parser.add_argument(flag, required=True)
    args, extra = parser.parse_known_args()

    host, port = args.cluster_addr.rsplit(":", 1)
    cluster = socket.socket()
    try:
        cluster.bind((host, int(port)))
    except OSError as exc:
        print(f"standin: cannot bind {args.cluster_addr}: {exc}", file=sys.stderr)
        sys.exit(1)
    cluster.listen()
    os.makedirs(args.data_dir, exist_ok=True)
    with open(os.path.join(args.data_dir, "starts"), "a") as fh:
        fh.write(f"{os.getpid()} {' '.join(extra)}\\n")
    if os.environ.get("STANDIN_FAIL"):
        print("standin: refusing to start", file=sys.stderr)
        sys.exit(3)
    ready_at = time.monotonic() + float(os.environ.get("STANDIN_READY_DELAY", "0"))

    class Health(health_pb2_grpc.HealthServicer):
        def Check(self, request, context):
            r = health_pb2.HealthCheckResponse
            return r(status=r.SERVING if time.monotonic() >= ready_at else r.NOT_SERVING)

    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    try:
        server.add_insecure_port(args.client_addr)
    except RuntimeError as exc:
        print(f"standin: {exc}: Address already in use", file=sys.stderr)
        sys.exit(1)
    done = threading.Event()
    if os.environ.get("STANDIN_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: done.set())
    server.start()
    print("standin: serving", args.client_addr, flush=True)
    while not done.wait(0.1):
        pass
    server.stop(0)
    print("standin: stopped", flush=True)
    """
)


@pytest.fixture
def standin(tmp_path: Path) -> list[str]:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return [sys.executable, str(script)]


@pytest.fixture
def made(standin: list[str], tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """NodeProcess objects on the stand-in, closed at the end (tests drive them by hand)."""
    nodes: list[NodeProcess] = []

    def make(node_id: int = 1, **kwargs: Any) -> NodeProcess:
        node = NodeProcess(tmp_path / f"n{node_id}", node_id=node_id, command=standin, **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close(timeout=5)


def _check(node: NodeProcess, timeout: float = 2.0) -> int:
    resp = node.health_stub().Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    return int(resp.status)


def test_free_port_gives_distinct_bindable_ports() -> None:
    ports = [procs.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for port in ports[:3]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_start_ready_stop(made: Callable[..., NodeProcess]) -> None:
    node = made(extra_args=["--log-level", "debug"], env={"STANDIN_READY_DELAY": "0.5"})
    node.start_and_wait(timeout=20)
    assert node.is_running() and node.pid is not None
    assert _check(node) == health_pb2.HealthCheckResponse.SERVING
    argv = node.argv()
    assert argv[argv.index("--client-addr") + 1] == node.client_addr
    assert argv[argv.index("--cluster-addr") + 1] == node.cluster_addr
    assert argv[-2:] == ["--log-level", "debug"]
    starts = (node.data_dir / "starts").read_text().split()
    assert starts == [str(node.pid), "--log-level", "debug"]
    assert node.stop() == 0
    assert not node.is_running()
    assert node.log_path.parent == node.data_dir.parent
    assert "standin: stopped" in node.log_path.read_text()
    assert not node.exited_unexpectedly()


def test_wait_ready_times_out_while_not_serving(made: Callable[..., NodeProcess]) -> None:
    node = made(env={"STANDIN_READY_DELAY": "600"}).start()
    with pytest.raises(NodeStartError, match=r"not SERVING in time.*NOT_SERVING"):
        node.wait_ready(timeout=1.5)
    assert node.is_running()  # the caller (fixture) still owns and stops it


def test_exit_before_ready_reports_log(made: Callable[..., NodeProcess]) -> None:
    node = made(env={"STANDIN_FAIL": "1"}).start()
    with pytest.raises(NodeStartError, match="exited with code 3") as info:
        node.wait_ready(timeout=20)
    assert "refusing to start" in str(info.value)
    assert not info.value.address_in_use
    assert node.exited_unexpectedly()


def test_taken_auto_port_is_replaced(
    made: Callable[..., NodeProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real = procs.free_port
        handed = iter([procs.free_port(), taken])
        monkeypatch.setattr(procs, "free_port", lambda: next(handed, None) or real())
        node = made().start()
        assert node.cluster_port == taken
        node.wait_ready(timeout=20)
        assert node.attempts == 2
        assert node.cluster_port != taken
        assert _check(node) == health_pb2.HealthCheckResponse.SERVING


def test_taken_explicit_port_is_not_replaced(made: Callable[..., NodeProcess]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        node = made(client_port=procs.free_port(), cluster_port=taken).start()
        with pytest.raises(NodeStartError) as info:
            node.wait_ready(timeout=20)
        assert info.value.address_in_use
        assert node.attempts == 1


def test_pause_resume_kill_restart(made: Callable[..., NodeProcess]) -> None:
    node = made().start_and_wait(timeout=20)
    first_pid, ports = node.pid, (node.client_port, node.cluster_port)
    assert _check(node) == health_pb2.HealthCheckResponse.SERVING  # connect before pausing
    node.pause()
    with pytest.raises(grpc.RpcError) as info:
        _check(node, timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    node.resume()
    assert _check(node, timeout=10) == health_pb2.HealthCheckResponse.SERVING
    assert node.kill() == -signal.SIGKILL
    assert not node.is_running()
    node.restart(timeout=20)
    assert node.pid != first_pid
    assert (node.client_port, node.cluster_port) == ports
    assert len((node.data_dir / "starts").read_text().splitlines()) == 2
    # The shared channel made before the kill reconnects by itself.
    assert _check(node, timeout=10) == health_pb2.HealthCheckResponse.SERVING


def test_stop_escalates_to_sigkill(made: Callable[..., NodeProcess]) -> None:
    node = made(env={"STANDIN_IGNORE_TERM": "1"}).start_and_wait(timeout=20)
    assert node.stop(timeout=1.0) == -signal.SIGKILL


def test_stop_of_paused_node_is_graceful(made: Callable[..., NodeProcess]) -> None:
    node = made().start_and_wait(timeout=20)
    node.pause()
    assert node.stop(timeout=10) == 0


def test_kill_all_is_a_safety_net(made: Callable[..., NodeProcess]) -> None:
    node = made().start()
    assert node in procs.live_nodes()
    procs.kill_all()
    assert not node.is_running()
    assert node not in procs.live_nodes()


def test_fixture_stops_nodes_of_failing_test(standin: list[str], tmp_path: Path) -> None:
    """Run a failing test in a child pytest: its node must be gone and its log printed."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "conftest.py").write_text(
        "from tests.conftest import node, node_factory, pytest_runtest_makereport, pytest_sessionfinish\n"
    )
    pid_file = inner / "pid"
    (inner / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            def test_fails(node_factory):
                node = node_factory(command={standin!r})
                open({str(pid_file)!r}, "w").write(str(node.pid))
                assert False, "deliberate"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(inner)],
        cwd=inner,
        env={**os.environ, "PYTHONPATH": str(procs.REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "deliberate" in result.stdout
    # The log tail printed at teardown shows a graceful stop (the atexit net would SIGKILL).
    assert "standin: stopped" in result.stdout
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()
