"""The one binary codec: tagged values, commands, membership changes, log entry frames, MVCC
version selection.

The byte-level functions come from the compiled `ggap._fastlog` when it is importable and
`GGAP_NO_EXTENSIONS` is unset, else from the pure-Python reference `ggap.codec._pure`; both
produce identical bytes and raise CodecError on bad input. Formats are described in _pure.
"""

from __future__ import annotations

import os

from ggap.codec._pure import (
    ENTRY_HEADER_SIZE,
    FORMAT_VERSION,
    MAX_DEPTH,
    decode_entry,
    encode_entry,
    pack,
    unpack,
    version_at,
    visible_versions,
)
from ggap.codec.commands import COMMAND_FORMAT_VERSION, command_from_value, command_to_value
from ggap.codec.confchange import (
    CONF_CHANGE_ADD_LEARNER,
    CONF_CHANGE_FORMAT_VERSION,
    CONF_CHANGE_PROMOTE,
    CONF_CHANGE_REMOVE,
    conf_change_from_value,
    conf_change_to_value,
    member_context_from_value,
    member_context_to_value,
)
from ggap.codec.origin import (
    ORIGIN_HEADER_SIZE,
    Origin,
    decode_refusals,
    encode_refusals,
    is_stamped,
    read_origin,
    stamp_origin,
    strip_origin,
)
from ggap.codec.results import RESULT_FORMAT_VERSION, SessionOutcome, outcome_from_value, outcome_to_value
from ggap.types.commands import Command
from ggap.types.errors import CodecError

HAS_FASTLOG = False
IMPL = "py"

if not os.environ.get("GGAP_NO_EXTENSIONS"):
    try:
        from ggap._fastlog import (
            decode_entry,
            encode_entry,
            pack,
            unpack,
            version_at,
            visible_versions,
        )
    except ImportError:
        pass
    else:
        HAS_FASTLOG = True
        IMPL = "c"

# The entry frame's kind byte: plain ints, because the codec stores what it is given and
# knows no Raft. ggap.consensus.raft.types.EntryKind is the one enum; its values are these
# (checked by tests/unit/test_codec.py), so the driver stores `int(entry.kind)` as is.
ENTRY_KIND_COMMAND = 1  # payload: an encoded command (encode_command)
ENTRY_KIND_CONF_CHANGE = 2  # payload: an encoded membership change (encode_conf_change)
ENTRY_KIND_NOOP = 3  # appended by a new leader; empty payload


def encode_command(cmd: Command) -> bytes:
    """Serialise a command for the log (versioned; see ggap.codec.commands)."""
    return pack(command_to_value(cmd))


def decode_command(data: bytes) -> Command:
    """Inverse of encode_command; CodecError for anything it did not produce."""
    return command_from_value(unpack(data))


def encode_outcome(outcome: SessionOutcome) -> bytes:
    """Serialise what a session keeps of a write's outcome (see ggap.codec.results)."""
    return pack(outcome_to_value(outcome))


def decode_outcome(data: bytes) -> SessionOutcome:
    return outcome_from_value(unpack(data))


def encode_conf_change(change_type: int, node_id: int, context: bytes = b"") -> bytes:
    """Serialise a membership change (change_type: CONF_CHANGE_*) for an ENTRY_KIND_CONF_CHANGE
    entry; `context` is opaque to the codec and to Raft (the driver's, e.g. an address)."""
    return pack(conf_change_to_value(change_type, node_id, context))


def decode_conf_change(data: bytes) -> tuple[int, int, bytes]:
    """Inverse of encode_conf_change: (type, node_id, context); CodecError for anything else."""
    return conf_change_from_value(unpack(data))


def encode_member_context(client_addr: str, cluster_addr: str) -> bytes:
    """The context of an ADD_LEARNER change: the new member's addresses."""
    return pack(member_context_to_value(client_addr, cluster_addr))


def decode_member_context(data: bytes) -> tuple[str, str]:
    """(client_addr, cluster_addr); CodecError for anything encode_member_context did not make."""
    return member_context_from_value(unpack(data))


def encode_command_entry(index: int, term: int, cmd: Command) -> bytes:
    """A framed ENTRY_KIND_COMMAND log entry carrying `cmd`."""
    return encode_entry(index, term, ENTRY_KIND_COMMAND, encode_command(cmd))


def decode_command_entry(buf: bytes) -> tuple[int, int, Command]:
    """Return (index, term, command) of a command entry; CodecError for other kinds."""
    index, term, kind, payload = decode_entry(buf)
    if kind != ENTRY_KIND_COMMAND:
        raise CodecError(f"entry kind {kind} is not a command entry")
    return index, term, decode_command(payload)


__all__ = [
    "COMMAND_FORMAT_VERSION",
    "CONF_CHANGE_ADD_LEARNER",
    "CONF_CHANGE_FORMAT_VERSION",
    "CONF_CHANGE_PROMOTE",
    "CONF_CHANGE_REMOVE",
    "ENTRY_HEADER_SIZE",
    "ENTRY_KIND_COMMAND",
    "ENTRY_KIND_CONF_CHANGE",
    "ENTRY_KIND_NOOP",
    "FORMAT_VERSION",
    "HAS_FASTLOG",
    "IMPL",
    "MAX_DEPTH",
    "ORIGIN_HEADER_SIZE",
    "RESULT_FORMAT_VERSION",
    "CodecError",
    "Origin",
    "SessionOutcome",
    "decode_command",
    "decode_command_entry",
    "decode_conf_change",
    "decode_entry",
    "decode_member_context",
    "decode_outcome",
    "decode_refusals",
    "encode_command",
    "encode_command_entry",
    "encode_conf_change",
    "encode_entry",
    "encode_member_context",
    "encode_outcome",
    "encode_refusals",
    "is_stamped",
    "pack",
    "read_origin",
    "stamp_origin",
    "strip_origin",
    "unpack",
    "version_at",
    "visible_versions",
]
