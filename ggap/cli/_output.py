"""Turning responses into text. Pure functions (message in, string out) so they are tested
without a server. Table output is for people; JSON output is proto JSON with proto field
names, one document per line, so scripts can parse it and feed it back (e.g. to `ggap txn`)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ggap.pb import kv_pb2

# Longest value shown in listings (range, history, watch); `get` shows values in full.
LISTING_VALUE_CHARS = 64


def to_json(msg: Message, **extra: Any) -> str:
    doc = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc.update(extra)
    return json.dumps(doc, sort_keys=False)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    all_rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    return "\n".join(lines)


def show_bytes(value: bytes, limit: int | None = None) -> str:
    """Printable UTF-8 as is; other UTF-8 JSON-quoted (escapes newlines etc.); binary as 0x-hex."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = "0x" + value.hex()
    else:
        if not text.isprintable():
            text = json.dumps(text, ensure_ascii=False)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def show_expiry(expires_at_ms: int) -> str:
    if not expires_at_ms:
        return "-"
    when = datetime.datetime.fromtimestamp(expires_at_ms / 1000, tz=datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


KV_HEADERS = ("KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION", "EXPIRES")
KEY_HEADERS = ("KEY", "CREATE_REV", "MOD_REV", "VERSION", "EXPIRES")


def kv_row(kv: kv_pb2.KeyValue, *, keys_only: bool = False, limit: int | None = None) -> list[str]:
    cells = [kv.key]
    if not keys_only:
        cells.append(show_bytes(kv.value, limit))
    cells += [str(kv.create_revision), str(kv.mod_revision), str(kv.version), show_expiry(kv.expires_at_ms)]
    return cells


def format_kvs(kvs: Iterable[kv_pb2.KeyValue], *, keys_only: bool = False, limit: int | None = None) -> str:
    headers = KEY_HEADERS if keys_only else KV_HEADERS
    return render_table(headers, (kv_row(kv, keys_only=keys_only, limit=limit) for kv in kvs))


def format_put(resp: kv_pb2.PutResponse) -> str:
    out = f"OK (revision {resp.header.revision})"
    if resp.HasField("prev_kv"):
        out += "\nprevious:\n" + format_kvs([resp.prev_kv])
    return out


def format_get(resp: kv_pb2.GetResponse) -> str:
    return format_kvs([resp.kv])


def format_delete(resp: kv_pb2.DeleteResponse) -> str:
    out = f"{1 if resp.deleted else 0} deleted (revision {resp.header.revision})"
    if resp.HasField("prev_kv"):
        out += "\nprevious:\n" + format_kvs([resp.prev_kv])
    return out


def format_range(resp: kv_pb2.RangeResponse, *, keys_only: bool = False) -> str:
    shown = len(resp.kvs)
    summary = f"{shown} of {resp.count} keys"
    if resp.more:
        summary += " (limit reached, more exist)"
    summary += f" (revision {resp.header.revision})"
    if not shown:
        return summary
    return format_kvs(resp.kvs, keys_only=keys_only, limit=LISTING_VALUE_CHARS) + "\n" + summary


def format_history(resp: kv_pb2.HistoryResponse) -> str:
    rows = [
        [
            str(kv.mod_revision),
            str(kv.version),
            str(kv.create_revision),
            "yes" if kv.deleted else "-",
            show_expiry(kv.expires_at_ms),
            "" if kv.deleted else show_bytes(kv.value, LISTING_VALUE_CHARS),
        ]
        for kv in resp.versions
    ]
    table = render_table(("MOD_REV", "VERSION", "CREATE_REV", "DELETED", "EXPIRES", "VALUE"), rows)
    return table + f"\n{len(rows)} versions (revision {resp.header.revision})"


def event_kind(event: kv_pb2.Event) -> str:
    if event.type == kv_pb2.EVENT_TYPE_PUT:
        return "PUT"
    if event.type == kv_pb2.EVENT_TYPE_DELETE:
        return "EXPIRE" if event.expired else "DELETE"
    return "UNKNOWN"


def format_event(event: kv_pb2.Event) -> str:
    """One line per event (a stream cannot be aligned as a table)."""
    line = f"{event_kind(event):<6}  rev={event.kv.mod_revision}  {event.kv.key}"
    if event.type == kv_pb2.EVENT_TYPE_PUT:
        line += f"  {show_bytes(event.kv.value, LISTING_VALUE_CHARS)}"
    if event.HasField("prev_kv"):
        line += f"  (prev: {show_bytes(event.prev_kv.value, LISTING_VALUE_CHARS)})"
    return line


def format_txn(resp: kv_pb2.TxnResponse) -> str:
    lines = [f"{'SUCCEEDED' if resp.succeeded else 'FAILED'} (revision {resp.header.revision})"]
    for i, op in enumerate(resp.responses):
        which = op.WhichOneof("response")
        if which == "put":
            lines.append(f"[{i}] put: OK")
        elif which == "delete":
            lines.append(f"[{i}] delete: {1 if op.delete.deleted else 0} deleted")
        elif which == "get":
            if op.get.found:
                lines.append(f"[{i}] get:\n" + format_kvs([op.get.kv], limit=LISTING_VALUE_CHARS))
            else:
                lines.append(f"[{i}] get: not found")
        elif which == "range":
            lines.append(f"[{i}] range:\n" + format_range(op.range))
    return "\n".join(lines)


def format_compact(resp: kv_pb2.CompactResponse, revision: int) -> str:
    return f"compacted below revision {revision} (store revision {resp.header.revision})"


STATUS_HEADERS = (
    "ENDPOINT",
    "ID",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "LAG",
    "REVISION",
    "COMPACT_REV",
    "DB_SIZE",
    "DB_IN_USE",
    "VERSION",
)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


#: One endpoint's answer to `ggap status`: its StatusResponse, or the error text.
StatusResult = tuple[str, kv_pb2.StatusResponse | str]


def status_lags(results: Sequence[StatusResult]) -> list[int | None]:
    """Per endpoint: the highest commit index any answering node reported minus this node's
    applied index, i.e. how many committed entries it has yet to apply as far as this one
    look can tell (a lagging or partitioned follower shows here). None where no answer came."""
    commits = [st.commit_index for _, st in results if not isinstance(st, str)]
    top = max(commits, default=0)
    return [None if isinstance(st, str) else max(top - st.applied_index, 0) for _, st in results]


def status_row(endpoint: str, st: kv_pb2.StatusResponse, lag: int) -> list[str]:
    return [
        endpoint,
        str(st.member_id),
        st.role,
        str(st.raft_term),
        str(st.leader_id),
        str(st.commit_index),
        str(st.applied_index),
        str(lag),
        str(st.revision),
        str(st.compact_revision),
        human_size(st.db_size_bytes),
        human_size(st.db_size_in_use_bytes),
        st.version,
    ]


def format_status(results: Sequence[StatusResult]) -> str:
    """One row per endpoint in the order given; an endpoint that did not answer gets a row
    with "-" cells and its error in an ERROR column (present only when something failed).
    When a leader answered, its view of every member's progress follows (`format_progress`)."""
    lags = status_lags(results)
    failed = any(isinstance(st, str) for _, st in results)
    headers = (*STATUS_HEADERS, "ERROR") if failed else STATUS_HEADERS
    rows: list[list[str]] = []
    for (endpoint, st), lag in zip(results, lags, strict=True):
        if isinstance(st, str):
            rows.append([endpoint, *["-"] * (len(STATUS_HEADERS) - 1), st])
        else:
            assert lag is not None
            rows.append([*status_row(endpoint, st, lag), *([""] if failed else [])])
    table = render_table(headers, rows)
    leaders = [st for _, st in results if not isinstance(st, str) and st.progress]
    if leaders:
        table += "\n\n" + format_progress(leaders[0])
    return table


PROGRESS_HEADERS = ("MEMBER", "ROLE", "MATCH", "APPLIED", "BEHIND", "ACTIVE", "AUTO_PROMOTE")


def format_progress(st: kv_pb2.StatusResponse) -> str:
    """The leader's view of each member (StatusResponse.progress): BEHIND is how many
    entries of the leader's commit index the member lacks, the figure MemberPromote
    compares with server.promote_max_lag_entries."""
    rows = [
        [
            str(p.id),
            "learner" if p.learner else ("leader" if p.id == st.member_id else "voter"),
            str(p.match_index),
            str(p.applied_index),
            str(0 if p.id == st.member_id else max(st.commit_index - p.match_index, 0)),
            "yes" if p.recent_active or p.id == st.member_id else "no",
            "yes" if p.auto_promote else "-",
        ]
        for p in st.progress
    ]
    title = f"progress as leader {st.member_id} sees it (commit index {st.commit_index}):"
    return title + "\n" + render_table(PROGRESS_HEADERS, rows)


MEMBER_HEADERS = ("ID", "ROLE", "CLIENT_ADDR", "CLUSTER_ADDR")


def format_members(members: Sequence[kv_pb2.Member], leader_id: int) -> str:
    """One row per member; ROLE is leader (as the answering node knows it), voter or learner.
    An address a node has not told the cluster yet shows as "-"."""
    rows = [
        [
            str(m.id),
            "learner" if m.learner else ("leader" if m.id == leader_id else "voter"),
            m.client_addr or "-",
            m.cluster_addr or "-",
        ]
        for m in members
    ]
    voters = sum(1 for m in members if not m.learner)
    learners = len(members) - voters
    summary = f"{voters} voter{'s' if voters != 1 else ''}, {learners} learner{'s' if learners != 1 else ''}"
    return render_table(MEMBER_HEADERS, rows) + "\n" + summary


def status_json_lines(results: Sequence[StatusResult]) -> list[str]:
    """One JSON document per endpoint: the StatusResponse (proto field names) plus `endpoint`
    and `lag` (an integer), or {"endpoint": ..., "error": "CODE: message"}."""
    lines: list[str] = []
    for (endpoint, st), lag in zip(results, status_lags(results), strict=True):
        if isinstance(st, str):
            lines.append(json.dumps({"endpoint": endpoint, "error": st}))
        else:
            lines.append(to_json(st, endpoint=endpoint, lag=lag))
    return lines


def flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A nested dict/list as (dotted.key, value) pairs, for showing `inspect` as a table."""
    if isinstance(doc, Mapping):
        if not doc and prefix:
            return [(prefix, "{}")]
        out: list[tuple[str, str]] = []
        for key, value in doc.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(doc, list | tuple):
        if not doc:
            return [(prefix, "[]")]
        out = []
        for i, value in enumerate(doc):
            out += flatten(value, f"{prefix}[{i}]")
        return out
    if isinstance(doc, bytes):
        return [(prefix, show_bytes(doc, LISTING_VALUE_CHARS))]
    if doc is None:
        return [(prefix, "-")]
    return [(prefix, str(doc))]
