"""bench.config: option parsing, key layout and how clients are split over workers."""

from __future__ import annotations

import pytest

from bench.config import BenchConfig, parse_endpoints, parse_mix, prefix_end


def test_parse_mix() -> None:
    assert parse_mix("put=70,get=30") == (("put", 70.0), ("get", 30.0))
    assert parse_mix(" PUT=1 , txn=0.5,range=0,") == (("put", 1.0), ("txn", 0.5))
    assert dict(parse_mix("put=1,get=1,delete=1,range=1,txn=1")).keys() == {
        "put",
        "get",
        "delete",
        "range",
        "txn",
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("put", "op=weight"),
        ("scan=3", "unknown operation"),
        ("put=1,put=2", "twice"),
        ("put=x", "not a number"),
        ("put=-1", ">= 0"),
        ("put=nan", ">= 0"),
        ("put=inf", ">= 0"),
        ("put=0,get=0", "positive weight"),
        ("", "positive weight"),
    ],
)
def test_parse_mix_refuses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_mix(text)


def test_parse_endpoints() -> None:
    assert parse_endpoints("127.0.0.1:1,localhost:65535") == ("127.0.0.1:1", "localhost:65535")
    assert parse_endpoints("[::1]:80") == ("[::1]:80",)
    for bad in ("", "host", ":80", "h:0", "h:70000", "h:x"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_prefix_end() -> None:
    assert prefix_end("bench/") == "bench0"
    assert prefix_end("a") == "b"
    assert prefix_end("") == ""
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"
    assert all("bench/" <= k < prefix_end("bench/") for k in ("bench/", "bench/999", "bench/\uffff"))


def test_keys_sort_in_index_order() -> None:
    cfg = BenchConfig(endpoints=("h:1",), keys=1000, key_prefix="k/")
    keys = [cfg.key(i) for i in range(1000)]
    assert keys[0] == "k/000" and keys[-1] == "k/999"
    assert sorted(keys) == keys
    assert BenchConfig(endpoints=("h:1",), keys=1).key(0) == "bench/0"


def test_clients_are_split_over_workers() -> None:
    cfg = BenchConfig(endpoints=("h:1",), clients=10, processes=3)
    assert [cfg.clients_of_worker(w) for w in range(cfg.worker_count)] == [4, 3, 3]
    few = BenchConfig(endpoints=("h:1",), clients=2, processes=4)
    assert few.worker_count == 2
    assert [few.clients_of_worker(w) for w in range(few.worker_count)] == [1, 1]


def test_config_validation_and_description() -> None:
    with pytest.raises(ValueError, match=r"clients must be >= 1.*read mode"):
        BenchConfig(endpoints=("h:1",), clients=0, read_mode="strong")
    desc = BenchConfig(endpoints=("h:1", "h:2"), mix=(("put", 3.0),)).describe()
    assert desc["endpoints"] == ["h:1", "h:2"]
    assert desc["mix"] == {"put": 3.0}
    assert desc["workers"] == 1


def test_tls_options_go_together() -> None:
    assert BenchConfig(endpoints=("a:1",), cacert="ca.pem", cert="c.pem", key_file="c.key").cacert
    with pytest.raises(ValueError, match="cert and key go together"):
        BenchConfig(endpoints=("a:1",), cacert="ca.pem", cert="c.pem")
    with pytest.raises(ValueError, match="cert needs cacert"):
        BenchConfig(endpoints=("a:1",), cert="c.pem", key_file="c.key")
