"""A real 3-node (or N-node) `ggap node` cluster for fault tests, every peer link proxied.

`Cluster` starts N `NodeProcess`es whose Raft traffic goes through a `LinkTable` (one
fault-injecting proxy per directed link), so tests can partition, isolate or cut one
direction of any link, and also kill -9, SIGSTOP/SIGCONT and restart nodes. Client traffic
(grpcio) goes straight to each node's client port.

Everything started here is stopped by `close()` (use it in a `finally` or a fixture): the
nodes first (SIGCONT for paused ones, SIGTERM, then SIGKILL), then the proxies.

Waiting helpers poll `ClusterService.Status` with short per-call deadlines and take a
generous overall bound; they raise `AssertionError` with what they last saw, so a test that
times out says why.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from ggap.pb import kv_pb2, kv_pb2_grpc
from tests.faultproxy import LinkTable
from tests.procs import NodeProcess, NodeStartError, free_port

T = TypeVar("T")

LIN: kv_pb2.ReadMode = kv_pb2.READ_MODE_LINEARIZABLE
EVENTUAL: kv_pb2.ReadMode = kv_pb2.READ_MODE_EVENTUAL

#: Fast failover for tests: 20 ms ticks -> elections after 200-400 ms of silence.
FAST_RAFT_ENV = {
    "GINNUNGAGAP_RAFT__TICK_MS": "20",
    "GINNUNGAGAP_SERVER__WRITE_ALL_TIMEOUT_MS": "1500",
    "GINNUNGAGAP_LOG__LEVEL": "info",
}

#: Codes meaning "the node could not serve this now" (no leader, no quorum, deadline).
NOT_SERVED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def wait_until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `fn` until it returns something truthy; AssertionError naming `what` after `timeout`.

    Exceptions from `fn` count as "not yet"; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = fn()
        except Exception as exc:  # reported below
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


class Cluster:
    """N nodes with ids 1..N on free 127.0.0.1 ports, peer links through a LinkTable."""

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        *,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
        proxied: bool = True,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.ids = list(range(1, n + 1))
        self.env = dict(FAST_RAFT_ENV if env is None else env)
        cluster_ports = {i: free_port() for i in self.ids}
        direct = ",".join(f"{i}=127.0.0.1:{p}" for i, p in cluster_ports.items())
        self.links: LinkTable | None = (
            LinkTable({i: ("127.0.0.1", p) for i, p in cluster_ports.items()}) if proxied else None
        )
        self.nodes: dict[int, NodeProcess] = {}
        for i in self.ids:
            peers = self.links.peers_arg(i) if self.links is not None else direct
            self.nodes[i] = NodeProcess(
                self.base_dir / f"node{i}",
                node_id=i,
                client_port=free_port(),
                cluster_port=cluster_ports[i],
                extra_args=["--peers", peers, *extra_args],
                env=self.env,
                credentials=credentials,
            )
        self._stubs: dict[int, tuple[kv_pb2_grpc.KvServiceStub, kv_pb2_grpc.ClusterServiceStub]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> Cluster:
        for node in self.nodes.values():
            node.start()
        try:
            for node in self.nodes.values():
                node.wait_ready(timeout)
        except NodeStartError as exc:
            rejected = [i for i, n in self.nodes.items() if "is not this cluster's" in n.log_tail(200)]
            if rejected:
                raise NodeStartError(
                    f"the cluster never formed: nodes {rejected} refused their peers' handshakes for a "
                    "cluster id mismatch. The server derives the cluster id from the whole --peers map "
                    "(ggap/server/node.py cluster_id), and behind per-link fault proxies every node's "
                    f"map differs (its own entry real, the others via proxies).\n{exc}"
                ) from exc
            raise
        return self

    def close(self) -> None:
        errors: list[BaseException] = []
        for node in self.nodes.values():
            try:
                node.close()
            except BaseException as exc:
                errors.append(exc)
        if self.links is not None:
            try:
                self.links.close()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def dump_logs(self, lines: int = 60) -> None:
        for node in self.nodes.values():
            sys.stderr.write(f"--- {node!r}, log {node.log_path}:\n{node.log_tail(lines)}\n")

    def kill(self, i: int) -> None:
        """SIGKILL (a crash), waiting until it is reaped."""
        self.nodes[i].kill()

    def start_node(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        """Start a killed node again on the same ports and data dir."""
        node = self.nodes[i]
        node.start()
        if wait:
            node.wait_ready(timeout)

    def pause(self, i: int) -> None:
        self.nodes[i].pause()

    def resume(self, i: int) -> None:
        self.nodes[i].resume()

    def restore(self, timeout: float = 30.0) -> None:
        """Undo every fault: heal links, resume paused nodes, start dead ones, wait for a leader."""
        if self.links is not None:
            self.links.heal()
        for i, node in self.nodes.items():
            if node.paused:
                node.resume()
            if not node.is_running():
                self.start_node(i, wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout)
        self.wait_leader(timeout=timeout)

    # -- clients ---------------------------------------------------------------------------

    def kv(self, i: int) -> kv_pb2_grpc.KvServiceStub:
        return self.nodes[i].kv_stub()

    def status(self, i: int, timeout: float = 1.0) -> kv_pb2.StatusResponse:
        return self.nodes[i].cluster_stub().Status(kv_pb2.StatusRequest(), timeout=timeout)

    def try_status(self, i: int, timeout: float = 1.0) -> kv_pb2.StatusResponse | None:
        node = self.nodes[i]
        if not node.is_running() or node.paused:
            return None
        try:
            return self.status(i, timeout)
        except grpc.RpcError:
            return None

    def statuses(self, ids: Iterable[int] | None = None, timeout: float = 1.0) -> dict[int, Any]:
        return {i: self.try_status(i, timeout) for i in (self.ids if ids is None else ids)}

    def put(self, i: int, key: str, value: bytes, timeout: float = 5.0, **kw: Any) -> kv_pb2.PutResponse:
        return self.kv(i).Put(kv_pb2.PutRequest(key=key, value=value, **kw), timeout=timeout)

    def get(
        self, i: int, key: str, mode: kv_pb2.ReadMode = LIN, timeout: float = 5.0, **kw: Any
    ) -> kv_pb2.GetResponse:
        return self.kv(i).Get(kv_pb2.GetRequest(key=key, read_mode=mode, **kw), timeout=timeout)

    def put_retry(
        self, key: str, value: bytes, ids: Iterable[int] | None = None, timeout: float = 15.0
    ) -> int:
        """Put through any of `ids` until one succeeds (the retries may write twice: fine for a
        plain put of the same value); returns the revision."""
        order = list(self.ids if ids is None else ids)
        attempt = [0]

        def once() -> int:
            i = order[attempt[0] % len(order)]
            attempt[0] += 1
            return int(self.put(i, key, value, timeout=3.0).header.revision)

        return wait_until(once, timeout, f"put {key!r} through one of {order}", interval=0.1)

    def dump(
        self, i: int, mode: kv_pb2.ReadMode = EVENTUAL, timeout: float = 5.0
    ) -> dict[str, tuple[bytes, int, int]]:
        """Every live key on node i: key -> (value, mod_revision, version)."""
        resp = self.kv(i).Range(kv_pb2.RangeRequest(start="\x00", read_mode=mode), timeout=timeout)
        return {kv.key: (kv.value, kv.mod_revision, kv.version) for kv in resp.kvs}

    # -- waiting ---------------------------------------------------------------------------

    def wait_leader(
        self, ids: Iterable[int] | None = None, timeout: float = 10.0, exclude: Iterable[int] = ()
    ) -> int:
        """Wait until every node of `ids` answers Status naming the same leader (one of `ids`,
        not in `exclude`), that leader says role=leader, and all are in the same term."""
        group = list(self.ids if ids is None else ids)
        banned = set(exclude)

        def agreed() -> int:
            """The leader's id, or 0 while there is no agreement yet."""
            sts = self.statuses(group)
            if any(s is None for s in sts.values()):
                return 0
            leaders = {s.leader_id for s in sts.values()}
            terms = {s.raft_term for s in sts.values()}
            if len(leaders) != 1 or len(terms) != 1:
                return 0
            leader = leaders.pop()
            if leader not in group or leader in banned or sts[leader].role != "leader":
                return 0
            return int(leader)

        return wait_until(agreed, timeout, f"one agreed leader among {group}")

    def wait_converged(
        self, ids: Iterable[int] | None = None, timeout: float = 20.0
    ) -> kv_pb2.StatusResponse:
        """Wait until the nodes of `ids` have the same applied index, commit index and revision."""
        group = list(self.ids if ids is None else ids)
        seen: list[Any] = []

        def same() -> Any:
            sts = self.statuses(group)
            seen[:] = [sts]
            if any(s is None for s in sts.values()):
                return None
            keys = {(s.applied_index, s.revision) for s in sts.values()}
            if len(keys) != 1 or any(s.commit_index < s.applied_index for s in sts.values()):
                return None
            return next(iter(sts.values()))

        try:
            return wait_until(same, timeout, f"nodes {group} to converge")
        except AssertionError as exc:
            rows = {
                i: (s.role, s.raft_term, s.leader_id, s.commit_index, s.applied_index, s.revision)
                if s is not None
                else None
                for i, s in (seen[0] if seen else {}).items()
            }
            raise AssertionError(f"{exc}\n(role, term, leader, commit, applied, revision): {rows}") from None

    def leader(self) -> int:
        return self.wait_leader()


