"""The error hierarchy. Every error a client can see carries its gRPC status code here,
so the RPC layer needs exactly one mapping (ggap.rpc.errors) and no per-handler logic."""

from __future__ import annotations

import enum


class StatusCode(enum.IntEnum):
    """gRPC status codes (numbers as on the wire), kept here so types stay grpc-free."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class GgapError(Exception):
    """Base of every error we raise on purpose. `code` decides the gRPC status."""

    code: StatusCode = StatusCode.INTERNAL

    def __init__(self, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        # Extra ASCII metadata the RPC layer may attach (e.g. ggap-leader-id).
        self.metadata = metadata


class InvalidArgument(GgapError):
    code = StatusCode.INVALID_ARGUMENT


class OutOfRange(GgapError):
    """A revision below the compacted revision or above the current one."""

    code = StatusCode.OUT_OF_RANGE

    def __init__(self, message: str, *, compact_revision: int = 0, current_revision: int = 0) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision
        self.current_revision = current_revision


class Unavailable(GgapError):
    code = StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, leader_id: int | None = None) -> None:
        md = {"ggap-leader-id": str(leader_id)} if leader_id else {}
        super().__init__(message, **md)
        self.leader_id = leader_id


class NotLeader(Unavailable):
    """This node cannot order a write; the server forwards it to `leader_id` (None: unknown).

    Refused before anything happened, so a forwarding node may retry it elsewhere. On the
    wire it is UNAVAILABLE with `ggap-reason=NOT_LEADER` (ggap.rpc.errors), which is how a
    program tells it from an outcome it does not know; the message starts with PREFIX for
    people to read."""

    PREFIX = "not leader"

    def __init__(self, message: str, *, leader_id: int | None = None) -> None:
        super().__init__(f"{self.PREFIX}: {message}", leader_id=leader_id)


class DeadlineExceeded(GgapError):
    code = StatusCode.DEADLINE_EXCEEDED


class ResourceExhausted(GgapError):
    code = StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(GgapError):
    code = StatusCode.FAILED_PRECONDITION


class SessionExpired(FailedPrecondition):
    """A write names a session the state machine does not hold (expired, evicted, closed,
    or never opened). Never applied: the client must open a new session, and cannot know
    whether an earlier unanswered attempt of this write was applied. On the wire it is
    FAILED_PRECONDITION with `ggap-reason=SESSION_EXPIRED`."""

    def __init__(self, message: str, *, session: int = 0) -> None:
        super().__init__(message)
        self.session = session


class NotFound(GgapError):
    code = StatusCode.NOT_FOUND


class Cancelled(GgapError):
    code = StatusCode.CANCELLED


class Internal(GgapError):
    code = StatusCode.INTERNAL


class CodecError(ValueError):
    """Bytes that do not decode: truncated, corrupt (CRC mismatch) or of an unknown version.
    Never shown to clients as such; storage turns it into StorageCorrupt."""


class StorageCorrupt(GgapError):
    """On-disk state that fails validation. The node must stop rather than serve it."""

    code = StatusCode.DATA_LOSS


class Unimplemented(GgapError):
    code = StatusCode.UNIMPLEMENTED
