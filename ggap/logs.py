"""Node logging: `text` or `json` lines on stderr, with the node's context.

A JSON line holds `time` (RFC 3339, UTC, milliseconds), `level`, `logger`, `message`,
`node_id`, `term` (the node's current Raft term, once the raft engine is up), `trace_id` and
`span_id` when the line is logged inside a traced request (the OpenTelemetry span current in
the logging task or thread), `exception` for a traceback, and any `extra={...}` fields the
call passed (e.g. `fsync_ms` of a slow fsync).

The term is read through a callable the node registers (`set_term_source`): a plain
attribute read of the engine's copy of the term, no lock and no call into the raft loop.
A line logged from another thread may show a term that changed a moment ago; that is fine
for a log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace as _trace

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

_node_id: int | None = None
_term: Callable[[], int] | None = None


def set_node_id(node_id: int | None) -> None:
    global _node_id
    _node_id = node_id


def set_term_source(term: Callable[[], int] | None) -> None:
    """`term()` gives the current Raft term (cheap, any thread); None: not known (yet)."""
    global _term
    _term = term


def rfc3339(created: float) -> str:
    """`created` (seconds since the epoch) as 2024-05-01T12:34:56.789Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "node_id": _node_id,
        }
        term = _term
        if term is not None:
            try:
                out["term"] = term()
            except Exception:  # a log line must never fail because of its context
                pass
        ctx = _trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text", *, node_id: int | None = None) -> None:
    """Replace the root logger's handlers with one stderr handler in `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    set_node_id(node_id)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


class EveryInterval:
    """Rate limit for a recurring event's log line: `due()` is True at most once per
    `interval_s` and says how many events were suppressed since the last line."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._last = -float("inf")
        self.suppressed = 0

    def due(self) -> int | None:
        """None: stay quiet (counted); else the number of suppressed events before this one."""
        now = time.monotonic()
        if now - self._last < self._interval:
            self.suppressed += 1
            return None
        self._last = now
        count, self.suppressed = self.suppressed, 0
        return count


__all__ = [
    "FORMATS",
    "EveryInterval",
    "JsonFormatter",
    "configure_logging",
    "rfc3339",
    "set_node_id",
    "set_term_source",
]
