"""`python -m bench.membership` end to end on a tiny cluster: the report's shape only.

Timing numbers are never asserted (team rule). The bench runs in its own process group so
that a hung run is killed with every node it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.procs import REPO_ROOT

pytestmark = pytest.mark.slow


def test_membership_bench_reports_every_step() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable,
        "-m",
        "bench.membership",
        "--keys",
        "500",
        "--transfers",
        "1",
        "--probe-threads",
        "2",
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    assert "join of node 4: listed as learner" in out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[0] == "step"
    assert rows[1:3] == ["idle (5 s, no change)", "join of node 4"]
    assert rows[3].startswith("transfer ")
    restarts = [r for r in rows if r.startswith("restart node ")]
    assert [r.split()[2] for r in restarts] == ["1", "2", "3", "4"]
    # At least one restart stopped the leader (more when the hand-off went to a node not
    # restarted yet: the most caught-up voter at that moment), and each says how
    # leadership moved.
    stopped_leader = [r for r in restarts if ", leader " in r]
    assert stopped_leader and all("by hand-off" in r or "by election" in r for r in stopped_leader)
