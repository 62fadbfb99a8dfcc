"""Upcasters: old event schemas brought up to date when events are read.

Stored events are never rewritten.  An upcaster turns the ``data`` of an event of one
type at ``schema_version`` *n* into the data of schema version *n + 1*; the registry
chains them, so an event written at version 1 is read at the latest version whatever
the number of steps.  The kernel applies them on every read path: loading aggregates,
catching projections up from ``read_all`` and decoding broker messages.  The relay
publishes events as stored (consumers upcast on their side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from skyferry.core.errors import ConfigurationError
from skyferry.core.messages import Event, JSONObject

Upcaster = Callable[[JSONObject], JSONObject]
"""Takes the ``data`` of schema version n, returns the ``data`` of schema version n + 1."""


class Upcasters:
    """The registry ``(event type, schema_version n) -> function giving version n + 1``.

    Events of a type with no upcaster pass through untouched (the hot path costs one set
    lookup).
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self._types: set[str] = set()

    def register(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: register ``fn`` as the upcaster of ``event_type`` from ``from_version``.

        Registering a second upcaster for the same step is a ``ConfigurationError``.
        """

        def decorate(fn: Upcaster) -> Upcaster:
            self.add(event_type, from_version, fn)
            return fn

        return decorate

    def add(self, event_type: str, from_version: int, fn: Upcaster) -> None:
        """Register ``fn`` as the upcaster of ``event_type`` from ``from_version`` to the next."""
        if from_version < 1:
            raise ConfigurationError(f"upcaster of {event_type}: from_version must be >= 1")
        step = (event_type, from_version)
        if step in self._steps:
            raise ConfigurationError(f"upcaster of {event_type} v{from_version} is registered twice")
        self._steps[step] = fn
        self._types.add(event_type)

    def latest(self, event_type: str, schema_version: int = 1) -> int:
        """The schema version an event of ``event_type`` at ``schema_version`` is read at."""
        version = schema_version
        while (event_type, version) in self._steps:
            version += 1
        return version

    def upcast(self, event: Event) -> Event:
        """``event`` with every applicable upcaster applied (the same object when none applies)."""
        if event.type not in self._types:
            return event
        data = event.data
        version = event.schema_version
        step = self._steps.get((event.type, version))
        if step is None:
            return event
        while step is not None:
            data = step(dict(data))
            version += 1
            step = self._steps.get((event.type, version))
        return replace(event, data=data, schema_version=version)

    def upcast_all(self, events: list[Event]) -> list[Event]:
        """Every event of ``events`` upcast (the same list when no type has an upcaster)."""
        if not self._types:
            return events
        return [self.upcast(event) for event in events]

    def __bool__(self) -> bool:
        return bool(self._steps)
