"""CPU per call of the client port's HTTP/2 + gRPC layer alone: `python -m bench.frontdoor`.

No sockets, no event loop, no handler: an h2 client connection makes grpcio-like unary
Put requests (the same headers grpcio sends), and the server side is the front door's
own sans-I/O connection (ggap.rpc.frontdoor.GuardedConnection, i.e. purerpc + ggap.rpc.http2 + our
guards), which parses them and answers each with headers, one message and OK trailers,
as a unary handler does. Only the server side's time is counted.

It tells how much of a Put's server CPU the HTTP/2 layer takes before Raft, SQLite or
trio do anything: compare with etcd's CPU per Put of a whole 3-member cluster from
`make bench-compare`. Add `--profile` for cProfile's top functions of the server side.
"""

from __future__ import annotations

import cProfile
import pstats
import struct
import time

import click
import h2.config
import h2.connection
import h2.events
from purerpc.grpclib.config import GRPCConfiguration
from purerpc.grpclib.events import RequestReceived
from purerpc.grpclib.status import Status, StatusCode

from ggap.pb import kv_pb2 as pb
from ggap.rpc.frontdoor import ConnectionLimits, GuardedConnection

_HEADERS = [
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/ginnungagap.v1.KvService/Put"),
    (":authority", "127.0.0.1:17000"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    ("user-agent", "grpc-python/1.66.0 grpc-c/43.0.0 (linux; chttp2)"),
    ("grpc-accept-encoding", "identity,deflate,gzip"),
    ("grpc-timeout", "4999m"),
]


def _grpc_message(payload: bytes) -> bytes:
    return struct.pack(">?I", False, len(payload)) + payload


class _Pair:
    """A client and the front door's server connection, past the preface and SETTINGS."""

    def __init__(self) -> None:
        self.server = GuardedConnection(
            GRPCConfiguration(client_side=False, max_message_length=4 << 20), ConnectionLimits()
        )
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.client.initiate_connection()
        self.server.receive_data(self.client.data_to_send())
        self.client.receive_data(self.server.h2_connection.data_to_send())
        self.server.receive_data(self.client.data_to_send())

    def round(self, in_flight: int, request: bytes, answer: bytes) -> float:
        """Send `in_flight` calls in one write, answer them all; the server's seconds."""
        client, server = self.client, self.server
        sids = []
        for _ in range(in_flight):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, _HEADERS)
            client.send_data(sid, request, end_stream=True)
            sids.append(sid)
        data = client.data_to_send()
        t0 = time.perf_counter()
        events = server.receive_data(data)
        for sid in sids:
            server.start_response(sid, "+proto")
            server.send_data(sid, answer)
            server.end_response(sid, Status(StatusCode.OK))
            server.release(sid)
        out = server.h2_connection.data_to_send()
        took = time.perf_counter() - t0
        if sum(isinstance(e, RequestReceived) for e in events) != in_flight:
            raise RuntimeError("the server did not see every request")
        for event in client.receive_data(out):
            if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        return took


def measure(calls: int, in_flight: int, value_size: int = 256) -> float:
    """Server-side microseconds per call (the best of three runs of `calls` calls)."""
    request = _grpc_message(pb.PutRequest(key="bench/00000001", value=b"v" * value_size).SerializeToString())
    header = pb.ResponseHeader(revision=123456, member_id=1, raft_term=2)
    answer = _grpc_message(pb.PutResponse(header=header).SerializeToString())
    best = float("inf")
    for _ in range(3):
        pair = _Pair()
        total = sum(pair.round(in_flight, request, answer) for _ in range(max(1, calls // in_flight)))
        best = min(best, total / (max(1, calls // in_flight) * in_flight))
    return best * 1e6


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--calls", default=6400, show_default=True, type=click.IntRange(min=1))
@click.option("--in-flight", "in_flight", multiple=True, type=click.IntRange(min=1), default=(1, 64))
@click.option("--profile", is_flag=True, help="Also print cProfile's top 25 functions (last --in-flight).")
def main(calls: int, in_flight: tuple[int, ...], profile: bool) -> None:
    """Print the HTTP/2 + gRPC layer's server CPU per unary call (timing for reading only)."""
    for n in in_flight:
        click.echo(f"{n:>4} in flight: {measure(calls, n):7.1f} us per call (HTTP/2 + purerpc + front door)")
    if profile:
        prof = cProfile.Profile()
        prof.runcall(measure, calls, in_flight[-1])
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
