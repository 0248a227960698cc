"""bench/profile.sh end to end: 3 nodes, a 2 s py-spy recording; output shape only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.profile import py_spy_binary
from tests.procs import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(py_spy_binary() is None, reason="py-spy not installed (make install adds it)"),
]


def test_profile_sh(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    argv = [
        str(REPO_ROOT / "bench" / "profile.sh"), "--duration", "2", "--warmup", "1", "--top", "5",
        "--results-dir", str(tmp_path), "--clients", "4", "--mix", "put=100", "--keys", "50",
    ]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr + result.stdout
    (out_dir,) = list(tmp_path.iterdir())
    assert out_dir.name.startswith("profile-")
    for i in (1, 2, 3):
        assert (out_dir / f"node{i}.txt").stat().st_size > 0
        assert f"node {i}: " in result.stdout
    assert result.stdout.count("| # | function (self time) | samples | share |") == 3
