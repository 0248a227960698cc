"""`ggap cluster up`: a local N-node cluster as child processes, supervised until Ctrl-C.

Layout (pure, see `plan_cluster`): node i serves clients on BASE+10*(i-1), peers on
BASE+10*(i-1)+1 and Prometheus /metrics and /healthz on BASE+10*(i-1)+2, keeps its data in
DATA_DIR/node<i> and logs to DATA_DIR/node<i>.log; every node gets the same `--peers`.
DATA_DIR/cluster.json remembers the layout, so re-running `cluster up` on the same data dir
restarts the same cluster (flags that contradict it are a usage error, caught before
anything starts; the nodes themselves also refuse other peers).

Supervision policy:
- a port of the layout already taken: error, exit 2, nothing started;
- a child exiting with status 2 (it refused to start: bad config, port taken, data dir of
  another cluster): print its log tail, stop everything, exit 2 (a restart cannot help);
- any other unexpected exit (a crash, `kill -9`, OOM): print its log tail and restart it
  after a backoff (0.5 s doubling to 8 s); after MAX_QUICK_RESTARTS restarts of one node
  that each lived under STABLE_AFTER_S, give up: stop everything, exit 1;
- SIGINT/SIGTERM/SIGHUP: SIGTERM every child, wait STOP_GRACE_S, SIGKILL stragglers, exit 0
  (a second Ctrl-C skips the wait).

Children run in their own process groups, so a terminal's Ctrl-C reaches only this
supervisor, which then stops each node exactly once (a node signalled twice loses its
graceful shutdown). If the supervisor itself is SIGKILLed, Linux delivers SIGTERM to every
child (PR_SET_PDEATHSIG, set between fork and exec; the children are spawned from the main
thread, which the kernel ties that signal to). Elsewhere orphans keep running and must be
stopped by hand.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from ggap.cli import _output as out
from ggap.cli._certs import ClusterCerts, ensure_cluster_certs
from ggap.cli._common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, fail, run_async
from ggap.client import ClientError, open_connection
from ggap.pb import health_pb2

DEFAULT_BASE_PORT = 17000
DEFAULT_HOST = "127.0.0.1"
PORT_STRIDE = 10
LAYOUT_FILE = "cluster.json"
MAX_NODES = 99

STOP_GRACE_S = 10.0
POLL_S = 0.1
HEALTH_TIMEOUT_S = 1.0
STABLE_AFTER_S = 30.0
MAX_QUICK_RESTARTS = 5
WAITING_NOTICE_S = 15.0
LOG_TAIL_LINES = 15

_PR_SET_PDEATHSIG = 1
_LAUNCH_MARKER = "=== ggap cluster up:"


# --- the layout (pure) ---------------------------------------------------------------------


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@attrs.frozen
class NodeSpec:
    """Where one node of the local cluster lives."""

    node_id: int
    host: str
    client_port: int
    cluster_port: int
    data_dir: Path
    log_path: Path
    metrics_port: int = 0  # 0: no --metrics-addr

    @property
    def metrics_addr(self) -> str:
        return join_addr(self.host, self.metrics_port) if self.metrics_port else ""

    @property
    def client_addr(self) -> str:
        return join_addr(self.host, self.client_port)

    @property
    def cluster_addr(self) -> str:
        return join_addr(self.host, self.cluster_port)


def plan_cluster(nodes: int, host: str, base_port: int, data_dir: Path) -> list[NodeSpec]:
    """Node i: client port base+10*(i-1), cluster port one above, metrics port two above;
    ValueError if out of range."""
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be 1..{MAX_NODES}, got {nodes}")
    last = base_port + PORT_STRIDE * (nodes - 1) + 2
    if base_port < 1 or last > 65535:
        raise ValueError(f"ports {base_port}..{last} do not fit in 1..65535; choose another --base-port")
    return [
        NodeSpec(
            node_id=i,
            host=host,
            client_port=base_port + PORT_STRIDE * (i - 1),
            cluster_port=base_port + PORT_STRIDE * (i - 1) + 1,
            data_dir=data_dir / f"node{i}",
            log_path=data_dir / f"node{i}.log",
            metrics_port=base_port + PORT_STRIDE * (i - 1) + 2,
        )
        for i in range(1, nodes + 1)
    ]


def peers_string(specs: Sequence[NodeSpec]) -> str:
    """The `--peers` value every node gets: ID=CLUSTER_ADDR, comma-separated."""
    return ",".join(f"{s.node_id}={s.cluster_addr}" for s in specs)


def endpoints_string(specs: Sequence[NodeSpec]) -> str:
    """The `--endpoints` value for client commands: every node's client address."""
    return ",".join(s.client_addr for s in specs)


