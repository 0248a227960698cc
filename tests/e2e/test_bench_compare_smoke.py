"""`python -m bench.compare` end to end with tiny durations: the output's shape only.

Real processes (ggap nodes, and etcd members when `etcd` is on PATH), one round of half a
second per run and two cells, so it stays well under a minute. Timings are never asserted
(team rule): only that the rows and the JSON are there and that no process is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import REPO_ROOT

pytestmark = pytest.mark.slow

HAVE_ETCD = shutil.which("etcd") is not None
NEEDS_ETCD = pytest.mark.skipif(not HAVE_ETCD, reason="etcd is not on PATH (apt-get install etcd-server)")


def _procs_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (our temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.parametrize(
    "systems",
    [
        "ggap",
        pytest.param(
            "etcd,ggap",
            marks=pytest.mark.skipif(
                not HAVE_ETCD, reason="etcd is not on PATH (apt-get install etcd-server)"
            ),
        ),
    ],
)
def test_compare_smoke(tmp_path: Path, systems: str) -> None:
    work, results = tmp_path / "work", tmp_path / "results"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable, "-m", "bench.compare", "--systems", systems,
        "--rounds", "1", "--duration", "0.5", "--warmup", "0.1", "--keys", "50",
        "--cells", "put16,1n-get64", "--processes", "1",
        "--work-dir", str(work), "--results-dir", str(results),
    ]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _procs_mentioning(str(tmp_path)) == []
    lines = result.stdout.splitlines()
    assert any(line.startswith("| cell | etcd ops/s | ggap ops/s | ggap/etcd |") for line in lines)
    rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")]
    assert "Put x16 leader" in rows and "1 node: lin Get x64" in rows

    (out_dir,) = list(results.iterdir())
    assert (out_dir / "results.md").read_text().strip() in result.stdout
    doc = json.loads((out_dir / "results.json").read_text())
    expected = [s for s in ("etcd", "ggap") if s in systems.split(",")]
    for cell in ("put16", "1n-get64"):
        ran = [r for r in doc["runs"] if r["cell"] == cell]
        assert sorted(r["system"] for r in ran) == expected
        for run in ran:
            assert run["count"] > 0 and run["errors"] == 0, run
            assert run["cpu_us_per_op"] is not None
    for row in doc["summary"]:
        for system in expected:
            assert row[system]["ops_per_s"] is not None
        if len(expected) == 2:
            assert row["ratio_ggap_over_etcd"]["ops_per_s"] is not None


@NEEDS_ETCD
def test_compare_interrupted_leaves_nothing_behind(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal does) mid-run: every process stopped."""
    import signal
    import time

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable, "-m", "bench.compare", "--rounds", "1", "--duration", "30", "--keys", "50",
        "--cells", "put16", "--processes", "1", "--work-dir", str(work),
        "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not any("etcd" in p for p in _procs_mentioning(str(work))):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(3)  # into the run
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert _procs_mentioning(str(work)) == []
