"""Raft's safety properties (Raft paper, Figure 3), checked incrementally as events happen.

Each check is O(what changed), so they can run on every event of every step:

- election-safety: at most one leader per term. A leader is seen through its Ready's soft
  state and through every APPEND/HEARTBEAT it sends.
- log-matching: two durable logs with an entry of the same index and term hold the same
  entry there and the same prefix before it. Checked as entries become durable: (index,
  term) must always map to the same (kind, data, term of the previous entry); by induction
  that pins the whole prefix. `check_durable_logs` redoes it from scratch, as a cross-check.
- leader-completeness: a committed entry is in the log of every later leader, and a
  durable committed entry is never truncated (a stale leader of an older term may still
  append a conflicting entry at that index where it had none: that is legal). "Committed" is learnt from every
  node's commit index (hard state) over its own log.
- state-machine-safety: no two nodes apply different entries at one index, and every node
  applies exactly index applied+1 next, so applied prefixes are identical.

Membership (the configurations C0, C1, ... that committed CONF_CHANGE entries make):

- membership-agreement: a reference model replays every applied CONF_CHANGE entry with the
  core's pure rules (`conf_change_error`, `changed_conf`) from the bootstrap voters; every
  membership a node records (applying a change, installing a snapshot, starting) and every
  configuration its core runs with must be the model's as of that node's applied index,
  including the index the membership says it took effect at.
- commit-quorum: when a leader's commit index moves, a majority of the voters of its
  configuration (or of the one just before its last change) durably hold that entry. This
  is the rule behind leader completeness, checked where it is applied, so a quorum that
  counts the wrong nodes (a learner, a removed node) is caught even when no entry is lost.
- leader-not-voter: a leader is a voter of the configuration its node applied (so a node
  that is not a voter never leads, and a leader that applied its own removal steps down).

Forwarded writes:

- forward-refused-applied: a write a follower forwarded and then answered as definitely
  not applied (the leader refused it, or a later term's leader committed without it) is
  never applied at any index, before or after. Sessions would hide such a lie from the
  linearizability check (the retry is deduplicated), so it is checked on its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Iterable

from ggap.codec import Origin
from ggap.consensus.raft.membership import changed_conf, conf_change_error, decode_conf_change
from ggap.consensus.raft.quorum import majority
from ggap.consensus.raft.types import ConfChange, ConfState, Entry, EntryKind
from ggap.types import Membership

EntryKey = tuple[int, int]  # (index, term)
EntryRecord = tuple[EntryKind, bytes, int]  # (kind, data, term of the previous entry)


class InvariantViolation(Exception):
    """A safety property does not hold; `name` says which."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail


