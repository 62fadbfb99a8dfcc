"""Shared helpers of the migrate tests: stores from the registry, sample histories, chunk text."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import zstandard

from skyferry.adapters import registry
from skyferry.core.messages import Event, NewEvent
from skyferry.core.ports import Archive, EventStore, ViewStore
from skyferry.migrate.chunks import ChunkWriter
from skyferry.migrate.export import HeadTracker
from skyferry.migrate.format import encode_events
from skyferry.migrate.manifest import MANIFEST_NAME, Manifest
from skyferry.migrate.writer import TargetWriter
from tests import services


def store_schemes() -> list[str]:
    """One scheme per event-store adapter class of the registry (aliases run once)."""
    seen: dict[str, str] = {}
    for scheme, path in sorted(registry.EVENT_STORES.items()):
        seen.setdefault(path, scheme)
    return sorted(seen.values())


@contextlib.contextmanager
def store_url(scheme: str) -> Iterator[str]:
    """A fresh, empty store of ``scheme`` for one test (its URL)."""
    with services.provide("event_store", registry.EVENT_STORES[scheme], scheme) as url:
        yield url


@contextlib.contextmanager
def opened(url: str) -> Iterator[tuple[EventStore, ViewStore]]:
    """The event store and view store at ``url``, closed afterwards."""
    events = registry.open_event_store(url)
    views = registry.open_view_store(url)
    try:
        yield events, views
    finally:
        views.close()
        events.close()


def fill(store: EventStore, *, streams: int = 6, per_stream: int = 7, prefix: str = "acct") -> int:
    """Append an interleaved history with awkward payloads; returns the number of events."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    count = 0
    for version in range(1, per_stream + 1):
        for s in range(streams):
            stream_id = f"{prefix}:{s}" if s % 3 else f"tenant-{s}/{prefix}.ü_{s}"
            event = NewEvent(
                type="MoneyDeposited" if version % 2 else "MoneyWithdrawn",
                data={
                    "amount": f"{version}.{s:02d}",
                    "n": version * 1000 + s,
                    "rate": 1.25,
                    "note": '€ ✓\n"q"',
                    "nested": {"z": [1, None, True], "a": {}},
                },
                metadata={"correlation_id": str(uuid.UUID(int=version * 100 + s)), "actor": "tester"},
                id=str(uuid.uuid4()),
                schema_version=1 + version % 3,
                occurred_at=moment + timedelta(seconds=count, microseconds=count),
            )
            store.append(stream_id, [event], version - 1)
            count += 1
    return count


def filled(url: str, *, streams: int, per_stream: int) -> str:
    """``url`` after :func:`fill` wrote ``streams * per_stream`` events into its store."""
    with opened(url) as (store, _):
        fill(store, streams=streams, per_stream=per_stream)
    return url


def fill_many(store: EventStore, count: int = 11_234, streams: int = 37) -> None:
    """``count`` events over ``streams`` streams, with awkward payloads, written as an import
    writes them (more than two export read batches by default)."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    events = [
        Event(
            str(uuid.UUID(int=i + 1)),
            f"acct:{i % streams}" if i % streams % 5 else f"tenant-{i % streams}/ü.{i % streams}",
            i // streams + 1,
            "MoneyDeposited",
            1 + i % 3,
            {"amount": f"{i}.50", "note": '€ ✓\n"q"', "nested": {"z": [1, None, True], "a": {}}, "rate": 1.25},
            {"correlation_id": str(uuid.UUID(int=i)), "actor": "tester"},
            moment + timedelta(microseconds=i // 3),
            moment + timedelta(seconds=1, microseconds=i // 3),
            None,
        )
        for i in range(count)
    ]
    writer = TargetWriter(store)  # bulk_append where the store has it, else append per stream
    for start in range(0, count, 400):  # within every store's limit of writes per commit
        writer.write(events[start : start + 400])


def chunk_lines(archive: Archive, *, drop_position: bool = False) -> list[bytes]:
    """Every line of every chunk of ``archive``, in order (optionally without ``sourceposition``)."""
    manifest = Manifest.from_bytes(archive.get(MANIFEST_NAME))
    lines: list[bytes] = []
    for entry in manifest.chunks:
        text = zstandard.ZstdDecompressor().decompress(archive.get(entry.name))
        for line in text.splitlines():
            if drop_position:
                raw = orjson.loads(line)
                raw.pop("sourceposition", None)
                line = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
            lines.append(line)
    return lines


def write_archive(
    archive: Archive, events: list[Event], chunk_events: int = 10_000, chunk_bytes: int = 16 * 1024 * 1024
) -> Manifest:
    """An archive of ``events`` exactly as given (valid or not), as an export would write it:
    chunks, hash chains and a sealed manifest, for tests of what a reader does with any input."""
    writer = ChunkWriter(archive, chunk_events=chunk_events, chunk_bytes=chunk_bytes)
    heads = HeadTracker()
    lines, canonicals = encode_events(events)
    heads.add_many(zip(events, canonicals, strict=True), "test")
    writer.add_many(events, lines)
    writer.close()
    manifest = Manifest(
        source={"url": "test://", "shard": None},
        created_at="2026-01-01T00:00:00.000000Z",
        chunks=writer.entries,
        streams=heads.heads,
    )
    archive.put(MANIFEST_NAME, manifest.to_bytes())
    return manifest


def sized_data(size: int) -> dict[str, str]:
    """``data`` whose canonical JSON is ``size`` bytes (with empty metadata: 2 bytes more)."""
    return {"pad": "z" * (size - len(orjson.dumps({"pad": ""})))}


def awkward_history(streams: int, per_stream: int, prefix: str = "s") -> list[Event]:
    """Interleaved events with awkward text and timestamps (before 1970, microseconds)."""
    tricky = {"text": 'tab\tnew\nline\\ "q" \u00e9\u2028\U0001f600', "z": [1, 2.5, None], "a": {}, "big": 2**63 - 1}
    return [
        Event(
            str(uuid.uuid4()),
            f"{prefix}-{s}" if s % 2 else f"tenant/ü.{prefix}{s}",
            version,
            "Type \\ é",
            1 + version % 3,
            {**tricky, "n": version * 100 + s},
            {"m": f"{s}"},
            datetime(1969, 12, 31, 23, 59, 59, version, tzinfo=UTC),
            datetime(2026, 3, 4, 5, 6, 7, s, tzinfo=UTC),
        )
        for version in range(1, per_stream + 1)
        for s in range(streams)
    ]
