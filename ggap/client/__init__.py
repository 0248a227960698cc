"""The Python client for ggap.

`Client` (synchronous, thread-safe) and `AsyncClient` (anyio: trio or asyncio) share one
implementation of the policy: failover across endpoints, retries with backoff, sessions
that make retried writes exactly-once, and session-monotonic sequential reads (README
"Python client"). Errors are the typed `GgapError` classes, one per gRPC status class.

`Connection`/`open_connection` are the layer under them: one connection to one node with a
timeout on every call (the server's forwarding and some CLI commands use it directly).
"""

from ggap.client._async import AsyncClient, Compacted
from ggap.client._client import (
    DEFAULT_TIMEOUT_S,
    ClientError,
    Connection,
    call_metadata,
    open_connection,
    parse_endpoint,
    parse_endpoints,
)
from ggap.client._ops import Compare, Op, TxnResult
from ggap.client._sync import Client
from ggap.types import Event, EventType, KeyValue
from ggap.types.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    GgapError,
    Internal,
    InvalidArgument,
    NotFound,
    NotLeader,
    OutOfRange,
    ResourceExhausted,
    SessionExpired,
    StorageCorrupt,
    Unavailable,
    Unimplemented,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "AsyncClient",
    "Cancelled",
    "Client",
    "ClientError",
    "Compacted",
    "Compare",
    "Connection",
    "DeadlineExceeded",
    "Event",
    "EventType",
    "FailedPrecondition",
    "GgapError",
    "Internal",
    "InvalidArgument",
    "KeyValue",
    "NotFound",
    "NotLeader",
    "Op",
    "OutOfRange",
    "ResourceExhausted",
    "SessionExpired",
    "StorageCorrupt",
    "TxnResult",
    "Unavailable",
    "Unimplemented",
    "call_metadata",
    "open_connection",
    "parse_endpoint",
    "parse_endpoints",
]
