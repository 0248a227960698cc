"""The layered config loader and config/default.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import attrs
import pytest

from ggap.config import Config, ConfigError, config_to_dict, load_config
from ggap.config.model import MvccConfig, NodeConfig, RaftConfig, ReadsConfig, ServerConfig, TransportConfig

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "config" / "default.toml"


def write(tmp_path: Path, text: str, name: str = "ggap.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(**kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


# --- default.toml ---------------------------------------------------------------------------


def test_default_toml_equals_embedded_defaults() -> None:
    assert load_config(DEFAULT_TOML, env={}) == Config()


def test_default_toml_names_every_knob_and_nothing_else() -> None:
    data = tomllib.loads(DEFAULT_TOML.read_text(encoding="utf-8"))
    in_file = {f"{s}.{k}" for s, table in data.items() for k in table}
    in_model = {f"{s}.{k}" for s, table in config_to_dict(Config()).items() for k in table}
    assert in_file == in_model
    # ...and with the same values, not just the same names.
    assert data == config_to_dict(Config())


def test_default_toml_documents_every_knob() -> None:
    lines = DEFAULT_TOML.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[i - 1].lstrip().startswith("#"), f"no comment above {line!r}"


# --- layering -------------------------------------------------------------------------------


def test_no_layers_gives_defaults() -> None:
    assert load_config(env={}) == Config()


def test_env_none_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GINNUNGAGAP_MVCC__HISTORY_DEPTH", "7")
    assert load_config().mvcc.history_depth == 7


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mvcc]\nhistory_depth = 20\nprune_batch_keys = 9\n[node]\nid = 4\ndata_dir = "/from/file"\n',
    )
    env = {"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "32", "GINNUNGAGAP_NODE__ID": "5"}
    cfg = load_config(path, env=env, overrides={"node.id": 6})
    assert cfg.mvcc == MvccConfig(history_depth=32, prune_batch_keys=9)
    assert cfg.node == attrs.evolve(NodeConfig(), id=6, data_dir="/from/file")
    assert cfg.storage == Config().storage


def test_env_parsing_of_every_type() -> None:
    env = {
        "GINNUNGAGAP_LIMITS__MAX_KEY_BYTES": " 100 ",
        "GINNUNGAGAP_NODE__DATA_DIR": "/tmp/x y",
        "GINNUNGAGAP_READS__DEFAULT_MODE": "Sequential",
        "GINNUNGAGAP_STORAGE__KV_SYNCHRONOUS": "full",
        "PATH": "/usr/bin",  # not ours: ignored
        "GINNUNGAGAPX": "ignored too",
    }
    cfg = load_config(env=env)
    assert cfg.limits.max_key_bytes == 100
    assert cfg.node.data_dir == "/tmp/x y"
    assert cfg.reads.default_mode == "sequential"
    assert cfg.storage.kv_synchronous == "FULL"


def test_text_values_for_bool_and_float_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model has no bool/float knob today; check the parser on a patched schema."""
    from ggap.config import load as load_mod

    schema = {**load_mod._SCHEMA, "mvcc": {**load_mod._SCHEMA["mvcc"], "flag": bool, "ratio": float}}
    monkeypatch.setattr(load_mod, "_SCHEMA", schema)
    layers = load_mod._Layers()
    layers.values["mvcc"].update(flag=False, ratio=0.0)
    for text, want in (("true", True), ("TRUE", True), ("1", True), ("false", False), ("0", False)):
        layers.set("mvcc", "flag", text, "env X", from_text=True)
        assert layers.values["mvcc"]["flag"] is want
    layers.set("mvcc", "ratio", "0.25", "env X", from_text=True)
    layers.set("mvcc", "ratio", 2, "f.toml", from_text=False)
    assert layers.values["mvcc"]["ratio"] == 2.0
    layers.set("mvcc", "flag", "yes", "env GINNUNGAGAP_MVCC__FLAG", from_text=True)
    layers.set("mvcc", "ratio", True, "f.toml", from_text=False)
    assert layers.errors == [
        "mvcc.flag: expected bool (true/false/1/0), got 'yes' (from env GINNUNGAGAP_MVCC__FLAG)",
        "mvcc.ratio: expected float, got True (from f.toml)",
    ]


def test_override_strings_are_parsed_like_env() -> None:
    cfg = load_config(env={}, overrides={"mvcc.history_depth": "12", "node.client_addr": "[::1]:0"})
    assert cfg.mvcc.history_depth == 12
    assert cfg.node.client_addr == "[::1]:0"


# --- errors name the key and the source -----------------------------------------------------


