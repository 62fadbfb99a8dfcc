"""Reading a store for export: here, or in a second process on another core.

An export is CPU-bound in Python when the store is local (SQLite): decoding rows, encoding
each event twice, hashing the chains.  So when :func:`~skyferry.migrate.export.export` is
given the URL it opened the store from, it reads the first batch itself and hands the rest
to :class:`ReaderProcess` (a :class:`~skyferry.migrate.child.ChildProcess`, whose safety
rules it follows): ``python -m skyferry.migrate.reader`` opens the same URL, reads with
:func:`batches`, and sends the events prepared
(:func:`~skyferry.migrate.format.prepare_events`: data and metadata as canonical JSON,
timestamps as text) as ``marshal`` frames, while the exporting process encodes lines,
extends the hash chains and writes chunks.  It ends by saying the position it read up to.
The archive is the same byte for byte either way (tested).
"""

from __future__ import annotations

import marshal
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from skyferry.core.errors import TransientError
from skyferry.core.messages import Event
from skyferry.core.ports import EventStore
from skyferry.migrate.child import ChildProcess, serve
from skyferry.migrate.format import Prepared, prepare_events
from skyferry.migrate.sharding import Shard, owned
from skyferry.migrate.transforms import Transformer

READ_BATCH: Final = 5000
READ_PATIENCE: Final = 10.0
"""Seconds :func:`batches` waits for ``read_all`` to reach the end it was asked to read to."""


def batches(
    store: EventStore,
    end: str | None,
    shard: Shard | None,
    transformer: Transformer | None,
    after: str | None = None,
    limit: int | Callable[[], int] = READ_BATCH,
) -> Iterator[tuple[list[Event], str]]:
    """``(events, position read up to)``: the events to export (of ``shard``, through
    ``transformer``) in batches of up to ``limit`` (or of what ``limit()`` answers before
    each read), after ``after`` and up to position ``end`` (the last when the export
    started, so that exporting a live store ends).

    ``read_all`` may answer nothing for a while before ``end`` (an eventually consistent
    index, as DynamoDB's): it is asked again for up to :data:`READ_PATIENCE` seconds, then
    :class:`TransientError` is raised: what is read is never silently shorter."""
    waited_since: float | None = None
    while end is not None and after != end:
        batch = store.read_all(after=after, limit=limit() if callable(limit) else limit)
        if not batch:
            now = time.monotonic()
            waited_since = waited_since or now
            if now - waited_since > READ_PATIENCE:
                raise TransientError(
                    f"{store.url}: read_all gave nothing after position {after} for {READ_PATIENCE:g} s, "
                    f"before the last position {end}; run the command again"
                )
            time.sleep(0.1)
            continue
        waited_since = None
        positions = [event.position for event in batch]
        cut = positions.index(end) if end in positions else None
        if cut is not None:
            batch = batch[: cut + 1]
        last = batch[-1].position
        assert last is not None  # read_all gives every event its position
        after = last
        mine = batch if shard is None else [event for event in batch if owned(shard, event.stream_id)]
        if transformer is not None:
            mine = transformer.apply(mine)
        yield mine, last
        if cut is not None:
            return


class ReaderProcess(ChildProcess):
    """The prepared events of ``url``'s store after ``after`` up to ``end`` (of ``shard``),
    read by a child process; iterate once, and leave the ``with`` block to stop it early.

    The child starts at construction, so it boots while the caller works on something else.
    """

    def __init__(self, url: str, *, after: str, end: str, shard: Shard | None, limit: int = READ_BATCH) -> None:
        request = {
            "url": url,
            "after": after,
            "end": end,
            "shard": None if shard is None else str(shard),
            "limit": limit,
        }
        super().__init__(
            "skyferry.migrate.reader", request, end=end, name="the export's reader process", command="export"
        )

    def __iter__(self) -> Iterator[list[Prepared]]:
        return self._frames()  # the with block stops the child, whether or not it was read to the end

    def _frames(self) -> Iterator[list[Prepared]]:
        new = tuple.__new__
        for body in self._bodies():
            yield [new(Prepared, row) for row in marshal.loads(body)]  # noqa: S302  # our own child, a private pipe


def _read(request: dict[str, Any], send: Callable[[bytes], None]) -> str:
    """The child's work: the prepared events of the request, a batch a frame; returns the
    position read up to."""
    from skyferry.adapters import registry

    store = registry.open_event_store(request["url"], existing=True)
    try:
        shard = Shard.parse(request["shard"])
        source = batches(store, request["end"], shard, None, after=request["after"], limit=request["limit"])
        read_to: str = request["after"]
        for events, position in source:  # the pipe lets the next batch be read while this one is encoded
            send(marshal.dumps([tuple(event) for event in prepare_events(events)]))
            read_to = position
    finally:
        store.close()
    return read_to


def main() -> None:
    """The child: :func:`~skyferry.migrate.child.serve` with :func:`_read`."""
    serve(_read, "the export's reader process")


if __name__ == "__main__":
    main()
