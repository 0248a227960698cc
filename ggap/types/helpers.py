"""Small helpers every layer may use (no I/O): address formatting and an attrs validator."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["format_addr", "positive"]


def format_addr(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets ("[::1]:2379")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    """attrs validator: the field must be > 0."""
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")