def test_env_wrong_type() -> None:
    assert errors_of(env={"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "abc"}) == [
        "mvcc.history_depth: expected int, got 'abc' (from env GINNUNGAGAP_MVCC__HISTORY_DEPTH)"
    ]


def test_env_unknown_section_and_key() -> None:
    errors = errors_of(
        env={"GINNUNGAGAP_NOPE__X": "1", "GINNUNGAGAP_MVCC__NOPE": "1", "GINNUNGAGAP_MVCC": "1"}
    )
    assert errors == [
        "mvcc: expected GINNUNGAGAP_<SECTION>__<KEY> (from env GINNUNGAGAP_MVCC)",
        "mvcc.nope: unknown config key (from env GINNUNGAGAP_MVCC__NOPE)",
        "nope: unknown config section (from env GINNUNGAGAP_NOPE__X)",
    ]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mvcc]\nhistory_depth = "16"\nnope = 1\n[bogus]\nx = 1\n[limits]\nmax_key_bytes = true\n'
        "[node]\nid = 1.5\n",
    )
    assert errors_of(config_file=path, env={}) == [
        f"mvcc.history_depth: expected int, got '16' (from {path})",
        f"mvcc.nope: unknown config key (from {path})",
        f"bogus: unknown config section (from {path})",
        f"limits.max_key_bytes: expected int, got True (from {path})",
        f"node.id: expected int, got 1.5 (from {path})",
    ]


def test_file_section_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, "mvcc = 3\n")
    assert errors_of(config_file=path, env={}) == [f"mvcc: expected a table, got 3 (from {path})"]


def test_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[mvcc\nhistory_depth = \n")
    (error,) = errors_of(config_file=path, env={})
    assert error.startswith("invalid TOML: ") and error.endswith(f"(from {path})")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    (error,) = errors_of(config_file=path, env={})
    assert error == f"cannot read config file: No such file or directory (from {path})"


def test_override_errors() -> None:
    assert errors_of(env={}, overrides={"mvcc.history_depth": "x", "nodeid": 1, "node.nope": 2}) == [
        "mvcc.history_depth: expected int, got 'x' (from command line)",
        "nodeid: expected <section>.<key> (from command line)",
        "node.nope: unknown config key (from command line)",
    ]


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("mvcc.history_depth", 0, "must be >= 1, got 0"),
        ("limits.max_value_bytes", -1, "must be >= 1, got -1"),
        ("ttl.max_ttl_ms", -5, "must be >= 0, got -5"),
        ("node.id", 0, "must be >= 1, got 0"),
        ("node.client_addr", "localhost", "expected host:port, got 'localhost'"),
        ("node.client_addr", ":17000", "expected host:port, got ':17000'"),
        ("node.cluster_addr", "h:65536", "port must be 0..65535, got 'h:65536'"),
        ("node.cluster_addr", "h:-1", "port must be 0..65535, got 'h:-1'"),
        ("node.cluster_addr", "::1:80", "IPv6 hosts need brackets ([addr]:port), got '::1:80'"),
        ("reads.default_mode", "strong", "must be one of linearizable, sequential, eventual, got 'strong'"),
        ("storage.log_synchronous", "fast", "must be one of OFF, NORMAL, FULL, EXTRA, got 'FAST'"),
        ("log.level", "loud", "must be one of debug, info, warning, error, critical, got 'loud'"),
        ("node.data_dir", " ", "must not be empty"),
        ("transport.queue_messages", 0, "must be >= 1, got 0"),
        ("transport.connect_timeout_ms", -1, "must be >= 1, got -1"),
        ("transport.max_frame_bytes", 1 << 32, "must be <= 4294967295, got 4294967296"),
        ("reads.reader_threads", 0, "must be >= 1, got 0"),
        ("raft.event_queue", 0, "must be >= 1, got 0"),
        ("raft.snapshot_entries", 0, "must be >= 1, got 0"),
        ("server.answer_margin_ms", -1, "must be >= 0, got -1"),
        ("server.forward_retry_ms", 0, "must be >= 1, got 0"),
        ("server.health_interval_ms", 0, "must be >= 1, got 0"),
    ],
)
def test_semantic_errors(key: str, value: object, problem: str) -> None:
    env_name = "GINNUNGAGAP_" + key.upper().replace(".", "__")
    assert errors_of(env={env_name: str(value)}) == [f"{key}: {problem} (from env {env_name})"]
    assert errors_of(env={}, overrides={key: value}) == [f"{key}: {problem} (from command line)"]


def test_semantic_error_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[mvcc]\nhistory_depth = 0\n")
    assert errors_of(config_file=path, env={}) == [f"mvcc.history_depth: must be >= 1, got 0 (from {path})"]