def node_argv(
    spec: NodeSpec,
    peers: str,
    config_file: Path | None,
    certs: ClusterCerts | None = None,
    log_format: str | None = None,
) -> list[str]:
    """`python -m ggap.cli node ...`: the same interpreter and package as this supervisor,
    whatever is on PATH. Paths are absolute so the child's cwd does not matter. With
    `certs`: TLS with client certificates on the client port and mutual TLS with peers."""
    argv = [
        sys.executable,
        "-m",
        "ggap.cli",
        "node",
        "--node-id",
        str(spec.node_id),
        "--client-addr",
        spec.client_addr,
        "--cluster-addr",
        spec.cluster_addr,
        "--data-dir",
        str(spec.data_dir.absolute()),
        "--peers",
        peers,
    ]
    if spec.metrics_addr:
        argv += ["--metrics-addr", spec.metrics_addr]
    if config_file is not None:
        argv += ["--config", str(config_file.absolute())]
    if log_format is not None:
        argv += ["--log-format", log_format]
    if certs is not None:
        cert = str(certs.node_cert(spec.node_id).absolute())
        key = str(certs.node_key(spec.node_id).absolute())
        ca = str(certs.client_port_ca_file.absolute())
        argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth"]
        # A separate peer CA: client.pem (client CA) is refused on the peer port.
        peer_cert = str(certs.node_peer_cert(spec.node_id).absolute())
        peer_key = str(certs.node_peer_key(spec.node_id).absolute())
        peer_ca = str(certs.peer_ca_file.absolute())
        argv += [
            "--peer-cert-file",
            peer_cert,
            "--peer-key-file",
            peer_key,
            "--peer-trusted-ca-file",
            peer_ca,
        ]
    return argv


@attrs.frozen
class Layout:
    """What DATA_DIR/cluster.json records: enough to rebuild the same plan."""

    nodes: int
    host: str
    base_port: int
    tls: bool = False

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Layout:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        nodes, host, base_port = doc.get("nodes"), doc.get("host"), doc.get("base_port")
        tls = doc.get("tls", False)
        if not (isinstance(nodes, int) and isinstance(host, str) and isinstance(base_port, int)):
            raise ValueError("expected nodes (int), host (str) and base_port (int)")
        if not isinstance(tls, bool):
            raise ValueError("expected tls (bool)")
        return cls(nodes=nodes, host=host, base_port=base_port, tls=tls)


