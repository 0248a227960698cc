"""A purerpc client for ggap with a timeout on every call (the CLI and tests use it)."""

from ggap.client._client import (
    DEFAULT_TIMEOUT_S,
    Client,
    ClientError,
    call_metadata,
    open_client,
    parse_endpoint,
    parse_endpoints,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "Client",
    "ClientError",
    "call_metadata",
    "open_client",
    "parse_endpoint",
    "parse_endpoints",
]
