"""The purerpc adapter: exact binding, deadlines, in-flight limit, error mapping,
reflection and health. Everything served to clients goes through here."""

from ggap.rpc.errors import (
    error_from_status,
    format_status_message,
    parse_status_message,
    rpc_error,
    status_from_rpc_error,
    to_rpc_error,
)
from ggap.rpc.health import HealthService
from ggap.rpc.reflection import REFLECTION_V1, REFLECTION_V1ALPHA, reflection_services
from ggap.rpc.server import (
    BindError,
    RpcPolicy,
    current_deadline,
    current_peer,
    guarded_service,
    serve_grpc,
)

__all__ = [
    "REFLECTION_V1",
    "REFLECTION_V1ALPHA",
    "BindError",
    "HealthService",
    "RpcPolicy",
    "current_deadline",
    "current_peer",
    "error_from_status",
    "format_status_message",
    "guarded_service",
    "parse_status_message",
    "reflection_services",
    "rpc_error",
    "serve_grpc",
    "status_from_rpc_error",
    "to_rpc_error",
]
