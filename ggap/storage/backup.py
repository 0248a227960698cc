"""The backup file that `ggap snapshot save` writes and `status`/`restore` read: a copy of
kv.db that checks itself, whatever it is called and wherever it has been.

Layout, format version 1 (integers big-endian):

    +-----------------+---------------+------------------------------------------------+
    | SQLite database | metadata JSON | trailer, 20 bytes:                             |
    | (sqlite_bytes)  | (UTF-8)       | json_len u32, json_crc32 u32, version u32,     |
    |                 |               | magic b"GGAPSNAP"                              |
    +-----------------+---------------+------------------------------------------------+

The metadata JSON holds the SHA-256 and length of the database bytes and what they hold
(log index, term, revision, compact revision), when and by which member it was made, and
`backup_id`, a random value fresh for every save (a restore's default cluster token).

Why the footer is at the end: the database arrives as a stream whose checksum is known
only when the last byte is in, so the writer appends the footer and never seeks back or
reads the file twice. Why the last 12 bytes are `version, magic` in every version: a
reader finds out which layout the rest has before it parses any of it, so a file from a
newer ggap is refused as such rather than called corrupt. What each check catches:

- no magic at the end: truncated (the footer is the last thing written), or not ours;
- json_len / CRC-32 / JSON fields wrong: a damaged footer;
- the length the footer gives plus the footer is not the file's length: cut or padded;
- SHA-256 of the database bytes: any damaged byte in them.

Threading: every function here blocks; call them from a worker thread.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from ggap.storage.snapshot import fsync_dir
from ggap.types.errors import FailedPrecondition, StorageCorrupt

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "BackupMeta",
    "BackupWriter",
    "copy_database",
    "encode_footer",
    "new_backup_id",
    "read_footer",
    "verify_backup",
]

FORMAT_VERSION = 1
MAGIC = b"GGAPSNAP"
_TRAILER = struct.Struct(">III8s")  # json_len, json_crc32, version, magic
_TAIL = struct.Struct(">I8s")  # version, magic: the same in every format version
_MAX_META_BYTES = 1 << 16
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
# A backup id doubles as a cluster token: short, printable, safe in a log line.
TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_backup_id() -> str:
    return uuid.uuid4().hex


def utc_now_text() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@attrs.frozen(slots=True)
class BackupMeta:
    """The footer's metadata. `term` is the term of the entry at `index` on the member that
    served the copy (0 if it no longer knew it); a restore starts a fresh term anyway."""

    sqlite_bytes: int
    sha256: str
    index: int
    term: int
    revision: int
    compact_revision: int
    created_at: str  # ISO 8601, UTC
    backup_id: str
    member_id: int = 0
    ggap_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **attrs.asdict(self)}


_INT_FIELDS = ("sqlite_bytes", "index", "term", "revision", "compact_revision", "member_id")


def _meta_from_json(path: Path, doc: Any) -> BackupMeta:
    def bad(why: str) -> StorageCorrupt:
        return StorageCorrupt(f"{path}: damaged snapshot footer: {why}")

    if not isinstance(doc, dict):
        raise bad("the metadata is not a JSON object")
    for name in _INT_FIELDS:
        value = doc.get(name)
        if type(value) is not int or value < 0:
            raise bad(f"{name} must be a non-negative integer, got {value!r}")
    for name in ("sha256", "created_at", "backup_id", "ggap_version"):
        if not isinstance(doc.get(name), str):
            raise bad(f"{name} must be a string, got {doc.get(name)!r}")
    if not _SHA256_RE.fullmatch(doc["sha256"]):
        raise bad(f"sha256 is not 64 lowercase hex digits: {doc['sha256']!r}")
    if not TOKEN_RE.fullmatch(doc["backup_id"]):
        raise bad(f"backup_id is not 1-64 of [A-Za-z0-9._-]: {doc['backup_id']!r}")
    # Fields a later version 1 writer may add are ignored; the ones above are required.
    return BackupMeta(**{f.name: doc[f.name] for f in attrs.fields(BackupMeta)})


def encode_footer(meta: BackupMeta) -> bytes:
    """The bytes to append after the database: metadata JSON, then the trailer."""
    body = json.dumps(meta.to_dict(), sort_keys=True).encode()
    return body + _TRAILER.pack(len(body), zlib.crc32(body), FORMAT_VERSION, MAGIC)


def _read_footer(f: BinaryIO, path: Path, size: int) -> BackupMeta:
    if size < _TAIL.size:
        raise StorageCorrupt(f"{path}: not a ggap snapshot file ({size} bytes: too short for a footer)")
    f.seek(size - _TAIL.size)
    version, magic = _TAIL.unpack(f.read(_TAIL.size))
    if magic != MAGIC:
        raise StorageCorrupt(
            f"{path}: not a complete ggap snapshot file (no footer at its end: truncated, or not a snapshot)"
        )
    if version > FORMAT_VERSION:
        raise FailedPrecondition(
            f"{path}: snapshot format version {version} is newer than this ggap reads "
            f"(up to {FORMAT_VERSION}); use a newer ggap, or the footer is damaged"
        )
    if version != FORMAT_VERSION:
        raise StorageCorrupt(f"{path}: damaged snapshot footer: format version {version}")
    if size < _TRAILER.size:
        raise StorageCorrupt(f"{path}: damaged snapshot footer: the file is shorter than its trailer")
    f.seek(size - _TRAILER.size)
    body_len, crc, _version, _magic = _TRAILER.unpack(f.read(_TRAILER.size))
    if body_len > _MAX_META_BYTES or body_len > size - _TRAILER.size:
        raise StorageCorrupt(f"{path}: damaged snapshot footer: metadata length {body_len} is impossible")
    f.seek(size - _TRAILER.size - body_len)
    body = f.read(body_len)
    if zlib.crc32(body) != crc:
        raise StorageCorrupt(f"{path}: damaged snapshot footer: metadata checksum mismatch")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise StorageCorrupt(f"{path}: damaged snapshot footer: {exc}") from None
    meta = _meta_from_json(path, doc)
    expected = meta.sqlite_bytes + body_len + _TRAILER.size
    if expected != size:
        raise StorageCorrupt(
            f"{path}: the file is {size} bytes but its footer describes {expected} "
            f"({meta.sqlite_bytes} database bytes): truncated, padded or spliced"
        )
    return meta


def read_footer(path: str | os.PathLike[str]) -> BackupMeta:
    """The footer's metadata, after checking the footer itself (not the database bytes).
    StorageCorrupt for a damaged or truncated file, FailedPrecondition for a newer format."""
    p = Path(path)
    with p.open("rb") as f:
        return _read_footer(f, p, os.fstat(f.fileno()).st_size)


def _hash_database(f: BinaryIO, meta: BackupMeta, out: BinaryIO | None) -> str:
    f.seek(0)
    digest = hashlib.sha256()
    left = meta.sqlite_bytes
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            break  # the footer check saw the full length: the file shrank meanwhile
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
        left -= len(chunk)
    return digest.hexdigest()


def _check_hash(path: Path, meta: BackupMeta, got: str) -> None:
    if got != meta.sha256:
        raise StorageCorrupt(
            f"{path}: checksum mismatch: the database bytes hash to {got[:16]}…, "
            f"the footer says {meta.sha256[:16]}… (the file is damaged)"
        )


def verify_backup(path: str | os.PathLike[str]) -> BackupMeta:
    """read_footer, then the SHA-256 of every database byte: the file is whole and unaltered."""
    p = Path(path)
    with p.open("rb") as f:
        meta = _read_footer(f, p, os.fstat(f.fileno()).st_size)
        _check_hash(p, meta, _hash_database(f, meta, None))
    return meta


def copy_database(path: str | os.PathLike[str], dest: Path) -> BackupMeta:
    """Write the database bytes of the backup at `path` to `dest` (created; must not exist),
    checking footer and checksum on the way (a file changed since it was verified is still
    caught), then fsync `dest`. On any failure `dest` is removed."""
    p = Path(path)
    try:
        with p.open("rb") as f, dest.open("xb") as out:
            meta = _read_footer(f, p, os.fstat(f.fileno()).st_size)
            _check_hash(p, meta, _hash_database(f, meta, out))
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return meta


class BackupWriter:
    """FILE.part while the stream arrives; on `seal`, checked, footed, fsynced and renamed
    to FILE in one step, so FILE is either absent, the previous file, or a whole backup.

    Resource handling: `discard` (idempotent) closes and removes FILE.part; call it in a
    `finally` unless `seal` returned.
    """

    def __init__(self, path: Path, *, overwrite: bool) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self._overwrite = overwrite
        self._file: BinaryIO | None = None
        self._created = False  # FILE.part is ours to remove
        self._digest = hashlib.sha256()
        self.written = 0

    def check_target(self) -> None:
        """Refuse before anything is asked of a server: FailedPrecondition naming why."""
        parent = self.path.parent
        if not parent.is_dir():
            raise FailedPrecondition(f"cannot write {self.path}: {parent} is not a directory")
        if self.path.is_dir():
            raise FailedPrecondition(f"cannot write {self.path}: it is a directory")
        if not self._overwrite:
            if self.path.exists():
                raise FailedPrecondition(f"{self.path} exists; pass --force to replace it")
            if self.part.exists():
                raise FailedPrecondition(
                    f"{self.part} exists (another save in progress, or left by one that was killed); "
                    "remove it or pass --force"
                )

    def open(self) -> None:
        """Create FILE.part (mode 0600: a backup holds every value). PermissionError and
        FileExistsError reach the caller as they are."""
        self.check_target()
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if self._overwrite else os.O_EXCL)
        fd = os.open(self.part, flags, 0o600)
        self._created = True
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        assert self._file is not None, "open() first"
        self._file.write(data)
        self._digest.update(data)
        self.written += len(data)

    def seal(self, meta: BackupMeta) -> BackupMeta:
        """`meta` is what the server announced; the bytes written must match it exactly
        (StorageCorrupt otherwise: the transfer went wrong, FILE is not touched)."""
        f = self._file
        assert f is not None, "open() first"
        if self.written != meta.sqlite_bytes:
            raise StorageCorrupt(f"received {self.written} bytes, the server announced {meta.sqlite_bytes}")
        got = self._digest.hexdigest()
        if got != meta.sha256:
            raise StorageCorrupt(
                f"checksum mismatch: the received bytes hash to {got[:16]}…, "
                f"the server said {meta.sha256[:16]}…"
            )
        f.write(encode_footer(meta))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._file = None
        if not self._overwrite and self.path.exists():
            raise FailedPrecondition(f"{self.path} appeared while the snapshot was saved; not replaced")
        os.replace(self.part, self.path)
        self._created = False
        fsync_dir(self.path.parent)
        return meta

    def discard(self) -> None:
        try:
            if self._file is not None:
                self._file.close()
        finally:
            self._file = None
            if self._created:
                self._created = False
                self.part.unlink(missing_ok=True)
