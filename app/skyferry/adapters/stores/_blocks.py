"""Bulk writes on positions taken ahead (feature ``bulk_in_flight``): what the stores share.

A store that numbers its events from one global head (DynamoDB's counter item, Firestore's
head document) can only commit one write after another if each write moves that head: a
round trip each, one after the other.  An import into such a store, far away, waits on
the network most of the time.  So ``bulk_append`` takes positions ahead instead:

1. **Reserve.**  One conditional write moves the head past a *block* of events and
   creates one :class:`Claim` per *part* of the block (the part's positions and an expiry,
   :data:`CLAIM_SECONDS` from now).  The block's events take the positions in the order
   given, so the global order is the order of the call.
2. **Write the parts side by side.**  The parts (each stream's events together:
   :meth:`~skyferry.core.ports.WriteLimits.pack`) are written ``in_flight`` at a time,
   each stream's parts in order (:class:`PartPool`).  A part is one atomic write of its
   events and stream heads, that also deletes its claim, on condition that the claim is
   still there.  Parts share no document, so they do not conflict.  A block holds at
   most :data:`PARTS_PER_IN_FLIGHT` parts per write in flight, so it is written in a few
   rounds, long before its claims expire.
3. **Gaps.**  A position no event took (its event was already stored: a resumed import;
   its part was not written: a failed block) becomes a *gap*: an entry in the position
   order that holds no event, which ``read_all`` passes over.  A failed block's writer
   turns the claims of its unwritten parts into gaps (*settles* them: the gaps and the
   claim's delete, one atomic write conditioned on the claim).

A reader tailing the log stops at a hole, as it does for an event still committing.  A
writer that died mid-block leaves claims behind; a reader that stops at a hole settles
every expired claim and reads on, so a dead writer stalls readers for
:data:`CLAIM_SECONDS` at most, and its late part, if it ever arrives, finds its claim gone
and is refused.  Positions stay unique and ascending, and each event's position never
changes; they are dense only until a bulk write fails or is resumed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Final

from skyferry.core.errors import ConcurrencyError, ConfigurationError, TransientError, ValidationError
from skyferry.core.inflight import OrderedPool
from skyferry.core.messages import Event, check_append
from skyferry.core.ports import WriteLimits

_log = logging.getLogger(__name__)

CLAIM_SECONDS: Final = 30.0
"""How long reserved positions wait for their part before a reader settles them as gaps:
how long readers wait at the holes of a writer that died.  A live writer's block lasts a
few of its parts' round trips (:data:`PARTS_PER_IN_FLIGHT`); a part that still arrives
after its claim was settled is refused, and the command says to run it again."""
_WARM_START_SECONDS: Final = 5.0
"""How long a warm-up waits for the others to start (they all start at once, unless the
pool is still busy with an earlier call's tasks)."""
PARTS_PER_IN_FLIGHT: Final = 4
"""The most parts a block holds per write in flight: a block is written in about this many
rounds, however small ``in_flight`` is, so it ends long before its claims expire."""


def blocks(
    events: Sequence[Event], limits: WriteLimits, most_events: int, most_parts: int
) -> Iterator[tuple[Sequence[Event], list[list[Event]]]]:
    """``events`` cut, in order, into blocks of at most ``most_events`` whose parts
    (:meth:`~skyferry.core.ports.WriteLimits.pack`) number at most ``most_parts``: each
    block with its parts."""
    start = 0
    while start < len(events):
        size = most_events
        while len(parts := limits.pack(events[start : start + size])) > most_parts and size > 1:
            size //= 2
        yield events[start : start + size], parts
        start += size


def settle_expired(listed: Callable[[], Iterable[Claim]], settle: Callable[[Claim], bool], what: str) -> bool:
    """Settle every expired claim of ``listed()`` (a writer that died mid-block); whether any was.

    A store that cannot (a read-only identity) logs why: its readers wait at the hole for a
    writer to settle it."""
    settled = False
    try:
        for claim in listed():
            if claim.expired():
                settled = settle(claim) or settled
    except (ConfigurationError, TransientError) as e:
        _log.warning("%s: could not settle expired positions: %s", what, e)
    return settled


@dataclass(frozen=True, slots=True)
class Claim:
    """The positions a block took for one part, until that part (or a settler) deletes it.

    ``name`` (``<block's first position>.<part>``, zero-padded) is unique: blocks never
    share a position.  ``expires`` is in Unix seconds.
    """

    name: str
    positions: tuple[int, ...]
    expires: int

    def expired(self) -> bool:
        """Whether a reader may settle it (its writer had :data:`CLAIM_SECONDS` to write the part)."""
        return self.expires < now()


def now() -> float:
    """Unix seconds, as claims count them."""
    return time.time()


def claims(first: int, parts: Sequence[Sequence[Event]], position: dict[str, int]) -> list[Claim]:
    """One claim per part of the block that starts at position ``first``, expiring
    :data:`CLAIM_SECONDS` from now."""
    expires = int(now() + CLAIM_SECONDS)
    return [
        Claim(f"{first:020d}.{n:03d}", tuple(position[event.id] for event in part), expires)
        for n, part in enumerate(parts)
    ]


def check_events(events: Sequence[Event]) -> None:
    """``ValidationError`` for an event of a bulk write that no store would take, or an id
    that appears twice in it."""
    ids: set[str] = set()
    for event in events:
        check_append(event.stream_id, [event.to_new()])
        if event.id in ids:
            raise ValidationError(f"bulk_append: event id {event.id} appears twice")
        ids.add(event.id)


def by_stream(events: Sequence[Event]) -> dict[str, list[Event]]:
    """``events`` by stream, each stream's in the order given (streams first seen first)."""
    runs: dict[str, list[Event]] = {}
    for event in events:
        runs.setdefault(event.stream_id, []).append(event)
    return runs


def check_contiguous(events: Sequence[Event], actual: Callable[[str], int]) -> None:
    """``ConcurrencyError`` for a stream whose events in ``events`` skip or repeat a version."""
    for stream_id, run in by_stream(events).items():
        if [e.version for e in run] != list(range(run[0].version, run[0].version + len(run))):
            raise ConcurrencyError(stream_id, run[0].version - 1, actual(stream_id), "the versions are not contiguous")


def decide(
    by_stream: Mapping[str, Sequence[Event]],
    versions: Mapping[str, int],
    stored: Mapping[str, tuple[str, int]],
) -> tuple[set[str], dict[str, int]]:
    """Which events of a bulk write are new, and each stream's version after them.

    ``versions``: each stream's current version (0 when absent); ``stored``: where the ids
    already stored are (``(stream, version)``).  An event at or below its stream's version
    must be stored there as it is (a resumed import skips it); the others must continue
    the stream.  Anything else is a ``ConcurrencyError`` naming the stream and version."""
    new_ids: set[str] = set()
    after: dict[str, int] = {}
    for stream_id, run in by_stream.items():
        current = versions.get(stream_id, 0)
        fresh = False
        for event in run:
            at = stored.get(event.id)
            if event.version <= current and not fresh:
                if at != (stream_id, event.version):
                    raise ConcurrencyError(
                        stream_id,
                        event.version - 1,
                        versions.get(stream_id, 0),
                        f"version {event.version} holds another event than {event.id}",
                    )
                continue
            if event.version != current + 1 or at is not None:
                raise ConcurrencyError(
                    stream_id,
                    event.version - 1,
                    versions.get(stream_id, 0),
                    f"event {event.id} at version {event.version} does not continue the stream",
                )
            current, fresh = event.version, True
            new_ids.add(event.id)
        after[stream_id] = current
    return new_ids, after


class PartPool:
    """The threads a store writes a block's parts on (built on first use, resized on demand)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._pool: OrderedPool[int] | None = None
        self._warmed = False

    def _sized(self, in_flight: int) -> OrderedPool[int]:
        if self._pool is None or self._pool.size != in_flight:
            self.close()
            self._pool = OrderedPool(in_flight, name=self._name)
        return self._pool

    def warm(self, in_flight: int, threads: int, prepare: Callable[[], object]) -> None:
        """Have up to ``threads`` of the pool's threads run ``prepare`` now, once per pool: what
        each needs before its first write (a client of its own, connected), made while the
        caller does its first reads instead of after them.  A failure is left for that
        thread's first write to meet and report."""
        if in_flight < 2:
            return
        pool = self._sized(in_flight)
        if self._warmed:
            return
        self._warmed = True
        count = min(threads, in_flight)
        # each waits until all have started: a thread done early must not take another's turn
        together = threading.Barrier(count, timeout=_WARM_START_SECONDS)
        for n in range(count):
            pool.submit((f"\x00warm {n}",), partial(_quietly, together, prepare))

    def run(
        self,
        parts: Sequence[Sequence[Event]],
        block: Sequence[Claim],
        in_flight: int,
        write: Callable[[Sequence[Event], Claim], int],
        settle: Callable[[Claim], object],
    ) -> int:
        """``write(part, claim)`` for every part, ``in_flight`` at a time, each stream's parts
        in order; the sum of what they return.  After a failure no part starts, the running
        ones finish, every claim is settled (those of written parts are gone already: their
        settle fails its condition and does nothing), and the error is raised."""
        pool = self._sized(in_flight)
        try:
            for part, claim in zip(parts, block, strict=True):
                streams = tuple(dict.fromkeys(event.stream_id for event in part))
                pool.submit(streams, partial(write, part, claim))
            return sum(pool.drain())
        except Exception:  # drain() raises once nothing runs; a pool of one, as the part fails
            for claim in block:
                try:
                    settle(claim)
                except Exception as e:  # it stays: readers settle it once it expires
                    _log.warning("could not release the positions %s: %s", claim.positions, e)
            raise

    def close(self) -> None:
        """Stop the threads (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._warmed = False


def _quietly(together: threading.Barrier, prepare: Callable[[], object]) -> int:
    """``prepare()`` once every warm-up has started, its error logged: a warm-up counts no
    event and fails no write."""
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # the pool is busy: warm what can be
            together.wait()
        prepare()
    except Exception as e:
        _log.debug("warming a writer thread failed (its first write will say why): %s", e)
    return 0
