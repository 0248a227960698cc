"""Crash consistency: a writer SIGKILLed mid-stream leaves kv.db at a batch boundary."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import KvStore
from ggap.types import Command, Put, Txn

BATCH = 400

# The child applies batches forever and prints applied_index after each commit.
CHILD = """
import sys
from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import KvStore
from tests.unit.test_storage_crash import BATCH, command

store = KvStore.open(sys.argv[1], mvcc=MvccConfig(history_depth=100000), storage=StorageConfig())
idx = store.applied_index
while True:
    store.apply([(i, command(i)) for i in range(idx + 1, idx + BATCH + 1)])
    idx += BATCH
    print(idx, flush=True)
"""


def command(i: int) -> Command:
    """Entry i of the synthetic log: every command writes, every 7th is a two-key Txn."""
    put = Put(f"k{i % 10}", str(i).encode())
    if i % 7 == 0:
        return Txn(success=(put, Put("txn", str(i).encode())))
    return put


def _check(path: Path, at_least: int) -> int:
    store = KvStore.open(path, mvcc=MvccConfig(history_depth=100000), storage=StorageConfig())
    reader = store.reader()
    try:
        a = store.applied_index
        assert a % BATCH == 0, f"half-applied batch: applied_index {a}"
        assert a >= at_least, f"lost committed batches: {a} < {at_least}"
        assert store.revision == a
        assert reader.state() == (a, a, 0)
        for j in range(10):
            mine = [i for i in range(1, a + 1) if i % 10 == j]
            kv, _ = reader.get(f"k{j}")
            if not mine:
                assert kv is None
                continue
            assert kv is not None and kv.value == str(mine[-1]).encode() and kv.version == len(mine)
        txns = [i for i in range(1, a + 1) if i % 7 == 0]
        kv, _ = reader.get("txn")
        assert (kv.value if kv else None) == (str(txns[-1]).encode() if txns else None)
        events, _ = reader.events(1, limit=0)
        assert len(events) == a + len(txns)
        # Replaying what is already applied is a no-op.
        assert store.apply([(i, command(i)) for i in range(max(1, a - 5), a + 1)]) == [None] * min(a, 6)
        return a
    finally:
        reader.close()
        store.close()


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_stream_leaves_a_consistent_prefix(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "kv.db"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    applied = 0
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=root,
            env=env,
            text=True,
        )
        try:
            assert child.stdout is not None
            last = applied
            for _ in range(rng.randint(1, 3)):
                line = child.stdout.readline()
                assert line, child.stderr.read() if child.stderr else "child died"
                last = int(line)
            time.sleep(rng.uniform(0, 0.05))
            child.send_signal(signal.SIGKILL)
            # Anything printed before the kill was committed.
            rest = child.communicate(timeout=30)[0]
            printed = [int(x) for x in rest.split()]
            last = max([last, *printed])
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        applied = _check(path, last)
    assert applied >= 3 * BATCH
