"""The event envelope, and the rules every store enforces on it.

An event as written by a command is a :class:`NewEvent`; once stored it is an
:class:`Event`, which adds the stream, the 1-based contiguous ``version``, the
``recorded_at`` timestamp (set at first append, preserved by import) and, when read
through ``read_all``, the store's opaque ``position``.

Timestamps are timezone-aware UTC with microsecond precision.  The encoded size of an
event (its ``data`` and ``metadata`` as compact JSON) is limited to
:data:`EVENT_SIZE_LIMIT` on every store, so that any event fits every broker message and
every store item once the bounded envelope fields are added.

**Portability.**  :meth:`NewEvent.validate` refuses whatever one of the supported stores
could not hold exactly, so that an event one store accepts, every store accepts and gives
back unchanged (the conformance suite proves it for each adapter):

* the id is a UUID in its canonical text (lower case, ``8-4-4-4-12``), the form every
  store gives back;
* the type is 1 to :data:`TYPE_MAX` characters without control characters (C0, DEL, C1)
  or surrogates;
* ``schema_version`` is an integer from 1 to :data:`SCHEMA_VERSION_MAX` (a 32-bit column);
* timestamps are timezone-aware ``datetime`` values (year 1 to 9999 in UTC);
* ``data`` and ``metadata`` are JSON objects of any JSON values, nested at most
  :data:`MAX_JSON_DEPTH` levels: no NaN or infinity (JSON has none), integers within 64
  bits, no lone surrogates, string keys.  Other values the JSON encoder knows (a
  ``datetime``, a ``UUID``, a tuple) are kept as their JSON text, by every store alike.

Each refusal is a :class:`ValidationError` naming the event and the field (for a JSON
value, its path, such as ``data['items'][3]``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import MISSING, Field, FrozenInstanceError, field, make_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final, NamedTuple

import orjson

from skyferry.core.errors import EventTooLarge, ValidationError

EVENT_SIZE_LIMIT: Final = 192 * 1024
"""Bytes of ``data`` + ``metadata`` as compact JSON; one byte more raises EventTooLarge."""

STREAM_ID_MAX: Final = 200
TYPE_MAX: Final = 200
STREAM_ID_PUNCTUATION: Final = frozenset("/:.-_")
SCHEMA_VERSION_MAX: Final = 2**31 - 1
"""The largest ``schema_version`` (PostgreSQL keeps it in a 32-bit ``integer``)."""
MAX_JSON_DEPTH: Final = 64
"""How deeply ``data`` and ``metadata`` may nest (the object itself is level 1): far below
every JSON library's limit once the envelopes of archives and broker messages are added
(orjson stops at 254 levels)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# ``\w`` on a str pattern is exactly ``str.isalnum()`` or ``_`` (the fast path of the stream
# id check); an event id must be a UUID in its canonical text, the form every store gives back.
_VALID_STREAM_ID: Final = re.compile(rf"[\w/:.\-]{{1,{STREAM_ID_MAX}}}")
CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""An event id as every store gives it back: lower-case 8-4-4-4-12 hex digits (``fullmatch``)."""
_TYPE_FORBIDDEN: Final = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_INT64: Final = range(-(2**63), 2**64)  # what the JSON encoder writes (signed and unsigned 64-bit)

JSONObject = dict[str, Any]


def utc_now() -> datetime:
    """The current time, UTC, truncated to microseconds (what every store keeps)."""
    return datetime.now(UTC)


_RANDOM_HEX: list[str] = []
"""Random bits for :func:`new_event_id`: 80 bits (20 hex digits) an id, drawn from
``os.urandom`` 400 ids at a time.  ``list.pop`` and ``extend`` hold the GIL, so threads never
share an entry; a forked child starts empty (it must not reuse its parent's)."""
os.register_at_fork(after_in_child=_RANDOM_HEX.clear)
_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""The RFC's variant (binary ``10``) over the low two bits of a random hex digit."""
_ID_PREFIX: list[tuple[int, str]] = [(-1, "")]
"""The millisecond of the last id made and the text of its first two groups."""


def new_event_id() -> str:
    """A new event id: a UUID version 7 (RFC 9562), the default id of a :class:`NewEvent`.

    Its first 48 bits are the Unix time in milliseconds, the rest is random (74 bits, from
    ``os.urandom``), so ids made one after the other sort near each other.  A store's unique
    index on event ids then grows at its right edge, as an index on positions does, instead
    of touching a random page of the whole index for every event: inserting 100,000 events
    into SQLite took 4.3 µs an event with these ids and 10.5 µs with random (version 4) ones
    (``docs/performance.md``).  It takes 0.55 µs: the random bits are drawn for 400 ids at a
    time, and the time's text is made once per millisecond.
    """
    try:
        random = _RANDOM_HEX.pop()
    except IndexError:
        block = os.urandom(4000).hex()
        _RANDOM_HEX.extend([block[start : start + 20] for start in range(0, 8000, 20)])
        random = _RANDOM_HEX.pop()
    now = time.time_ns() // 1_000_000
    millisecond, prefix = _ID_PREFIX[-1]
    if millisecond != now:
        text = f"{now:012x}"
        prefix = f"{text[:8]}-{text[8:]}-"
        _ID_PREFIX[-1] = (now, prefix)
    # version 7 over the first random digit, the variant over the fifth: 74 random bits
    return f"{prefix}7{random[1:4]}-{_VARIANT[random[4]]}{random[5:8]}-{random[8:]}"


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch; ``moment`` must be timezone-aware."""
    if moment.tzinfo is None:
        raise ValidationError(f"timestamp {moment.isoformat()} has no timezone; skyferry keeps UTC")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """The UTC datetime ``micros`` microseconds after the Unix epoch."""
    return _EPOCH + timedelta(microseconds=micros)


_ZERO: Final = timedelta(0)


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 with microseconds and ``Z``: the one text form of a timestamp (always four
    year digits: ``strftime("%Y")`` would write year 999 as ``999``)."""
    if moment.tzinfo is not UTC and moment.utcoffset() != _ZERO:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse an RFC 3339 timestamp; a naive one is rejected rather than guessed."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as e:
        raise ValidationError(f"{text!r} is not an RFC 3339 timestamp") from e
    if moment.tzinfo is None:
        raise ValidationError(f"timestamp {text!r} has no timezone")
    return moment.astimezone(UTC)


def validate_stream_id(stream_id: object) -> str:
    """Return ``stream_id`` if valid, else raise :class:`ValidationError` saying why.

    Valid: 1 to 200 characters, each a Unicode letter or digit or one of ``/ : . - _``.
    """
    if type(stream_id) is str and _VALID_STREAM_ID.fullmatch(stream_id):
        return stream_id
    if not isinstance(stream_id, str):
        raise ValidationError(f"stream id must be a string, not {type(stream_id).__name__}")
    if not 1 <= len(stream_id) <= STREAM_ID_MAX:
        raise ValidationError(f"stream id must be 1 to {STREAM_ID_MAX} characters, got {len(stream_id)}")
    for index, char in enumerate(stream_id):
        if not (char.isalnum() or char in STREAM_ID_PUNCTUATION):
            raise ValidationError(
                f"stream id {stream_id!r}: character {char!r} at index {index} is not allowed "
                "(letters, digits and / : . - _ only)"
            )
    return stream_id


def encode_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the canonical encoding used for sizes and hashes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def check_type(event_type: object, event_id: object = None) -> str:
    """Return ``event_type`` if it is a valid event type, else raise :class:`ValidationError` saying why."""
    where = f"event {event_id}: " if event_id is not None else ""
    if not isinstance(event_type, str) or not 1 <= len(event_type) <= TYPE_MAX:
        raise ValidationError(f"{where}event type must be a string of 1 to {TYPE_MAX} characters, got {event_type!r}")
    bad = _TYPE_FORBIDDEN.search(event_type)
    if bad is not None:
        raise ValidationError(
            f"{where}event type {event_type!r}: character {bad.group()!r} at index {bad.start()} is not allowed "
            "(no control characters or surrogates)"
        )
    return event_type


def check_json(value: Any, encoded: bytes, where: str) -> None:
    """Refuse what the encoder let through but no store keeps: NaN or infinity (written as
    ``null``) and nesting deeper than :data:`MAX_JSON_DEPTH`.  ``encoded`` is ``value``'s JSON;
    the value itself is walked only when that text could hide one of them (it holds ``null``,
    or more brackets than the depth allowed), so the common event costs two byte scans."""
    if encoded.find(b"null") >= 0 or not _shallow(encoded):
        problem = json_problem(value, where)
        if problem is not None:
            raise ValidationError(problem)


def json_problem(value: Any, where: str) -> str | None:
    """The first thing in ``value`` that is not a portable JSON value, with its path
    (``data['items'][3]: ...``), or ``None``: a walk of the whole value, for error messages
    and for :func:`check_json`'s doubtful cases."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if len(path) > 120:
            path = f"{path[:60]}...{path[-40:]}"
        kind = type(item)
        if kind is str or isinstance(item, str):
            if _has_surrogate(item):
                return f"{path}: a string holds a lone surrogate (not valid UTF-8)"
        elif kind is bool or item is None:
            continue
        elif isinstance(item, int):
            if item not in _INT64:
                return f"{path}: the integer {item} does not fit in 64 bits"
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return f"{path}: {item!r} is not a JSON number (JSON has no NaN or infinity)"
        elif isinstance(item, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                return f"{path}: nested more than {MAX_JSON_DEPTH} levels deep"
            if isinstance(item, dict):
                for key, inner in item.items():
                    if not isinstance(key, str):
                        return f"{path}: the key {key!r} is not a string"
                    if _has_surrogate(key):
                        return f"{path}: the key {key!r} holds a lone surrogate (not valid UTF-8)"
                    stack.append((inner, f"{path}[{key!r}]", depth + 1))
            else:
                stack.extend((inner, f"{path}[{index}]", depth + 1) for index, inner in enumerate(item))
        else:
            try:
                orjson.dumps(item)
            except TypeError as e:
                return f"{path}: {kind.__name__} is not JSON-serializable ({e})"
    return None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def check_moment(moment: object, name: str, event_id: object) -> None:
    """Refuse a timestamp that is not an aware ``datetime`` within years 1 to 9999 in UTC."""
    if not isinstance(moment, datetime):
        raise ValidationError(f"event {event_id}: {name} must be a datetime, not {type(moment).__name__}")
    if moment.utcoffset() is None:
        raise ValidationError(f"event {event_id}: {name} must be timezone-aware (UTC)")
    try:
        moment.astimezone(UTC)
    except OverflowError as e:
        raise ValidationError(f"event {event_id}: {name} {moment.isoformat()} is outside years 1 to 9999 in UTC") from e


class _NewEventFields(NamedTuple):
    """The fields of :class:`NewEvent`, in order (a tuple, as :class:`Event` is)."""

    type: str
    data: JSONObject
    metadata: JSONObject
    id: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime | None


_MADE: Final[Any] = object()
"""The default of the fields of :class:`NewEvent` whose value is made for each event."""
_tuple_new: Final = tuple.__new__


def _equal_fields(self: Any, other: object) -> bool:
    """``==`` of :class:`NewEvent` and :class:`Event`, as a dataclass's: only one of the same
    class equals it (a plain tuple never does), compared by ``_key()``."""
    if type(other) is not type(self):
        return False if isinstance(other, tuple) else NotImplemented
    return bool(self._key() == other._key())  # type: ignore[attr-defined]


def _unequal_fields(self: Any, other: object) -> bool:
    """``!=`` of :class:`NewEvent` and :class:`Event`: the negation of :func:`_equal_fields`."""
    equal = _equal_fields(self, other)
    return equal if equal is NotImplemented else not equal


def _refuse_assignment(self: object, name: str, value: Any) -> None:
    """``__setattr__`` of :class:`NewEvent` and :class:`Event`: frozen, as a dataclass."""
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_deletion(self: object, name: str) -> None:
    """``__delattr__`` of :class:`NewEvent` and :class:`Event`: frozen, as a dataclass."""
    raise FrozenInstanceError(f"cannot delete field {name!r}")


class NewEvent(_NewEventFields):
    """An event a command decided, not yet stored.

    ``metadata`` defaults to an empty object; ``id`` to a new time-ordered UUID
    (:func:`new_event_id`): give a deterministic one to make a write idempotent.
    ``occurred_at`` defaults to now.  ``recorded_at`` is left ``None`` by commands (the
    store sets it) and carried over by imports, which must preserve it.

    Immutable, compared by its fields, and a dataclass as far as :mod:`dataclasses` is
    concerned (``replace``, ``fields``, ``asdict`` work), but built on a tuple, as
    :class:`Event` is: a frozen dataclass costs a ``__setattr__`` per field, and building
    one took 2.7 µs, a quarter of the CPU an append of 1,000 events into SQLite spends on
    each (``docs/performance.md``).
    """

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __new__(
        cls,
        type: str,
        data: JSONObject,
        metadata: JSONObject = _MADE,
        id: str = _MADE,
        schema_version: int = 1,
        occurred_at: datetime = _MADE,
        recorded_at: datetime | None = None,
    ) -> NewEvent:
        return _tuple_new(
            cls,
            (
                type,
                data,
                {} if metadata is _MADE else metadata,
                new_event_id() if id is _MADE else id,
                schema_version,
                utc_now() if occurred_at is _MADE else occurred_at,
                recorded_at,
            ),
        )

    def _key(self) -> tuple[Any, ...]:
        return tuple(self)

    __eq__ = _equal_fields
    __ne__ = _unequal_fields
    __hash__ = _NewEventFields.__hash__
    __setattr__ = _refuse_assignment
    __delattr__ = _refuse_deletion

    def encoded_size(self) -> int:
        """Bytes of ``data`` and ``metadata`` as canonical JSON (what the limit applies to)."""
        return len(encode_json(self.data)) + len(encode_json(self.metadata))

    def validate(self) -> None:
        """Raise :class:`ValidationError` or :class:`EventTooLarge` if this event cannot be
        stored by every store alike (see the module docstring for the rules)."""
        event_id = self.id
        if type(event_id) is not str or not CANONICAL_UUID.fullmatch(event_id):
            raise ValidationError(
                f"event id {event_id!r} is not a UUID in canonical form (lower-case 8-4-4-4-12 hex digits, "
                "as str(uuid.uuid4()) writes it)"
            )
        check_type(self.type, event_id)
        data, metadata = self.data, self.metadata
        # ``type(...) is dict`` first: the ABC check alone costs more than the rest of this.
        if not (type(data) is dict or isinstance(data, Mapping)) or not (
            type(metadata) is dict or isinstance(metadata, Mapping)
        ):
            raise ValidationError(f"event {event_id}: data and metadata must be JSON objects")
        schema_version = self.schema_version
        if type(schema_version) is not int or not 1 <= schema_version <= SCHEMA_VERSION_MAX:
            raise ValidationError(
                f"event {event_id}: schema_version must be an integer from 1 to {SCHEMA_VERSION_MAX}, "
                f"got {schema_version!r}"
            )
        check_moment(self.occurred_at, "occurred_at", event_id)
        if self.recorded_at is not None:
            check_moment(self.recorded_at, "recorded_at", event_id)
        encoded: list[bytes] = []
        for name, value in (("data", data), ("metadata", metadata)):
            try:
                text = encode_json(value)
            except TypeError as e:
                problem = json_problem(value, name) or f"{name}: not JSON-serializable: {e}"
                raise ValidationError(f"event {event_id}: {problem}") from e
            try:
                check_json(value, text, name)
            except ValidationError as e:
                raise ValidationError(f"event {event_id}: {e}") from None
            encoded.append(text)
        size = len(encoded[0]) + len(encoded[1])
        if size > EVENT_SIZE_LIMIT:
            raise EventTooLarge(event_id, size, EVENT_SIZE_LIMIT)


def plainly_valid(
    event_type: Any,
    schema_version: Any,
    data: Any,
    metadata: Any,
    occurred: Any,
    recorded: Any,
    data_json: bytes,
    metadata_json: bytes,
) -> bool:
    """Whether an event's fields pass :meth:`NewEvent.validate` by its common case (the id is
    the caller's to check): the fast path of stores importing many events.

    ``data_json`` / ``metadata_json`` are the JSON the store encoded (empty if encoding
    failed); its length is that of the canonical encoding.  ``False`` does not mean invalid,
    only that ``validate()`` must decide (it raises the port's error for the event).
    """
    return bool(
        type(event_type) is str
        and 0 < len(event_type) <= TYPE_MAX
        and event_type.isprintable()  # printable: no control characters, no surrogates
        and type(data) is dict
        and type(metadata) is dict
        and type(schema_version) is int
        and 1 <= schema_version <= SCHEMA_VERSION_MAX
        and (type(occurred) is int or (isinstance(occurred, datetime) and occurred.tzinfo is UTC))
        and (type(recorded) is int or (isinstance(recorded, datetime) and recorded.tzinfo is UTC))
        and data_json
        and len(data_json) + len(metadata_json) <= EVENT_SIZE_LIMIT
        # find, not ``in``: ``bytes.__contains__`` first tries its operand as an integer and
        # clears the TypeError, which costs twice the search itself
        and data_json.find(b"null") < 0
        and metadata_json.find(b"null") < 0
        and _shallow(data_json)
        and _shallow(metadata_json)
    )


def _shallow(encoded: bytes) -> bool:
    """Whether JSON text ``encoded`` surely nests at most :data:`MAX_JSON_DEPTH` levels: each
    level takes two bytes, so a short text cannot; a longer one has few enough brackets."""
    return len(encoded) <= 2 * MAX_JSON_DEPTH or encoded.count(b"{") + encoded.count(b"[") <= MAX_JSON_DEPTH


class _EventFields(NamedTuple):
    """The fields of :class:`Event`, in order (a tuple: one C call builds an event)."""

    id: str
    stream_id: str
    version: int
    type: str
    schema_version: int
    data: JSONObject
    metadata: JSONObject
    occurred_at: datetime
    recorded_at: datetime
    position: str | None = None


class Event(_EventFields):
    """A stored event: the envelope (docs/kernel.md).

    ``position`` is the store's opaque, serializable global position, set on events
    returned by ``read_all`` (and ``None`` where the store did not compute it).

    Immutable, compared and hashed by its fields, and a dataclass as far as
    :mod:`dataclasses` is concerned (``replace``, ``fields``, ``asdict`` work), but built
    on a tuple: constructing one is a single C call, which is what keeps ``read_all`` and
    projection rebuilds fast (a frozen dataclass costs a ``__setattr__`` per field).
    """

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    # A store may put integer microseconds since the epoch in the two timestamp fields:
    # they are decoded when read, so that read paths that never look at them (rebuilds,
    # relays) do not pay for two datetimes per event.  Every accessor, equality, hashing,
    # repr, ``replace`` and ``asdict`` see datetimes.

    @property
    def occurred_at(self) -> datetime:
        """When the event happened (UTC, microseconds)."""
        moment: Any = _item(self, 7)
        return _EPOCH + timedelta(0, 0, moment) if type(moment) is int else moment

    @property
    def recorded_at(self) -> datetime:
        """When the event was first appended (UTC, microseconds)."""
        moment: Any = _item(self, 8)
        return _EPOCH + timedelta(0, 0, moment) if type(moment) is int else moment

    def _key(self) -> tuple[Any, ...]:
        return (*self[:7], self.occurred_at, self.recorded_at, self[9])

    __eq__ = _equal_fields
    __ne__ = _unequal_fields

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            "Event("
            + ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self._key(), strict=True))
            + ")"
        )

    def _asdict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self._key(), strict=True))

    __setattr__ = _refuse_assignment
    __delattr__ = _refuse_deletion

    def to_new(self) -> NewEvent:
        """The same event as a :class:`NewEvent`, keeping id and both timestamps (for imports)."""
        return NewEvent(
            type=self.type,
            data=self.data,
            metadata=self.metadata,
            id=self.id,
            schema_version=self.schema_version,
            occurred_at=self.occurred_at,
            recorded_at=self.recorded_at,
        )

    def with_position(self, position: str | None) -> Event:
        """A copy carrying ``position``."""
        return _tuple_new(Event, (*self[:9], position))

    def to_dict(self) -> JSONObject:
        """The envelope as plain JSON types (timestamps in RFC 3339 with microseconds)."""
        return {
            "id": self.id,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "schema_version": self.schema_version,
            "data": self.data,
            "metadata": self.metadata,
            "occurred_at": format_timestamp(self.occurred_at),
            "recorded_at": format_timestamp(self.recorded_at),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], position: str | None = None) -> Event:
        """Inverse of :meth:`to_dict`; raises :class:`ValidationError` naming a missing field."""
        try:
            return cls(
                id=str(raw["id"]),
                stream_id=str(raw["stream_id"]),
                version=int(raw["version"]),
                type=str(raw["type"]),
                schema_version=int(raw["schema_version"]),
                data=dict(raw["data"]),
                metadata=dict(raw["metadata"]),
                occurred_at=parse_timestamp(raw["occurred_at"]),
                recorded_at=parse_timestamp(raw["recorded_at"]),
                position=position,
            )
        except KeyError as e:
            raise ValidationError(f"event is missing the field {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise ValidationError(f"event has a malformed field: {e}") from e


_item: Final = tuple.__getitem__
# dataclasses.replace/fields/asdict read the fields from here (the NamedTuple is the source).
Event.__dataclass_fields__ = vars(
    make_dataclass(
        "Event",
        [
            (name, _EventFields.__annotations__[name], field(default=_EventFields._field_defaults.get(name, MISSING)))
            for name in _EventFields._fields
        ],
        frozen=True,
    )
)["__dataclass_fields__"]
_NEW_EVENT_DEFAULTS: Final[dict[str, Any]] = {  # what `dataclasses.fields` shows
    "metadata": field(default_factory=dict),
    "id": field(default_factory=new_event_id),
    "schema_version": field(default=1),
    "occurred_at": field(default_factory=utc_now),
    "recorded_at": field(default=None),
}
NewEvent.__dataclass_fields__ = vars(
    make_dataclass(
        "NewEvent",
        [
            (name, _NewEventFields.__annotations__[name], _NEW_EVENT_DEFAULTS.get(name, field()))
            for name in _NewEventFields._fields
        ],
        frozen=True,
    )
)["__dataclass_fields__"]


def check_append(stream_id: str, events: list[NewEvent] | tuple[NewEvent, ...]) -> None:
    """The validation every ``EventStore.append`` runs before it writes anything."""
    validate_stream_id(stream_id)
    if not events:
        raise ValidationError(f"stream {stream_id!r}: nothing to append")
    seen: set[str] = set()
    for event in events:
        event.validate()
        if event.id in seen:
            raise ValidationError(f"stream {stream_id!r}: event id {event.id} appears twice in one append")
        seen.add(event.id)
