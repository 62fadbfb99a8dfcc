"""The one error hierarchy of skyferry.

Adapters translate their SDK's errors into these classes and chain the original
(``raise ConcurrencyError(...) from e``), so that callers never import a driver to
catch an error.  Every class says whether retrying can help.
"""

from __future__ import annotations

from typing import ClassVar


class SkyferryError(Exception):
    """Base of every error skyferry raises on purpose.

    ``exit_code`` is the exit status of the ``skyferry`` command that fails with it
    (docs/cli.md): a property of the class, 2 (bad input) unless a subclass says otherwise.
    ``where`` names the input at fault (an option, a setting, a file) and ``hint`` what to
    do about it, when the code that raises knows; the command prints both.
    """

    exit_code: ClassVar[int] = 2

    def __init__(self, *args: object, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(*args)
        self.where = where
        self.hint = hint


class ConcurrencyError(SkyferryError):
    """An optimistic-concurrency check failed.

    Raised by ``EventStore.append`` when the stream is not at the expected version, or
    when an event id is already stored at another version.  ``actual`` is the stream's
    version at the time of the check (0 for a stream that does not exist).
    """

    exit_code: ClassVar[int] = 1

    def __init__(self, stream_id: str, expected: object, actual: int, detail: str = "") -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        message = f"stream {stream_id!r}: expected version {expected}, actual version {actual}"
        super().__init__(f"{message} ({detail})" if detail else message)


class EventTooLarge(SkyferryError):
    """An event's encoded size is over ``EVENT_SIZE_LIMIT``; it is rejected, never truncated."""

    def __init__(self, event_id: str, size: int, limit: int) -> None:
        self.event_id = event_id
        self.size = size
        self.limit = limit
        super().__init__(f"event {event_id}: encoded size {size} bytes is over the limit of {limit} bytes")


class StreamNotFound(SkyferryError):
    """A stream (an aggregate) that must exist does not."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id!r} does not exist")


class TransientError(SkyferryError):
    """A failure that may succeed when retried: a dropped connection, throttling, a timeout.

    Nothing was half-written: the operation either happened whole or not at all, and
    retrying it (appends are idempotent by event id) is safe.
    """

    exit_code: ClassVar[int] = 3


class WriteFenced(TransientError):
    """Writes are paused: the store is fenced for a migration cutover.

    Nothing was written.  Retrying later can succeed (once the application points at the
    new store, or the fence is lifted); the worker backs off as for any transient error.
    The message names no store.
    """


class ConfigurationError(SkyferryError):
    """A setting, URL or piece of infrastructure is missing or wrong; retrying cannot help."""


class NotSupported(SkyferryError):
    """The adapter does not offer this optional feature (see its ``features``)."""


class ValidationError(SkyferryError, ValueError):
    """Input is malformed: a bad stream id, a non-object payload, an unknown field."""


class DomainError(SkyferryError):
    """A command was rejected by the domain's rules (for example: insufficient funds).

    Raised before any event is stored.
    """


class ObjectNotFound(SkyferryError):
    """An archive object (a manifest, a chunk) that must exist does not."""

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(f"{location} does not exist")


class TooManyParked(SkyferryError):
    """A runner has parked as many events as it may (``RetryPolicy.max_parked``) and stops.

    One event that a handler cannot take is parked and the runner goes on; a handler
    failing on event after event is a fault of the code or the store, not of the events,
    and parking the whole log would hide it.
    """

    def __init__(self, runner: str, limit: int) -> None:
        self.runner = runner
        self.limit = limit
        super().__init__(
            f"{runner}: {limit} events are parked already; resolve them (skyferry parked list / retry / skip) "
            "or fix the handler, then restart the worker"
        )


class ObjectTooLarge(ValidationError):
    """An archive object (a manifest, a chunk) is larger than the reader accepts; it was not read whole."""

    def __init__(self, location: str, limit: int) -> None:
        self.location = location
        self.limit = limit
        super().__init__(f"{location} holds more than {limit} bytes, the most this reader accepts", where=location)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled with its own arguments."""
        return (type(self), (self.location, self.limit))
