"""Parked events: an event that a handler keeps failing on is set aside, and the runner goes on.

A projection runner, a broker consumer or the process manager that fails on one event
retries it a bounded number of times with backoff (:class:`RetryPolicy`); then the event is
*parked*: a record naming the event and the error is written to the reserved view
collection ``$parked`` (key ``<runner>/<event id>``) **in the same** ``ViewStore.commit``
**that moves the runner's checkpoint past the event**, so on every store either both
happen or neither.  The runner then goes on with the next event.

Only errors that are the event's fault are parked.  A ``TransientError`` (an unreachable
store, a fenced store) or a ``ConcurrencyError`` (another runner committed first) is
raised as before: the worker backs off and runs the batch again.  A runner that would
park more than ``RetryPolicy.max_parked`` events raises
:class:`~skyferry.core.errors.TooManyParked` instead: a handler failing on event after
event is a bug to fix, not a stream of poison.

An operator resolves parked events with :class:`ParkedEvents` (``skyferry parked list |
retry | skip``): *retry* applies the event again, alone (after a fix was deployed), and
removes the record in the same commit when it succeeds; *skip* removes the record.  A
rebuild drops the records of the generation it replaces.  Records are kept until then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from skyferry.core.errors import ConcurrencyError, TooManyParked, TransientError, ValidationError
from skyferry.core.messages import Event, JSONObject, format_timestamp, utc_now
from skyferry.core.ports import EventStore, Message, ViewChange, ViewStore

log = logging.getLogger(__name__)

PARKED: Final = "$parked"
"""Reserved view collection of parked events (key: ``<runner>/<event id>``)."""

NOT_THE_EVENTS_FAULT: Final[tuple[type[Exception], ...]] = (TransientError, ConcurrencyError)
"""Errors that say nothing about the event: never parked, always raised (the batch runs again)."""

ERROR_TEXT_MAX: Final = 2000
"""Characters of the error kept in a parked record."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often an event is tried before it is parked, and how many a runner may park.

    An event is tried ``attempts`` times, ``first_backoff`` seconds apart, doubling up to
    ``max_backoff`` (by default 0.2, 0.4 and 0.8 s: 1.4 s in all).  Broker consumers leave
    the waiting to the broker: they park on the ``attempts``-th delivery.  ``sleep`` waits
    (tests pass one that does not).
    """

    attempts: int = 4
    first_backoff: float = 0.2
    max_backoff: float = 2.0
    max_parked: int = 100
    sleep: Callable[[float], None] = time.sleep

    def backoff(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure of one event."""
        return float(min(self.first_backoff * 2 ** (failures - 1), self.max_backoff))


DEFAULT_RETRY: Final = RetryPolicy()


def describe(error: BaseException) -> str:
    """The error as a parked record keeps it: class and message, control characters escaped, at most
    :data:`ERROR_TEXT_MAX` characters (so that every store can hold it)."""
    text = f"{type(error).__name__}: {error}"
    if not text.isprintable():
        text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text[:ERROR_TEXT_MAX]


def park_key(runner: str, event_id: str) -> str:
    """The key of the parked record of ``event_id`` for ``runner``."""
    return f"{runner}/{event_id}"


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    """One parked event: who parked it, which event, and why.

    ``runner`` is the checkpoint name of the projection generation (``balances_g1``) that
    parked it, ``projection`` and ``generation`` say which handler that is.  ``version``
    and ``position`` are 0 / ``""`` when the message could not even be decoded.
    """

    key: str
    runner: str
    projection: str
    generation: int
    event_id: str
    stream_id: str
    version: int
    type: str
    position: str
    error: str
    attempts: int
    parked_at: str

    def to_dict(self) -> JSONObject:
        """The record as JSON types (what ``skyferry parked list --json`` prints)."""
        return {
            "key": self.key,
            "runner": self.runner,
            "projection": self.projection,
            "generation": self.generation,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "position": self.position,
            "error": self.error,
            "attempts": self.attempts,
            "parked_at": self.parked_at,
        }

    @classmethod
    def from_doc(cls, key: str, value: Mapping[str, object]) -> ParkedEvent:
        """The record stored at ``key``."""
        return cls(
            key=key,
            runner=str(value["runner"]),
            projection=str(value["projection"]),
            generation=int(str(value["generation"])),
            event_id=str(value["event_id"]),
            stream_id=str(value["stream_id"]),
            version=int(str(value["version"])),
            type=str(value["type"]),
            position=str(value.get("position") or ""),
            error=str(value["error"]),
            attempts=int(str(value["attempts"])),
            parked_at=str(value["parked_at"]),
        )


def park(
    views: ViewStore,
    runner: str,
    projection: str,
    generation: int,
    subject: Event | Message,
    error: BaseException,
    attempts: int,
    policy: RetryPolicy,
) -> ViewChange:
    """The change that parks ``subject``; the caller commits it with the checkpoint's advance.

    ``subject`` is the event, or the broker message when it could not even be decoded
    (its headers then name the event).  Raises
    :class:`~skyferry.core.errors.TooManyParked` when ``runner`` has parked
    ``policy.max_parked`` events already.
    """
    if len(views.query(PARKED, prefix=f"{runner}/", limit=policy.max_parked)) >= policy.max_parked:
        raise TooManyParked(runner, policy.max_parked)
    if isinstance(subject, Event):
        event_id, stream_id, version = subject.id, subject.stream_id, subject.version
        event_type, position = subject.type, subject.position or ""
    else:
        announced = subject.attributes.get("version", "")
        event_id, stream_id, version = subject.id, subject.key, int(announced) if announced.isdigit() else 0
        event_type, position = subject.attributes.get("type", ""), ""
    log.error(
        "%s: parked event %s (%s, version %d, %s) after %d attempt(s): %s",
        runner,
        event_id,
        stream_id,
        version,
        event_type,
        attempts,
        describe(error),
    )
    record: JSONObject = {
        "runner": runner,
        "projection": projection,
        "generation": generation,
        "event_id": event_id,
        "stream_id": stream_id,
        "version": version,
        "type": event_type,
        "position": position,
        "error": describe(error),
        "attempts": attempts,
        "parked_at": format_timestamp(utc_now()),
    }
    return ViewChange(PARKED, park_key(runner, event_id), record)


