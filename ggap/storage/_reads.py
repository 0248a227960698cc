"""MVCC reads over one SQLite connection, shared by KvReader and by Txn reads during apply.

Callers run these inside one transaction and pass the store state (revision, compact
revision) read in that same transaction, so an answer is either exact for the revision it
names or an OutOfRange error, never silently wrong.

Why a read can be refused: the versions kept for a key are always a suffix of its full
history (compaction and pruning only ever delete everything older than some version).
So the newest retained version <= R is the right answer whenever one exists; when none
does, the key was either absent at R or its history at R was removed. Compaction is
covered by refusing R < compact_revision; pruning leaves a per-key floor in kv_pruned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from ggap.codec import visible_versions
from ggap.types.errors import InvalidArgument, OutOfRange
from ggap.types.kv import Event, EventType, KeyValue, RangeResult, check_key
from ggap.types.members import Member, Membership

Row = tuple[Any, ...]

# Columns in the order visible_versions expects (key, mod_revision, create_revision,
# version, expires_at_ms, tombstone, value), then `expired`.
_COLS = "key, mod_revision, create_revision, version, expires_at_ms, tombstone, value, expired"
_COLS_NOVALUE = "key, mod_revision, create_revision, version, expires_at_ms, tombstone, X'', expired"

SQL_STATE = "SELECT applied_index, revision, compact_revision FROM kv_meta WHERE shard=?"
SQL_LATEST = f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key=? ORDER BY mod_revision DESC LIMIT 1"
SQL_AT = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key=? AND mod_revision<=? "
    "ORDER BY mod_revision DESC LIMIT 1"
)
_SQL_BEFORE = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key=? AND mod_revision<? "
    "ORDER BY mod_revision DESC LIMIT 1"
)
_SQL_VALUE = "SELECT value FROM kv_versions WHERE shard=? AND key=? AND mod_revision=?"
_SQL_KEY_FLOOR = "SELECT floor_revision FROM kv_pruned WHERE shard=? AND key=?"
_SQL_RANGE_PRUNED = (
    "SELECT key, floor_revision FROM kv_pruned WHERE shard=? AND key>=? AND key<? AND floor_revision>? "
    "LIMIT 1"
)
_SQL_RANGE_PRUNED_OPEN = (
    "SELECT key, floor_revision FROM kv_pruned WHERE shard=? AND key>=? AND floor_revision>? LIMIT 1"
)
_SQL_MAX_FLOOR = "SELECT max(floor_revision) FROM kv_pruned WHERE shard=?"
_SQL_MAX_FLOOR_RANGE = "SELECT max(floor_revision) FROM kv_pruned WHERE shard=? AND key>=? AND key<?"
_SQL_MAX_FLOOR_OPEN = "SELECT max(floor_revision) FROM kv_pruned WHERE shard=? AND key>=?"

# (bounded above, with values) -> scan statement; kept constant for the statement cache.
_SQL_SCAN = {
    (True, True): (
        f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key>=? AND key<? AND mod_revision<=? "
        "ORDER BY key, mod_revision DESC"
    ),
    (False, True): (
        f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key>=? AND mod_revision<=? "
        "ORDER BY key, mod_revision DESC"
    ),
    (True, False): (
        f"SELECT {_COLS_NOVALUE} FROM kv_versions WHERE shard=? AND key>=? AND key<? AND mod_revision<=? "
        "ORDER BY key, mod_revision DESC"
    ),
    (False, False): (
        f"SELECT {_COLS_NOVALUE} FROM kv_versions WHERE shard=? AND key>=? AND mod_revision<=? "
        "ORDER BY key, mod_revision DESC"
    ),
}
# How many keys in a range exist at a revision (their newest version <= it is not a
# tombstone), counted inside SQLite: SQLite takes the bare `tombstone` of a max()
# aggregate from the row holding the max.
_SQL_COUNT = {
    True: (
        "SELECT count(*) FROM (SELECT tombstone, max(mod_revision) FROM kv_versions "
        "WHERE shard=? AND key>=? AND key<? AND mod_revision<=? GROUP BY key) WHERE tombstone=0"
    ),
    False: (
        "SELECT count(*) FROM (SELECT tombstone, max(mod_revision) FROM kv_versions "
        "WHERE shard=? AND key>=? AND mod_revision<=? GROUP BY key) WHERE tombstone=0"
    ),
}
# Rows taken from a limited scan at a time.
_SCAN_CHUNK = 256
_SQL_HISTORY = f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key=? ORDER BY mod_revision DESC LIMIT ?"

_SQL_EV_ALL = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision>=? ORDER BY mod_revision, key LIMIT ?"
)
_SQL_EV_KEY = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND key=? AND mod_revision>=? "
    "ORDER BY mod_revision LIMIT ?"
)
_SQL_EV_RANGE = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision>=? AND key>=? AND key<? "
    "ORDER BY mod_revision, key LIMIT ?"
)
_SQL_EV_OPEN = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision>=? AND key>=? "
    "ORDER BY mod_revision, key LIMIT ?"
)
_SQL_EV_REV_ALL = f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision=? ORDER BY key"
_SQL_EV_REV_RANGE = (
    f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision=? AND key>=? AND key<? ORDER BY key"
)
_SQL_EV_REV_OPEN = f"SELECT {_COLS} FROM kv_versions WHERE shard=? AND mod_revision=? AND key>=? ORDER BY key"

SQL_EXPIRING = (
    "SELECT key, mod_revision FROM kv_ttl WHERE shard=? AND expires_at_ms<=? "
    "ORDER BY expires_at_ms, key LIMIT ?"
)
SQL_NEXT_EXPIRY = "SELECT min(expires_at_ms) FROM kv_ttl WHERE shard=?"


# --- validation -------------------------------------------------------------------------


def check_int(value: object, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int:
        raise InvalidArgument(f"{what} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise InvalidArgument(f"{what} must be >= {minimum}, got {value}")
    if value > 0x7FFF_FFFF_FFFF_FFFF:
        raise InvalidArgument(f"{what} is too large: {value}")
    return value


def resolve_revision(revision: object, current: int, compact: int) -> int:
    """0 means latest; anything else must lie in [compact_revision, current revision]."""
    rev = check_int(revision, "revision")
    if rev == 0:
        return current
    if rev > current:
        raise OutOfRange(
            f"revision {rev} is in the future: the current revision is {current}",
            compact_revision=compact,
            current_revision=current,
        )
    if rev < compact:
        raise OutOfRange(
            f"revision {rev} has been compacted: the compacted revision is {compact}",
            compact_revision=compact,
            current_revision=current,
        )
    return rev


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound).

    Code point order is UTF-8 byte order, so bumping the last code point works; U+10FFFF
    cannot be bumped and carries into the previous one, and the surrogate block (which
    cannot be stored) is skipped.
    """
    chars = list(prefix)
    while chars:
        cp = ord(chars[-1])
        if cp < 0x10FFFF:
            cp += 1
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0xE000
            chars[-1] = chr(cp)
            return "".join(chars)
        chars.pop()
    return None


