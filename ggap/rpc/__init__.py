"""The purerpc adapter: exact binding, deadlines, in-flight limit, error mapping,
reflection and health. Everything served to clients goes through here.

Only the error mapping (ggap.rpc.errors) is imported with the package: the client uses it
too and must not load the serving side, whose names below import their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ggap.rpc.errors import (
    error_from_status,
    format_status_message,
    parse_status_message,
    rpc_error,
    status_from_rpc_error,
    to_rpc_error,
)

if TYPE_CHECKING:
    from ggap.rpc.health import HealthService
    from ggap.rpc.reflection import REFLECTION_V1, REFLECTION_V1ALPHA, reflection_services
    from ggap.rpc.server import (
        BindError,
        RpcPolicy,
        ServerTls,
        current_deadline,
        current_peer,
        guarded_service,
        serve_grpc,
    )

_SERVING_SIDE = {
    "HealthService": "ggap.rpc.health",
    "REFLECTION_V1": "ggap.rpc.reflection",
    "REFLECTION_V1ALPHA": "ggap.rpc.reflection",
    "reflection_services": "ggap.rpc.reflection",
    "BindError": "ggap.rpc.server",
    "RpcPolicy": "ggap.rpc.server",
    "ServerTls": "ggap.rpc.server",
    "current_deadline": "ggap.rpc.server",
    "current_peer": "ggap.rpc.server",
    "guarded_service": "ggap.rpc.server",
    "serve_grpc": "ggap.rpc.server",
}


def __getattr__(name: str) -> Any:
    module = _SERVING_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "REFLECTION_V1",
    "REFLECTION_V1ALPHA",
    "BindError",
    "HealthService",
    "RpcPolicy",
    "ServerTls",
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
