"""The `ggap` command group, `ggap node` and `ggap inspect`.

The server and storage packages are imported inside their commands, so client commands
start fast and keep working in an install (or a checkout) without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

import ggap
from ggap.cli import _output as out
from ggap.cli._cluster import CLUSTER_COMMANDS
from ggap.cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    fail,
    global_client_options,
    output_option,
)
from ggap.cli._kv import KV_COMMANDS
from ggap.cli._members import MEMBER_COMMANDS
from ggap.cli._snapshot import SNAPSHOT_COMMANDS
from ggap.config import ConfigError, load_config
from ggap.types.errors import GgapError, StatusCode


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(ggap.__version__, "--version", prog_name="ggap")
@global_client_options
def cli(**global_options: Any) -> None:
    """Ginnungagap: a Raft-replicated MVCC key-value store.

    The client options (--endpoints, --timeout, -o, --cacert, --cert, --key) may also come
    before the command, as etcdctl users type them: `ggap --endpoints h:2379 get k`. Given
    in both places, the one after the command wins.

    Exit codes: 0 ok; 2 bad usage or a request the server refused as it stands
    (INVALID_ARGUMENT, OUT_OF_RANGE, FAILED_PRECONDITION); 1 any other failure, e.g.
    UNAVAILABLE, DEADLINE_EXCEEDED or a missing key. Errors go to stderr as
    `Error: CODE: message`.
    """
    click.get_current_context().obj = {k: v for k, v in global_options.items() if v is not None}


for _command in (*KV_COMMANDS, *MEMBER_COMMANDS, *CLUSTER_COMMANDS, *SNAPSHOT_COMMANDS):
    cli.add_command(_command)


@cli.command("node")
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file layered over the defaults (see config/default.toml).",
)
@click.option("--node-id", type=int, help="This member's id (node.id).")
@click.option("--client-addr", help="host:port for clients (node.client_addr).")
@click.option("--cluster-addr", help="host:port for peers (node.cluster_addr).")
@click.option("--data-dir", help="Directory for raft.db and kv.db (node.data_dir).")
@click.option("--history-depth", type=int, help="Versions kept per key (mvcc.history_depth).")
@click.option(
    "--peers",
    help="Initial voters' cluster addresses, ID=HOST:PORT,... this node included (raft.peers).",
)
@click.option(
    "--join",
    help="Join a running cluster: members' client HOST:PORT,... to ask (node.join). With an "
    "empty data dir the node is added as a learner and seeds itself from a snapshot.",
)
@click.option(
    "--auto-promote",
    is_flag=True,
    default=None,
    help="After joining, become a voter once caught up (node.auto_promote).",
)
@click.option("--cert-file", help="PEM certificate for TLS on the client port (tls.cert_file).")
@click.option("--key-file", help="PEM key of --cert-file (tls.key_file).")
@click.option(
    "--trusted-ca-file",
    help="PEM CA bundle for client certificates and node-to-node calls (tls.trusted_ca_file).",
)
@click.option(
    "--client-cert-auth",
    is_flag=True,
    default=None,
    help="Require client certificates signed by --trusted-ca-file (tls.client_cert_auth).",
)
@click.option("--peer-cert-file", help="PEM certificate for mutual TLS with peers (peer_tls.cert_file).")
@click.option("--peer-key-file", help="PEM key of --peer-cert-file (peer_tls.key_file).")
@click.option(
    "--peer-trusted-ca-file",
    help="PEM CA bundle every peer's certificate must chain to (peer_tls.trusted_ca_file).",
)
@click.option(
    "--peer-cert-allowed-cn",
    help="Comma-separated CNs a peer's certificate must have one of (peer_tls.allowed_cn).",
)
@click.option(
    "--peer-cert-allowed-hostname",
    help="Comma-separated names/IPs one of a peer certificate's SANs must match (peer_tls.allowed_hostname).",
)
@click.option(
    "--metrics-addr",
    help="HOST:PORT serving Prometheus /metrics and /healthz over HTTP (metrics.listen_addr; default off).",
)
@click.option("--log-level", help="debug, info, warning, error or critical (log.level).")
@click.option(
    "--log-format",
    help="text (human-readable) or json (one JSON object per line) (log.format).",
)
def node_cmd(
    config_file: Path | None,
    node_id: int | None,
    client_addr: str | None,
    cluster_addr: str | None,
    data_dir: str | None,
    history_depth: int | None,
    peers: str | None,
    join: str | None,
    auto_promote: bool | None,
    cert_file: str | None,
    key_file: str | None,
    trusted_ca_file: str | None,
    client_cert_auth: bool | None,
    peer_cert_file: str | None,
    peer_key_file: str | None,
    peer_trusted_ca_file: str | None,
    peer_cert_allowed_cn: str | None,
    peer_cert_allowed_hostname: str | None,
    metrics_addr: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run a node until SIGINT/SIGTERM.

    Settings come from the built-in defaults, then --config FILE, then
    GINNUNGAGAP_<SECTION>__<KEY> environment variables, then these flags.
    """
    flags = {
        "node.id": node_id,
        "node.client_addr": client_addr,
        "node.cluster_addr": cluster_addr,
        "node.data_dir": data_dir,
        "mvcc.history_depth": history_depth,
        "raft.peers": peers,
        "node.join": join,
        "node.auto_promote": auto_promote,
        "tls.cert_file": cert_file,
        "tls.key_file": key_file,
        "tls.trusted_ca_file": trusted_ca_file,
        "tls.client_cert_auth": client_cert_auth,
        "peer_tls.cert_file": peer_cert_file,
        "peer_tls.key_file": peer_key_file,
        "peer_tls.trusted_ca_file": peer_trusted_ca_file,
        "peer_tls.allowed_cn": peer_cert_allowed_cn,
        "peer_tls.allowed_hostname": peer_cert_allowed_hostname,
        "metrics.listen_addr": metrics_addr,
        "log.level": log_level,
        "log.format": log_format,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    try:
        config = load_config(config_file, env=os.environ, overrides=overrides)
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"Error: config: {line}", err=True)
        raise click.exceptions.Exit(EXIT_USAGE) from None

    try:  # run_node sets up logging and signal handling itself
        from ggap.server import run_node
    except ImportError as e:
        fail(StatusCode.UNIMPLEMENTED.name, f"the server is not available in this build: {e}", EXIT_FAILURE)
    try:
        run_node(config)
    except GgapError as e:
        fail(e.code.name, e.message, EXIT_FAILURE)
    except OSError as e:  # e.g. address in use, data dir not writable
        fail(StatusCode.UNAVAILABLE.name, str(e), EXIT_FAILURE)
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@cli.command("inspect")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@output_option
def inspect_cmd(data_dir: Path, output: str) -> None:
    """Describe a node's data directory offline (the node must not be running)."""
    try:
        from ggap.storage.inspect import inspect_data_dir
    except ImportError as e:
        fail(StatusCode.UNIMPLEMENTED.name, f"inspect is not available in this build: {e}", EXIT_FAILURE)
    try:
        info: dict[str, Any] = inspect_data_dir(data_dir)
    except GgapError as e:
        fail(e.code.name, e.message, EXIT_FAILURE)
    except OSError as e:
        fail(StatusCode.UNAVAILABLE.name, str(e), EXIT_FAILURE)
    if output.lower() == "json":
        click.echo(json.dumps(info, default=_json_default))
    else:
        click.echo(out.render_table(("FIELD", "VALUE"), out.flatten(info)))


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ggap")