def key_bounds(prefix: str, start: str, end: str) -> tuple[str, str | None]:
    """[lo, hi) for a prefix, or for [start, end) with end "" unbounded."""
    for bound, what in ((prefix, "prefix"), (start, "start"), (end, "end")):
        if bound != "":  # "" is no bound; anything else must be a valid key
            check_key(bound, what)
    if prefix:
        if start or end:
            raise InvalidArgument("prefix cannot be combined with start/end")
        return prefix, prefix_end(prefix)
    # str order is code point order, which is UTF-8 byte order.
    if end and end <= start:
        raise InvalidArgument("end must be greater than start")
    return start, (end or None)


# --- row conversion ---------------------------------------------------------------------


def to_kv(row: Row) -> KeyValue:
    return KeyValue(
        key=row[0],
        value=row[6],
        create_revision=row[2],
        mod_revision=row[1],
        version=row[3],
        expires_at_ms=row[4],
        deleted=bool(row[5]),
    )


def live_kv(row: Row | None) -> KeyValue | None:
    if row is None or row[5]:
        return None
    return to_kv(row)


_SQL_MEMBERSHIP_INDEX = "SELECT membership_index FROM kv_meta WHERE shard=?"
_SQL_MEMBERS = "SELECT id, client_addr, cluster_addr, learner FROM kv_members WHERE shard=? ORDER BY id"


def read_membership(conn: sqlite3.Connection, shard: int) -> Membership | None:
    """The membership recorded by the last applied change; None while none was applied
    (the bootstrap members hold)."""
    row = conn.execute(_SQL_MEMBERSHIP_INDEX, (shard,)).fetchone()
    if row is None or not row[0]:
        return None
    members = [
        Member(id=int(i), client_addr=c, cluster_addr=p, learner=bool(learner))
        for i, c, p, learner in conn.execute(_SQL_MEMBERS, (shard,))
    ]
    return Membership(members=tuple(members), index=int(row[0]))


def read_state(conn: sqlite3.Connection, shard: int) -> tuple[int, int, int]:
    row = conn.execute(SQL_STATE, (shard,)).fetchone()
    if row is None:
        raise LookupError(f"kv.db has no state row for shard {shard}")
    return int(row[0]), int(row[1]), int(row[2])


# --- point and range reads ---------------------------------------------------------------


