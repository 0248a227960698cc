"""`ggap cluster up` for real: three nodes come up, serve reads and writes through any node,
show in `ggap status`, survive a killed node (the supervisor restarts it), and all stop on
SIGINT with exit 0; the nodes also stop when the supervisor itself is SIGKILLed (Linux).

Every process is killed by PID in `finally`: the supervisor through its Popen, the nodes
(its children) by the PIDs it printed, after checking the PID still runs a ggap node.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from ggap.cli import cli
from ggap.cli._cluster import busy_ports, plan_cluster
from ggap.pb import kv_pb2, kv_pb2_grpc
from tests.procs import CHANNEL_OPTIONS, REPO_ROOT

pytestmark = pytest.mark.slow

_ROW = re.compile(r"^(\d+)\s+(\d+)\s+\S+:(\d+)\s")


def _free_base(nodes: int) -> int:
    """A base port whose whole layout is free right now (random, so parallel runs differ; below
    the ephemeral range, so outgoing connections cannot grab a port before a node binds it)."""
    for _ in range(200):
        base = random.randrange(20000, 32000, 100)  # below Linux's ephemeral range
        if not busy_ports(plan_cluster(nodes, "127.0.0.1", base, Path("unused"))):
            return base
    raise RuntimeError("no free port range found")


def _node_alive(pid: int) -> bool:
    """The PID runs a (non-zombie) ggap process; a recycled PID running something else is not ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X") and b"ggap" in cmdline


def _kill_nodes(pids: set[int]) -> None:
    for pid in pids:
        if _node_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if _node_alive(p)}
        if not alive:
            return alive
        time.sleep(0.05)
    return {p for p in pids if _node_alive(p)}


class ClusterUp:
    """`ggap cluster up` as a subprocess whose stdout is read line by line by a thread."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ggap.cli", "cluster", "up", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.node_pids: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The next output line matching `pattern` (PIDs in table rows and restart lines are
        collected on the way)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                why = f"no line matching {pattern!r} in {timeout}s"
                raise AssertionError(f"{why}:\n{self.transcript}") from None
            if line is None:
                why = f"cluster up exited ({self.proc.poll()}) before {pattern!r}"
                raise AssertionError(f"{why}:\n{self.transcript}")
            self.lines.append(line)
            row = _ROW.match(line)
            if row:
                self.node_pids.add(int(row.group(2)))
            restarted = re.search(r"restarted \(pid (\d+)\)", line)
            if restarted:
                self.node_pids.add(int(restarted.group(1)))
            match = re.search(pattern, line)
            if match:
                return match

    @property
    def transcript(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        """SIGKILL whatever is still running: the supervisor, then its nodes by PID."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _kill_nodes(self.node_pids)


def _status(endpoints: str, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", "--endpoints", endpoints, "--timeout", "3", *extra])
    return result.exit_code, result.stdout


def test_cluster_up_three_nodes(tmp_path: Path) -> None:
    base = _free_base(3)
    up = ClusterUp("--nodes", "3", "--data-dir", str(tmp_path / "data"), "--base-port", str(base))
    try:
        endpoints = up.expect(r"^ready: 3 nodes SERVING .* --endpoints (\S+)").group(1)
        eps = endpoints.split(",")
        assert eps == [f"127.0.0.1:{base + 10 * i}" for i in range(3)]
        assert len(up.node_pids) == 3
        pid_of = {int(m.group(1)): int(m.group(2)) for m in map(_ROW.match, up.lines) if m}

        # Write through node 2, read (linearizable) through node 3.
        with grpc.insecure_channel(eps[1], options=CHANNEL_OPTIONS) as ch2:
            put = kv_pb2_grpc.KvServiceStub(ch2).Put(kv_pb2.PutRequest(key="k", value=b"v"), timeout=10)
        with grpc.insecure_channel(eps[2], options=CHANNEL_OPTIONS) as ch3:
            got = kv_pb2_grpc.KvServiceStub(ch3).Get(kv_pb2.GetRequest(key="k"), timeout=10)
        assert got.found and got.kv.value == b"v" and got.kv.mod_revision == put.header.revision

        code, text = _status(endpoints, "-o", "json")
        docs = [json.loads(line) for line in text.splitlines()]
        assert code == 0 and [d["endpoint"] for d in docs] == eps
        leaders = [d for d in docs if d["role"] == "leader"]
        assert len(leaders) == 1
        assert {d["leader_id"] for d in docs} == {leaders[0]["member_id"]}
        assert all(isinstance(d["lag"], int) and d["lag"] >= 0 for d in docs)
        code, text = _status(endpoints)
        header, *rows = text.split("\n\n")[0].splitlines()  # the leader's progress table follows
        assert code == 0 and "LAG" in header.split() and len(rows) == 3
        assert [r.split()[2] for r in rows].count("leader") == 1

        # A crashed node is restarted by the supervisor and serves again.
        os.kill(pid_of[3], signal.SIGKILL)
        up.expect(r"^node 3 is SERVING again", timeout=15)
        assert len(up.node_pids) == 4

        up.proc.send_signal(signal.SIGINT)
        assert up.proc.wait(timeout=15) == 0, up.transcript
        up.expect(r"^all nodes stopped", timeout=1)
        assert not _wait_gone(up.node_pids, 1.0)
    finally:
        up.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_nodes_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    base = _free_base(1)
    up = ClusterUp("--nodes", "1", "--data-dir", str(tmp_path / "data"), "--base-port", str(base))
    try:
        up.expect(r"^ready: 1 node SERVING")
        (pid,) = up.node_pids
        up.proc.kill()
        up.proc.wait()
        assert not _wait_gone({pid}, 10.0), "the node outlived its SIGKILLed supervisor"
    finally:
        up.close()
