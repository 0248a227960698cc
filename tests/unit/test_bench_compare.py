"""The pure parts of bench.compare, bench.watchload and the per-system load clients."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest

from bench.compare import (
    CELL_IDS,
    CELLS,
    Settings,
    cell_config,
    cell_rows,
    delivered_fraction,
    etcd_initial_cluster,
    etcd_member_argv,
    format_compare_table,
    format_watch_table,
    result_dir_name,
    select_cells,
)
from bench.config import BenchConfig
from bench.load import EtcdClient, GgapClient, make_client, stamp_value, value_stamp
from bench.watchload import lag_ns, nearest_rank, window_stats

SETTINGS = Settings(
    rounds=2, duration=1.0, warmup=0.1, keys=100, value_size=64, processes=2, watchers=5, timeout=1, seed=1
)


def _run(cell: str, rnd: int, system: str, ops: float, cpu: float, watch: dict | None = None) -> dict:
    rec = {
        "cell": cell,
        "round": rnd,
        "side": {"etcd": "A", "ggap": "B"}[system],
        "system": system,
        "ops_per_s": ops,
        "p50_ms": 1000 / ops,
        "p99_ms": 3000 / ops,
        "cpu_us_per_op": cpu,
        "server_cores": 1.0,
        "count": int(ops),
        "errors": 0,
    }
    if watch is not None:
        rec["watch"] = watch
    return rec


def test_initial_cluster_and_member_argv() -> None:
    cluster = etcd_initial_cluster({"m1": 2380, "m2": 2390})
    assert cluster == "m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2390"
    argv = etcd_member_argv("/usr/bin/etcd", "m2", Path("/tmp/d2"), 2389, 2390, cluster, "tok")
    assert argv[0] == "/usr/bin/etcd"
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert opts["--name"] == "m2"
    assert opts["--data-dir"] == "/tmp/d2"
    assert opts["--listen-client-urls"] == opts["--advertise-client-urls"] == "http://127.0.0.1:2389"
    assert opts["--listen-peer-urls"] == opts["--initial-advertise-peer-urls"] == "http://127.0.0.1:2390"
    assert opts["--initial-cluster"] == cluster
    assert opts["--initial-cluster-state"] == "new"
    assert opts["--initial-cluster-token"] == "tok"
    # Durability left at etcd's defaults (no unsafe-no-fsync and the like).
    assert not any("fsync" in a for a in argv)


def test_select_cells() -> None:
    assert select_cells(None) == list(CELLS)
    assert [c.id for c in select_cells("1n-put64, put1")] == ["put1", "1n-put64"]
    with pytest.raises(ValueError, match="nope"):
        select_cells("put1,nope")
    assert len(set(CELL_IDS)) == len(CELLS)


def test_cell_config_per_system() -> None:
    cells = {c.id: c for c in CELLS}
    cfg = cell_config(SETTINGS, cells["range16"], "etcd", ["127.0.0.1:1"])
    assert (cfg.system, cfg.clients, cfg.range_limit, cfg.mix) == ("etcd", 16, 100, (("range", 100.0),))
    cfg = cell_config(SETTINGS, cells["eget64-all"], "ggap", ["a:1", "b:2"])
    assert cfg.read_mode == "eventual" and cfg.endpoints == ("a:1", "b:2")
    assert cell_config(SETTINGS, cells["watch"], "etcd", ["a:1"]).stamp_values
    assert not cell_config(SETTINGS, cells["put64"], "etcd", ["a:1"]).stamp_values


def test_etcd_config_refuses_what_etcd_lacks() -> None:
    with pytest.raises(ValueError, match="delete"):
        BenchConfig(endpoints=("a:1",), system="etcd", mix=(("delete", 1.0),))
    with pytest.raises(ValueError, match="reads"):
        BenchConfig(endpoints=("a:1",), system="etcd", read_mode="sequential")
    with pytest.raises(ValueError, match="system"):
        BenchConfig(endpoints=("a:1",), system="redis")


def test_make_client_picks_system_and_ops() -> None:
    class NoEndpoints:
        pass

    ggap = make_client(BenchConfig(endpoints=("a:1",)), NoEndpoints(), random.Random(1))  # type: ignore[arg-type]
    etcd = make_client(BenchConfig(endpoints=("a:1",), system="etcd"), NoEndpoints(), random.Random(1))  # type: ignore[arg-type]
    assert isinstance(ggap, GgapClient) and isinstance(etcd, EtcdClient)
    for name in ("put", "get", "range", "txn"):
        assert callable(ggap.op(name)) and callable(etcd.op(name))
    with pytest.raises(ValueError, match="delete"):
        etcd.op("delete")


def test_value_stamp_round_trip_and_lag() -> None:
    value = bytes(range(32))
    stamped = stamp_value(value, 1_700_000_000_123_456_789)
    assert len(stamped) == len(value) and stamped[8:] == value[8:]
    assert value_stamp(stamped) == 1_700_000_000_123_456_789
    assert lag_ns(stamped, 1_700_000_000_123_456_789 + 2_500_000) == 2_500_000
    assert lag_ns(b"short", 10) is None
    assert lag_ns(bytes(16), 10) is None  # no stamp (zeros)
    cfg = BenchConfig(endpoints=("a:1",), value_size=16, stamp_values=True)
    client = make_client(cfg, None, random.Random(1))  # type: ignore[arg-type]
    assert value_stamp(client.value) is not None and len(client.value) == 16


def test_window_stats() -> None:
    recv = [5, 10, 20, 30, 40, 60]
    lags = [1, 4_000_000, 1_000_000, -1, 2_000_000, 7]
    got = window_stats(recv, lags, 10, 50)  # 40 ns window: events at 10, 20, 30, 40
    assert got["events"] == 4
    assert got["events_per_s"] == pytest.approx(4 / 40e-9)
    assert got["lag_p50_ms"] == 2.0  # of [1, 2, 4] ms, the unstamped one left out
    assert got["lag_p99_ms"] == 4.0
    assert window_stats([], [], 0, 10)["lag_p50_ms"] is None
    with pytest.raises(ValueError):
        window_stats(recv, lags, 10, 10)
    assert nearest_rank([1, 2, 3, 4], 50) == 2 and nearest_rank([], 50) is None


def test_delivered_fraction() -> None:
    assert delivered_fraction(500, 100, 10) == 0.5
    assert delivered_fraction(0, 0, 10) is None


def test_cell_rows_paired_ratio_and_tables() -> None:
    cells = [c for c in CELLS if c.id in ("put64", "watch")]
    w = {"events_per_s": 1000.0, "delivered_fraction": 1.0, "lag_p50_ms": 2.0, "lag_p99_ms": 5.0}
    runs = [
        _run("put64", 1, "etcd", 1000, 100),
        _run("put64", 1, "ggap", 500, 300),
        _run("put64", 2, "ggap", 900, 300),
        _run("put64", 2, "etcd", 1000, 100),
        _run("watch", 1, "etcd", 100, 1, {**w, "events_per_s": 2000.0}),
        _run("watch", 1, "ggap", 100, 1, w),
    ]
    rows = cell_rows(cells, runs)
    assert [r["cell"] for r in rows] == ["put64", "watch"]
    put = rows[0]
    assert put["etcd"]["ops_per_s"] == 1000 and put["ggap"]["ops_per_s"] == 700
    assert put["round_ratios"]["ops_per_s"] == [0.5, 0.9]
    assert put["ratio_ggap_over_etcd"]["ops_per_s"] == pytest.approx(0.7)
    assert put["ratio_ggap_over_etcd"]["cpu_us_per_op"] == pytest.approx(3.0)
    assert rows[1]["watch"]["ratio_events_per_s"] == 0.5
    table = format_compare_table(rows).splitlines()
    assert table[0].startswith("| cell | etcd ops/s | ggap ops/s | ggap/etcd |")
    assert table[2].startswith("| Put x64 leader | 1000 | 700 | 0.70 |")
    assert table[2].endswith("| 100 | 300 | 3.00 |")
    watch = format_watch_table(rows)
    assert watch is not None and "| 2000 | 1000 | 0.50 | 100% | 100% |" in watch
    assert format_watch_table(rows[:1]) is None


def test_one_sided_rows_have_no_ratio() -> None:
    rows = cell_rows([CELLS[0]], [_run("put1", 1, "ggap", 10, 1)])
    assert rows[0]["etcd"]["ops_per_s"] is None
    assert rows[0]["ratio_ggap_over_etcd"]["ops_per_s"] is None
    assert "| - |" in format_compare_table(rows)


def test_result_dir_name() -> None:
    when = dt.datetime(2026, 12, 3, 16, 45, 1, tzinfo=dt.UTC)
    assert result_dir_name(when) == "20261203T164501Z"
