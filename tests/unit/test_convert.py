"""ggap.server.convert: protobuf requests to typed values, without a node."""

from __future__ import annotations

import pytest

from ggap.config import load
from ggap.config.model import LimitsConfig
from ggap.pb import kv_pb2 as pb
from ggap.server import convert
from ggap.types import InvalidArgument, ReadMode


def test_every_read_mode_the_config_accepts_is_a_read_mode() -> None:
    # The config edge spells modes as strings; the server turns them into ReadMode once.
    assert {ReadMode(m) for m in load._READ_MODES} == set(ReadMode)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (pb.READ_MODE_LINEARIZABLE, ReadMode.LINEARIZABLE),
        (pb.READ_MODE_SEQUENTIAL, ReadMode.SEQUENTIAL),
        (pb.READ_MODE_EVENTUAL, ReadMode.EVENTUAL),
    ],
)
def test_read_mode_maps_the_protobuf_enum(value: int, mode: ReadMode) -> None:
    assert convert.read_mode(value, ReadMode.EVENTUAL) is mode


def test_unspecified_read_mode_is_the_default_and_unknown_is_refused() -> None:
    for default in ReadMode:
        assert convert.read_mode(pb.READ_MODE_UNSPECIFIED, default) is default
    with pytest.raises(InvalidArgument, match="unknown read_mode 9"):
        convert.read_mode(9, ReadMode.LINEARIZABLE)
    # Inside a Txn the mode is only validated.
    with pytest.raises(InvalidArgument, match="unknown read_mode 7"):
        convert.txn_get(pb.GetRequest(key="k", read_mode=7), LimitsConfig())
