"""The backup file format (ggap/storage/backup.py): written by BackupWriter, read back
whole, and every kind of damage refused with a message that says what is wrong."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import attrs
import pytest

from ggap.config.model import MvccConfig, StorageConfig
from ggap.storage import KvStore
from ggap.storage.backup import (
    FORMAT_VERSION,
    MAGIC,
    BackupMeta,
    BackupWriter,
    copy_database,
    encode_footer,
    new_backup_id,
    read_footer,
    utc_now_text,
    verify_backup,
)
from ggap.storage.snapshot import snapshot_state, take_backup_copy
from ggap.types import Compact, Delete, FailedPrecondition, Put, StorageCorrupt

TRAILER = 20


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real kv.db copy (what the Snapshot RPC streams): overwrites, a delete, a compaction."""
    d = tmp_path_factory.mktemp("db")
    kv = KvStore.open(d / "kv.db", mvcc=MvccConfig(), storage=StorageConfig())
    try:
        cmds = [Put(f"k{i % 7}", os.urandom(300)) for i in range(200)]
        kv.apply([(i, c) for i, c in enumerate([*cmds, Delete("k1"), Compact(50)], 1)])
        copy = take_backup_copy(kv.path, d, busy_timeout_ms=1000)
        with copy.file:
            data = copy.file.read()
        assert len(data) == copy.size and copy.state.index == 202 and copy.state.compact_revision == 50
        assert list(d.glob("backup-*")) == []  # unlinked once open
        return data
    finally:
        kv.close()


def meta_for(data: bytes, **changes: object) -> BackupMeta:
    meta = BackupMeta(
        sqlite_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        index=202,
        term=3,
        revision=201,
        compact_revision=50,
        created_at=utc_now_text(),
        backup_id=new_backup_id(),
        member_id=2,
        ggap_version="0.1.0",
    )
    return attrs.evolve(meta, **changes)  # type: ignore[arg-type]


def save(path: Path, data: bytes, meta: BackupMeta | None = None, chunk: int = 4096) -> BackupMeta:
    writer = BackupWriter(path, overwrite=False)
    writer.open()
    try:
        for i in range(0, len(data), chunk):
            writer.write(data[i : i + chunk])
        return writer.seal(meta or meta_for(data))
    finally:
        writer.discard()


def test_round_trip(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    meta = save(path, database)
    assert not path.with_name("b.snap.part").exists()
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_footer(path) == meta == verify_backup(path)
    raw = path.read_bytes()
    assert raw[: len(database)] == database and raw[-8:] == MAGIC
    assert meta.to_dict()["format_version"] == FORMAT_VERSION
    # The database part is exactly the server's copy, and still a kv.db snapshot.
    out = tmp_path / "copy.db"
    assert copy_database(path, out) == meta
    assert out.read_bytes() == database
    state = snapshot_state(out)
    assert (state.index, state.compact_revision) == (202, 50)


def _expect_corrupt(path: Path, match: str) -> None:
    with pytest.raises(StorageCorrupt, match=match):
        verify_backup(path)
    with pytest.raises(StorageCorrupt, match=match):
        copy_database(path, path.with_name("out.db"))
    assert not path.with_name("out.db").exists()


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        ("empty", "too short"),
        ("half-database", "no footer"),
        ("database-only", "no footer"),
        ("half-json", "no footer"),
        ("half-trailer", "no footer"),
        ("last-byte", "no footer"),
    ],
)
def test_truncated_files_are_refused(tmp_path: Path, database: bytes, cut: str, match: str) -> None:
    path = tmp_path / "b.snap"
    save(path, database)
    raw = path.read_bytes()
    json_len = len(raw) - len(database) - TRAILER
    keep = {
        "empty": 0,
        "half-database": len(database) // 2,
        "database-only": len(database),
        "half-json": len(database) + json_len // 2,
        "half-trailer": len(raw) - TRAILER // 2,
        "last-byte": len(raw) - 1,
    }[cut]
    path.write_bytes(raw[:keep])
    _expect_corrupt(path, match)


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ("database-start", "checksum mismatch"),
        ("database-middle", "checksum mismatch"),
        ("database-end", "checksum mismatch"),
        ("json", "metadata checksum mismatch"),
        ("json-length", "metadata length|metadata checksum"),
        ("crc", "metadata checksum mismatch"),
        ("magic", "no footer"),
    ],
)
def test_a_flipped_byte_is_refused(tmp_path: Path, database: bytes, where: str, match: str) -> None:
    path = tmp_path / "b.snap"
    save(path, database)
    raw = bytearray(path.read_bytes())
    end = len(raw)
    offset = {
        "database-start": 0,
        "database-middle": len(database) // 2,
        "database-end": len(database) - 1,
        "json": len(database) + 5,
        "json-length": end - TRAILER + 3,
        "crc": end - TRAILER + 4,
        "magic": end - 1,
    }[where]
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    _expect_corrupt(path, match)