def expect_not_served(call: Callable[[], Any], what: str) -> grpc.StatusCode:
    """`call` must fail with UNAVAILABLE or DEADLINE_EXCEEDED; any answer is a failure."""
    try:
        resp = call()
    except grpc.RpcError as err:
        code = err.code()
        assert code in NOT_SERVED, (
            f"{what}: expected UNAVAILABLE/DEADLINE_EXCEEDED, got {code}: {err.details()}"
        )
        return code
    raise AssertionError(f"{what}: expected no answer (UNAVAILABLE/DEADLINE_EXCEEDED), got {resp!r}")


@contextlib.contextmanager
def logs_on_failure(cluster: Cluster) -> Any:
    try:
        yield
    except BaseException:
        cluster.dump_logs()
        raise


def assert_same_data(
    cluster: Cluster, ids: Iterable[int] | None = None, timeout: float = 20.0
) -> dict[str, Any]:
    """After `wait_converged`, every node of `ids` must hold identical data (eventual Range)."""
    group = list(cluster.ids if ids is None else ids)
    cluster.wait_converged(group, timeout)
    dumps = {i: cluster.dump(i) for i in group}
    first = dumps[group[0]]
    for i in group[1:]:
        if dumps[i] != first:
            diff = sorted(k for k in set(first) | set(dumps[i]) if first.get(k) != dumps[i].get(k))
            raise AssertionError(
                f"node {i} differs from node {group[0]} on {len(diff)} keys, e.g. "
                + "; ".join(f"{k!r}: {first.get(k)!r} vs {dumps[i].get(k)!r}" for k in diff[:5])
            )
    return first
