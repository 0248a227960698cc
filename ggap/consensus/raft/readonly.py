"""ReadIndex rounds (Raft thesis §6.4), batched so many reads share one heartbeat round.

A read needs proof that we were still leader after it arrived. The leader records its commit
index when a round starts and broadcasts a heartbeat carrying the round id (later periodic
heartbeats carry it too, covering a lost one); once a quorum echoes that id back, every read in
the round may be served at the recorded index. One round is in flight at a time; reads
arriving meanwhile wait for the next one. The core decides when a round starts (in `ready()`,
so one handling pass of reads shares it, and only after the leader committed an entry of its
own term) and who counts towards quorum.
"""

from __future__ import annotations

import attrs


@attrs.frozen(slots=True)
class ReadRequest:
    context: bytes
    frm: int  # who asked: the leader itself or the follower that forwarded it


@attrs.define(eq=False)
class ReadRound:
    id: int
    index: int  # the leader's commit index when the round started
    requests: list[ReadRequest]
    acks: set[int] = attrs.field(factory=set)

    @property
    def context(self) -> bytes:
        return encode_round(self.id)


def encode_round(round_id: int) -> bytes:
    return round_id.to_bytes(8, "big")


def decode_round(context: bytes) -> int | None:
    """The round id in a heartbeat context, or None for a plain heartbeat."""
    if len(context) != 8:
        return None
    return int.from_bytes(context, "big")


class ReadOnly:
    def __init__(self) -> None:
        self.pending: list[ReadRequest] = []
        self.round: ReadRound | None = None
        # Never reset: a late ack from a finished (or abandoned) round can never match a new one.
        self._next_id = 1

    def add(self, req: ReadRequest) -> None:
        self.pending.append(req)

    def take_pending(self) -> list[ReadRequest]:
        out, self.pending = self.pending, []
        return out

    def start_round(self, index: int) -> ReadRound:
        if self.round is not None:
            raise RuntimeError("a ReadIndex round is already in flight")
        self.round = ReadRound(id=self._next_id, index=index, requests=self.take_pending())
        self._next_id += 1
        return self.round

    def in_flight_context(self) -> bytes:
        return self.round.context if self.round is not None else b""

    def ack(self, context: bytes, frm: int) -> ReadRound | None:
        """Record a heartbeat ack; returns the round it belongs to (None if stale or plain)."""
        rid = decode_round(context)
        if self.round is None or rid != self.round.id:
            return None
        self.round.acks.add(frm)
        return self.round

    def finish_round(self) -> ReadRound:
        if self.round is None:
            raise RuntimeError("no ReadIndex round in flight")
        done, self.round = self.round, None
        return done

    def reset(self) -> None:
        """Leadership lost or gained: every waiting read is dropped (the driver times them out)."""
        self.pending = []
        self.round = None
