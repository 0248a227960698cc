"""bench.ab's pure parts: /proc stat parsing, ratios and medians, the tables; the window timer."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bench.ab import (
    METRICS,
    ABError,
    CpuWindow,
    Tree,
    cpu_seconds,
    format_runs_table,
    format_summary_table,
    median,
    parse_proc_stat,
    ratio,
    run_record,
    side_order,
    summarize,
)
from bench.config import BenchConfig
from bench.runner import WindowTimer

# A real line's shape: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
# cmajflt utime stime cutime cstime ...
STAT = "4242 (python3) S 1 4242 4242 0 -1 4194560 2917 0 0 0 731 94 3 1 20 0 3 0 12345 1000 100\n"


def test_parse_proc_stat_takes_utime_and_stime() -> None:
    assert parse_proc_stat(STAT) == (731, 94)


def test_parse_proc_stat_survives_spaces_and_parens_in_the_name() -> None:
    line = STAT.replace("(python3)", "(ggap (node) 1)")
    assert parse_proc_stat(line) == (731, 94)


@pytest.mark.parametrize("bad", ["", "4242 python3 S 1", "4242 (x) S 1 2 3"])
def test_parse_proc_stat_refuses_what_is_not_a_stat_line(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_proc_stat(bad)


def test_cpu_seconds_of_this_process_from_proc() -> None:
    first = cpu_seconds([os.getpid()])
    sum(i * i for i in range(200_000))
    assert 0 <= first <= cpu_seconds([os.getpid()])
    ticks = sum(parse_proc_stat(Path(f"/proc/{os.getpid()}/stat").read_text()))
    assert cpu_seconds([os.getpid()], clock_ticks=1) >= ticks


def test_ratio_and_median() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, None, 2.0, 3.0]) == 2.5
    assert median([]) is None
    assert median([None]) is None


def test_side_order() -> None:
    assert [side_order(r, "ab") for r in range(3)] == [("A", "B")] * 3
    assert [side_order(r, "abba") for r in range(3)] == [("A", "B"), ("B", "A"), ("A", "B")]
    with pytest.raises(ValueError):
        side_order(0, "ba")


def bench_summary(count: int, seconds: float, p50: float | None, p99: float | None) -> dict[str, Any]:
    return {
        "total": {
            "count": count,
            "ops_per_s": count / seconds,
            "latency_ms": {"p50": p50, "p90": None, "p99": p99, "max": None, "mean": None},
            "errors": 2,
            "errors_by_code": {"UNAVAILABLE": 2},
        }
    }


def test_run_record_cpu_per_operation_and_cores() -> None:
    rec = run_record(1, "A", bench_summary(4000, 4.0, 1.5, 9.0), cpu_s=2.0, window_s=4.0)
    assert rec["ops_per_s"] == 1000.0
    assert (rec["p50_ms"], rec["p99_ms"]) == (1.5, 9.0)
    assert rec["cpu_us_per_op"] == pytest.approx(500.0)
    assert rec["server_cores"] == pytest.approx(0.5)
    assert (rec["count"], rec["errors"], rec["errors_by_code"]) == (4000, 2, {"UNAVAILABLE": 2})
    empty = run_record(1, "B", bench_summary(0, 4.0, None, None), cpu_s=2.0, window_s=4.0)
    assert empty["cpu_us_per_op"] is None and empty["p50_ms"] is None


def rec(round_no: int, side: str, ops: float, **more: float | None) -> dict[str, Any]:
    base: dict[str, Any] = {key: None for key, *_ in METRICS}
    base.update(round=round_no, side=side, ops_per_s=ops, count=int(ops), errors=0, **more)
    return base


def test_summary_pairs_rounds_instead_of_dividing_medians() -> None:
    # The machine gets twice as fast in round 2: B is 10% faster within every round.
    runs = [
        rec(1, "A", 100.0, p50_ms=2.0),
        rec(1, "B", 110.0, p50_ms=1.0),
        rec(2, "B", 220.0, p50_ms=3.0),
        rec(2, "A", 200.0, p50_ms=2.0),
        rec(3, "A", 400.0),
        rec(3, "B", 440.0),
    ]
    s = summarize(runs)
    assert s["A"]["ops_per_s"] == 200.0 and s["B"]["ops_per_s"] == 220.0
    assert s["round_ratios"]["ops_per_s"] == pytest.approx([1.1, 1.1, 1.1])
    assert s["ratio_b_over_a"]["ops_per_s"] == pytest.approx(1.1)
    # A round lacking the metric yields no ratio, and the median skips it.
    assert s["round_ratios"]["p50_ms"] == [0.5, 1.5, None]
    assert s["ratio_b_over_a"]["p50_ms"] == 1.0
    assert s["A"]["cpu_us_per_op"] is None and s["ratio_b_over_a"]["cpu_us_per_op"] is None


def test_summary_leaves_out_a_round_without_both_sides() -> None:
    s = summarize([rec(1, "A", 100.0), rec(1, "B", 50.0), rec(2, "A", 100.0)])
    assert s["round_ratios"]["ops_per_s"] == [0.5]
    assert s["A"]["ops_per_s"] == 100.0


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[:1] + lines[2:])
    assert set(lines[1]) <= set("|-:")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]


def test_runs_table_shape() -> None:
    runs = [rec(1, "A", 1234.4, p50_ms=1.234, cpu_us_per_op=456.78), rec(1, "B", 999.6)]
    header, first, second = table_rows(format_runs_table(runs))
    assert header[:3] == ["#", "round", "side"]
    assert header[-2:] == ["ops", "errors"]
    assert [title for _, title, _, _ in METRICS] == header[3:-2]
    assert len(first) == len(second) == len(header)
    row = dict(zip(header, first, strict=True))
    assert (row["#"], row["round"], row["side"]) == ("1", "1", "A")
    assert (row["ops/s"], row["p50 ms"]) == ("1234", "1.23")
    assert row["server CPU us/op"] == "456.8"
    assert dict(zip(header, second, strict=True))["p99 ms"] == "-"


def test_summary_table_shape() -> None:
    runs = [rec(1, "A", 100.0), rec(1, "B", 110.0), rec(2, "A", 100.0), rec(2, "B", 90.0)]
    rows = table_rows(format_summary_table(summarize(runs)))
    header, body = rows[0], rows[1:]
    assert header[0] == "metric" and "B/A (median of rounds)" in header
    assert [row[0] for row in body] == [title for _, title, _, _ in METRICS]
    ops = dict(zip(header, body[0], strict=True))
    assert (ops["A median"], ops["B median"], ops["B/A (median of rounds)"]) == ("100", "100", "1.000")
    assert ops["B/A per round"] == "1.100, 0.900"
    assert ops["better"] == "higher"
    p99 = dict(zip(header, body[2], strict=True))
    assert p99["A median"] == "-" and p99["B/A per round"] == "-, -"


def test_cpu_window_needs_both_samples() -> None:
    window = CpuWindow([os.getpid()])
    window("start")
    with pytest.raises(ABError, match="not sampled"):
        window.result()
    window("end")
    cpu, wall = window.result()
    assert cpu >= 0 and wall >= 0
    gone = CpuWindow([2**22 + 1])  # above the default pid_max: never a live process
    gone("start")
    with pytest.raises(ABError, match="reading /proc"):
        gone.result()


def test_window_timer_calls_start_then_end() -> None:
    cfg = BenchConfig(endpoints=("127.0.0.1:1",), warmup=0.01, duration=0.01)
    calls: list[str] = []
    done = threading.Event()

    def hook(what: str) -> None:
        calls.append(what)
        if what == "end":
            done.set()

    timer = WindowTimer(cfg, hook)
    timer.start()
    assert done.wait(30)
    timer.cancel()
    assert calls == ["start", "end"]


def test_window_timer_cancelled_before_it_fires_calls_nothing() -> None:
    calls: list[str] = []
    timer = WindowTimer(BenchConfig(endpoints=("127.0.0.1:1",), warmup=60, duration=1), calls.append)
    timer.start()
    timer.cancel()
    assert calls == []
    WindowTimer(BenchConfig(endpoints=("127.0.0.1:1",)), None).start()  # no hook: no thread, no error


def test_probe_refuses_a_tree_ggap_is_not_imported_from(tmp_path: Path) -> None:
    with pytest.raises(ABError, match="ggap"):
        Tree("A", tmp_path, sys.executable).probe({})