def get_at(
    conn: sqlite3.Connection, shard: int, key: object, revision: object, current: int, compact: int
) -> KeyValue | None:
    k = check_key(key)
    rev = resolve_revision(revision, current, compact)
    if rev == current:
        return live_kv(conn.execute(SQL_LATEST, (shard, k)).fetchone())
    row = conn.execute(SQL_AT, (shard, k, rev)).fetchone()
    if row is None:
        floor = conn.execute(_SQL_KEY_FLOOR, (shard, k)).fetchone()
        if floor is not None and floor[0] > rev:
            raise OutOfRange(
                f"revision {rev} of key {k!r} was pruned (history depth); "
                f"its oldest retained revision is {floor[0]}",
                compact_revision=compact,
                current_revision=current,
            )
        return None
    return live_kv(row)


def range_at(
    conn: sqlite3.Connection,
    shard: int,
    *,
    prefix: str = "",
    start: str = "",
    end: str = "",
    limit: object = 0,
    revision: object = 0,
    keys_only: bool = False,
    current: int,
    compact: int,
) -> RangeResult:
    lo, hi = key_bounds(prefix, start, end)
    lim = check_int(limit, "limit")
    rev = resolve_revision(revision, current, compact)
    if rev < current:
        # Floors never exceed the current revision, so only historical reads can hit one.
        if hi is None:
            hit = conn.execute(_SQL_RANGE_PRUNED_OPEN, (shard, lo, rev)).fetchone()
        else:
            hit = conn.execute(_SQL_RANGE_PRUNED, (shard, lo, hi, rev)).fetchone()
        if hit is not None:
            raise OutOfRange(
                f"revision {rev} of key {hit[0]!r} in this range was pruned (history depth); "
                f"its oldest retained revision is {hit[1]}",
                compact_revision=compact,
                current_revision=current,
            )
    # With a limit, most matched rows only count: scan without values and fetch the few
    # values returned afterwards, so a large prefix does not drag every value into memory.
    with_values = not keys_only and lim == 0
    sql = _SQL_SCAN[(hi is not None, with_values)]
    params = (shard, lo, rev) if hi is None else (shard, lo, hi, rev)
    if lim == 0:
        picked, count = visible_versions(conn.execute(sql, params), lim)
    else:
        # Stop reading rows once the limit is met and let SQLite count the rest: turning
        # every version in a large range into a Python row cost 60 ms for a 100-key page.
        picked = _first_visible(conn.execute(sql, params), lim)
        count = len(picked)
        if count == lim:
            count = conn.execute(_SQL_COUNT[hi is not None], params).fetchone()[0]
    if keys_only or with_values:
        kvs = tuple(to_kv(r) for r in picked)
    else:
        kvs = tuple(
            to_kv((*r[:6], conn.execute(_SQL_VALUE, (shard, r[0], r[1])).fetchone()[0])) for r in picked
        )
    return RangeResult(kvs=kvs, more=count > len(kvs), count=count)


def _first_visible(cursor: sqlite3.Cursor, limit: int) -> list[Row]:
    """visible_versions' first `limit` survivors, reading the (key asc, mod_revision
    desc) rows a chunk at a time; a key whose versions straddle two chunks is decided by
    its first (newest) row, so the rest of it is skipped in the next chunk."""
    picked: list[Row] = []
    last: object = None
    while len(picked) < limit:
        rows = cursor.fetchmany(_SCAN_CHUNK)
        if not rows:
            break
        skip = 0
        if last is not None:
            while skip < len(rows) and rows[skip][0] == last:
                skip += 1
        got, _count = visible_versions(rows[skip:] if skip else rows, limit - len(picked))
        picked.extend(got)
        last = rows[-1][0]
    return picked


def history(conn: sqlite3.Connection, shard: int, key: object, limit: object) -> list[KeyValue]:
    k = check_key(key)
    lim = check_int(limit, "limit")
    rows = conn.execute(_SQL_HISTORY, (shard, k, lim if lim > 0 else -1))
    return [to_kv(r) for r in rows]


# --- watch replay -------------------------------------------------------------------------


def event_floor(
    conn: sqlite3.Connection, shard: int, key: str | None, bounds: tuple[str, str | None] | None, compact: int
) -> int:
    """Lowest revision from which every in-scope event, with its prev_kv, is still stored.

    Compaction at C keeps every version written at C (tombstones included), so replay may
    start at C, as in etcd; the events at C may lack prev_kv, whose versions are gone.
    Pruning leaves no such guarantee at its floor, so a pruned key replays from floor + 1.
    """
    if key is not None:
        row = conn.execute(_SQL_KEY_FLOOR, (shard, key)).fetchone()
    elif bounds is None:
        row = conn.execute(_SQL_MAX_FLOOR, (shard,)).fetchone()
    elif bounds[1] is None:
        row = conn.execute(_SQL_MAX_FLOOR_OPEN, (shard, bounds[0])).fetchone()
    else:
        row = conn.execute(_SQL_MAX_FLOOR_RANGE, (shard, bounds[0], bounds[1])).fetchone()
    pruned = row[0] if row is not None and row[0] is not None else 0
    return max(compact, pruned + 1 if pruned else 0)


