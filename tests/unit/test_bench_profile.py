"""The pure parts of bench.profile: py-spy's collapsed stacks to a self-time table."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from bench.profile import frame_name, load_argv, parse_collapsed, spy_record_argv, top_table

RAW = [
    "<module> (ggap/cli.py:3);run (trio/_core/_run.py:2010);step (ggap/raft/node.py:40) 5",
    "<module> (ggap/cli.py:3);run (trio/_core/_run.py:2010);step (ggap/raft/node.py:41) 2",
    "<module> (ggap/cli.py:3);commit (ggap/storage/log.py:99) 4",
    'process 1234:"python -m ggap.cli";main (x.py) 1',
    "",
    "garbage without count",
]


def test_frame_name_drops_line_numbers() -> None:
    assert frame_name("step (ggap/raft/node.py:40)") == "step (ggap/raft/node.py)"
    assert frame_name("main (x.py)") == "main (x.py)"
    assert frame_name("weird") == "weird"


def test_parse_collapsed_counts_leaf_frames() -> None:
    got = parse_collapsed(RAW)
    assert got == Counter(
        {"step (ggap/raft/node.py)": 7, "commit (ggap/storage/log.py)": 4, "main (x.py)": 1}
    )


def test_top_table() -> None:
    table = top_table(parse_collapsed(RAW), n=2).splitlines()
    assert table[0] == "| # | function (self time) | samples | share |"
    assert table[2] == "| 1 | step (ggap/raft/node.py) | 7 | 58.3% |"
    assert len(table) == 4
    assert len(top_table(Counter()).splitlines()) == 2


def test_argv() -> None:
    argv = load_argv(["--clients", "64", "--mix", "put=100"], ["a:1", "b:2"], 10, 2)
    assert argv[1:] == ["-m", "bench", "--endpoints", "a:1,b:2", "--duration", "11", "--warmup", "2",
                        "--clients", "64", "--mix", "put=100"]  # fmt: skip
    assert "11" not in load_argv(["--duration", "30"], ["a:1"], 10, 2)
    spy = spy_record_argv("py-spy", 42, 200, 9.6, Path("/o/node1.txt"))
    assert spy == ["py-spy", "record", "--pid", "42", "--rate", "200", "--duration", "10",
                   "--format", "raw", "--output", "/o/node1.txt"]  # fmt: skip
    assert "--idle" not in spy
