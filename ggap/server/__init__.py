"""The gRPC-facing node: KvService, ClusterService, watch hub, TTL expiry, assembly."""

from ggap.server.node import run_node, serve_node

__all__ = ["run_node", "serve_node"]
