"""The layered config loader: embedded defaults -> TOML file -> GINNUNGAGAP_* env -> CLI flags.

Every value is checked against its field's type where it enters, so an error can name both
the dotted key and the layer it came from; cattrs only assembles the already-checked dict.
"""

from __future__ import annotations

import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs

from ggap.config.model import Config
from ggap.config.peers import addr_problem, parse_peers

ENV_PREFIX = "GINNUNGAGAP_"

_READ_MODES = ("linearizable", "sequential", "eventual")
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("text", "json")
_EXPORTERS = ("none", "console", "otlp")
# Integer knobs where 0 is meaningful; every other integer knob must be >= 1.
_ZERO_ALLOWED = frozenset(
    {
        "ttl.max_ttl_ms",
        "storage.busy_timeout_ms",
        "server.shutdown_grace_ms",
        "server.answer_margin_ms",
        "server.promote_max_lag_entries",
        "mvcc.auto_compact_revisions",
        "mvcc.auto_compact_interval_ms",
        "storage.quota_bytes",
        "storage.wal_keep_bytes",
        "log.slow_fsync_ms",
        "metrics.cache_ms",
    }
)
# Integer knobs with an upper bound: a frame's length travels as a u32.
_MAXIMUM = {"transport.max_frame_bytes": (1 << 32) - 1}
# (key, relation, other key): checked once both values passed their own checks; the error
# names the first key and shows the other's value and source.
_RELATIONS = (
    ("transport.keepalive_interval_ms", "<", "transport.idle_timeout_ms"),
    ("transport.reconnect_backoff_initial_ms", "<=", "transport.reconnect_backoff_max_ms"),
    ("transport.max_batch_bytes", "<=", "transport.max_frame_bytes"),
    ("server.answer_margin_ms", "<", "server.default_timeout_ms"),
    ("sessions.clock_interval_ms", "<", "sessions.idle_timeout_ms"),
)
_RELATION_WORDS = {"<": "less than", "<=": "at most"}
# Normalised before validation: SQLite and users both treat these case-insensitively.
_UPPER = frozenset({"storage.log_synchronous", "storage.kv_synchronous"})
# Knobs that take one of a few words.
_CHOICES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_UPPER, _SYNCHRONOUS),
    "reads.default_mode": _READ_MODES,
    "log.level": _LOG_LEVELS,
    "log.format": _LOG_FORMATS,
    "tracing.exporter": _EXPORTERS,
}
_LOWER = frozenset({"reads.default_mode", "log.level", "log.format", "tracing.exporter"})

# String knobs where "" means "not set" (TLS off for that part).
_EMPTY_ALLOWED = frozenset(
    {
        "tls.cert_file",
        "tls.key_file",
        "tls.trusted_ca_file",
        "peer_tls.cert_file",
        "peer_tls.key_file",
        "peer_tls.trusted_ca_file",
        "peer_tls.allowed_cn",
        "peer_tls.allowed_hostname",
        "metrics.listen_addr",
    }
)

_converter = cattrs.Converter(forbid_extra_keys=True)


class ConfigError(Exception):
    """A config that cannot be used. The message lists every problem found, one per line,
    each naming the dotted key and where the value came from."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _schema() -> dict[str, dict[str, type]]:
    """section -> key -> python type, read from the attrs model so new knobs need no code here."""
    schema: dict[str, dict[str, type]] = {}
    for section in attrs.fields(Config):
        section_cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(section_cls)
        schema[section.name] = {f.name: hints[f.name] for f in attrs.fields(section_cls)}
    return schema


_SCHEMA = _schema()


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Plain nested dict of every knob (what default.toml holds)."""
    result: dict[str, dict[str, Any]] = _converter.unstructure(cfg)
    return result


def _type_name(tp: type) -> str:
    return {int: "int", float: "float", bool: "bool", str: "string"}.get(tp, tp.__name__)


def _check_typed(value: object, tp: type) -> object:
    """Accept a value already carrying a type (TOML, Python overrides); raise ValueError if wrong."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # a structured knob (list, table): cattrs checks it when assembling
        return value
    raise ValueError(f"expected {_type_name(tp)}, got {value!r}")


def _parse_text(text: str, tp: type) -> object:
    """Parse a string (env var, CLI flag) into the field's type; raise ValueError if it does not fit."""
    raw = text.strip()
    if tp is str:
        return text
    if tp is bool:
        lowered = raw.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise ValueError(f"expected bool (true/false/1/0), got {text!r}")
    if tp not in (int, float):
        raise ValueError(f"cannot be set from text, use the config file (got {text!r})")
    try:
        return int(raw, 10) if tp is int else float(raw)
    except ValueError:
        raise ValueError(f"expected {_type_name(tp)}, got {text!r}") from None