def resolve_layout(
    saved: Layout | None,
    nodes: int | None,
    host: str | None,
    base_port: int | None,
    tls: bool | None = None,
) -> Layout:
    """Flags fill in (or must agree with) the layout a data dir was created with.

    A fresh data dir needs --nodes; host and base port have defaults. An existing one takes
    its saved values for omitted flags and refuses contradicting ones (those nodes already
    stored their peers, so they would refuse to start anyway, one confusing error at a time).
    """
    if saved is None:
        if nodes is None:
            raise ValueError("--nodes is required for a new cluster (the data dir has no cluster.json)")
        return Layout(
            nodes, host or DEFAULT_HOST, DEFAULT_BASE_PORT if base_port is None else base_port, bool(tls)
        )
    wanted = {"nodes": nodes, "host": host, "base_port": base_port}
    clashes = [
        f"--{name.replace('_', '-')} {value} (it was created with {getattr(saved, name)})"
        for name, value in wanted.items()
        if value is not None and value != getattr(saved, name)
    ]
    if tls is not None and tls != saved.tls:
        was = "--tls" if saved.tls else "--no-tls"
        clashes.append(f"--{'' if tls else 'no-'}tls (it was created with {was})")
    if clashes:
        raise ValueError(
            "this data dir holds a cluster with another layout: "
            + "; ".join(clashes)
            + ". Omit those flags to restart it, or use another --data-dir"
        )
    return saved


def restart_delay(quick_restarts: int) -> float:
    """Backoff before the n-th restart in a row of a node that keeps dying: 0.5, 1, 2, 4, 8 s."""
    return float(min(0.5 * 2 ** max(quick_restarts - 1, 0), 8.0))


LAYOUT_HEADERS = ("NODE", "PID", "CLIENT (endpoint)", "CLUSTER", "METRICS", "DATA DIR", "LOG")


def format_layout(specs: Sequence[NodeSpec], pids: Sequence[int | None]) -> str:
    rows = [
        [
            str(s.node_id),
            str(pid) if pid is not None else "-",
            s.client_addr,
            s.cluster_addr,
            f"http://{s.metrics_addr}/metrics" if s.metrics_addr else "-",
            str(s.data_dir),
            str(s.log_path),
        ]
        for s, pid in zip(specs, pids, strict=True)
    ]
    return out.render_table(LAYOUT_HEADERS, rows)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


# --- the host (sockets, files, processes) --------------------------------------------------


