"""The aggregate base class: state rebuilt from a stream of events.

A subclass names its stream prefix, implements one ``apply`` method per event type with
the :func:`applies` decorator, and says how its state becomes a JSON snapshot and back.
Deciding (turning a command into new events) is done by plain command-handler functions
(see :mod:`skyferry.core.application`), never by the aggregate itself storing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from skyferry.core.errors import ValidationError
from skyferry.core.messages import Event, JSONObject

_Applier = Callable[[Any, Event], None]


def applies(event_type: str) -> Callable[[_Applier], _Applier]:
    """Mark an ``Aggregate`` method as the one that applies events of ``event_type``."""

    def mark(fn: _Applier) -> _Applier:
        fn.__dict__["_applies_event_type"] = event_type
        return fn

    return mark


class Aggregate:
    """Base of every aggregate.

    ``id`` is the aggregate's id, ``version`` the version of the last event applied (0 for
    an aggregate with no events).  ``apply`` dispatches on ``event.type`` through a table
    built once per class; an event type without a method raises ``ValidationError``
    (an aggregate must understand its whole history).

    Subclasses set ``stream_prefix`` (the stream is ``stream_prefix + id``) and override
    :meth:`snapshot` / :meth:`restore_state`.  ``snapshot_schema`` must be bumped when the
    snapshot layout or the meaning of events changes (a new upcaster, for example): stored
    snapshots of another schema are ignored, so snapshots never change a result.
    """

    stream_prefix: ClassVar[str] = ""
    snapshot_schema: ClassVar[int] = 1
    _appliers: ClassVar[dict[str, _Applier]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[str, _Applier] = {}
        for klass in reversed(cls.__mro__):
            for member in vars(klass).values():
                event_type = getattr(member, "_applies_event_type", None)
                if isinstance(event_type, str):
                    table[event_type] = member
        cls._appliers = table

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        """The id of the stream that holds the events of aggregate ``aggregate_id``."""
        return cls.stream_prefix + aggregate_id

    @classmethod
    def handled_event_types(cls) -> frozenset[str]:
        """The event types this aggregate applies."""
        return frozenset(cls._appliers)

    @property
    def stream_id(self) -> str:
        """The id of this aggregate's stream."""
        return self.stream_prefix + self.id

    def apply(self, event: Event) -> None:
        """Apply one stored event: dispatch on its type, then take its version."""
        applier = self._appliers.get(event.type)
        if applier is None:
            raise ValidationError(f"{type(self).__name__} has no method applying events of type {event.type!r}")
        applier(self, event)
        self.version = event.version

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply ``events`` in order."""
        appliers = self._appliers
        for event in events:
            applier = appliers.get(event.type)
            if applier is None:
                raise ValidationError(f"{type(self).__name__} has no method applying events of type {event.type!r}")
            applier(self, event)
            self.version = event.version

    def snapshot(self) -> JSONObject:
        """The aggregate's state as a JSON object (without ``id`` and ``version``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement snapshot()")

    def restore_state(self, state: JSONObject) -> None:
        """Set the state from what :meth:`snapshot` returned."""
        raise NotImplementedError(f"{type(self).__name__} does not implement restore_state()")

    def restore(self, state: JSONObject, version: int) -> None:
        """Take ``state`` (what :meth:`snapshot` returned) as this aggregate's state at ``version``."""
        self.restore_state(state)
        self.version = version
