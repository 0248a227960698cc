"""`python -m bench.clients` end to end on real nodes: the output's shape only.

Every face for half a second and one failover, so it stays short. Timing numbers are never
asserted (team rule): only that every cell ran, made calls and reported its metrics, and
that the failover was measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench.clients import FACES
from tests.procs import REPO_ROOT

pytestmark = pytest.mark.slow


def test_every_face_runs_and_a_failover_is_timed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONUNBUFFERED"] = "1"
    argv = [
        sys.executable, "-m", "bench.clients",
        "--callers", "4", "--duration", "0.5", "--warmup", "0.2", "--rounds", "1",
        "--failovers", "1", "--env", "GINNUNGAGAP_RAFT__TICK_MS=20", "--json",
    ]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [c["face"] for c in doc["cells"]] == list(FACES)
    for cell in doc["cells"]:
        assert cell["ops_per_s"] > 0, cell
        assert cell["p50_ms"] is not None and cell["p99_ms"] >= cell["p50_ms"]
        assert cell["client_cpu_us_per_op"] is not None and cell["server_cpu_us_per_op"] is not None
    fo = doc["failover"]
    assert fo["failovers"] == 1 and len(fo["all_ms"]) == 1 and fo["max_ms"] > 0


def test_an_unknown_face_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.clients", "--faces", "carrier-pigeon"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "carrier-pigeon" in result.stderr and "grpcio-sync" in result.stderr
