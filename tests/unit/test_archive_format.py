"""The archive format on its own: CloudEvents lines, hash chains, manifest, chunks, keys, shards."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from cloudevents.core.formats.json import JSONFormat

from skyferry.adapters.archives.local import LocalArchive
from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import Event, encode_json, format_timestamp
from skyferry.migrate.chunks import ChunkWriter, read_chunk
from skyferry.migrate.crypto import ChunkCipher, load_key, new_key, parse_key
from skyferry.migrate.errors import ArchiveError, WrongKey
from skyferry.migrate.format import (
    CHAIN_START,
    canonical_bytes,
    chain_next,
    decode_line,
    decode_line_canonical,
    encode_line,
    timestamp,
    to_cloudevent,
)
from skyferry.migrate.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, StreamHead
from skyferry.migrate.sharding import Shard, shard_of


def event(version: int = 1, stream_id: str = "account:42", **changes: Any) -> Event:
    base = Event(
        id=str(uuid.UUID(int=version)),
        stream_id=stream_id,
        version=version,
        type="MoneyDeposited",
        schema_version=2,
        data={"amount": "10.50", "currency": "EUR", "nested": {"b": 1, "a": [1, 2.5, None]}},
        metadata={"correlation_id": "c-1", "actor": "ümlaut"},
        occurred_at=datetime(2026, 11, 27, 6, 0, 0, 123456, tzinfo=UTC),
        recorded_at=datetime(2026, 11, 27, 6, 0, 1, 654321, tzinfo=UTC),
        position="000017",
    )
    return replace(base, **changes)


def test_a_line_is_a_cloudevent_the_official_sdk_reads() -> None:
    e = event()
    parsed = JSONFormat().read(None, encode_line(e))
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_id() == e.id
    assert parsed.get_type() == "MoneyDeposited"
    assert parsed.get_source() == "/skyferry/streams/account%3A42"
    assert parsed.get_time() == e.occurred_at
    assert parsed.get_data() == e.data
    assert parsed.get_extension("streamid") == "account:42"
    assert parsed.get_extension("streamversion") == 1
    assert parsed.get_extension("schemaversion") == 2
    assert parsed.get_extension("recordedtime") == "2026-11-27T06:00:01.654321Z"
    assert orjson.loads(parsed.get_extension("metadata")) == e.metadata
    assert parsed.get_extension("sourceposition") == "000017"


def test_extension_names_are_lower_case_alphanumeric() -> None:
    standard = {"specversion", "id", "source", "type", "time", "datacontenttype", "data"}
    extensions = set(to_cloudevent(event())) - standard
    assert extensions == {"streamid", "streamversion", "schemaversion", "recordedtime", "metadata", "sourceposition"}
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in extensions)


def test_every_field_survives_a_line_exactly() -> None:
    e = event(version=7, stream_id="tenant/a.b-c_d:ü")
    back = decode_line(encode_line(e), "chunk", 1)
    assert back == e
    assert encode_line(back) == encode_line(e)


def test_lines_are_canonical_whatever_the_key_order() -> None:
    a = event(data={"x": 1, "y": {"q": 1, "p": 2}})
    b = event(data={"y": {"p": 2, "q": 1}, "x": 1})
    assert encode_line(a) == encode_line(b)


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"amount": "10.51"}},
        {"metadata": {}},
        {"type": "MoneyWithdrawn"},
        {"schema_version": 3},
        {"occurred_at": datetime(2026, 11, 27, 6, 0, 0, 123457, tzinfo=UTC)},
        {"recorded_at": datetime(2026, 11, 27, 6, 0, 1, 654322, tzinfo=UTC)},
        {"id": str(uuid.uuid4())},
        {"version": 2},
    ],
)
def test_the_hash_chain_changes_with_any_field_but_not_the_position(change: dict[str, Any]) -> None:
    original = chain_next(CHAIN_START, event())
    assert chain_next(CHAIN_START, replace(event(), **change)) != original
    assert chain_next(CHAIN_START, event(position="elsewhere-99")) == original


def test_the_chain_depends_on_the_order() -> None:
    one, two = event(1), event(2)
    assert chain_next(chain_next(CHAIN_START, one), two) != chain_next(chain_next(CHAIN_START, two), one)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"specversion": "1.0", "id": "x"}', "missing CloudEvents attribute"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(line: bytes, problem: str) -> None:
    with pytest.raises(ArchiveError, match=rf"chunks/000003.jsonl.zst, line 12: {problem}"):
        decode_line(line, "chunks/000003.jsonl.zst", 12)


def test_a_line_whose_source_disagrees_with_its_stream_is_refused() -> None:
    raw = orjson.loads(encode_line(event()))
    raw["source"] = "/skyferry/streams/other"
    with pytest.raises(ArchiveError, match="line 4: malformed event: source"):
        decode_line(orjson.dumps(raw), "c", 4)


def manifest() -> Manifest:
    return Manifest(
        source={"url": "memory://", "shard": None},
        created_at="2026-11-27T06:00:00.000000Z",
        streams={"s": StreamHead(1, "ab" * 32, 1)},
    )


def test_the_manifest_round_trips_and_its_digest_covers_every_field() -> None:
    raw = manifest().to_bytes()
    parsed = Manifest.from_bytes(raw)
    assert parsed.streams["s"].head == "ab" * 32
    assert parsed.digest.startswith("sha256:")
    doc = orjson.loads(raw)
    doc["streams"]["s"]["events"] = 2
    with pytest.raises(ArchiveError, match=r"manifest\.json: digest mismatch"):
        Manifest.from_bytes(orjson.dumps(doc))


def test_an_unknown_format_version_is_refused_by_name() -> None:
    doc = orjson.loads(manifest().to_bytes())
    doc["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ArchiveError, match=f"unknown format_version {FORMAT_VERSION + 1}"):
        Manifest.from_bytes(orjson.dumps(doc))


@pytest.mark.parametrize("name", ["../../events.db", "/etc/passwd", "chunks//0.zst", "chunks/./0.zst", ""])
def test_a_chunk_named_outside_the_archive_is_refused_by_the_manifest(name: str) -> None:
    doc = orjson.loads(manifest().to_bytes())
    entry = {"name": name, "events": 0, "bytes": 0, "sha256": "", "first_position": None, "last_position": None}
    doc["chunks"] = [entry]
    del doc["digest"]
    doc["digest"] = "sha256:" + hashlib.sha256(encode_json(doc)).hexdigest()  # a digest made to match
    with pytest.raises(ArchiveError, match=r"manifest\.json: chunk 0: archive object name .* must be a relative path"):
        Manifest.from_bytes(orjson.dumps(doc))


def write_chunk(tmp_path: Path, cipher: ChunkCipher | None = None, count: int = 5) -> tuple[LocalArchive, Manifest]:
    archive = LocalArchive(tmp_path / "a")
    writer = ChunkWriter(archive, cipher, chunk_events=count)
    for version in range(1, count + 1):
        writer.add(event(version))
    writer.flush()
    return archive, Manifest(source={}, created_at="", chunks=writer.entries)


def test_chunks_are_zstd_json_lines_and_read_back(tmp_path: Path) -> None:
    archive, m = write_chunk(tmp_path)
    entry = m.chunks[0]
    stored = archive.get(entry.name)
    assert entry.sha256 == hashlib.sha256(stored).hexdigest()
    lines = zstandard.ZstdDecompressor().decompress(stored).splitlines()
    assert len(lines) == 5
    assert [e.version for e in read_chunk(archive, entry, None)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-7], "size is"),
        (lambda b: b[:40] + bytes([b[40] ^ 0x01]) + b[41:], "sha256"),
    ],
    ids=["truncated", "flipped-byte"],
)
def test_a_damaged_chunk_is_named(tmp_path: Path, damage: object, message: str) -> None:
    archive, m = write_chunk(tmp_path)
    entry = m.chunks[0]
    archive.put(entry.name, damage(archive.get(entry.name)))  # type: ignore[operator]
    with pytest.raises(ArchiveError, match=rf"chunks/000000.jsonl.zst: {message}"):
        read_chunk(archive, entry, None)


def test_a_missing_chunk_is_named(tmp_path: Path) -> None:
    archive, m = write_chunk(tmp_path)
    archive.delete(m.chunks[0].name)
    with pytest.raises(ArchiveError, match=r"chunks/000000\.jsonl\.zst: the chunk is missing"):
        read_chunk(archive, m.chunks[0], None)


def test_encrypted_chunks_open_with_the_key_only(tmp_path: Path) -> None:
    key = bytes.fromhex(new_key())
    archive, m = write_chunk(tmp_path, ChunkCipher(key))
    stored = archive.get(m.chunks[0].name)
    assert b"MoneyDeposited" not in stored
    with pytest.raises(zstandard.ZstdError):
        zstandard.ZstdDecompressor().decompress(stored)
    assert len(read_chunk(archive, m.chunks[0], ChunkCipher(key))) == 5
    with pytest.raises(WrongKey, match="decryption failed: wrong key"):
        read_chunk(archive, m.chunks[0], ChunkCipher(bytes(32)))


def test_the_key_check_tells_a_wrong_key_before_any_chunk() -> None:
    header = ChunkCipher(b"k" * 32).header()
    ChunkCipher(b"k" * 32).check(header)
    with pytest.raises(WrongKey, match="wrong encryption key"):
        ChunkCipher(b"x" * 32).check(header)


def test_keys_come_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hex_key = new_key()
    (tmp_path / "key").write_text(hex_key + "\n")
    assert load_key(str(tmp_path / "key"), None) == bytes.fromhex(hex_key)
    monkeypatch.setenv("SKYFERRY_TEST_KEY", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=")
    assert load_key(None, "SKYFERRY_TEST_KEY") == b"A" * 32
    assert load_key(None, None) is None
    with pytest.raises(ConfigurationError, match="--key-env NOPE_UNSET: the environment variable is not set"):
        load_key(None, "NOPE_UNSET")
    with pytest.raises(ConfigurationError, match="must be 32 bytes"):
        parse_key("abcd", "--key-file k")
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_key(str(tmp_path / "absent"), None)


def test_shards_split_streams_stably_and_completely() -> None:
    streams = [f"account:{i}" for i in range(400)]
    shards = [Shard(i, 4) for i in range(4)]
    owners = [[s.owns(sid) for s in shards].count(True) for sid in streams]
    assert owners == [1] * 400
    sizes = [sum(s.owns(sid) for sid in streams) for s in shards]
    assert min(sizes) > 60
    assert shard_of("account:1", 4) == int(hashlib.sha256(b"account:1").hexdigest()[:8], 16) % 4


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b", "0/0"])
def test_a_bad_shard_names_the_setting(text: str) -> None:
    with pytest.raises(ConfigurationError, match="--shard"):
        Shard.parse(text)


def test_manifest_name_is_fixed() -> None:
    assert MANIFEST_NAME == "manifest.json"


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 27, 6, 0, 0, 0, tzinfo=UTC),
        datetime(1999, 1, 2, 3, 4, 5, 999999, tzinfo=UTC),
        datetime(2026, 6, 1, 23, 30, 0, 5, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_the_fast_timestamp_is_the_kernels_text(moment: datetime) -> None:
    assert timestamp(moment) == format_timestamp(moment)


def test_canonical_bytes_are_the_envelope_and_decoding_keeps_them() -> None:
    e = event(occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert canonical_bytes(e) == encode_json(e.to_dict())
    decoded, canonical = decode_line_canonical(encode_line(e), "c", 1)
    assert (decoded, canonical) == (e, canonical_bytes(e))
    raw = orjson.loads(encode_line(e))
    raw["time"] = "2026-01-01T01:00:00+01:00"  # a foreign writer's equivalent form
    decoded, canonical = decode_line_canonical(orjson.dumps(raw), "c", 1)
    assert canonical == canonical_bytes(e)


@pytest.mark.parametrize("same_times", [True, False])
@pytest.mark.parametrize("position", [None, "00000000000000000042"])
def test_encode_events_gives_exactly_the_line_and_the_canonical_bytes(same_times: bool, position: str | None) -> None:
    from skyferry.migrate.format import canonical_bytes, encode_events, encode_line

    occurred = datetime(2026, 11, 27, 7, 0, 0, 1, tzinfo=UTC)
    recorded = occurred if same_times else (occurred + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5)))
    data = {"z": 1.5, "a": {"y": [1, {"q": 'é\u2028\\"x\t'}], "b": None}, "é": "\n"}
    event = Event(str(uuid.uuid4()), "s-1", 3, "T", 2, data, {"k": "v", "a": [3, 2]}, occurred, recorded, position)
    assert encode_events([event]) == ([encode_line(event)], [canonical_bytes(event)])


def test_data_portability_errors_survive_pickling() -> None:
    """They cross process boundaries (multiprocessing, job runners) with their fields intact."""
    import pickle

    from skyferry.migrate.errors import ArchiveError, TargetConflict, VerificationFailed, WrongKey

    for error in (
        ArchiveError("chunks/000001.jsonl.zst", "not JSON", 7),
        WrongKey("manifest.json", "the key does not open the archive"),
        TargetConflict("account:1", 3, "the target holds another event there"),
        VerificationFailed(["stream 'a': 2 events vs 3"]),
    ):
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301  (our own bytes)
        assert (type(copy), str(copy), copy.__dict__) == (type(error), str(error), error.__dict__)
