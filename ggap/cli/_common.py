"""What every command shares: exit codes, error printing, the trio runner, option types.

Exit codes: 0 ok; 2 usage errors, client-side invalid input and server INVALID_ARGUMENT /
OUT_OF_RANGE / FAILED_PRECONDITION answers (the request as it stands was refused: retrying
it unchanged will not help until the user acts, e.g. waits for a learner or promotes it);
1 every other failure (UNAVAILABLE, DEADLINE_EXCEEDED, key not found, ...), which a retry
might fix.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import attrs
import click
import trio

from ggap.client import DEFAULT_TIMEOUT_S, AsyncClient, ClientError, parse_endpoints
from ggap.pb import kv_pb2
from ggap.rpc.errors import format_status_message
from ggap.types.errors import GgapError, StatusCode

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_ENDPOINTS = "127.0.0.1:17000"

_USAGE_CODES = frozenset(
    {StatusCode.INVALID_ARGUMENT, StatusCode.OUT_OF_RANGE, StatusCode.FAILED_PRECONDITION}
)

READ_MODES: dict[str, kv_pb2.ReadMode] = {
    "linearizable": kv_pb2.READ_MODE_LINEARIZABLE,
    "sequential": kv_pb2.READ_MODE_SEQUENTIAL,
    "eventual": kv_pb2.READ_MODE_EVENTUAL,
}
QUORUMS: dict[str, kv_pb2.WriteQuorum] = {
    "majority": kv_pb2.WRITE_QUORUM_MAJORITY,
    "all": kv_pb2.WRITE_QUORUM_ALL,
}


def exit_code_for(code: StatusCode) -> int:
    return EXIT_USAGE if code in _USAGE_CODES else EXIT_FAILURE


def fail(code: str, message: str, exit_code: int) -> NoReturn:
    """Print `Error: <CODE>: <message>` on stderr and exit."""
    click.echo(f"Error: {code}: {message}", err=True)
    raise click.exceptions.Exit(exit_code)


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(e) for e in exc.exceptions)
    return False


async def _interruptible(fn: Callable[[], Awaitable[int | None]]) -> int | None:
    """Run `fn`, turning SIGINT into a cancellation at a checkpoint: a KeyboardInterrupt
    raised wherever the signal lands (in the middle of a socket call, say) can leave a
    coroutine half-run and print a RuntimeWarning on the way out. Off the main thread
    (tests invoking commands in a worker) signals cannot be received: run `fn` as is."""
    if threading.current_thread() is not threading.main_thread():
        return await fn()
    interrupted = False
    rc: int | None = None
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signal)
                rc = await fn()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Only the body can fail (on_signal cannot): hand its error on as it was.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    if interrupted:
        raise KeyboardInterrupt
    return rc


def run_async(fn: Callable[[], Awaitable[int | None]], *, interrupt_exit: int = EXIT_INTERRUPTED) -> None:
    """Run a command's async body, turning every failure into a message and an exit code
    (never a traceback, unless GGAP_DEBUG is set). The body may return an exit code."""
    try:
        rc = trio.run(_interruptible, fn)
    except ClientError as e:
        fail(e.code.name, e.message, exit_code_for(e.code))
    except GgapError as e:
        fail(e.code.name, format_status_message(e.message, e.metadata), exit_code_for(e.code))
    except (click.exceptions.Exit, click.ClickException):
        raise
    except BaseException as e:  # the edge of the program: report, do not crash
        if _only_interrupts(e):
            raise click.exceptions.Exit(interrupt_exit) from None
        if not isinstance(e, Exception) or os.environ.get("GGAP_DEBUG"):
            raise
        fail(StatusCode.INTERNAL.name, f"unexpected {type(e).__name__}: {e}", EXIT_FAILURE)
    if rc:
        raise click.exceptions.Exit(rc)


class DurationMs(click.ParamType):
    """A duration in milliseconds: `1500` (ms), `1500ms`, `10s`, `1.5s`, `5m`, `1h`."""

    name = "duration"
    _pattern = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
    _scale = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            ms = value
        else:
            match = self._pattern.match(str(value))
            if match is None:
                self.fail(f"{value!r} is not a duration (e.g. 500, 500ms, 10s, 5m, 1h)", param, ctx)
            ms = round(float(match.group(1)) * self._scale[match.group(2) or "ms"])
        if ms < 1:
            self.fail(f"{value!r} is shorter than 1ms", param, ctx)
        return ms


def _check_endpoints(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        parse_endpoints(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@attrs.frozen
class ClientOptions:
    endpoints: str
    timeout_s: float
    output: str
    # TLS (from --cacert/--cert/--key); None: plaintext.
    tls: ssl.SSLContext | None = None

    @property
    def json(self) -> bool:
        return self.output == "json"


def cli_client(opts: ClientOptions) -> AsyncClient:
    """The client library with the command's options: failover across --endpoints within
    --timeout. A write opens a session (and closes it at the end), so a write whose first
    attempt met a failing node is retried elsewhere and still applied once."""
    return AsyncClient(
        opts.endpoints,
        timeout=opts.timeout_s,
        attempt_timeout=min(opts.timeout_s, 2.0),
        ssl_context=opts.tls,
    )


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"], case_sensitive=False),
        default="table",
        show_default=True,
        help="table: aligned text for people; json: one JSON document per result (proto field names).",
    )(fn)


def client_tls(cacert: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The TLS context for --cacert/--cert/--key (None when none is given: plaintext).
    A bad combination or file is a usage error (exit 2) naming the file."""
    if not (cacert or cert or key):
        return None
    if bool(cert) != bool(key):
        fail(
            StatusCode.INVALID_ARGUMENT.name,
            "--cert and --key go together (env GGAP_CERT, GGAP_KEY)",
            EXIT_USAGE,
        )
    from ggap.tls import TlsFileError, client_context

    try:
        return client_context(cacert or "", cert or "", key or "")
    except TlsFileError as e:
        fail(StatusCode.FAILED_PRECONDITION.name, f"TLS: {e}", EXIT_USAGE)


def tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--cacert/--cert/--key (etcdctl's names), passed on as `tls_cacert`, `tls_cert`,
    `tls_key` (a command's KEY argument keeps its name)."""
    fn = click.option(
        "--key",
        "tls_key",
        envvar="GGAP_KEY",
        default=None,
        help="PEM key of --cert [env GGAP_KEY].",
    )(fn)
    fn = click.option(
        "--cert",
        "tls_cert",
        envvar="GGAP_CERT",
        default=None,
        help="PEM client certificate, for servers run with --client-cert-auth [env GGAP_CERT].",
    )(fn)
    return click.option(
        "--cacert",
        "tls_cacert",
        envvar="GGAP_CACERT",
        default=None,
        help="PEM CA bundle to verify the server with; turns TLS on [env GGAP_CACERT].",
    )(fn)


_CLIENT_PARAMS = ("endpoints", "timeout_s", "output", "tls_cacert", "tls_cert", "tls_key")


def global_client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The client options on the `ggap` group itself (given before the command). No
    defaults or environment here: the command's own options supply those, and a value
    given before the command only replaces a default or an environment value."""
    fn = click.option("--key", "tls_key", default=None, help="As for client commands.")(fn)
    fn = click.option("--cert", "tls_cert", default=None, help="As for client commands.")(fn)
    fn = click.option("--cacert", "tls_cacert", default=None, help="As for client commands.")(fn)
    fn = click.option(
        "-o",
        "--output",
        type=click.Choice(["table", "json"], case_sensitive=False),
        default=None,
        help="As for client commands.",
    )(fn)
    fn = click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="As for client commands.",
    )(fn)
    return click.option(
        "--endpoints", default=None, callback=_check_optional_endpoints, help="As for client commands."
    )(fn)


def _check_optional_endpoints(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else _check_endpoints(ctx, param, value)


def _with_global_options(values: dict[str, Any]) -> dict[str, Any]:
    """Replace defaults and environment values by those given before the command."""
    ctx = click.get_current_context()
    given = ctx.find_root().obj or {}
    out = dict(values)
    for name in _CLIENT_PARAMS:
        source = ctx.get_parameter_source(name)
        if name in given and source in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.ENVIRONMENT,
        ):
            out[name] = given[name]
    return out


def client_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --endpoints/--timeout/--output and the TLS options to a command and pass them
    as `opts` (values given before the command fill in what the command did not get)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = _with_global_options({name: kwargs.pop(name) for name in _CLIENT_PARAMS})
        opts = ClientOptions(
            values["endpoints"],
            values["timeout_s"],
            values["output"].lower(),
            client_tls(values["tls_cacert"], values["tls_cert"], values["tls_key"]),
        )
        return fn(*args, opts=opts, **kwargs)

    decorated = tls_options(output_option(wrapper))
    decorated = click.option(
        "--timeout",
        "timeout_s",
        type=click.FloatRange(min=0, min_open=True),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds allowed for connecting and for each call.",
    )(decorated)
    decorated = click.option(
        "--endpoints",
        envvar="GGAP_ENDPOINTS",
        default=DEFAULT_ENDPOINTS,
        show_default=True,
        callback=_check_endpoints,
        help="Comma-separated host:port list, tried in order until one connects [env GGAP_ENDPOINTS].",
    )(decorated)
    return decorated


def mode_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--mode",
        type=click.Choice(list(READ_MODES), case_sensitive=False),
        default=None,
        help="Read consistency; default: the server's reads.default_mode.",
    )(fn)


def quorum_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--quorum",
        type=click.Choice(list(QUORUMS), case_sensitive=False),
        default=None,
        help="majority (default): OK once committed; all: OK once every voter has applied it.",
    )(fn)


def read_mode(mode: str | None) -> kv_pb2.ReadMode:
    return READ_MODES[mode.lower()] if mode else kv_pb2.READ_MODE_UNSPECIFIED


def write_quorum(quorum: str | None) -> kv_pb2.WriteQuorum:
    return QUORUMS[quorum.lower()] if quorum else kv_pb2.WRITE_QUORUM_UNSPECIFIED
