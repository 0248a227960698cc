"""What the fuzzers (tests/fuzz, `make fuzz`) found, pinned as plain tests, plus a short
coverage-guided pass of every target (`make test` runs it; `make fuzz` runs them longer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggap.config.model import LimitsConfig
from ggap.pb import kv_pb2 as pb
from ggap.server import convert
from ggap.types import InvalidArgument, OutOfRange
from tests.fuzz import seeds, targets

ROOT = Path(__file__).resolve().parents[2]


def _request_input(req: object) -> bytes:
    return bytes([targets._REQUESTS.index(type(req))]) + req.SerializeToString()  # type: ignore[attr-defined]


# Found by the `convert` target: accepted by the converters, then the log codec (signed
# 64-bit) could not encode the command, so the client got INTERNAL instead of a refusal.
FOUND = {
    "txn-get-revision-2**64-1": pb.TxnRequest(
        success=[pb.TxnOp(get=pb.GetRequest(key="a", revision=2**64 - 1))]
    ),
    "txn-range-revision-2**63": pb.TxnRequest(
        failure=[pb.TxnOp(range=pb.RangeRequest(prefix="a", revision=2**63))]
    ),
    "put-ttl-past-int64": pb.PutRequest(key="a", ttl_ms=2**63 - 1),
    "txn-put-ttl-past-int64": pb.TxnRequest(
        success=[pb.TxnOp(put=pb.PutRequest(key="a", ttl_ms=2**63 - 1000))]
    ),
}


@pytest.mark.parametrize("name", sorted(FOUND))
def test_found_inputs_are_refused_with_typed_errors(name: str) -> None:
    targets.convert_request(_request_input(FOUND[name]))


def test_the_edges_themselves() -> None:
    now, limits = 1_700_000_000_000, LimitsConfig()
    assert convert.put_command(pb.PutRequest(key="a", ttl_ms=convert.MAX_I64 - now), limits, now, 0)
    with pytest.raises(InvalidArgument, match="ttl_ms"):
        convert.put_command(pb.PutRequest(key="a", ttl_ms=convert.MAX_I64 - now + 1), limits, now, 0)
    assert convert.txn_get(pb.GetRequest(key="a", revision=convert.MAX_I64), limits).revision
    with pytest.raises(OutOfRange, match="above the current revision"):
        convert.txn_get(pb.GetRequest(key="a", revision=convert.MAX_I64 + 1), limits)


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_seed_corpus_passes(target: str) -> None:
    for data in seeds.SEEDS[target]():
        targets.TARGETS[target](data)


@pytest.mark.slow  # a subprocess per target, ~6 s each; `make test` runs it once
@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_short_fuzz_pass(target: str) -> None:
    pytest.importorskip("atheris")
    seconds = os.environ.get("FUZZ_SHORT_SECONDS", "3")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "--seconds", seconds],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=int(seconds) + 60,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_h2_empty_header_name_ends_that_stream_only() -> None:
    """Found by `h2_frontdoor` (h2 3.2.0 raised IndexError on an empty header name): our
    HTTP/2 layer calls it a malformed request, answered on its stream; the connection lives."""
    import hpack
    import hyperframe.frame

    from ggap.rpc.frontdoor import _StreamFinished

    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/a/b"), (":authority", "x"), ("", "v")]
    )
    frame = hyperframe.frame.HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
    settings = hyperframe.frame.SettingsFrame(0).serialize()
    targets.h2_frontdoor(b"\x3f" + settings + frame)
    conn = targets.GuardedConnection(
        targets.GRPCConfiguration(client_side=False, max_message_length=4096), targets._H2_LIMITS
    )
    conn.initiate_connection()
    events = conn.receive_data(targets.H2_PREFACE + settings + frame)
    finished = [e for e in events if isinstance(e, _StreamFinished)]
    assert [e.stream_id for e in finished] == [1]
    assert "empty header name" in (finished[0].status.status_message or "")
    ping = hyperframe.frame.PingFrame(0, b"12345678").serialize()
    assert conn.receive_data(ping) == [] and not conn.h2_connection.closed
