"""Seed inputs for the fuzz targets: valid encodings, so mutation starts deep inside."""

from __future__ import annotations

from collections.abc import Callable

from ggap.codec import encode_command, encode_command_entry, pack
from ggap.consensus.raft.types import Entry, EntryKind, Message, MessageType, SnapshotMeta
from ggap.pb import kv_pb2 as pb
from ggap.transport import wire
from ggap.types.commands import Compact, Compare, CompareOp, CompareTarget, Delete, Put, Txn, TxnGet, TxnRange


def _commands() -> list[object]:
    return [
        Put("k", b"v"),
        Put("key/with/ttl", b"\x00\xff" * 8, expires_at_ms=1_700_000_000_000),
        Delete("gone"),
        Compact(42),
        Txn(
            compare=(Compare("k", CompareTarget.VALUE, CompareOp.EQUAL, value=b"v"),),
            success=(Put("k", b"w"), TxnGet("k", revision=3), TxnRange(start="a", end="b", limit=5)),
            failure=(Delete("k"),),
        ),
    ]


def peer_wire() -> list[bytes]:
    entry = Entry(index=7, term=2, kind=EntryKind.NORMAL, data=b"payload")
    msgs = [
        Message(
            to=2, frm=1, type=MessageType.APPEND, term=3, index=6, log_term=2, entries=(entry,), commit=5
        ),
        Message(to=2, frm=1, type=MessageType.HEARTBEAT, term=3, commit=5),
        Message(
            to=2,
            frm=1,
            type=MessageType.SNAPSHOT,
            term=3,
            snapshot=SnapshotMeta(index=9, term=3, voters=(1, 2, 3)),
        ),
    ]
    payloads = [
        wire.encode_messages(msgs),
        wire.encode_messages([]),
        wire.encode_handshake(wire.Handshake(cluster_id="c1", from_id=1, to_id=2)),
        wire.encode_reply(wire.HandshakeReply(accepted=False, reason="no")),
        wire.encode_snapshot_ack(True),
    ]
    framed = b"".join(wire.encode_frame(p) for p in payloads)
    return [bytes([c]) + framed for c in (0, 7, 63)] + [b"\x03" + p for p in payloads]


def command_codec() -> list[bytes]:
    out = [encode_command(c) for c in _commands()]  # type: ignore[arg-type]
    out.append(encode_command_entry(3, 1, Put("k", b"v")))
    out += [pack(v) for v in (None, True, -1, 2**63 - 1, -(2**63), "s", b"b", [1, [2, [3]]], (b"", ""))]
    return out


def convert() -> list[bytes]:
    reqs = [
        pb.PutRequest(key="k", value=b"v", ttl_ms=1000, prev_kv=True, quorum=pb.WRITE_QUORUM_ALL),
        pb.DeleteRequest(key="k", prev_kv=True),
        pb.TxnRequest(
            compare=[
                pb.Compare(key="k", target=pb.COMPARE_TARGET_VERSION, op=pb.COMPARE_OP_GREATER, number=1)
            ],
            success=[
                pb.TxnOp(put=pb.PutRequest(key="a", value=b"1")),
                pb.TxnOp(get=pb.GetRequest(key="a")),
                pb.TxnOp(range=pb.RangeRequest(prefix="a", limit=3)),
            ],
            failure=[pb.TxnOp(delete=pb.DeleteRequest(key="a"))],
        ),
        pb.GetRequest(key="k", revision=4, read_mode=pb.READ_MODE_SEQUENTIAL),
        pb.RangeRequest(start="a", end="z", limit=10),
        pb.HistoryRequest(key="k", limit=2),
        # Extreme integers, so mutation explores the edges of the 64-bit fields.
        pb.PutRequest(key="k", ttl_ms=2**62),
        pb.TxnRequest(success=[pb.TxnOp(get=pb.GetRequest(key="k", revision=2**63 - 1))]),
        pb.TxnRequest(
            compare=[
                pb.Compare(
                    key="k", target=pb.COMPARE_TARGET_MOD_REVISION, op=pb.COMPARE_OP_LESS, number=-(2**63)
                )
            ]
        ),
    ]
    from tests.fuzz.targets import _REQUESTS

    return [bytes([_REQUESTS.index(type(r))]) + r.SerializeToString() for r in reqs]


def h2_frontdoor() -> list[bytes]:
    """Client byte streams (after the preface, which the target adds): good calls, an
    oversized declaration, unfinished messages, a reset, a PING."""
    import struct

    import h2.config
    import h2.connection

    def call(conn: h2.connection.H2Connection, body: bytes, *, end: bool = True, extra: tuple = ()) -> int:
        sid: int = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/ginnungagap.v1.KvService/Put"),
                (":authority", "x"),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                *extra,
            ],
        )
        conn.send_data(sid, body, end_stream=end)
        return sid

    message = pb.PutRequest(key="k", value=b"v" * 100).SerializeToString()
    out = []
    for first in (0x80 | 63, 15):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        call(conn, struct.pack(">?I", False, len(message)) + message)
        call(conn, struct.pack(">?I", False, 10**9) + b"x" * 100)
        for _ in range(3):
            call(conn, struct.pack(">?I", False, 1000) + b"y" * 900, end=False)
        sid = call(conn, struct.pack(">?I", True, 5) + b"zzzzz", extra=(("grpc-encoding", "gzip"),))
        conn.reset_stream(sid)
        conn.ping(b"12345678")
        data = conn.data_to_send()
        out.append(bytes([first]) + data[len(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") :])
    return out


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "peer_wire": peer_wire,
    "command_codec": command_codec,
    "convert": convert,
    "h2_frontdoor": h2_frontdoor,
}
