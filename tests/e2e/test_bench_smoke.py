"""`python -m bench` as a user runs it: against a real node, and against a scripted fake.

The fake KvService (grpcio, in this process) pins down what the load generator itself
does: round-robin over endpoints, worker processes, every operation type, errors counted
by status code instead of crashing, the exit status. Timing numbers are never asserted.
"""

from __future__ import annotations

import bisect
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from ggap.pb import kv_pb2 as pb
from ggap.pb import kv_pb2_grpc
from tests.procs import REPO_ROOT, NodeProcess, free_port

pytestmark = pytest.mark.slow

ALL_OPS = "put=40,get=30,delete=5,range=10,txn=15"


def run_bench(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_against_a_node(node: NodeProcess) -> None:
    result = run_bench(
        "--endpoints", node.client_addr,
        "--duration", "2",
        "--warmup", "0.5",
        "--clients", "4",
        "--keys", "100",
        "--preload",
        "--mix", ALL_OPS,
        "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["preload"]["written"] == 100
    assert summary["preload"]["errors"] == 0
    assert summary["total"]["count"] > 0
    assert summary["ops"]["put"]["count"] > 0
    assert summary["ops"]["get"]["count"] > 0
    assert summary["total"]["errors"] == 0, summary["total"]["errors_by_code"]


class FakeKv(kv_pb2_grpc.KvServiceServicer):
    """A dict with revisions; gets of keys ending in 7 are refused, to see errors counted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.data: dict[str, tuple[bytes, int]] = {}
        self.revision = 0
        self.calls: Counter[str] = Counter()

    def _header(self) -> pb.ResponseHeader:
        return pb.ResponseHeader(revision=self.revision)

    def Put(self, request: pb.PutRequest, context: Any) -> pb.PutResponse:
        with self.lock:
            self.calls["Put"] += 1
            self.revision += 1
            self.data[request.key] = (request.value, self.revision)
            return pb.PutResponse(header=self._header())

    def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        with self.lock:
            self.calls["Get"] += 1
        if request.key.endswith("7"):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "scripted refusal")
        with self.lock:
            found = self.data.get(request.key)
            kv = pb.KeyValue(key=request.key, value=found[0], mod_revision=found[1]) if found else None
            return pb.GetResponse(header=self._header(), found=found is not None, kv=kv)

    def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        with self.lock:
            self.calls["Delete"] += 1
            deleted = self.data.pop(request.key, None) is not None
            self.revision += deleted
            return pb.DeleteResponse(header=self._header(), deleted=deleted)

    def Range(self, request: pb.RangeRequest, context: Any) -> pb.RangeResponse:
        with self.lock:
            self.calls["Range"] += 1
            keys = sorted(self.data)
            lo = bisect.bisect_left(keys, request.start)
            hi = bisect.bisect_left(keys, request.end) if request.end else len(keys)
            chosen = keys[lo:hi][: request.limit or None]
            kvs = [pb.KeyValue(key=k, value=self.data[k][0]) for k in chosen]
            return pb.RangeResponse(header=self._header(), kvs=kvs, count=hi - lo, more=hi - lo > len(kvs))

    def Txn(self, request: pb.TxnRequest, context: Any) -> pb.TxnResponse:
        with self.lock:
            self.calls["Txn"] += 1
            (cmp,) = request.compare
            assert cmp.target == pb.COMPARE_TARGET_MOD_REVISION and cmp.op == pb.COMPARE_OP_LESS
            mod = self.data.get(cmp.key, (b"", 0))[1]
            succeeded = mod < cmp.number
            if succeeded:
                (op,) = request.success
                self.revision += 1
                self.data[op.put.key] = (op.put.value, self.revision)
            return pb.TxnResponse(header=self._header(), succeeded=succeeded)


@pytest.fixture
def fakes() -> Iterator[list[tuple[str, FakeKv]]]:
    """Two fake servers: bench is pointed at both to see requests spread across them."""
    servers = []
    out = []
    for _ in range(2):
        fake = FakeKv()
        server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.so_reuseport", 0)])
        kv_pb2_grpc.add_KvServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        out.append((f"127.0.0.1:{port}", fake))
    try:
        yield out
    finally:
        for server in servers:
            server.stop(0)


def test_bench_workers_spread_load_and_count_errors(fakes: list[tuple[str, FakeKv]]) -> None:
    endpoints = ",".join(addr for addr, _ in fakes)
    result = run_bench(
        "--endpoints", endpoints,
        "--duration", "1",
        "--warmup", "0.2",
        "--clients", "4",
        "--processes", "2",
        "--keys", "50",
        "--preload",
        "--mix", ALL_OPS,
        "--seed", "1",
        "--json",
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: no progress lines
    summary = json.loads(result.stdout)
    assert summary["config"]["workers"] == 2
    assert summary["preload"] == {
        "keys": 50,
        "written": 50,
        "errors": 0,
        "errors_by_code": {},
        "seconds": summary["preload"]["seconds"],
    }
    assert set(summary["ops"]) == {"put", "get", "delete", "range", "txn"}
    for name in ("put", "delete", "range", "txn"):
        assert summary["ops"][name]["errors"] == 0
    get = summary["ops"]["get"]
    # Keys 07, 17, ... 47 are refused by the fake: counted by code, the run goes on.
    assert get["errors"] > 0 and set(get["errors_by_code"]) == {"RESOURCE_EXHAUSTED"}
    assert summary["total"]["errors"] == get["errors"]
    assert summary["total"]["count"] == sum(op["count"] for op in summary["ops"].values())
    assert summary["total"]["count"] > 0
    assert set(summary["total"]["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
    for _, fake in fakes:
        assert fake.calls["Put"] > 0 and fake.calls["Get"] > 0


def test_bench_text_output_and_progress(fakes: list[tuple[str, FakeKv]]) -> None:
    addr, fake = fakes[0]
    result = run_bench(
        "--endpoints", addr, "--duration", "1.3", "--warmup", "0", "--clients", "2",
        "--keys", "20", "--key-prefix", "p/", "--mix", "put=1,range=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ops/s=" in result.stderr  # at least one progress line
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert {"op", "put", "range", "total"} <= rows.keys()
    assert int(rows["total"][1]) == int(rows["put"][1]) + int(rows["range"][1]) > 0
    assert all(key.startswith("p/") for key in fake.data)


def test_bench_against_nothing_counts_errors_and_fails() -> None:
    result = run_bench(
        "--endpoints", f"127.0.0.1:{free_port()}", "--duration", "0.5", "--warmup", "0",
        "--clients", "2", "--timeout", "0.5", "--json", "--quiet",
    )  # fmt: skip
    assert result.returncode == 1
    assert "no request succeeded" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["total"]["count"] == 0
    assert summary["total"]["errors"] > 0
    assert set(summary["total"]["errors_by_code"]) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def test_bench_usage_errors_exit_2() -> None:
    result = run_bench("--mix", "scan=1")
    assert result.returncode == 2
    assert "unknown operation" in result.stderr
