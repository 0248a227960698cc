"""`python -m bench.ab` end to end, with A and B both this tree: the output's shape only.

Real node processes, one round of one second, so it stays short. Timing numbers are never
asserted (team rule): only that every run and metric is there and nothing is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ab import METRICS
from tests.procs import REPO_ROOT

pytestmark = pytest.mark.slow


def test_ab_of_this_tree_against_itself(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "ab.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable, "-m", "bench.ab",
        "--a", str(REPO_ROOT), "--b", str(REPO_ROOT),
        "--rounds", "1", "--duration", "1", "--warmup", "0.2", "--clients", "4",
        "--keys", "50", "--mix", "put=50,get=50", "--preload",
        "--work-dir", str(work), "--json-out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    titles = [title for _, title, _, _ in METRICS]
    runs_header = next(line for line in lines if line.startswith("| # |"))
    assert all(f" {title} |" in runs_header for title in titles)
    run_rows = [line for line in lines if line.startswith("| 1 | 1 |") or line.startswith("| 2 | 1 |")]
    assert [row.split("|")[3].strip() for row in run_rows] == ["A", "B"]
    summary_rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert set(titles) <= set(summary_rows)

    doc = json.loads(out.read_text())
    assert [(r["round"], r["side"]) for r in doc["runs"]] == [(1, "A"), (1, "B")]
    for run in doc["runs"]:
        assert run["count"] > 0 and run["errors"] == 0, run
        assert run["cpu_s"] is not None and run["cpu_us_per_op"] is not None
    assert set(doc["summary"]["ratio_b_over_a"]) == {key for key, *_ in METRICS}
    for side in ("A", "B"):
        assert Path(doc["trees"][side]["ggap_file"]).is_relative_to(REPO_ROOT)
    assert list(work.iterdir()) == []  # data dirs removed after a successful run