def parked_in(views: ViewStore, runner: str = "") -> list[ParkedEvent]:
    """The parked events (of ``runner``, or of every runner), oldest first."""
    prefix = f"{runner}/" if runner else ""
    found = [ParkedEvent.from_doc(key, doc.value) for key, doc in views.query(PARKED, prefix=prefix)]
    return sorted(found, key=lambda p: (p.parked_at, p.key))


def drop_parked(views: ViewStore, runner: str) -> int:
    """Forget every parked record of ``runner`` (its generation is being dropped); how many."""
    keys = [key for key, _ in views.query(PARKED, prefix=f"{runner}/")]
    if keys:
        views.commit(PARKED, [ViewChange(PARKED, key, None) for key in keys], {})
    return len(keys)


Reapply = Callable[[ParkedEvent, Event], Sequence[ViewChange]]
"""Applies a parked event again, alone; returns the view changes to commit (raises if it fails again)."""


class ParkedEvents:
    """The operator's side: list parked events, retry them, or skip them.

    ``reapply`` maps each projection's name to a function that applies one event to the
    generation named in the record and returns the changes to commit (see
    :meth:`skyferry.core.projections.ProjectionRunner.reapply`).
    """

    def __init__(self, events: EventStore, views: ViewStore, reapply: Mapping[str, Reapply]) -> None:
        self.events = events
        self.views = views
        self.reapply = reapply

    def list(self, runner: str = "") -> list[ParkedEvent]:
        """The parked events, oldest first."""
        return parked_in(self.views, runner)

    def counts(self) -> dict[str, int]:
        """How many events each runner has parked (runners with none are absent)."""
        counts: dict[str, int] = {}
        for key, _ in self.views.query(PARKED):
            runner = key.rsplit("/", 1)[0]
            counts[runner] = counts.get(runner, 0) + 1
        return counts

    def exists(self, key: str) -> bool:
        """Whether ``key`` names a parked event."""
        return self.views.get(PARKED, key) is not None

    def get(self, key: str) -> ParkedEvent:
        """The record at ``key``; ``ValidationError`` naming the key when there is none."""
        doc = self.views.get(PARKED, key)
        if doc is None:
            raise ValidationError(f"no parked event {key!r} (see skyferry parked list)")
        return ParkedEvent.from_doc(key, doc.value)

    def retry(self, key: str) -> ParkedEvent | None:
        """Apply the parked event again, alone; ``None`` when it succeeded (the record is gone).

        When it fails again, in the handler or when the store refuses what the handler wrote
        (as a runner parks either), the record is updated (error, one more attempt) and
        returned.  An error that is not the event's fault (the store unreachable) is raised and
        changes nothing.
        """
        doc = self.views.get(PARKED, key)
        if doc is None:
            raise ValidationError(f"no parked event {key!r} (see skyferry parked list)")
        parked = ParkedEvent.from_doc(key, doc.value)
        reapply = self.reapply.get(parked.projection)
        if reapply is None:
            known = ", ".join(sorted(self.reapply))
            raise ValidationError(f"parked event {key!r} belongs to {parked.projection!r}; known: {known}")
        event = self._event(parked)
        try:
            changes = list(reapply(parked, event))
            changes.append(ViewChange(PARKED, key, None, expected_revision=doc.revision))
            self.views.commit(parked.runner, changes, {})
        except NOT_THE_EVENTS_FAULT:
            raise
        except Exception as e:  # the handler, or the store refusing what it wrote (as when it was parked)
            again = {**doc.value, "error": describe(e), "attempts": parked.attempts + 1}
            self.views.commit(parked.runner, [ViewChange(PARKED, key, again, expected_revision=doc.revision)], {})
            log.warning("%s: parked event %s failed again: %s", parked.runner, parked.event_id, describe(e))
            return ParkedEvent.from_doc(key, again)
        log.info("%s: parked event %s applied and released", parked.runner, parked.event_id)
        return None

    def skip(self, key: str) -> ParkedEvent:
        """Remove the record: the event stays unapplied for that runner, on purpose."""
        doc = self.views.get(PARKED, key)
        if doc is None:
            raise ValidationError(f"no parked event {key!r} (see skyferry parked list)")
        parked = ParkedEvent.from_doc(key, doc.value)
        self.views.commit(parked.runner, [ViewChange(PARKED, key, None, expected_revision=doc.revision)], {})
        log.info("%s: parked event %s skipped", parked.runner, parked.event_id)
        return parked

    def _event(self, parked: ParkedEvent) -> Event:
        found = self.events.read_stream(parked.stream_id, parked.version, parked.version) if parked.version else []
        if not found or found[0].id != parked.event_id:
            raise ValidationError(
                f"parked event {parked.key!r}: the store holds no event {parked.event_id} at "
                f"{parked.stream_id} version {parked.version}; skip it"
            )
        return found[0]