def test_padding_or_splicing_is_refused(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    save(path, database)
    raw = path.read_bytes()
    path.write_bytes(raw + b"\0")  # padded after the footer: the magic is no longer last
    _expect_corrupt(path, "no footer")
    # Bytes inserted before a valid footer: the footer no longer describes the file.
    path.write_bytes(database + b"extra" + raw[len(database) :])
    _expect_corrupt(path, "truncated, padded or spliced")


def test_not_a_snapshot_at_all(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "kv.db"
    path.write_bytes(database)  # a bare SQLite file, e.g. kv.db copied by hand
    _expect_corrupt(path, "not a complete ggap snapshot file")


def _with_footer(database: bytes, body: bytes, version: int = FORMAT_VERSION) -> bytes:
    return database + body + struct.pack(">III8s", len(body), zlib.crc32(body), version, MAGIC)


def test_a_future_format_version_is_refused_as_such(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    # A newer writer may lay out everything before the last 12 bytes differently.
    path.write_bytes(database + b"whatever v2 puts here" + struct.pack(">I8s", FORMAT_VERSION + 1, MAGIC))
    with pytest.raises(FailedPrecondition, match=f"format version {FORMAT_VERSION + 1} is newer"):
        verify_backup(path)
    path.write_bytes(_with_footer(database, b"{}", version=0))
    _expect_corrupt(path, "format version 0")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"index": -1}, "index must be a non-negative integer"),
        ({"revision": "7"}, "revision must be a non-negative integer"),
        ({"term": True}, "term must be a non-negative integer"),
        ({"sha256": "ABC"}, "sha256 is not 64 lowercase hex"),
        ({"backup_id": "has space"}, "backup_id"),
        ({"created_at": None}, "created_at must be a string"),
        ({"sqlite_bytes": None}, "sqlite_bytes"),
    ],
)
def test_footer_fields_are_checked(
    tmp_path: Path, database: bytes, change: dict[str, object], match: str
) -> None:
    """A footer with a valid CRC but nonsense in it (a buggy or hostile writer)."""
    doc = {**meta_for(database).to_dict(), **change}
    path = tmp_path / "b.snap"
    path.write_bytes(_with_footer(database, json.dumps(doc).encode()))
    _expect_corrupt(path, match)


def test_footer_json_must_be_an_object(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    path.write_bytes(_with_footer(database, b"[1, 2]"))
    _expect_corrupt(path, "not a JSON object")
    path.write_bytes(_with_footer(database, b"{not json"))
    _expect_corrupt(path, "damaged snapshot footer")


def test_unknown_footer_fields_are_ignored(tmp_path: Path, database: bytes) -> None:
    """Within format version 1 a writer may add fields; readers keep working."""
    meta = meta_for(database)
    path = tmp_path / "b.snap"
    path.write_bytes(_with_footer(database, json.dumps({**meta.to_dict(), "later": [1]}).encode()))
    assert verify_backup(path) == meta


def test_encode_footer_is_what_seal_appends(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    meta = save(path, database)
    assert path.read_bytes() == database + encode_footer(meta)


# --- the writer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "match"),
    [({"sqlite_bytes": 1}, "received .* bytes, the server announced 1"), ({"sha256": "0" * 64}, "checksum")],
)
def test_seal_refuses_what_does_not_match_the_announcement(
    tmp_path: Path, database: bytes, change: dict[str, object], match: str
) -> None:
    path = tmp_path / "b.snap"
    with pytest.raises(StorageCorrupt, match=match):
        save(path, database, meta_for(database, **change))
    assert not path.exists() and not path.with_name("b.snap.part").exists()


def test_writer_refuses_to_replace_unless_asked(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    path.write_bytes(b"yesterday's backup")
    with pytest.raises(FailedPrecondition, match="exists; pass --force"):
        BackupWriter(path, overwrite=False).open()
    assert path.read_bytes() == b"yesterday's backup"
    writer = BackupWriter(path, overwrite=True)
    writer.open()
    writer.write(database)
    writer.seal(meta_for(database))
    verify_backup(path)


def test_writer_refuses_a_leftover_part_unless_asked(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    part = tmp_path / "b.snap.part"
    part.write_bytes(b"from a killed save")
    with pytest.raises(FailedPrecondition, match=r"b\.snap\.part exists"):
        BackupWriter(path, overwrite=False).open()
    assert part.read_bytes() == b"from a killed save"  # not ours: left alone
    BackupWriter(path, overwrite=True).open()  # --force takes it over


def test_writer_checks_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="is not a directory"):
        BackupWriter(tmp_path / "missing" / "b.snap", overwrite=False).check_target()
    with pytest.raises(FailedPrecondition, match="it is a directory"):
        BackupWriter(tmp_path, overwrite=True).check_target()


def test_discard_removes_only_its_own_part(tmp_path: Path, database: bytes) -> None:
    path = tmp_path / "b.snap"
    writer = BackupWriter(path, overwrite=False)
    writer.open()
    writer.write(database[:100])
    writer.discard()
    writer.discard()  # idempotent
    assert list(tmp_path.iterdir()) == []
