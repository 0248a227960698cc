"""`ggap cluster up` without real nodes: the port/peers layout, the layout file, the refusal
paths of the command, the supervisor's policy with stand-in child processes, and the
`ggap status` table/LAG computation."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from ggap.cli import _cluster, cli
from ggap.cli import _output as out
from ggap.cli._cluster import (
    Child,
    Layout,
    NodeSpec,
    Supervisor,
    busy_ports,
    check_serving,
    describe_exit,
    endpoints_string,
    format_layout,
    node_argv,
    peers_string,
    plan_cluster,
    resolve_layout,
    restart_delay,
)
from ggap.config.peers import parse_peers
from ggap.pb import kv_pb2
from tests.procs import free_port

# --- layout ----------------------------------------------------------------------------------


def test_plan_cluster_port_layout(tmp_path: Path) -> None:
    specs = plan_cluster(3, "127.0.0.1", 17000, tmp_path)
    assert [(s.node_id, s.client_port, s.cluster_port) for s in specs] == [
        (1, 17000, 17001),
        (2, 17010, 17011),
        (3, 17020, 17021),
    ]
    assert [s.data_dir for s in specs] == [tmp_path / f"node{i}" for i in (1, 2, 3)]
    assert [s.log_path for s in specs] == [tmp_path / f"node{i}.log" for i in (1, 2, 3)]
    assert peers_string(specs) == "1=127.0.0.1:17001,2=127.0.0.1:17011,3=127.0.0.1:17021"
    assert endpoints_string(specs) == "127.0.0.1:17000,127.0.0.1:17010,127.0.0.1:17020"
    # What the node parses back is exactly every node's cluster address.
    assert parse_peers(peers_string(specs)) == {s.node_id: s.cluster_addr for s in specs}


def test_plan_cluster_ipv6_and_limits(tmp_path: Path) -> None:
    (spec,) = plan_cluster(1, "::1", 30000, tmp_path)
    assert spec.client_addr == "[::1]:30000" and spec.cluster_addr == "[::1]:30001"
    assert spec.metrics_addr == "[::1]:30002"
    assert plan_cluster(2, "h", 65523, tmp_path)[-1].metrics_port == 65535
    with pytest.raises(ValueError, match="do not fit"):
        plan_cluster(2, "h", 65524, tmp_path)
    with pytest.raises(ValueError, match="--nodes"):
        plan_cluster(0, "h", 17000, tmp_path)


def test_node_argv(tmp_path: Path) -> None:
    (spec,) = plan_cluster(1, "127.0.0.1", 17000, Path("rel"))
    argv = node_argv(spec, "1=127.0.0.1:17001", tmp_path / "c.toml")
    assert argv[:4] == [sys.executable, "-m", "ggap.cli", "node"]
    opts = dict(zip(argv[4::2], argv[5::2], strict=True))
    assert opts == {
        "--node-id": "1",
        "--client-addr": "127.0.0.1:17000",
        "--cluster-addr": "127.0.0.1:17001",
        "--data-dir": str(Path("rel/node1").absolute()),
        "--peers": "1=127.0.0.1:17001",
        "--metrics-addr": "127.0.0.1:17002",
        "--config": str(tmp_path / "c.toml"),
    }
    assert "--config" not in node_argv(spec, "x", None)
    assert "--log-format" not in node_argv(spec, "x", None)
    assert node_argv(spec, "x", None, log_format="json")[-2:] == ["--log-format", "json"]


def test_layout_file_round_trip_and_resolution() -> None:
    saved = Layout(nodes=3, host="127.0.0.1", base_port=18000)
    assert Layout.from_json(saved.to_json()) == saved
    with pytest.raises(ValueError):
        Layout.from_json('{"nodes": "3"}')
    # A new data dir: --nodes needed, defaults for the rest.
    with pytest.raises(ValueError, match="--nodes is required"):
        resolve_layout(None, None, None, None)
    assert resolve_layout(None, 5, None, None) == Layout(5, "127.0.0.1", 17000)
    # An existing one: omitted flags come from it, equal ones are fine, others are refused.
    assert resolve_layout(saved, None, None, None) == saved
    assert resolve_layout(saved, 3, "127.0.0.1", 18000) == saved
    with pytest.raises(ValueError, match=r"--base-port 17000 \(it was created with 18000\)"):
        resolve_layout(saved, 3, None, 17000)
    with pytest.raises(ValueError, match="--nodes 5"):
        resolve_layout(saved, 5, None, None)


def test_restart_backoff_and_exit_descriptions() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


def test_format_layout(tmp_path: Path) -> None:
    specs = plan_cluster(2, "127.0.0.1", 17000, Path("data"))
    lines = format_layout(specs, [101, None]).splitlines()
    assert lines[0].split()[:2] == ["NODE", "PID"]
    row = [
        "1", "101", "127.0.0.1:17000", "127.0.0.1:17001", "http://127.0.0.1:17002/metrics",
        "data/node1", "data/node1.log",
    ]  # fmt: skip
    assert lines[1].split() == row
    assert lines[2].split()[:2] == ["2", "-"]


# --- the command's refusals (nothing may be started) ---------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A listening socket on 127.0.0.1 for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli, ["cluster", "up", *args])
    assert "Traceback" not in result.output
    return result


def test_port_in_use_exits_2_and_starts_nothing(tmp_path: Path, held_port: int) -> None:
    # The held port is node 2's cluster port.
    base = held_port - 11
    data = tmp_path / "data"
    busy = busy_ports(plan_cluster(3, "127.0.0.1", base, data))
    assert f"127.0.0.1:{held_port} (node 2 cluster port)" in busy
    result = _invoke("--nodes", "3", "--base-port", str(base), "--data-dir", str(data))
    assert result.exit_code == 2
    assert f"127.0.0.1:{held_port} (node 2 cluster port)" in result.stderr
    assert "Nothing was started" in result.stderr
    assert not data.exists()  # no layout file, no logs: no node was launched


def test_peers_only_and_usage_errors(tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = _invoke("--nodes", "2", "--base-port", "20000", "--data-dir", str(data), "--peers-only")
    assert result.exit_code == 0
    assert result.stdout.strip() == "1=127.0.0.1:20001,2=127.0.0.1:20011"
    assert not data.exists()

    assert _invoke("--data-dir", str(data)).exit_code == 2  # new data dir without --nodes
    data.mkdir()
    (data / "cluster.json").write_text(Layout(3, "127.0.0.1", 20000).to_json())
    result = _invoke("--data-dir", str(data), "--peers-only")
    assert result.stdout.strip() == "1=127.0.0.1:20001,2=127.0.0.1:20011,3=127.0.0.1:20021"
    result = _invoke("--data-dir", str(data), "--nodes", "5")
    assert result.exit_code == 2 and "another layout" in result.stderr
    (data / "cluster.json").write_text("{not json")
    assert _invoke("--data-dir", str(data)).exit_code == 2


# --- the supervisor, with stand-in children --------------------------------------------------


def _stand_in(tmp_path: Path, node_id: int, code: str) -> Child:
    """A child running `code` instead of a node, on free ports nobody listens on."""
    spec = NodeSpec(
        node_id=node_id,
        host="127.0.0.1",
        client_port=free_port(),
        cluster_port=free_port(),
        data_dir=tmp_path / f"node{node_id}",
        log_path=tmp_path / f"node{node_id}.log",
    )
    return Child(spec, [sys.executable, "-c", code])


_SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


class Echo:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, message: str, err: bool = False) -> None:
        self.lines.append(message)

    def text(self) -> str:
        return "\n".join(self.lines)


def _launches(child: Child) -> int:
    return child.spec.log_path.read_text().count("=== ggap cluster up:")


async def test_supervisor_stops_everything_when_a_node_refuses_to_start(tmp_path: Path) -> None:
    sleeper = _stand_in(tmp_path, 1, _SLEEPER)
    refuser = _stand_in(tmp_path, 2, "import sys; print('cannot start: bad'); sys.exit(2)")
    echo = Echo()
    with trio.fail_after(10):
        rc = await Supervisor([sleeper, refuser], echo=echo).run()
    assert rc == 2
    assert sleeper.proc is not None and sleeper.proc.returncode == -signal.SIGTERM
    assert "node 2" in echo.text() and "cannot start: bad" in echo.text()  # its log tail
    assert _launches(refuser) == 1  # never restarted


async def test_supervisor_restarts_a_crashing_node_then_gives_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_cluster, "restart_delay", lambda n: 0.01)
    monkeypatch.setattr(_cluster, "MAX_QUICK_RESTARTS", 2)
    sleeper = _stand_in(tmp_path, 1, _SLEEPER)
    crasher = _stand_in(tmp_path, 2, "import sys; sys.exit(1)")
    echo = Echo()
    with trio.fail_after(10):
        rc = await Supervisor([sleeper, crasher], echo=echo).run()
    assert rc == 1
    assert _launches(crasher) == 3  # the first launch and two restarts
    assert "restarting node 2" in echo.text() and "keeps dying" in echo.text()
    assert not sleeper.alive() and not crasher.alive()


async def test_supervisor_stops_children_on_sigterm_and_returns_0(tmp_path: Path) -> None:
    children = [_stand_in(tmp_path, i, _SLEEPER) for i in (1, 2)]
    echo = Echo()
    supervisor = Supervisor(children, echo=echo)
    rc: list[int] = []

    async def run() -> None:
        rc.append(await supervisor.run())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            while not all(c.alive() for c in children):
                await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the supervisor's receiver
    assert rc == [0]
    for child in children:
        assert child.proc is not None and child.proc.returncode == -signal.SIGTERM
    assert "received SIGTERM" in echo.text() and "all nodes stopped" in echo.text()
    assert not any("ready:" in line for line in echo.lines)  # nothing answered health


async def test_check_serving_unreachable() -> None:
    ok, seen = await check_serving(f"127.0.0.1:{free_port()}", timeout_s=1)
    assert not ok and seen.startswith("UNAVAILABLE")


# --- ggap status: LAG and the table --------------------------------------------------------


def _st(member: int, role: str, commit: int, applied: int) -> kv_pb2.StatusResponse:
    return kv_pb2.StatusResponse(
        member_id=member,
        leader_id=1,
        raft_term=4,
        role=role,
        commit_index=commit,
        applied_index=applied,
        revision=applied,
        db_size_bytes=2048,
        db_size_in_use_bytes=1536,
        version="0.1.0",
    )


def test_status_lag_is_against_the_highest_commit_seen() -> None:
    results: list[out.StatusResult] = [
        ("a:1", _st(1, "leader", 10, 10)),
        ("b:2", _st(2, "follower", 8, 7)),
        ("c:3", "UNAVAILABLE: cannot connect"),
    ]
    assert out.status_lags(results) == [0, 3, None]
    assert out.status_lags([]) == []
    assert out.status_lags([("x:1", "DEADLINE_EXCEEDED: slow")]) == [None]


def test_status_table_rows_and_error_column() -> None:
    ok_only = out.format_status([("a:1", _st(1, "leader", 5, 4))]).splitlines()
    assert ok_only[0].split() == list(out.STATUS_HEADERS)
    cells = ["a:1", "1", "leader", "4", "1", "5", "4", "1", "4", "0", "2.0", "KiB", "1.5", "KiB", "0.1.0"]
    assert ok_only[1].split() == cells  # ... COMMIT 5, APPLIED 4, LAG 1, REVISION 4 ...

    lines = out.format_status(
        [("a:1", _st(1, "leader", 5, 5)), ("b:2", "UNAVAILABLE: cannot connect")]
    ).splitlines()
    assert len(lines) == 3 and lines[0].split()[-1] == "ERROR"
    assert lines[1].split()[:3] == ["a:1", "1", "leader"]
    assert lines[2].split() == ["b:2", *["-"] * 12, "UNAVAILABLE:", "cannot", "connect"]


def test_status_json_carries_lag_and_errors() -> None:
    docs = [
        json.loads(line)
        for line in out.status_json_lines([("a:1", _st(1, "leader", 9, 6)), ("b:2", "UNAVAILABLE: down")])
    ]
    assert docs[0]["endpoint"] == "a:1" and docs[0]["lag"] == 3 and docs[0]["role"] == "leader"
    assert docs[1] == {"endpoint": "b:2", "error": "UNAVAILABLE: down"}