def test_zero_allowed_where_it_means_something() -> None:
    cfg = load_config(
        env={}, overrides={"ttl.max_ttl_ms": 0, "server.shutdown_grace_ms": 0, "server.answer_margin_ms": 0}
    )
    assert cfg.ttl.max_ttl_ms == 0 and cfg.server.shutdown_grace_ms == 0 and cfg.server.answer_margin_ms == 0
    assert load_config(env={}, overrides={"node.client_addr": "0.0.0.0:0"}).node.client_addr == "0.0.0.0:0"


# --- the transport, reads, server and raft loop knobs ------------------------------------


def test_transport_section_from_toml_and_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[transport]\nconnect_timeout_ms = 250\nqueue_messages = 64\nidle_timeout_ms = 4000\n"
        "[reads]\nreader_threads = 8\n[server]\nforward_retry_ms = 20\n",
    )
    env = {
        "GINNUNGAGAP_TRANSPORT__QUEUE_MESSAGES": "128",
        "GINNUNGAGAP_TRANSPORT__MAX_FRAME_BYTES": "8388608",
        "GINNUNGAGAP_SERVER__HEALTH_INTERVAL_MS": "500",
        "GINNUNGAGAP_RAFT__EVENT_QUEUE": "1024",
    }
    cfg = load_config(path, env=env)
    assert cfg.transport == attrs.evolve(
        TransportConfig(),
        connect_timeout_ms=250,
        queue_messages=128,
        idle_timeout_ms=4000,
        max_frame_bytes=8_388_608,
    )
    assert cfg.reads == attrs.evolve(ReadsConfig(), reader_threads=8)
    assert cfg.server == attrs.evolve(ServerConfig(), forward_retry_ms=20, health_interval_ms=500)
    assert cfg.raft == attrs.evolve(RaftConfig(), event_queue=1024)


def test_raft_loop_knobs_have_the_agreed_names_and_defaults() -> None:
    raft = config_to_dict(Config())["raft"]
    assert {k: raft[k] for k in ("event_queue", "max_events_per_turn", "entry_cache_entries")} == {
        "event_queue": 16384,
        "max_events_per_turn": 4096,
        "entry_cache_entries": 4096,
    }
    assert (raft["entry_cache_bytes"], raft["snapshot_entries"]) == (16_777_216, 10_000)
    assert raft["log_retain"] == 5000


def test_transport_relations_name_both_keys_and_sources(tmp_path: Path) -> None:
    env = {"GINNUNGAGAP_TRANSPORT__KEEPALIVE_INTERVAL_MS": "20000"}
    assert errors_of(env=env) == [
        "transport.keepalive_interval_ms: must be less than transport.idle_timeout_ms "
        "(10000, from defaults), got 20000 (from env GINNUNGAGAP_TRANSPORT__KEEPALIVE_INTERVAL_MS)"
    ]
    path = write(tmp_path, "[transport]\nreconnect_backoff_max_ms = 10\nmax_frame_bytes = 1024\n")
    assert errors_of(config_file=path, env={}) == [
        "transport.reconnect_backoff_initial_ms: must be at most transport.reconnect_backoff_max_ms "
        f"(10, from {path}), got 50 (from defaults)",
        "transport.max_batch_bytes: must be at most transport.max_frame_bytes "
        f"(1024, from {path}), got 4194304 (from defaults)",
    ]
    assert errors_of(env={}, overrides={"server.answer_margin_ms": 10_000}) == [
        "server.answer_margin_ms: must be less than server.default_timeout_ms "
        "(10000, from defaults), got 10000 (from command line)"
    ]
    # Equal backoff bounds are fine (no growth), and a value already refused is not
    # reported a second time through its relation.
    load_config(env={}, overrides={"transport.reconnect_backoff_initial_ms": 1000})
    assert errors_of(env={}, overrides={"transport.idle_timeout_ms": 0}) == [
        "transport.idle_timeout_ms: must be >= 1, got 0 (from command line)"
    ]


def test_all_problems_reported_at_once() -> None:
    errors = errors_of(env={"GINNUNGAGAP_MVCC__HISTORY_DEPTH": "abc"}, overrides={"node.client_addr": "x"})
    assert len(errors) == 2


def test_config_to_dict_round_trips() -> None:
    cfg = load_config(env={}, overrides={"mvcc.history_depth": 3})
    as_dict = config_to_dict(cfg)
    assert as_dict["mvcc"]["history_depth"] == 3
    flat = {f"{s}.{k}": v for s, t in as_dict.items() for k, v in t.items()}
    assert load_config(env={}, overrides=flat) == cfg
