"""ggap.rpc.errors: the one GgapError <-> gRPC status mapping, without a network."""

from __future__ import annotations

import logging

import purerpc
import pytest
from purerpc.grpclib.exceptions import RpcFailedError

from ggap.rpc.errors import (
    error_from_status,
    format_status_message,
    parse_status_message,
    rpc_error,
    status_from_rpc_error,
    to_rpc_error,
)
from ggap.types import errors as E


def _all_ggap_errors() -> list[type[E.GgapError]]:
    found: list[type[E.GgapError]] = []
    todo = [E.GgapError]
    while todo:
        cls = todo.pop()
        if cls.__module__ == E.__name__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _all_ggap_errors(), ids=lambda c: c.__name__)
def test_every_ggap_error_keeps_its_code_and_message(cls: type[E.GgapError]) -> None:
    original = cls("went wrong")
    err = to_rpc_error(original)
    assert isinstance(err, RpcFailedError)
    code, text = status_from_rpc_error(err)
    expected = cls.code if cls.code != E.StatusCode.OK else E.StatusCode.INTERNAL
    assert code == expected
    # Only a class that shares its code with another names itself in the metadata.
    message, metadata = parse_status_message(text)
    named = {E.NotLeader: "NOT_LEADER", E.SessionExpired: "SESSION_EXPIRED"}
    assert metadata == ({"ggap-reason": named[cls]} if cls in named else {})
    assert message == original.message and message.endswith("went wrong")
    if cls in named:
        assert type(error_from_status(code, text)) is cls


def test_session_expired_is_rebuilt_with_its_session() -> None:
    code, text = status_from_rpc_error(to_rpc_error(E.SessionExpired("gone", session=42)))
    back = error_from_status(code, text)
    assert isinstance(back, E.SessionExpired) and back.session == 42 and back.message == "gone"
    # A plain FailedPrecondition stays one.
    code, text = status_from_rpc_error(to_rpc_error(E.FailedPrecondition("busy")))
    assert type(error_from_status(code, text)) is E.FailedPrecondition


def test_specific_purerpc_subclasses_are_used() -> None:
    assert isinstance(to_rpc_error(E.Unavailable("x")), purerpc.UnavailableError)
    assert isinstance(to_rpc_error(E.InvalidArgument("x")), purerpc.InvalidArgumentError)
    assert isinstance(rpc_error(E.StatusCode.OK, "x"), purerpc.InternalError)


def test_leader_id_is_folded_into_message_and_parsed_back() -> None:
    err = to_rpc_error(E.Unavailable("no leader", leader_id=3))
    code, message = status_from_rpc_error(err)
    assert code == E.StatusCode.UNAVAILABLE
    assert message == "no leader (ggap-leader-id=3)"
    back = error_from_status(code, message)
    assert isinstance(back, E.Unavailable)
    assert back.leader_id == 3
    assert back.message == "no leader"
    assert back.metadata == {"ggap-leader-id": "3"}


def test_not_leader_is_recognised_by_its_reason_not_its_text() -> None:
    code, text = status_from_rpc_error(to_rpc_error(E.NotLeader("leadership moved", leader_id=2)))
    assert code == E.StatusCode.UNAVAILABLE
    # What existing clients see: UNAVAILABLE, the same message, one more metadata pair.
    assert text == "not leader: leadership moved (ggap-leader-id=2; ggap-reason=NOT_LEADER)"
    back = error_from_status(code, text)
    assert isinstance(back, E.NotLeader)
    assert back.message == "not leader: leadership moved" and back.leader_id == 2
    # The words alone are only an Unavailable now; the reason alone on another code is ignored.
    assert type(error_from_status(code, "not leader: leadership moved")) is E.Unavailable
    assert type(error_from_status(E.StatusCode.INTERNAL, "x (ggap-reason=NOT_LEADER)")) is E.Internal
    # Rebuilt and sent on again, it still says the same.
    assert status_from_rpc_error(to_rpc_error(back)) == (code, text)


def test_out_of_range_revisions_travel() -> None:
    err = to_rpc_error(E.OutOfRange("revision 5 compacted", compact_revision=9))
    code, message = status_from_rpc_error(err)
    back = error_from_status(code, message)
    assert isinstance(back, E.OutOfRange)
    assert back.compact_revision == 9
    assert back.message == "revision 5 compacted"


@pytest.mark.parametrize(
    ("message", "metadata"),
    [
        ("plain", {}),
        ("with (parens) inside", {}),
        ("odd value", {"ggap-x": "a; b=(c)"}),
        ("two", {"ggap-b": "2", "ggap-a": "1"}),
        ("", {"ggap-leader-id": "7"}),
    ],
)
def test_format_parse_roundtrip(message: str, metadata: dict[str, str]) -> None:
    assert parse_status_message(format_status_message(message, metadata)) == (message, metadata)


def test_unparseable_trailer_is_all_message() -> None:
    assert parse_status_message("bad key (not a pair)") == ("bad key (not a pair)", {})
    assert parse_status_message("x (Upper=1)") == ("x (Upper=1)", {})


def test_unexpected_exception_is_internal_and_logged_not_leaked(caplog: pytest.LogCaptureFixture) -> None:
    def fail() -> None:
        raise ValueError("secret-detail-1234")

    try:
        fail()
    except ValueError as exc:
        with caplog.at_level(logging.ERROR, logger="ggap.rpc.errors"):
            err = to_rpc_error(exc, where="/svc/M")
    code, message = status_from_rpc_error(err)
    assert code == E.StatusCode.INTERNAL
    assert message == "internal error"
    assert "secret-detail-1234" not in message
    # The server log gets the traceback.
    assert any(r.exc_info and "secret-detail-1234" in str(r.exc_info[1]) for r in caplog.records)
    assert "/svc/M" in caplog.text


def test_not_implemented_is_unimplemented() -> None:
    code, _ = status_from_rpc_error(to_rpc_error(NotImplementedError()))
    assert code == E.StatusCode.UNIMPLEMENTED


def test_single_error_in_a_group_keeps_its_code() -> None:
    group = ExceptionGroup("nursery", [E.FailedPrecondition("learner lags")])
    assert status_from_rpc_error(to_rpc_error(group)) == (E.StatusCode.FAILED_PRECONDITION, "learner lags")
    two = ExceptionGroup("nursery", [E.NotFound("a"), E.NotFound("b")])
    assert status_from_rpc_error(to_rpc_error(two))[0] == E.StatusCode.INTERNAL


def test_purerpc_errors_pass_through() -> None:
    err = purerpc.AbortedError("retry")
    assert to_rpc_error(err) is err
    back = error_from_status(*status_from_rpc_error(err))
    assert type(back) is E.GgapError
    assert back.code == E.StatusCode.ABORTED