def events_from(
    conn: sqlite3.Connection,
    shard: int,
    start_revision: object,
    *,
    key: str | None,
    prefix: str | None,
    limit: object,
    current: int,
    compact: int,
) -> list[Event]:
    start = check_int(start_revision, "start_revision")
    lim = check_int(limit, "limit")
    if key is not None and prefix is not None:
        raise InvalidArgument("watch either a key or a prefix, not both")
    k = check_key(key) if key is not None else None
    bounds = key_bounds(prefix, "", "") if prefix is not None else None
    if bounds is not None and bounds == ("", None):
        bounds = None  # the empty prefix is everything
    floor = event_floor(conn, shard, k, bounds, compact)
    if start < floor:  # floor 0: nothing compacted or pruned in scope
        raise OutOfRange(
            f"start revision {start} is no longer in history (compacted revision {compact}); "
            f"the lowest revision that can be replayed is {floor}",
            compact_revision=compact,
            current_revision=current,
        )
    start = max(start, 1)
    sql_lim = lim if lim > 0 else -1
    rows: list[Row]
    if k is not None:
        rows = conn.execute(_SQL_EV_KEY, (shard, k, start, sql_lim)).fetchall()
    elif bounds is None:
        rows = conn.execute(_SQL_EV_ALL, (shard, start, sql_lim)).fetchall()
    elif bounds[1] is None:
        rows = conn.execute(_SQL_EV_OPEN, (shard, start, bounds[0], sql_lim)).fetchall()
    else:
        rows = conn.execute(_SQL_EV_RANGE, (shard, start, bounds[0], bounds[1], sql_lim)).fetchall()
    if lim > 0 and len(rows) == lim and k is None:
        rows = _whole_revisions(conn, shard, rows, bounds)
    return _to_events(conn, shard, rows)


def _whole_revisions(
    conn: sqlite3.Connection, shard: int, rows: list[Row], bounds: tuple[str, str | None] | None
) -> list[Row]:
    """Never split a revision (a Txn's events travel together): drop a cut-off last
    revision, or, when it is the only one, return all of it even past the limit."""
    last = rows[-1][1]
    if bounds is None:
        full = conn.execute(_SQL_EV_REV_ALL, (shard, last)).fetchall()
    elif bounds[1] is None:
        full = conn.execute(_SQL_EV_REV_OPEN, (shard, last, bounds[0])).fetchall()
    else:
        full = conn.execute(_SQL_EV_REV_RANGE, (shard, last, bounds[0], bounds[1])).fetchall()
    first_of_last = len(rows)
    while first_of_last > 0 and rows[first_of_last - 1][1] == last:
        first_of_last -= 1
    if len(rows) - first_of_last == len(full):
        return rows
    if first_of_last > 0:
        return rows[:first_of_last]
    return full


def _to_events(conn: sqlite3.Connection, shard: int, rows: Iterable[Row]) -> list[Event]:
    out: list[Event] = []
    seen: dict[str, Row] = {}
    for row in rows:
        key = row[0]
        prev = seen.get(key)
        if prev is None:
            # Every version of a key at or after start is in `rows` in order, so only the
            # first event of each key needs to look further back.
            prev = conn.execute(_SQL_BEFORE, (shard, key, row[1])).fetchone()
        seen[key] = row
        out.append(make_event(row, prev))
    return out


def make_event(row: Row, prev: Row | None) -> Event:
    if row[5]:
        return Event(type=EventType.DELETE, kv=to_kv(row), prev_kv=live_kv(prev), expired=bool(row[7]))
    return Event(type=EventType.PUT, kv=to_kv(row), prev_kv=live_kv(prev))


def expiring(conn: sqlite3.Connection, shard: int, now_ms: object, limit: object) -> list[tuple[str, int]]:
    now = check_int(now_ms, "now_ms")
    lim = check_int(limit, "limit")
    rows: Sequence[Row] = conn.execute(SQL_EXPIRING, (shard, now, lim if lim > 0 else -1)).fetchall()
    return [(r[0], r[1]) for r in rows]


def next_expiry(conn: sqlite3.Connection, shard: int) -> int | None:
    row = conn.execute(SQL_NEXT_EXPIRY, (shard,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])