def port_in_use(host: str, port: int) -> bool:
    """Would a node fail to bind host:port? Checked as the node binds (SO_REUSEADDR, so a
    port still in TIME_WAIT from a previous run counts as free, as it is for the node)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False  # the node reports an unresolvable host itself
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError:
            return True
    return False


def busy_ports(specs: Sequence[NodeSpec]) -> list[str]:
    """One line per port of the layout that is taken (empty: all free)."""
    busy: list[str] = []
    for s in specs:
        for what, port in (
            ("client", s.client_port),
            ("cluster", s.cluster_port),
            ("metrics", s.metrics_port),
        ):
            if port and port_in_use(s.host, port):
                busy.append(f"{join_addr(s.host, port)} (node {s.node_id} {what} port)")
    return busy


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, max_bytes: int = 8192) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            data = fh.read()
    except OSError:
        return "(no log)"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when this process dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before prctl took effect
            os._exit(1)

    return preexec


class Child:
    """One node process: launched, watched, restarted and stopped only through its Popen."""

    def __init__(self, spec: NodeSpec, argv: list[str]) -> None:
        self.spec = spec
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.quick_restarts = 0
        self.serving = False
        self.last_problem = "not started"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        """Start the node with output appended to its log. Runs on the main thread (see the
        module docstring: PDEATHSIG follows the thread that forked)."""
        self.spec.data_dir.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.spec.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n{_LAUNCH_MARKER} {stamp} {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
                preexec_fn=_pdeathsig_preexec(),
            )
        self.started_at = time.monotonic()
        self.serving = False
        self.last_problem = "starting"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


async def check_serving(
    endpoint: str, timeout_s: float = HEALTH_TIMEOUT_S, ssl_context: ssl.SSLContext | None = None
) -> tuple[bool, str]:
    """grpc.health.v1 Check of the whole server (service ""): SERVING means the node knows a
    leader. Returns (serving, what was seen)."""
    try:
        async with open_connection(endpoint, timeout_s=timeout_s, ssl_context=ssl_context) as client:
            resp = await client.health("", timeout_s=timeout_s)
    except ClientError as e:
        return False, f"{e.code.name}: {e.message}"
    except Exception as e:  # never let a probe take the supervisor down
        return False, f"{type(e).__name__}: {e}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, name


def connect_hint(endpoints: str, certs: ClusterCerts) -> str:
    """How to reach a `--tls` cluster with the CLI, grpcurl and grpcio."""
    ca, cert, key = (str(p.absolute()) for p in (certs.ca_file, certs.client_cert, certs.client_key))
    first = endpoints.split(",")[0]
    return "\n".join(
        [
            "  TLS with client certificates (throwaway CA in " + str(certs.directory.absolute()) + "):",
            f"  export GGAP_ENDPOINTS={endpoints}",
            f"  export GGAP_CACERT={ca}",
            f"  export GGAP_CERT={cert}",
            f"  export GGAP_KEY={key}",
            "  ggap status",
            f"  grpcurl -cacert {ca} -cert {cert} -key {key} {first} list",
            "  grpcio: grpc.ssl_channel_credentials(root_certificates=<ca.pem>, "
            "private_key=<client.key>, certificate_chain=<client.pem>)",
        ]
    )


# --- the supervisor ------------------------------------------------------------------------


class Supervisor:
    """Runs the children until a signal or a fatal child exit; always stops them all."""

    def __init__(
        self,
        children: Sequence[Child],
        *,
        echo: Callable[..., Any] = click.echo,
        certs: ClusterCerts | None = None,
    ) -> None:
        self.children = list(children)
        self.echo = echo
        self.certs = certs
        self._ssl: ssl.SSLContext | None = None
        if certs is not None:
            from ggap.tls import client_context

            self._ssl = client_context(str(certs.ca_file), str(certs.client_cert), str(certs.client_key))
        self.result: int | None = None
        self._cancel: trio.CancelScope | None = None

    @property
    def endpoints(self) -> str:
        return endpoints_string([c.spec for c in self.children])

    def _finish(self, rc: int) -> None:
        if self.result is None:
            self.result = rc
        if self._cancel is not None:
            self._cancel.cancel()

    async def run(self) -> int:
        # Signals are caught before the first child exists, so none is ever left behind.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            try:
                for child in self.children:
                    child.launch()
                self.echo(format_layout([c.spec for c in self.children], [c.pid for c in self.children]))
                self.echo(f"waiting for {len(self.children)} nodes to be SERVING (Ctrl-C stops them)")
                async with trio.open_nursery() as nursery:
                    self._cancel = nursery.cancel_scope
                    nursery.start_soon(self._on_signal, signals)
                    nursery.start_soon(self._readiness)
                    for child in self.children:
                        nursery.start_soon(self._watch, child)
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_all(signals)
        return EXIT_OK if self.result is None else self.result

    async def _on_signal(self, signals: Any) -> None:
        async for signum in signals:
            self.echo(f"received {signal.Signals(signum).name}: stopping the cluster")
            self._finish(EXIT_OK)
            return

    async def _watch(self, child: Child) -> None:
        """Wait for the child to exit; then restart it, or end everything (module docstring)."""
        while True:
            # Popen has no async wait; polling 10 times a second costs nothing here.
            while child.alive():  # noqa: ASYNC110
                await trio.sleep(POLL_S)
            assert child.proc is not None
            code = child.proc.returncode
            lived = time.monotonic() - child.started_at
            self.echo(
                f"node {child.spec.node_id} (pid {child.pid}) {describe_exit(code)} after {lived:.1f}s; "
                f"last lines of {child.spec.log_path}:\n{log_tail(child.spec.log_path)}",
                err=True,
            )
            child.serving = False
            if code == EXIT_USAGE:
                self.echo(
                    f"Error: node {child.spec.node_id} refused to start (status 2; see its log above); "
                    "stopping the cluster",
                    err=True,
                )
                self._finish(EXIT_USAGE)
                return
            child.quick_restarts = 1 if lived >= STABLE_AFTER_S else child.quick_restarts + 1
            if child.quick_restarts > MAX_QUICK_RESTARTS:
                self.echo(
                    f"Error: node {child.spec.node_id} keeps dying ({MAX_QUICK_RESTARTS} quick restarts); "
                    "stopping the cluster",
                    err=True,
                )
                self._finish(EXIT_FAILURE)
                return
            delay = restart_delay(child.quick_restarts)
            self.echo(f"restarting node {child.spec.node_id} in {delay:g}s", err=True)
            await trio.sleep(delay)
            child.launch()
            self.echo(f"node {child.spec.node_id} restarted (pid {child.pid})")

    async def _readiness(self) -> None:
        """Probe nodes not known to be SERVING; announce the cluster once all are, and each
        restarted node when it serves again."""
        started = trio.current_time()
        announced = False
        next_notice = started + WAITING_NOTICE_S

        async def probe(child: Child) -> None:
            pid = child.pid
            ok, seen = await check_serving(child.spec.client_addr, ssl_context=self._ssl)
            if child.pid == pid and child.alive():  # else the verdict is about a dead process
                child.serving, child.last_problem = ok, seen
                if ok and announced:
                    self.echo(f"node {child.spec.node_id} is SERVING again")

        while True:
            pending = [c for c in self.children if c.alive() and not c.serving]
            if pending:
                async with trio.open_nursery() as nursery:
                    for child in pending:
                        nursery.start_soon(probe, child)
            if not announced and all(c.serving for c in self.children):
                announced = True
                took = trio.current_time() - started
                n = len(self.children)
                self.echo(
                    f"ready: {n} node{'s' if n != 1 else ''} SERVING after {took:.1f}s; "
                    f"use --endpoints {self.endpoints}"
                )
                if self.certs is None:
                    self.echo(f"  e.g. export GGAP_ENDPOINTS={self.endpoints}; ggap status")
                else:
                    self.echo(connect_hint(self.endpoints, self.certs))
            if not announced and trio.current_time() >= next_notice:
                next_notice += WAITING_NOTICE_S
                waiting = [c for c in self.children if not c.serving]
                self.echo(
                    "still waiting for "
                    + "; ".join(f"node {c.spec.node_id}: {c.last_problem}" for c in waiting)
                    + " (logs: "
                    + ", ".join(str(c.spec.log_path) for c in waiting)
                    + ")",
                    err=True,
                )
            await trio.sleep(0.2)

    async def _stop_all(self, signals: Any) -> None:
        """SIGTERM each live child once, wait up to STOP_GRACE_S (a further signal cuts the
        wait short), SIGKILL what is left, and reap everything."""
        live = [c for c in self.children if c.alive()]
        if live:
            self.echo(f"stopping {len(live)} nodes (SIGTERM; Ctrl-C again to kill them now)")
        for child in live:
            child.signal(signal.SIGTERM)
        deadline = trio.current_time() + STOP_GRACE_S
        while any(c.alive() for c in live) and trio.current_time() < deadline:
            with trio.move_on_after(POLL_S):
                async for signum in signals:
                    self.echo(f"received {signal.Signals(signum).name} again: killing the nodes")
                    deadline = trio.current_time()
                    break
        for child in live:
            if child.alive():
                self.echo(f"node {child.spec.node_id} (pid {child.pid}) did not stop in time: SIGKILL")
                child.signal(signal.SIGKILL)
        for child in live:
            if child.proc is not None:
                child.proc.wait()
        if live:
            self.echo("all nodes stopped")


# --- the commands --------------------------------------------------------------------------


@click.group("cluster")
def cluster_group() -> None:
    """A local cluster of `ggap node` processes, for development and tests."""


@cluster_group.command("up")
@click.option(
    "--nodes",
    type=click.IntRange(1, MAX_NODES),
    default=None,
    help="How many voters (required for a new data dir; default: what the data dir holds).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Holds node<i>/ (each node's data), node<i>.log and cluster.json.",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"Node i serves clients on BASE+10*(i-1), peers on one more, metrics on two more "
    f"[default: {DEFAULT_BASE_PORT}].",
)
@click.option("--host", default=None, help=f"Address every node binds [default: {DEFAULT_HOST}].")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file passed to every node (its node.*/raft.peers keys are overridden).",
)
@click.option(
    "--tls/--no-tls",
    "tls",
    default=None,
    help="Secure cluster: generate a throwaway CA and certificates in DATA_DIR/tls and run "
    "every node with TLS + client certificates on the client port and mutual TLS with peers "
    "[default: what the data dir holds, else off].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"], case_sensitive=False),
    default=None,
    help="Every node's log format in DATA_DIR/node<i>.log (ggap node --log-format) "
    "[default: the config's log.format, else text].",
)
@click.option(
    "--peers-only",
    is_flag=True,
    help="Print the --peers string of this layout and exit, starting nothing.",
)
def up_cmd(
    nodes: int | None,
    data_dir: Path,
    base_port: int | None,
    host: str | None,
    config_file: Path | None,
    tls: bool | None,
    log_format: str | None,
    peers_only: bool,
) -> None:
    """Start N nodes on this machine and supervise them until Ctrl-C (or SIGTERM).

    \b
    Node i: client port BASE+10*(i-1), cluster port BASE+10*(i-1)+1, metrics
    (HTTP /metrics, /healthz) BASE+10*(i-1)+2, data in DATA_DIR/node<i>, log in
    DATA_DIR/node<i>.log, all with the same --peers.
    Prints the layout, then a `ready:` line with the --endpoints to use once every
    node answers grpc.health SERVING (i.e. knows a leader). A node that crashes is
    restarted with backoff; one that refuses to start (status 2) stops the cluster.
    Running it again on the same data dir restarts the same cluster.

    Exit status: 0 after Ctrl-C/SIGTERM (every node stopped), 2 for a taken port,
    contradicting flags or a node refusing to start, 1 when a node keeps crashing.
    """
    layout_path = data_dir / LAYOUT_FILE
    saved: Layout | None = None
    if layout_path.exists():
        try:
            saved = Layout.from_json(layout_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            fail("FAILED_PRECONDITION", f"cannot read {layout_path}: {e}", EXIT_USAGE)
    try:
        layout = resolve_layout(saved, nodes, host, base_port, tls)
        specs = plan_cluster(layout.nodes, layout.host, layout.base_port, data_dir)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    peers = peers_string(specs)
    if peers_only:
        click.echo(peers)
        return

    busy = busy_ports(specs)
    if busy:
        fail(
            "FAILED_PRECONDITION",
            "already in use: " + ", ".join(busy) + "; choose another --base-port (with a new --data-dir) "
            "or stop whatever holds them. Nothing was started.",
            EXIT_USAGE,
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if saved is None:
            layout_path.write_text(layout.to_json(), encoding="utf-8")
    except OSError as e:
        fail("FAILED_PRECONDITION", f"cannot use data dir {data_dir}: {e}", EXIT_USAGE)

    certs: ClusterCerts | None = None
    if layout.tls:
        try:
            certs, made = ensure_cluster_certs(data_dir, [s.node_id for s in specs], layout.host)
        except OSError as e:
            fail("FAILED_PRECONDITION", f"cannot write certificates under {data_dir}: {e}", EXIT_USAGE)
        verb = "generated" if made else "reusing"
        click.echo(
            f"TLS: {verb} a throwaway client CA, a separate peer CA and certificates in {certs.directory}"
        )
    fmt = log_format.lower() if log_format else None
    children = [Child(s, node_argv(s, peers, config_file, certs, fmt)) for s in specs]
    supervisor = Supervisor(children, certs=certs)
    run_async(supervisor.run)


CLUSTER_COMMANDS = (cluster_group,)
