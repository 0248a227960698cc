"""`ggap node` as a process: signals, exit codes, ports, refused starts.

Refused starts are launched with NodeProcess.start() (no readiness wait) and reaped with
wait(); every process is closed in the fixture's or the test's teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import REPO_ROOT, NodeProcess, free_port, node_command

pytestmark = pytest.mark.slow

T = 5.0
EXIT_WITHIN = 5.0  # liveness bound for a graceful stop or a refused start


@pytest.fixture
def spare(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """NodeProcess objects that a test launches by hand; all closed at teardown."""
    made: list[NodeProcess] = []

    def make(data_dir: Path | None = None, **kwargs: object) -> NodeProcess:
        proc = NodeProcess(data_dir or tmp_path / f"spare{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close(timeout=10)


def launch_log(proc: NodeProcess) -> str:
    """The output of the process's latest launch (the log file is appended to per launch)."""
    text = proc.log_path.read_text(errors="replace")
    return text.rsplit("=== ggap test harness ", 1)[-1]


def port_is_free(port: int) -> bool:
    """A new server (SO_REUSEADDR, as every server sets) could listen on the port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen()
        except OSError:
            return False
    return True


def wait_exit(proc: NodeProcess) -> int:
    try:
        return proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node did not exit within {EXIT_WITHIN} s; log:\n{proc.log_tail()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(node_factory: Callable[..., NodeProcess], sig: signal.Signals) -> None:
    node = node_factory()
    kv = node.kv_stub()
    rev = kv.Put(pb.PutRequest(key="k", value=b"v"), timeout=T).header.revision
    # An open watch must not keep the node from stopping.
    watch = kv.Watch(pb.WatchRequest(key="k", start_revision=rev), timeout=30)
    assert next(watch).events[0].kv.value == b"v"
    try:
        node.send_signal(sig)
        assert wait_exit(node) == 0, node.log_tail()
    finally:
        watch.cancel()
    log = launch_log(node).lower()
    assert "stopped" in log, log
    assert "traceback" not in log, log
    assert port_is_free(node.client_port)
    # Same ports, same data: it comes back with the data.
    node.restart()
    got = node.kv_stub().Get(pb.GetRequest(key="k"), timeout=T)
    assert (got.kv.value, got.kv.mod_revision) == (b"v", rev)


def test_sigterm_with_requests_in_flight(node_factory: Callable[..., NodeProcess]) -> None:
    """A unary call still waiting when the grace period ends gets a clean error; exit is 0."""
    node = node_factory(env={"GINNUNGAGAP_SERVER__SHUTDOWN_GRACE_MS": "500"})
    kv = node.kv_stub()
    rev = kv.Put(pb.PutRequest(key="k", value=b"v"), timeout=T).header.revision
    waiting = kv.Get.future(
        pb.GetRequest(key="k", read_mode=pb.READ_MODE_SEQUENTIAL, min_revision=rev + 100), timeout=30
    )
    time.sleep(0.3)
    node.send_signal(signal.SIGTERM)
    assert wait_exit(node) == 0, node.log_tail()
    exc = waiting.exception(timeout=T)
    assert isinstance(exc, grpc.RpcError)
    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), exc
    assert "Traceback" not in (exc.details() or "")


def test_client_port_in_use(
    node_factory: Callable[..., NodeProcess], spare: Callable[..., NodeProcess]
) -> None:
    first = node_factory()
    kv = first.kv_stub()
    kv.Put(pb.PutRequest(key="first", value=b"1"), timeout=T)
    second = spare(client_port=first.client_port, cluster_port=free_port()).start()
    assert wait_exit(second) == 2
    log = launch_log(second)
    assert first.client_addr in log, log
    assert "traceback" not in log.lower(), log
    # The first node never noticed.
    assert first.is_running()
    assert kv.Get(pb.GetRequest(key="first"), timeout=T).kv.value == b"1"
    with grpc.insecure_channel(first.client_addr) as channel:  # a fresh connection goes to it too
        fresh = kv_pb2_grpc.KvServiceStub(channel).Get(pb.GetRequest(key="first"), timeout=T)
    assert fresh.kv.value == b"1"


def test_client_port_held_by_another_program(spare: Callable[..., NodeProcess]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        node = spare(client_port=port, cluster_port=free_port()).start()
        assert wait_exit(node) == 2
    assert f"127.0.0.1:{port}" in launch_log(node)


def test_data_dir_of_another_node_is_refused(
    node_factory: Callable[..., NodeProcess], spare: Callable[..., NodeProcess]
) -> None:
    node1 = node_factory()
    rev = node1.kv_stub().Put(pb.PutRequest(key="mine", value=b"1"), timeout=T).header.revision
    assert node1.stop() == 0
    impostor = spare(data_dir=node1.data_dir, node_id=2).start()
    assert wait_exit(impostor) == 2
    log = launch_log(impostor)
    assert "traceback" not in log.lower(), log
    # The refused start changed nothing: node 1 starts on it again with its data.
    node1.restart()
    got = node1.kv_stub().Get(pb.GetRequest(key="mine"), timeout=T)
    assert (got.kv.value, got.kv.mod_revision) == (b"1", rev)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GINNUNGAGAP_MVCC__NOPE": "1"}, "nope"),
        ({"GINNUNGAGAP_NOSECTION__X": "1"}, "nosection"),
        ({"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "lots"}, "history_depth"),
        ({"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "0"}, "history_depth"),
    ],
    ids=["unknown-key", "unknown-section", "bad-type", "bad-value"],
)
def test_bad_config_in_env_is_refused(tmp_path: Path, env: dict[str, str], named: str) -> None:
    argv = NodeProcess(tmp_path / "node1").argv()  # only for its command line; never started
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **env},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert named in out.stderr.lower(), out.stderr
    assert "traceback" not in out.stderr.lower(), out.stderr


def test_bad_address_flag_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *node_command(),
            "node",
            "--node-id",
            "1",
            "--client-addr",
            "nonsense",
            "--cluster-addr",
            f"127.0.0.1:{free_port()}",
            "--data-dir",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "nonsense" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_help_exits_zero() -> None:
    out = subprocess.run(
        [*node_command(), "node", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert "--client-addr" in out.stdout
