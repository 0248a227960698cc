"""The deterministic simulator: its parts, a small sweep against the real core, planted bugs
that it must catch, and determinism (same seed, same trace)."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from typing import Any

import attrs
import pytest

from ggap.consensus.raft.membership import encode_conf_change
from ggap.consensus.raft.storage import LogCompactedError, LogUnavailableError
from ggap.consensus.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
)
from ggap.consensus.raft.types import MessageType as MT
from ggap.sim import SimConfig, Simulator, run_seed
from ggap.sim.__main__ import main
from ggap.sim.invariants import Invariants, InvariantViolation
from ggap.sim.kv import Command, KVStateMachine, Opened, Refused
from ggap.sim.network import SimNetwork
from ggap.sim.storage import SimStorage
from ggap.testing.lincheck import check
from ggap.types import Member, Membership

# Pinned seeds that fail quickly with each planted bug: (seeds, safety ticks, what must fail).
# skip-persist-before-vote: an APPEND_RESP leaves before the entry is durable, the follower
# crashes inside the write, the entry commits on its ack, and a later leader lacks it
# (leader-completeness); or a vote is lost the same way (election-safety, seed 991).
# ack-before-commit: a write acknowledged at propose time is later dropped.
# stale-read: a get served from a lagging or deposed node's local state.
# match-by-index: a write overwritten by a new leader is acknowledged with another's result.
# forward-match-by-seq: a follower matches a write it forwarded inside Raft by sequence
# number alone, and answers with the result of another node's write of the same number.
# refuse-forwards-of-this-term: a follower answers writes it forwarded in the current term
# as "not applied" once an entry of that term applies, though that term's leader commits them.
# install-before-log: a crash between the state machine taking a snapshot and the log
# recording it leaves a log whose conflicting tail the restarted core treats as committed.
# learner-quorum: a learner's ack counts toward the commit majority (a core override).
# membership-wrong-index: a change is recorded at the last index of its apply batch.
# skip-core-conf-change: the core never switches to an applied change; the engine's own
# check (core configuration == applied membership) stops it, hence "exception" (PLANTED_DETAIL).
# bootstrap-core-config: a node restarting from a snapshot past a change builds its core
# from the bootstrap voters.
# All but stale-read are subclasses of the production ReplicaEngine (ggap/sim/bugs.py).
PLANTED: dict[str, tuple[list[int], int | None, set[str]]] = {
    "skip-persist-before-vote": ([0, 1], None, {"commit-quorum", "leader-completeness", "election-safety"}),
    "ack-before-commit": ([1, 2], 300, {"acked-write-lost", "linearizability"}),
    "stale-read": ([0, 1], 300, {"linearizability"}),
    "match-by-index": ([97, 107], None, {"acked-write-lost"}),
    "forward-match-by-seq": ([3, 7], 300, {"acked-write-lost", "linearizability"}),
    "refuse-forwards-of-this-term": ([0, 2], 300, {"forward-refused-applied"}),
    "install-before-log": ([6, 13], None, {"leader-completeness", "exception"}),
    "learner-quorum": ([1, 2], None, {"commit-quorum"}),
    "membership-wrong-index": ([0, 1], None, {"membership-agreement"}),
    "skip-core-conf-change": ([0, 1], None, {"exception"}),
    "bootstrap-core-config": ([1, 6], None, {"membership-agreement"}),
}
PLANTED_DETAIL = {"skip-core-conf-change": "differs from the applied membership"}


def ents(*spec: tuple[int, int]) -> tuple[Entry, ...]:
    return tuple(Entry(index=i, term=t, data=f"{i}/{t}".encode()) for i, t in spec)


# --- SimStorage ---


def test_storage_crash_discards_unsynced_writes() -> None:
    st = SimStorage(1)
    st.write(HardState(term=1, vote=1), ents((1, 1), (2, 1)))
    st.sync()
    st.write(HardState(term=2, vote=3, commit=2), ents((3, 2)))
    assert st.last_index() == 3 and st.initial_state()[0].term == 2  # reads see the write at once
    st.crash()
    assert st.last_index() == 2
    assert st.initial_state()[0] == HardState(term=1, vote=1)
    assert [e.index for e in st.entries(1, 3, 1 << 20)] == [1, 2]


def test_storage_torn_crash_keeps_a_consistent_prefix() -> None:
    """Whatever survives a torn crash, the durable commit never points past the durable log."""
    for seed in range(200):
        st = SimStorage(1)
        st.write(HardState(term=1), ents((1, 1)))
        st.sync()
        st.write(None, ents((2, 1), (3, 1), (4, 1)))
        st.write(None, ents((3, 2)))  # a truncation
        st.write(HardState(term=2, commit=3), ())
        st.crash(random.Random(seed), torn=1.0)
        hs, _ = st.initial_state()
        assert hs.commit <= st.last_index()
        terms = [st.term(i) for i in range(1, st.last_index() + 1)]
        assert terms in ([1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [1, 1, 2])


def test_storage_truncates_on_conflicting_append_and_reports_errors() -> None:
    seen: list[tuple[int, tuple[Entry, ...], int, list[Entry]]] = []
    st = SimStorage(7, lambda *a: seen.append(a))
    st.write(None, ents((1, 1), (2, 1), (3, 1)))
    st.write(None, ents((2, 2)))
    assert [st.term(i) for i in (1, 2)] == [1, 2] and st.last_index() == 2
    st.sync()
    assert [(n, [e.index for e in w], p, [e.index for e in r]) for n, w, p, r in seen] == [
        (7, [1, 2, 3], 0, []),
        (7, [2], 1, [2, 3]),
    ]
    with pytest.raises(LogUnavailableError):
        st.term(3)
    with pytest.raises(LogCompactedError):
        st.entries(0, 1, 10)
    with pytest.raises(ValueError, match="gap"):
        st.write(None, ents((5, 2)))


# --- KV state machine ---


def test_kv_sessions_apply_a_retried_write_once() -> None:
    kv = KVStateMachine()
    opened = kv.apply(Entry(1, 1, data=Command(1, 1, "open", "", "10.4").encode()))
    assert opened == (1, 1, Opened(1))
    put = Command(1, 2, "put", "k", "a", session=1, low=2).encode()
    cas = Command(1, 3, "cas", "k", "b", "a", session=1, low=3).encode()
    assert kv.apply(Entry(2, 1, data=put)) == (1, 2, None)
    assert kv.apply(Entry(3, 1, data=cas)) == (1, 3, True)
    assert kv.apply(Entry(4, 1, data=cas)) == (1, 3, True)  # the retry: the kept result
    late = kv.apply(Entry(5, 1, data=put))  # acknowledged already (low=3): refused, no effect
    assert late is not None and isinstance(late[2], Refused) and not late[2].expired
    assert kv.data == {"k": "b"} and kv.applied == 5
    assert kv.apply(Entry(6, 2, kind=EntryKind.NOOP)) is None
    # Log time: the first clock starts it, a later one expires the idle session.
    kv.apply(Entry(7, 2, data=Command(0, 0, "clock", "", "1000.50").encode()))
    kv.apply(Entry(8, 2, data=Command(0, 0, "clock", "", "1100.50").encode()))
    gone = kv.apply(Entry(9, 2, data=Command(1, 4, "put", "k", "c", session=1, low=4).encode()))
    assert gone is not None and isinstance(gone[2], Refused) and gone[2].expired
    assert kv.data == {"k": "b"} and kv.double_applied is None
    # Snapshots (copies) carry the table.
    copy = kv.copy()
    assert len(copy.sessions) == len(kv.sessions) == 0
    assert Command.decode(Command(3, 9, "cas", "x", None, None).encode()) == Command(3, 9, "cas", "x")


# --- SimNetwork ---


def _net(**over: Any) -> SimNetwork:
    """A quiet network (no faults, huge paths) with `over` applied on top."""
    base: dict[str, Any] = dict(
        loss=0.0, duplicate=0.0, delay_min_ms=1, delay_mean_ms=5.0, clog_probability=0.0, path_capacity=10**6
    )
    cfg = attrs.evolve(SimConfig.from_seed(0, nodes=3), **(base | over))
    return SimNetwork(cfg, (1, 2, 3), random.Random(1))


def _drain(net: SimNetwork, until: int = 10_000) -> list[tuple[int, Message]]:
    out = []
    while (t := net.next_time()) is not None and t <= until:
        out += [(t, m) for m in net.pop_due(t)]
    return out


def test_network_delivers_in_time_order_and_drops_across_partitions() -> None:
    net = _net()
    for i in range(20):
        net.send(Message(MT.APPEND, to=2, frm=1, index=i), now=i)
    got = _drain(net)
    assert sorted(m.index for _, m in got) == list(range(20))
    assert [t for t, _ in got] == sorted(t for t, _ in got)
    net.blocked.add((1, 2))  # one-way: 1 -> 2 cut, 2 -> 1 open
    net.send(Message(MT.APPEND, to=2, frm=1), now=0)
    net.send(Message(MT.APPEND_RESP, to=1, frm=2), now=0)
    assert [m.type for _, m in _drain(net)] == [MT.APPEND_RESP]


def test_network_loss_and_duplication_follow_their_rates() -> None:
    net = _net(loss=0.5, duplicate=0.5)
    for i in range(1000):
        net.send(Message(MT.APPEND, to=2, frm=1, index=i), now=0)
    n = len(_drain(net, until=1 << 30))
    assert 600 < n < 900  # 1000 * 0.5 * 1.5 on average
    assert net.stats["lost"] + n - net.stats["duplicated"] == 1000


# --- invariants ---


def test_invariants_catch_two_leaders_in_one_term() -> None:
    inv = Invariants()
    inv.leader(1, 3, "ready")
    inv.leader(1, 3, "APPEND")
    inv.leader(2, 4, "ready")
    with pytest.raises(InvariantViolation) as e:
        inv.leader(2, 3, "HEARTBEAT")
    assert e.value.name == "election-safety"


def test_invariants_catch_log_mismatch_and_lost_commits() -> None:
    inv = Invariants()
    inv.durable_append(1, ents((1, 1), (2, 1)), 0, [])
    inv.durable_append(2, ents((1, 1)), 0, [])
    with pytest.raises(InvariantViolation) as e:  # same index+term, different data
        inv.durable_append(3, (Entry(2, 1, data=b"other"),), 1, [])
    assert e.value.name == "log-matching"
    inv.commit(1, 2, lambda i: 1)
    inv.durable_append(3, ents((3, 5)), 1, [])  # a stale leader appending past the end: legal
    with pytest.raises(InvariantViolation) as e:
        inv.durable_append(2, ents((2, 2)), 1, list(ents((2, 1))))  # truncates committed 2@t1
    assert e.value.name == "leader-completeness"
    with pytest.raises(InvariantViolation) as e:
        inv.leader_log(3, 4, [0, 1, 2])  # new leader without committed 2@t1
    assert e.value.name == "leader-completeness"


def test_invariants_catch_divergent_applies() -> None:
    inv = Invariants()
    e1, e2 = ents((1, 1), (2, 1))
    inv.apply(1, 0, e1)
    inv.apply(1, 1, e2)
    inv.apply(2, 0, e1)
    with pytest.raises(InvariantViolation) as e:
        inv.apply(2, 1, Entry(2, 1, data=b"x"))
    assert e.value.name == "state-machine-safety"
    with pytest.raises(InvariantViolation) as e:
        inv.apply(3, 0, e2)  # skipping index 1
    assert e.value.name == "state-machine-safety"


def test_invariants_check_membership_against_the_committed_log() -> None:
    removed: list[int] = []
    inv = Invariants((1, 2, 3), lambda cc, index: removed.append(cc.node_id))
    remove_3 = encode_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    inv.apply(1, 0, Entry(1, 1, kind=EntryKind.NOOP))
    inv.apply(1, 1, Entry(2, 1, kind=EntryKind.CONF_CHANGE, data=remove_3))
    assert removed == [3] and inv.conf_at(1)[1].voters == (1, 2, 3)
    assert inv.conf_at(5) == (2, ConfState((1, 2)))
    two = Membership(members=(Member(1), Member(2)), index=2)
    inv.membership(1, 2, two, "applying")
    inv.core_conf(1, 2, ConfState((1, 2)), "after")
    with pytest.raises(InvariantViolation) as e:  # the right voters, recorded at the wrong index
        inv.membership(2, 2, attrs.evolve(two, index=3), "applying")
    assert e.value.name == "membership-agreement"
    with pytest.raises(InvariantViolation) as e:  # a core still counting the removed node
        inv.core_conf(2, 3, ConfState((1, 2, 3)), "starting")
    assert e.value.name == "membership-agreement"
    with pytest.raises(InvariantViolation) as e:
        inv.leader_is_voter(3, 4, (1, 2), "applied membership")
    assert e.value.name == "leader-not-voter"


def test_invariants_check_that_a_commit_has_a_majority_of_voters() -> None:
    inv = Invariants((1, 2, 3))
    inv.commit(1, 2, lambda i: 1)
    held = {1: 2, 2: 1, 3: 1, 4: 2}  # node -> last durable index (all term 1); 4 is a learner
    holds = lambda v, i, t: held.get(v, 0) >= i  # noqa: E731
    inv.commit_quorum(1, 1, 1, [ConfState((1, 2, 3), (4,))], holds)
    with pytest.raises(InvariantViolation) as e:  # only the leader and the learner hold 2
        inv.commit_quorum(1, 1, 2, [ConfState((1, 2, 3), (4,))], holds)
    assert e.value.name == "commit-quorum"
    inv.commit_quorum(1, 1, 2, [ConfState((1, 2, 3)), ConfState((1, 4))], holds)  # the one before


# --- configuration ---


def test_config_is_a_function_of_the_seed_and_overrides_shift_nothing() -> None:
    a, b = SimConfig.from_seed(11), SimConfig.from_seed(11)
    assert a == b and a != SimConfig.from_seed(12)
    c = SimConfig.from_seed(11, nodes=5, ticks=99, plant_bug="stale-read")
    assert (c.nodes, c.safety_ticks, c.plant_bug) == (5, 99, "stale-read")
    assert c.loss == a.loss and c.streams == a.streams
    assert "partition_mode" in a.describe()
    assert (
        c.replay_command()
        == "python -m ggap.sim --seed 11"
        + (" --nodes 5" if a.nodes != 5 else "")
        + " --ticks 99 --plant-bug stale-read --log=short"
    )
    with pytest.raises(ValueError):
        SimConfig.from_seed(1, plant_bug="nope")


# --- whole runs against the real core ---


def test_small_sweep_passes() -> None:
    failures = [(r.seed, r.failure, r.detail) for r in (run_seed(s) for s in range(20)) if not r.ok]
    assert not failures, failures


def test_same_seed_same_trace() -> None:
    a = run_seed(5, ticks=300, trace=True)
    b = run_seed(5, ticks=300, trace=True)
    c = run_seed(6, ticks=300, trace=True)
    assert a.ok and b.ok and c.ok
    assert a.trace_hash and a.trace_hash == b.trace_hash and a.digest == b.digest
    assert a.stats == b.stats
    assert c.trace_hash != a.trace_hash
    assert run_seed(5, ticks=300).digest == a.digest  # tracing does not change the run


def test_same_seed_same_trace_in_another_process() -> None:
    """No hidden dependence on str/bytes hash randomisation, the wall clock or global state.
    Seed 1006 also adds, promotes and removes members and installs a snapshot."""
    for seed, ticks in (("4", "150"), ("1006", "300")):
        hashes = set()
        for hashseed in ("1", "2"):
            out = subprocess.run(
                [sys.executable, "-m", "ggap.sim", "--seed", seed, "--ticks", ticks],
                env={**os.environ, "PYTHONHASHSEED": hashseed},
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
            hashes.add(next(line for line in out.splitlines() if line.startswith("trace hash:")))
        assert len(hashes) == 1, (seed, hashes)


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_planted_bug_is_caught(bug: str) -> None:
    seeds, ticks, expected = PLANTED[bug]
    for seed in seeds:
        res = run_seed(seed, plant_bug=bug, ticks=ticks)
        assert res.failure in expected, (seed, res.failure, res.detail)
        assert PLANTED_DETAIL.get(bug, "") in res.detail, (seed, res.detail)
        assert f"--seed {seed}" in res.replay and f"--plant-bug {bug}" in res.replay


def test_lost_acked_write_also_fails_the_linearizability_check() -> None:
    """The acked-write check fires first; the history alone must condemn the bug too."""
    sim = Simulator(SimConfig.from_seed(1, plant_bug="ack-before-commit", ticks=300))
    assert sim.run().failure == "acked-write-lost"
    verdict = check(sim.resolve_history(), max_steps=2_000_000)
    assert verdict.violation, verdict.explain()


def test_cli_single_seed_and_failing_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seed", "2", "--ticks", "200"]) == 0
    out = capsys.readouterr().out
    assert "seed 2, configuration:" in out and "partition_mode" in out
    assert main(["--seeds", "3", "--start", "1", "--plant-bug", "stale-read"]) == 1
    out = capsys.readouterr().out
    assert "FAILED seed 1: linearizability" in out
    assert "replay: python -m ggap.sim --seed 1 --plant-bug stale-read --log=short" in out


def test_short_log_prints_a_trace() -> None:
    buf = io.StringIO()
    res = Simulator(SimConfig.from_seed(3, ticks=100), log=buf).run()
    lines = buf.getvalue().splitlines()
    assert res.ok and len(lines) > 100
    assert any("LEADER of t" in line for line in lines)


def test_forwarded_writes_are_exercised_and_safe() -> None:
    """Seeds where followers forward every write inside Raft: they pass every check, and
    forwarded writes were applied, refused by a leader handing over or deposed, and left
    with an unknown outcome, all three."""
    totals = {"forwarded_applied": 0, "forwarded_refused": 0, "forwarded_unknown": 0}
    for seed in range(12):
        cfg = attrs.evolve(SimConfig.from_seed(seed), forward_percent=100)
        res = Simulator(cfg).run()
        assert res.ok, (seed, res.failure, res.detail)
        for k in totals:
            totals[k] += res.stats[k]
    assert all(v > 0 for v in totals.values()), totals


def test_sessions_apply_each_client_write_once_and_a_broken_table_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sessions are exercised (clients reopen after evictions and expiries) and pass; a
    table that never recognises a retry is caught as exactly-once."""
    reopened = 0
    for seed in range(1000, 1006):
        result = Simulator(SimConfig.from_seed(seed)).run()
        assert result.ok, (seed, result.failure)
        reopened += result.stats["sessions_reopened"]
    assert reopened > 0

    from ggap.sessions import table

    admit = table.SessionTable.admit

    def never_duplicate(self: table.SessionTable, session: int, seq: int, low: int) -> table.Admitted:
        return table.Admitted(table.Admission.APPLY, admit(self, session, seq, low).forgotten)

    monkeypatch.setattr(table.SessionTable, "admit", never_duplicate)
    failures = {Simulator(SimConfig.from_seed(seed)).run().failure for seed in range(1000, 1006)}
    assert "exactly-once" in failures
