"""The one mapping between ggap errors and gRPC statuses.

purerpc handlers cannot send trailing metadata, so an error's metadata (for example
`ggap-leader-id`) travels folded into the status message as a trailing
"(key=value; key=value)" group that `parse_status_message` takes apart again.

A status code can stand for more than one error class: `ggap-reason` then names the class
(`NOT_LEADER`: a NotLeader, not just any UNAVAILABLE), so a program never has to read the
human part of the message.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

import purerpc
from purerpc.grpclib.exceptions import RpcFailedError
from purerpc.grpclib.status import Status

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
    StatusCode,
    StorageCorrupt,
    Unavailable,
    Unimplemented,
)

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error"

# purerpc's exception class per code, so purerpc clients see the specific subclass.
_RPC_ERROR_CLASSES: dict[StatusCode, type[RpcFailedError]] = {
    StatusCode.CANCELLED: purerpc.CancelledError,
    StatusCode.UNKNOWN: purerpc.UnknownError,
    StatusCode.INVALID_ARGUMENT: purerpc.InvalidArgumentError,
    StatusCode.DEADLINE_EXCEEDED: purerpc.DeadlineExceededError,
    StatusCode.NOT_FOUND: purerpc.NotFoundError,
    StatusCode.ALREADY_EXISTS: purerpc.AlreadyExistsError,
    StatusCode.PERMISSION_DENIED: purerpc.PermissionDeniedError,
    StatusCode.RESOURCE_EXHAUSTED: purerpc.ResourceExhaustedError,
    StatusCode.FAILED_PRECONDITION: purerpc.FailedPreconditionError,
    StatusCode.ABORTED: purerpc.AbortedError,
    StatusCode.OUT_OF_RANGE: purerpc.OutOfRangeError,
    StatusCode.UNIMPLEMENTED: purerpc.UnimplementedError,
    StatusCode.INTERNAL: purerpc.InternalError,
    StatusCode.UNAVAILABLE: purerpc.UnavailableError,
    StatusCode.DATA_LOSS: purerpc.DataLossError,
    StatusCode.UNAUTHENTICATED: purerpc.UnauthenticatedError,
}

# Client side: which GgapError to rebuild for a status (codes not listed become GgapError).
_GGAP_ERROR_CLASSES: dict[StatusCode, type[GgapError]] = {
    StatusCode.CANCELLED: Cancelled,
    StatusCode.INVALID_ARGUMENT: InvalidArgument,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    StatusCode.NOT_FOUND: NotFound,
    StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    StatusCode.OUT_OF_RANGE: OutOfRange,
    StatusCode.INTERNAL: Internal,
    StatusCode.UNAVAILABLE: Unavailable,
    StatusCode.DATA_LOSS: StorageCorrupt,
    StatusCode.UNIMPLEMENTED: Unimplemented,
}

# Metadata naming the error class where the status code alone does not.
REASON_KEY = "ggap-reason"
NOT_LEADER_REASON = "NOT_LEADER"
SESSION_EXPIRED_REASON = "SESSION_EXPIRED"

_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_TRAILER_RE = re.compile(r"^(?P<message>.*) \((?P<pairs>[^()]*)\)$", re.DOTALL)
# Values are percent-encoded so "(", ")", ";" and "=" in them cannot break parsing.
_VALUE_SAFE = "-._~:/@+,"


def format_status_message(message: str, metadata: dict[str, str]) -> str:
    """Fold metadata into the message; keys sorted so the text is stable."""
    pairs = [
        f"{k.lower()}={quote(str(v), safe=_VALUE_SAFE)}"
        for k, v in sorted(metadata.items())
        if _KEY_RE.fullmatch(k.lower())
    ]
    if not pairs:
        return message
    return f"{message} ({'; '.join(pairs)})"


def parse_status_message(text: str) -> tuple[str, dict[str, str]]:
    """Inverse of `format_status_message`; text without a well-formed trailer is all message."""
    m = _TRAILER_RE.match(text)
    if m is None:
        return text, {}
    metadata: dict[str, str] = {}
    for item in m.group("pairs").split("; "):
        key, sep, value = item.partition("=")
        if not sep or not _KEY_RE.fullmatch(key):
            return text, {}
        metadata[key] = unquote(value)
    return m.group("message"), metadata


def _metadata_of(exc: GgapError) -> dict[str, str]:
    md = dict(exc.metadata)
    if isinstance(exc, NotLeader):
        # "Refused before doing anything": a forwarding node may retry it elsewhere.
        md.setdefault(REASON_KEY, NOT_LEADER_REASON)
    if isinstance(exc, SessionExpired):
        md.setdefault(REASON_KEY, SESSION_EXPIRED_REASON)
        if exc.session:
            md.setdefault("ggap-session", str(exc.session))
    if isinstance(exc, OutOfRange):
        # Clients need these to resume a watch or pick a readable revision.
        if exc.compact_revision:
            md.setdefault("ggap-compact-revision", str(exc.compact_revision))
        if exc.current_revision:
            md.setdefault("ggap-current-revision", str(exc.current_revision))
    return md


def rpc_error(code: StatusCode, message: str) -> RpcFailedError:
    """A purerpc error carrying `code`; OK is not an error, so it becomes INTERNAL."""
    if code == StatusCode.OK:
        code = StatusCode.INTERNAL
    cls = _RPC_ERROR_CLASSES.get(code)
    if cls is None:
        return RpcFailedError(Status(int(code), message))
    return cls(message)


def to_rpc_error(exc: BaseException, *, where: str = "") -> RpcFailedError:
    """Turn any exception escaping a handler into the status the client should see.

    Errors we raise on purpose keep their code and message; anything else is a bug,
    so its traceback goes to the server log and the client only learns "internal error".
    """
    # A handler's nursery wraps even a single error in a group (trio's strict groups).
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, RpcFailedError):
        return exc
    if isinstance(exc, GgapError):
        return rpc_error(exc.code, format_status_message(exc.message, _metadata_of(exc)))
    if isinstance(exc, NotImplementedError):
        # The generated servicer bases raise this for methods nobody implemented.
        return rpc_error(StatusCode.UNIMPLEMENTED, "method not implemented")
    log.error("unexpected error in %s", where or "rpc handler", exc_info=exc)
    return rpc_error(StatusCode.INTERNAL, INTERNAL_MESSAGE)


def status_from_rpc_error(exc: RpcFailedError) -> tuple[StatusCode, str]:
    """Client side: the status code and message of a failed purerpc call."""
    status = exc.status
    try:
        code = StatusCode(status.int_value)
    except ValueError:
        code = StatusCode.UNKNOWN
    return code, status.status_message or ""


def error_from_status(code: StatusCode, text: str) -> GgapError:
    """Client side: rebuild the GgapError a server raised, metadata included."""
    message, metadata = parse_status_message(text)
    err: GgapError
    if code == StatusCode.UNAVAILABLE:
        leader = metadata.get("ggap-leader-id", "")
        leader_id = int(leader) if leader.isdigit() else None
        if metadata.get(REASON_KEY) == NOT_LEADER_REASON:
            # NotLeader adds its prefix to the message itself.
            err = NotLeader(message.removeprefix(f"{NotLeader.PREFIX}: "), leader_id=leader_id)
        else:
            err = Unavailable(message, leader_id=leader_id)
    elif code == StatusCode.OUT_OF_RANGE:
        compact = metadata.get("ggap-compact-revision", "0")
        current = metadata.get("ggap-current-revision", "0")
        err = OutOfRange(
            message,
            compact_revision=int(compact) if compact.isdigit() else 0,
            current_revision=int(current) if current.isdigit() else 0,
        )
    elif code == StatusCode.FAILED_PRECONDITION and metadata.get(REASON_KEY) == SESSION_EXPIRED_REASON:
        session = metadata.get("ggap-session", "0")
        err = SessionExpired(message, session=int(session) if session.isdigit() else 0)
    else:
        err = _GGAP_ERROR_CLASSES.get(code, GgapError)(message)
        if type(err) is GgapError:
            # Keep the real code for statuses with no dedicated class (e.g. ABORTED).
            err.code = code
    err.metadata.update(metadata)
    return err
