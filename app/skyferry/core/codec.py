"""Events as broker messages, in the two message modes of docs/kernel.md.

* ``full`` (event-carried state transfer): the body is the whole envelope as JSON; a
  consumer needs nothing else.
* ``thin`` (notification): the body holds only ``id``, ``stream_id`` and ``version``;
  the consumer fetches the event from the event store (and checks the id).

Either way the message id is the event id (the broker's deduplication id), the key is
the stream id (the ordering key), and the attributes carry ``type``, ``version``,
``schema_version`` and ``mode`` for filtering without decoding the body.
"""

from __future__ import annotations

from typing import Final, Literal

import orjson

from skyferry.core.errors import StreamNotFound, ValidationError
from skyferry.core.messages import Event
from skyferry.core.ports import EventStore, Message
from skyferry.core.upcasting import Upcasters

MessageMode = Literal["full", "thin"]
MODES: Final = ("full", "thin")


def check_mode(mode: str) -> MessageMode:
    """``mode`` if it is ``full`` or ``thin``, else a ``ValidationError``."""
    if mode == "full":
        return "full"
    if mode == "thin":
        return "thin"
    raise ValidationError(f"message mode must be 'full' or 'thin', not {mode!r}")


def encode(event: Event, mode: MessageMode = "full") -> Message:
    """The broker message announcing ``event``."""
    if mode == "full":
        body = orjson.dumps(event.to_dict())
    elif mode == "thin":
        body = orjson.dumps({"id": event.id, "stream_id": event.stream_id, "version": event.version})
    else:
        raise ValidationError(f"message mode must be 'full' or 'thin', not {mode!r}")
    return Message(
        id=event.id,
        key=event.stream_id,
        body=body,
        attributes={
            "type": event.type,
            "version": str(event.version),
            "schema_version": str(event.schema_version),
            "mode": mode,
        },
    )


def decode(message: Message, events: EventStore | None = None, upcasters: Upcasters | None = None) -> Event:
    """The event a message carries or refers to, upcast when ``upcasters`` are given.

    A thin message needs ``events`` to fetch the event; raises ``StreamNotFound`` when the
    referenced event is not (or no longer) in the store and ``ValidationError`` for a
    malformed body.
    """
    try:
        raw = orjson.loads(message.body)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"message {message.id}: body is not JSON") from e
    if not isinstance(raw, dict):
        raise ValidationError(f"message {message.id}: body is not a JSON object")
    mode = message.attributes.get("mode") or ("full" if "data" in raw else "thin")
    if mode == "full":
        event = Event.from_dict(raw)
    elif mode == "thin":
        if events is None:
            raise ValidationError(f"message {message.id} is a thin notification: an event store is needed")
        try:
            stream_id, version, event_id = str(raw["stream_id"]), int(raw["version"]), str(raw["id"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValidationError(f"message {message.id}: malformed thin notification") from e
        found = events.read_stream(stream_id, version, version)
        if not found or found[0].id != event_id:
            raise StreamNotFound(stream_id)
        event = found[0]
    else:
        raise ValidationError(f"message {message.id}: unknown mode {mode!r}")
    return upcasters.upcast(event) if upcasters is not None else event
