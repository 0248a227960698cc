"""The `ggap` CLI through click's CliRunner: parsing, exit codes, config errors, and every
client command against the fake purerpc server from test_client.py.

The CLI calls trio.run itself, so against the fake server (served by the test's own trio
loop) it runs in a worker thread.
"""

from __future__ import annotations

import base64
import functools
import json
import signal
import sys
import types
from pathlib import Path
from typing import Any

import click
import pytest
import trio
import trio.lowlevel
from click.testing import CliRunner, Result

import ggap
from ggap.cli import cli
from ggap.cli._common import DurationMs, run_async
from ggap.cli._output import flatten, render_table, show_bytes, show_expiry
from ggap.config import Config
from ggap.pb import kv_pb2
from tests.unit.test_client import HANG_KEY, FakeKv, refused_endpoint, start_fake_server


def run(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), input=input, env=env)
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), result.exception
    return result


async def arun(*args: str, input: str | bytes | None = None, env: dict[str, str] | None = None) -> Result:
    with trio.fail_after(20):
        return await trio.to_thread.run_sync(functools.partial(run, *args, input=input, env=env))


@pytest.fixture
async def server(nursery: trio.Nursery) -> tuple[str, FakeKv]:
    return await start_fake_server(nursery)


# --- parsing and usage errors (no server needed) ----------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and ggap.__version__ in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["put", "k"],  # neither VALUE nor --value-file
        ["put", "k", "v", "--value-file", "-"],
        ["put", "k", "v", "--ttl", "10x"],
        ["put", "k", "v", "--ttl", "0"],
        ["put", "k", "v", "--quorum", "some"],
        ["get"],
        ["get", "k", "--mode", "strong"],
        ["get", "k", "--revision", "-1"],
        ["get", "k", "--endpoints", "no-port"],
        ["get", "k", "--timeout", "0"],
        ["get", "k", "-o", "yaml"],
        ["range", "a", "--prefix", "p"],
        ["range", "--limit", "-1"],
        ["watch"],
        ["watch", "k", "--prefix", "p"],
        ["watch", "--prefix", ""],
        ["watch", "k", "--count", "0"],
        ["compact"],
        ["compact", "x"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Error:" in result.stderr


def test_txn_input_errors_exit_2() -> None:
    result = run("txn", input="{not json")
    assert result.exit_code == 2 and "not a TxnRequest" in result.stderr
    result = run("txn", input='{"success": [{"nope": {}}]}')
    assert result.exit_code == 2 and "not a TxnRequest" in result.stderr
    result = run("txn", input="  \n")
    assert result.exit_code == 2 and "empty input" in result.stderr


def test_txn_help_documents_the_format() -> None:
    result = run("txn", "--help")
    assert result.exit_code == 0
    assert '"compare": [{"key": "k", "target": "COMPARE_TARGET_VALUE",' in result.stdout


def test_connection_refused_exits_1() -> None:
    endpoint = refused_endpoint()
    result = run("get", "k", "--endpoints", endpoint, "--timeout", "2")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: UNAVAILABLE: cannot connect: ")
    assert endpoint in result.stderr and "refused" in result.stderr


def test_client_options_may_come_before_the_command() -> None:
    """`ggap --endpoints X get k` as etcdctl users type it; after the command wins, and a
    value before the command beats the environment."""
    before, after = refused_endpoint(), refused_endpoint()
    result = run("--endpoints", before, "--timeout", "2", "get", "k")
    assert result.exit_code == 1 and before in result.stderr
    result = run("--endpoints", before, "get", "k", "--endpoints", after, "--timeout", "2")
    assert result.exit_code == 1 and after in result.stderr and before not in result.stderr
    result = run("--endpoints", before, "members", "list", "--timeout", "2", env={"GGAP_ENDPOINTS": after})
    assert result.exit_code == 1 and before in result.stderr and after not in result.stderr
    result = run("--endpoints", "nonsense", "get", "k")
    assert result.exit_code == 2


def test_duration_parsing() -> None:
    d = DurationMs()
    assert [d.convert(v, None, None) for v in ("500", "500ms", "10s", "1.5s", "5m", "1h", " 2 s ")] == [
        500,
        500,
        10_000,
        1_500,
        300_000,
        3_600_000,
        2_000,
    ]


# --- node and config ------------------------------------------------------------------------


@pytest.fixture
def fake_server_module(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Stand-in for ggap.server (imported lazily by `ggap node`); records what it was given."""
    calls: list[Config] = []
    module = types.ModuleType("ggap.server")
    module.run_node = calls.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ggap.server", module)
    return calls


def test_node_layers_file_env_and_flags(tmp_path: Path, fake_server_module: list[Config]) -> None:
    conf = tmp_path / "n.toml"
    conf.write_text('[node]\nid = 2\ndata_dir = "/file"\n[mvcc]\nhistory_depth = 8\n[ttl]\nmax_ttl_ms = 9\n')
    env = {"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "9", "GINNUNGAGAP_TTL__MAX_TTL_MS": "60000"}
    args = ["node", "--config", str(conf), "--node-id", "3", "--client-addr", "127.0.0.1:0"]
    result = run(*args, "--history-depth", "10", "--log-level", "WARNING", env=env)
    assert result.exit_code == 0, result.output
    (cfg,) = fake_server_module
    assert cfg.node.id == 3 and cfg.node.client_addr == "127.0.0.1:0" and cfg.node.data_dir == "/file"
    assert cfg.mvcc.history_depth == 10 and cfg.ttl.max_ttl_ms == 60000 and cfg.log.level == "warning"


def test_node_config_errors_exit_2(tmp_path: Path, fake_server_module: list[Config]) -> None:
    result = run("node", "--history-depth", "0", "--cluster-addr", "nohost")
    assert result.exit_code == 2
    assert "mvcc.history_depth: must be >= 1, got 0 (from command line)" in result.stderr
    assert "node.cluster_addr: expected host:port, got 'nohost' (from command line)" in result.stderr

    result = run("node", env={"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "abc"})
    assert result.exit_code == 2
    expected = "mvcc.history_depth: expected int, got 'abc' (from env GINNUNGAGAP_MVCC__HISTORY_DEPTH)"
    assert expected in result.stderr

    result = run("node", env={"GINNUNGAGAP_TRANSPORT__SEND_TIMEOUT_MS": "0"})
    assert result.exit_code == 2
    expected = (
        "transport.send_timeout_ms: must be >= 1, got 0 (from env GINNUNGAGAP_TRANSPORT__SEND_TIMEOUT_MS)"
    )
    assert expected in result.stderr

    conf = tmp_path / "bad.toml"
    conf.write_text("[mvcc]\nbogus = 1\n")
    result = run("node", "--config", str(conf))
    assert result.exit_code == 2 and f"mvcc.bogus: unknown config key (from {conf})" in result.stderr

    result = run("node", "--config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2
    assert fake_server_module == []


def test_node_without_server_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ggap.server", types.ModuleType("ggap.server"))
    result = run("node")
    assert result.exit_code == 1 and result.stderr.startswith("Error: UNIMPLEMENTED: ")


# --- inspect --------------------------------------------------------------------------------


def test_inspect_table_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Path] = []

    def inspect_data_dir(path: Path) -> dict[str, Any]:
        seen.append(path)
        return {"kv": {"revision": 7, "keys": 2}, "raft": {"last_index": 9, "members": [1, 2]}}

    module = types.ModuleType("ggap.storage.inspect")
    module.inspect_data_dir = inspect_data_dir  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ggap.storage.inspect", module)

    result = run("inspect", str(tmp_path))
    assert result.exit_code == 0 and seen == [tmp_path]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["FIELD", "VALUE"]
    assert lines[1].split() == ["kv.revision", "7"]
    assert lines[-1].split() == ["raft.members[1]", "2"]
    result = run("inspect", str(tmp_path), "-o", "json")
    assert json.loads(result.stdout)["raft"]["last_index"] == 9
    assert run("inspect", str(tmp_path / "absent")).exit_code == 2


# --- formatting -----------------------------------------------------------------------------


def test_render_table_aligns_columns() -> None:
    assert render_table(("A", "LONGER"), [["xyz", "1"], ["", "22"]]) == "A    LONGER\nxyz  1\n     22"


def test_show_bytes() -> None:
    assert show_bytes(b"hello") == "hello"
    assert show_bytes("ünï".encode()) == "ünï"
    assert show_bytes(b"a\nb") == '"a\\nb"'
    assert show_bytes(b"\xff\x00") == "0xff00"
    assert show_bytes(b"abcdef", limit=4) == "abc…"
    assert show_expiry(0) == "-"
    assert show_expiry(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": []}, "d": [{"e": None}], "f": b"x"}) == [
        ("a.b", "1"),
        ("a.c", "[]"),
        ("d[0].e", "-"),
        ("f", "x"),
    ]


# --- client commands against the fake server ------------------------------------------------


async def test_put_get_table_and_json(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    ep = ["--endpoints", endpoint]
    result = await arun("put", "greeting", "héllo", "--ttl", "10s", "--quorum", "all", *ep)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "OK (revision 1)"
    assert fake.requests[-1].ttl_ms == 10_000 and fake.requests[-1].quorum == kv_pb2.WRITE_QUORUM_ALL
    # A write goes in a session (a retry across endpoints is applied once), closed on exit.
    assert fake.sessions_opened == 1 and fake.sessions_closed == [1]

    result = await arun("get", "greeting", "--mode", "sequential", "--min-revision", "1", *ep)
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION", "EXPIRES"]
    assert row.split()[:5] == ["greeting", "héllo", "1", "1", "1"]
    assert fake.requests[-1].read_mode == kv_pb2.READ_MODE_SEQUENTIAL and fake.requests[-1].min_revision == 1

    result = await arun("get", "greeting", "-o", "json", *ep)
    doc = json.loads(result.stdout)
    assert doc["found"] is True and doc["kv"]["key"] == "greeting"
    assert base64.b64decode(doc["kv"]["value"]) == "héllo".encode()
    assert doc["header"]["revision"] == "1"  # proto JSON: uint64 as a string


async def test_put_value_from_stdin_is_bytes(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    result = await arun(
        "put", "bin", "--value-file", "-", "--prev-kv", "--endpoints", endpoint, input=b"\x00\xff"
    )
    assert result.exit_code == 0, result.output
    assert fake.versions["bin"][-1].value == b"\x00\xff"
    result = await arun("get", "bin", "--endpoints", endpoint)
    assert "0x00ff" in result.stdout


async def test_get_missing_key_exits_1(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    result = await arun("get", "absent", "--endpoints", endpoint)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == "Error: NOT_FOUND: key not found: absent"
    result = await arun("get", "absent", "-o", "json", "--endpoints", endpoint)
    assert result.exit_code == 1 and json.loads(result.stdout)["found"] is False


async def test_server_errors_map_to_exit_codes(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    ep = ["--endpoints", endpoint]
    result = await arun("put", "", "v", *ep)
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: INVALID_ARGUMENT: key must not be empty (100% sure)"
    result = await arun("get", "k", "--revision", "99", *ep)
    assert result.exit_code == 2 and result.stderr.startswith("Error: OUT_OF_RANGE: revision 99")
    result = await arun("compact", "99", *ep)
    assert result.exit_code == 2 and "OUT_OF_RANGE" in result.stderr
    result = await arun("get", HANG_KEY, "--timeout", "0.3", *ep)
    assert result.exit_code == 1 and result.stderr.startswith("Error: DEADLINE_EXCEEDED: ")


async def test_endpoints_from_env_and_fallback(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    env = {"GGAP_ENDPOINTS": f"{refused_endpoint()},{endpoint}"}
    assert (await arun("put", "a", "1", env=env)).exit_code == 0
    assert (await arun("get", "a", env=env)).exit_code == 0


async def test_del_range_history(server: tuple[str, FakeKv]) -> None:
    endpoint, _ = server
    ep = ["--endpoints", endpoint]
    for key, value in (("a/1", "x"), ("a/2", "y"), ("a/1", "z"), ("b", "w")):
        assert (await arun("put", key, value, *ep)).exit_code == 0

    result = await arun("range", "--prefix", "a/", *ep)
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:3]] == [["a/1", "z"], ["a/2", "y"]]
    assert lines[-1] == "2 of 2 keys (revision 4)"

    result = await arun("range", "a/2", "--keys-only", "--limit", "1", *ep)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["KEY", "CREATE_REV"] and lines[1].split()[0] == "a/2"
    assert lines[-1] == "1 of 2 keys (limit reached, more exist) (revision 4)"

    result = await arun("range", "a/1", "b", "-o", "json", *ep)
    assert [kv["key"] for kv in json.loads(result.stdout)["kvs"]] == ["a/1", "a/2"]

    result = await arun("del", "a/1", "--prev-kv", *ep)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "1 deleted (revision 5)" and "z" in result.stdout
    result = await arun("del", "a/1", *ep)
    assert result.exit_code == 0 and result.stdout.strip() == "0 deleted (revision 5)"

    result = await arun("history", "a/1", *ep)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows[0][:4] == ["MOD_REV", "VERSION", "CREATE_REV", "DELETED"]
    assert [r[0] for r in rows[1:4]] == ["5", "3", "1"]
    assert rows[1][3] == "yes" and rows[2][-1] == "z"
    result = await arun("history", "a/1", "--limit", "1", "-o", "json", *ep)
    assert len(json.loads(result.stdout)["versions"]) == 1


async def test_watch_count_and_json(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    fake.watch_ends = False  # only --count can end these watches
    ep = ["--endpoints", endpoint]
    for i in range(3):
        await arun("put", f"w/{i}", f"v{i}", *ep)
    result = await arun("watch", "--prefix", "w/", "--start-revision", "1", "--count", "2", *ep)
    assert result.exit_code == 0, result.output
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["PUT", "rev=1", "w/0", "v0"],
        ["PUT", "rev=2", "w/1", "v1"],
    ]
    result = await arun("watch", "w/2", "--start-revision", "1", "--count", "1", "-o", "json", *ep)
    event = json.loads(result.stdout)
    assert event["type"] == "EVENT_TYPE_PUT" and event["kv"]["key"] == "w/2"


async def test_txn_from_stdin_and_file(server: tuple[str, FakeKv], tmp_path: Path) -> None:
    endpoint, _ = server
    ep = ["--endpoints", endpoint]
    await arun("put", "k", "v1", *ep)
    doc = {
        "compare": [
            {"key": "k", "target": "COMPARE_TARGET_VALUE", "op": "COMPARE_OP_EQUAL", "value": "djE="}
        ],
        "success": [{"put": {"key": "k", "value": "djI="}}],
        "failure": [{"get": {"key": "k"}}],
    }
    result = await arun("txn", *ep, input=json.dumps(doc))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["SUCCEEDED (revision 2)", "[0] put: OK"]
    path = tmp_path / "txn.json"
    path.write_text(json.dumps(doc))
    result = await arun("txn", "--file", str(path), "-o", "json", *ep)
    out = json.loads(result.stdout)
    assert out["succeeded"] is False
    assert base64.b64decode(out["responses"][0]["get"]["kv"]["value"]) == b"v2"


async def test_compact_and_status(server: tuple[str, FakeKv]) -> None:
    endpoint, fake = server
    ep = ["--endpoints", endpoint]
    await arun("put", "k", "v", *ep)
    result = await arun("compact", "1", *ep)
    assert result.exit_code == 0 and fake.compact_rev == 1
    assert result.stdout.strip() == "compacted below revision 1 (store revision 1)"

    dead = refused_endpoint()
    result = await arun("status", "--endpoints", f"{endpoint},{dead}", "--timeout", "2")
    assert result.exit_code == 1
    header, row, dead_row = result.stdout.splitlines()
    assert header.split()[:3] == ["ENDPOINT", "ID", "ROLE"] and header.split()[-1] == "ERROR"
    sizes = ["8.0", "KiB", "0", "B"]  # DB_SIZE, DB_IN_USE
    assert row.split() == [endpoint, "1", "leader", "3", "1", "2", "2", "0", "1", "1", *sizes, "0.1.0"]
    assert dead_row.split()[:3] == [dead, "-", "-"] and "UNAVAILABLE: " in dead_row
    assert result.stderr.startswith(f"Error: UNAVAILABLE: {dead}: ")

    result = await arun("status", "-o", "json", *ep)
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["endpoint"] == endpoint and doc["role"] == "leader"
    assert doc["lag"] == 0


# --- interrupts and unexpected errors -------------------------------------------------------


def test_runner_exit_codes_for_interrupts_and_bugs() -> None:
    async def interrupted() -> None:
        raise KeyboardInterrupt

    async def buggy() -> None:
        raise ZeroDivisionError("oops")

    with pytest.raises(click.exceptions.Exit) as info:
        run_async(interrupted)
    assert info.value.exit_code == 130
    with pytest.raises(click.exceptions.Exit) as info:
        run_async(interrupted, interrupt_exit=0)
    assert info.value.exit_code == 0
    with pytest.raises(click.exceptions.Exit) as info:
        run_async(buggy)
    assert info.value.exit_code == 1


async def test_watch_ctrl_c_exits_cleanly(server: tuple[str, FakeKv], tmp_path: Path) -> None:
    """A real process and a real SIGINT: exit 0, no traceback."""
    endpoint, fake = server
    fake.watch_ends = False
    stdout, stderr = tmp_path / "out", tmp_path / "err"
    cmd = [sys.executable, "-m", "ggap.cli", "watch", "k", "--endpoints", endpoint]
    with stdout.open("wb") as out_f, stderr.open("wb") as err_f:
        proc = await trio.lowlevel.open_process(cmd, stdout=out_f, stderr=err_f)
    try:
        with trio.fail_after(20):
            await fake.watch_started.wait()
            proc.send_signal(signal.SIGINT)
            assert await proc.wait() == 0
    finally:
        proc.kill()
    assert stderr.read_text() == ""