class Invariants:
    def __init__(
        self,
        bootstrap: Collection[int] = (),
        on_change: Callable[[ConfChange, int], None] | None = None,
    ) -> None:
        """`bootstrap`: the voters as of index 0; `on_change(cc, index)` runs when the model first
        sees a committed change applied (the simulated operator shuts removed nodes down)."""
        self.leaders: dict[int, int] = {}  # term -> leader id
        self.entries: dict[EntryKey, EntryRecord] = {}
        self.committed: list[int] = [0]  # committed[i] = term of committed entry i (i >= 1)
        self.applied: list[Entry | None] = [None]  # applied[i] = entry applied at index i
        self.checks = 0
        # The reference membership model: conf_index[k] is the log index at which the
        # configuration confs[k] took effect (0: the bootstrap one).
        # Forwarded writes (their origin stamps) answered "definitely not applied", and
        # those applied: the two sets must never meet.
        self.refused_forwards: dict[Origin, int] = {}  # origin -> the node that said so
        self.applied_forwards: dict[Origin, int] = {}  # origin -> its index
        self.conf_index: list[int] = [0]
        self.confs: list[ConfState] = [ConfState(voters=tuple(sorted(bootstrap)))]
        self._on_change = on_change

    # --- election safety ---

    def leader(self, node: int, term: int, how: str) -> bool:
        """Record that `node` acts as leader of `term`; True if this is news."""
        self.checks += 1
        prev = self.leaders.get(term)
        if prev is None:
            self.leaders[term] = node
            return True
        if prev != node:
            raise InvariantViolation(
                "election-safety", f"term {term} has two leaders: n{prev} and n{node} (seen via {how})"
            )
        return False

    # --- log matching (durable logs) ---

    def durable_append(
        self, node: int, written: tuple[Entry, ...], prev_term: int, replaced: list[Entry]
    ) -> None:
        """Entries became durable on `node`, replacing `replaced` (from written[0].index on)."""
        self.checks += 1
        committed = self.committed
        top = len(committed) - 1
        for old_e in replaced:
            # Truncating a durable committed entry loses it (a stale leader may still *append*
            # a conflicting entry where it had none: that is legal and is not checked here).
            if old_e.index > top:
                break
            new_e = written[old_e.index - written[0].index] if old_e.index <= written[-1].index else None
            if committed[old_e.index] == old_e.term and (new_e is None or new_e.term != old_e.term):
                raise InvariantViolation(
                    "leader-completeness",
                    f"n{node} durably truncated committed entry {old_e.index}@t{old_e.term}"
                    + (f" replacing it with {new_e.index}@t{new_e.term}" if new_e is not None else ""),
                )
        entries = self.entries
        for e in written:
            key = (e.index, e.term)
            rec = (e.kind, e.data, prev_term)
            old = entries.get(key)
            if old is None:
                entries[key] = rec
            elif old != rec:
                what = "prev term" if old[:2] == rec[:2] else "content"
                raise InvariantViolation(
                    "log-matching",
                    f"n{node} durably wrote entry {e.index}@t{e.term} whose {what} differs from the "
                    f"same index+term elsewhere: {_fmt(old)} vs {_fmt(rec)}",
                )
            prev_term = e.term

    def check_durable_logs(self, logs: Iterable[tuple[int, int, int, list[Entry]]]) -> None:
        """From scratch: every durable log (node, snapshot index, snapshot term, entries) agrees
        with every other on each (index, term) it shares, prefix included."""
        seen: dict[EntryKey, tuple[int, EntryRecord]] = {}
        for node, snap_index, snap_term, ents in logs:
            prev = snap_term
            for off, e in enumerate(ents):
                if e.index != snap_index + 1 + off:
                    raise InvariantViolation("log-matching", f"n{node} durable log has a gap at {e.index}")
                rec = (e.kind, e.data, prev)
                other = seen.setdefault((e.index, e.term), (node, rec))
                if other[1] != rec:
                    raise InvariantViolation(
                        "log-matching",
                        f"durable logs of n{other[0]} and n{node} differ at or before {e.index}@t{e.term}",
                    )
                prev = e.term

    # --- leader completeness ---

    def commit(self, node: int, commit: int, term_of: Callable[[int], int], first: int = 1) -> None:
        """`node` says entries up to `commit` are committed; term_of(i) is its log's term at i
        for i >= first - 1 (below that the log is compacted into a snapshot).

        Its log must agree with what is already known committed (checking the highest shared
        index suffices, given log matching), and extends that knowledge."""
        self.checks += 1
        committed = self.committed
        top = len(committed) - 1
        probe = min(commit, top)
        if probe >= max(1, first - 1) and term_of(probe) != committed[probe]:
            raise InvariantViolation(
                "leader-completeness",
                f"n{node} has commit index {commit} with {probe}@t{term_of(probe)} in its log, but "
                f"{probe}@t{committed[probe]} is committed",
            )
        for i in range(top + 1, commit + 1):
            if i < first - 1:
                break  # compacted here: another node's commit will tell
            committed.append(term_of(i))

    def known_commit(self) -> int:
        return len(self.committed) - 1

    def leader_log(self, node: int, term: int, log_term: list[int], first: int = 0) -> None:
        """A new leader of `term` whose log has term log_term[k] at index first + k must hold
        every entry committed so far (below `first` its log is a snapshot of applied, hence
        committed, entries)."""
        self.checks += 1
        committed = self.committed
        top = len(committed) - 1
        last = first + len(log_term) - 1
        if last < top:
            raise InvariantViolation(
                "leader-completeness",
                f"n{node} became leader of t{term} with last index {last} but entries "
                f"up to {top} are committed",
            )
        for i in range(max(1, first), top + 1):
            if log_term[i - first] != committed[i]:
                raise InvariantViolation(
                    "leader-completeness",
                    f"n{node} became leader of t{term} with {i}@t{log_term[i - first]} in its log, but "
                    f"{i}@t{committed[i]} is committed",
                )

    # --- state machine safety ---

    def apply(self, node: int, applied_before: int, entry: Entry) -> None:
        self.checks += 1
        if entry.index != applied_before + 1:
            raise InvariantViolation(
                "state-machine-safety",
                f"n{node} applied {entry.index} right after {applied_before} (a gap or a replay)",
            )
        applied = self.applied
        if entry.index < len(applied):
            first = applied[entry.index]
            assert first is not None
            if first != entry:
                raise InvariantViolation(
                    "state-machine-safety",
                    f"n{node} applied {_fmt_entry(entry)} at {entry.index} but another node applied "
                    f"{_fmt_entry(first)} there",
                )
        elif entry.index == len(applied):
            applied.append(entry)
            if entry.kind is EntryKind.CONF_CHANGE:
                self._model_change(entry)

        else:  # pragma: no cover - impossible given the contiguity check above
            raise InvariantViolation("state-machine-safety", f"n{node} applied {entry.index} out of order")
        committed = self.committed
        if entry.index < len(committed) and committed[entry.index] != entry.term:
            raise InvariantViolation(
                "state-machine-safety",
                f"n{node} applied {entry.index}@t{entry.term} but {entry.index}@t{committed[entry.index]} "
                "was committed",
            )

    # --- forwarded writes: "not applied" is a promise ---

    def forward_refused(self, node: int, origin: Origin) -> None:
        self.checks += 1
        if origin in self.applied_forwards:
            raise InvariantViolation(
                "forward-refused-applied",
                f"n{node} answered forward {origin} as not applied, but it was applied at "
                f"{self.applied_forwards[origin]}",
            )
        self.refused_forwards[origin] = node

    def forward_applied(self, origin: Origin, index: int) -> None:
        self.checks += 1
        if origin in self.refused_forwards:
            raise InvariantViolation(
                "forward-refused-applied",
                f"forward {origin} was applied at {index} after n{self.refused_forwards[origin]} "
                "answered it as not applied",
            )
        self.applied_forwards.setdefault(origin, index)

    # --- membership ---

    def _model_change(self, entry: Entry) -> None:
        """A CONF_CHANGE entry is applied for the first time anywhere: advance the model
        (a change invalid in the current configuration changes nothing, as in the core)."""
        cc = decode_conf_change(entry.data)
        conf = self.confs[-1]
        if conf_change_error(conf, cc) is not None:
            return
        self.conf_index.append(entry.index)
        self.confs.append(changed_conf(conf, cc))
        if self._on_change is not None:
            self._on_change(cc, entry.index)

    def conf_at(self, index: int) -> tuple[int, ConfState]:
        """(index it took effect at, configuration) as of log index `index`. Exact for
        every index some node applied; beyond that, the latest change known."""
        k = bisect.bisect_right(self.conf_index, index) - 1
        return self.conf_index[k], self.confs[k]

    def membership(self, node: int, applied: int, m: Membership, what: str) -> None:
        """`node`, applied through `applied`, records membership `m` (`what`: how)."""
        self.checks += 1
        at, conf = self.conf_at(applied)
        if (m.voters, m.learners, m.index) != (conf.voters, conf.learners, at):
            raise InvariantViolation(
                "membership-agreement",
                f"n{node} ({what}, applied {applied}) records voters={m.voters} learners={m.learners} "
                f"from index {m.index}, but the committed log gives voters={conf.voters} "
                f"learners={conf.learners} from index {at}",
            )

    def core_conf(self, node: int, applied: int, conf: ConfState, what: str) -> None:
        """The core of `node`, applied through `applied`, runs with configuration `conf`."""
        self.checks += 1
        _, want = self.conf_at(applied)
        if (conf.voters, conf.learners) != (want.voters, want.learners):
            raise InvariantViolation(
                "membership-agreement",
                f"n{node}'s core ({what}, applied {applied}) runs with voters={conf.voters} "
                f"learners={conf.learners}, but the committed log gives voters={want.voters} "
                f"learners={want.learners}",
            )

    def commit_quorum(
        self,
        node: int,
        term: int,
        commit: int,
        confs: Iterable[ConfState],
        holds: Callable[[int, int, int], bool],
    ) -> None:
        """Leader `node` of `term` moved its commit index to `commit`; `holds(voter, index,
        term)` says whether a voter durably holds that entry. A majority of the voters of
        one of `confs` (its configuration, and the one before its last change) must."""
        self.checks += 1
        entry_term = self.committed[commit] if commit < len(self.committed) else None
        if entry_term is None:
            return  # not learnt yet (the caller reports commit before extending it)
        best: tuple[int, ...] = ()
        for conf in confs:
            holders = tuple(v for v in conf.voters if holds(v, commit, entry_term))
            if len(holders) >= majority(len(conf.voters)):
                return
            best = best or holders
        raise InvariantViolation(
            "commit-quorum",
            f"n{node}, leader of t{term}, committed {commit}@t{entry_term} but only {best} of the "
            f"voters of {[c.voters for c in confs]} durably hold it",
        )

    def leader_is_voter(self, node: int, term: int, voters: Collection[int], what: str) -> None:
        self.checks += 1
        if node not in voters:
            raise InvariantViolation(
                "leader-not-voter",
                f"n{node} leads t{term} but is not a voter of its applied configuration "
                f"(voters={tuple(voters)}; {what})",
            )


def _fmt(rec: EntryRecord) -> str:
    kind, data, prev = rec
    return f"({kind.name} {data[:40]!r} prev=t{prev})"


def _fmt_entry(e: Entry) -> str:
    return f"{e.index}@t{e.term} {e.kind.name} {e.data[:40]!r}"
