"""The one key rule (ggap.types.check_key), as the request edge and storage both apply it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ggap.config.model import LimitsConfig, MvccConfig, StorageConfig
from ggap.pb import kv_pb2 as pb
from ggap.server import convert
from ggap.storage import KvStore, _reads
from ggap.types import Delete, InvalidArgument, check_key


@pytest.mark.parametrize("key", ["k", "é", "\U0001f600", "a/b c", "\x00"])
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert check_key(key) is key


@pytest.mark.parametrize(
    ("key", "what", "message"),
    [
        ("", "key", "key must not be empty"),
        ("", "compare key", "compare key must not be empty"),
        (123, "key", "key must be a string, got int"),
        (None, "prefix", "prefix must be a string, got NoneType"),
        (b"k", "key", "key must be a string, got bytes"),
        ("a\ud800", "key", "key is not valid UTF-8: surrogates not allowed"),
    ],
)
def test_invalid_keys_name_what_is_wrong(key: Any, what: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_key(key, what)
    assert info.value.message == message


def test_the_limit_counts_utf8_bytes() -> None:
    assert check_key("é" * 2, max_bytes=4) == "éé"
    with pytest.raises(InvalidArgument) as info:
        check_key("é" * 2 + "a", "start", max_bytes=4)
    assert info.value.message == "start is 5 bytes, over the limit of 4"
    # Without a limit (storage applying a committed command) any length is a key.
    assert check_key("k" * 100_000) == "k" * 100_000


def test_request_edge_and_storage_give_the_same_answer(tmp_path: Path) -> None:
    limits = LimitsConfig()
    with pytest.raises(InvalidArgument) as edge:
        convert.delete_command(pb.DeleteRequest(key=""), limits)
    store = KvStore.open(tmp_path / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
    try:
        (applied,) = store.apply([(1, Delete(key=""))])
    finally:
        store.close()
    assert applied is not None and isinstance(applied.result, InvalidArgument)
    assert edge.value.message == applied.result.message == "key must not be empty"
    long_key = "k" * (limits.max_key_bytes + 1)
    with pytest.raises(InvalidArgument, match=f"over the limit of {limits.max_key_bytes}"):
        convert.delete_command(pb.DeleteRequest(key=long_key), limits)


def test_range_bounds_may_be_empty_but_not_invalid() -> None:
    # "" is "no bound" in both layers; a given bound is a key like any other.
    assert _reads.key_bounds("", "", "") == ("", None)
    assert _reads.key_bounds("", "a", "") == ("a", None)
    convert.range_bounds("", "", "", LimitsConfig())
    with pytest.raises(InvalidArgument, match=r"^prefix must be a string, got NoneType$"):
        _reads.key_bounds(None, "", "")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"^end is not valid UTF-8"):
        _reads.key_bounds("", "a", "b\udc00")