class _Layers:
    """The merged dict plus, per dotted key, the label of the layer that set it last."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = config_to_dict(Config())
        self.sources: dict[str, str] = {}
        self.errors: list[str] = []

    def set(self, section: str, key: str, value: object, source: str, *, from_text: bool) -> None:
        tp = _SCHEMA[section][key]
        try:
            if from_text and isinstance(value, str):
                checked = _parse_text(value, tp)
            else:
                checked = _check_typed(value, tp)
        except ValueError as e:
            self.errors.append(f"{section}.{key}: {e} (from {source})")
            return
        self.values[section][key] = checked
        self.sources[f"{section}.{key}"] = source

    def known(self, section: str, key: str | None, source: str) -> bool:
        if section not in _SCHEMA:
            self.errors.append(f"{section}: unknown config section (from {source})")
            return False
        if key is not None and key not in _SCHEMA[section]:
            self.errors.append(f"{section}.{key}: unknown config key (from {source})")
            return False
        return True

    def source_of(self, dotted: str) -> str:
        return self.sources.get(dotted, "defaults")


def _apply_file(layers: _Layers, path: Path) -> None:
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        layers.errors.append(f"cannot read config file: {e.strerror or e} (from {source})")
        return
    except UnicodeDecodeError as e:
        layers.errors.append(f"config file is not UTF-8: {e} (from {source})")
        return
    except tomllib.TOMLDecodeError as e:
        layers.errors.append(f"invalid TOML: {e} (from {source})")
        return
    for section, table in data.items():
        if not layers.known(section, None, source):
            continue
        if not isinstance(table, dict):
            layers.errors.append(f"{section}: expected a table, got {table!r} (from {source})")
            continue
        for key, value in table.items():
            if layers.known(section, key, source):
                layers.set(section, key, value, source, from_text=False)


def _apply_env(layers: _Layers, env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        source = f"env {name}"
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            layers.errors.append(f"{'.'.join(parts)}: expected {ENV_PREFIX}<SECTION>__<KEY> (from {source})")
            continue
        section, key = parts
        if layers.known(section, key, source):
            layers.set(section, key, env[name], source, from_text=True)


def _apply_overrides(layers: _Layers, overrides: Mapping[str, object]) -> None:
    source = "command line"
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) != 2:
            layers.errors.append(f"{dotted}: expected <section>.<key> (from {source})")
            continue
        section, key = parts
        if layers.known(section, key, source):
            layers.set(section, key, value, source, from_text=True)


def _check_peers(value: object, layers: _Layers) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        peers = parse_peers(value)
    except ValueError as exc:
        return str(exc)
    if not peers:
        return None
    node_id = layers.values["node"]["id"]
    if node_id not in peers:
        return f"does not list this node (node.id {node_id})"
    if peers[node_id] != layers.values["node"]["cluster_addr"]:
        return (
            f"lists node {node_id} at {peers[node_id]}, but node.cluster_addr is "
            f"{layers.values['node']['cluster_addr']}"
        )
    return None


def _validate(layers: _Layers) -> None:
    """Semantic checks that types alone cannot express."""
    failed: set[str] = set()
    for section, fields in _SCHEMA.items():
        for key, tp in fields.items():
            dotted = f"{section}.{key}"
            value = layers.values[section][key]
            problem: str | None = None
            if dotted in _UPPER and isinstance(value, str):
                value = layers.values[section][key] = value.upper()
            if dotted in _LOWER and isinstance(value, str):
                value = layers.values[section][key] = value.lower()
            if tp is int and isinstance(value, int):
                floor = 0 if dotted in _ZERO_ALLOWED else 1
                if value < floor:
                    problem = f"must be >= {floor}, got {value}"
                elif dotted in _MAXIMUM and value > _MAXIMUM[dotted]:
                    problem = f"must be <= {_MAXIMUM[dotted]}, got {value}"
            elif key.endswith("_addr") and isinstance(value, str) and (value or dotted not in _EMPTY_ALLOWED):
                problem = addr_problem(value)
            elif dotted in _CHOICES:
                if value not in _CHOICES[dotted]:
                    problem = f"must be one of {', '.join(_CHOICES[dotted])}, got {value!r}"
            elif dotted == "tracing.sampling_ratio" and isinstance(value, float):
                if not 0.0 <= value <= 1.0:
                    problem = f"must be between 0 and 1, got {value}"
            elif dotted == "raft.peers":
                problem = _check_peers(value, layers)
            elif dotted == "node.join":
                problem = _check_join(value)
            elif dotted in _EMPTY_ALLOWED:
                pass
            elif tp is str and not value.strip():
                problem = "must not be empty"
            if problem is not None:
                failed.add(dotted)
                layers.errors.append(f"{dotted}: {problem} (from {layers.source_of(dotted)})")
    _check_relations(layers, failed)
    _check_tls(layers)


def _check_tls(layers: _Layers) -> None:
    """TLS keys that only make sense together (the files themselves are checked when the
    node starts, ggap/tls.py)."""
    tls, peer = layers.values["tls"], layers.values["peer_tls"]

    def need(dotted: str, because: str) -> None:
        layers.errors.append(f"{dotted}: must be set {because} (from {layers.source_of(dotted)})")

    if tls["cert_file"] and not tls["key_file"]:
        need("tls.key_file", "when tls.cert_file is")
    if tls["key_file"] and not tls["cert_file"]:
        need("tls.cert_file", "when tls.key_file is")
    if tls["trusted_ca_file"] and not tls["cert_file"] and not tls["client_cert_auth"]:
        # Without cert_file the client port is plaintext and so are node-to-node calls to
        # client ports (they use TLS only when this node does): the CA would be unused.
        need("tls.cert_file", "when tls.trusted_ca_file is (without it the client port is plaintext)")
    if tls["client_cert_auth"]:
        if not tls["cert_file"]:
            need("tls.cert_file", "when tls.client_cert_auth is on (it needs TLS)")
        if not tls["trusted_ca_file"]:
            need("tls.trusted_ca_file", "when tls.client_cert_auth is on (the CA clients must chain to)")
    files = ("cert_file", "key_file", "trusted_ca_file")
    if any(peer[key] for key in files):
        for key in files:
            if not peer[key]:
                need(f"peer_tls.{key}", "with the other peer_tls keys (peer TLS is always mutual)")
    elif peer["allowed_cn"] or peer["allowed_hostname"]:
        key = "allowed_cn" if peer["allowed_cn"] else "allowed_hostname"
        need("peer_tls.cert_file", f"when peer_tls.{key} is (it needs peer TLS)")


def _check_join(value: str) -> str | None:
    """ "" (not joining) or comma-separated host:port client endpoints."""
    if not value.strip():
        return None
    for part in value.split(","):
        problem = addr_problem(part.strip())
        if problem is not None:
            return problem
    return None


def _check_relations(layers: _Layers, failed: set[str]) -> None:
    for dotted, relation, other in _RELATIONS:
        if dotted in failed or other in failed:
            continue  # already reported; a second message about it would only confuse
        (section, key), (other_section, other_key) = dotted.split("."), other.split(".")
        value, bound = layers.values[section][key], layers.values[other_section][other_key]
        holds = value < bound if relation == "<" else value <= bound
        if not holds:
            layers.errors.append(
                f"{dotted}: must be {_RELATION_WORDS[relation]} {other} "
                f"({bound}, from {layers.source_of(other)}), got {value} (from {layers.source_of(dotted)})"
            )


def load_config(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build the effective config. `env` defaults to os.environ; pass {} to ignore the
    environment. `overrides` maps dotted keys ("mvcc.history_depth") to values; strings are
    parsed like env values. Raises ConfigError listing every problem found."""
    layers = _Layers()
    if config_file is not None:
        _apply_file(layers, Path(config_file))
    _apply_env(layers, os.environ if env is None else env)
    if overrides:
        _apply_overrides(layers, overrides)
    _validate(layers)
    if layers.errors:
        raise ConfigError(layers.errors)
    try:
        return _converter.structure(layers.values, Config)
    except cattrs.BaseValidationError as e:  # only reachable if a check above missed something
        raise ConfigError(cattrs.transform_error(e)) from None
